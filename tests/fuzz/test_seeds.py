"""seeds/: every incident scenario runs, and fwtest still catches it.

For each seed: the base ruleset passes ``fwtest check`` and the proof; the candidate
(the breaking edit) fails ``fwtest check`` with the expected finding (kind, flow,
rule id, and message/transport/family where the seed names them), and the proof
finds it too. The folder layout and the README facts are checked as well.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fwtest.api import check
from fwtest.cli import main
from fwtest.fuzz import expected_finding_matches, fuzz, load_seeds, seed_class_edits
from fwtest.profile import load_profile
from fwtest.rules import load_ruleset

ROOT = Path(__file__).resolve().parents[2]
SEEDS = load_seeds(ROOT / "seeds")
SCENARIOS = {"2024-06-massachusetts-firewall", "fragmented-location-invite", "sip-helper-disabled",
             "options-keepalive-blocked", "udp-timeout-shorter-than-call", "rtp-range-narrowed", "ipv6-forgotten",
             "rate-limit-below-surge"}


def test_every_scenario_of_the_issue_is_there():
    assert {s.name for s in SEEDS} == SCENARIOS
    for seed in SEEDS:
        for name in ("README.md", "base.yaml", "candidate.yaml", "edit.txt", "expected.json"):
            assert (seed.folder / name).is_file(), f"{seed.name}/{name}"
        assert len((seed.folder / "edit.txt").read_text().strip().splitlines()) == 1
        assert seed.expected["class"]


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: s.name)
def test_base_passes_and_candidate_fails_with_the_expected_finding(seed):
    """fwtest check (replay and proof): the base passes, the candidate fails with the
    seed's finding, and the proof finds the candidate's break too."""
    profile = load_profile(seed.profile)
    base = check(str(seed.base), profile, analysis=False)
    assert base.result == "pass", [f.to_json() for f in base.findings]
    candidate = check(str(seed.candidate), profile, analysis=False)
    findings = [f.to_json() for f in candidate.findings]
    assert candidate.result == "fail"
    assert expected_finding_matches(seed.expected, findings), (dict(seed.expected), findings)
    assert seed.expected["rule"] in {f["rule"]["id"] for f in findings if f["evidence"] == "proof"}
    # The finding names the rule where the candidate file writes it.
    hit = next(f for f in findings if f["rule"]["id"] == seed.expected["rule"] and f["flow"] == seed.expected["flow"])
    assert hit["rule"]["file"] == str(seed.candidate)
    line = seed.candidate.read_text().splitlines()[hit["rule"]["line"] - 1]
    assert re.search(rf"id:\s*{re.escape(seed.expected['rule'])}\b", line), line


def test_the_cli_exits_1_on_a_candidate_and_0_on_its_base(capsys):
    seed = next(s for s in SEEDS if s.name == "sip-helper-disabled")     # the one with its own profile
    assert main(["check", str(seed.base), "--profile", str(seed.profile), "--format", "json"]) == 0
    assert main(["check", str(seed.candidate), "--profile", str(seed.profile), "--format", "json"]) == 1
    capsys.readouterr()


def test_massachusetts_readme_keeps_to_the_public_facts():
    text = (ROOT / "seeds" / "2024-06-massachusetts-firewall" / "README.md").read_text()
    for fact in ("18 June 2024", "1:15 PM", "3:15 PM", "about two hours", "Comtech", "not a cyberattack",
                 "under review"):
        assert fact in text, fact
    assert "not public" in text.lower() or "does not know what the change was" in text
    # The modelled edit is presented as a class, not as the cause.
    assert "class" in text and "does not claim to reproduce it" in text


def test_other_readmes_say_they_describe_a_class():
    for seed in SEEDS:
        if seed.name.startswith("2024-06"):
            continue
        text = (seed.folder / "README.md").read_text()
        assert "A class of failure, not one dated incident." in text, seed.name


def test_the_helper_seed_says_what_is_not_modelled():
    text = (ROOT / "seeds" / "sip-helper-disabled" / "README.md").read_text()
    assert "Not modelled" in text and "nf_nat_sip" in text


def test_fuzz_starts_from_the_seeds(tmp_path):
    """``fwtest fuzz --seeds DIR``: every scenario still caught, and each incident class
    applied to the ruleset fuzzed; the classes that break it are breaking edits.
    (Two of the seeds, copied, to keep the test short; the CLI passes seeds/.)"""
    import shutil

    picked = ("2024-06-massachusetts-firewall", "sip-helper-disabled")
    shutil.copy(ROOT / "seeds" / "profile.yaml", tmp_path / "profile.yaml")
    for name in picked:
        shutil.copytree(ROOT / "seeds" / name, tmp_path / name)
    rules = load_ruleset(str(ROOT / "rulesets" / "psap-edge.yaml"))
    profile = load_profile(str(ROOT / "rulesets" / "psap-edge.profile.yaml"))
    report = fuzz(rules, profile, mode="scan", kinds=["delete"], seeds=tmp_path)
    assert {s.name for s in report.seeds} == set(picked) and all(s.caught for s in report.seeds)
    by_name = {s.name: s for s in report.seeds}
    assert by_name["2024-06-massachusetts-firewall"].on_ruleset.startswith("breaks emergency-call")
    assert by_name["sip-helper-disabled"].on_ruleset.startswith("not applicable")
    from_seeds = [b for b in report.breaking_edits if b.source.startswith("seed ")]
    assert {b.source for b in from_seeds} == {"seed 2024-06-massachusetts-firewall"}
    for b in from_seeds:
        assert b.finding is not None
    # Ground truth for one class: the Massachusetts-class deny really blocks the reference ruleset.
    what, candidate, edits = seed_class_edits("deny-above-allow", rules, profile)
    assert "198.51.100.0/23" in what and check(candidate, profile, proof=False, analysis=False).result == "fail"
    # psap-edge tracks connections: fragments are reassembled before its rules.
    what, candidate, _ = seed_class_edits("drop-fragments", rules, profile)
    assert check(candidate, profile, proof=False, analysis=False).result == "pass"
    assert json.loads(json.dumps(report.to_json()))["seeds"]
