"""The gateway as an installed tool: the wheel built from pyproject.toml, installed into a
fresh virtualenv, run from another directory; the systemd unit checked by systemd itself;
readiness, watchdog and stopping told over a NOTIFY_SOCKET of the test's own; journald
logging without timestamps."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import start_process, stop_process

from gateway import __version__

ROOT = Path(__file__).parent.parent


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_pyproject_pins_match_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for dep in project["dependencies"]:
        name, _, version = dep.partition("~=")
        assert version, f"{dep!r}: expected a compatible-release pin (~=)"
        declared[name.strip().lower().replace("_", "-")] = version.strip()
    assert declared == requirement_pins(ROOT / "requirements.txt")
    assert project["requires-python"] == ">=3.11"
    assert set(project["scripts"]) == {"gateway", "gateway-sim"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # The backend pinned in pyproject.toml is in .venv (requirements-dev.txt): no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(ROOT)], check=True, timeout=120)
    (path,) = out.glob("*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel (and its dependencies, from PyPI) installed."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, timeout=300)
    return venv / "bin"


def test_wheel_holds_the_page_vendored_assets_and_examples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ROOT.joinpath("gateway", "static").rglob("*"):
        if path.is_file():
            assert path.relative_to(ROOT).as_posix() in names
    assert "gateway/examples/arrows.html" in names
    assert "gateway/static/vendor/uPlot.iife.min.js" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_version_commands_and_module(installed, tmp_path):
    for cmd in ([str(installed / "gateway"), "--version"],
                [str(installed / "python"), "-m", "gateway", "--version"]):
        out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith(f" {__version__}"), out.stdout
    assert subprocess.run([str(installed / "gateway"), "--version"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30).stdout == f"gateway {__version__}\n"
    sim = subprocess.run([str(installed / "gateway-sim"), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=30)
    assert sim.returncode == 0 and "--listen" in sim.stdout, sim.stderr
    where = subprocess.run([str(installed / "python"), "-c", "import gateway; print(gateway.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=30).stdout.strip()
    assert where.startswith(str(installed.parent)), where  # the installed copy, not the checkout


start = start_process


stop = stop_process


def test_installed_gateway_serves_page_assets_and_examples_from_the_package(installed, tmp_path):
    proc, url = start([str(installed / "gateway"), "--port", "0"], cwd=tmp_path)
    try:
        for route, source in [("/", "gateway/static/index.html"),
                              ("/static/vendor/uPlot.iife.min.js", "gateway/static/vendor/uPlot.iife.min.js"),
                              ("/static/app.js", "gateway/static/app.js"),
                              ("/examples/arrows.html", "gateway/examples/arrows.html")]:
            with urllib.request.urlopen(url + route, timeout=5) as resp:
                assert resp.status == 200, route
                assert resp.read() == (ROOT / source).read_bytes(), route
    finally:
        stop(proc)


def test_pipx_install_gives_a_working_gateway(wheel, tmp_path):
    pipx = ROOT / ".venv-pipx" / "bin" / "pipx"
    if not pipx.exists():
        pytest.fail(f"{pipx} is missing: tests/run.sh installs tests/requirements-pipx.txt there")
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
           "PIPX_MAN_DIR": str(tmp_path / "man"), "PIPX_DEFAULT_PYTHON": sys.executable}
    out = subprocess.run([str(pipx), "install", str(wheel)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    version = subprocess.run([str(tmp_path / "bin" / "gateway"), "--version"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)
    assert version.stdout == f"gateway {__version__}\n", version.stderr
    proc, url = start([str(tmp_path / "bin" / "gateway"), "--port", "0"], cwd=tmp_path)
    try:
        with urllib.request.urlopen(url + "/examples/arrows.html", timeout=5) as resp:
            assert resp.read() == (ROOT / "gateway" / "examples" / "arrows.html").read_bytes()
    finally:
        stop(proc)


def test_examples_arrows_html_is_the_served_page():
    """One copy: examples/arrows.html, for users to open as a file, is the package's page."""
    link = ROOT / "examples" / "arrows.html"
    assert link.is_symlink() and link.resolve() == (ROOT / "gateway" / "examples" / "arrows.html").resolve()


def test_systemd_unit_verifies(installed, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: tests/run.sh installs Debian's systemd package")
    unit = (ROOT / "config" / "gateway.service").read_text()
    assert "ExecStart=/opt/gateway/bin/gateway " in unit
    for line in ("Type=notify", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateTmp=yes", "ProtectHome=yes", "SupplementaryGroups=dialout", "User=gateway"):
        assert f"\n{line}\n" in unit, line
    # verify checks that ExecStart's program exists: point it at the installed command.
    (tmp_path / "gateway.service").write_text(
        unit.replace("/opt/gateway/bin/gateway", str(installed / "gateway")))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "gateway.service")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def test_udev_rule_example_parses():
    rules = (ROOT / "config" / "99-gateway.rules").read_text()
    active = [line for line in rules.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert active, "the example has at least one rule"
    for line in active:
        assert re.search(r'SUBSYSTEM=="tty"', line) and re.search(r'SYMLINK\+="', line) and 'GROUP="dialout"' in line


# -- systemd readiness, watchdog, stopping, journald ----------------------------------------


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_once_healthz_answers_then_watchdog_and_stopping(notify_socket, tmp_path):
    sock, path = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_gateway.py"), "--port", "0", "--device",
                             "sim=sim://?interval=0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        messages = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(receive(sock))
        ready = next(m for m in messages if m.startswith("READY=1"))
        url = re.search(r"STATUS=listening on (http://\S+)", ready).group(1)
        # At once, with nothing waited for: the server accepts and /healthz answers.
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            assert resp.status == 200
        pings = 0
        while pings < 3:  # every WATCHDOG_USEC / 2 = 0.1 s, from the I/O loop
            if receive(sock) == "WATCHDOG=1":
                pings += 1
        proc.send_signal(signal.SIGTERM)
        while (message := receive(sock)) != "STOPPING=1":
            assert message == "WATCHDOG=1", message
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_no_watchdog_pings_for_another_pid(notify_socket, tmp_path):
    sock, path = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_gateway.py"), "--port", "0", "--device",
                             "sim=sim://?interval=0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert receive(sock).startswith("READY=1")
        proc.send_signal(signal.SIGTERM)
        assert receive(sock) == "STOPPING=1"  # no WATCHDOG=1 in between: the watchdog is PID 1's
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("journal", [True, False])
def test_log_lines_without_timestamps_under_journald(tmp_path, journal):
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if journal else "1:1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_gateway.py"), "--port", "0", "--device",
                             "sim=sim://?interval=0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=write_fd, text=True)
    os.close(write_fd)
    try:
        assert proc.stdout.readline().startswith("listening on ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    with os.fdopen(read_fd) as fh:
        lines = fh.read().splitlines()
    shutting = [line for line in lines if "shutting down" in line]
    assert shutting, lines
    if journal:
        assert shutting[0] == "INFO gateway: shutting down"
    else:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO gateway: shutting down$", shutting[0])
