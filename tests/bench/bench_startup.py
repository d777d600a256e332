"""Start-up: `fwtest check` on the shipped example against `python -c "import scapy.all"`.

Prints medians of several runs of each, measured side by side (interleaved)
so machine noise hits both alike; cold = empty fwtest cache (synthesised
flows, proof classes), warm = cached; --no-proof = replay evidence only (no
BDD proof, no rule analysis).

Every command runs with its Python bytecode compiled, as ``pip install .``
leaves fwtest and Scapy: the .pyc files go to a private PYTHONPYCACHEPREFIX,
written by a first untimed run (PYTHONDONTWRITEBYTECODE is cleared for it).
One more row shows fwtest compiling its own source on every run, as an
editable install does under PYTHONDONTWRITEBYTECODE.

    python tests/bench/bench_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = [sys.executable, "-m", "fwtest.cli", "check", "rulesets/psap-edge.yaml"]
REPLAY_ONLY = [*CHECK, "--no-proof"]
SCAPY = [sys.executable, "-c", "import scapy.all"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"import scapy.all": [], "fwtest check --no-proof (warm)": [],
                                       "fwtest check (warm cache)": [], "fwtest check (cold cache)": [],
                                       "fwtest check (warm, no .pyc)": []}
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as pyc:
        compiled = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        compiled["PYTHONPYCACHEPREFIX"] = pyc
        warm_env = {**compiled, "XDG_CACHE_HOME": cache}
        no_pyc_env = {**os.environ, "XDG_CACHE_HOME": cache, "PYTHONDONTWRITEBYTECODE": "1"}
        timed(SCAPY, compiled)   # write the bytecode of Scapy's modules
        timed(CHECK, warm_env)   # ... and fwtest's (and everything check imports); fill the cache
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as empty:
                results["fwtest check (cold cache)"].append(timed(CHECK, {**compiled, "XDG_CACHE_HOME": empty}))
            results["import scapy.all"].append(timed(SCAPY, compiled))
            results["fwtest check (warm cache)"].append(timed(CHECK, warm_env))
            results["fwtest check --no-proof (warm)"].append(timed(REPLAY_ONLY, warm_env))
            results["fwtest check (warm, no .pyc)"].append(timed(CHECK, no_pyc_env))
    base = statistics.median(results["import scapy.all"])
    print(f"{'command':<28} {'median s':>9} {'vs import scapy.all':>20}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:>9.3f} {median / base:>19.2f}x")
    print(f"({args.runs} interleaved runs each, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
