"""Engine throughput on a 50-rule ruleset: prints packets per second (not a test).

Run: python tests/bench/bench_engine.py [--packets N]

Three figures: stateless (no conntrack) with the deciding rule deep in the
chain; stateful (conntrack + SIP helper) on call-like traffic where most
packets ride an established entry; and the same traffic with fragmented
INVITEs. Records are built once up front: the loop measured is the engine's.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "engine"))

from engine_packets import (  # noqa: E402
    ACK,
    PSH,
    SYN,
    frag_records,
    ip,
    rule,
    ruleset,
    sip_invite,
    sip_response,
    tcp,
    udp,
    udp_segment,
)

from fwtest.engine import replay  # noqa: E402
from fwtest.rules.ir import LimitMatch  # noqa: E402


def fifty_rules(conntrack: bool):
    rules = []
    if conntrack:
        rules.append(rule("established", state=["established", "related"]))
        rules.append(rule("invalid", "drop", state=["invalid"]))
    # 40 unrelated rules first: other services and hosts, the way real rulesets grow.
    for i in range(40):
        rules.append(rule(f"svc-{i}", "accept" if i % 3 else "drop", proto="tcp" if i % 2 else "udp",
                          dst=f"10.{i}.0.0/16", dport=str(1000 + i)))
    rules.append(rule("sip-rate", "drop", proto="udp", dport=5060,
                      limit=LimitMatch(rate=1000.0, burst=2000, above=True, per=("src",))))
    rules.append(rule("sip-udp", proto="udp", src="198.51.100.0/24", dst="203.0.113.0/26", dport=5060))
    rules.append(rule("sip-tcp", proto="tcp", src="198.51.100.0/24", dst="203.0.113.0/26", dport=5060))
    rules.append(rule("sip-out", proto="udp", src="203.0.113.0/26", dst="198.51.100.0/24", sport=5060))
    rules.append(rule("rtp-in", proto="udp", src="198.51.100.0/24", dst="203.0.113.0/26", dport="16384-32767"))
    rules.append(rule("rtp-out", proto="udp", src="203.0.113.0/26", dst="198.51.100.0/24", sport="16384-32767"))
    rules.append(rule("tcp-back", proto="tcp", src="203.0.113.0/26", sport=5060))
    while len(rules) < 50:
        rules.append(rule(f"log-{len(rules)}", "log", proto="icmp"))
    assert len(rules) == 50
    return ruleset(rules, conntrack=conntrack, helpers=["sip"] if conntrack else ())


def call_traffic(calls: int, rtp_per_call: int, fragmented: bool, seed: int = 7):
    rng = random.Random(seed)
    records = []
    t = 0.0
    for c in range(calls):
        peer = f"198.51.100.{1 + c % 200}"
        psap = f"203.0.113.{1 + c % 60}"
        sport = 5060
        prtp = 16384 + 2 * rng.randrange(8000)
        srtp = 16384 + 2 * rng.randrange(8000)
        invite = sip_invite(peer, prtp, call_id=f"c{c}", extra_sdp="a=x:" + "y" * (1400 if fragmented else 0) + "\r\n")
        if fragmented:
            records += frag_records(ip(peer, psap, 17, udp_segment(sport, 5060, invite)), 1000, ts=t,
                                    ident=c & 0xFFFF)
        else:
            records.append(udp(peer, sport, psap, 5060, invite, ts=t))
        records.append(udp(psap, 5060, peer, sport, sip_response(200, "INVITE", media_addr=psap, port=srtp,
                                                                  call_id=f"c{c}"), ts=t + 0.05))
        for k in range(rtp_per_call):
            ts = t + 0.1 + 0.02 * k
            records.append(udp(peer, prtp, psap, srtp, b"\x80" + b"\0" * 171, ts=ts))
            records.append(udp(psap, srtp, peer, prtp, b"\x80" + b"\0" * 171, ts=ts + 0.001))
        # a TCP SIP exchange every tenth call
        if c % 10 == 0:
            records += [
                tcp(peer, 40000 + c, psap, 5060, SYN, seq=1000, ts=t + 0.2),
                tcp(psap, 5060, peer, 40000 + c, SYN | ACK, seq=5000, ack=1001, ts=t + 0.21),
                tcp(peer, 40000 + c, psap, 5060, ACK, seq=1001, ack=5001, ts=t + 0.22),
                tcp(peer, 40000 + c, psap, 5060, PSH | ACK, seq=1001, ack=5001, data=b"OPTIONS x SIP/2.0\r\n\r\n",
                    ts=t + 0.23),
            ]
        t += 0.5
    records.sort(key=lambda r: r.ts)
    return records


def measure(name: str, rs, records, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        verdicts = replay(rs, records)
        best = min(best, time.perf_counter() - start)
    accepted = sum(v.accepted for v in verdicts)
    pps = len(records) / best
    print(f"{name:<46} {len(records):>7} packets  {pps:>10,.0f} pkt/s  ({accepted} accepted)")
    return pps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rtp", type=int, default=50, help="RTP packets per direction per call")
    args = parser.parse_args()
    plain = call_traffic(args.calls, args.rtp, fragmented=False)
    frag = call_traffic(args.calls, args.rtp, fragmented=True)
    print(f"engine benchmark, 50-rule ruleset, Python {sys.version.split()[0]}")
    measure("stateless (no conntrack), RTP decided at rule ~46", fifty_rules(False), plain)
    measure("stateful (conntrack + SIP helper)", fifty_rules(True), plain)
    measure("stateful, fragmented INVITEs", fifty_rules(True), frag)


if __name__ == "__main__":
    main()
