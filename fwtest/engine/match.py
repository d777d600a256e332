"""Compiling a rule's ``Match`` into fast tests, each with its "why not".

Every condition of a rule becomes a pair: ``test(packet) -> bool`` for the
hot path, and ``why_not(packet) -> str`` that ``explain`` calls when the
test failed ("dport 5060 not in 16384-32767"). Tests run cheapest first;
L7 tests (string, sip) come late and the limit match always last, so a
bucket is only paid for by packets the rest of the rule matches (iptables
pays in the order matches are written; rules usually put limit last).

Semantics follow netfilter, as documented on the IR classes:
ports never match packets without ports; an address match never matches a
family it does not name; TCP flags only match TCP headers (not later
fragments); the ``helper`` match, like xt_helper and nft ``ct helper``,
looks at the helper of the connection's *master* (the SIP connection for
an RTP flow it expected), not at the connection's own helper.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from fwtest.engine.limits import LimitState, TokenBucket, bucket_key
from fwtest.engine.packet import PacketView
from fwtest.errors import InputError
from fwtest.rules.ir import (
    PROTO_NAMES,
    TCP,
    AddrMatch,
    FragmentMatch,
    IcmpMatch,
    IfaceMatch,
    LimitMatch,
    Match,
    PortMatch,
    ProtoMatch,
    Rule,
    SipMatch,
    StateMatch,
    StringMatch,
    TcpFlagsMatch,
)
from fwtest.traffic.record import FIRST_FRAGMENT, LATER_FRAGMENT, NOT_FRAGMENT

if hasattr(re, "_parser"):          # Python >= 3.11
    import re._parser as _sre_parse  # type: ignore[import-not-found]
else:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

Test = Callable[[PacketView], bool]
WhyNot = Callable[[PacketView], str]

# A SIP match searches at most this many characters of a start-line part or
# header value: regex work on hostile input stays bounded (Python's re has no
# timeout). Real header values are far shorter; parse_sip bounds the rest.
MAX_SIP_FIELD = 8192


def addr_text(family: int, addr: int) -> str:
    return str(ipaddress.IPv4Address(addr) if family == 4 else ipaddress.IPv6Address(addr))


def proto_text(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def _no_ports_reason(p: PacketView) -> str:
    if p.frag == LATER_FRAGMENT:
        return "a later fragment carries no ports"
    return f"{proto_text(p.proto)} has no ports"


# ------------------------------------------------------------------ headers

def _family_test(family: int) -> tuple[Test, WhyNot]:
    def test(p: PacketView) -> bool:
        return p.family == family

    def why(p: PacketView) -> str:
        return f"rule is for IPv{family} only, packet is IPv{p.family}"
    return test, why


def _proto_test(m: ProtoMatch) -> tuple[Test, WhyNot]:
    protos, negated = m.protocols, m.negated
    text = m.text or ",".join(proto_text(x) for x in sorted(protos))
    if not negated and len(protos) == 1:
        (only,) = protos

        def test(p: PacketView) -> bool:
            return p.proto == only
    else:
        def test(p: PacketView) -> bool:
            return (p.proto in protos) != negated

    def why(p: PacketView) -> str:
        if negated:
            return f"proto {proto_text(p.proto)} is excluded (! {text})"
        return f"proto {proto_text(p.proto)} is not {text}"
    return test, why


def _merged(ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    ranges.sort()
    starts: list[int] = []
    ends: list[int] = []
    for first, last in ranges:
        if ends and first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)
        else:
            starts.append(first)
            ends.append(last)
    return starts, ends


def _addr_test(m: AddrMatch, which: str) -> tuple[Test, WhyNot]:
    per_family: dict[int, tuple[list[int], list[int]]] = {}
    for fam in m.families:
        per_family[fam] = _merged([(r.first, r.last) for r in m.ranges if r.family == fam])
    negated = m.negated
    text = m.text or ", ".join(f"{addr_text(r.family, r.first)}-{addr_text(r.family, r.last)}"
                               for r in m.ranges)
    v4 = per_family.get(4)
    v6 = per_family.get(6)

    def inside(p: PacketView) -> bool | None:
        table = v4 if p.family == 4 else v6
        if table is None:
            return None
        starts, ends = table
        addr = p.src if which == "src" else p.dst
        i = bisect_right(starts, addr) - 1
        return i >= 0 and addr <= ends[i]

    if which == "src":
        def test(p: PacketView) -> bool:
            table = v4 if p.family == 4 else v6
            if table is None:
                return False
            starts, ends = table
            i = bisect_right(starts, p.src) - 1
            return (i >= 0 and p.src <= ends[i]) != negated
    else:
        def test(p: PacketView) -> bool:
            table = v4 if p.family == 4 else v6
            if table is None:
                return False
            starts, ends = table
            i = bisect_right(starts, p.dst) - 1
            return (i >= 0 and p.dst <= ends[i]) != negated

    def why(p: PacketView) -> str:
        addr = addr_text(p.family, p.src if which == "src" else p.dst)
        hit = inside(p)
        if hit is None:
            names = "/".join(f"IPv{f}" for f in sorted(per_family))
            return f"{which} match names only {names} addresses, packet is IPv{p.family}"
        if negated:
            return f"{which} {addr} is in {text} (negated match)"
        return f"{which} {addr} not in {text}"
    return test, why


def _port_test(m: PortMatch, which: str) -> tuple[Test, WhyNot]:
    ranges = tuple(m.ranges)
    negated = m.negated
    text = m.text or ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)

    def hit(port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in ranges)

    if len(ranges) == 1 and not negated:
        lo, hi = ranges[0]
        if which == "sport":
            def test(p: PacketView) -> bool:
                return lo <= p.sport <= hi   # -1 (no ports) is never inside
        else:
            def test(p: PacketView) -> bool:
                return lo <= p.dport <= hi
    elif which == "sport":
        def test(p: PacketView) -> bool:
            return p.sport >= 0 and hit(p.sport) != negated
    else:
        def test(p: PacketView) -> bool:
            return p.dport >= 0 and hit(p.dport) != negated

    def why(p: PacketView) -> str:
        port = p.sport if which == "sport" else p.dport
        if port < 0:
            return f"{which} match needs ports: {_no_ports_reason(p)}"
        if p.frag == LATER_FRAGMENT:
            port = f"{port} (a later fragment: the bytes nf_tables reads as {which})"
        if negated:
            return f"{which} {port} is in {text} (negated match)"
        return f"{which} {port} not in {text}"
    return test, why


def _iface_test(m: IfaceMatch, which: str) -> tuple[Test, WhyNot]:
    text = ("! " if m.negated else "") + ",".join(m.names)
    if which == "in":
        def test(p: PacketView) -> bool:
            return m.matches(p.iface_in)
    else:
        def test(p: PacketView) -> bool:
            return m.matches(p.iface_out)

    def why(p: PacketView) -> str:
        name = p.iface_in if which == "in" else p.iface_out
        if name is None:
            return f"{which} {text}: the {which}put interface is unknown at {p.hook}"
        return f"{which} interface {name} does not match {text}"
    return test, why


def _state_test(m: StateMatch) -> tuple[Test, WhyNot]:
    states, negated = m.states, m.negated
    text = ("! " if negated else "") + ",".join(sorted(states))

    def test(p: PacketView) -> bool:
        return (p.state in states) != negated

    def why(p: PacketView) -> str:
        return f"state {p.state} does not match {text}"
    return test, why


def _fragment_test(m: FragmentMatch) -> tuple[Test, WhyNot]:
    kind, negated = m.kind, m.negated
    if kind == "later":
        def hit(frag: int) -> bool:
            return frag == LATER_FRAGMENT
    elif kind == "first":
        def hit(frag: int) -> bool:
            return frag == FIRST_FRAGMENT
    else:
        def hit(frag: int) -> bool:
            return frag != NOT_FRAGMENT

    def test(p: PacketView) -> bool:
        return hit(p.frag) != negated

    names = {NOT_FRAGMENT: "not a fragment", FIRST_FRAGMENT: "a first fragment",
             LATER_FRAGMENT: "a later fragment"}

    def why(p: PacketView) -> str:
        want = ("not " if negated else "") + {"later": "a later fragment", "first": "a first fragment",
                                               "any": "a fragment"}[kind]
        return f"packet is {names[p.frag]}, rule wants {want}"
    return test, why


def _tcp_flags_test(m: TcpFlagsMatch) -> tuple[Test, WhyNot]:
    def test(p: PacketView) -> bool:
        return p.proto == TCP and p.frag != LATER_FRAGMENT and m.matches(p.tcp_flags)

    def why(p: PacketView) -> str:
        if p.proto != TCP:
            return f"tcp flags need a TCP packet, this is {proto_text(p.proto)}"
        if p.frag == LATER_FRAGMENT:
            return "tcp flags: a later fragment carries no TCP header"
        return (f"tcp flags {p.tcp_flags:#04x} & {m.mask:#04x} "
                f"{'==' if m.negated else '!='} {m.comp:#04x}")
    return test, why


def _icmp_test(m: IcmpMatch) -> tuple[Test, WhyNot]:
    text = m.text or (",".join(map(str, sorted(m.types))) or "any")

    def header(p: PacketView) -> tuple[int, int] | None:
        l4 = p.record.l4_offset
        if p.frag == LATER_FRAGMENT or p.proto != (1 if p.family == 4 else 58) or len(p.data) < l4 + 2:
            return None
        return p.data[l4], p.data[l4 + 1]

    def test(p: PacketView) -> bool:
        found = header(p)
        return found is not None and m.matches(p.family, p.proto, found[0], found[1])

    def why(p: PacketView) -> str:
        found = header(p)
        if p.family != m.family:
            return f"icmp match is for IPv{m.family}, packet is IPv{p.family}"
        if found is None:
            return f"icmp {text}: packet carries no ICMP header ({proto_text(p.proto)})"
        neg = " (negated match)" if m.negated else ""
        return f"icmp type {found[0]} code {found[1]} does not match {text}{neg}"
    return test, why


def _helper_test(name: str) -> tuple[Test, WhyNot]:
    def test(p: PacketView) -> bool:
        conn = p.conn
        return conn is not None and conn.master is not None and conn.master.helper == name

    def why(p: PacketView) -> str:
        if p.conn is None:
            return f"helper {name}: packet has no connection"
        if p.conn.master is None:
            return f"helper {name}: the connection was not expected by a helper (no master connection)"
        return f"helper {name}: the master connection's helper is {p.conn.master.helper or 'none'}"
    return test, why


# ------------------------------------------------------------------ payload

def _string_test(m: StringMatch) -> tuple[Test, WhyNot]:
    # xt_string: skb_find_text(skb, from, to) finds the pattern only when it
    # lies wholly inside [from, to) counted from the IP header.
    start, stop = m.offset_from, m.offset_to
    pattern = m.pattern.lower() if m.icase else m.pattern
    negated = m.negated
    shown = m.pattern.decode("utf-8", "backslashreplace")
    if m.icase:
        def found(p: PacketView) -> bool:
            return pattern in p.data[start:stop].lower()
    else:
        def found(p: PacketView) -> bool:
            return pattern in p.data[start:stop]

    def test(p: PacketView) -> bool:
        return found(p) != negated

    def why(p: PacketView) -> str:
        where = f"bytes {start}-{min(stop, len(p.data))} of the packet"
        if negated:
            return f"string {shown!r} found in {where} (negated match)"
        if p.frag == LATER_FRAGMENT or p.frag == FIRST_FRAGMENT:
            return f"string {shown!r} not in {where} (this fragment alone)"
        return f"string {shown!r} not in {where}"
    return test, why


# Leading inline flags, an optional ^, then .* or .*? (a search needs neither).
_LEADING_DOT_STAR = re.compile(r"^((?:\(\?[aiLmsux]+\))*)\^?\.\*\??")
# A repetition allowing more than this many items counts as "large" for the work bound.
LARGE_REPEAT = 16


def _strip_dot_star(pattern: str) -> str:
    """The pattern without a leading ``^.*`` and a trailing ``.*$``.

    For ``re.search`` on one line (SIP start-line parts and header values
    have no line breaks) they never change whether there is a match, but a
    leading ``.*`` makes every failed search quadratic, and with another
    repetition cubic.
    """
    out = _LEADING_DOT_STAR.sub(r"\1", pattern, count=1)
    for tail in (".*$", ".*?$", ".*", ".*?"):
        if out.endswith(tail):
            head = out[:-len(tail)]
            backslashes = len(head) - len(head.rstrip("\\"))
            if backslashes % 2 == 0:
                out = head
            break
    try:
        re.compile(out)
    except re.error:
        return pattern
    return out


def _check_regex(pattern: str, rule: Rule, what: str) -> re.Pattern[str]:
    """Compile a SIP regex for searching, with its work bounded on hostile input.

    Refused: nested repetition where one level is unbounded (``(a+)+``),
    alternatives of an unbounded repetition that can start alike
    (``(a|ab)*``) -- both exponential -- and more than one large repetition
    once a redundant leading/trailing ``.*`` is dropped (``a.*b.*c`` is cubic).
    What remains is at most quadratic in a subject of at most MAX_SIP_FIELD
    characters.
    """
    try:
        re.compile(pattern)
        runnable = _strip_dot_star(pattern)
        compiled = re.compile(runnable)
        tree = _sre_parse.parse(runnable)
    except re.error as e:
        raise InputError(rule.source.file, rule.source.line, f"{what}: bad regex {pattern!r}: {e}") from None
    problem = _backtracking_problem(tree, 0)
    if problem:
        raise InputError(rule.source.file, rule.source.line,
                         f"{what}: regex {pattern!r} {problem}, which backtracks exponentially on "
                         "hostile SIP; rewrite it without nesting (e.g. 'a+' instead of '(a+)+')")
    large = _large_repeats(tree)
    if large > 1:
        raise InputError(rule.source.file, rule.source.line,
                         f"{what}: regex {pattern!r} has {large} open-ended repetitions (like '.*' or '+'); "
                         "on hostile SIP its work grows with the length to that power: keep one "
                         "(a leading or trailing '.*' is implied, the match is a search)")
    return compiled


def _large_repeats(tree: Any) -> int:
    count = 0
    for op, av in tree:
        name = str(op)
        if name in _REPEATS:
            if av[1] > LARGE_REPEAT:
                count += 1
            count += _large_repeats(av[2])
        elif name == "SUBPATTERN":
            count += _large_repeats(av[-1])
        elif name == "BRANCH":
            count += max((_large_repeats(b) for b in av[1]), default=0)
        elif name in ("ASSERT", "ASSERT_NOT"):
            count += _large_repeats(av[1])
        elif name == "ATOMIC_GROUP":
            count += _large_repeats(av)
    return count


_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}


def _first_chars(sub: Any) -> set[int] | None:
    """Characters a branch can start with, when that is a plain literal set."""
    items = list(sub)
    if not items:
        return None
    op, av = items[0]
    name = str(op)
    if name == "LITERAL":
        return {av}
    if name == "IN":
        chars: set[int] = set()
        for iop, iav in av:
            if str(iop) == "LITERAL":
                chars.add(iav)
            elif str(iop) == "RANGE":
                chars.update(range(iav[0], iav[1] + 1))
            else:
                return None
        return chars
    if name == "SUBPATTERN":
        return _first_chars(av[-1])
    return None


# Bounded repetitions nested in each other backtrack in the product of their
# bounds ((a{1,16}){1,16}b takes seconds on 26 characters): refuse products
# above this, keep the harmless ones like (\d{1,3}\.){3}.
NESTED_REPEAT_PRODUCT = 64


def _backtracking_problem(tree: Any, unbounded_depth: int, product: int = 1) -> str:
    for op, av in tree:
        name = str(op)
        if name in _REPEATS:
            low, high, sub = av
            unbounded = high == _sre_parse.MAXREPEAT
            if unbounded_depth and high > 1:
                return "nests a repetition inside an unbounded repetition"
            if unbounded and _has_repeat(sub):
                return "nests a repetition inside an unbounded repetition"
            if high > 1 and product > 1 and product * high > NESTED_REPEAT_PRODUCT:
                return f"nests repetitions whose bounds multiply beyond {NESTED_REPEAT_PRODUCT}"
            problem = _backtracking_problem(sub, unbounded_depth + (1 if unbounded else 0),
                                            product * high if high > 1 and not unbounded else product)
            if problem:
                return problem
        elif name == "SUBPATTERN":
            problem = _backtracking_problem(av[-1], unbounded_depth, product)
            if problem:
                return problem
        elif name == "BRANCH":
            branches = av[1]
            if unbounded_depth:
                seen: set[int] = set()
                for branch in branches:
                    first = _first_chars(branch)
                    if first is None or seen & first:
                        return "repeats alternatives that can start alike"
                    seen |= first
            for branch in branches:
                problem = _backtracking_problem(branch, unbounded_depth, product)
                if problem:
                    return problem
        elif name in ("ASSERT", "ASSERT_NOT"):
            problem = _backtracking_problem(av[1], unbounded_depth, product)
            if problem:
                return problem
        elif name == "ATOMIC_GROUP":
            problem = _backtracking_problem(av, unbounded_depth, product)
            if problem:
                return problem
        elif name == "GROUPREF_EXISTS":
            for sub in av[1:]:
                if sub is not None:
                    problem = _backtracking_problem(sub, unbounded_depth, product)
                    if problem:
                        return problem
    return ""


def _has_repeat(tree: Any) -> bool:
    for op, av in tree:
        name = str(op)
        if name in _REPEATS:
            if av[1] > 1:
                return True
            if _has_repeat(av[2]):
                return True
        elif name == "SUBPATTERN":
            if _has_repeat(av[-1]):
                return True
        elif name == "BRANCH":
            if any(_has_repeat(b) for b in av[1]):
                return True
        elif name == "ATOMIC_GROUP" and _has_repeat(av):
            return True
    return False


def _sip_test(m: SipMatch, rule: Rule) -> tuple[Test, WhyNot]:
    method = _check_regex(m.method, rule, "sip method") if m.method else None
    uri = _check_regex(m.uri, rule, "sip uri") if m.uri else None
    status = _check_regex(m.status, rule, "sip status") if m.status else None
    headers = tuple((name, _check_regex(rx, rule, f"sip header {name}")) for name, rx in m.headers)
    cap = MAX_SIP_FIELD

    def failing(p: PacketView) -> str:
        """Empty when the SIP match matches, else why not."""
        msg = p.sip
        if msg is None:
            return "no SIP message in the payload"
        if method is not None:
            if msg.method is None:
                return f"sip method: a response ({msg.status}) has no method"
            if not method.search(msg.method[:cap]):
                return f"sip method {msg.method} does not match {method.pattern!r}"
        if uri is not None:
            if msg.uri is None:
                return f"sip uri: a response ({msg.status}) has no Request-URI"
            if not uri.search(msg.uri[:cap]):
                return f"sip uri {msg.uri[:120]} does not match {uri.pattern!r}"
        if status is not None:
            if msg.status is None:
                return f"sip status: a request ({msg.method}) has no status"
            if not status.search(str(msg.status)):
                return f"sip status {msg.status} does not match {status.pattern!r}"
        for name, rx in headers:
            values = msg.headers_named(name)
            if not values:
                return f"sip header {name} is absent"
            if not any(rx.search(v[:cap]) for v in values):
                return f"sip header {name}: no value matches {rx.pattern!r}"
        return ""

    def test(p: PacketView) -> bool:
        return not failing(p)

    return test, failing


def _limit_test(m: LimitMatch, rule: Rule, limits: LimitState) -> tuple[Test, WhyNot]:
    table = limits.table(("name", m.name) if m.name else ("rule", rule.id))
    rate, burst, above = m.rate, m.burst, m.above
    text = m.text or f"{rate:g}/s burst {burst}"

    def under(p: PacketView) -> bool:
        key = bucket_key(m, p.family, p.src, p.dst, p.sport, p.dport)
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = TokenBucket(rate, burst, p.ts)
        return bucket.take(p.ts)

    def test(p: PacketView) -> bool:
        # xt_hashlimit pays a credit whenever under the limit, inverted or not.
        return under(p) != above

    def why(p: PacketView) -> str:
        if above:
            return f"limit {text}: rate not exceeded"
        return f"limit {text}: rate exceeded (bucket empty)"
    return test, why


# ------------------------------------------------------------------ whole rule

# Match fields this module compiles. A field added to the IR and not handled
# here must stop the engine, not be skipped: a skipped match is a false pass.
HANDLED_FIELDS = frozenset({"family", "proto", "src", "dst", "sport", "dport", "iface_in", "iface_out", "state",
                            "fragment", "tcp_flags", "helper", "sip", "string", "limit", "icmp"})


def compile_match(match: Match, rule: Rule, limits: LimitState) -> tuple[tuple[Test, ...], tuple[WhyNot, ...]]:
    """The tests of one rule, cheapest first, and their explanations."""
    empty = Match()
    unknown = [f.name for f in fields(Match)
               if f.name not in HANDLED_FIELDS and getattr(match, f.name) != getattr(empty, f.name)]
    if unknown:
        raise InputError(rule.source.file, rule.source.line,
                         f"rule {rule.id}: match {', '.join(unknown)} is not modelled by the engine")
    pairs: list[tuple[Test, WhyNot]] = []
    if match.family is not None:
        pairs.append(_family_test(match.family))
    if match.proto is not None:
        pairs.append(_proto_test(match.proto))
    if match.dport is not None:
        pairs.append(_port_test(match.dport, "dport"))
    if match.sport is not None:
        pairs.append(_port_test(match.sport, "sport"))
    if match.dst is not None:
        pairs.append(_addr_test(match.dst, "dst"))
    if match.src is not None:
        pairs.append(_addr_test(match.src, "src"))
    if match.iface_in is not None:
        pairs.append(_iface_test(match.iface_in, "in"))
    if match.iface_out is not None:
        pairs.append(_iface_test(match.iface_out, "out"))
    if match.icmp is not None:
        pairs.append(_icmp_test(match.icmp))
    if match.fragment is not None:
        pairs.append(_fragment_test(match.fragment))
    if match.tcp_flags is not None:
        pairs.append(_tcp_flags_test(match.tcp_flags))
    if match.state is not None:
        pairs.append(_state_test(match.state))
    if match.helper is not None:
        pairs.append(_helper_test(match.helper))
    for string in match.string:
        pairs.append(_string_test(string))
    if match.sip is not None:
        pairs.append(_sip_test(match.sip, rule))
    if match.limit is not None:
        pairs.append(_limit_test(match.limit, rule, limits))
    return tuple(t for t, _ in pairs), tuple(w for _, w in pairs)
