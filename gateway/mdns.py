"""mDNS (python-zeroconf): a gateway bound beyond loopback advertises its page as
`_http._tcp` and its WebSocket endpoint as `_gateway-ws._tcp`, with the devices in TXT, so
a phone on the same network finds http://HOSTNAME.local:PORT/. `[mdns] enabled = false`
turns it off; a gateway bound to loopback advertises nothing.

Threads: zeroconf's own loop thread (started by Zeroconf(), stopped and joined by
close()) and "mdns-register", which announces the services (a few seconds of probing)
and ends; Advertiser.stop() joins both.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading

log = logging.getLogger(__name__)

HTTP_TYPE = "_http._tcp.local."
WS_TYPE = "_gateway-ws._tcp.local."
TXT_MAX = 255  # one TXT string


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def addresses_for(host: str) -> list[str]:
    """The addresses to advertise for a server bound to `host`: that address, or for a
    wildcard bind every non-loopback address of the machine's interfaces (IPv6 ones only
    when bound to "::")."""
    bare = host.strip("[]")
    if bare not in ("", "0.0.0.0", "::"):
        return [bare]
    import ifaddr  # zeroconf's dependency

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            if addr.is_loopback or addr.is_link_local or (addr.version == 6 and bare != "::"):
                continue
            out.append(addr.compressed)
    return out


def device_txt(names: list[str]) -> dict[str, str]:
    """TXT properties naming the devices: "devices" (comma-separated, cut to fit one TXT
    string), "path" for the WebSocket URLs and "count"."""
    text = ",".join(names)
    if len("devices=") + len(text) > TXT_MAX:
        text = text[: TXT_MAX - len("devices=")].rsplit(",", 1)[0]
    return {"path": "/ws/", "devices": text, "count": str(len(names))}


class Advertiser:
    def __init__(self, gw, name: str = ""):
        self.gw = gw
        self.instance = name or f"gateway on {socket.gethostname()}"
        self.zc = None
        self.infos = []
        self._thread: threading.Thread | None = None

    def _info(self, type_: str, properties: dict, addresses: list[str]):
        from zeroconf import ServiceInfo

        host, port = self.gw.address
        return ServiceInfo(type_, f"{self.instance}.{type_}", port=port, properties=properties,
                           server=f"{socket.gethostname()}.local.", parsed_addresses=addresses)

    def start(self) -> bool:
        """Start announcing; False (and nothing started) when bound to loopback or no
        address was found."""
        from zeroconf import IPVersion, Zeroconf

        host, _ = self.gw.address
        if is_loopback(host):
            return False
        addresses = addresses_for(host)
        if not addresses:
            log.warning("mDNS: no address to advertise for %s", host)
            return False
        scheme = "https" if self.gw.config.server.certfile else "http"
        self.infos = [
            self._info(HTTP_TYPE, {"path": "/", "scheme": scheme}, addresses),
            self._info(WS_TYPE, device_txt(list(self.gw.links)), addresses),
        ]
        v6 = any(":" in a for a in addresses)
        self.zc = Zeroconf(interfaces=addresses, ip_version=IPVersion.All if v6 else IPVersion.V4Only)
        self._thread = threading.Thread(target=self._register, name="mdns-register")
        self._thread.start()
        return True

    def _register(self) -> None:
        for info in self.infos:
            try:
                self.zc.register_service(info, allow_name_change=True)
            except Exception as exc:  # closed meanwhile, or a network error: never fatal
                log.warning("mDNS: cannot advertise %s: %s", info.name, exc)
                return
        log.info("mDNS: advertising %s", ", ".join(i.name for i in self.infos))

    def update_devices(self) -> None:
        """Announce the devices again (after a reload)."""
        if self.zc is None or len(self.infos) < 2:
            return
        old = self.infos[1]
        info = self._info(WS_TYPE, device_txt(list(self.gw.links)), old.parsed_addresses())
        info.name = old.name  # as registered (allow_name_change may have numbered it)
        self.infos[1] = info
        try:
            self.zc.update_service(info)
        except Exception as exc:
            log.warning("mDNS: cannot update %s: %s", info.name, exc)

    def stop(self, timeout: float = 3.0) -> None:
        if self.zc is None:
            return
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            try:
                self.zc.unregister_all_services()  # goodbyes: browsers forget it at once
            except Exception as exc:
                log.debug("mDNS: unregister failed: %s", exc)
        self.zc.close()  # stops and joins zeroconf's loop thread; a registration still probing fails
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("mDNS: %s did not end within %.1f s", self._thread.name, timeout)
        self.zc = None
