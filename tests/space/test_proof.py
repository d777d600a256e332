"""The profile coverage proof: what it finds, that the engine agrees, and what replay misses."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from space_helpers import (
    BROKEN,
    HARMLESS,
    REFERENCE,
    expected_rule,
    flows,
    load,
    profile,
    reference,
    with_limit,
    with_rule,
)

from fwtest.space.header import ProofError
from fwtest.space.proof import prove
from fwtest.space.region import point_bdd, rect_bdd
from fwtest.space.witness import Confirmer, build_witness, same_decider


def test_the_reference_ruleset_carries_every_packet_of_the_profile():
    proof = prove(reference(), profile(), flows=flows())
    assert proof.passed and not proof.findings
    assert all(r.accepted for r in proof.results)
    # Every flow, transport and family of the profile has classes.
    keys = {(r.cls.flow, r.cls.transport, r.cls.family) for r in proof.results}
    assert keys == {(f, t, fam) for f in profile().flows for t in profile().sip for fam in (4, 6)}
    assert sum(r.packets for r in proof.results) > 10 ** 40


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_every_broken_ruleset_fails_naming_its_rule_with_confirmed_witnesses(path):
    proof = prove(load(path), profile(), flows=flows())
    assert not proof.passed
    deciders = {f.decider.id for f in proof.findings}
    assert expected_rule(path) in deciders
    for f in proof.findings:
        assert f.witnesses, f"{f.label}: no witness"
        for w in f.witnesses:
            # Confirmed means: the engine dropped it at the rule or policy the proof names.
            assert w.verdict is not None and not w.verdict.accepted
            assert same_decider(w.verdict, f.decider)
        j = f.to_json()
        assert {"kind", "flow", "message", "packet", "rule", "evidence"} <= set(j)
        assert j["evidence"] == "proof" and j["kind"] == "blocked"
        assert j["rule"]["file"] == str(path) and j["rule"]["line"] > 0
        assert f.region.rects and len(f.region.rects) <= 4


@pytest.mark.parametrize("path", HARMLESS, ids=[p.stem for p in HARMLESS])
def test_harmless_edits_pass(path):
    assert prove(load(path), profile(), flows=flows()).passed


def replay_misses(rs) -> bool:
    """True when replaying the synthetic calls (what `fwtest check` does) finds nothing."""
    from fwtest.api import replay_flows
    return all(o.passed for o in replay_flows(rs, profile(), list(flows())))


def test_a_single_peer_host_denied_mid_prefix_is_caught_by_proof_and_missed_by_replay():
    rs = with_rule(REFERENCE, {"id": "deny-one-peer", "src": "198.51.100.77", "action": "drop"},
                   after="sip-scanners")
    assert replay_misses(rs)
    proof = prove(rs, profile(), flows=flows())
    hits = [f for f in proof.findings if f.decider.id == "deny-one-peer"]
    assert {f.flow for f in hits} >= {"emergency-call", "options-keepalive", "text"}
    invite = next(f for f in hits if f.label == "INVITE" and f.family == 4)
    assert invite.region.describe(proof.space)[0].startswith("IPv4 proto udp src 198.51.100.77 ")
    assert invite.witnesses[0].record.addr("src") == "198.51.100.77"


def test_a_single_rtp_port_denied_is_caught_by_proof_and_missed_by_replay():
    rs = with_rule(REFERENCE, {"id": "deny-one-port", "proto": "udp", "dport": 20000, "action": "drop"},
                   before="established")
    assert replay_misses(rs)
    proof = prove(rs, profile(), flows=flows())
    hits = [f for f in proof.findings if f.decider.id == "deny-one-port"]
    labels = {f.label for f in hits}
    assert {"RTP peer->psap", "RTP psap->peer"} <= labels
    assert not any("RTCP" in label for label in labels)     # 20000 is even: RTP, never RTCP
    rtp = next(f for f in hits if f.label == "RTP peer->psap")
    assert all(w.record.dport == 20000 for w in rtp.witnesses)


def test_surge_against_a_rate_limit_is_a_finding_of_the_surge_flow():
    proof = prove(load(BROKEN[0].parent / "rate-limit-below-surge.yaml"), profile(), flows=flows())
    surge = [f for f in proof.findings if f.flow == "surge"]
    assert surge and all(f.decider.id == "sip-flood" for f in surge)
    w = surge[0].witnesses[0]
    assert len(w.burst) > 10 and not w.verdict.accepted and surge[0].rate_limit
    assert "50 calls in 5 s" in surge[0].detail
    # The reference's guard (20/s, burst 100) carries the same surge.
    assert not [f for f in prove(reference(), profile(), flows=flows()).findings if f.flow == "surge"]


def test_a_limit_one_call_runs_dry_is_a_finding_of_that_flow():
    from fwtest.rules.ir import LimitMatch

    # Found by the fuzzer: a 10/s (burst 10) limit on the `established` accept. One
    # TLS call's handshake and SIP exchange outrun it; the replay sees the calls die,
    # and the proof must too (it once judged limits against the surge only).
    rs = with_limit(reference(), "established", LimitMatch(rate=10, burst=10))
    proof = prove(rs, profile(), flows=flows())
    limited = [f for f in proof.findings if f.rate_limit]
    assert {f.flow for f in limited} >= {"emergency-call", "callback", "options-keepalive", "text", "surge"}
    assert all(f.transport == "tls" for f in limited if f.flow != "surge")
    for f in limited:
        w = f.witnesses[0]
        assert len(w.burst) > 10 and not w.verdict.accepted and w.verdict.rule.id == "drop-rest"
        assert f.to_json()["rate_limit"] is True
    one = next(f for f in limited if f.flow == "text")
    assert "one text flow (tls, IPv" in one.detail and "rule established" in one.detail
    # Without the limit nothing of that kind is found.
    assert not [f for f in prove(reference(), profile(), flows=flows()).findings if f.rate_limit]


def test_a_witness_the_engine_does_not_confirm_is_an_internal_error(monkeypatch):
    from fwtest.engine.verdict import Verdict

    def accepts_everything(self, cls, record, state):
        return Verdict("accept", None, None, state)

    monkeypatch.setattr(Confirmer, "verdict", accepts_everything)
    with pytest.raises(ProofError, match="witness not confirmed"):
        prove(load(BROKEN[0].parent / "msrp-closed.yaml"), profile(), flows=flows())


def test_both_backends_find_the_same_regions():
    rs = load(BROKEN[0].parent / "rtp-range-narrowed.yaml")
    fast = prove(rs, profile(), flows=flows(), backend="cudd", confirm_witnesses=False)
    pure = prove(rs, profile(), flows=flows(), backend="autoref", confirm_witnesses=False)

    def key(p):
        return [(f.flow, f.transport, f.family, f.label, f.state, f.decider.id, f.region.count,
                 f.region.describe(p.space)) for f in p.findings]
    assert key(fast) == key(pure)
    pure.space.release()


# ---------------------------------------------------------------- proof == engine, on generated edits

POOL = ["198.51.100.0/24", "198.51.100.128/25", "198.51.100.77", "198.51.100.0/30", "203.0.113.0/26",
        "203.0.113.32/27", "203.0.113.10", "2001:db8:100::/56", "2001:db8:100:80::/57", "2001:db8:911::/64",
        "2001:db8:911::10", "10.0.0.0/8"]
PORTS = [5060, 5061, 2855, "16384-32767", "16384-20000", 20000, 20001, "1-1023", "30000-40000"]


@st.composite
def edits(draw):
    rule: dict = {"id": "edit", "action": draw(st.sampled_from(["drop", "reject", "drop"]))}
    if draw(st.booleans()):
        rule["proto"] = draw(st.sampled_from(["udp", "tcp"]))
        if draw(st.booleans()):
            rule[draw(st.sampled_from(["dport", "sport"]))] = draw(st.sampled_from(PORTS))
    for fld in ("src", "dst"):
        if draw(st.integers(0, 2)) == 0:
            value = draw(st.sampled_from(POOL))
            rule[fld] = f"!{value}" if draw(st.integers(0, 5)) == 0 and "/" in value else value
    if draw(st.integers(0, 3)) == 0:
        rule["state"] = draw(st.sampled_from([["new"], ["established"], ["new", "established"]]))
    anchor = draw(st.sampled_from(["invite-guard", "established", "sip-scanners", "sip-udp-out", "rtp-in",
                                   "msrp-in", "log-rest"]))
    return rule, anchor


def random_in(rect, name, rng):
    ivs, parity = rect.values(name)
    lo, hi = rng.choice(ivs)
    v = rng.randint(lo, hi)
    if parity is not None and v & 1 != parity:
        v = v + 1 if v + 1 <= hi else v - 1
    return v


@settings(max_examples=12)
@given(edit=edits(), seed=st.integers(0, 2 ** 32))
def test_proof_agrees_with_the_engine_on_sampled_packets(edit, seed):
    """For a generated edit of the reference: every class the proof says is accepted has no
    sampled packet the engine drops; every blocked region is made only of packets the
    engine drops, at the rule the proof names (points sampled from its rectangles)."""
    rule, anchor = edit
    try:
        rs = with_rule(REFERENCE, rule, before=anchor)
    except Exception as e:   # a contradictory edit (say ports with no protocol) the loader refuses
        from fwtest.errors import InputError
        assert isinstance(e, InputError)
        return
    proof = prove(rs, profile(), flows=flows(), max_witnesses=1)
    rng = random.Random(seed)
    sp = proof.space
    confirmer = Confirmer(rs, profile())
    blocked_keys = {(f.flow, f.transport, f.family, f.label, f.state) for f in proof.findings if not f.rate_limit}
    results = rng.sample(proof.results, 25)
    for result in results:
        cls, state = result.cls, result.state
        point = {}
        for net_field, nets in (("src", cls.src), ("dst", cls.dst)):
            net = rng.choice(nets)
            point[net_field] = int(net.network_address) + rng.randrange(net.num_addresses)
        for fld, spec in (("sport", cls.sport), ("dport", cls.dport)):
            if spec is not None:
                lo, hi, parity = spec
                v = rng.randint(lo, hi)
                if parity is not None and v & 1 != parity:
                    v = v - 1 if v - 1 >= lo else v + 1
                point[fld] = v
        point.update(flags=cls.flags or 0, iif=sp.iface_index[cls.iface_in], oif=sp.iface_index[cls.iface_out])
        record = build_witness(cls, point, sp)
        v = confirmer.verdict(cls, record, state)
        if result.accepted:
            assert v.accepted, f"{cls.side_label} ({state}) proved accepted, engine drops {record.short()}: {v}"
        elif not v.accepted:
            assert (cls.flow, cls.transport, cls.family, cls.label, state) in blocked_keys
    for f in proof.findings:
        if f.rate_limit:    # a packet alone passes: its witness is a burst, confirmed when proved
            continue
        cls = next(r.cls for r in proof.results if (r.cls.flow, r.cls.transport, r.cls.family, r.cls.label,
                                                     r.state) == (f.flow, f.transport, f.family, f.label, f.state)
                   and rect_bdd(sp, f.region.rects[0]) & sp.class_region(r.cls, (r.state,)) != sp.false)
        for rect in f.region.rects[:2]:
            point = {name: random_in(rect, name, rng) for name, _, _ in rect.fields}
            assert point_bdd(sp, point) & rect_bdd(sp, rect) != sp.false
            record = build_witness(cls, point, sp)
            v = confirmer.verdict(cls, record, f.state)
            assert not v.accepted and same_decider(v, f.decider), \
                f"{record.short()} in the region of {f.label} ({f.decider.describe()}): engine {v}"


# ---------------------------------------------------------------- generated profiles

PROFILES = [
    {"name": "v4-small", "psap": ["192.0.2.0/29"], "peers": ["198.51.100.8/30", "198.51.100.64/28"],
     "sip": {"udp": 5060, "tcp": 5080}, "rtp": "10000-10099", "msrp": 2855,
     "flows": ["emergency-call", "callback"], "call_seconds": 40},
    {"name": "v6-only", "psap": ["2001:db8:911:5::/64"], "peers": ["2001:db8:100::/48"],
     "sip": {"tls": 5061}, "rtp": {"psap": "20000-20999", "peers": "40000-40999"},
     "flows": ["emergency-call", "options-keepalive", "text"], "call_seconds": 30},
]


def generic_ruleset(prof: dict, deny: dict | None):
    """A stateful ruleset written from the profile alone, plus one deny."""
    from fwtest.rules.native import ruleset_from_dict

    ports = sorted(set(prof["sip"].values()))
    rtp = prof["rtp"] if isinstance(prof["rtp"], str) else prof["rtp"]["psap"]
    rtp_peer = prof["rtp"] if isinstance(prof["rtp"], str) else prof["rtp"]["peers"]
    rules = [{"id": "est", "state": ["established", "related"], "action": "accept"},
             {"id": "sip-in", "proto": ["udp", "tcp"], "src": prof["peers"], "dst": prof["psap"],
              "dport": ports, "action": "accept"},
             {"id": "sip-out", "proto": ["udp", "tcp"], "src": prof["psap"], "dst": prof["peers"],
              "dport": ports, "action": "accept"},
             {"id": "rtp-in", "proto": "udp", "src": prof["peers"], "dst": prof["psap"], "dport": rtp,
              "action": "accept"},
             {"id": "rtp-out", "proto": "udp", "src": prof["psap"], "dst": prof["peers"], "dport": rtp_peer,
              "action": "accept"},
             {"id": "msrp", "proto": "tcp", "src": prof["peers"], "dst": prof["psap"],
              "dport": prof.get("msrp", 2855), "action": "accept"}]
    if deny is not None:
        rules.insert(deny.pop("at"), deny)
    return ruleset_from_dict({"policy": "drop", "conntrack": {"timeouts": {"udp_stream": 3600}},
                              "rules": rules}, f"{prof['name']}.yaml")


@st.composite
def profile_denies(draw):
    prof = draw(st.sampled_from(PROFILES))
    if draw(st.integers(0, 3)) == 0:
        return prof, None
    side = draw(st.sampled_from(["psap", "peers"]))
    net = ipaddress.ip_network(draw(st.sampled_from(prof[side])))
    host = net.network_address + draw(st.integers(0, net.num_addresses - 1))
    deny = {"id": "deny", "action": "drop", "at": draw(st.integers(0, 6)),
            "src" if draw(st.booleans()) else "dst": str(host)}
    return prof, deny


@settings(max_examples=6)
@given(case=profile_denies(), seed=st.integers(0, 2 ** 32))
def test_generated_profiles_pass_exactly_when_no_packet_of_them_is_dropped(case, seed):
    """A ruleset written from a generated profile, with or without a deny of one host of it:
    the proof passes exactly when the engine drops no packet of any class, each class
    sampled at the denied host when it lies in the class (elsewhere at random)."""
    from fwtest.profile import load_profile
    from fwtest.traffic.synth import synthesize

    prof_data, deny = case
    prof = load_profile(prof_data)
    rs = generic_ruleset(prof_data, dict(deny) if deny else None)
    proof = prove(rs, prof, flows=synthesize(prof), max_witnesses=1)
    rng = random.Random(seed)
    confirmer = Confirmer(rs, prof)
    sp = proof.space
    dropped = False
    for result in proof.results:
        cls = result.cls
        point = {"flags": cls.flags or 0, "iif": sp.iface_index[cls.iface_in],
                 "oif": sp.iface_index[cls.iface_out]}
        for fld, nets in (("src", cls.src), ("dst", cls.dst)):
            host = int(ipaddress.ip_address(deny[fld])) if deny and fld in deny else None
            if host is not None and any(int(n.network_address) <= host <= int(n.broadcast_address) for n in nets):
                point[fld] = host
            else:
                net = rng.choice(nets)
                point[fld] = int(net.network_address) + rng.randrange(net.num_addresses)
        for fld, spec in (("sport", cls.sport), ("dport", cls.dport)):
            if spec is not None:
                lo, hi, parity = spec
                v = rng.randint(lo, hi)
                point[fld] = v if parity is None or v & 1 == parity else (v - 1 if v > lo else v + 1)
        v = confirmer.verdict(cls, build_witness(cls, point, sp), result.state)
        dropped = dropped or not v.accepted
        if not v.accepted:
            assert not result.accepted
    assert proof.passed == (not dropped)
    if deny is None:
        assert proof.passed
    if not proof.passed:
        assert {f.decider.id for f in proof.findings} == {"deny"}


def test_ct_helper_rules_decide_which_calls_get_related_media():
    """A raw-table `CT --helper sip` on UDP 5060 only: UDP calls' media comes RELATED (and a
    `helper sip` match sees it), TCP calls' media comes NEW and meets the policy."""
    from space_helpers import addr, ports, proto, rule, ruleset

    from fwtest.rules.ir import BaseChain, Source, StateMatch

    peers, psap = ("198.51.100.0/24", "2001:db8:100::/56"), ("203.0.113.0/26", "2001:db8:911::/64")
    rs = ruleset({
        "raw": [rule("helper-udp", "ct_helper", "sip", proto=proto(17), dport=ports(5060))],
        "main": [rule("est", "accept", state=StateMatch(frozenset({"established"}))),
                 rule("sip-in", "accept", proto=proto(6, 17), src=addr(*peers), dst=addr(*psap),
                      dport=ports(5060, 5061, 2855)),
                 rule("sip-out", "accept", proto=proto(6, 17), src=addr(*psap), dst=addr(*peers),
                      dport=ports(5060, 5061)),
                 rule("expected-media", "accept", proto=proto(17), helper="sip",
                      state=StateMatch(frozenset({"related"})))],
    }, bases=[BaseChain("raw", "prerouting", -300, "accept", None, Source("t", 1)),
              BaseChain("main", None, 0, "drop", None, Source("t", 2))], conntrack=True)
    proof = prove(rs, profile(), flows=flows())
    media = [f for f in proof.findings if "RTP" in f.label or "RTCP" in f.label]
    assert media and {f.transport for f in media} == {"tcp", "tls"}
    assert all(f.state == "new" and f.decider.chain is not None for f in media)
    related = [r for r in proof.results if r.cls.transport == "udp" and "RTP" in r.cls.label
               and r.state == "related"]
    assert related and all(r.accepted for r in related)


def test_first_finding_per_flow_is_the_earliest_packet_that_dies():
    proof = prove(load(BROKEN[0].parent / "deny-above-allow-overlap.yaml"), profile(), flows=flows(),
                  confirm_witnesses=False)
    first = proof.first_per_flow()
    assert len({(f.flow, f.transport, f.family) for f in first}) == len(first)
    call = next(f for f in first if (f.flow, f.transport, f.family) == ("emergency-call", "udp", 4))
    assert call.label == "INVITE"
    tcp = next(f for f in first if (f.flow, f.transport, f.family) == ("emergency-call", "tcp", 4))
    assert tcp.label == "SYN"


def test_the_msrp_connection_is_judged_over_every_sip_transport():
    # Regression: over TCP and TLS, a text call's MSRP SYN shared the class of its SIP
    # SYN (same label), so the proof never judged port 2855 there and passed a ruleset
    # without msrp-in for those transports; only the replay caught it.
    proof = prove(load(BROKEN[0].parent / "msrp-closed.yaml"), profile(), flows=flows(), max_witnesses=1)
    msrp_syns = {(f.transport, f.family) for f in proof.findings
                 if f.label == "SYN" and all(w.record.dport == 2855 for w in f.witnesses)}
    assert msrp_syns == {(t, fam) for t in ("udp", "tcp", "tls") for fam in (4, 6)}
