#!/usr/bin/env python3
"""Run the gateway: `python run_gateway.py --help`. See README.md."""

import sys

from gateway.bootstrap import ensure_requirements

if __name__ == "__main__":
    ensure_requirements()
    from gateway.cli import main

    sys.exit(main())
