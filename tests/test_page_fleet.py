"""The page for a fleet (issue 15) in Chromium: a real gateway with 500 simulated devices
(`sim://?interval=0`, so they stay quiet), the list's search, its filters by state and by
owner gateway, the counts per state in the header, the rows in the DOM bounded however
many are listed, and changes arriving live through /ws/_events.

Devices of another gateway (as the broker's discovery adds them) are simulated devices
here whose config names another owner: the page sees what it would see of them, an owner
and `remote: true` in the event stream."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

from playwright.sync_api import expect

from conftest import free_port
from gateway.config import DeviceConfig
from test_page import NETWORK_ERRORS, ROVER_BUTTONS, browser, gateway, open_page, row, send, shot  # noqa: F401 (fixtures)

FLEET = 500
ROOMS = ("kitchen", "garage", "lab", "roof", "shed")
NAMES = [f"{ROOMS[i % len(ROOMS)]}-{i:03d}" for i in range(FLEET)]
MAX_ROWS = 100  # rows in the DOM, whatever the list holds


def fleet_devices() -> tuple[DeviceConfig, ...]:
    return tuple(DeviceConfig(name, "sim://?interval=0") for name in NAMES)


def rows_in_dom(page) -> int:
    return page.locator("#device-list li").count()


def listed_names(page) -> list[str]:
    """The names of the rows in the DOM, top to bottom."""
    return page.evaluate("""() => [...document.querySelectorAll('#device-list li')]
        .sort((a, b) => a.dataset.index - b.dataset.index)
        .map(li => li.querySelector('button').dataset.device)""")


def count(page, state: str):
    return page.locator(f'#fleet-counts button[data-state="{state}"] .n')


def api(gw, method: str, path: str, body=None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(gw.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def test_500_devices_searched_filtered_and_followed_live(gateway, open_page):
    t0 = time.monotonic()
    runner = gateway(fleet_devices())
    started = time.monotonic() - t0
    gw = runner.gw
    page, watch = open_page(runner)
    t0 = time.monotonic()
    expect(page.locator("#fleet-shown")).to_have_text(str(FLEET))
    expect(count(page, "connected")).to_have_text(str(FLEET))
    listed_in = time.monotonic() - t0
    expect(page.locator("#gateway-id")).to_have_text(gw.gateway_id)
    expect(page.locator("#fleet-counts .total .n")).to_have_text(str(FLEET))
    expect(page.locator("#device-name")).to_have_text(NAMES[0])  # the gateway's first opens by itself
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")

    # Only the rows in view are in the DOM, in name order, around the open device's;
    # scrolled, the first ones, the last ones.
    nav = page.get_by_role("navigation", name="Devices")
    expect(nav.locator(f'[data-device="{NAMES[0]}"]')).to_be_in_viewport()
    assert 0 < rows_in_dom(page) < MAX_ROWS
    in_order = sorted(NAMES)
    shown = listed_names(page)
    first = in_order.index(shown[0])
    assert shown == in_order[first:first + len(shown)] and NAMES[0] in shown
    page.locator("#device-list").evaluate("el => { el.scrollTop = 0; }")
    expect(nav.locator(f'[data-device="{in_order[0]}"]')).to_be_visible()
    assert listed_names(page) == in_order[:rows_in_dom(page)]
    page.locator("#device-list").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(nav.locator(f'[data-device="{in_order[-1]}"]')).to_be_visible()
    assert 0 < rows_in_dom(page) < MAX_ROWS
    assert listed_names(page)[-1] == in_order[-1]
    shot(page, "fleet-500")

    # Search narrows: a word, then two; the counts stay those of the whole fleet.
    search = page.get_by_label("Search devices")
    search.fill("lab")
    expect(page.locator("#fleet-shown")).to_have_text(f"100 of {FLEET}")
    assert all(n.startswith("lab-") for n in listed_names(page))
    assert 0 < rows_in_dom(page) < MAX_ROWS
    search.fill("LAB 01")
    wanted = sorted(n for n in NAMES if n.startswith("lab-") and "01" in n)
    expect(page.locator("#fleet-shown")).to_have_text(f"{len(wanted)} of {FLEET}")
    assert listed_names(page) == wanted
    expect(count(page, "connected")).to_have_text(str(FLEET))
    search.fill("no-such-device")
    expect(page.locator("#device-list .empty")).to_have_text("No device matches.")
    assert rows_in_dom(page) == 0
    search.fill("")
    expect(page.locator("#fleet-shown")).to_have_text(str(FLEET))

    # Changes come live: one removed, one that cannot connect added, one reopened on a
    # port where nobody listens; the counts follow, and the state filter lists them.
    dead = f"tcp://127.0.0.1:{free_port()}"
    assert api(gw, "DELETE", f"/api/devices/{NAMES[1]}") == 200
    assert api(gw, "POST", "/api/devices", {"name": "lost-one", "url": dead}) == 201
    assert api(gw, "PATCH", f"/api/devices/{NAMES[2]}", {"url": dead}) == 200
    expect(count(page, "connected")).to_have_text(str(FLEET - 2))
    expect(count(page, "reconnecting")).to_have_text("2")
    expect(page.locator("#fleet-counts .total .n")).to_have_text(str(FLEET))
    expect(nav.locator(f'[data-device="{NAMES[1]}"]')).to_have_count(0)
    page.get_by_label("Filter by state").select_option("reconnecting")
    expect(page.locator("#fleet-shown")).to_have_text(f"2 of {FLEET}")
    assert listed_names(page) == sorted(["lost-one", NAMES[2]])
    # The device that was reopened comes back: it leaves the filtered list by itself.
    assert api(gw, "PATCH", f"/api/devices/{NAMES[2]}", {"url": "sim://?interval=0"}) == 200
    expect(page.locator("#fleet-shown")).to_have_text(f"1 of {FLEET}")
    expect(count(page, "connected")).to_have_text(str(FLEET - 1))
    assert listed_names(page) == ["lost-one"]
    # A count in the header is the same filter: pressed, it lists its state; again, all.
    page.locator('#fleet-counts button[data-state="connected"]').click()
    expect(page.get_by_label("Filter by state")).to_have_value("connected")
    expect(page.locator("#fleet-shown")).to_have_text(f"{FLEET - 1} of {FLEET}")
    page.locator('#fleet-counts button[data-state="connected"]').click()
    expect(page.locator("#fleet-shown")).to_have_text(str(FLEET))

    # Owners: this gateway's devices, and three of another gateway's.
    for i in range(3):
        gw.add_device(DeviceConfig(f"far-{i}", "sim://?interval=0", owner="gw-far"))
    expect(page.locator("#fleet-shown")).to_have_text(str(FLEET + 3))
    owner = page.get_by_label("Filter by gateway")
    owners = sorted([(gw.gateway_id, FLEET), ("gw-far", 3)])
    expect(owner.locator("option")).to_have_text(["any gateway"] + [f"{o} ({n})" for o, n in owners])
    owner.select_option("gw-far")
    expect(page.locator("#fleet-shown")).to_have_text(f"3 of {FLEET + 3}")
    assert listed_names(page) == ["far-0", "far-1", "far-2"]
    expect(nav.locator('[data-device="far-1"] .owner')).to_have_text("on gw-far")
    shot(page, "fleet-remote")
    owner.select_option(gw.gateway_id)
    expect(page.locator("#fleet-shown")).to_have_text(f"{FLEET} of {FLEET + 3}")
    search.fill("kitchen")  # filters combine
    expect(page.locator("#fleet-shown")).to_have_text(f"100 of {FLEET + 3}")

    # The selected device's view works as with a few devices.
    nav.locator('[data-device="kitchen-005"]').click()
    expect(page.locator("#device-name")).to_have_text("kitchen-005")
    expect(nav.locator('[data-device="kitchen-005"]')).to_have_attribute("aria-current", "true")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    send(page, "PING")
    expect(row(page, "rx", "PONG")).to_have_count(1)
    expect(page.locator("#device-counters")).to_contain_text("1 clients")
    shot(page, "fleet-filtered")
    # One event stream for the whole list; a device stream only for each device opened.
    paths = sorted(u.split("?")[0].rsplit("/", 1)[1] for u in watch.sockets)
    assert paths == sorted(["_events", NAMES[0], "kitchen-005"]), watch.sockets
    watch.assert_clean()
    print(f"\n{FLEET} devices: gateway started and connected in {started:.2f} s, listed by the page in "
          f"{listed_in:.2f} s; {rows_in_dom(page)} rows in the DOM")


def test_the_open_device_in_view_a_burst_in_few_frames_and_the_keyboard(gateway, open_page):
    runner = gateway(fleet_devices())
    gw = runner.gw
    last = sorted(NAMES)[-3]
    page, watch = open_page(runner, path=f"/#{last}")
    nav = page.get_by_role("navigation", name="Devices")
    expect(page.locator("#device-name")).to_have_text(last)
    expect(nav.locator(f'[data-device="{last}"]')).to_be_in_viewport()
    expect(nav.locator(f'[data-device="{last}"]')).to_have_attribute("aria-current", "true")
    expect(count(page, "connected")).to_have_text(str(FLEET))

    # 200 devices removed as fast as the gateway can (4 threads): 200 events, painted
    # in far fewer frames (one per animation frame, whatever arrived meanwhile).
    renders = int(page.locator("#device-list").get_attribute("data-renders"))
    t0 = time.monotonic()
    removers = [threading.Thread(target=lambda k=k: [gw.remove_device(n) for n in NAMES[k:200:4]],
                                 name=f"test-remove-{k}") for k in range(4)]
    for t in removers:
        t.start()
    for t in removers:
        t.join(30)
    took = time.monotonic() - t0
    expect(page.locator("#fleet-counts .total .n")).to_have_text(str(FLEET - 200))
    expect(count(page, "connected")).to_have_text(str(FLEET - 200))
    frames = int(page.locator("#device-list").get_attribute("data-renders")) - renders
    assert frames < 100, f"{frames} frames painted for 200 events"
    assert 0 < rows_in_dom(page) < MAX_ROWS
    expect(nav.locator(f'[data-device="{last}"]')).to_be_in_viewport()

    # The open device removed: its view closes, and the list keeps every other state.
    gw.remove_device(last)
    expect(page.locator("#empty-main")).to_be_visible()
    expect(count(page, "connected")).to_have_text(str(FLEET - 201))
    expect(page.locator('#fleet-counts [data-state="unknown"]')).to_have_count(0)
    expect(nav.locator(f'[data-device="{last}"]')).to_have_count(0)

    # The keyboard walks the whole list, past the rows in the DOM, and opens a device.
    left = sorted(set(NAMES[200:]) - {last})
    focused = "document.activeElement.dataset.device"
    nav.locator("button.device").first.focus()
    page.keyboard.press("End")
    assert page.evaluate(focused) == left[-1]
    page.keyboard.press("Home")
    assert page.evaluate(focused) == left[0]
    for _ in range(40):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("PageDown")
    page.keyboard.press("PageUp")
    assert page.evaluate(focused) == left[40]
    assert 0 < rows_in_dom(page) < MAX_ROWS
    page.keyboard.press("Enter")
    expect(page.locator("#device-name")).to_have_text(left[40])
    expect(nav.locator(f'[data-device="{left[40]}"]')).to_have_attribute("aria-current", "true")
    watch.assert_clean()
    print(f"\n200 devices removed in {took:.2f} s: {frames} frames painted")


def test_a_lost_gateway_claims_no_state_in_the_counts(gateway, open_page):
    runner = gateway(tuple(DeviceConfig(f"d{i}", "sim://?interval=0") for i in range(20)))
    page, watch = open_page(runner)
    expect(count(page, "connected")).to_have_text("20")
    runner.stop()
    expect(count(page, "unknown")).to_have_text("20")
    expect(page.locator("header")).not_to_contain_text(re.compile(r"\bconnected\b"))
    expect(page.locator('#fleet-counts [data-state="connected"]')).to_have_count(0)
    runner.start()
    expect(count(page, "connected")).to_have_text("20", timeout=15_000)
    expect(page.locator('#fleet-counts button[data-state="unknown"]')).to_have_count(0)
    # (a request in flight when the gateway stopped may end in any network error)
    watch.assert_clean(allowed=re.compile(NETWORK_ERRORS.pattern + r"|Failed to load resource: net::ERR_\w+"))


def test_arrow_keys_move_in_the_list_only_while_it_has_the_focus(gateway, open_page):
    devs = (DeviceConfig("rover", "sim://?interval=0", buttons=ROVER_BUTTONS),
            *(DeviceConfig(f"z{i}", "sim://?interval=0") for i in range(10)))
    runner = gateway(devs)
    page, watch = open_page(runner, path="/#rover")
    nav = page.get_by_role("navigation", name="Devices")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    nav.locator('[data-device="z3"]').click()  # a mouse click: the focus leaves the list
    nav.locator('[data-device="rover"]').click()
    expect(page.locator("#device-name")).to_have_text("rover")
    expect(page.locator("#link-state")).to_have_attribute("data-state", "live")
    page.keyboard.press("ArrowLeft")
    expect(row(page, "rx", "moved left")).to_have_count(1)

    nav.locator('[data-device="rover"]').focus()  # the keyboard's way in
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.dataset.device") == "z0"
    send(page, "ECHO typed")
    expect(row(page, "rx", "typed")).to_have_count(1)  # the device answers in order...
    expect(row(page, "rx", "moved down")).to_have_count(0)  # ...so Down was never sent
    watch.assert_clean()
