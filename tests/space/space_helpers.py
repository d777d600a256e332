"""Builders shared by the proof tests: the reference profile and flows (synthesised once),
IR rulesets written compactly, packets at a point of the header space, and Hypothesis
strategies for random rulesets."""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hypothesis import strategies as st

from fwtest.profile import EmergencyProfile, load_profile
from fwtest.rules import load_ruleset
from fwtest.rules.ir import (
    Action,
    AddrMatch,
    AddrRange,
    BaseChain,
    Chain,
    Conntrack,
    FragmentMatch,
    IcmpMatch,
    IfaceMatch,
    LimitMatch,
    Match,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    Source,
    StateMatch,
    TcpFlagsMatch,
)
from fwtest.traffic.record import PacketRecord, parse_ip

ROOT = Path(__file__).resolve().parents[2]
RULESETS = ROOT / "rulesets"
PROFILE = RULESETS / "psap-edge.profile.yaml"
REFERENCE = RULESETS / "psap-edge.yaml"
BROKEN = sorted((RULESETS / "broken").glob("*.yaml"))
HARMLESS = sorted((RULESETS / "harmless").glob("*.yaml"))
SRC = Source("test.yaml", 1)


@functools.cache
def profile() -> EmergencyProfile:
    return load_profile(PROFILE)


@functools.cache
def flows() -> tuple:
    """The reference profile's synthetic flows, once per test session (the proof's classes
    are cached per flows object, so every test that uses these shares them)."""
    from fwtest.traffic.synth import synthesize
    return tuple(synthesize(profile()))


@functools.cache
def reference() -> Ruleset:
    return load_ruleset(REFERENCE)


def load(path: Path | str) -> Ruleset:
    return load_ruleset(path)


def expected_rule(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    return first.split("rule=")[1].split()[0]


def with_rule(data_path: Path, rule: dict, *, after: str | None = None, before: str | None = None) -> Ruleset:
    """The native ruleset at ``data_path`` with ``rule`` inserted after/before a rule id."""
    import yaml

    from fwtest.rules.native import ruleset_from_dict
    data = yaml.safe_load(data_path.read_text())
    rules = data["rules"]
    at = len(rules)
    for i, r in enumerate(rules):
        if after is not None and r["id"] == after:
            at = i + 1
        if before is not None and r["id"] == before:
            at = i
    rules.insert(at, rule)
    return ruleset_from_dict(data, f"{data_path.stem}-edited.yaml")


# ---------------------------------------------------------------- IR in a few words

def addr(*cidrs: str, negated: bool = False) -> AddrMatch:
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return AddrMatch(tuple(AddrRange.from_network(n) for n in nets), negated, ", ".join(cidrs))


def ports(*ranges: tuple[int, int] | int, negated: bool = False) -> PortMatch:
    rs = tuple((r, r) if isinstance(r, int) else r for r in ranges)
    return PortMatch(rs, negated)


def proto(*names: int, negated: bool = False) -> ProtoMatch:
    return ProtoMatch(frozenset(names), negated)


def rule(rid: str, action: str = "accept", target: str | None = None, **match: Any) -> Rule:
    return Rule(rid, Source("test.yaml", abs(hash(rid)) % 1000 + 1), Match(**match), Action(action, target))


def ruleset(chains: dict[str, Sequence[Rule]], bases: Sequence[BaseChain] | None = None, *,
            conntrack: bool = False, policy: str = "drop") -> Ruleset:
    if bases is None:
        bases = (BaseChain("main", None, 0, policy, None, Source("test.yaml", 1000)),)
    return Ruleset("test", ("test.yaml",), "test",
                   {name: Chain(name, tuple(rs), SRC) for name, rs in chains.items()}, tuple(bases),
                   Conntrack(enabled=conntrack))


# ---------------------------------------------------------------- packets at a point

def record_at(point: dict[str, int], iface_in: str | None, iface_out: str | None,
              payload: bytes = b"x" * 8) -> PacketRecord:
    """A packet with the header fields of ``point`` (the header space's field names)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6Unknown, IPv6, IPv6ExtHdrFragment
    from scapy.packet import Raw

    fam = 4 if point["fam"] == 0 else 6
    p = point["proto"]
    frag = point.get("frag", 0)
    if p == 6:
        l4 = TCP(sport=point["sport"], dport=point["dport"], flags=point.get("flags", 0)) / Raw(payload)
    elif p in (17, 136):
        l4 = UDP(sport=point["sport"], dport=point["dport"]) / Raw(payload)
    elif p == 1 and fam == 4:
        l4 = ICMP(type=point["sport"], code=point["dport"]) / Raw(payload)
    elif p == 58 and fam == 6:
        l4 = ICMPv6Unknown(type=point["sport"], code=point["dport"]) / Raw(payload)
    else:
        l4 = Raw(payload)
    body = bytes(l4)
    if fam == 4:
        src, dst = str(ipaddress.IPv4Address(point["src"])), str(ipaddress.IPv4Address(point["dst"]))
        ip = IP(src=src, dst=dst, proto=p, id=77)
        if frag == 1:
            ip.flags = "MF"
        elif frag == 2:
            ip.frag = 100
        data = bytes(ip / Raw(body))
    else:
        src, dst = str(ipaddress.IPv6Address(point["src"])), str(ipaddress.IPv6Address(point["dst"]))
        if frag:
            data = bytes(IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(
                nh=p, id=77, m=1 if frag == 1 else 0, offset=0 if frag == 1 else 100) / Raw(body))
        else:
            data = bytes(IPv6(src=src, dst=dst, nh=p) / Raw(body))
    return parse_ip(data, 0.0, iface_in, iface_out)


# ---------------------------------------------------------------- random rulesets

V4_POOL = ["198.51.100.0/24", "198.51.100.0/25", "198.51.100.77/32", "198.51.0.0/16", "203.0.113.0/26",
           "203.0.113.32/27", "10.0.0.0/8", "0.0.0.0/0", "203.0.113.5/32"]
V6_POOL = ["2001:db8:100::/56", "2001:db8:100::/64", "2001:db8:911::/64", "2001:db8::/32", "::/0",
           "2001:db8:911::5/128"]
PORTS = [5060, 5061, 2855, 22, (16384, 32767), (20000, 20000), (1, 1023), (1024, 65535), (5000, 6000)]
IFACES = ["eth0", "eth1", "eth+", "ppp0"]


@st.composite
def matches(draw: st.DrawFn) -> Match:
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["proto"] = ProtoMatch(frozenset(draw(st.sets(st.sampled_from([6, 17, 1, 58]), min_size=1,
                                                        max_size=2))), draw(st.booleans()))
    for fld in ("src", "dst"):
        if draw(st.integers(0, 2)) == 0:
            pool = draw(st.sampled_from([V4_POOL, V6_POOL, V4_POOL + V6_POOL]))
            cidrs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
            kw[fld] = addr(*cidrs, negated=draw(st.integers(0, 4)) == 0)
    for fld in ("sport", "dport"):
        if draw(st.integers(0, 2)) == 0:
            rs = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=2, unique=True))
            kw[fld] = ports(*rs, negated=draw(st.integers(0, 4)) == 0)
    if draw(st.integers(0, 4)) == 0:
        kw["state"] = StateMatch(frozenset(draw(st.sets(st.sampled_from(
            ["new", "established", "related", "invalid", "untracked"]), min_size=1, max_size=2))),
            draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0:
        kw["fragment"] = FragmentMatch(draw(st.sampled_from(["later", "first", "any"])), draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0:
        kw["tcp_flags"] = TcpFlagsMatch(0x17, draw(st.sampled_from([0x02, 0x10, 0x12])), draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0:
        kw["iface_in"] = IfaceMatch(tuple(draw(st.lists(st.sampled_from(IFACES), min_size=1, max_size=2,
                                                         unique=True))), draw(st.booleans()))
    if draw(st.integers(0, 6)) == 0:
        kw["iface_out"] = IfaceMatch((draw(st.sampled_from(IFACES)),), draw(st.booleans()))
    if draw(st.integers(0, 6)) == 0:
        fam = draw(st.sampled_from([4, 6]))
        kw["icmp"] = IcmpMatch(fam, frozenset(draw(st.sets(st.sampled_from([0, 3, 8, 128, 129]),
                                                           max_size=2))), (0, draw(st.integers(0, 5))),
                               draw(st.booleans()))
    if draw(st.integers(0, 6)) == 0:
        kw["family"] = draw(st.sampled_from([4, 6]))
    return Match(**kw)


ACTIONS = ["accept", "accept", "drop", "reject", "log", "return", "jump", "goto"]


@st.composite
def rulesets(draw: st.DrawFn, *, conntrack: bool | None = None, bases: bool = True) -> Ruleset:
    """A ruleset of up to three chains (main, a, b), jumps going downwards only (no loops),
    with negations, families, states, fragments, flags, interfaces; optionally several
    base chains on the forward path, one of them before the conntrack lookup."""
    tracked = draw(st.booleans()) if conntrack is None else conntrack
    names = ["main", "a", "b"]
    chains: dict[str, list[Rule]] = {}
    n = 0
    for ci, name in enumerate(names):
        rs = []
        for _ in range(draw(st.integers(0, 5 if name == "main" else 3))):
            action = draw(st.sampled_from(ACTIONS))
            target = None
            if action in ("jump", "goto"):
                below = names[ci + 1:]
                if not below:
                    action = "drop"
                else:
                    target = draw(st.sampled_from(below))
            n += 1
            rs.append(Rule(f"r{n}", Source("test.yaml", n), draw(matches()), Action(action, target)))
        chains[name] = rs
    base_list = [BaseChain("main", None, 0, draw(st.sampled_from(["accept", "drop"])), None,
                           Source("test.yaml", 900))]
    if bases and draw(st.booleans()):
        # A second base chain: on prerouting (before or after the lookup) or postrouting.
        hook, prio = draw(st.sampled_from([("prerouting", -300), ("prerouting", -150), ("postrouting", 100),
                                           ("forward", 10), ("forward", -10)]))
        fam = draw(st.sampled_from([None, 4, 6]))
        extra = []
        for _ in range(draw(st.integers(0, 3))):
            n += 1
            action = draw(st.sampled_from(["accept", "drop", "log", "notrack" if prio < -200 else "log"]))
            extra.append(Rule(f"r{n}", Source("test.yaml", n), draw(matches()), Action(action)))
        chains["pre"] = extra
        base_list.append(BaseChain("pre", hook, prio, draw(st.sampled_from(["accept", "drop"])), fam,
                                   Source("test.yaml", 901)))
    return Ruleset("random", ("test.yaml",), "test",
                   {k: Chain(k, tuple(v), SRC) for k, v in chains.items()}, tuple(base_list),
                   Conntrack(enabled=tracked))


def random_point(rng: random.Random, ifaces: Sequence[str | None], *, tracked: bool,
                 fragments: bool) -> dict[str, int]:
    """A packet header biased towards the interesting values of the pools above."""
    fam = rng.choice([0, 1])
    pool = V4_POOL if fam == 0 else V6_POOL
    def address() -> int:
        net = ipaddress.ip_network(rng.choice(pool))
        pick = rng.choice(["first", "last", "middle", "random"])
        if pick == "first":
            return int(net.network_address)
        if pick == "last":
            return int(net.broadcast_address)
        if pick == "middle":
            return int(net.network_address) + net.num_addresses // 2
        return int(net.network_address) + rng.randrange(net.num_addresses)
    proto_n = rng.choice([6, 17, 17, 1 if fam == 0 else 58, 47])
    frag = rng.choice([0, 0, 0, 1, 2]) if fragments else 0
    point = {"fam": fam, "src": address(), "dst": address(), "proto": proto_n, "frag": frag,
             "flags": 0, "sport": 0, "dport": 0}
    has_ports = proto_n in (6, 17) and frag != 2
    if has_ports:
        def port() -> int:
            r = rng.choice(PORTS)
            lo, hi = (r, r) if isinstance(r, int) else r
            return rng.choice([lo, hi, rng.randint(lo, hi), max(1, lo - 1), min(65535, hi + 1)])
        point["sport"], point["dport"] = port(), port()
    if proto_n == 6 and frag != 2:
        point["flags"] = rng.choice([0x02, 0x10, 0x12, 0x18, 0x11, 0x04])
    if proto_n in (1, 58) and frag != 2:
        point["sport"] = rng.choice([0, 3, 8, 128, 129])
        point["dport"] = rng.choice([0, 1, 4])
    point["state"] = rng.choice(["new", "established", "related", "invalid"]) if tracked else "untracked"
    point["iif"] = rng.choice(list(ifaces))
    point["oif"] = rng.choice(list(ifaces))
    return point


def with_limit(rs: Ruleset, rule_id: str, limit: LimitMatch) -> Ruleset:
    """``rs`` with rule ``rule_id``'s rate limit set to ``limit``."""
    chains = {name: replace(chain, rules=tuple(replace(r, match=replace(r.match, limit=limit)) if r.id == rule_id
                                               else r for r in chain.rules))
              for name, chain in rs.chains.items()}
    return replace(rs, chains=MappingProxyType(chains))
