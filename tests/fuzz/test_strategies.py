"""fwtest.strategies: the edits mean what their kind says, and the traffic is what it claims.

Example counts (Hypothesis ``max_examples``) are stated on each property; the
file runs in about 20 s on two cores.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.engine import replay
from fwtest.engine.limits import LimitState
from fwtest.engine.match import compile_match
from fwtest.engine.outcome import judge
from fwtest.engine.packet import PacketView
from fwtest.profile import load_profile
from fwtest.rules import load_ruleset
from fwtest.rules.ir import Ruleset
from fwtest.strategies import (
    DEPENDENCY_KINDS,
    EDIT_KINDS,
    EditError,
    apply_edits,
    edit_sequences,
    emergency_calls,
    packets_in,
    rule_edits,
    rulesets,
    single_edits,
    sip_messages,
)
from fwtest.traffic.sipmsg import parse_sip

ROOT = Path(__file__).resolve().parents[2]
RULES = load_ruleset(str(ROOT / "rulesets" / "psap-edge.yaml"))
PROFILE = load_profile(str(ROOT / "rulesets" / "psap-edge.profile.yaml"))
PACKETS = st.lists(packets_in(PROFILE), min_size=40, max_size=40)


def rules_by_id(rs: Ruleset) -> dict:
    return {r.id: r for r in rs.rules()}


def matches(rule, record, state: str = "new") -> bool:
    """The rule's conditions other than a rate limit, on one packet (as the engine tests them)."""
    from dataclasses import replace

    tests, _ = compile_match(replace(rule.match, limit=None), rule, LimitState())
    view = PacketView(record, state)
    view.at_hook("forward")
    return all(t(view) for t in tests)


# ------------------------------------------------------------------ single edits

def test_single_edits_cover_every_kind_and_every_rule():
    edits = single_edits(RULES)
    assert {e.kind for e in edits} == set(EDIT_KINDS)
    touched = {e.rule.id for e in edits if e.kind != "insert"}
    assert touched == set(rules_by_id(RULES))


def test_single_edits_describe_the_rule_with_file_and_line():
    for e in single_edits(RULES):
        anchor = e.anchor if e.kind == "insert" else e.rule
        assert anchor is not None
        assert f"{anchor.id} ({anchor.source.file}:{anchor.source.line})" in e.description, e.description


def test_applying_an_edit_changes_only_what_it_says():
    for e in single_edits(RULES):
        before = rules_by_id(RULES)
        after = rules_by_id(e.apply())
        if e.kind == "delete":
            assert set(before) - set(after) == {e.rule.id} and not set(after) - set(before)
        elif e.kind == "insert":
            assert set(after) - set(before) == {e.rule.id}
        else:
            assert set(after) == set(before)
        for rid, rule in after.items():
            if rid == e.rule.id:
                continue
            assert rule is before.get(rid, rule), f"{e.description} touched {rid}"
        if e.kind in ("narrow", "widen", "action", "limit", "string"):
            edited = after[e.rule.id]
            assert edited.source == e.rule.source          # findings still point at file:line
            assert edited != e.rule
    assert rules_by_id(RULES) == rules_by_id(load_ruleset(str(ROOT / "rulesets" / "psap-edge.yaml")))


def test_move_keeps_the_rules_and_changes_the_order():
    for e in single_edits(RULES, kinds=["move"]):
        chain = e.apply().chains[e.chain]
        old = RULES.chains[e.chain]
        assert sorted(r.id for r in chain.rules) == sorted(r.id for r in old.rules)
        assert [r.id for r in chain.rules] != [r.id for r in old.rules]


def test_dependency_edits_are_delete_narrow_and_flips():
    assert DEPENDENCY_KINDS == ("delete", "narrow", "flip")
    for e in single_edits(RULES):
        if e.kind == "action":
            assert e.flips == ({e.rule.action.kind, e.replacement.action.kind} in
                               ({"accept", "drop"}, {"accept", "reject"}))
        if e.kind in ("widen", "move", "insert"):
            assert not e.tests_dependency, e.description


def test_an_edit_refuses_a_ruleset_without_its_rule():
    delete = next(e for e in single_edits(RULES, kinds=["delete"]) if e.rule.id == "rtp-in")
    narrow = next(e for e in single_edits(RULES, kinds=["narrow"]) if e.rule.id == "rtp-in")
    with pytest.raises(EditError, match="rtp-in"):
        narrow.apply(delete.apply())


# ------------------------------------------------------------------ drawn edits

@settings(max_examples=60)
@given(rule_edits(RULES, profile=PROFILE))
def test_drawn_edits_apply_and_keep_ids_unique(edit):
    after = edit.apply()
    ids = [r.id for r in after.rules()]
    assert len(ids) == len(set(ids))
    delta = {"delete": -1, "insert": 1}.get(edit.kind, 0)
    assert len(ids) == len(list(RULES.rules())) + delta
    assert edit.kind in EDIT_KINDS and edit.description


@settings(max_examples=40)
@given(rule_edits(RULES, kinds=["narrow", "string", "limit"], profile=PROFILE), PACKETS)
def test_narrowing_never_matches_a_packet_the_rule_did_not(edit, packets):
    if not edit.narrows:
        return      # lowering a flood guard's "above" limit is a widening
    for p in packets:
        if matches(edit.replacement, p):
            assert matches(edit.rule, p), f"{edit.description}: {p.short()}"


@settings(max_examples=40)
@given(rule_edits(RULES, kinds=["widen"], profile=PROFILE), PACKETS)
def test_widening_matches_every_packet_the_rule_did(edit, packets):
    for p in packets:
        if matches(edit.rule, p):
            assert matches(edit.replacement, p), f"{edit.description}: {p.short()}"


@settings(max_examples=30)
@given(edit_sequences(RULES, max_edits=3, profile=PROFILE))
def test_edit_sequences_touch_distinct_rules_and_apply_in_order(edits):
    touched = [e.rule.id for e in edits] + [e.before for e in edits if e.before]
    assert len(touched) == len(set(touched))
    apply_edits(RULES, edits)


@settings(max_examples=20)
@given(rule_edits(RULES, rules=["ssh-mgmt", "icmp-v4"]))
def test_rules_restricts_what_edits_touch(edit):
    if edit.kind == "insert":
        assert edit.anchor is not None and edit.anchor.id in ("ssh-mgmt", "icmp-v4")
    else:
        assert edit.rule.id in ("ssh-mgmt", "icmp-v4")


def test_rule_edits_refuses_unknown_rules_and_kinds():
    with pytest.raises(ValueError, match="no rule"):
        rule_edits(RULES, rules=["no-such-rule"])
    with pytest.raises(ValueError, match="kinds"):
        rule_edits(RULES, kinds=["rename"])


# ------------------------------------------------------------------ traffic

@settings(max_examples=150)
@given(sip_messages())
def test_valid_sip_messages_parse_as_written(data):
    msg = parse_sip(data)
    assert msg is not None
    start = data.split(b"\n", 1)[0].rstrip(b"\r").decode()
    assert msg.start_line == start
    assert msg.call_id and msg.cseq is not None
    assert int(msg.header("content-length")) == len(msg.body)


@settings(max_examples=60)
@given(sip_messages())
def test_valid_sip_messages_dissect_with_the_scapy_layer(data):
    from fwtest.traffic.sip import SIP

    layer = SIP(data)
    assert layer.message().start_line == parse_sip(data).start_line
    assert bytes(layer.getfieldval("body")) == parse_sip(data).body


@settings(max_examples=8, deadline=None)
@given(emergency_calls(PROFILE, max_seconds=40))
def test_the_reference_ruleset_carries_every_drawn_emergency_call(flow):
    hooks = PROFILE.hooks()
    verdicts = replay(RULES, [s.record for s in flow.steps], [hooks[s.direction] for s in flow.steps],
                      native_hook=PROFILE.firewall, sip_ports=(5060,))
    outcome = judge(flow, verdicts)
    assert outcome.passed, (flow.instance, outcome.broke, outcome.first_dead and outcome.first_dead.label)
    first = flow.steps[0].record
    peers = [n for n in PROFILE.peers if n.version == flow.family]
    assert any(ipaddress.ip_address(first.addr("src")) in n for n in peers)


@settings(max_examples=4, deadline=None)
@given(emergency_calls(PROFILE, flows=("callback", "options-keepalive", "text"), max_seconds=20))
def test_the_reference_ruleset_carries_every_drawn_callback_keepalive_and_text(flow):
    hooks = PROFILE.hooks()
    verdicts = replay(RULES, [s.record for s in flow.steps], [hooks[s.direction] for s in flow.steps],
                      native_hook=PROFILE.firewall, sip_ports=(5060,))
    assert judge(flow, verdicts).passed, flow.instance


@settings(max_examples=100)
@given(packets_in(PROFILE))
def test_packets_in_lie_inside_the_profile(record):
    src, dst = ipaddress.ip_address(record.addr("src")), ipaddress.ip_address(record.addr("dst"))
    inbound = any(src in n for n in PROFILE.peers)
    assert inbound != any(src in n for n in PROFILE.psap)
    assert any(dst in n for n in (PROFILE.psap if inbound else PROFILE.peers))
    assert record.iface_in == PROFILE.interfaces["peers" if inbound else "psap"]
    lo_rtp = min(PROFILE.rtp_psap[0], PROFILE.rtp_peers[0])
    hi_rtp = max(PROFILE.rtp_psap[1], PROFILE.rtp_peers[1])
    ports = {record.sport, record.dport}
    assert ports & ({*PROFILE.sip.values(), PROFILE.msrp} | set(range(lo_rtp, hi_rtp + 1)))


@settings(max_examples=40)
@given(rulesets(), st.lists(packets_in(PROFILE), min_size=1, max_size=5))
def test_drawn_rulesets_load_and_replay(ruleset, records):
    verdicts = replay(ruleset, records, "forward", native_hook="forward")
    assert len(verdicts) == len(records)
    assert all(v.verdict in ("accept", "drop", "reject") for v in verdicts)
