"""The page's vendored libraries (gateway/static/vendor/): each file is the pinned release's
own, unmodified (its sha256 is listed in vendor/README.md), has its licence beside it, and
is served by the gateway with the right type."""

from __future__ import annotations

import hashlib
import re
import urllib.request
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "gateway" / "static" / "vendor"
TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": None}


def listed_checksums() -> dict[str, str]:
    text = (VENDOR / "README.md").read_text()
    return {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.M)}


def test_every_vendored_file_is_listed_with_its_checksum():
    listed = listed_checksums()
    present = {p.name for p in VENDOR.iterdir() if p.name != "README.md"}
    assert present == set(listed), f"listed but missing: {set(listed) - present}; present but unlisted: {present - set(listed)}"
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} differs from the pinned release"


def test_each_library_has_its_licence():
    names = {p.name for p in VENDOR.iterdir()}
    for lib in ("uPlot", "xterm", "xterm-addon-fit"):
        licence = VENDOR / f"{lib}.LICENSE.txt"
        assert licence.name in names, f"{lib} has no licence file"
        assert "Permission is hereby granted, free of charge" in licence.read_text(), f"{licence.name}: not the MIT text"


def test_the_gateway_serves_them(start_gateway):
    gw = start_gateway(devices=["sim=sim://?interval=0"])
    for name in listed_checksums():
        ctype = TYPES[Path(name).suffix]
        if ctype is None:
            continue
        with urllib.request.urlopen(f"{gw.url}/static/vendor/{name}", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers.get("Content-Type", "").startswith(ctype), (name, resp.headers.get("Content-Type"))
            assert resp.read() == (VENDOR / name).read_bytes()
