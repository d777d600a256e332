"""Compiling rulesets to accept sets: the proof's netfilter semantics must be the engine's.

The property: for random rulesets (chains, jump/goto/return, negations, both
families, states, fragments, TCP flags, interfaces, ICMP, several base chains
with one before the conntrack lookup, notrack) and random packets, a packet is
in the compiled accept set exactly when the engine's ``explain`` accepts it,
and the compile names the same deciding rule or policy as the engine.
"""

from __future__ import annotations

import random

import pytest
from dd._copy import copy_bdd
from hypothesis import given, settings
from hypothesis import strategies as st
from space_helpers import addr, ports, proto, random_point, record_at, rule, ruleset, rulesets

from fwtest.engine import explain
from fwtest.engine.packet import later_fragment_ports
from fwtest.rules.ir import PORT_PROTOCOLS, BaseChain, IfaceMatch, Match, Source, StateMatch
from fwtest.space.compile import Decider, compile_path
from fwtest.space.header import HeaderSpace
from fwtest.space.region import point_bdd
from fwtest.space.witness import same_decider
from fwtest.traffic.record import LATER_FRAGMENT


def judge_points(rs, space: HeaderSpace, seed: int, count: int = 12) -> None:
    compiled = compile_path(space, rs, "forward", native_hook="forward")
    rng = random.Random(seed)
    for _ in range(count):
        point = random_point(rng, space.ifaces, tracked=rs.conntrack.enabled, fragments=not rs.conntrack.enabled)
        state = point.pop("state")
        iif, oif = point.pop("iif"), point.pop("oif")
        record = record_at(point, iif, oif)
        if record.frag == LATER_FRAGMENT and record.proto in PORT_PROTOCOLS:
            # nf_tables reads a later fragment's "ports" from its bytes: so does the space.
            point["sport"], point["dport"] = later_fragment_ports(record)
        v = explain(rs, record, path="forward", state=state, native_hook="forward").verdict
        at = point_bdd(space, {**point, "iif": space.iface_index[iif], "oif": space.iface_index[oif]}) \
            & space.state(state) & space.domain
        assert at != space.false, f"{point} is not a header of the space"
        accepted = (at & compiled.accept) != space.false
        assert accepted == v.accepted, f"{record.short()} state {state}: proof {accepted}, engine {v}"
        deciders = [d for d, u in compiled.deciders.items() if (u & at) != space.false]
        assert len(deciders) == 1, f"{record.short()}: deciders {deciders}"
        d = deciders[0]
        if d.rule is None and d.chain is None:
            assert v.rule is None and v.source is None
        else:
            assert same_decider(v, d), f"{record.short()}: proof {d.describe()}, engine {v}"


@settings(max_examples=70)
@given(rs=rulesets(), seed=st.integers(0, 2 ** 32))
def test_compiled_accept_set_agrees_with_the_engine(rs, seed):
    names = {n for r in rs.rules() for im in (r.match.iface_in, r.match.iface_out) if im for n in im.names}
    space = HeaderSpace(interfaces=names | {"eth0", "eth1"})
    judge_points(rs, space, seed)


@settings(max_examples=8)
@given(rs=rulesets(), seed=st.integers(0, 2 ** 32))
def test_autoref_backend_gives_the_same_sets_as_cudd(rs, seed):
    names = {n for r in rs.rules() for im in (r.match.iface_in, r.match.iface_out) if im for n in im.names}
    names |= {"eth0", "eth1"}
    pure = HeaderSpace(interfaces=names, backend="autoref")
    fast = HeaderSpace(interfaces=names, backend="cudd")
    a = compile_path(pure, rs, "forward", native_hook="forward")
    b = compile_path(fast, rs, "forward", native_hook="forward")
    # Node for node: the autoref BDD copied into the CUDD manager is the CUDD one.
    assert copy_bdd(a.accept, fast.bdd) == b.accept
    assert set(a.deciders) == set(b.deciders)
    for d, u in b.deciders.items():
        assert copy_bdd(a.deciders[d], fast.bdd) == u, d.describe()
    judge_points(rs, pure, seed, count=4)
    del a
    pure.release()


# ---------------------------------------------------------------- tricky cases, by hand

def accepts(rs, space: HeaderSpace, point: dict, state: str = "untracked", iif="eth0", oif="eth1") -> bool:
    compiled = compile_path(space, rs, "forward", native_hook="forward")
    at = point_bdd(space, {**point, "iif": space.iface_index[iif], "oif": space.iface_index[oif]}) \
        & space.state(state) & space.domain
    got = (at & compiled.accept) != space.false
    v = explain(rs, record_at(point, iif, oif), path="forward", state=state, native_hook="forward").verdict
    assert got == v.accepted
    return got


def udp(src: str, dst: str, sport: int, dport: int) -> dict:
    import ipaddress
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return {"fam": 0 if s.version == 4 else 1, "proto": 17, "src": int(s), "dst": int(d), "sport": sport,
            "dport": dport, "frag": 0, "flags": 0}


@pytest.fixture(scope="module")
def space():
    sp = HeaderSpace(interfaces=["eth0", "eth1"])
    yield sp
    sp.release()


def test_overlapping_cidrs_first_match_wins(space):
    rs = ruleset({"main": [rule("deny-half", "drop", src=addr("198.51.100.128/25")),
                           rule("allow-all", "accept", src=addr("198.51.100.0/24"))]})
    assert accepts(rs, space, udp("198.51.100.127", "203.0.113.1", 5060, 5060))
    assert not accepts(rs, space, udp("198.51.100.128", "203.0.113.1", 5060, 5060))


def test_port_range_split_by_a_deny(space):
    rs = ruleset({"main": [rule("deny-one", "drop", proto=proto(17), dport=ports(20000)),
                           rule("rtp", "accept", proto=proto(17), dport=ports((16384, 32767)))]})
    assert accepts(rs, space, udp("198.51.100.1", "203.0.113.1", 30000, 19999))
    assert not accepts(rs, space, udp("198.51.100.1", "203.0.113.1", 30000, 20000))
    assert accepts(rs, space, udp("198.51.100.1", "203.0.113.1", 30000, 20001))


def test_negations(space):
    rs = ruleset({"main": [rule("not-peers", "drop", src=addr("198.51.100.0/24", negated=True)),
                           rule("not-sip", "drop", dport=ports(5060, negated=True)),
                           rule("rest", "accept")]})
    assert accepts(rs, space, udp("198.51.100.9", "203.0.113.1", 1, 5060))
    assert not accepts(rs, space, udp("198.51.100.9", "203.0.113.1", 1, 5061))
    assert not accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5060))
    # A negated IPv4 match does not match IPv6 packets at all.
    assert accepts(rs, space, udp("2001:db8::1", "2001:db8:911::1", 1, 5060))


def test_jump_return_and_goto(space):
    rs = ruleset({
        "main": [rule("to-a", "jump", "a", proto=proto(17)), rule("after", "drop", dport=ports(5060)),
                 rule("rest", "accept")],
        "a": [rule("back", "return", src=addr("198.51.100.0/24")), rule("go", "goto", "b"),
              rule("never", "accept")],
        "b": [rule("b-accept", "accept", dport=ports(5061))],
    })
    # return: back in main, where 5060 is dropped
    assert not accepts(rs, space, udp("198.51.100.1", "203.0.113.1", 1, 5060))
    # goto b, accepted there
    assert accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5061))
    # goto b, b ends: back to main's caller level (main), not to a: "never" is skipped, 5060 dropped
    assert not accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5060))
    assert accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5062))


def test_ipv6(space):
    rs = ruleset({"main": [rule("v6-peers", "accept", src=addr("2001:db8:100::/56"), dport=ports(5060))]})
    assert accepts(rs, space, udp("2001:db8:100:ff::1", "2001:db8:911::1", 1, 5060))
    assert not accepts(rs, space, udp("2001:db8:101::1", "2001:db8:911::1", 1, 5060))
    # An IPv4 address never matches an IPv6 prefix, even ::c633:6401 style.
    assert not accepts(rs, space, udp("198.51.100.1", "203.0.113.1", 1, 5060))


def test_raw_chain_before_the_lookup_sees_invalid_and_notrack_makes_untracked(space):
    rs = ruleset({
        "raw": [rule("notrack-sip", "notrack", dport=ports(5060)),
                rule("raw-state", "drop", state=StateMatch(frozenset({"new"})))],
        "main": [rule("untracked-ok", "accept", state=StateMatch(frozenset({"untracked"}))),
                 rule("new-ok", "accept", state=StateMatch(frozenset({"new"})))],
    }, bases=[BaseChain("raw", "prerouting", -300, "accept", None, Source("t", 1)),
              BaseChain("main", None, 0, "drop", None, Source("t", 2))], conntrack=True)
    # Before the lookup the state is invalid, so raw-state never drops; after it a notracked
    # packet is untracked, the others keep their state.
    assert accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5060), state="new")
    assert accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5061), state="new")
    assert not accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5061), state="established")
    compiled = compile_path(space, rs, "forward", native_hook="forward")
    notracked = compiled.deciders[Decider("accept", rs.rule("untracked-ok"))]
    # A NEW packet is "untracked" to the rules only when the notrack rule matched it.
    assert notracked & space.state("new") & space.eq("dport", 5061) == space.false
    assert notracked & space.state("new") & space.eq("dport", 5060) != space.false


def test_interfaces_only_where_the_hook_knows_them(space):
    rs = ruleset({"post": [rule("in-eth0", "drop", iface_in=IfaceMatch(("eth0",)))],
                  "main": [rule("ok", "accept")]},
                 bases=[BaseChain("post", "postrouting", 0, "accept", None, Source("t", 1)),
                        BaseChain("main", None, 0, "drop", None, Source("t", 2))])
    # postrouting has no input device: `-i eth0` never matches there.
    assert accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 1), iif="eth0")


def test_policy_and_log_do_not_stop_the_walk(space):
    rs = ruleset({"main": [rule("log", "log"), rule("drop-sip", "drop", dport=ports(5060))]}, policy="accept")
    assert accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 1))
    assert not accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5060))


def test_reject_is_a_drop_that_names_its_rule(space):
    rs = ruleset({"main": [rule("rej", "reject", dport=ports(5060)), rule("ok", "accept")]})
    compiled = compile_path(space, rs, "forward", native_hook="forward")
    rejected = compiled.deciders[Decider("reject", rs.rule("rej"))]
    assert rejected & compiled.accept == space.false
    assert not accepts(rs, space, udp("192.0.2.1", "203.0.113.1", 1, 5060))


def test_boxes_only_skip_rules_that_cannot_touch_the_region(space):
    from fwtest.space.compile import Box
    rs = ruleset({"main": [rule("elsewhere", "drop", dst=addr("10.0.0.0/8")),
                           rule("here", "drop", dst=addr("203.0.113.0/26"), dport=ports(5060)),
                           rule("ok", "accept")]})
    region = space.domain & space.addr_match("dst", addr("203.0.113.0/26"))
    box = Box(frozenset({4}), None, None, ((4, 0xCB007100, 0xCB00713F),))
    fast = compile_path(space, rs, "forward", native_hook="forward", within=region, boxes=[box])
    full = compile_path(space, rs, "forward", native_hook="forward", within=region)
    assert fast.rules_walked == 2 and full.rules_walked == 3
    assert fast.accept == full.accept


def test_match_with_an_unmodelled_field_is_refused(space):
    import dataclasses

    from fwtest.space.header import ProofError

    @dataclasses.dataclass(frozen=True)
    class Future(Match):
        dscp: int | None = None

    with pytest.raises(ProofError, match="dscp"):
        space.match(Future(dscp=46))
