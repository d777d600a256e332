"""JUnit XML: parses back, one test case per flow row, failures carry the finding."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.api import Finding, Report
from fwtest.report._shared import xml_text
from fwtest.report.junit import render_junit


def parse(report) -> ET.Element:
    return ET.fromstring(render_junit(report).encode("utf-8"))


def cases(root: ET.Element) -> list[ET.Element]:
    return root.findall("./testsuite/testcase")


def assert_counts_consistent(root: ET.Element) -> None:
    """Every count attribute equals what the elements say, per suite and in total."""
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for suite in root.findall("testsuite"):
        tc = suite.findall("testcase")
        counts = {"tests": len(tc), "failures": sum(c.find("failure") is not None for c in tc),
                  "skipped": sum(c.find("skipped") is not None for c in tc)}
        assert {k: int(suite.get(k)) for k in counts} == counts
        assert suite.get("errors") == "0"
        for k in totals:
            totals[k] += counts[k]
    assert {k: int(root.get(k)) for k in totals} == totals


def test_one_case_per_flow_row_with_contract_names(broken_report):
    root = parse(broken_report)
    assert_counts_consistent(root)
    names = [(c.get("classname"), c.get("name")) for c in cases(root)]
    assert names == [
        ("fwtest.psap-edge.emergency-call", "emergency-call UDP IPv4"),
        ("fwtest.psap-edge.emergency-call", "emergency-call UDP IPv6"),
        ("fwtest.psap-edge.emergency-call", "emergency-call TCP IPv4"),
        ("fwtest.psap-edge.callback", "callback UDP IPv4"),
        ("fwtest.psap-edge.callback", "callback UDP IPv6"),
    ]
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("5", "2", "0")


def test_failure_says_where_it_broke_and_which_rule_killed_it(broken_report, kit):
    case = cases(parse(broken_report))[0]
    failure = case.find("failure")
    assert failure.get("type") == "blocked"
    message = failure.get("message")
    assert message.startswith("not set up: INVITE dies at drop-frag (rules.yaml:42)"), message
    # The body is the packet, and the rule's comment survives XML escaping intact.
    assert "udp 198.51.100.7:5060 > 203.0.113.10:5060" in failure.text
    assert kit.KILLER.comment in failure.text
    assert "2 of 2 call instances failed" in failure.text
    assert (case.get("file"), case.get("line")) == ("rules.yaml", "42")


def test_policy_kill_names_the_policy_line(broken_report):
    case = cases(parse(broken_report))[3]
    message = case.find("failure").get("message")
    assert "set up, but no audio from the callee to the PSAP" in message
    assert "policy (rules.yaml:3)" in message and case.get("line") == "3"


def test_passing_report_has_no_failures(passing_report):
    root = parse(passing_report)
    assert_counts_consistent(root)
    assert root.get("failures") == "0" and len(cases(root)) == 3
    assert all(c.find("failure") is None and c.find("skipped") is None for c in cases(root))


def test_loose_findings_get_their_own_cases(passing_report, loose_findings):
    report = Report(passing_report.ruleset, passing_report.profile, passing_report.flows,
                    passing_report.findings + loose_findings, stats=passing_report.stats)
    root = parse(report)
    assert_counts_consistent(root)
    extra = cases(root)[3:]
    assert len(extra) == 2
    proof, warning = extra
    assert proof.get("classname") == "fwtest.psap-edge.text"
    assert proof.find("failure").get("type") == "regression"
    assert "MSRP SEND newly dies at msrp-narrowed (rules.yaml:77)" in proof.find("failure").get("message")
    # A warning does not fail the build but stays visible: a skipped case with its message.
    assert warning.find("failure") is None and warning.get("name").startswith("warning: ")
    assert "rate limit" in warning.find("skipped").get("message")
    assert (root.get("failures"), root.get("skipped")) == ("1", "1")


def test_blocking_finding_on_a_replayed_row_fails_it(passing_report):
    """A proof that the UDP/IPv4 emergency call is blocked outranks a replay that got through."""
    proof = Finding(kind="blocked", flow="emergency-call", message="INVITE (later fragment)",
                    packet={"family": 4, "proto": "udp", "src": "198.51.100.7", "dst": "203.0.113.10",
                            "fragment": "later"},
                    rule={"id": "drop-frag", "file": "rules.yaml", "line": 42}, evidence="proof",
                    transport="udp", family=4)
    report = Report("rules.yaml", "psap-edge", passing_report.flows, [proof])
    case = cases(parse(report))[0]
    assert case.get("name") == "emergency-call UDP IPv4"
    assert "INVITE (later fragment) dies at drop-frag" in case.find("failure").get("message")


def test_row_failed_without_finding_still_fails(kit):
    report = kit.make_report([kit.judged(kit.call(), kit.kill_invite)])
    report.findings.clear()
    case = cases(parse(report))[0]
    assert "INVITE dies at drop-frag (rules.yaml:42)" in case.find("failure").get("message")


def test_several_reports_make_several_suites(broken_report, passing_report):
    root = ET.fromstring(render_junit([broken_report, passing_report]))
    assert_counts_consistent(root)
    assert len(root.findall("testsuite")) == 2 and root.get("tests") == "8"


def test_duplicate_names_stay_apart(kit):
    rows = kit.make_report([kit.judged(kit.call(), kit.kill_invite)])
    twin = Finding(kind="warning", flow="surge", message="INVITE", packet=None, rule=None, evidence="replay")
    report = Report(rows.ruleset, rows.profile, rows.flows, rows.findings + [twin, twin])
    names = [c.get("name") for c in cases(parse(report))]
    assert len(names) == len(set(names)) == 3


hostile = st.text(max_size=40)


@settings(max_examples=60)
@given(comment=hostile.filter(bool), file=hostile.filter(bool), rule_id=hostile, detail=hostile, flow=hostile.filter(bool))
def test_any_user_text_parses_back(kit, comment, file, rule_id, detail, flow):
    """Rule ids, comments and file names are user input: the XML stays well formed and
    the counts right whatever they hold (control characters are replaced)."""
    report = kit.make_report([kit.judged(kit.call(), kit.kill_invite)])
    report.findings[0] = Finding(kind="blocked", flow=report.findings[0].flow, message="INVITE",
                                 packet=report.findings[0].packet,
                                 rule={"id": rule_id, "file": file, "line": 7, "comment": comment},
                                 evidence="replay", transport="udp", family=4, detail=detail)
    report.findings.append(Finding(kind="warning", flow=flow, message=comment, packet=None,
                                   rule={"id": rule_id, "file": file, "line": 1}, evidence="trace"))
    root = parse(report)
    assert_counts_consistent(root)
    assert root.get("failures") == "1" and root.get("skipped") == "1"
    first = cases(root)[0]
    assert first.get("line") == "7"
    # XML parsers normalise line ends (XML 1.0 2.11); everything else comes back as written.
    expected = xml_text(comment).replace("\r\n", "\n").replace("\r", "\n")
    assert f"rule comment: {expected}" in first.find("failure").text
