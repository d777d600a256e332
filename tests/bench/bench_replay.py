"""Capture replay speed and memory: fwtest against the naive Scapy loop (prints figures, not a test).

Run: python tests/bench/bench_replay.py [--packets 1000000] [--big 5000000] [--runs 5]
     [--naive-sample 20000] [--plain-sample 200000] [--rules R] [--profile P] [--workdir DIR]

A generated trace of calls with RTP (fwtest.bench.generate_trace) goes through
the reference ruleset: packets per second of fwtest's replay (median of
several runs), of its engine packet by packet and of the naive loop (both on
the first packets only), peak memory of a 1M and a 5M packet replay in fresh
processes, and what that makes of a day of statewide traffic. The same as
``fwtest bench``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fwtest.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
