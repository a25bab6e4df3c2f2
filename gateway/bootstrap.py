"""Make `python run_gateway.py` work on a fresh machine.

When the gateway's requirements are not importable, create `.venv/` beside
`run_gateway.py`, install `requirements.txt` into it, and run again under its Python.
Standard library only: this runs before any requirement is there.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
NEEDED = ("ws4py", "serial", "prometheus_client", "paho", "zeroconf", "esptool")


def missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def ensure_requirements() -> None:
    if not missing():
        return
    if os.environ.get("GATEWAY_BOOTSTRAPPED"):
        sys.exit(f"run_gateway.py: still missing {', '.join(missing())} after installing {ROOT / 'requirements.txt'}")
    python = VENV / "bin" / "python"
    print(f"installing the gateway's requirements into {VENV} ...", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(ROOT / "requirements.txt")], check=True)
    os.environ["GATEWAY_BOOTSTRAPPED"] = "1"
    os.execv(str(python), [str(python), *sys.argv])
