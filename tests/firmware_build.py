"""Builds the sample firmware's real runtimes from ../shared/firmware-hosts (see its README).

    hosts = firmware_hosts()                  # None when the sources are absent
    micropython_binary(hosts)                 # MicroPython's unix port, single-precision floats
    sketch_binary(hosts, mode, **settings)    # esp8266_gateway.ino on the ESP8266 host emulation

Builds go to a cache folder under the temporary directory, one per hash of everything that
goes into them (sources, flags, the sketch with its settings), so a rerun finds them; a
lock file keeps two test sessions from building the same thing at once. The shared
sources are never written: each build copies what it needs first.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKETCH = ROOT / "firmware_notes" / "esp8266_gateway" / "esp8266_gateway.ino"
MICROPYTHON_SCRIPT = ROOT / "firmware_notes" / "micropython" / "gateway_device.py"
STUBS = Path(__file__).resolve().parent / "firmware_stubs"
CACHE = Path(tempfile.gettempdir()) / "gateway-firmware-builds"
BUILD_TIMEOUT = 900  # a cold core build under load; measured 31-56 s on an idle machine

MICROPYTHON_MAKE = [
    "make", "-j2", "VARIANT=standard", "BUILD=build-f32", "FROZEN_MANIFEST=", "MICROPY_PY_BTREE=0",
    "MICROPY_PY_FFI=0", "MICROPY_PY_SSL=0", "MICROPY_USE_READLINE=0",
    "CFLAGS_EXTRA=-DMICROPY_FLOAT_IMPL=MICROPY_FLOAT_IMPL_FLOAT "
    "-DMICROPY_FLOAT_FORMAT_IMPL=MICROPY_FLOAT_FORMAT_IMPL_BASIC",
]
UMQTT = Path("lib/micropython-lib/micropython/umqtt.simple")
MODES = ("LINK_SERIAL", "LINK_TCP_SERVER", "LINK_TCP_CLIENT", "LINK_UDP", "LINK_MQTT")

# micros64() and WiFiServer::setNoDelay(): the ESP8266 core has them, its host emulation not.
SHIM = (STUBS / "esp8266_host_shim.cpp").read_text()


def firmware_hosts() -> Path | None:
    """The firmware-hosts folder: $FIRMWARE_HOSTS when set, else ../shared/firmware-hosts
    beside the checkout (or beside a worktree's parent), or /work/shared/firmware-hosts;
    None when it is absent."""
    if os.environ.get("FIRMWARE_HOSTS"):
        candidates = [os.environ["FIRMWARE_HOSTS"]]
    else:
        candidates = [ROOT.parent / "shared" / "firmware-hosts", ROOT.parent.parent / "shared" / "firmware-hosts",
                      "/work/shared/firmware-hosts"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "micropython").is_dir():
            return Path(candidate)
    return None


def tree_hash(*parts) -> str:
    """A hash of files (every file under a folder, by relative path and content) and strings."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for path in files:
                h.update(str(path.relative_to(part) if part.is_dir() else path.name).encode() + b"\0")
                h.update(path.read_bytes())
        else:
            h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:20]


@contextmanager
def locked(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_make(args: list[str], cwd: Path, log: Path) -> float:
    """Run make, its output into `log`; seconds taken. A failure raises with the log's tail."""
    started = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(args[:2])} in {cwd} failed ({proc.returncode}); log {log}:\n{tail}")
    return time.monotonic() - started


BUILD_TIMES: dict[str, float] = {}  # what each build took in this session (0: cached)


def micropython_binary(hosts: Path) -> Path:
    """MicroPython's unix port with single-precision floats, as on the ESP8266."""
    source = hosts / "micropython"
    key = tree_hash(source, *MICROPYTHON_MAKE)
    target = CACHE / f"micropython-{key}"
    binary = target / "ports" / "unix" / "build-f32" / "micropython"
    with locked(f"micropython-{key}"):
        if binary.exists():
            BUILD_TIMES.setdefault("micropython", 0.0)
            return binary
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)
        BUILD_TIMES["micropython"] = run_make(MICROPYTHON_MAKE, target / "ports" / "unix", target / "build.log")
        return binary


def umqtt_path(hosts: Path) -> Path:
    return hosts / "micropython" / UMQTT


def _core(hosts: Path) -> tuple[Path, list[str]]:
    """The ESP8266 host emulation copied to the cache, with the make arguments for a sketch."""
    source, pubsub = hosts / "esp8266-arduino", hosts / "pubsubclient"
    key = tree_hash(source, pubsub, SHIM)
    core = CACHE / f"esp8266-core-{key}"
    shim = core / "shim" / "firmware_shim.cpp"
    args = ["make", "-j2", "FORCE32=0", f"ULIBDIRS={pubsub}", f"USERCXXSOURCES={shim}"]
    if not (core / "copied").exists():
        for stale in CACHE.glob("esp8266-core-*"):  # built from other sources: not needed again
            shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(source, core, symlinks=True)
        shim.parent.mkdir()
        shim.write_text(SHIM)
        (core / "copied").touch()
    return core, args


def sketch_source(mode: str, **settings) -> str:
    """The sketch with LINK_MODE and settings changed, as a user edits them at its top:
    `TCP_PORT=1234` or `GATEWAY_HOST="127.0.0.1"` replace `static const ... NAME = ...;`,
    and `MAX_LINE=64` a `#define`."""
    if mode not in MODES:
        raise ValueError(f"unknown LINK_MODE {mode!r}: one of {', '.join(MODES)}")
    text = SKETCH.read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^#define LINK_MODE \w+$", f"#define LINK_MODE {mode}", text)
    assert n == 1, "the sketch lost its #define LINK_MODE line"
    for name, value in settings.items():
        literal = f'"{value}"' if isinstance(value, str) else str(value)
        text, n = re.subn(rf"(?m)^(static const [\w ]+ {name}(?:\[\])? = )[^;]+;", rf"\g<1>{literal};", text)
        if n == 0:
            text, n = re.subn(rf"(?m)^(#define {name} )\S+", rf"\g<1>{literal}", text)
        assert n == 1, f"the sketch has no setting {name}"
    return text


def sketch_binary(hosts: Path, mode: str, **settings) -> Path:
    """esp8266_gateway.ino in LINK_MODE `mode` with `settings`, built for the host."""
    source = sketch_source(mode, **settings)
    with locked("esp8266-core"):
        core, args = _core(hosts)
        key = tree_hash(core.name, source, *args)
        binary = CACHE / "sketches" / key / "esp8266_gateway.bin"
        for old in (CACHE / "sketches").glob("*/esp8266_gateway.bin"):  # each session has new ports
            if time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old.parent, ignore_errors=True)
        if binary.exists():
            BUILD_TIMES.setdefault(f"sketch {mode}", 0.0)
            return binary
        folder = binary.parent / "esp8266_gateway"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "esp8266_gateway.ino").write_text(source, encoding="utf-8")
        cold = not any((core / "tests" / "host" / "bin").rglob("fullcore.a"))
        seconds = run_make(args + [str(folder / "esp8266_gateway")], core / "tests" / "host", binary.parent / "build.log")
        BUILD_TIMES["esp8266 core + sketch" if cold else f"sketch {mode}"] = seconds
        built = core / "tests" / "host" / "bin" / str(folder / "esp8266_gateway").lstrip("/")
        shutil.copy2(built, binary)
        return binary
