"""Start-up: `fwtest check` on the shipped example against `python -c "import scapy.all"`.

Prints medians of several runs of each, measured side by side (interleaved)
so machine noise hits both alike; cold = empty synthesis cache, warm = cached;
--no-proof = replay evidence only (no BDD proof, no rule analysis).

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
                                       "fwtest check (warm cache)": [], "fwtest check (cold cache)": []}
    with tempfile.TemporaryDirectory() as cache:
        warm_env = {**os.environ, "XDG_CACHE_HOME": cache}
        timed(CHECK, warm_env)  # fill the cache once
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as empty:
                results["fwtest check (cold cache)"].append(timed(CHECK, {**os.environ, "XDG_CACHE_HOME": empty}))
            results["import scapy.all"].append(timed(SCAPY, dict(os.environ)))
            results["fwtest check (warm cache)"].append(timed(CHECK, warm_env))
            results["fwtest check --no-proof (warm)"].append(timed(REPLAY_ONLY, warm_env))
    base = statistics.median(results["import scapy.all"])
    print(f"{'command':<28} {'median s':>9} {'vs import scapy.all':>20}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:>9.3f} {median / base:>19.2f}x")
    print(f"({args.runs} interleaved runs each, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
