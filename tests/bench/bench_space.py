"""Proof benchmark: compile, prove and one-edit diff on 100, 1,000 and 10,000 rules (not a test).

Run: python tests/bench/bench_space.py [--sizes 100,1000,10000] [--runs 5] [--backend cudd|autoref]
                                        [--order field|interleaved|ports-first]

The rulesets are the reference psap-edge.yaml grown the way real edge
rulesets grow: a blocklist of bad prefixes on top, then hundreds of
per-customer and per-service accepts and drops (random IPv4/IPv6 CIDRs from
/8 to /32, single ports, port ranges and port lists), some of them about
PSAP hosts (management, web consoles), some against risky ports from
anywhere; the emergency rules stay where they are, so every ruleset passes.
Figures printed, medians over ``--runs``:

* compile: the ruleset compiled for the profile's packet classes (what the
  proof needs), and for every packet of the path (what rule analysis needs);
* prove: ``prove(ruleset, profile)`` end to end (synthesised flows cached);
* diff: ``diff(ruleset, ruleset + one edit, profile)`` where the edit denies
  one peer host in the middle of the peer prefix, high up in the ruleset:
  a regression the diff must report with a witness the engine confirms;
* sampled replay: the profile checked the way replay checks it (every
  synthesised flow through the stateful engine), its distinct packet
  headers against the proof's, and the time replay would need at that rate
  to cover what the proof covers; and whether replay notices the edit.

No figure is asserted: timings belong here, not in pass/fail tests.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import random
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fwtest.profile import load_profile  # noqa: E402
from fwtest.rules.native import ruleset_from_dict  # noqa: E402
from fwtest.space.compile import compile_path  # noqa: E402
from fwtest.space.diff import diff  # noqa: E402
from fwtest.space.header import HeaderSpace  # noqa: E402
from fwtest.space.proof import ProfileCompile, classes_for, prove  # noqa: E402
from fwtest.traffic.synth import synthesize  # noqa: E402

PROFILE = ROOT / "rulesets" / "psap-edge.profile.yaml"
REFERENCE = ROOT / "rulesets" / "psap-edge.yaml"
RISKY = ["23", "135-139", "445", "1433", "3389", "11211", "6379"]
SERVICES = ["22", "80", "443", "8080-8090", "3306", "5432", "9000-9100", "53", "123", "25", "587", "993",
            "1194", "51820", "8443"]
PROFILE_NETS = [ipaddress.ip_network(n) for n in
                ("198.51.100.0/24", "203.0.113.0/26", "2001:db8:100::/56", "2001:db8:911::/64")]


def _random_net(rng: random.Random, v6: bool) -> str:
    while True:
        if v6:
            plen = rng.choice([32, 40, 48, 56, 64, 96, 128])
            base = (0x2001 << 112) | (rng.getrandbits(96) << 16) if rng.random() < 0.5 \
                else (rng.getrandbits(125) | (1 << 125))
            net = ipaddress.IPv6Network((base >> (128 - plen) << (128 - plen), plen))
        else:
            plen = rng.choice([8, 12, 16, 20, 22, 24, 24, 26, 28, 29, 32, 32])
            first = rng.choice([10, 100, 172, 185, 192, 45, 62, 81, 91, 212])
            base = (first << 24) | rng.getrandbits(24)
            net = ipaddress.IPv4Network((base >> (32 - plen) << (32 - plen), plen))
        if not any(net.overlaps(p) for p in PROFILE_NETS if p.version == net.version):
            return str(net)


def realistic_ruleset(n: int, seed: int = 0) -> dict:
    """The reference ruleset grown to ``n`` rules (a native-format dict)."""
    rng = random.Random(seed)
    base = yaml.safe_load(REFERENCE.read_text())
    emergency = base["rules"]
    extra = n - len(emergency) - sum(len(c) for c in base.get("chains", {}).values())
    top, middle = [], []
    for i in range(max(0, extra)):
        v6 = rng.random() < 0.2
        kind = rng.random()
        if kind < 0.1:
            top.append({"id": f"block-{i}", "src": _random_net(rng, v6), "action": "drop"})
            continue
        rule: dict = {"id": f"gen-{i}", "proto": rng.choice(["tcp", "udp", "tcp"])}
        if kind < 0.7:
            rule["src"] = [_random_net(rng, v6) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            rule["dst"] = _random_net(rng, v6)
            rule["dport"] = rng.choice(SERVICES)
            rule["action"] = rng.choice(["accept", "accept", "accept", "drop", "reject"])
        elif kind < 0.85:
            # PSAP hosts: consoles and management, from admin nets only.
            psap = ipaddress.ip_network("2001:db8:911::/64" if v6 else "203.0.113.0/26")
            host = psap.network_address + rng.randint(1, 60)
            rule["src"] = _random_net(rng, v6)
            rule["dst"] = f"{host}/{128 if v6 else 32}"
            rule["dport"] = rng.choice(["22", "443", "8443", "3389", "161-162"])
            rule["action"] = rng.choice(["accept", "accept", "drop"])
        elif kind < 0.9:
            rule["dport"] = rng.choice(RISKY)
            rule["action"] = "drop"
        else:
            # Multi-port services between two random sites.
            rule["src"] = _random_net(rng, v6)
            rule["dst"] = [_random_net(rng, v6) for _ in range(2)]
            rule["dport"] = [rng.choice(SERVICES) for _ in range(3)]
            rule["action"] = "accept"
        middle.append(rule)
    # Blocklist first, then the content guards and state rules, the generated
    # body, then the emergency accepts and the final log/drop.
    head = [r for r in emergency if r["id"] in ("invite-guard", "tls-guard", "established", "drop-invalid",
                                                  "sip-scanners")]
    tail = [r for r in emergency if r not in head]
    out = copy.deepcopy(base)
    out["rules"] = top + head + middle + tail
    return out


def with_host_deny(data: dict, host: str = "198.51.100.77") -> dict:
    """One edit: deny one peer host in the middle of its prefix, high up (after the state rules)."""
    out = copy.deepcopy(data)
    rules = out["rules"]
    at = next(i for i, r in enumerate(rules) if r["id"] == "sip-scanners") + 1
    rules.insert(at, {"id": "deny-one-peer", "src": host, "action": "drop"})
    return out


def median_time(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def sampled_replay(ruleset, profile, flows) -> tuple[float, float, int, int, int]:
    """Check the profile the way replay does: every synthesised flow through the stateful
    engine (compiled once; each flow starts on fresh state, an hour after the last one).
    Returns (compile seconds, replay seconds, packets, distinct headers, packets dropped)."""
    from fwtest.engine import Engine

    t = time.perf_counter()
    engine = Engine(ruleset, native_hook=profile.firewall, sip_ports=profile.sip_helper_ports)
    compiled = time.perf_counter() - t
    hooks = profile.hooks()
    gap = 10 ** 7   # longer than every timeout and bucket refill of these rulesets
    packets = dropped = 0
    headers = set()
    t = time.perf_counter()
    for i, flow in enumerate(flows):
        for step in flow.steps:
            r = step.record._replace(ts=step.record.ts + i * gap)
            packets += 1
            headers.add((r.family, r.proto, r.src, r.dst, r.sport, r.dport, r.tcp_flags, r.frag))
            for _, v in engine.feed(r, hooks[step.direction]):
                dropped += not v.accepted
    for _, v in engine.finish():
        dropped += not v.accepted
    return compiled, time.perf_counter() - t, packets, len(headers), dropped


def bench_size(n: int, profile, flows, args, with_replay: bool) -> tuple[float, float, float, float]:
    data = realistic_ruleset(n)
    rs = ruleset_from_dict(data, f"generated-{n}.yaml")
    edited = ruleset_from_dict(with_host_deny(data), f"generated-{n}-edit.yaml")
    n_rules = sum(len(c.rules) for c in rs.chains.values())

    def fresh_space():
        return HeaderSpace.for_rulesets([rs], profile, backend=args.backend, order=args.order)

    space = fresh_space()
    classes = classes_for(space, rs, profile, flows)
    t_compile, _ = median_time(
        lambda: ProfileCompile(fresh_space(), rs, profile, classes), args.runs)
    full_runs = max(1, args.runs if n <= 1000 else 1)
    t_full, full = median_time(
        lambda: compile_path(fresh_space(), rs, "forward", native_hook=profile.firewall), full_runs)
    t_prove, proof = median_time(
        lambda: prove(rs, profile, flows=flows, backend=args.backend, order=args.order), args.runs)
    assert proof.passed, [f.to_json() for f in proof.findings[:3]]
    t_diff, d = median_time(
        lambda: diff(rs, edited, profile, flows=flows, backend=args.backend, order=args.order,
                     confirm_witnesses=False), args.runs)
    assert d.regressions
    t_confirmed, d = median_time(
        lambda: diff(rs, edited, profile, flows=flows, backend=args.backend, order=args.order), 1)
    assert d.regressions and all(ch.witnesses for ch in d.regressions)
    covered = sum(r.packets for r in proof.results)
    print(f"\n{n_rules} rules: {len(proof.results)} packet classes, {covered:.3g} packet headers covered")
    print(f"  compile for the profile   {t_compile * 1000:9.1f} ms   (rules whose sets were built: "
          f"{proof.stats['rules_walked']})")
    print(f"  compile, whole path       {t_full * 1000:9.1f} ms   ({full.accept.dag_size} BDD nodes)")
    print(f"  prove the profile         {t_prove * 1000:9.1f} ms   "
          f"(classes and compile {proof.stats['compile_seconds'] * 1000:.0f} ms, "
          f"evaluation {proof.stats['proof_seconds'] * 1000:.0f} ms)")
    print(f"  diff one edit             {t_diff * 1000:9.1f} ms   ({len(d.regressions)} regressed regions "
          f"with both versions' deciding rules)")
    print(f"  ... with witnesses        {t_confirmed * 1000:9.1f} ms   (engine compiles each version once "
          f"and confirms every witness)")
    if with_replay:
        t_eng, t_rep, packets, headers, _ = sampled_replay(rs, profile, flows)
        rate = packets / t_rep
        print(f"  sampled replay            {t_rep * 1000:9.1f} ms   (+{t_eng * 1000:.0f} ms engine compile; "
              f"{packets} packets, {rate:,.0f}/s, {headers} distinct headers = "
              f"{headers / covered:.1e} of the proof's coverage)")
        years = covered / rate / (3600 * 24 * 365)
        print(f"  replay at equal coverage  {years:9.1e} years at that rate")
        _, _, packets, _, dropped = sampled_replay(edited, profile, flows)
        print(f"  the one-edit ruleset: replay drops {dropped} of {packets} packets; the proof finds "
              f"{len(d.regressions)} regressed regions")
    return t_compile, t_full, t_prove, t_diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--order", default="field")
    ap.add_argument("--replay-sizes", default="100,1000,10000",
                    help="sizes at which to also run the sampled replay")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    replay_sizes = {int(s) for s in args.replay_sizes.split(",") if s}
    profile = load_profile(PROFILE)
    flows = synthesize(profile)
    print(f"profile {profile.name}: {len(flows)} synthetic flows; backend {args.backend or 'default'}, "
          f"order {args.order}, medians of {args.runs} runs")
    rows = {n: bench_size(n, profile, flows, args, n in replay_sizes) for n in sizes}
    if 100 in rows and 10000 in rows:
        a, b = rows[100], rows[10000]
        print(f"\nratio 10k/100: compile {b[0] / a[0]:.1f}x, whole-path compile {b[1] / a[1]:.1f}x, "
              f"prove {b[2] / a[2]:.1f}x, diff {b[3] / a[3]:.1f}x (linear would be 100x)")


if __name__ == "__main__":
    main()
