"""The page's Ports panel and device settings in Chromium, against a real gateway whose
`[serial] scan` points at a folder of by-id-style links to ptys (a port is plugged when
its pty and link appear, pulled when they go)."""

from __future__ import annotations

import os
import pty
import re
import termios

import pytest
from playwright.sync_api import expect

from conftest import wait_for
from gateway.config import AuthConfig, DeviceConfig, SerialConfig, Token
from test_page import browser, gateway, open_page, row, send, shot  # noqa: F401 (fixtures)

BOARD_ID = "usb-Gateway_Test_Board_0001-if00-port0"


class Plug:
    """A pty and a by-id-style link to it in `folder`: a board plugged in."""

    def __init__(self, folder, name: str):
        self.master, self.slave = pty.openpty()
        attrs = termios.tcgetattr(self.master)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self.master, termios.TCSANOW, attrs)
        self.path = os.ttyname(self.slave)
        self.link = folder / name
        self.link.symlink_to(self.path)

    def pull(self) -> None:
        if self.link.is_symlink():
            self.link.unlink()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def plugs(tmp_path):
    made = []

    def plug(name: str) -> Plug:
        p = Plug(tmp_path, name)
        made.append(p)
        return p

    plug.folder = tmp_path
    yield plug
    for p in made:
        p.pull()


def test_a_plugged_port_is_opened_tuned_and_removed_from_the_page(gateway, open_page, plugs):
    serial = SerialConfig(scan=(str(plugs.folder / "*"),), rescan=0.2)
    runner = gateway((DeviceConfig("sim", "sim://?interval=0"),), serial=serial)
    page, watch = open_page(runner)
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    ports = page.locator("#port-list")
    ours = ports.locator(f'li.port[data-by-id$="{BOARD_ID}"]')
    expect(ours).to_have_count(0)

    board = plugs(BOARD_ID)  # plugged in while the page is open: it appears by itself
    expect(ours).to_have_count(1)
    expect(ours).to_have_attribute("data-path", board.path)
    expect(ours.locator(".port-name")).to_have_text(BOARD_ID)

    # Open: a name and a baud rate, and the device is added and opened.
    ours.get_by_role("button", name="Open " + BOARD_ID).click()
    dialog = page.locator("#open-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Device name").fill("board")
    dialog.get_by_label("Baud rate").select_option("9600")
    dialog.get_by_role("button", name="Open").click()
    expect(dialog).to_be_hidden()
    nav = page.get_by_role("navigation", name="Devices")
    expect(nav.locator('[data-device="board"]')).to_have_attribute("data-state", "connected")
    expect(page.locator("#device-name")).to_have_text("board")
    expect(ours.locator(".port-use")).to_have_text("in use by board")
    assert termios.tcgetattr(board.slave)[4] == termios.B9600
    shot(page, "ports")

    # The board talks; the page sends.
    os.write(board.master, b"hello from the board\r\n")
    expect(row(page, "rx", "hello from the board")).to_have_count(1)
    send(page, "status")
    expect(row(page, "tx", "status").locator(".status")).to_have_class(re.compile(r"\backed\b"))
    assert os.read(board.master, 100) == b"status\n"

    # Another baud rate: the device reopens at it, the page stays connected.
    expect(page.get_by_label("Baud rate", exact=True)).to_have_value("9600")
    page.get_by_label("Baud rate", exact=True).select_option("115200")
    # (Playwright routes the page's requests on this thread: wait through it, not beside it.)
    expect(page.locator("#toast")).to_have_text("board: 115200 baud; reopening")
    wait_for(lambda: termios.tcgetattr(board.slave)[4] == termios.B115200, what="the pty at 115200 baud")
    expect(page.locator("#device-state")).to_have_text("connected")
    os.write(board.master, b"still here\r\n")
    expect(row(page, "rx", "still here")).to_have_count(1)

    # Opening the same name again is refused, with the gateway's reason.
    board2 = plugs("usb-Gateway_Test_Board_0002-if00-port0")
    other = ports.locator('li.port[data-by-id$="usb-Gateway_Test_Board_0002-if00-port0"]')
    other.get_by_role("button").click()
    dialog.get_by_label("Device name").fill("board")
    dialog.get_by_role("button", name="Open").click()
    expect(page.locator("#open-error")).to_contain_text("board")
    dialog.get_by_role("button", name="Cancel").click()
    board2.pull()
    expect(other).to_have_count(0)  # pulled: gone from the panel

    # Remove asks once more, then the device is gone and its port free again.
    page.get_by_role("button", name="Remove").click()
    page.get_by_role("button", name="Remove board?").click()
    expect(nav.locator('[data-device="board"]')).to_have_count(0)
    assert "board" not in runner.gw.links
    expect(ours.get_by_role("button", name="Open " + BOARD_ID)).to_be_visible()
    board.pull()
    expect(ours).to_have_count(0)
    watch.assert_clean(allowed=re.compile(r"status of 409"))


def test_reset_and_bootloader_show_the_reboot_in_the_log(gateway, open_page):
    runner = gateway((DeviceConfig("sim", "sim://?interval=0"),))
    page, watch = open_page(runner)
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    send(page, "ECHO before reset")
    expect(row(page, "rx", "before reset")).to_have_count(1)

    page.get_by_role("button", name="Reset", exact=True).click()
    expect(row(page, "tx", "reset").locator(".status")).to_have_class(re.compile(r"\backed\b"))
    expect(row(page, "rx", "ready")).to_have_count(1)
    noise = page.locator("#log .row.rx", has=page.locator(".badge", has_text="bytes"))
    expect(noise.first).to_be_visible()  # the 74880-baud boot noise, as bytes, before `ready`
    assert page.evaluate("""() => {
      const rows = [...document.querySelectorAll('#log .row.rx')];
      const noise = rows.findIndex((r) => r.querySelector('.badge'));
      const ready = rows.findIndex((r) => r.dataset.text === 'ready');
      return noise >= 0 && noise < ready;
    }""")

    # Download mode: the line protocol stops answering until the next reset.
    page.get_by_role("button", name="Bootloader").click()
    expect(row(page, "tx", "bootloader").locator(".status")).to_have_class(re.compile(r"\backed\b"))
    send(page, "PING")
    expect(row(page, "tx", "PING").locator(".status")).to_have_class(re.compile(r"\backed\b"))
    page.get_by_role("button", name="Reset", exact=True).click()
    expect(row(page, "rx", "ready")).to_have_count(2)
    expect(row(page, "rx", "PONG")).to_have_count(0)
    send(page, "PING")
    expect(row(page, "rx", "PONG")).to_have_count(1)
    watch.assert_clean()


def test_a_view_token_watches_the_terminal_and_touches_nothing(gateway, open_page, plugs):
    plugs(BOARD_ID)
    auth = AuthConfig(tokens=(Token("look", "view"), Token("ctl", "control")))
    serial = SerialConfig(scan=(str(plugs.folder / "*"),), rescan=0.2)
    runner = gateway((DeviceConfig("sim", "sim://?interval=0"),), auth=auth, serial=serial)
    page, watch = open_page(runner, path="/?token=look")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    for name in ("Reset", "Bootloader", "Remove"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_disabled()
    ours = page.locator(f'li.port[data-by-id$="{BOARD_ID}"]')
    expect(ours.get_by_role("button")).to_be_disabled()
    page.get_by_role("button", name="Terminal", exact=True).click()
    expect(page.locator("#term-state")).to_have_text("live (watch only)")
    page.locator("#term .xterm-screen").click()
    page.keyboard.type("PING")
    page.keyboard.press("Enter")
    expect(page.locator("#term-count")).to_contain_text("0 bytes out")
    assert runner.gw.links["sim"].counters.lines_out == 0

    # A control token may reset, not add or remove devices.
    page, watch2 = open_page(runner, path="/?token=ctl")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    expect(page.get_by_role("button", name="Reset", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Remove", exact=True)).to_be_disabled()
    expect(page.locator(f'li.port[data-by-id$="{BOARD_ID}"]').get_by_role("button")).to_be_disabled()
    watch.assert_clean()
    watch2.assert_clean()
