"""SARIF 2.1.0: valid against the OASIS schema, one result per finding on the killing
rule's line, fingerprints stable across runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.api import Finding, Report
from fwtest.report.sarif import SRCROOT, render_sarif

# The OASIS SARIF 2.1.0 (errata 01) schema, vendored: tests/data/sarif-2.1.0.json.
SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "data" / "sarif-2.1.0.json").read_text())
VALIDATOR = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A checkout: a .git directory and the ruleset at its root; fwtest runs in a subdirectory."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "rules.yaml").write_text("policy: drop\n")
    (tmp_path / "ci").mkdir()
    monkeypatch.chdir(tmp_path / "ci")
    return tmp_path


def sarif(report) -> dict:
    doc = json.loads(render_sarif(report))
    VALIDATOR.validate(doc)
    return doc


def with_ruleset_path(report: Report, path: str) -> Report:
    """The same report as if the ruleset had been given as ``path``."""
    findings = []
    for f in report.findings:
        rule = dict(f.rule, file=path) if f.rule else None
        findings.append(Finding(f.kind, f.flow, f.message, f.packet, rule, f.evidence, f.transport,
                                f.family, f.detail))
    return Report(path, report.profile, report.flows, findings, report.baseline, report.stats)


def test_valid_and_one_result_per_finding(repo, broken_report, loose_findings):
    report = with_ruleset_path(broken_report, str(repo / "rules.yaml"))
    report.findings.extend(loose_findings)
    doc = sarif(report)
    assert doc["version"] == "2.1.0" and len(doc["runs"]) == 1
    run = doc["runs"][0]
    assert run["tool"]["driver"]["name"] == "fwtest"
    assert len(run["results"]) == len(report.findings) == 4
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["fwtest/blocked/emergency-call", "fwtest/blocked/callback",
                                        "fwtest/regression/text", "fwtest/warning/surge"]
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
    assert [r["level"] for r in run["results"]] == ["error", "error", "error", "warning"]


def test_result_sits_on_the_killing_rule_line_relative_to_the_repo_root(repo, broken_report):
    doc = sarif(with_ruleset_path(broken_report, str(repo / "rules.yaml")))
    run = doc["runs"][0]
    assert run["originalUriBaseIds"][SRCROOT]["uri"] == repo.as_uri() + "/"
    first = run["results"][0]["locations"][0]["physicalLocation"]
    assert first["artifactLocation"] == {"uri": "rules.yaml", "uriBaseId": SRCROOT}
    assert first["region"] == {"startLine": 42}
    policy = run["results"][1]["locations"][0]["physicalLocation"]
    assert policy["region"] == {"startLine": 3}
    message = run["results"][0]["message"]["text"]
    assert message.startswith("INVITE dies at drop-frag") and "not set up" in message
    assert "udp 198.51.100.7:5060 > 203.0.113.10:5060" in message


def test_relative_ruleset_path_is_resolved_from_the_current_directory(repo, broken_report):
    (repo / "ci" / "fw").mkdir()
    doc = sarif(with_ruleset_path(broken_report, "fw/edge rules.yaml"))
    location = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "ci/fw/edge%20rules.yaml", "uriBaseId": SRCROOT}


def test_file_outside_the_repo_gets_an_absolute_uri(repo, tmp_path_factory, broken_report):
    outside = tmp_path_factory.mktemp("elsewhere") / "rules.v4"
    doc = sarif(with_ruleset_path(broken_report, str(outside)))
    location = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": outside.as_uri()}


def test_fingerprints_are_stable_and_ignore_the_line(repo, broken_report):
    first = sarif(broken_report)["runs"][0]["results"]
    again = sarif(broken_report)["runs"][0]["results"]
    assert [r["partialFingerprints"] for r in first] == [r["partialFingerprints"] for r in again]
    values = [v for r in first for v in r["partialFingerprints"].values()]
    assert len(values) == len(set(values))

    moved = copy.deepcopy(broken_report)  # a rule inserted above the killer moves it down
    moved.findings[0] = Finding(**{**moved.findings[0].__dict__, "rule": dict(moved.findings[0].rule, line=50)})
    shifted = sarif(moved)["runs"][0]["results"]
    assert shifted[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 50
    assert shifted[0]["partialFingerprints"] == first[0]["partialFingerprints"]

    other = copy.deepcopy(broken_report)  # a different rule kills it: a different alert
    other.findings[0] = Finding(**{**other.findings[0].__dict__, "rule": dict(other.findings[0].rule, id="x")})
    assert sarif(other)["runs"][0]["results"][0]["partialFingerprints"] != first[0]["partialFingerprints"]


def test_passing_report_has_no_results(repo, passing_report):
    run = sarif(passing_report)["runs"][0]
    assert run["results"] == [] and run["tool"]["driver"]["rules"] == []
    assert run["invocations"][0]["exitCode"] == 0


def test_finding_without_rule_is_located_at_the_ruleset(repo, passing_report):
    lost = Finding(kind="blocked", flow="text", message="MSRP SEND", packet=None,
                   rule={"id": None, "file": None, "line": None, "reason": "fragment never completed"},
                   evidence="kernel")
    report = Report(str(repo / "rules.yaml"), "psap-edge", passing_report.flows, [lost])
    location = sarif(report)["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert location == {"artifactLocation": {"uri": "rules.yaml", "uriBaseId": SRCROOT}}


def test_schema_rejects_what_it_should(repo, broken_report):
    """The vendored schema does constrain: a result without message, or a made-up level, fails."""
    doc = json.loads(render_sarif(broken_report))
    bad = copy.deepcopy(doc)
    del bad["runs"][0]["results"][0]["message"]
    assert not VALIDATOR.is_valid(bad)
    bad = copy.deepcopy(doc)
    bad["runs"][0]["results"][0]["level"] = "fatal"
    assert not VALIDATOR.is_valid(bad)
    bad = copy.deepcopy(doc)
    bad["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    assert not VALIDATOR.is_valid(bad)


def test_several_reports_share_one_run(repo, broken_report, passing_report):
    doc = json.loads(render_sarif([broken_report, passing_report]))
    VALIDATOR.validate(doc)
    assert len(doc["runs"]) == 1 and len(doc["runs"][0]["results"]) == 2
    assert doc["runs"][0]["invocations"][0]["exitCode"] == 1


@settings(max_examples=50)
@given(text=st.text(max_size=30), line=st.integers(min_value=-3, max_value=10**6))
def test_any_user_text_stays_valid(shared_broken_report, text, line):
    broken_report = shared_broken_report
    f = broken_report.findings[0]
    odd = Finding(f.kind, text or "x", text, f.packet,
                  {"id": text, "file": text or "rules.yaml", "line": line, "comment": text},
                  f.evidence, f.transport, f.family, text)
    report = Report(broken_report.ruleset, text, broken_report.flows, [odd])
    doc = sarif(report)
    region = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"].get("region")
    assert region == ({"startLine": line} if line >= 1 else None)
