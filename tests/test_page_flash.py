"""The page's Flash panel in Chromium (Playwright), against a real gateway: files chosen
with offsets, Flash, the progress bar to 100 %, esptool's lines and the device's `fw=`
in the log; what the gateway refuses is shown as its one line; the panel is the admin's."""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from playwright.sync_api import expect

from gateway.config import AuthConfig, DeviceConfig, Token
from test_page import browser, gateway, open_page, row, shot  # noqa: F401 (fixtures)

KIB = 1024


def image(size: int, seed: int = 7) -> bytes:
    """Random bytes that do not start with an ESP image header (0xE9), which esptool
    would patch with the flash parameters."""
    data = bytearray(os.urandom(size))
    if data[0] == 0xE9:
        data[0] = 0
    return bytes(data)


def test_a_refused_flash_shows_the_gateways_reason_and_nothing_starts(gateway, open_page, tmp_path):
    runner = gateway((DeviceConfig("sim", "sim://?interval=0"),))
    page, watch = open_page(runner)
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    panel = page.get_by_role("group", name="Flash")
    expect(panel).to_be_visible()
    start = panel.get_by_role("button", name="Flash", exact=True)
    expect(start).to_be_disabled()  # no file chosen yet
    firmware = tmp_path / "app.bin"
    firmware.write_bytes(image(4 * KIB))
    panel.get_by_label("Firmware file").set_input_files(str(firmware))
    panel.get_by_label("Offset").fill("0x10")
    expect(start).to_be_enabled()
    start.click()
    error = "POST /api/devices/sim/flash: files[0]: offset = '0x10': must be a multiple of 0x1000 (a flash sector)"
    expect(panel.locator("#flash-error")).to_have_text(error)
    expect(row(page, "err", "flash not started: " + error)).to_have_count(1)
    expect(panel.get_by_role("button", name="Cancel")).to_be_disabled()
    assert runner.gw.flashing.status("sim") == {"device": "sim", "state": "idle"}
    # A second file row, and back to one.
    panel.get_by_role("button", name="Add file").click()
    expect(panel.get_by_label("Offset")).to_have_count(2)
    expect(start).to_be_disabled()  # the new row has no file
    panel.get_by_role("button", name="Drop this file").last.click()
    expect(panel.get_by_label("Offset")).to_have_count(1)
    expect(start).to_be_enabled()
    shot(page, "flash-refused")
    watch.assert_clean(allowed=re.compile(r"400 \(Bad Request\)"))


def test_the_flash_panel_is_for_admins_only(gateway, open_page):
    auth = AuthConfig(tokens=(Token("driver", "control"), Token("boss", "admin")))
    runner = gateway((DeviceConfig("sim", "sim://?interval=0"),), auth=auth)
    page, _ = open_page(runner, "/?token=driver")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#settings-card")).to_be_visible()
    expect(page.locator("#flash-panel")).to_be_hidden()
    page, _ = open_page(runner, "/?token=boss")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#flash-panel")).to_be_visible()


def test_a_file_flashed_from_the_page_shows_progress_esptool_and_the_boot(gateway, open_page, tmp_path):
    runner = gateway((DeviceConfig("sim", "sim://?interval=0"),))
    page, watch = open_page(runner)
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    data = image(128 * KIB)
    firmware = tmp_path / "blink.bin"
    firmware.write_bytes(data)
    panel = page.get_by_role("group", name="Flash")
    panel.get_by_label("Firmware file").set_input_files(str(firmware))
    expect(panel.get_by_label("Offset")).to_have_value("0x0")  # the default
    panel.get_by_label("Flash baud rate").select_option("460800")
    panel.get_by_role("button", name="Flash", exact=True).click()

    bar = panel.get_by_label("Flash progress")
    expect(bar).to_have_js_property("value", 100)
    expect(panel.locator("#flash-percent")).to_have_text("100 %")
    expect(panel.locator("#flash-bytes")).to_have_text("128 KiB of 128 KiB")
    expect(panel.locator("#flash-speed")).to_have_text(re.compile(r"^\d+ KiB/s$"))
    expect(panel.locator("#flash-phase")).to_have_text("done")
    # esptool's lines in the log, then the device's boot line with the new image's id.
    expect(row(page, "sys", "Detecting chip type... ESP8266")).to_have_count(1)
    expect(row(page, "sys", "Hash of data verified.")).to_have_count(1)
    fw = "fw=" + hashlib.sha256(data.rstrip(b"\xff")).hexdigest()[:12]
    expect(row(page, "rx", "boot " + fw)).to_have_count(1)
    expect(page.locator("#device-state")).to_have_text("connected")
    expect(panel.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(panel.get_by_role("button", name="Flash", exact=True)).to_be_enabled()
    shot(page, "flash-done")
    watch.assert_clean()


def test_cancel_from_another_page_gives_the_device_back(gateway, open_page, tmp_path):
    runner = gateway((DeviceConfig("sim", "sim://?interval=0&baud=115200"),))  # a UART's pace: 23 s of writing
    page, watch = open_page(runner)
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    firmware = tmp_path / "big.bin"
    firmware.write_bytes(image(256 * KIB))
    panel = page.get_by_role("group", name="Flash")
    panel.get_by_label("Firmware file").set_input_files(str(firmware))
    panel.get_by_label("Flash baud rate").select_option("115200")
    panel.get_by_role("button", name="Flash", exact=True).click()
    expect(page.locator("#device-state")).to_have_text("external")
    expect(panel.locator("#flash-percent")).not_to_have_text(re.compile(r"^(0\.0 %)?$"))  # writing has begun
    expect(panel.get_by_role("button", name="Cancel")).to_be_enabled()
    expect(panel.get_by_role("button", name="Flash", exact=True)).to_be_disabled()  # one at a time
    # A page opened meanwhile picks the running flash up (GET), and may cancel it.
    other, other_watch = open_page(runner)
    other_panel = other.get_by_role("group", name="Flash")
    expect(other_panel.locator("#flash-state")).to_be_visible()
    expect(other_panel.get_by_label("Flash progress")).not_to_have_js_property("value", 0)
    other_panel.get_by_role("button", name="Cancel").click()
    expect(other_panel.locator("#flash-phase")).to_have_text("cancelled")
    expect(panel.locator("#flash-phase")).to_have_text("cancelled")
    cancelled = page.locator('#log .row.sys[data-text^="flash cancelled at "]')
    expect(cancelled).to_have_count(1)
    expect(cancelled).to_have_attribute("data-text", re.compile(r"^flash cancelled at [\d.]+ %; the device is back$"))
    expect(page.locator("#device-state")).to_have_text("connected")
    expect(row(page, "rx", "ready")).to_have_count(1)  # reset by the gateway: it runs again
    expect(panel.get_by_role("button", name="Flash", exact=True)).to_be_enabled()
    assert runner.gw.flashing.status("sim")["state"] == "cancelled"
    watch.assert_clean()
    other_watch.assert_clean()
