#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs pytest.
#   bash tests/run.sh            # everything
#   bash tests/run.sh -k json    # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
[ -x /usr/bin/chromium ] || apt_packages+=(chromium fonts-dejavu-core)  # the page tests (Playwright)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_packages+=(mosquitto)  # tests/test_mqtt.py
command -v prometheus >/dev/null 2>&1 || apt_packages+=(prometheus)  # tests/test_metrics.py scrapes with a real one
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)  # tests/test_packaging.py: systemd-analyze verify
# tests/test_firmware_*.py build the sample firmware (ESP8266 host emulation, MicroPython's unix port)
command -v make >/dev/null 2>&1 || apt_packages+=(make)
command -v g++ >/dev/null 2>&1 || apt_packages+=(g++)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "tests/run.sh: installing Debian packages: ${apt_packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
# pipx, for tests/test_packaging.py's `pipx install`, in a virtualenv of its own (see tests/requirements-pipx.txt).
if [ ! -x .venv-pipx/bin/pipx ] || ! cmp -s tests/requirements-pipx.txt .venv-pipx/requirements-pipx.txt; then
  rm -rf .venv-pipx && python3 -m venv .venv-pipx &&
    .venv-pipx/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements-pipx.txt &&
    cp tests/requirements-pipx.txt .venv-pipx/requirements-pipx.txt
fi
(cd examples && npm ci --no-audit --no-fund --loglevel=error)
# The Autobahn TestSuite (tests/test_autobahn.py) runs on Python 2.7 only: pyenv's 2.7.18, in a
# virtualenv of its own made by virtualenv 20.21.1 (requirements-dev.txt). Skipped when it is
# there and tests/requirements-autobahn.txt has not changed; when it cannot be installed, the
# suite still runs and tests/test_autobahn.py fails saying what is missing.
if [ ! -x .venv-autobahn/bin/wstest ] || ! cmp -s tests/requirements-autobahn.txt .venv-autobahn/requirements-autobahn.txt; then
  pyenv_root=$(pyenv root 2>/dev/null || true)
  py27=""
  for candidate in ${pyenv_root:+"$pyenv_root/versions/2.7.18/bin/python"} /root/.pyenv/versions/2.7.18/bin/python; do
    if [ -x "$candidate" ]; then py27=$candidate; break; fi
  done
  rm -rf .venv-autobahn
  if [ -z "$py27" ]; then
    echo "tests/run.sh: no Python 2.7.18 (\$(pyenv root)/versions/2.7.18 or /root/.pyenv/versions/2.7.18): the Autobahn TestSuite is not installed" >&2
  else
    echo "tests/run.sh: installing the Autobahn TestSuite into .venv-autobahn/ ($py27)"
    if .venv/bin/python -m virtualenv -q --no-periodic-update -p "$py27" .venv-autobahn &&
       .venv-autobahn/bin/python -m pip install -q --disable-pip-version-check --no-python-version-warning \
         -r tests/requirements-autobahn.txt; then
      cp tests/requirements-autobahn.txt .venv-autobahn/requirements-autobahn.txt
    else
      echo "tests/run.sh: installing the Autobahn TestSuite failed (above)" >&2
      rm -rf .venv-autobahn
    fi
  fi
fi

exec .venv/bin/python -m pytest "$@"
