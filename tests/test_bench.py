"""``fwtest bench`` runs end to end on a small trace (what it prints; no timing is judged)."""

from __future__ import annotations

import argparse
import io

from fwtest import bench
from fwtest.traffic.pcap import ReadStats, read_frames


def test_the_generated_trace_is_calls_with_media(tmp_path):
    info = bench.generate_trace(tmp_path / "t.pcap", 20_000, seed=1, concurrency=4)
    stats = ReadStats()
    records = list(read_frames(info.path, stats=stats))
    assert len(records) == info.packets == stats.ip >= 20_000 and stats.malformed == 0
    times = [r.ts for _, r in records]
    assert times == sorted(times)
    assert info.fragments > 0 and 0 < info.sip_packets < info.packets // 100


def test_bench_prints_its_figures(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--packets", "20000", "--big", "30000", "--runs", "2", "--naive-sample", "200",
                              "--plain-sample", "2000", "--workdir", str(tmp_path)])
    out = io.StringIO()
    assert bench.run(args, out) == 0
    text = out.getvalue()
    for expected in ("fwtest replay (verdicts + calls)", "naive loop: Scapy PcapReader + rule walk",
                     "peak RSS", "tracemalloc", "a day of statewide traffic: 8,800 calls", "159.1 M packets"):
        assert expected in text
    assert text.count("MB file): peak RSS") == 2
