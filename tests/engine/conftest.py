"""The engine tests share exact packet and ruleset builders (engine_packets.py).

The suite runs with ``--import-mode=importlib``, which puts no test folder on
``sys.path``; this one is added so the tests (and tests/bench) can import
the builders by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
