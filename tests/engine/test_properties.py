"""Invariants of netfilter semantics, checked on generated rulesets and traffic."""

from __future__ import annotations

from engine_packets import (
    frag_records,
    ip,
    rec,
    rule,
    ruleset,
    sip_invite,
    sip_request,
    tcp_segment,
    udp_segment,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.engine import explain, replay
from fwtest.rules.ir import (
    Action,
    FragmentMatch,
    LimitMatch,
    Match,
    PortMatch,
    ProtoMatch,
    Rule,
    SipMatch,
    StateMatch,
    StringMatch,
    addr_match,
)

V4 = ["198.51.100.7", "198.51.100.200", "203.0.113.10", "192.0.2.1"]
V6 = ["2001:db8:100::7", "2001:db8:911::10", "2001:db8::1"]
CIDRS = ["198.51.100.0/24", "203.0.113.0/26", "192.0.2.0/24", "0.0.0.0/0", "2001:db8:100::/56",
         "2001:db8:911::/64", "::/0"]
PORTS = [22, 2855, 5060, 5061, 16384, 20000, 30000, 40000]
PAYLOADS = [b"", b"\x80\x00rtp-ish", sip_request("OPTIONS"), sip_invite("198.51.100.7", 20000),
            b"hello urn:service:sos world"]
USER_CHAINS = ("u1", "u2")

port_matches = st.builds(
    lambda lo, width, neg: PortMatch(((lo, min(65535, lo + width)),), negated=neg),
    st.sampled_from(PORTS), st.sampled_from([0, 1, 100, 20000]), st.booleans())


@st.composite
def matches(draw, *, l7: bool = True, limits: bool = True) -> Match:
    fields: dict = {}
    if draw(st.booleans()):
        fields["proto"] = ProtoMatch(frozenset(draw(st.sets(st.sampled_from([6, 17, 1]), min_size=1))),
                                     negated=draw(st.booleans()))
    for key in ("sport", "dport"):
        if draw(st.integers(0, 3)) == 0:
            fields[key] = draw(port_matches)
    for key in ("src", "dst"):
        if draw(st.integers(0, 2)) == 0:
            fields[key] = addr_match(draw(st.sampled_from(CIDRS)), negated=draw(st.booleans()))
    if draw(st.integers(0, 3)) == 0:
        fields["state"] = StateMatch(frozenset(draw(st.sets(st.sampled_from(
            ["new", "established", "related", "invalid", "untracked"]), min_size=1))))
    if draw(st.integers(0, 5)) == 0:
        fields["fragment"] = FragmentMatch(draw(st.sampled_from(["later", "first", "any"])), draw(st.booleans()))
    if l7 and draw(st.integers(0, 5)) == 0:
        fields["string"] = (StringMatch(draw(st.sampled_from([b"sos", b"INVITE", b"rtp", b"\x00"])),
                                        negated=draw(st.booleans())),)
    if l7 and draw(st.integers(0, 5)) == 0:
        fields["sip"] = SipMatch(method=draw(st.sampled_from(["^INVITE$", "OPTIONS", "."])))
    if limits and draw(st.integers(0, 6)) == 0:
        fields["limit"] = LimitMatch(rate=draw(st.sampled_from([0.5, 5.0])), burst=draw(st.sampled_from([1, 3])),
                                     above=draw(st.booleans()))
    return Match(**fields)


_ids = iter(range(10**9))


def make_rule(match: Match, action: Action) -> Rule:
    r = rule(f"r{next(_ids)}", action)
    return Rule(r.id, r.source, match, action)


@st.composite
def actions(draw, jumps: tuple[str, ...] = USER_CHAINS) -> Action:
    kinds = ["accept", "drop", "reject", "log", "continue", "return"]
    if jumps:
        kinds += ["jump", "goto"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("jump", "goto"):
        return Action(kind, draw(st.sampled_from(jumps)))
    return Action(kind)


@st.composite
def rule_lists(draw, jumps: tuple[str, ...] = USER_CHAINS, l7: bool = True, max_size: int = 6) -> list[Rule]:
    n = draw(st.integers(0, max_size))
    return [make_rule(draw(matches(l7=l7)), draw(actions(jumps))) for _ in range(n)]


@st.composite
def rulesets(draw, l7: bool = True, conntrack: bool | None = None):
    base = draw(rule_lists(l7=l7))
    u2 = draw(rule_lists(jumps=(), l7=l7, max_size=3))
    u1 = draw(rule_lists(jumps=("u2",), l7=l7, max_size=3))
    ct = draw(st.booleans()) if conntrack is None else conntrack
    return dict(rules=base, chains={"u1": u1, "u2": u2}, policy=draw(st.sampled_from(["accept", "drop"])),
                conntrack=ct, helpers=["sip"] if ct and draw(st.booleans()) else [])


@st.composite
def packets(draw, count: int = 6):
    out = []
    t = 0.0
    for _ in range(draw(st.integers(1, count))):
        family = draw(st.sampled_from([4, 6]))
        addrs = V4 if family == 4 else V6
        src, dst = draw(st.sampled_from(addrs)), draw(st.sampled_from(addrs))
        sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
        payload = draw(st.sampled_from(PAYLOADS))
        if draw(st.booleans()):
            data = ip(src, dst, 17, udp_segment(sport, dport, payload))
        else:
            flags = draw(st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04]))
            data = ip(src, dst, 6, tcp_segment(sport, dport, flags, seq=1000, ack=1, data=payload))
        t += draw(st.sampled_from([0.0, 0.01, 1.0, 40.0]))
        out.append(rec(data, t))
    return out


def build(spec, rules=None):
    return ruleset(spec["rules"] if rules is None else rules, chains=spec["chains"], policy=spec["policy"],
                   conntrack=spec["conntrack"], helpers=spec["helpers"])


def accept_all() -> Rule:
    return make_rule(Match(), Action("accept"))


@settings(max_examples=80)
@given(rulesets(), packets(), matches(), actions())
def test_a_rule_after_an_accept_all_never_changes_a_verdict(spec, records, extra_match, extra_action):
    everything = accept_all()
    before = build(spec, spec["rules"] + [everything])
    after = build(spec, spec["rules"] + [everything, make_rule(extra_match, extra_action)])
    assert replay(before, records) == replay(after, records)


def _without(rule_obj: Rule, verdicts):
    return [v._replace(trace=tuple(r for r in v.trace if r is not rule_obj)) for v in verdicts]


@settings(max_examples=80)
@given(rulesets(), packets(), matches(l7=False, limits=False), st.integers(0, 10))
def test_a_jump_to_an_empty_chain_changes_nothing(spec, records, jump_match, where):
    # (A goto to an empty chain is no no-op: it returns to the caller's caller.)
    empty_jump = make_rule(jump_match, Action("jump", "empty"))
    rules = list(spec["rules"])
    rules.insert(min(where, len(rules)), empty_jump)
    chains = dict(spec["chains"], empty=[])
    plain = ruleset(spec["rules"], chains=chains, policy=spec["policy"], conntrack=spec["conntrack"],
                    helpers=spec["helpers"])
    jumped = ruleset(rules, chains=chains, policy=spec["policy"], conntrack=spec["conntrack"],
                     helpers=spec["helpers"])
    assert replay(plain, records) == _without(empty_jump, replay(jumped, records))


@st.composite
def disjoint_pairs(draw):
    """Two matches no packet satisfies both: split on protocol, port, or address family."""
    a = draw(matches(l7=False, limits=False))
    b = draw(matches(l7=False, limits=False))
    split = draw(st.sampled_from(["proto", "dport", "family"]))
    if split == "proto":
        a = Match(**{**a.__dict__, "proto": ProtoMatch(frozenset({6}))})
        b = Match(**{**b.__dict__, "proto": ProtoMatch(frozenset({17}))})
    elif split == "dport":
        cut = draw(st.sampled_from(PORTS))
        a = Match(**{**a.__dict__, "dport": PortMatch(((0, cut),))})
        b = Match(**{**b.__dict__, "dport": PortMatch(((cut + 1, 65535),))})
    else:
        a = Match(**{**a.__dict__, "family": 4})
        b = Match(**{**b.__dict__, "family": 6})
    return a, b


@settings(max_examples=80)
@given(rulesets(l7=False), packets(), disjoint_pairs(), st.tuples(actions(), actions()), st.integers(0, 10))
def test_reordering_adjacent_disjoint_rules_changes_nothing(spec, records, pair, acts, where):
    a = make_rule(pair[0], acts[0])
    b = make_rule(pair[1], acts[1])
    at = min(where, len(spec["rules"]))
    first = spec["rules"][:at] + [a, b] + spec["rules"][at:]
    second = spec["rules"][:at] + [b, a] + spec["rules"][at:]
    assert replay(build(spec, first), records) == replay(build(spec, second), records)


@settings(max_examples=60)
@given(rulesets(conntrack=True), st.sampled_from(V4 + V6), st.sampled_from(V4 + V6), st.sampled_from(PORTS),
       st.sampled_from(PORTS), st.sampled_from(PAYLOADS[1:]), st.sampled_from([8, 16, 64, 200]),
       st.booleans(), st.randoms(use_true_random=False))
def test_reassembled_fragments_get_the_verdict_of_the_whole_datagram(spec, src, dst, sport, dport, payload,
                                                                    size, is_udp, rnd):
    if (":" in src) != (":" in dst):
        dst = src
    segment = udp_segment(sport, dport, payload) if is_udp else \
        tcp_segment(sport, dport, 0x02, seq=1000, data=payload)
    whole = ip(src, dst, 17 if is_udp else 6, segment)
    frags = frag_records(whole, size, ts=5.0, step=0.0, ident=1)
    rnd.shuffle(frags)
    rs = build(spec)
    (expected,) = replay(rs, [rec(whole, 5.0)])
    got = replay(rs, frags)
    assert len(frags) >= 1
    assert all(v == expected for v in got)


@settings(max_examples=80)
@given(rulesets(), packets(count=1))
def test_explain_agrees_with_the_engine_on_a_first_packet(spec, records):
    # The proof confirms its witnesses with explain: explain must say what the engine says.
    rs = build(spec)
    (record,) = records
    (engine_verdict,) = replay(rs, [record])
    if "SIP helper" in engine_verdict.reason:
        return      # the helper runs only in the stateful engine
    state = engine_verdict.state if spec["conntrack"] else "new"
    if state not in ("new", "established", "related", "invalid", "untracked"):
        return
    explained = explain(rs, record, state=state)
    assert explained.verdict == engine_verdict
    matched = [s.rule for s in explained.steps if s.matched and s.rule is not None]
    assert tuple(matched) == engine_verdict.trace
