"""The page's Terminal view in Chromium: xterm.js on a device's binary stream
(/ws/NAME?format=binary). Keys go out as typed, with no local echo; ANSI colours render;
a paste goes out as the terminal sends it; a hex view shows bytes that are not text."""

from __future__ import annotations

import os
import pty
import select
import termios
import time

from playwright.sync_api import expect

from conftest import assert_no_gateway_threads
from gateway.config import DeviceConfig
from test_page import browser, device_says, gateway, open_page, row, shot  # noqa: F401 (fixtures)

SCREEN = "#term .xterm-rows"


def open_terminal(page):
    page.get_by_role("button", name="Terminal", exact=True).click()
    expect(page.locator("#term-state")).to_have_text("live")
    page.locator("#term .xterm-screen").click()  # focus: keys now go to xterm's textarea


def test_terminal_sends_keys_and_shows_the_answer(gateway, open_page):
    runner = gateway((DeviceConfig("sim", "sim://?interval=0"),))
    page, watch = open_page(runner)
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    open_terminal(page)

    page.keyboard.type("PING")
    page.keyboard.press("Enter")  # CR: the device reads it as the end of the line
    expect(page.locator(SCREEN)).to_contain_text("PONG")
    expect(page.locator(SCREEN)).not_to_contain_text("PING")  # no local echo: only what the device sent
    expect(row(page, "rx", "PONG")).to_have_count(1)  # the line log beside it sees the line too
    assert any(u.endswith("/ws/sim?format=binary") for u in watch.sockets), watch.sockets

    # ANSI colours: the device's escape sequences are rendered, not printed.
    device_says(runner.gw, "sim", "\x1b[31mred alert\x1b[0m plain")
    red = page.locator(f"{SCREEN} span.xterm-fg-1", has_text="red alert")
    expect(red).to_have_count(1)
    expect(page.locator(SCREEN)).not_to_contain_text("[31m")
    shot(page, "terminal")

    # The hex view shows the same stream as bytes.
    page.get_by_role("button", name="Hex", exact=True).click()
    hexview = page.locator("#hex")
    expect(hexview).to_be_visible()
    expect(hexview).to_contain_text("50 4f 4e 47 0a")  # "PONG\n"
    expect(hexview).to_contain_text("1b 5b 33 31 6d")  # ESC [31m
    expect(hexview).to_contain_text("|PONG.")
    page.get_by_role("button", name="Text", exact=True).click()
    expect(page.locator("#term")).to_be_visible()

    # Closed, the view drops its socket; the line stream stays.
    page.get_by_role("button", name="Terminal", exact=True).click()
    expect(page.locator("#term-card")).to_be_hidden()
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    watch.assert_clean()


def read_master(fd: int, want: bytes, timeout: float = 5.0) -> bytes:
    """Bytes the gateway wrote to the pty, until `want` is among them (or the deadline)."""
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if select.select([fd], [], [], left)[0]:
            got += os.read(fd, 4096)
    return got


def test_control_keys_and_paste_reach_a_serial_device_as_bytes(gateway, open_page):
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(master)
    attrs[3] &= ~termios.ECHO  # the test reads what the gateway writes, nothing echoed back
    termios.tcsetattr(master, termios.TCSANOW, attrs)
    path = os.ttyname(slave)
    try:
        runner = gateway((DeviceConfig("board", f"serial://{path}?baudrate=115200"),))
        assert runner.gw.links["board"].wait_connected(5)
        page, watch = open_page(runner, path="/#board")
        expect(page.locator("#device-name")).to_have_text("board")
        open_terminal(page)
        # What the board prints (a MicroPython prompt, in colour) shows as it is.
        os.write(master, b"\x1b[32mMicroPython\x1b[0m v1.23\r\n>>> ")
        expect(page.locator(f"{SCREEN} span.xterm-fg-2", has_text="MicroPython")).to_have_count(1)
        expect(page.locator(SCREEN)).to_contain_text(">>>")

        for key, sent in (("Control+c", b"\x03"), ("Control+d", b"\x04"), ("Tab", b"\t"),
                          ("ArrowUp", b"\x1b[A"), ("ArrowLeft", b"\x1b[D"), ("Enter", b"\r")):
            page.keyboard.press(key)
            got = read_master(master, sent)
            assert got == sent, f"{key}: the device got {got!r}, not {sent!r}"

        # A paste goes out as xterm sends it: line ends as CR, as a REPL expects.
        page.locator("#term .xterm-helper-textarea").evaluate("""(t) => {
          const data = new DataTransfer();
          data.setData('text/plain', 'print(1)\\nprint(2)');
          t.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
        }""")
        got = read_master(master, b"print(2)")
        assert got == b"print(1)\rprint(2)", got
        expect(page.locator("#term-count")).to_contain_text("bytes out")
        watch.assert_clean()
    finally:
        runner.stop() if "runner" in locals() else None
        os.close(master)
        os.close(slave)
    assert_no_gateway_threads()
