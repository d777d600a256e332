"""Rule analysis: load-bearing rules by the fuzz contract's definition, shadowed, redundant."""

from __future__ import annotations

from dataclasses import replace

from space_helpers import REFERENCE, addr, flows, ports, profile, proto, reference, rule, ruleset, with_rule

from fwtest.rules.ir import Action, Chain, Ruleset
from fwtest.space.analysis import analyze, without_rule
from fwtest.space.proof import prove


def breaks(rs: Ruleset) -> set[str]:
    """Flows (not the surge) the proof finds broken."""
    p = prove(rs, profile(), flows=flows(), confirm_witnesses=False)
    return {f.flow for f in p.findings if f.flow != "surge"}


def flipped(rs: Ruleset, target) -> Ruleset:
    chains = {}
    for name, chain in rs.chains.items():
        rules = tuple(replace(r, action=Action("drop")) if r is target else r for r in chain.rules)
        chains[name] = Chain(chain.name, rules, chain.source)
    return replace(rs, chains=chains)


def test_load_bearing_rules_are_exactly_those_whose_deletion_or_flip_breaks_a_flow():
    rs = reference()
    analysis = analyze(rs, profile(), flows=flows())
    found = {n.rule.id: set(n.flows) for n in analysis.load_bearing}
    assert set(found) == {"established", "sip-udp-in", "sip-tcp-in", "sip-udp-out", "sip-tcp-out", "rtp-in",
                          "rtp-out", "msrp-in"}
    assert breaks(rs) == set()
    for r in rs.rules():
        broken = breaks(without_rule(rs, r))
        if r.action.kind == "accept":
            broken |= breaks(flipped(rs, r))
        # Narrowing a match breaks a flow only where deleting the rule for those packets would.
        assert (r.id in found) == bool(broken), f"{r.id}: analysis {found.get(r.id)}, edits break {broken}"
        if r.id in found:
            assert found[r.id] == broken


def test_shadowed_unreachable_and_redundant_rules():
    rs = ruleset({
        "main": [rule("sip", "accept", proto=proto(17), dst=addr("203.0.113.0/26"), dport=ports(5060)),
                 rule("sip-one-host", "accept", proto=proto(17), dst=addr("203.0.113.10/32"), dport=ports(5060)),
                 rule("narrow", "accept", proto=proto(17), dst=addr("203.0.113.0/26"), dport=ports((5000, 5100))),
                 rule("wide", "accept", proto=proto(17), dst=addr("203.0.113.0/24"), dport=ports((5000, 5100))),
                 rule("drop-all", "drop")],
        "orphan": [rule("never-jumped", "accept")],
    })
    analysis = analyze(rs, profile(), flows=flows())
    shadowed = {n.rule.id: [r.id for r in n.by] for n in analysis.shadowed}
    assert shadowed == {"sip-one-host": ["sip"]}
    assert [n.rule.id for n in analysis.unreachable] == ["never-jumped"]
    redundant = {n.rule.id: [r.id for r in n.by] for n in analysis.redundant}
    # "sip" would be accepted by the rules after it, "narrow" by "wide" right after it,
    # drop-all's packets by the policy drop.
    assert redundant == {"sip": ["sip-one-host", "narrow", "wide"], "narrow": ["wide"], "drop-all": []}
    assert "policy" in next(n.reason for n in analysis.redundant if n.rule.id == "drop-all")


def test_a_jump_is_load_bearing_when_the_chain_it_enters_accepts_the_path():
    rs = ruleset({
        "main": [rule("to-voice", "jump", "voice", proto=proto(17)), rule("rest", "drop")],
        "voice": [rule("sip-in", "accept", dst=addr("203.0.113.0/26"), dport=ports(5060))],
    })
    analysis = analyze(rs, profile(), flows=flows())
    found = {n.rule.id: n for n in analysis.load_bearing}
    assert "to-voice" in found and found["to-voice"].edits == ("delete",)
    assert "emergency-call" in found["to-voice"].flows


def test_a_drop_is_never_load_bearing_even_when_widening_it_would_break():
    rs = with_rule(REFERENCE, {"id": "block-far-range", "src": "192.0.2.0/24", "action": "drop"},
                   after="established")
    analysis = analyze(rs, profile(), flows=flows())
    assert "block-far-range" not in {n.rule.id for n in analysis.load_bearing}
    j = analysis.to_json()
    assert {"load_bearing", "shadowed", "unreachable", "redundant"} <= set(j)
    assert all({"id", "file", "line", "breaks"} <= set(x) for x in j["load_bearing"])


def test_an_analysis_sharing_the_proofs_probes_says_the_same():
    # check runs the analysis with the proof's space and AtomJudge (start-up time):
    # the result must be the analysis on its own, on a ruleset with sip and string atoms.
    from pathlib import Path

    from space_helpers import load

    rs = load(Path(REFERENCE).parent / "broken" / "string-hits-sos.yaml")
    proof = prove(rs, profile(), flows=flows())
    shared = analyze(rs, profile(), flows=flows(), space=proof.space, judge=proof.judge)
    alone = analyze(rs, profile(), flows=flows())
    assert proof.judge is not None and proof.judge.payload_atoms()
    assert shared.to_json()["load_bearing"] == alone.to_json()["load_bearing"]
    assert shared.to_json() | {"stats": None} == alone.to_json() | {"stats": None}
