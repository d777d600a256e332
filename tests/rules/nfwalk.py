"""Test-only tools to compare two rulesets: a stateless reference walk and a canonical form.

Not the engine: the walk takes a packet's conntrack state, helper and "is the
rate limit's bucket full" as given, so that two rulesets can be compared
packet by packet on the conditions they test (an import against its export,
a ruleset against what the kernel lists back).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from fwtest.rules.iptables import addr_ranges, port_ranges
from fwtest.rules.ir import CT_STATES, HOOKS, TCP, FragmentMatch, Match, Rule, Ruleset

FRAG_NONE, FRAG_FIRST, FRAG_LATER = 0, 1, 2
_counter = itertools.count()


class Probe(NamedTuple):
    family: int
    proto: int
    src: int
    dst: int
    sport: int            # -1: no ports (other protocol or later fragment)
    dport: int
    iif: str
    oif: str
    state: str
    frag: int
    tcp_flags: int
    helper: str | None
    icmp: tuple[int, int] | None
    payload: bytes
    within_limit: bool


def _fragment_matches(frag: FragmentMatch, p: Probe) -> bool:
    hit = {"later": p.frag == FRAG_LATER, "first": p.frag == FRAG_FIRST, "any": p.frag != FRAG_NONE}[frag.kind]
    return hit != frag.negated


def match_packet(m: Match, p: Probe) -> bool:
    if m.family is not None and m.family != p.family:
        return False
    if m.proto is not None and not m.proto.matches(p.proto):
        return False
    if m.src is not None and not m.src.matches(p.family, p.src):
        return False
    if m.dst is not None and not m.dst.matches(p.family, p.dst):
        return False
    for port, value in ((m.sport, p.sport), (m.dport, p.dport)):
        if port is not None and (value < 0 or not port.matches(value)):
            return False
    if m.iface_in is not None and not m.iface_in.matches(p.iif):
        return False
    if m.iface_out is not None and not m.iface_out.matches(p.oif):
        return False
    if m.state is not None and not m.state.matches(p.state):
        return False
    if m.fragment is not None and not _fragment_matches(m.fragment, p):
        return False
    if m.tcp_flags is not None and (p.proto != TCP or p.frag == FRAG_LATER
                                    or not m.tcp_flags.matches(p.tcp_flags)):
        return False
    if m.helper is not None and m.helper != p.helper:
        return False
    for s in m.string:
        hay, needle = p.payload[s.offset_from:s.offset_to + len(s.pattern)], s.pattern
        if s.icase:
            hay, needle = hay.lower(), needle.lower()
        if (needle in hay) == s.negated:
            return False
    if m.limit is not None and p.within_limit == m.limit.above:
        return False
    if m.icmp is not None and (p.icmp is None or p.frag == FRAG_LATER
                               or not m.icmp.matches(p.family, p.proto, *p.icmp)):
        return False
    assert m.sip is None, "the reference walk does not read SIP"
    return True


class Outcome(NamedTuple):
    verdict: str
    effects: frozenset[str]      # helpers assigned, notrack


def walk(ruleset: Ruleset, hook: str, p: Probe, native_hook: str = "forward",
         sip_ports: tuple[int, ...] = (5060,)) -> Outcome:
    effects: set[str] = set()
    # Conntrack.helpers without explicit assignments: the helper goes on connections to the
    # SIP ports over UDP and TCP, where packets enter conntrack (prerouting, output).
    if (hook in ("prerouting", "output") and "sip" in ruleset.conntrack.helpers and p.dport in sip_ports
            and p.proto in (6, 17) and not any(r.action.kind == "ct_helper" for r in ruleset.rules())):
        effects.add("helper:sip")
    for base in ruleset.base_chains(hook, p.family, native_hook):
        verdict = _walk_chain(ruleset, base.chain, p, effects)
        if verdict is None:
            verdict = base.policy
        if verdict != "accept":
            return Outcome(verdict, frozenset(effects))
    return Outcome("accept", frozenset(effects))


def _walk_chain(ruleset: Ruleset, start: str, p: Probe, effects: set[str]) -> str | None:
    """The verdict, or None when the base chain ends (its policy applies)."""
    stack: list[tuple[str, int]] = []
    chain, index = start, 0
    while True:
        rules = ruleset.chains[chain].rules
        if index >= len(rules):
            if not stack:
                return None
            chain, index = stack.pop()
            continue
        rule = rules[index]
        index += 1
        if not match_packet(rule.match, p):
            continue
        kind = rule.action.kind
        if kind in ("accept", "drop", "reject"):
            return kind
        if kind == "return":
            if not stack:
                return None
            chain, index = stack.pop()
        elif kind == "jump":
            stack.append((chain, index))
            chain, index = rule.action.target, 0
        elif kind == "goto":
            chain, index = rule.action.target, 0
        elif kind == "ct_helper":
            effects.add(f"helper:{rule.action.target}")
        elif kind == "notrack":
            effects.add("notrack")


# ---------------------------------------------------------------- packets


def _interesting(ruleset: Ruleset) -> dict:
    addrs: dict[int, set[int]] = {4: {0, 2**32 - 1, 0xC6336407}, 6: {0, 2**128 - 1}}
    ports, protos, ifaces = {0, 1, 5060, 65535}, {1, 6, 17, 58, 132}, {"eth0", "eth1", "lo"}
    icmp_types, patterns = {0, 3, 8, 128, 135}, [b"", b"INVITE sip:sos@psap"]
    for rule in ruleset.rules():
        m = rule.match
        for a in (m.src, m.dst):
            if a is not None:
                for r in a.ranges:
                    top = 2 ** (32 if r.family == 4 else 128) - 1
                    addrs[r.family] |= {v for v in (r.first - 1, r.first, r.last, r.last + 1) if 0 <= v <= top}
        for pm in (m.sport, m.dport):
            if pm is not None:
                for lo, hi in pm.ranges:
                    ports |= {v for v in (lo - 1, lo, hi, hi + 1) if 0 <= v <= 65535}
        if m.proto is not None:
            protos |= set(m.proto.protocols)
        for i in (m.iface_in, m.iface_out):
            if i is not None:
                for n in i.names:
                    ifaces |= {n[:-1] + "7" if n.endswith("+") else n, n.rstrip("+")}
        if m.icmp is not None:
            icmp_types |= set(m.icmp.types)
        for s in m.string:
            patterns.append(b"xx" + s.pattern + b"yy")
            patterns.append(b"xx" + s.pattern.upper() + b"yy")
    return {"addrs": {f: sorted(v) for f, v in addrs.items()}, "ports": sorted(ports),
            "protos": sorted(protos), "ifaces": sorted(ifaces), "icmp": sorted(icmp_types),
            "patterns": patterns}


def probes(rulesets: Iterable[Ruleset], count: int, seed: int = 0) -> Iterator[Probe]:
    """Packets built from the values the rulesets test (and their neighbours)."""
    values: dict = {"addrs": {4: [], 6: []}, "ports": [], "protos": [], "ifaces": [], "icmp": [],
                    "patterns": []}
    for rs in rulesets:
        v = _interesting(rs)
        for key in ("ports", "protos", "ifaces", "icmp", "patterns"):
            values[key] = sorted(set(values[key]) | set(v[key])) if key != "patterns" else values[key] + v[key]
        for f in (4, 6):
            values["addrs"][f] = sorted(set(values["addrs"][f]) | set(v["addrs"][f]))
    rnd = random.Random(seed)
    states = sorted(CT_STATES)
    for _ in range(count):
        family = rnd.choice((4, 6))
        proto = rnd.choice(values["protos"])
        frag = rnd.choice((FRAG_NONE, FRAG_NONE, FRAG_NONE, FRAG_FIRST, FRAG_LATER))
        has_ports = proto in (6, 17, 132, 136) and frag != FRAG_LATER
        icmp = None
        if proto == (1 if family == 4 else 58) and frag != FRAG_LATER:
            icmp = (rnd.choice(values["icmp"]), rnd.choice((0, 1, 3, 4, 13)))
        yield Probe(
            family=family, proto=proto,
            src=rnd.choice(values["addrs"][family]), dst=rnd.choice(values["addrs"][family]),
            sport=rnd.choice(values["ports"]) if has_ports else -1,
            dport=rnd.choice(values["ports"]) if has_ports else -1,
            iif=rnd.choice(values["ifaces"]), oif=rnd.choice(values["ifaces"]),
            state=rnd.choice(states), frag=frag,
            tcp_flags=rnd.choice((0x02, 0x12, 0x10, 0x11, 0x04, 0x00, 0x3F, 0x18)) if proto == TCP else 0,
            helper=rnd.choice((None, "sip")), icmp=icmp, payload=rnd.choice(values["patterns"]),
            within_limit=rnd.random() < 0.5,
        )


def differences(a: Ruleset, b: Ruleset, count: int = 3000, native_hook: str = "forward",
                seed: int = 0) -> list[tuple[str, Probe, Outcome, Outcome]]:
    """Packets on which the two rulesets disagree, at any hook."""
    out = []
    for p in probes((a, b), count, seed):
        for hook in HOOKS:
            x, y = walk(a, hook, p, native_hook), walk(b, hook, p, native_hook)
            if x != y:
                out.append((hook, p, x, y))
    return out


# ---------------------------------------------------------------- canonical form


def canonical_match(m: Match, family: int) -> tuple | None:
    """The conditions of ``m`` for packets of ``family``, independent of spelling
    (None when ``m`` can never match that family)."""
    if m.family not in (None, family):
        return None
    addresses = []
    for a in (m.src, m.dst):
        if a is None:
            addresses.append(None)
            continue
        ranges = addr_ranges(a, family)
        if not ranges:
            return None
        addresses.append(ranges)
    if m.icmp is not None and m.icmp.family != family:
        return None
    for pm in (m.sport, m.dport):
        if pm is not None and not port_ranges(pm):
            return None
    proto = None
    if m.proto is not None:
        proto = frozenset(set(range(256)) - m.proto.protocols) if m.proto.negated else m.proto.protocols
    state = None
    if m.state is not None:
        state = frozenset(CT_STATES - m.state.states) if m.state.negated else m.state.states
    limit = None
    if m.limit is not None:
        lm = m.limit
        limit = (round(lm.rate, 9), lm.burst, lm.above, lm.per, lm.src_prefix, lm.dst_prefix)
    icmp = None
    if m.icmp is not None:
        icmp = (m.icmp.types, m.icmp.codes, m.icmp.negated)
    return (
        proto, *addresses,
        port_ranges(m.sport) if m.sport else None, port_ranges(m.dport) if m.dport else None,
        m.iface_in, m.iface_out, state, m.fragment, m.tcp_flags, m.helper,
        tuple((s.pattern, s.algo, s.offset_from, s.offset_to, s.icase, s.negated) for s in m.string),
        limit, icmp,
    )


def canonical_rule(rule: Rule, family: int, chain_form) -> tuple | None:
    match = canonical_match(rule.match, family)
    if match is None:
        return None
    action = rule.action
    if action.kind == "continue":
        return None       # changes nothing
    target = chain_form(action.target) if action.kind in ("jump", "goto") else None
    extra = action.target if action.kind in ("ct_helper",) else None
    return (match, action.kind, target, extra)


def canonical(ruleset: Ruleset, family: int, native_hook: str = "forward") -> dict:
    """Per hook: the base chains a packet of ``family`` crosses (priority order, policy) and
    their rules, jump targets replaced by the target chain's canonical rules."""
    cache: dict[str, tuple] = {}

    def chain_form(name: str) -> tuple:
        if name not in cache:
            cache[name] = ()
            cache[name] = tuple(r for r in (canonical_rule(x, family, chain_form)
                                            for x in ruleset.chains[name].rules) if r is not None)
        return cache[name]

    out = {}
    for hook in HOOKS:
        chains = []
        for base in ruleset.base_chains(hook, family, native_hook):
            rules = chain_form(base.chain)
            if base.policy == "accept" and not rules:
                continue
            chains.append((base.priority, base.policy, rules))
        if chains:
            out[hook] = chains
    return out


# ---------------------------------------------------------------- network namespaces


class Netns:
    """A throw-away network namespace (unique name), always deleted."""

    def __init__(self) -> None:
        self.name = f"fwt-rules-{os.getpid()}-{next(_counter)}"

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], input=stdin, text=True,
                              capture_output=True, timeout=60)
