"""The clients in examples/, each run against a real gateway on a free port.

Each script runs as a subprocess, as a user would run it, pointed at the gateway by its
URL argument or $GATEWAY_WS, with --count so it ends by itself. The arrows page runs in
Debian's Chromium through Playwright, served from the gateway's origin and opened as a
file.
"""

from __future__ import annotations

import functools
import http.server
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import assert_no_gateway_threads, free_port, ws_url
from gateway.app import Gateway
from gateway.config import AuthConfig, Config, DeviceConfig, ServerConfig
from gateway.simulator.link import BOOT_NOISE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def run_example(*command: str, url: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if url is not None:
        env["GATEWAY_WS"] = url
    return subprocess.run(list(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


class Running:
    """An example running in the background; a named thread queues its stdout lines."""

    def __init__(self, *command: str, url: str):
        self.proc = subprocess.Popen(list(command), cwd=ROOT, env={**os.environ, "GATEWAY_WS": url},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, name="test-example-stdout")
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s: {self.seen}") from None
            assert line is not None, f"the example ended before {pattern!r}: {self.seen}"
            self.seen.append(line)
            if re.fullmatch(pattern, line):
                return line

    def finish(self, timeout: float = 10.0) -> int:
        code = self.proc.wait(timeout)
        self.thread.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.thread.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


# -- Python: websocket-client ---------------------------------------------------------


def test_websocket_client_example_sends_and_prints_lines(start_gateway):
    gw = start_gateway()
    done = run_example(sys.executable, "examples/python_websocket_client.py", "--send", "PING",
                       "--send", "ECHO two words", "--count", "2", url=ws_url(gw))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "# connected to sim: run " + gw.links["sim"].hub.run + ", newest line 0",
        "1 PONG",
        "2 two words",
    ]


def test_websocket_client_example_reconnects_and_resumes(start_gateway):
    port = free_port()
    first = start_gateway(server={"port": port})
    url = ws_url(first)
    example = Running(sys.executable, "examples/python_websocket_client.py", url, "--send", "ECHO hi",
                      "--count", "2", "--ping", "5", url="ws://127.0.0.1:9/unused")  # the argument wins
    try:
        example.wait_for(r"1 hi")
        first.shutdown()  # clients get 1001; a new gateway (a new run) takes the port
        second = start_gateway(server={"port": port})
        example.wait_for(r"# disconnected; connecting again in .*")
        example.wait_for(r"# gap \(gateway restarted\).*")  # since= and run= told it so
        example.wait_for(r"1 hi")  # --send again after the reconnect
        assert example.finish() == 0
    finally:
        example.stop()
    assert f"# connected to sim: run {second.links['sim'].hub.run}, newest line 0" in example.seen


def test_websocket_client_example_gives_up_when_told(start_gateway):
    done = run_example(sys.executable, "examples/python_websocket_client.py", "--retries", "0",
                       url=f"ws://127.0.0.1:{free_port()}/ws/sim")
    assert done.returncode == 1
    assert "ConnectionRefusedError" in done.stderr and "giving up after 1 failed connects" in done.stderr


# -- Python: ws4py --------------------------------------------------------------------


def test_ws4py_example_text_mode_with_binary_noise(start_gateway):
    gw = start_gateway()
    done = run_example(sys.executable, "examples/python_ws4py_client.py", ws_url(gw), "--send", "PING",
                       "--send", "FAULT NOISE", "--count", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "PONG",
        "OK FAULT NOISE",
        f"# binary: {BOOT_NOISE[:-2].hex()}",
        "# closed: 1000 done",
    ]


def test_ws4py_example_reports_a_missing_gateway():
    done = run_example(sys.executable, "examples/python_ws4py_client.py", f"ws://127.0.0.1:{free_port()}/ws/sim")
    assert done.returncode == 1 and "cannot connect" in done.stderr


# -- Node: ws -------------------------------------------------------------------------


def test_node_example_requests_and_lines(start_gateway):
    if not (EXAMPLES / "node_modules" / "ws").is_dir():
        pytest.fail("examples/node_modules/ws is missing: (cd examples && npm ci), as tests/run.sh does")
    gw = start_gateway()
    done = run_example("node", "examples/node_client.mjs", "--send", "GET led", "--send", "PING", "--count", "2",
                       url=ws_url(gw))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["reply 1: led=0", "1 led=0", "reply 2: PONG", "2 PONG"]


# -- the arrows page in Chromium ------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests/run.sh does)")
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page_in(browser):
    """page_in() -> (page, requests): a fresh context recording every request made."""
    contexts = []

    def open_(route=None):
        context = browser.new_context()
        contexts.append(context)
        requests: list[str] = []
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("websocket", lambda ws: requests.append(ws.url))
        if route is not None:
            context.route(*route)
        return page, requests

    yield open_
    for context in contexts:
        context.close()


def press_arrows(page) -> None:
    from playwright.sync_api import expect

    status = page.get_by_role("status")
    expect(status).to_have_text(re.compile("^connected to ws://127.0.0.1:"), timeout=10_000)
    page.get_by_role("button", name="Up").click()
    expect(page.locator("#log li").first).to_have_text("UP", timeout=5_000)
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#log li").first).to_have_text("LEFT", timeout=5_000)
    page.get_by_role("button", name="Right").click()
    expect(page.locator("#log li")).to_have_text(["RIGHT", "LEFT", "UP"], timeout=5_000)


@pytest.fixture
def gateway_allowing():
    """gateway_allowing(*origins) -> a started Gateway whose Origin allowlist has `origins`."""
    started = []

    def start(*origins: str) -> Gateway:
        config = Config(server=ServerConfig(host="127.0.0.1", port=0), auth=AuthConfig(allowed_origins=origins),
                        devices=(DeviceConfig("sim", "sim://?interval=0"),))
        gw = Gateway(config).start()
        started.append(gw)
        assert gw.links["sim"].wait_connected(5)
        return gw

    yield start
    for gw in started:
        gw.shutdown()
    assert_no_gateway_threads()


@pytest.fixture
def static_server():
    """examples/ over HTTP on 127.0.0.1, from a thread named "test-http"; its origin."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(EXAMPLES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http")
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)
    server.server_close()


def test_arrows_page_opened_as_a_file(gateway_allowing, page_in):
    from playwright.sync_api import expect

    page_url = (EXAMPLES / "arrows.html").as_uri()
    refusing = gateway_allowing()  # the default Origin check refuses a file's "null" origin
    page, _ = page_in()
    page.goto(f"{page_url}?gateway={ws_url(refusing)}")
    expect(page.get_by_role("status")).to_have_text(re.compile("^disconnected"), timeout=10_000)
    expect(page.get_by_role("button", name="Up")).to_be_disabled()
    page.close()

    gw = gateway_allowing("null")
    page, requests = page_in()
    page.goto(f"{page_url}?gateway={ws_url(gw)}")
    press_arrows(page)
    assert [r for r in requests if not r.startswith(page_url)] == [ws_url(gw)]  # nothing else loaded


def test_arrows_page_served_by_another_web_server(static_server, gateway_allowing, page_in):
    gw = gateway_allowing(static_server)  # a page from another origin needs the allowlist
    page, requests = page_in()
    page.goto(f"{static_server}/arrows.html?gateway={ws_url(gw)}")
    press_arrows(page)
    assert requests == [f"{static_server}/arrows.html?gateway={ws_url(gw)}", ws_url(gw)]


def test_arrows_page_served_by_the_gateway(gateway_allowing, page_in):
    gw = gateway_allowing()  # same origin: the default Origin check lets it through
    page, requests = page_in()
    page.goto(f"{gw.url}/examples/arrows.html")
    press_arrows(page)
    assert requests == [f"{gw.url}/examples/arrows.html", ws_url(gw)]
