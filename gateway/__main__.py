"""`python -m gateway`: the same as the `gateway` command and `python3 run_gateway.py`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m gateway"))
