"""The proof tests share builders (space_helpers.py): the suite runs with
``--import-mode=importlib``, so this folder is put on ``sys.path`` for them."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
