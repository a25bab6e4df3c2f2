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
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "tests/run.sh: installing Debian packages: ${apt_packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
(cd examples && npm ci --no-audit --no-fund --loglevel=error)

exec .venv/bin/python -m pytest "$@"
