"""`python -m gateway_sim` (or `gateway-sim`): see `gateway_sim.cli`."""

from __future__ import annotations

import sys

from gateway_sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
