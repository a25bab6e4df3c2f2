"""SIGHUP: read the config file again and apply its devices to the running gateway.

Devices added, removed or changed are applied with Gateway.add_device, remove_device and
update_device; the clients of a device that did not change keep their connections (a
changed device keeps them too, and sees it reopen). A file that does not load is refused
with one line, and the running config stays. The other sections ([server], [limits],
[auth], [mqtt], [mdns]) cannot change while the gateway runs: a change there is logged
and waits for a restart.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from .config import Config, ConfigError

log = logging.getLogger("gateway.reload")

FIXED_SECTIONS = ("server", "limits", "auth", "mqtt", "mdns")


def apply(gw, load) -> bool:
    """Load a config with `load()` and apply its devices to `gw`; False when refused."""
    try:
        new: Config = load()
    except ConfigError as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return False
    old: Config = gw.config
    for section in FIXED_SECTIONS:
        if getattr(new, section) != getattr(old, section):
            log.warning("reload: [%s] changed in %s; it takes effect at the next restart", section, new.source)
    before = {d.name: d for d in old.devices}
    after = {d.name: d for d in new.devices}
    removed = [name for name in before if name not in after]
    added = [name for name in after if name not in before]
    changed = [name for name in after if name in before and after[name] != before[name]]
    for name in removed:
        gw.remove_device(name)
    for name in changed + added:
        try:
            (gw.update_device(name, after[name]) if name in changed else gw.add_device(after[name]))
        except ConfigError as exc:  # its rfc2217 port cannot be served with the running [auth]
            log.error("reload: device %s not applied: %s", name, exc)
            after[name] = before.get(name)
    gw.config = replace(old, devices=tuple(d for d in after.values() if d is not None))
    log.info("reloaded %s: %d added (%s), %d removed (%s), %d changed (%s), %d unchanged",
             new.source, len(added), ", ".join(added) or "-", len(removed), ", ".join(removed) or "-",
             len(changed), ", ".join(changed) or "-", len(after) - len(added) - len(changed))
    return True
