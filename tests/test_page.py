"""The control page (`GET /`) in a real browser: Playwright driving Debian's Chromium.

Each test starts its own gateway (simulated devices, configured buttons) and opens the
page in a fresh browser context that refuses, and records, any request that would leave
the gateway. Screenshots land in test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import websocket
from playwright.sync_api import expect, sync_playwright

from conftest import assert_no_gateway_threads, free_port, ws_url
from gateway.app import Gateway
from gateway.cli import base_urls, token_query
from gateway.config import AuthConfig, Button, Config, DeviceConfig, SerialConfig, ServerConfig, Token

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT = 10_000  # ms, for every expectation

SIM_BUTTONS = (Button("LED on", "LED ON"), Button("LED off", "LED OFF"), Button("Ping", "PING"),
               Button("Temperature", "GET temp"))
ROVER_BUTTONS = tuple(Button(d, f"ECHO moved {d.lower()}") for d in ("Up", "Down", "Left", "Right"))

# The browser's own complaints while the gateway is down are expected there, and only there.
# What a page may log while its gateway stops and starts: a request in flight at the stop
# (the open device's counters, polled every 3 s) ends with an empty response or a reset.
NETWORK_ERRORS = re.compile(r"WebSocket connection to .* failed"
                            r"|Failed to load resource: net::ERR_(CONNECTION_(REFUSED|RESET)|EMPTY_RESPONSE)")

expect.set_options(timeout=TIMEOUT)


def devices(interval: float = 0.0, dead_port: int | None = None) -> tuple[DeviceConfig, ...]:
    """`sim` (telemetry every `interval` s, 0 for none) and `rover`, with buttons; with
    `dead_port`, also `bench`, a TCP device that never answers."""
    devs = [DeviceConfig("sim", f"sim://?interval={interval:g}", buttons=SIM_BUTTONS),
            DeviceConfig("rover", "sim://?interval=0", buttons=ROVER_BUTTONS)]
    if dead_port:
        devs.append(DeviceConfig("bench", f"tcp://127.0.0.1:{dead_port}"))
    return tuple(devs)


class GatewayRunner:
    """A gateway that can be stopped and started again on the same port."""

    def __init__(self, devs: tuple[DeviceConfig, ...], auth: AuthConfig | None = None, host: str = "127.0.0.1",
                 serial: SerialConfig | None = None):
        self.config = Config(server=ServerConfig(host=host, port=free_port()), devices=devs,
                             auth=auth or AuthConfig(), serial=serial or SerialConfig())
        self.gw: Gateway | None = None
        self.url = f"http://127.0.0.1:{self.config.server.port}"  # where the page is opened

    def start(self) -> Gateway:
        self.gw = Gateway(self.config).start()
        for link in self.gw.links.values():
            if link.config.kind == "sim":
                assert link.wait_connected(5), f"device {link.name} did not connect"
        return self.gw

    def stop(self) -> None:
        if self.gw is not None:
            self.gw.shutdown()
            self.gw = None


@pytest.fixture
def gateway():
    """gateway(devices, auth=None, serial=None) -> a started GatewayRunner; stopped at teardown."""
    runners = []

    def start(devs, auth=None, host="127.0.0.1", serial=None):
        runner = GatewayRunner(devs, auth, host, serial)
        runner.start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop()
    assert_no_gateway_threads()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests/run.sh does)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watch:
    """Everything a page asks for: anything not addressed to the gateway is refused and
    recorded, and so are console errors and uncaught exceptions."""

    def __init__(self, context, origin: str):
        self.origin = origin
        self.requests: list[str] = []
        self.outside: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.sockets: list[str] = []
        context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        self.requests.append(url)
        if url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def attach(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))

    def assert_clean(self, allowed: re.Pattern | None = None) -> None:
        assert not self.outside, f"requests left the gateway: {self.outside}"
        ws_origin = self.origin.replace("http://", "ws://", 1) + "/"
        assert all(u.startswith(ws_origin) for u in self.sockets), f"WebSockets elsewhere: {self.sockets}"
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        errors = [e for e in self.console_errors if not (allowed and allowed.search(e))]
        assert not errors, f"console errors: {errors}"


@pytest.fixture
def open_page(browser):
    """open_page(runner, path="/", **context_options) -> (page, watch)."""
    contexts = []

    def open_(runner, path="/", route_ws=None, **options):
        options.setdefault("viewport", {"width": 1280, "height": 860})
        context = browser.new_context(**options)
        contexts.append(context)
        watch = Watch(context, runner.url)
        page = context.new_page()
        watch.attach(page)
        if route_ws is not None:
            page.route_web_socket(re.compile(r"/ws/"), route_ws)
        page.goto(runner.url + path)
        return page, watch

    yield open_
    for context in contexts:
        context.close()


def shot(page, name: str, **options) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"page-{name}.png"), **options)


def row(page, kind: str, text: str):
    """Log rows of one kind (rx: device, tx: the user's, err, sys) holding exactly `text`."""
    return page.locator(f"#log .row.{kind}[data-text={json.dumps(text)}]")


def device_says(gw: Gateway, device: str, *texts: str, **params) -> None:
    """Make the simulator send `texts` (it echoes `ECHO x` as `x`), as another client
    of the gateway would, and wait until each has come back from the device."""
    ws = websocket.create_connection(ws_url(gw, device, format="json", **params), timeout=5)
    try:
        for i, text in enumerate(texts):
            ws.send(json.dumps({"line": f"ECHO {text}", "id": i}))
        waiting = set(texts)
        while waiting:
            msg = json.loads(ws.recv())
            if msg.get("type") == "line":
                waiting.discard(msg["line"])
    finally:
        ws.close()


def send(page, text: str) -> None:
    box = page.get_by_label("Line to send")
    box.fill(text)
    box.press("Enter")


NEXT_FRAMES = "new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"

PIXELS_JS = """([color]) => {
  const canvas = document.querySelector('#chart canvas');
  if (!canvas) return 0;
  const [r, g, b] = color.match(/\\d+/g).map(Number);
  const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (px[i + 3] > 200 && Math.abs(px[i] - r) + Math.abs(px[i + 1] - g) + Math.abs(px[i + 2] - b) < 40) n++;
  }
  return n;
}"""


def series_color(page, key: str) -> str:
    swatch = page.locator(f'#series-toggles [data-key="{key}"] .swatch')
    return swatch.evaluate("el => getComputedStyle(el).backgroundColor")


def test_page_loads_connects_sends_and_presses_buttons(gateway, open_page):
    runner = gateway(devices(dead_port=free_port()))
    device_says(runner.gw, "sim", "said before the page opened")
    page, watch = open_page(runner)

    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#device-name")).to_have_text("sim")  # the first device opens by itself
    devices_nav = page.get_by_role("navigation", name="Devices")
    expect(devices_nav.locator('[data-device="sim"]')).to_have_attribute("data-state", "connected")
    expect(devices_nav.locator('[data-device="rover"]')).to_have_attribute("data-state", "connected")
    expect(devices_nav.locator('[data-device="bench"]')).to_have_attribute("data-state", re.compile("reconnecting|disconnected"))
    expect(row(page, "rx", "said before the page opened")).to_have_count(1)  # history= replay

    # A typed line reaches the simulator; its ack and its reply show.
    send(page, "ECHO hello from the page")
    sent = row(page, "tx", "ECHO hello from the page")
    expect(sent.locator(".status")).to_have_class(re.compile(r"\backed\b"))
    expect(row(page, "rx", "hello from the page")).to_have_count(1)
    box = page.get_by_label("Line to send")
    expect(box).to_have_value("")
    send(page, "PING")
    expect(row(page, "rx", "PONG")).to_have_count(1)
    box.press("ArrowUp")
    expect(box).to_have_value("PING")
    box.press("ArrowUp")
    expect(box).to_have_value("ECHO hello from the page")
    box.press("ArrowDown")
    box.press("ArrowDown")
    expect(box).to_have_value("")

    # A configured button sends its line.
    page.get_by_role("button", name="LED on").click()
    expect(row(page, "tx", "LED ON").locator(".status")).to_have_class(re.compile(r"\backed\b"))
    expect(row(page, "rx", "OK LED ON")).to_have_count(1)
    assert runner.gw.links["sim"].counters.lines_out >= 4

    # Arrow keys press the buttons named Up/Down/Left/Right (not while typing).
    devices_nav.locator('[data-device="rover"]').click()
    expect(page.locator("#device-name")).to_have_text("rover")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#arrow-hint")).to_be_visible()
    page.locator("#log").focus()
    page.keyboard.press("ArrowLeft")
    expect(row(page, "rx", "moved left")).to_have_count(1)
    page.keyboard.press("ArrowUp")
    expect(row(page, "rx", "moved up")).to_have_count(1)
    box.focus()
    page.keyboard.press("ArrowDown")  # history, not the Down button
    send(page, "ECHO typed")
    expect(row(page, "rx", "typed")).to_have_count(1)  # the device answers in order...
    expect(row(page, "rx", "moved down")).to_have_count(0)  # ...so Down was never sent

    # A device that is away: the line is refused, and the error shows.
    devices_nav.locator('[data-device="bench"]').click()
    expect(page.locator("#device-state")).to_have_text(re.compile("reconnecting|disconnected"))
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    send(page, "PING")
    expect(row(page, "tx", "PING").locator(".status")).to_have_class(re.compile(r"\bfailed\b"))
    expect(page.locator("#log .row.err")).to_contain_text("device bench is")
    shot(page, "error")

    assert all("format=json" in u for u in watch.sockets if "/ws/_events" not in u), watch.sockets
    assert any(u.startswith(runner.url + "/api/devices") for u in watch.requests)
    watch.assert_clean()


def test_chart_draws_live_telemetry(gateway, open_page):
    runner = gateway(devices(interval=0.2))
    page, watch = open_page(runner)
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")

    toggles = page.locator("#series-toggles")
    for key in ("temp", "hum", "led", "uptime"):
        expect(toggles.locator(f'[data-key="{key}"]')).to_have_attribute("aria-pressed", "true")
    page.wait_for_function("Number(document.querySelector('#chart').dataset.points) >= 8", timeout=TIMEOUT)
    temp, hum = series_color(page, "temp"), series_color(page, "hum")
    page.wait_for_function(f"({PIXELS_JS})([{json.dumps(temp)}]) > 30", timeout=TIMEOUT)
    page.wait_for_function(f"({PIXELS_JS})([{json.dumps(hum)}]) > 30", timeout=TIMEOUT)
    expect(toggles.locator('[data-key="temp"] .val')).to_have_text(re.compile(r"^\d+(\.\d+)?$"))

    # A key toggled off leaves the chart; the others stay.
    toggles.locator('[data-key="hum"]').click()
    expect(toggles.locator('[data-key="hum"]')).to_have_attribute("aria-pressed", "false")
    page.wait_for_function(f"({PIXELS_JS})([{json.dumps(hum)}]) === 0", timeout=TIMEOUT)
    assert page.evaluate(PIXELS_JS, [temp]) > 30
    toggles.locator('[data-key="uptime"]').click()  # a counter: it squashes the rest

    page.get_by_role("button", name="LED on").click()
    send(page, "GET temp")
    expect(row(page, "rx", "OK LED ON")).to_have_count(1)
    page.get_by_role("button", name="Temperature").click()
    expect(page.locator("#log .row.tx")).to_have_count(3)
    expect(page.locator("#log .row.tx .status.acked")).to_have_count(3)
    expect(page.locator("#device-buttons .pressed")).to_have_count(0)
    page.wait_for_function("Number(document.querySelector('#chart').dataset.points) >= 25", timeout=TIMEOUT)
    shot(page, "desktop")
    page.emulate_media(color_scheme="dark")
    page.evaluate(NEXT_FRAMES)
    shot(page, "desktop-dark")
    watch.assert_clean()


def test_log_pause_clear_copy_and_telemetry_filter(gateway, open_page):
    runner = gateway(devices())
    page, watch = open_page(runner, permissions=["clipboard-read", "clipboard-write"])
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    send(page, "ECHO one")
    expect(row(page, "rx", "one")).to_have_count(1)

    page.get_by_role("button", name="Pause").click()
    send(page, "ECHO two")
    expect(page.locator("#paused-note")).to_contain_text("2 new lines held")  # ours and the reply
    expect(row(page, "rx", "two")).to_have_count(0)
    page.get_by_role("button", name="Resume").click()
    expect(row(page, "rx", "two")).to_have_count(1)
    expect(page.locator("#paused-note")).to_be_hidden()

    device_says(runner.gw, "sim", "temp=20.5 hum=33")
    expect(row(page, "rx", "temp=20.5 hum=33")).to_be_visible()
    page.get_by_role("checkbox", name="telemetry").uncheck()
    expect(row(page, "rx", "temp=20.5 hum=33")).to_be_hidden()
    expect(row(page, "rx", "two")).to_be_visible()
    page.get_by_role("checkbox", name="telemetry").check()

    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#toast")).to_contain_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "ECHO two" in copied and "\u2190 two" in copied and "temp=20.5 hum=33" in copied, copied

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#log .row")).to_have_count(0)
    send(page, "ECHO three")
    expect(row(page, "rx", "three")).to_have_count(1)
    expect(row(page, "rx", "one")).to_have_count(0)
    watch.assert_clean()


def test_reconnects_after_network_drop_and_gateway_restart(gateway, open_page):
    runner = gateway(devices())
    attempts = []          # every WebSocket the page opened to the device, as routed through Playwright
    held = {"on": False}   # while on, the page's attempts fail as if the network were down

    def route_ws(ws):
        if "/ws/_events" not in ws.url:  # the gateway's event stream is the page's other socket
            attempts.append(ws)
        if held["on"]:
            ws.close(code=4000, reason="network down (test)")
        else:
            ws.connect_to_server()

    page, watch = open_page(runner, route_ws=route_ws)
    link_state = page.locator("#link-state")
    expect(link_state).to_have_attribute("data-state", "live")
    send(page, "ECHO before the drop")
    expect(row(page, "rx", "before the drop")).to_have_count(1)

    # 1. The network drops; the gateway stays up. Resume with since= and run=.
    seq, run = runner.gw.links["sim"].hub.seq, runner.gw.run_id
    held["on"] = True
    attempts[-1].close(code=4000, reason="network down (test)")
    expect(link_state).to_have_attribute("data-state", "away")
    device_says(runner.gw, "sim", "missed 1", "missed 2")
    held["on"] = False
    expect(row(page, "rx", "missed 2")).to_have_count(1, timeout=15_000)
    expect(link_state).to_have_attribute("data-state", "live")
    expect(row(page, "rx", "missed 1")).to_have_count(1)
    expect(row(page, "rx", "before the drop")).to_have_count(1)  # resumed, not replayed twice
    assert f"since={seq}&run={run}" in attempts[-1].url, attempts[-1].url

    # 2. The gateway stops: the page says so, and keeps trying by itself.
    runner.stop()
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(link_state).to_have_attribute("data-state", "away")
    expect(banner).to_contain_text("attempt 2")  # one real attempt has failed
    shot(page, "reconnecting")

    # 3. It starts again on the same port; lines sent before the page is back still show.
    held["on"] = True
    runner.start()
    assert runner.gw.run_id != run
    device_says(runner.gw, "sim", "after restart 1", "after restart 2")
    held["on"] = False
    expect(row(page, "rx", "after restart 2")).to_have_count(1, timeout=15_000)
    expect(row(page, "rx", "after restart 1")).to_have_count(1)
    expect(page.locator("#log .row.sys", has_text="gateway was restarted")).to_have_count(1)
    expect(link_state).to_have_attribute("data-state", "live")
    expect(banner).to_be_hidden()
    assert f"run={run}" in attempts[-1].url, attempts[-1].url
    send(page, "ECHO back again")
    expect(row(page, "rx", "back again")).to_have_count(1)
    shot(page, "after-restart")
    watch.assert_clean(allowed=NETWORK_ERRORS)


def test_works_with_auth_on(gateway, open_page):
    auth = AuthConfig(tokens=(Token("s3cr+t", "control"), Token("look", "view")))
    runner = gateway(devices(), auth=auth)
    device_says(runner.gw, "sim", "said before", token="s3cr+t")

    # No token: the page says what is missing (the gateway answers /api/devices with 401).
    page, watch = open_page(runner)
    expect(page.locator("#device-list")).to_contain_text("needs a token")
    watch.assert_clean(allowed=re.compile(r"status of 401"))

    # The page URL's token goes to /api/devices and to the WebSocket.
    page, watch = open_page(runner, path="/?token=s3cr%2Bt")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    expect(row(page, "rx", "said before")).to_have_count(1)
    send(page, "ECHO with a token")
    expect(row(page, "rx", "with a token")).to_have_count(1)
    api = [u for u in watch.requests if "/api/devices" in u]
    assert api and all("token=s3cr%2Bt" in u for u in api), api
    assert watch.sockets and all("token=s3cr%2Bt" in u for u in watch.sockets), watch.sockets
    watch.assert_clean()

    # A view token watches; the page knows from hello that it may not send.
    page, watch = open_page(runner, path="/?token=look")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    expect(row(page, "rx", "with a token")).to_have_count(1)
    expect(page.locator("#send-button")).to_be_disabled()
    expect(page.locator("#device-buttons button").first).to_be_disabled()
    watch.assert_clean()


def test_readable_at_phone_width(gateway, open_page):
    runner = gateway(devices(interval=0.5))
    page, watch = open_page(runner, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                            is_mobile=True, has_touch=True)
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    page.get_by_role("button", name="LED on").click()
    send(page, "ECHO a rather long line from a phone, which should wrap and not widen the page at all")
    expect(row(page, "rx", "OK LED ON")).to_have_count(1)
    page.wait_for_function("Number(document.querySelector('#chart').dataset.points) >= 3", timeout=TIMEOUT)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for locator in (page.get_by_label("Line to send"), page.get_by_role("button", name="Send"),
                    page.get_by_role("button", name="LED on"), page.locator("#chart canvas")):
        b = locator.bounding_box()
        assert b and b["x"] >= 0 and b["x"] + b["width"] <= 390, (locator, b)
    shot(page, "phone", full_page=True)
    watch.assert_clean()


# -- no stale state while the gateway is away (issue 12, item 5) ------------------------------

CONNECTED = re.compile(r"\bconnected\b")  # "connected", not "disconnected"
UNKNOWN_TEXT = "unknown \u2014 gateway unreachable"


def test_no_device_state_is_claimed_while_the_gateway_is_away(gateway, open_page):
    runner = gateway(devices())
    page, watch = open_page(runner)
    nav = page.get_by_role("navigation", name="Devices")
    pill = page.locator("#device-state")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    for name in ("sim", "rover"):
        expect(nav.locator(f'[data-device="{name}"]')).to_have_attribute("data-state", "connected")
    expect(pill).to_have_text("connected")

    runner.stop()
    expect(page.locator("#banner")).to_be_visible()
    for name in ("sim", "rover"):
        expect(nav.locator(f'[data-device="{name}"]')).to_have_attribute("data-state", "unknown")
        expect(nav.locator(f'[data-device="{name}"] .state')).to_have_text(UNKNOWN_TEXT)
    expect(pill).to_have_text(UNKNOWN_TEXT)
    expect(pill).to_have_attribute("data-state", "unknown")
    expect(page.locator("#banner")).to_contain_text("attempt 2")  # a retry has failed: still nothing claimed
    expect(nav).not_to_contain_text(CONNECTED)
    expect(page.locator("#device-head")).not_to_contain_text(CONNECTED)
    expect(page.locator("header")).not_to_contain_text(CONNECTED)
    shot(page, "gateway-away")

    runner.start()  # the same port: the page finds it by itself
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live", timeout=15_000)
    for name in ("sim", "rover"):
        expect(nav.locator(f'[data-device="{name}"]')).to_have_attribute("data-state", "connected")
        expect(nav.locator(f'[data-device="{name}"] .state')).to_have_text("connected")
    expect(pill).to_have_text("connected")
    watch.assert_clean(allowed=NETWORK_ERRORS)


def test_a_device_going_away_shows_as_such(gateway, open_page):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    runner = gateway((DeviceConfig("bench", f"tcp://127.0.0.1:{port}"),))
    conn, _ = listener.accept()
    try:
        assert runner.gw.links["bench"].wait_connected(5)
        page, watch = open_page(runner, path="/#bench")
        nav = page.get_by_role("navigation", name="Devices")
        expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
        expect(page.locator("#device-state")).to_have_text("connected")
        conn.close()  # the device hangs up, and answers no more
        listener.close()
        expect(page.locator("#device-state")).to_have_text(re.compile(r"^(reconnecting|disconnected)$"))
        expect(nav.locator('[data-device="bench"]')).to_have_attribute("data-state", re.compile(r"reconnecting|disconnected"))
        expect(page.locator("#link-state")).to_have_attribute("data-state", "live")  # the gateway itself is fine
        watch.assert_clean()
    finally:
        conn.close()
        listener.close()


# -- bound beyond loopback: the printed URL, with its token, works (issue 12, item 2) ------------


def test_the_printed_page_url_with_its_token_works(gateway, open_page):
    runner = gateway(devices(), host="0.0.0.0")
    query = token_query(runner.gw)
    assert query.startswith("?token=")
    bases = base_urls(runner.gw)
    assert bases and not any("0.0.0.0" in b for b in bases), bases
    for base in bases:  # the host name, then each address, as printed
        runner.url = base
        page, watch = open_page(runner, path="/" + query)
        expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
        expect(page.locator("#device-state")).to_have_text("connected")
        send(page, "ECHO via " + base)
        expect(row(page, "rx", "via " + base)).to_have_count(1)
        assert watch.sockets and all(query[1:] in u for u in watch.sockets), watch.sockets
        watch.assert_clean()
    # Without the token, the page is served but says what is missing.
    runner.url = bases[-1]
    page, watch = open_page(runner)
    expect(page.locator("#device-list")).to_contain_text("needs a token")
    watch.assert_clean(allowed=re.compile(r"status of 401"))
