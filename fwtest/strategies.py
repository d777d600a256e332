"""Hypothesis strategies for your own firewall tests (public, stable API).

Teams that generate rulesets (templates, Ansible, an address-book tool) want
to know that no edit their generator can make cuts the 911 path; reviewers
want to know which rules the path leans on. These strategies draw the
things such tests need::

    from hypothesis import given
    from fwtest import load_ruleset
    from fwtest.pytest_plugin import assert_path_intact
    from fwtest.strategies import rule_edits

    RULES = load_ruleset("rules.yaml")

    @given(rule_edits(RULES, rules=["ssh-mgmt"]))
    def test_management_edits_never_break_911(edit):
        assert_path_intact(edit.apply(), "psap-edge.profile.yaml")

Rule edits
    ``rule_edits(ruleset)`` draws one ``RuleEdit`` of the ruleset: insert a
    rule, delete one, move one, change its action, narrow or widen an address
    or port range (or drop a condition), add a rate limit, add a string
    match. ``edit.apply()`` is a new IR ``Ruleset``; the rules keep their
    ``Source``, so findings on the edited ruleset still point at file:line.
    ``single_edits(ruleset)`` lists the canonical single edits of every rule
    (what ``fwtest fuzz`` scans); ``edit_sequences`` draws several edits of
    distinct rules and ``apply_edits`` applies them in order.
Traffic
    ``sip_messages()`` (RFC 3261 requests and responses as bytes, or hostile
    ones with ``valid=False``), ``emergency_calls(profile)`` (whole call
    flows, built like ``fwtest synth`` builds them, with drawn hosts, media
    ports and durations), ``packets_in(profile)`` (single packet records
    anywhere in the profile's header space).
Rulesets
    ``ruleset_dicts()`` / ``rulesets()``: small native rulesets.

Everything drawn is deterministic for Hypothesis's choices (no hidden
randomness), so failures shrink and replay.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

from fwtest.profile import EmergencyProfile
from fwtest.rules.ir import (
    PROTO_NAMES,
    TCP,
    TERMINAL,
    UDP,
    Action,
    AddrMatch,
    AddrRange,
    Chain,
    LimitMatch,
    Match,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    Source,
    StateMatch,
    StringMatch,
)
from fwtest.traffic.callflow import CallFlow
from fwtest.traffic.record import PacketRecord

__all__ = [
    "EDIT_KINDS", "DEPENDENCY_KINDS", "RuleEdit", "EditError", "single_edits", "rule_edits", "edit_sequences",
    "apply_edits", "new_rules", "ruleset_dicts", "rulesets", "sip_messages", "emergency_calls", "packets_in",
    "match_text",
]

EDIT_KINDS = ("insert", "delete", "move", "action", "narrow", "widen", "limit", "string")
# The edits that define a load-bearing rule (DESIGN.md, fwtest fuzz): delete it,
# narrow its match, flip its action. See ``RuleEdit.tests_dependency``.
DEPENDENCY_KINDS = ("delete", "narrow", "flip")

# Patterns a person adds to block something (a scanner's User-Agent, a fraud
# kit's name, a method), several of them found in every emergency INVITE.
STRING_PATTERNS = (b"sos", b"friendly-scanner", b"sipvicious", b"INVITE", b"OPTIONS", b"urn:service",
                   b"Geolocation", b"application/pidf+xml", b"SIP/2.0", b"Resource-Priority", b"esnet")
RATES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0)
BURSTS = (1, 5, 10, 25, 50, 100, 500)
# Addresses a rule writer reaches for that are not the emergency path's own
# (RFC 5737 / RFC 3849 documentation blocks, RFC 2544 benchmarking, RFC 1918).
UNRELATED_NETS = ("192.0.2.0/24", "198.18.0.0/15", "10.0.0.0/8", "2001:db8:dead::/48")
COMMON_PORTS = ((22, 22), (53, 53), (80, 80), (443, 443), (2855, 2855), (5060, 5060), (5061, 5061),
                (5060, 5061), (10000, 20000), (16384, 32767), (1, 1023), (1024, 65535))


class EditError(ValueError):
    """An edit cannot be applied to this ruleset (its rule or anchor is not there)."""


# --------------------------------------------------------------------- text

def _nets_text(family: int, first: int, last: int) -> str:
    cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    nets = ipaddress.summarize_address_range(cls(first), cls(last))
    return ", ".join(str(n) for n in nets)


def _addr_text(am: AddrMatch) -> str:
    text = ", ".join(_nets_text(r.family, r.first, r.last) for r in am.ranges)
    return f"!{text}" if am.negated else text


def _ports_text(pm: PortMatch) -> str:
    text = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in pm.ranges)
    return f"!{text}" if pm.negated else text


def _proto_text(pm: ProtoMatch) -> str:
    text = ", ".join(PROTO_NAMES.get(p, str(p)) for p in sorted(pm.protocols))
    return f"!{text}" if pm.negated else text


def _string_text(sm: StringMatch) -> str:
    pattern = sm.pattern.decode("latin-1")
    return f"string {'!' if sm.negated else ''}{pattern!r}{' (any case)' if sm.icase else ''}"


def _limit_text(lm: LimitMatch) -> str:
    per = f" per {'+'.join(lm.per)}" if lm.per else ""
    return f"limit {'above ' if lm.above else ''}{lm.rate:g}/s burst {lm.burst}{per}"


def match_text(match: Match) -> str:
    """One line naming a match's conditions (``proto udp, src 198.51.100.0/24, dport 5060``)."""
    parts: list[str] = []
    if match.family is not None:
        parts.append(f"IPv{match.family}")
    if match.proto is not None:
        parts.append(f"proto {_proto_text(match.proto)}")
    for name, am in (("src", match.src), ("dst", match.dst)):
        if am is not None:
            parts.append(f"{name} {_addr_text(am)}")
    for name, pm in (("sport", match.sport), ("dport", match.dport)):
        if pm is not None:
            parts.append(f"{name} {_ports_text(pm)}")
    for name, im in (("in", match.iface_in), ("out", match.iface_out)):
        if im is not None:
            parts.append(f"{name} {'!' if im.negated else ''}{','.join(im.names)}")
    if match.state is not None:
        parts.append(f"state {'!' if match.state.negated else ''}{','.join(sorted(match.state.states))}")
    if match.fragment is not None:
        parts.append(f"fragment {'!' if match.fragment.negated else ''}{match.fragment.kind}")
    if match.tcp_flags is not None:
        parts.append(f"tcp flags {match.tcp_flags.mask:#x}/{match.tcp_flags.comp:#x}")
    if match.icmp is not None:
        parts.append(f"icmp {match.icmp.text or 'type'}")
    if match.helper is not None:
        parts.append(f"helper {match.helper}")
    if match.sip is not None:
        sip = match.sip
        bits = [f"method {sip.method}" if sip.method else "", f"uri {sip.uri}" if sip.uri else "",
                *(f"{h} {v}" for h, v in sip.headers), f"status {sip.status}" if sip.status else ""]
        parts.append("sip " + "; ".join(b for b in bits if b))
    parts.extend(_string_text(s) for s in match.string)
    if match.limit is not None:
        parts.append(_limit_text(match.limit))
    return ", ".join(parts) if parts else "any packet"


def _rule_text(match: Match, action: Action) -> str:
    return f"{match_text(match)} -> {action}"


def _ref(rule: Rule) -> str:
    return f"{rule.id} ({rule.source})"


# --------------------------------------------------------------------- the edit

@dataclass(frozen=True)
class RuleEdit:
    """One change a person or a generator could make to a ruleset.

    ``kind`` is one of ``EDIT_KINDS``; ``rule`` is the rule it touches as it
    stands in the ruleset it was drawn for (for ``insert``: the new rule);
    ``description`` says it in words, naming the rule's file and line
    ("narrow dport of rtp-in (rules.yaml:113) to 16384-24575");
    ``apply()`` returns the edited ruleset (a new IR ``Ruleset``: nothing
    is modified in place, every untouched rule is the same object, and
    edited rules keep their ``Source``).
    """

    kind: str
    rule: Rule
    description: str
    chain: str                          # name of the chain the rule is (or goes) in
    base: Ruleset = field(compare=False, repr=False)
    replacement: Rule | None = None     # the rule after the edit (narrow, widen, action, limit, string, insert)
    before: str | None = None           # move, insert: id of the rule it is placed before (None: end of chain)
    narrows: bool = False               # the edited rule matches a subset of what it matched (or is gone)
    flips: bool = False                 # action: accept <-> drop/reject

    @property
    def anchor(self) -> Rule | None:
        """For ``insert`` and ``move``: the rule it is placed before (None: the end of the chain)."""
        if self.before is None:
            return None
        for r in self.base.chains[self.chain].rules:
            if r.id == self.before:
                return r
        return None

    @property
    def tests_dependency(self) -> bool:
        """True for the edits that define a load-bearing rule (DESIGN.md, ``fwtest fuzz``):
        deleting the rule, narrowing its match, flipping its action between accept and
        drop/reject. Widening a drop until it covers the path also breaks it, but does not
        make the drop something the path depends on."""
        return self.kind == "delete" or (self.narrows and self.kind in ("narrow", "limit", "string")) \
            or self.flips

    @property
    def only_own_packets(self) -> bool:
        """The edit can change the fate only of packets the touched rule matched before it
        (delete, narrow, a changed action, an added condition)."""
        return self.kind in ("delete", "action") or (self.narrows and self.kind in ("narrow", "limit", "string"))

    @property
    def key(self) -> tuple:
        """A hashable identity: two edits with the same key make the same ruleset."""
        rep = self.replacement
        return (self.kind, self.chain, self.rule.id, self.before,
                None if rep is None else (rep.id, rep.match, rep.action))

    def apply(self, ruleset: Ruleset | None = None) -> Ruleset:
        """The edited ruleset. ``ruleset`` defaults to the one the edit was drawn for;
        another (say, one an earlier edit produced) must hold the same rule and chain."""
        rs = self.base if ruleset is None else ruleset
        chain = rs.chains.get(self.chain)
        if chain is None:
            raise EditError(f"{self.description}: no chain {self.chain!r} in {rs.name}")
        rules = list(chain.rules)
        ids = [r.id for r in rules]
        if self.kind == "insert":
            assert self.replacement is not None
            if self.replacement.id in {r.id for r in rs.rules()}:
                raise EditError(f"{self.description}: rule id {self.replacement.id!r} is taken")
            rules.insert(self._position(ids), self.replacement)
        else:
            if self.rule.id not in ids:
                raise EditError(f"{self.description}: rule {self.rule.id} is not in chain {self.chain}")
            at = ids.index(self.rule.id)
            current = rules.pop(at)
            if self.kind == "move":
                rules.insert(self._position([r.id for r in rules]), current)
            elif self.kind != "delete":
                assert self.replacement is not None
                rules.insert(at, self.replacement)
        chains = dict(rs.chains)
        chains[self.chain] = Chain(chain.name, tuple(rules), chain.source)
        return replace(rs, chains=chains)

    def _position(self, ids: list[str]) -> int:
        if self.before is None:
            return len(ids)
        if self.before not in ids:
            raise EditError(f"{self.description}: rule {self.before} is not in chain {self.chain}")
        return ids.index(self.before)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "description": self.description,
                               "rule": {"id": self.rule.id, "file": self.rule.source.file,
                                        "line": self.rule.source.line}}
        if self.replacement is not None and self.kind != "insert":
            out["after"] = self.replacement.text
        elif self.kind == "insert":
            out["inserted"] = self.rule.text
        return out

    def __str__(self) -> str:
        return self.description


def apply_edits(ruleset: Ruleset, edits: Iterable[RuleEdit]) -> Ruleset:
    """The ruleset after every edit, in order (each must touch a rule still there)."""
    out = ruleset
    for edit in edits:
        out = edit.apply(out)
    return out


# --------------------------------------------------------------------- building blocks

def _edit(kind: str, base: Ruleset, chain: str, rule: Rule, description: str, *, new_match: Match | None = None,
          new_action: Action | None = None, narrows: bool = False, flips: bool = False,
          before: str | None = None, replacement: Rule | None = None) -> RuleEdit:
    if replacement is None and (new_match is not None or new_action is not None):
        match = rule.match if new_match is None else new_match
        action = rule.action if new_action is None else new_action
        replacement = replace(rule, match=match, action=action, text=_rule_text(match, action))
    return RuleEdit(kind, rule, description, chain, base, replacement, before, narrows, flips)


def _placed(rules: Sequence[Rule], at: int) -> str:
    return f"before {_ref(rules[at])}" if at < len(rules) else "at the end of the chain"


def _cidr_of(r: AddrRange) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The range as one prefix, if it is one."""
    cls = ipaddress.IPv4Address if r.family == 4 else ipaddress.IPv6Address
    nets = list(ipaddress.summarize_address_range(cls(r.first), cls(r.last)))
    return nets[0] if len(nets) == 1 else None


def _range_of(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> AddrRange:
    return AddrRange.from_network(net)


def _with_addr(match: Match, which: str, ranges: Sequence[AddrRange] | None, negated: bool = False) -> Match:
    if ranges is None:
        return replace(match, **{which: None})
    am = AddrMatch(tuple(ranges), negated, "")
    return replace(match, **{which: replace(am, text=_addr_text(am))})


def _with_ports(match: Match, which: str, ranges: Sequence[tuple[int, int]] | None,
                negated: bool = False) -> Match:
    if ranges is None:
        return replace(match, **{which: None})
    pm = PortMatch(tuple(ranges), negated, "")
    return replace(match, **{which: replace(pm, text=_ports_text(pm))})


def _with_proto(match: Match, protocols: Iterable[int]) -> Match:
    pm = ProtoMatch(frozenset(protocols))
    return replace(match, proto=replace(pm, text=_proto_text(pm)))


def _needs_proto(match: Match) -> bool:
    """Conditions that read a transport header: dropping the protocol would leave them dangling."""
    return (match.sport is not None or match.dport is not None or match.tcp_flags is not None
            or match.icmp is not None)


# Conditions widening may drop, in the order they are tried.
_WIDEN_CLAUSES = ("src", "dst", "sport", "dport", "proto", "state", "sip", "string", "limit", "fragment",
                  "tcp_flags", "iface_in", "iface_out", "helper", "icmp")
_CLAUSE_WORDS = {"iface_in": "in", "iface_out": "out", "tcp_flags": "tcp flags"}


def _present(match: Match, name: str) -> bool:
    value = getattr(match, name)
    return bool(value) if name == "string" else value is not None


def _drop_clause(match: Match, name: str) -> Match:
    return replace(match, **{name: () if name == "string" else None})


def _halves(lo: int, hi: int) -> list[tuple[int, int]]:
    if hi <= lo:
        return []
    mid = lo + (hi - lo + 1) // 2
    return [(lo, mid - 1), (mid, hi)]


# --------------------------------------------------------------------- canonical single edits

def _narrowings(base: Ruleset, chain: str, rule: Rule) -> list[RuleEdit]:
    m, out = rule.match, []
    ref = _ref(rule)
    for which in ("src", "dst"):
        am: AddrMatch | None = getattr(m, which)
        if am is None or am.negated:
            continue
        if len(am.ranges) > 1:
            for i, r in enumerate(am.ranges):
                rest = [x for j, x in enumerate(am.ranges) if j != i]
                new = _with_addr(m, which, rest)
                out.append(_edit("narrow", base, chain, rule,
                                 f"narrow {which} of {ref} to {_addr_text(new.src if which == 'src' else new.dst)}"
                                 f" (without {_nets_text(r.family, r.first, r.last)})",
                                 new_match=new, narrows=True))
        else:
            r = am.ranges[0]
            for lo, hi in _halves(r.first, r.last):
                new = _with_addr(m, which, [AddrRange(r.family, lo, hi)])
                out.append(_edit("narrow", base, chain, rule,
                                 f"narrow {which} of {ref} to {_nets_text(r.family, lo, hi)}",
                                 new_match=new, narrows=True))
    for which in ("sport", "dport"):
        pm: PortMatch | None = getattr(m, which)
        if pm is None or pm.negated:
            continue
        if len(pm.ranges) > 1:
            for i in range(len(pm.ranges)):
                rest = [x for j, x in enumerate(pm.ranges) if j != i]
                new = _with_ports(m, which, rest)
                out.append(_edit("narrow", base, chain, rule,
                                 f"narrow {which} of {ref} to {_ports_text(getattr(new, which))}",
                                 new_match=new, narrows=True))
        else:
            lo, hi = pm.ranges[0]
            for a, b in _halves(lo, hi):
                new = _with_ports(m, which, [(a, b)])
                out.append(_edit("narrow", base, chain, rule,
                                 f"narrow {which} of {ref} to {a}-{b}" if a != b else
                                 f"narrow {which} of {ref} to {a}", new_match=new, narrows=True))
    if m.proto is not None and not m.proto.negated and len(m.proto.protocols) > 1:
        for p in sorted(m.proto.protocols):
            rest = m.proto.protocols - {p}
            new = _with_proto(m, rest)
            out.append(_edit("narrow", base, chain, rule, f"narrow proto of {ref} to {_proto_text(new.proto)}",
                             new_match=new, narrows=True))
    if m.state is not None and not m.state.negated and len(m.state.states) > 1:
        for s in sorted(m.state.states):
            rest = m.state.states - {s}
            new = replace(m, state=StateMatch(frozenset(rest)))
            out.append(_edit("narrow", base, chain, rule,
                             f"narrow state of {ref} to {','.join(sorted(rest))}", new_match=new, narrows=True))
    if m.family is None and m.src is None and m.dst is None and m.icmp is None:
        for fam in (4, 6):
            new = replace(m, family=fam)
            out.append(_edit("narrow", base, chain, rule, f"restrict {ref} to IPv{fam}",
                             new_match=new, narrows=True))
    return out


def _widenings(base: Ruleset, chain: str, rule: Rule) -> list[RuleEdit]:
    m, out = rule.match, []
    ref = _ref(rule)
    for name in _WIDEN_CLAUSES:
        if not _present(m, name):
            continue
        word = _CLAUSE_WORDS.get(name, name)
        if name == "proto" and _needs_proto(m):
            if m.proto.negated or not m.proto.protocols <= {TCP, UDP} or m.proto.protocols == {TCP, UDP} \
                    or m.icmp is not None or m.tcp_flags is not None:
                continue
            new = _with_proto(m, {TCP, UDP})
            out.append(_edit("widen", base, chain, rule, f"widen proto of {ref} to tcp, udp", new_match=new))
            continue
        new = _drop_clause(m, name)
        what = f"widen {word} of {ref} to any" if name in ("src", "dst", "sport", "dport", "proto", "state") \
            else f"widen {ref}: drop its {word} condition"
        out.append(_edit("widen", base, chain, rule, what, new_match=new))
    if rule.action.kind in ("drop", "reject"):
        # The Massachusetts class: a deny typed one prefix bit too short covers its neighbour.
        for which in ("src", "dst"):
            am: AddrMatch | None = getattr(m, which)
            if am is None or am.negated:
                continue
            for i, r in enumerate(am.ranges):
                net = _cidr_of(r)
                if net is None or net.prefixlen == 0:
                    continue
                wider = net.supernet(prefixlen_diff=1)
                ranges = list(am.ranges)
                ranges[i] = _range_of(wider)
                new = _with_addr(m, which, ranges)
                out.append(_edit("widen", base, chain, rule, f"widen {which} of {ref} from {net} to {wider}",
                                 new_match=new))
    return out


_OPPOSITE = {"accept": ("drop", "reject"), "drop": ("accept",), "reject": ("accept",)}


def _actions(base: Ruleset, chain: str, rule: Rule) -> list[RuleEdit]:
    kind = rule.action.kind
    targets = _OPPOSITE.get(kind, ("accept", "drop"))
    out = []
    for target in targets:
        flips = (kind == "accept") != (target == "accept") and kind in TERMINAL
        out.append(_edit("action", base, chain, rule,
                         f"change action of {_ref(rule)} from {rule.action} to {target}",
                         new_action=Action(target), flips=flips))
    return out


def _limit_edit(base: Ruleset, chain: str, rule: Rule, rate: float, burst: int,
                per: tuple[str, ...] = ()) -> RuleEdit:
    old = rule.match.limit
    if old is None:
        lm = LimitMatch(rate, burst, False, per, text="")
        lm = replace(lm, text=_limit_text(lm))
        return _edit("limit", base, chain, rule,
                     f"add a rate limit of {rate:g}/s (burst {burst}) to {_ref(rule)}",
                     new_match=replace(rule.match, limit=lm), narrows=True)
    lm = replace(old, rate=rate, burst=burst, text="")
    lm = replace(lm, text=_limit_text(lm))
    # Lowering an "up to" limit narrows the rule; lowering an "above" limit (a flood
    # guard that drops above the rate) makes it match more: a widening.
    lower = rate <= old.rate and burst <= old.burst
    narrows = lower if not old.above else (rate >= old.rate and burst >= old.burst)
    verb = "lower" if lower else "change"
    return _edit("limit", base, chain, rule,
                 f"{verb} the rate limit of {_ref(rule)} from {old.rate:g}/s burst {old.burst} "
                 f"to {rate:g}/s burst {burst}", new_match=replace(rule.match, limit=lm), narrows=narrows)


def _string_edit(base: Ruleset, chain: str, rule: Rule, pattern: bytes, icase: bool) -> RuleEdit:
    sm = StringMatch(pattern, icase=icase)
    new = replace(rule.match, string=(*rule.match.string, sm))
    return _edit("string", base, chain, rule,
                 f"add {_string_text(sm)} to {_ref(rule)}", new_match=new, narrows=True)


def _opposite_copy(base: Ruleset, chain: str, rules: Sequence[Rule], at: int, rule_id: str) -> RuleEdit:
    """A copy of rules[at] with the opposite verdict, placed right above it (a deny above its allow)."""
    target = rules[at]
    action = Action("drop" if target.action.kind == "accept" else "accept")
    new = Rule(rule_id, target.source, target.match, action, None, _rule_text(target.match, action))
    return RuleEdit("insert", new, f"insert {_placed(rules, at)}: {new.text}", chain, base, new, target.id)


def _fresh_id(base: Ruleset, stem: str) -> str:
    taken = {r.id for r in base.rules()}
    n = 1
    while f"{stem}-{n}" in taken:
        n += 1
    return f"{stem}-{n}"


def single_edits(ruleset: Ruleset, *, rules: Iterable[str] | None = None,
                 kinds: Iterable[str] = EDIT_KINDS) -> list[RuleEdit]:
    """Every canonical single edit of every rule (what ``fwtest fuzz`` scans), in rule order.

    Per rule: delete it; change its action (accept to drop and to reject, drop or
    reject to accept, any other action to accept and to drop); narrow each
    address or port range to each half (or drop one of several ranges,
    protocols or states; restrict a family-less rule to IPv4 or IPv6); widen
    each condition to "any" (and, for drops, each address prefix by one bit);
    add a rate limit of 10/s burst 10 (lower an existing one to a quarter);
    add the string match ``sos`` (any case); move it to the top and to the
    bottom of its chain; insert above an accept a copy of it that drops.
    """
    wanted = set(EDIT_KINDS if kinds is None else kinds)
    unknown = wanted - set(EDIT_KINDS)
    if unknown:
        raise ValueError(f"unknown edit kinds {sorted(unknown)} (known: {', '.join(EDIT_KINDS)})")
    only = None if rules is None else set(rules)
    out: list[RuleEdit] = []
    inserted = 0
    for name, chain in ruleset.chains.items():
        for i, rule in enumerate(chain.rules):
            if only is not None and rule.id not in only:
                continue
            if "delete" in wanted:
                out.append(_edit("delete", ruleset, name, rule, f"delete {_ref(rule)}", narrows=True))
            if "action" in wanted:
                out.extend(_actions(ruleset, name, rule))
            if "narrow" in wanted:
                out.extend(_narrowings(ruleset, name, rule))
            if "widen" in wanted:
                out.extend(_widenings(ruleset, name, rule))
            if "limit" in wanted:
                old = rule.match.limit
                if old is None:
                    out.append(_limit_edit(ruleset, name, rule, 10.0, 10))
                else:
                    out.append(_limit_edit(ruleset, name, rule, max(old.rate / 4, 0.001), max(old.burst // 4, 1)))
            if "string" in wanted:
                out.append(_string_edit(ruleset, name, rule, b"sos", True))
            if "move" in wanted and len(chain.rules) > 1:
                if i > 0:
                    out.append(_edit("move", ruleset, name, rule, f"move {_ref(rule)} to the top of chain {name}",
                                     replacement=None, before=chain.rules[0].id))
                if i < len(chain.rules) - 1:
                    out.append(_edit("move", ruleset, name, rule,
                                     f"move {_ref(rule)} to the end of chain {name}", before=None))
            if "insert" in wanted and rule.action.kind == "accept":
                inserted += 1
                out.append(_opposite_copy(ruleset, name, chain.rules, i, _fresh_id(ruleset, f"fuzz-{inserted}")))
    return out


# --------------------------------------------------------------------- drawn edits

def _vocabulary(ruleset: Ruleset, profile: EmergencyProfile | None) -> tuple[list[AddrRange], list[tuple[int, int]]]:
    """Address ranges and port ranges a person editing this ruleset would type."""
    addrs: dict[AddrRange, None] = {}
    ports: dict[tuple[int, int], None] = {}
    for rule in ruleset.rules():
        for am in (rule.match.src, rule.match.dst):
            if am is not None:
                for r in am.ranges:
                    addrs[r] = None
                    net = _cidr_of(r)
                    if net is not None and net.prefixlen > 0:
                        addrs[_range_of(net.supernet(prefixlen_diff=1))] = None
        for pm in (rule.match.sport, rule.match.dport):
            if pm is not None:
                for pr in pm.ranges:
                    ports[pr] = None
    if profile is not None:
        for net in (*profile.psap, *profile.peers):
            addrs[_range_of(net)] = None
        for port in profile.sip.values():
            ports[(port, port)] = None
        ports[profile.rtp_psap] = None
        ports[profile.rtp_peers] = None
        ports[(profile.msrp, profile.msrp)] = None
    for text in UNRELATED_NETS:
        addrs[_range_of(ipaddress.ip_network(text))] = None
    for pr in COMMON_PORTS:
        ports[pr] = None
    return list(addrs), list(ports)


@st.composite
def new_rules(draw: st.DrawFn, ruleset: Ruleset, profile: EmergencyProfile | None = None, *,
              rule_id: str = "fuzz-new", source: Source | None = None) -> Rule:
    """A new rule a person might add: a verdict on some protocol, addresses and ports
    taken from the ruleset's own vocabulary (and the profile's), sometimes a string match."""
    addrs, ports = _vocabulary(ruleset, profile)
    action = draw(st.sampled_from(("drop", "accept", "reject")))
    proto = draw(st.sampled_from(("udp", "tcp", "any", "icmp")))
    match = Match()
    if proto in ("udp", "tcp"):
        match = _with_proto(match, {UDP if proto == "udp" else TCP})
        if draw(st.booleans()):
            match = _with_ports(match, "dport", [draw(st.sampled_from(ports))])
    elif proto == "icmp":
        match = _with_proto(match, {1})
    family = 4 if proto == "icmp" else None
    for which in ("src", "dst"):
        if draw(st.booleans()):
            choices = [a for a in addrs if family is None or a.family == family]
            r = draw(st.sampled_from(choices))
            family = r.family
            match = _with_addr(match, which, [r])
    if draw(st.integers(0, 3)) == 0:
        match = replace(match, string=(StringMatch(draw(st.sampled_from(STRING_PATTERNS)),
                                                   icase=draw(st.booleans())),))
    act = Action(action)
    src = source or Source("<fwtest new rule>", 0)
    return Rule(rule_id, src, match, act, None, _rule_text(match, act))


def _draw_narrowing(draw: st.DrawFn, base: Ruleset, chain: str, rule: Rule) -> RuleEdit | None:
    m = rule.match
    ref = _ref(rule)
    options = [w for w in ("src", "dst") if getattr(m, w) is not None and not getattr(m, w).negated]
    options += [w for w in ("sport", "dport") if getattr(m, w) is not None and not getattr(m, w).negated]
    if m.proto is not None and not m.proto.negated and len(m.proto.protocols) > 1:
        options.append("proto")
    if m.state is not None and not m.state.negated and len(m.state.states) > 1:
        options.append("state")
    if m.family is None and m.src is None and m.dst is None and m.icmp is None:
        options.append("family")
    if not options:
        return None
    which = draw(st.sampled_from(options))
    if which in ("src", "dst"):
        am: AddrMatch = getattr(m, which)
        if len(am.ranges) > 1 and draw(st.booleans()):
            i = draw(st.integers(0, len(am.ranges) - 1))
            rest = [x for j, x in enumerate(am.ranges) if j != i]
            new = _with_addr(m, which, rest)
            return _edit("narrow", base, chain, rule, f"narrow {which} of {ref} to {_addr_text(getattr(new, which))}",
                         new_match=new, narrows=True)
        i = draw(st.integers(0, len(am.ranges) - 1))
        r = am.ranges[i]
        if r.first == r.last:
            return None
        net = _cidr_of(r)
        bits = 32 if r.family == 4 else 128
        if net is not None:
            plen = draw(st.integers(net.prefixlen + 1, min(bits, net.prefixlen + 16)))
            index = draw(st.integers(0, 2 ** (plen - net.prefixlen) - 1))
            size = 2 ** (bits - plen)
            lo = r.first + index * size
            sub = AddrRange(r.family, lo, lo + size - 1)
        else:
            lo = draw(st.integers(r.first, r.last))
            hi = draw(st.integers(lo, r.last))
            if (lo, hi) == (r.first, r.last):
                return None
            sub = AddrRange(r.family, lo, hi)
        ranges = list(am.ranges)
        ranges[i] = sub
        new = _with_addr(m, which, ranges)
        return _edit("narrow", base, chain, rule,
                     f"narrow {which} of {ref} to {_addr_text(getattr(new, which))}", new_match=new, narrows=True)
    if which in ("sport", "dport"):
        pm: PortMatch = getattr(m, which)
        i = draw(st.integers(0, len(pm.ranges) - 1))
        lo, hi = pm.ranges[i]
        if len(pm.ranges) > 1 and (lo == hi or draw(st.booleans())):
            rest = [x for j, x in enumerate(pm.ranges) if j != i]
        else:
            if lo == hi:
                return None
            a = draw(st.integers(lo, hi))
            b = draw(st.integers(a, hi))
            if (a, b) == (lo, hi):
                return None
            rest = list(pm.ranges)
            rest[i] = (a, b)
        new = _with_ports(m, which, rest)
        return _edit("narrow", base, chain, rule, f"narrow {which} of {ref} to {_ports_text(getattr(new, which))}",
                     new_match=new, narrows=True)
    if which == "proto":
        keep = draw(st.sampled_from(sorted(m.proto.protocols)))
        new = _with_proto(m, {keep})
        return _edit("narrow", base, chain, rule, f"narrow proto of {ref} to {_proto_text(new.proto)}",
                     new_match=new, narrows=True)
    if which == "state":
        keep = draw(st.sampled_from(sorted(m.state.states)))
        new = replace(m, state=StateMatch(frozenset({keep})))
        return _edit("narrow", base, chain, rule, f"narrow state of {ref} to {keep}", new_match=new, narrows=True)
    fam = draw(st.sampled_from((4, 6)))
    return _edit("narrow", base, chain, rule, f"restrict {ref} to IPv{fam}", new_match=replace(m, family=fam),
                 narrows=True)


def _draw_widening(draw: st.DrawFn, base: Ruleset, chain: str, rule: Rule) -> RuleEdit | None:
    m = rule.match
    ref = _ref(rule)
    present = [c for c in _WIDEN_CLAUSES if _present(m, c)]
    if not present:
        return None
    name = draw(st.sampled_from(present))
    if name in ("src", "dst") and not getattr(m, name).negated and draw(st.booleans()):
        am: AddrMatch = getattr(m, name)
        i = draw(st.integers(0, len(am.ranges) - 1))
        net = _cidr_of(am.ranges[i])
        if net is not None and net.prefixlen > 0:
            diff = draw(st.integers(1, min(8, net.prefixlen)))
            wider = net.supernet(prefixlen_diff=diff)
            ranges = list(am.ranges)
            ranges[i] = _range_of(wider)
            return _edit("widen", base, chain, rule, f"widen {name} of {ref} from {net} to {wider}",
                         new_match=_with_addr(m, name, ranges))
    if name in ("sport", "dport") and not getattr(m, name).negated and draw(st.booleans()):
        pm: PortMatch = getattr(m, name)
        i = draw(st.integers(0, len(pm.ranges) - 1))
        lo, hi = pm.ranges[i]
        a = draw(st.integers(1, lo))
        b = draw(st.integers(hi, 65535))
        if (a, b) != (lo, hi):
            ranges = list(pm.ranges)
            ranges[i] = (a, b)
            new = _with_ports(m, name, ranges)
            return _edit("widen", base, chain, rule, f"widen {name} of {ref} to {_ports_text(getattr(new, name))}",
                         new_match=new)
    if name == "proto" and _needs_proto(m):
        if m.proto.negated or not m.proto.protocols <= {TCP, UDP} or m.proto.protocols == {TCP, UDP} \
                or m.tcp_flags is not None:
            return None
        return _edit("widen", base, chain, rule, f"widen proto of {ref} to tcp, udp",
                     new_match=_with_proto(m, {TCP, UDP}))
    word = _CLAUSE_WORDS.get(name, name)
    what = f"widen {word} of {ref} to any" if name in ("src", "dst", "sport", "dport", "proto", "state") \
        else f"widen {ref}: drop its {word} condition"
    return _edit("widen", base, chain, rule, what, new_match=_drop_clause(m, name))


@st.composite
def _one_edit(draw: st.DrawFn, ruleset: Ruleset, kinds: tuple[str, ...], rules: frozenset[str] | None,
              profile: EmergencyProfile | None, insert_id: str) -> RuleEdit:
    places = [(name, i, r) for name, chain in ruleset.chains.items() for i, r in enumerate(chain.rules)
              if rules is None or r.id in rules]
    # An insert may also go at the end of a chain.
    ends = [(name, len(chain.rules), None) for name, chain in ruleset.chains.items()
            if rules is None or not chain.rules]
    while True:
        kind = draw(st.sampled_from(kinds))
        if kind == "insert":
            pool = places + ends
            if not pool:
                continue
            name, at, _ = draw(st.sampled_from(pool))
            chain_rules = ruleset.chains[name].rules
            anchor = chain_rules[at] if at < len(chain_rules) else None
            source = anchor.source if anchor is not None else (
                chain_rules[-1].source if chain_rules else ruleset.chains[name].source)
            new = draw(new_rules(ruleset, profile, rule_id=insert_id, source=source))
            return RuleEdit("insert", new, f"insert {_placed(chain_rules, at)}: {new.text}", name, ruleset, new,
                            anchor.id if anchor is not None else None)
        if not places:
            raise ValueError("rule_edits: no rule to edit (the ruleset is empty or `rules` matches none)")
        name, at, rule = draw(st.sampled_from(places))
        edit: RuleEdit | None
        if kind == "delete":
            edit = _edit("delete", ruleset, name, rule, f"delete {_ref(rule)}", narrows=True)
        elif kind == "action":
            edit = draw(st.sampled_from(_actions(ruleset, name, rule)))
        elif kind == "narrow":
            edit = _draw_narrowing(draw, ruleset, name, rule)
        elif kind == "widen":
            edit = _draw_widening(draw, ruleset, name, rule)
        elif kind == "limit":
            edit = _limit_edit(ruleset, name, rule, draw(st.sampled_from(RATES)), draw(st.sampled_from(BURSTS)),
                               draw(st.sampled_from(((), ("src",)))))
        elif kind == "string":
            edit = _string_edit(ruleset, name, rule, draw(st.sampled_from(STRING_PATTERNS)), draw(st.booleans()))
        else:  # move
            chain_rules = ruleset.chains[name].rules
            if len(chain_rules) < 2:
                continue
            to = draw(st.integers(0, len(chain_rules) - 1).filter(lambda j, at=at: j != at))
            rest = [r for r in chain_rules if r.id != rule.id]
            before = rest[to].id if to < len(rest) else None
            where = f"before {_ref(rest[to])}" if to < len(rest) else f"to the end of chain {name}"
            edit = _edit("move", ruleset, name, rule, f"move {_ref(rule)} {where}", before=before)
        if edit is not None:
            return edit


def rule_edits(ruleset: Ruleset, *, kinds: Iterable[str] = EDIT_KINDS, rules: Iterable[str] | None = None,
               profile: EmergencyProfile | None = None) -> st.SearchStrategy[RuleEdit]:
    """One ``RuleEdit`` of ``ruleset``: insert, delete, move, change the action, narrow or
    widen an address or port range (or drop a condition), add or change a rate limit,
    add a string match.

    ``kinds`` restricts the kinds (``EDIT_KINDS``); ``rules`` restricts the rules
    edited, by id (inserts then go next to those rules); ``profile`` adds the
    profile's prefixes and ports to the values new ranges are drawn from.
    Shrinks towards deleting the first rule.
    """
    kinds = tuple(kinds)
    bad = set(kinds) - set(EDIT_KINDS)
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {EDIT_KINDS}, not {kinds}")
    # Shrink towards the simplest edit: delete first, then the others in EDIT_KINDS order.
    kinds = tuple(sorted(kinds, key=lambda k: (k != "delete", EDIT_KINDS.index(k))))
    only = None if rules is None else frozenset(rules)
    if only is not None:
        missing = only - {r.id for r in ruleset.rules()}
        if missing:
            raise ValueError(f"rule_edits: no rule {', '.join(sorted(missing))} in {ruleset.name}")
    return _one_edit(ruleset, kinds, only, profile, _fresh_id(ruleset, "fuzz-new"))


@st.composite
def edit_sequences(draw: st.DrawFn, ruleset: Ruleset, *, max_edits: int = 3, min_edits: int = 1,
                   kinds: Iterable[str] = EDIT_KINDS, rules: Iterable[str] | None = None,
                   profile: EmergencyProfile | None = None) -> list[RuleEdit]:
    """Several edits of distinct rules, drawn against ``ruleset`` and applicable in order
    with ``apply_edits``: no two edits touch or anchor on the same rule."""
    kinds = tuple(kinds)
    count = draw(st.integers(min_edits, max_edits))
    edits: list[RuleEdit] = []
    used: set[str] = set()
    for n in range(count * 3):
        if len(edits) == count:
            break
        strategy = rule_edits(ruleset, kinds=kinds, rules=rules, profile=profile)
        edit = draw(strategy)
        if edit.kind == "insert":
            new_id = _fresh_id(ruleset, f"fuzz-new-{n}")
            new = replace(edit.rule, id=new_id)
            edit = replace(edit, rule=new, replacement=new)
        touched = {edit.rule.id, edit.before} - {None}
        if touched & used:
            continue
        used |= touched
        edits.append(edit)
    return edits


# --------------------------------------------------------------------- rulesets

_RULESET_NETS = ("198.51.100.0/24", "198.51.100.0/25", "203.0.113.0/26", "192.0.2.0/24", "10.0.0.0/8",
                 "2001:db8:100::/56", "2001:db8:911::/64")
_RULESET_PORTS = (5060, 5061, 2855, 22, "16384-32767", "10000-20000", "1-1023")


@st.composite
def ruleset_dicts(draw: st.DrawFn, *, max_rules: int = 6) -> dict[str, Any]:
    """A small native ruleset as a plain dict (the YAML's structure): a policy, maybe
    conntrack, and up to ``max_rules`` rules over a few addresses, ports and states."""
    stateful = draw(st.booleans())
    rules = []
    for i in range(draw(st.integers(0, max_rules))):
        rule: dict[str, Any] = {"id": f"r{i}"}
        proto = draw(st.sampled_from(("udp", "tcp", None)))
        if proto:
            rule["proto"] = proto
            if draw(st.booleans()):
                rule["dport"] = draw(st.sampled_from(_RULESET_PORTS))
        family = None
        for which in ("src", "dst"):
            if draw(st.booleans()):
                choices = [n for n in _RULESET_NETS if family is None or (":" in n) == (family == 6)]
                net = draw(st.sampled_from(choices))
                family = 6 if ":" in net else 4
                rule[which] = net
        if stateful and draw(st.booleans()):
            rule["state"] = draw(st.sampled_from(("new", "established", ["established", "related"])))
        rule["action"] = draw(st.sampled_from(("accept", "drop", "reject", "log")))
        rules.append(rule)
    data: dict[str, Any] = {"name": "drawn", "policy": draw(st.sampled_from(("accept", "drop"))), "rules": rules}
    if stateful:
        data["conntrack"] = {"timeouts": {"udp": 30}}
    return data


def rulesets(*, max_rules: int = 6) -> st.SearchStrategy[Ruleset]:
    """Small native rulesets as IR (``ruleset_dicts`` loaded by ``ruleset_from_dict``)."""
    from fwtest.rules.native import ruleset_from_dict

    return ruleset_dicts(max_rules=max_rules).map(lambda d: ruleset_from_dict(d, "<hypothesis>"))


# --------------------------------------------------------------------- SIP

METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "REGISTER", "INFO", "UPDATE", "PRACK",
           "SUBSCRIBE", "NOTIFY", "REFER")
_HOSTS = ("198.51.100.7", "203.0.113.10", "[2001:db8:100::1]", "esrp.example.net", "psap.example.gov")
_URIS = ("urn:service:sos", "urn:service:sos.police", "sip:psap@203.0.113.10", "sips:+15085550100@esrp.example.net",
         "tel:+15085550100", "sip:[2001:db8:911::1]:5060;transport=tcp")
_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
_REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
            302: "Moved Temporarily", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
            480: "Temporarily Unavailable", 486: "Busy Here", 488: "Not Acceptable Here",
            500: "Server Internal Error", 503: "Service Unavailable", 603: "Decline"}
_PIDF = (b'<?xml version="1.0" encoding="UTF-8"?>\r\n<presence xmlns="urn:ietf:params:xml:ns:pidf" '
         b'entity="pres:caller@example.net"><tuple id="t1"><status><geopriv/></status></tuple></presence>\r\n')
_SDP = (b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
        b"m=audio 16384 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


@st.composite
def _valid_sip(draw: st.DrawFn) -> bytes:
    request = draw(st.booleans())
    method = draw(st.sampled_from(METHODS))
    if request:
        start = f"{method} {draw(st.sampled_from(_URIS))} SIP/2.0"
    else:
        status = draw(st.sampled_from(sorted(_REASONS)))
        start = f"SIP/2.0 {status} {_REASONS[status]}"
    branch = draw(st.text(_TOKEN_CHARS, min_size=1, max_size=16))
    call_id = draw(st.text(_TOKEN_CHARS, min_size=1, max_size=24))
    host = draw(st.sampled_from(_HOSTS))
    compact = draw(st.booleans())
    headers = [
        ("v" if compact else "Via", f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{branch}"),
        ("Max-Forwards", str(draw(st.integers(0, 70)))),
        ("f" if compact else "From", f"<sip:caller@{host}>;tag={draw(st.text(_TOKEN_CHARS, min_size=1, max_size=8))}"),
        ("t" if compact else "To", "<urn:service:sos>"),
        ("i" if compact else "Call-ID", call_id),
        ("CSeq", f"{draw(st.integers(0, 2 ** 31 - 1))} {method}"),
    ]
    if draw(st.booleans()):
        headers.append(("Resource-Priority", "esnet.1"))
    if draw(st.booleans()):
        headers.append(("Geolocation", "<cid:loc@example.net>"))
    body = draw(st.sampled_from((b"", _SDP, _PIDF)))
    if body:
        headers.append(("c" if compact else "Content-Type",
                        "application/sdp" if body is _SDP else "application/pidf+xml"))
    headers.append(("l" if compact else "Content-Length", str(len(body))))
    if draw(st.booleans()):
        headers = draw(st.permutations(headers))
    lines = [start, *(f"{n}: {v}" for n, v in headers)]
    eol = draw(st.sampled_from(("\r\n", "\n")))
    return (eol.join(lines) + eol + eol).encode() + body


def _hostile_mutation(draw: st.DrawFn, message: bytes) -> bytes:
    kind = draw(st.sampled_from(("truncate", "garbage", "huge-header", "many-headers", "content-length",
                                 "start-line", "no-blank-line", "folding", "binary", "nul", "empty")))
    if kind == "truncate":
        return message[:draw(st.integers(0, max(len(message) - 1, 0)))]
    if kind == "garbage":
        at = draw(st.integers(0, len(message)))
        return message[:at] + draw(st.binary(min_size=1, max_size=64)) + message[at:]
    if kind == "huge-header":
        size = draw(st.sampled_from((8192, 65536, 200_000)))
        return message.replace(b"\r\n", b"\r\nX-Huge: " + b"A" * size + b"\r\n", 1)
    if kind == "many-headers":
        count = draw(st.sampled_from((1025, 5000)))
        return message.replace(b"\r\n", b"\r\n" + b"X-H: 1\r\n" * count, 1)
    if kind == "content-length":
        value = draw(st.sampled_from((b"-1", b"99999999999999999999", b"0x10", b"1e9", b"", b" 12 ", b"\xff")))
        return message.replace(b"Content-Length: ", b"Content-Length: " + value + b"\r\nX-Old: ", 1)
    if kind == "start-line":
        line = draw(st.sampled_from((b"INVITE  urn:service:sos SIP/2.0", b"SIP/2.0 2000 OK", b"SIP/99999999999999999.0 200 OK",
                                     b"INVITE urn:service:sos sip/2.0", b" INVITE x SIP/2.0", b"SIP/2.0", b"\x00" * 8,
                                     b"INV\xffITE sip:a SIP/2.0", b"SIP/2.0 20 OK")))
        end = message.find(b"\n")
        return line + (message[end:] if end >= 0 else b"")
    if kind == "no-blank-line":
        return message.replace(b"\r\n\r\n", b"\r\n").replace(b"\n\n", b"\n")
    if kind == "folding":
        depth = draw(st.sampled_from((10, 1000, 5000)))
        return message.replace(b"\r\n", b"\r\nSubject: a\r\n" + b" b\r\n" * depth, 1)
    if kind == "binary":
        return draw(st.binary(max_size=512))
    if kind == "nul":
        return message.replace(b":", b"\x00:", draw(st.integers(1, 5)))
    return b""


@st.composite
def _hostile_sip(draw: st.DrawFn) -> bytes:
    message = draw(_valid_sip())
    for _ in range(draw(st.integers(1, 3))):
        message = _hostile_mutation(draw, message)
    return message


def sip_messages(valid: bool = True) -> st.SearchStrategy[bytes]:
    """SIP messages as bytes.

    ``valid=True``: RFC 3261 requests and responses (every method fwtest knows,
    emergency URIs, compact header names, CRLF or bare LF line ends, SDP or
    PIDF-LO bodies with a correct Content-Length). ``valid=False``: hostile
    messages, each a valid one mangled one to three times (truncated, binary
    garbage inserted, a 200 kB header, thousands of header lines, impossible
    Content-Length values, broken start lines, no blank line, deep folding,
    NUL bytes, pure noise, empty).
    """
    return _valid_sip() if valid else _hostile_sip()


# --------------------------------------------------------------------- traffic from a profile

def _host_in(draw: st.DrawFn, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    net = draw(st.sampled_from(list(nets)))
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4 and net.prefixlen <= 30:
        first, last = first + 1, last - 1
    elif net.version == 6 and net.prefixlen <= 126:
        first += 1   # the Subnet-Router anycast address is no host (RFC 4291 2.6.1)
    value = draw(st.integers(first, last))
    return str(ipaddress.ip_address(value) if net.version == 4 else ipaddress.IPv6Address(value))


def _even_port(draw: st.DrawFn, port_range: tuple[int, int]) -> int:
    lo, hi = port_range
    low = lo + (lo & 1)
    high = hi - 1 if hi & 1 else hi - 2
    if high < low:
        return lo
    return low + 2 * draw(st.integers(0, (high - low) // 2))


@st.composite
def emergency_calls(draw: st.DrawFn, profile: EmergencyProfile, *,
                    flows: Sequence[str] = ("emergency-call",), max_seconds: int | None = None) -> CallFlow:
    """One call flow of the profile, built as ``fwtest synth`` builds its flows (Scapy,
    RFC-realistic SIP with PIDF-LO, RTP/RTCP, MSRP), with drawn hosts inside the
    profile's prefixes, drawn media ports inside its RTP ranges (RTP even, RTCP + 1),
    transport, address family, call length and who hangs up.

    ``flows`` names the profile flows to draw from (``emergency-call``, ``callback``,
    ``options-keepalive``, ``text``); ``max_seconds`` caps the call length (default:
    the profile's ``call_seconds``).
    """
    from fwtest.traffic import synth

    wanted = [f for f in flows if f in ("emergency-call", "callback", "options-keepalive", "text")]
    if not wanted:
        raise ValueError(f"flows must name profile flows, not {list(flows)}")
    flow = draw(st.sampled_from(wanted))
    transport = draw(st.sampled_from(sorted(profile.sip)))
    family = draw(st.sampled_from(profile.families))
    inst = synth.Instance(0, _host_in(draw, profile.networks("peers", family)),
                          _host_in(draw, profile.networks("psap", family)),
                          _even_port(draw, profile.rtp_peers), _even_port(draw, profile.rtp_psap))
    rng = random.Random(draw(st.integers(0, 2 ** 32 - 1)))
    if flow in ("emergency-call", "callback"):
        seconds = draw(st.integers(1, max(1, min(profile.call_seconds, max_seconds or profile.call_seconds))))
        return synth.flow_instance(profile, flow, transport, family, inst, rng, seconds=seconds,
                                   bye_by_peer=draw(st.booleans()))
    return synth.flow_instance(profile, flow, transport, family, inst, rng)


@st.composite
def packets_in(draw: st.DrawFn, profile: EmergencyProfile) -> PacketRecord:
    """One packet record inside the profile's header space: SIP over each transport,
    RTP/RTCP in the media ranges, MSRP, both directions, both families, hosts anywhere
    in the profile's prefixes, with the interfaces the profile gives each side.

    Payloads: a valid SIP message for SIP over UDP (and TCP data segments), RTP
    headers for media, nothing for TCP handshakes and TLS (the header space is
    what counts; use ``emergency_calls`` for whole, stateful flows).
    """
    from fwtest.traffic import builders
    from fwtest.traffic._rawip import tcp_from_template, udp_from_template
    from fwtest.traffic.record import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, parse_ip

    family = draw(st.sampled_from(profile.families))
    direction = draw(st.sampled_from(("in", "out")))
    kind = draw(st.sampled_from(("sip", "rtp", "msrp")))
    peer = _host_in(draw, profile.networks("peers", family))
    psap = _host_in(draw, profile.networks("psap", family))
    src, dst = (peer, psap) if direction == "in" else (psap, peer)
    if kind == "sip":
        transport = draw(st.sampled_from(sorted(profile.sip)))
        port = profile.sip[transport]
        proto = UDP if transport == "udp" else TCP
        if proto == UDP:
            sport, dport = port, port
        elif draw(st.booleans()):
            sport, dport = draw(st.integers(1024, 65535)), port        # client to the listening port
        else:
            sport, dport = port, draw(st.integers(1024, 65535))        # the answer
        payload = draw(_valid_sip()) if transport != "tls" else b"\x17\x03\x03\x00\x10" + bytes(16)
    elif kind == "rtp":
        proto = UDP
        ports_src = profile.rtp_peers if src == peer else profile.rtp_psap
        ports_dst = profile.rtp_psap if dst == psap else profile.rtp_peers
        rtcp = draw(st.booleans())
        sport, dport = _even_port(draw, ports_src) + rtcp, _even_port(draw, ports_dst) + rtcp
        sport, dport = min(sport, ports_src[1]), min(dport, ports_dst[1])
        payload = bytes([0x80, 0xC8 if rtcp else 0x00]) + bytes(10) + bytes(draw(st.integers(0, 160)))
    else:
        proto = TCP
        if src == peer:
            sport, dport = draw(st.integers(1024, 65535)), profile.msrp
        else:
            sport, dport = profile.msrp, draw(st.integers(1024, 65535))
        payload = b"MSRP a786hjs2 SEND\r\nTo-Path: msrp://x\r\n-------a786hjs2$\r\n"
    if proto == UDP:
        data = udp_from_template(builders.udp_template(src, sport, dst, dport), payload)
    else:
        flags = draw(st.sampled_from((TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH,
                                      TCP_FIN | TCP_ACK, TCP_RST)))
        data = tcp_from_template(builders.tcp_template(src, sport, dst, dport), seq=draw(st.integers(0, 2 ** 32 - 1)),
                                 ack=0 if flags == TCP_SYN else draw(st.integers(0, 2 ** 32 - 1)), flags=flags,
                                 window=64240, payload=payload if flags & TCP_PSH else b"")
    peers_if, psap_if = profile.interfaces["peers"], profile.interfaces["psap"]
    if profile.firewall == "forward":
        ifaces = (peers_if, psap_if) if direction == "in" else (psap_if, peers_if)
    else:
        ifaces = (peers_if, None) if direction == "in" else (None, peers_if)
    return parse_ip(data, 0.0, *ifaces)
