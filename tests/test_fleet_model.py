"""The page's fleet list as data (gateway/static/fleet_model.js: sorting, counts, search
and filters, the rows a scrolled viewport needs), run in Node's own test runner:
tests/node/fleet_model.test.mjs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).parent / "node" / "fleet_model.test.mjs"


def test_fleet_model_in_node():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: apt-get install nodejs (tests/run.sh does)")
    out = subprocess.run([node, "--test", str(TESTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    passed = re.search(r"^# pass (\d+)$", out.stdout, re.M)
    assert "# fail 0" in out.stdout and passed and int(passed.group(1)) >= 6, out.stdout
