"""mDNS: a gateway bound beyond loopback is found by a real zeroconf browser, its devices
in TXT (updated by a reload), withdrawn at shutdown; `[mdns] enabled = false` and a
loopback bind advertise nothing.

The gateway binds to this machine's own address (the one its default route leaves from):
multicast sent there loops back to a browser on the same host. A network namespace was
tried too; it has only `lo` here (no dummy or veth interfaces in this kernel)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import stop_process, wait_for
from gateway.config import ConfigError, from_dict
from gateway.mdns import HTTP_TYPE, WS_TYPE, Advertiser

zeroconf = pytest.importorskip("zeroconf")

ROOT = Path(__file__).parent.parent


def own_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # sends nothing: picks the address of the default route
        except OSError as exc:
            pytest.fail(f"no non-loopback IPv4 address to advertise on ({exc}): mDNS cannot be tested here")
        address = s.getsockname()[0]
    if address.startswith("127."):
        pytest.fail("this machine has only loopback: mDNS cannot be tested here")
    return address


class Seen:
    """A zeroconf ServiceListener: the names added, updated and removed."""

    def __init__(self):
        self.added: set[str] = set()
        self.removed: set[str] = set()
        self.lock = threading.Lock()

    def add_service(self, zc, type_, name):
        with self.lock:
            self.added.add(name)
            self.removed.discard(name)

    def update_service(self, zc, type_, name):
        pass

    def remove_service(self, zc, type_, name):
        with self.lock:
            self.removed.add(name)


@pytest.fixture
def browser():
    address = own_address()
    zc = zeroconf.Zeroconf(interfaces=[address])
    seen = Seen()
    browsers = [zeroconf.ServiceBrowser(zc, t, seen) for t in (WS_TYPE, HTTP_TYPE)]
    yield zc, seen, address
    for b in browsers:
        b.cancel()
    zc.close()


def run(tmp_path: Path, name: str, text: str, address: str):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    err_path = tmp_path / f"{name}.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_gateway.py"), "--host", address, "--port", "0",
                                 "--config", str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()
    m = re.fullmatch(r"listening on http://[\d.]+:(\d+)\n", line)
    assert m, (line, err_path.read_text())
    return proc, int(m.group(1)), path


def stop(proc) -> None:
    stop_process(proc)


def on_port(zc, seen: Seen, type_: str, port: int):
    """The ServiceInfo of a service of `type_` seen with `port`, or None."""
    with seen.lock:
        names = [n for n in seen.added if n.endswith(type_) and n not in seen.removed]
    for name in names:
        info = zc.get_service_info(type_, name, timeout=500)
        if info is not None and info.port == port:
            return info
    return None


DEVICES = '[auth]\nanonymous = true\n[[device]]\nname = "a"\nurl = "sim://?interval=0"\n' \
          '[[device]]\nname = "b"\nurl = "sim://?interval=0"\n'


def test_advertised_updated_on_reload_withdrawn_at_shutdown(browser, tmp_path):
    zc, seen, address = browser
    quiet, quiet_port, _ = run(tmp_path, "quiet", DEVICES + "[mdns]\nenabled = false\n", address)
    loud = None
    try:
        loud, port, path = run(tmp_path, "loud", DEVICES + '[mdns]\nname = "test gateway"\n', address)
        ws = wait_for(lambda: on_port(zc, seen, WS_TYPE, port), timeout=15, what="the _gateway-ws._tcp service")
        assert ws.decoded_properties == {"path": "/ws/", "devices": "a,b", "count": "2"}
        assert address in ws.parsed_addresses()
        assert ws.name.startswith("test gateway")
        page = wait_for(lambda: on_port(zc, seen, HTTP_TYPE, port), timeout=15, what="the _http._tcp service")
        assert page.decoded_properties == {"path": "/", "scheme": "http"}
        # Found the loud one, announced after the quiet one started: the quiet one is silent.
        assert on_port(zc, seen, WS_TYPE, quiet_port) is None
        assert on_port(zc, seen, HTTP_TYPE, quiet_port) is None

        path.write_text(path.read_text() + '[[device]]\nname = "c"\nurl = "sim://?interval=0"\n')
        loud.send_signal(signal.SIGHUP)
        wait_for(lambda: (i := on_port(zc, seen, WS_TYPE, port)) and i.decoded_properties["devices"] == "a,b,c",
                 timeout=10, what="the TXT record with the device added")

        stop(loud)  # goodbyes: the browser forgets both services at once
        wait_for(lambda: {ws.name, page.name} <= seen.removed, timeout=5, what="the services withdrawn")
    finally:
        if loud is not None and loud.poll() is None:
            stop(loud)
        stop(quiet)


def test_not_on_loopback(start_gateway):
    gw = start_gateway()
    before = {t.name for t in threading.enumerate()}
    assert Advertiser(gw).start() is False
    assert {t.name for t in threading.enumerate()} == before


@pytest.mark.parametrize("table, expected", [
    ({"enabled": "no"}, "gw.toml: mdns.enabled = 'no': expected bool"),
    ({"enable": False}, "gw.toml: mdns.enable = False: unknown key (known: enabled, name)"),
    ({"name": "x" * 64}, "gw.toml: mdns.name = '" + "x" * 64 + "': expected at most 63 bytes of printable text"),
])
def test_mdns_section_errors_are_one_line(table, expected):
    with pytest.raises(ConfigError) as exc:
        from_dict({"mdns": table}, "gw.toml")
    assert str(exc.value) == expected


def test_mdns_section_defaults_and_values():
    assert from_dict({}, "gw.toml").mdns.enabled is True
    config = from_dict({"mdns": {"enabled": False, "name": "bench"}}, "gw.toml")
    assert (config.mdns.enabled, config.mdns.name) == (False, "bench")
