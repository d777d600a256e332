"""fwtest.fuzz: load-bearing rules per DESIGN.md, breaking edits that really break, a gate
self-check that finds what the gate misses, and figures that are true.

Every claim the fuzzer makes is checked against ground truth computed another way:
``fwtest.check`` and ``fwtest.space.proof.prove`` on the edited ruleset, or a full
replay of every flow. Hypothesis example counts are stated on each property.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings

from fwtest.api import check, replay_flows
from fwtest.fuzz import (
    PathJudge,
    ReplayJudge,
    fuzz,
    gate_check,
    limit_sensitive,
    render_fuzz_table,
    run_fuzz_command,
    search,
)
from fwtest.profile import load_profile
from fwtest.rules import load_ruleset
from fwtest.space.header import HeaderSpace, rule_atom_keys
from fwtest.space.proof import prove
from fwtest.strategies import rule_edits, single_edits
from fwtest.traffic.synth import synthesize

ROOT = Path(__file__).resolve().parents[2]
RULES = load_ruleset(str(ROOT / "rulesets" / "psap-edge.yaml"))
PROFILE = load_profile(str(ROOT / "rulesets" / "psap-edge.profile.yaml"))
# What rulesets/psap-edge.yaml leans on (its comments say why each is there).
LOAD_BEARING = {"established", "sip-udp-in", "sip-tcp-in", "sip-udp-out", "sip-tcp-out", "rtp-in", "rtp-out",
                "msrp-in"}


@pytest.fixture(scope="module")
def report():
    return fuzz(RULES, PROFILE, mode="scan")


@pytest.fixture(scope="module")
def judge():
    return PathJudge(RULES, PROFILE)


def edit(description_start: str):
    return next(e for e in single_edits(RULES) if e.description.startswith(description_start))


SPACE = HeaderSpace.for_rulesets([RULES], PROFILE)   # holds the atoms of every edit below but limits
FLOWS = synthesize(PROFILE)


def replay_broken(candidate) -> set[str]:
    """The flows the replay of the synthetic calls finds blocked (the replay check runs)."""
    return {o.flow.flow for o in replay_flows(candidate, PROFILE, FLOWS) if not o.passed}


def proof_broken(candidate) -> set[str]:
    """The flows the proof finds blocked (its findings come with witnesses the engine confirms)."""
    needed = {k for r in candidate.rules() for k in rule_atom_keys(r)}
    space = SPACE if needed <= set(SPACE.atoms) else None     # a new limit needs a space of its own
    return {f.flow for f in prove(candidate, PROFILE, flows=FLOWS, max_witnesses=1, space=space).findings}


def broken_flows(candidate) -> set[str]:
    """Ground truth, computed without fwtest.fuzz: the replay's blocked flows, else the proof's."""
    return replay_broken(candidate) or proof_broken(candidate)


def breaks_for_real(candidate) -> bool:
    return bool(broken_flows(candidate))


# ------------------------------------------------------------------ (a) load-bearing rules

def test_load_bearing_rules_of_the_reference_ruleset(report):
    assert {lb.rule.id for lb in report.load_bearing} == LOAD_BEARING


def test_load_bearing_agrees_with_the_space_analysis(report):
    from fwtest.space.analysis import analyze

    analysis = analyze(RULES, PROFILE)
    assert {n.rule.id for n in analysis.load_bearing} == {lb.rule.id for lb in report.load_bearing}


def test_deleting_a_load_bearing_rule_breaks_the_flows_it_names(report):
    for lb in report.load_bearing:
        broken = broken_flows(edit(f"delete {lb.rule.id} ").apply())
        assert broken & set(lb.breaks), (lb.rule.id, lb.breaks, broken)


def test_rules_nothing_depends_on_survive_deletion_narrowing_and_flips(report):
    independent = {r.rule.id for r in report.independent}
    assert independent == {r.id for r in RULES.rules()} - LOAD_BEARING
    edits = [e for e in single_edits(RULES, rules=independent) if e.tests_dependency]
    # Every deletion, every third flip, every eighth range narrowing (each costs a replay and
    # a proof; added limits and strings are covered by the scan's own replay).
    sample = ([e for e in edits if e.kind == "delete"] + [e for e in edits if e.kind == "action"][::3]
              + [e for e in edits if e.kind == "narrow"][::8])
    for e in sample:
        assert not breaks_for_real(e.apply()), e.description


def test_a_widened_drop_breaks_the_path_without_becoming_load_bearing(report):
    widened = next(r for r in report.single_edits
                   if r.edit.description.startswith("widen sip-scanners") and "sip condition" in r.edit.description)
    assert widened.judgement.breaks and breaks_for_real(widened.edit.apply())
    scanners = next(r for r in report.independent if r.rule.id == "sip-scanners")
    assert widened.edit.description in scanners.breaking_edits


def test_every_breaking_single_edit_breaks_for_real(report):
    breaking = [r for r in report.single_edits if r.judgement.breaks]
    assert len(breaking) > 50
    for r in breaking[::30]:         # a sample: each costs a replay and maybe a proof
        assert breaks_for_real(r.edit.apply()), r.edit.description


def test_json_follows_the_design_contract(report):
    out = json.loads(json.dumps(report.to_json()))
    assert {"load_bearing", "breaking_edits"} <= set(out)
    for item in out["load_bearing"]:
        assert {"id", "file", "line", "breaks"} <= set(item)
        assert item["file"] == str(ROOT / "rulesets" / "psap-edge.yaml")
        assert item["line"] == RULES.rule(item["id"]).source.line
        assert set(item["breaks"]) <= {"emergency-call", "callback", "options-keepalive", "text", "surge"}


# ------------------------------------------------------------------ the replay shortcut

@settings(max_examples=8, deadline=None)
@given(rule_edits(RULES, profile=PROFILE))
def test_the_replay_shortcut_equals_a_full_replay(judge, edit):
    candidate = edit.apply()
    shortcut, complete = judge.replay.rows(candidate, [edit])
    full = {o.flow.key for o in replay_flows(candidate, PROFILE, judge.flows) if not o.passed}
    assert complete and shortcut == full, edit.description


def test_rate_limits_the_proof_cannot_judge_are_replayed(report):
    """Where a rate limit meets other traffic than before, the replay runs too: a 10/s
    limit on `established` kills TLS calls (the proof sees it as well, since it judges
    limits on each flow's timeline; the replay confirms it on the engine)."""
    limited = edit("add a rate limit of 10/s (burst 10) to established")
    assert limit_sensitive(RULES, limited.apply(), [limited])
    result = next(r for r in report.single_edits if r.edit.key == limited.key)
    assert result.judgement.replay and result.judgement.breaks
    assert replay_broken(limited.apply()) >= {"emergency-call", "callback"}


def test_the_proof_sees_a_limit_that_one_call_exceeds():
    """Found by the fuzzer: the proof once judged a rate limit "under the limit" for a
    single call, so a 10/s (burst 10) limit on `established` passed the proof while the
    replay showed every TLS call dying at its handshake. The proof now judges limits on
    each flow's own timeline."""
    limited = edit("add a rate limit of 10/s (burst 10) to established").apply()
    assert replay_broken(limited)                       # ground truth: calls die
    assert proof_broken(limited), "the proof passes a ruleset whose limit drops single calls"


def test_edits_far_from_limits_are_not_limit_sensitive():
    assert not limit_sensitive(RULES, edit("delete rtp-in ").apply(), [edit("delete rtp-in ")])
    assert limit_sensitive(RULES, edit("widen invite-guard").apply(), [edit("widen invite-guard")])


# ------------------------------------------------------------------ (d) figures

def test_mutation_score_counts_what_each_evidence_misses(report):
    score = report.mutation_score
    assert 0 < score["caught_by_replay"] < score["breaking_single_edits"]
    # Since rate limits are judged on each flow's own timeline, the proof misses none.
    assert score["caught_by_proof"] == score["breaking_single_edits"] and not score["missed_by_proof"]
    missed = edit("delete rtp-out ")
    assert missed.description in score["missed_by_replay"]
    # Ground truth: the synthetic calls get through, the proof finds PSAP-originated RTP dropped.
    assert not replay_broken(missed.apply())
    assert proof_broken(missed.apply()) == {"emergency-call", "callback"}
    # What the figures would call a proof miss must be one.
    for description in score["missed_by_proof"]:
        candidate = edit(description).apply()
        assert replay_broken(candidate) and not proof_broken(candidate), description


def test_rule_coverage_counts_the_packets_the_rules_saw(report, judge):
    by_id = {r["id"]: r for r in report.coverage.rules}
    assert by_id["established"]["packets"] > by_id["sip-udp-in"]["packets"] > 0
    assert by_id["drop-rest"]["packets"] == 0 and by_id["ssh-mgmt"]["packets"] == 0
    seen = sum(len(v.trace) for o in judge.replay.base_outcomes for v in o.verdicts)
    assert sum(r["packets"] for r in report.coverage.rules) == seen
    dport = next(c for c in by_id["rtp-in"]["clauses"] if c["clause"].startswith("dport"))
    assert dport["true"] > 0 and dport["false"] > 0
    both, judged = report.coverage.clauses
    assert 0 < both < judged


# ------------------------------------------------------------------ (b) search

def test_search_reports_shrunk_breaking_edits_reproducibly(judge):
    found, _ = search(judge, RULES, max_examples=6, seed=7, rounds=2)
    again, _ = search(PathJudge(RULES, PROFILE), RULES, max_examples=6, seed=7, rounds=2)
    assert [b.to_json()["description"] for b in found] == [b.to_json()["description"] for b in again]
    assert found and all(len(b.edits) == 1 for b in found)          # shrunk to one edit
    assert len({b.edits[0].rule.id for b in found}) == len(found)   # different rules each round
    for b in found:
        assert b.finding is not None and b.finding["rule"]["file"]
        assert breaks_for_real(b.edits[0].apply())


def test_search_combines_harmless_edits_and_reports_none_that_break(judge, report):
    harmless = [r.edit for r in report.single_edits if not r.judgement.breaks]
    found, notes = search(judge, RULES, max_examples=10, seed=1, harmless=harmless, rounds=0)
    assert not found and any("harmless one by one" in n for n in notes)


# ------------------------------------------------------------------ (c) gate self-check

def test_gate_self_check_flags_every_breaking_candidate(judge):
    picks = [edit("narrow dport of rtp-in"), edit("delete ssh-mgmt "),
             edit("add a rate limit of 10/s (burst 10) to established")]
    gate = gate_check(judge, RULES, [([e], e.apply()) for e in picks], kernel="no")
    assert gate.candidates == 3 and gate.passed and not gate.shortcut_errors, gate.to_json()
    assert gate.breaking == 2 and gate.flagged == 2 and gate.check_score == 1.0
    # The proof judges the rate limit on `established` on the calls' timelines: no miss.
    assert not gate.proof_misses, gate.proof_misses


@pytest.mark.kernel
def test_gate_self_check_with_the_kernel_oracle():
    """A ruleset the kernel can load (psap-edge's SIP matches have no netfilter equivalent):
    the stateless ACL of the fragments seed, two of its edits through real netfilter."""
    seed = ROOT / "seeds" / "fragmented-location-invite"
    rules = load_ruleset(str(seed / "base.yaml"))
    profile = load_profile(str(ROOT / "seeds" / "profile.yaml"))
    acl_judge = PathJudge(rules, profile)
    picks = [e for e in single_edits(rules, kinds=["delete"]) if e.rule.id in ("rtp-in", "fragments-out")]
    gate = gate_check(acl_judge, rules, [([e], e.apply()) for e in picks], kernel="yes")
    assert gate.kernel.startswith("netfilter") and gate.kernel_candidates == 2, gate.to_json()
    assert gate.passed and not gate.kernel_disagreements, gate.to_json()
    assert gate.breaking >= 1 and gate.flagged == gate.breaking


def test_gate_self_check_says_why_the_kernel_could_not_run(judge):
    e = edit("delete ssh-mgmt ")
    gate = gate_check(judge, RULES, [([e], e.apply())], kernel="auto")
    assert gate.passed and gate.kernel_candidates == 0
    assert gate.kernel.startswith("not run") and ("SIP message match" in gate.kernel or "root" in gate.kernel
                                                  or "Linux" in gate.kernel or "needs" in gate.kernel)


# ------------------------------------------------------------------ the command

def test_the_command_prints_the_load_bearing_table_and_a_shrunk_edit():
    text, code = run_fuzz_command([str(ROOT / "rulesets" / "psap-edge.yaml")], PROFILE, max_examples=4, seed=0,
                                  mode="default", kernel="no", seeds=None, output_format="table")
    assert code == 0
    assert "Load-bearing rules" in text and "rtp-in" in text
    assert "shrunk" in text and "1. [search]" in text


def test_a_ruleset_that_already_blocks_exits_1_and_says_so():
    broken = load_ruleset(str(ROOT / "rulesets" / "broken" / "msrp-closed.yaml"))
    got = fuzz(broken, PROFILE, mode="scan", kinds=["delete"])
    assert got.exit_code == 1 and any(row.startswith("text") for row in got.base_blocked)
    assert "already blocks" in render_fuzz_table(got)
    # Edits are judged on the rows that still pass: deleting sip-udp-in still breaks calls.
    assert "sip-udp-in" in {lb.rule.id for lb in got.load_bearing}


def test_replay_judge_refuses_nothing_silently():
    with pytest.raises(ValueError, match="replay is"):
        PathJudge(RULES, PROFILE, use_proof=False).judge(RULES, [], replay="sometimes")


def test_the_base_outcomes_are_what_check_replays(judge):
    base = check(RULES, PROFILE, proof=False, analysis=False)
    assert base.result == "pass" and not judge.replay.base_rows
    assert isinstance(judge.replay, ReplayJudge)
    assert len(judge.replay.base_outcomes) == sum(len(r.outcomes) for r in base.flows) == len(FLOWS)
