"""``--format junit``: the flow table as JUnit XML, for the test views of CI systems.

One test case per flow x transport x family (``classname="fwtest.<profile>.<flow>"``,
``name="<flow> <TRANSPORT> <family>"``); a blocked or regressed flow is a
``<failure>`` whose message says where the call broke and which rule (file:line)
killed it, and whose body is the packet. Findings that name no flow row (a
proof over a whole flow, a regression from the baseline diff) get their own
test case.

Warnings become ``<skipped>`` test cases. A warning must not fail the build,
and the JUnit views of GitHub (the common junit report actions), GitLab and
Jenkins all count and list skipped cases separately, with their message; the
output of a *passed* case, by contrast, is hidden in all three unless someone
opens that one case. The case name starts with ``warning:`` so nobody reads it
as "not run".

The XML follows the Ant/Surefire dialect these consumers share: a
``<testsuites>`` root with one ``<testsuite>`` per ruleset report. Test cases
also carry ``file`` and ``line`` of the killing rule, which GitLab shows and
GitHub annotation actions turn into a mark on that line.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from fwtest.api import Finding, FlowResult, Report, rule_ref
from fwtest.report._shared import (
    BLOCKING,
    finding_body,
    finding_headline,
    row_failed,
    row_key,
    row_title,
    split_findings,
    xml_text,
)
from fwtest.report.table import rule_label


def render_junit(report: Report | Sequence[Report]) -> str:
    """JUnit XML for one report (or several rulesets' reports, one test suite each)."""
    reports = [report] if isinstance(report, Report) else list(report)
    root = ET.Element("testsuites", name="fwtest")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    seconds = 0.0
    for rep in reports:
        suite, counts, suite_seconds = _suite(rep)
        root.append(suite)
        for k in totals:
            totals[k] += counts[k]
        seconds += suite_seconds
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("skipped", str(totals["skipped"]))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(report: Report) -> tuple[ET.Element, dict[str, int], float]:
    by_row, loose = split_findings(report)
    seconds = float(report.stats.get("synth_seconds", 0) or 0) + float(report.stats.get("replay_seconds", 0) or 0)
    suite = ET.Element("testsuite", name=_x(f"fwtest.{report.profile}"))
    props = ET.SubElement(suite, "properties")
    for name, value in (("ruleset", report.ruleset), ("profile", report.profile),
                        ("baseline", report.baseline or ""), ("result", report.result)):
        ET.SubElement(props, "property", name=name, value=_x(value))

    counts = {"tests": 0, "failures": 0, "skipped": 0}
    names: set[tuple[str, str]] = set()
    for row in report.flows:
        findings = by_row.get(row_key(row), [])
        case = _row_case(report, row, findings, names)
        suite.append(case)
        counts["tests"] += 1
        counts["failures"] += case.find("failure") is not None
    for f in loose:
        case = _finding_case(report, f, names)
        suite.append(case)
        counts["tests"] += 1
        counts["failures"] += case.find("failure") is not None
        counts["skipped"] += case.find("skipped") is not None

    suite.set("tests", str(counts["tests"]))
    suite.set("failures", str(counts["failures"]))
    suite.set("errors", "0")
    suite.set("skipped", str(counts["skipped"]))
    suite.set("time", f"{seconds:.3f}")
    return suite, counts, seconds


def _row_case(report: Report, row: FlowResult, findings: list[Finding], names: set) -> ET.Element:
    classname = f"fwtest.{report.profile}.{row.flow}"
    case = _case(classname, row_title(row.flow, row.transport, row.family), names)
    blocking = [f for f in findings if f.kind in BLOCKING]
    if row_failed(row, findings):
        if blocking:
            first = blocking[0]
            message = f"{row.first_failure.broke}: " if row.first_failure else ""
            message += finding_headline(first)
            body = "\n\n".join(finding_body(f) for f in blocking)
            rule = first.rule
        else:
            # The engine says the row failed but no finding names it: report the
            # outcome itself rather than let a red row go quiet.
            bad = row.first_failure
            rule = rule_ref(bad.verdict) if bad.verdict is not None else None
            label = rule_label(rule)
            message = f"{bad.broke}: {bad.first_dead.label} dies" + (f" at {label}" if label else "")
            body = f"packet: {bad.first_dead.record.short()}"
        bad = row.first_failure
        if bad is not None:
            body += (f"\n\n{len(row.failed)} of {len(row.outcomes)} call instances failed. First: "
                     f"{bad.flow.instance}, {bad.dead} of its {len(bad.flow.steps)} packets dropped.")
        failure = ET.SubElement(case, "failure", message=_x(message), type=blocking[0].kind if blocking else "blocked")
        failure.text = _x(body)
        _locate(case, rule)
    warnings = [f for f in findings if f.kind not in BLOCKING]
    out = [f"{len(row.outcomes)} call instances replayed; "
           f"{sum(o.passed for o in row.outcomes)} got through end to end"]
    out += [finding_body(f) for f in warnings]
    ET.SubElement(case, "system-out").text = _x("\n\n".join(out))
    return case


def _finding_case(report: Report, f: Finding, names: set) -> ET.Element:
    classname = f"fwtest.{report.profile}.{f.flow}"
    title = row_title(f.flow, f.transport, f.family)
    if f.kind in BLOCKING:
        case = _case(classname, f"{title} [{f.kind} {f.evidence}] {f.message}", names)
        message = finding_headline(f) + (f": {f.detail}" if f.detail else "")
        failure = ET.SubElement(case, "failure", message=_x(message), type=f.kind)
        failure.text = _x(finding_body(f))
    else:
        case = _case(classname, f"warning: {title} [{f.evidence}] {f.message}", names)
        message = finding_headline(f) + (f": {f.detail}" if f.detail else "")
        ET.SubElement(case, "skipped", message=_x(message))
        ET.SubElement(case, "system-out").text = _x(finding_body(f))
    _locate(case, f.rule)
    return case


def _case(classname: str, name: str, names: set[tuple[str, str]]) -> ET.Element:
    # Consumers merge test cases of the same classname and name; keep each one apart.
    unique, n = name, 1
    while (classname, unique) in names:
        n += 1
        unique = f"{name} #{n}"
    names.add((classname, unique))
    return ET.Element("testcase", classname=_x(classname), name=_x(unique))


def _locate(case: ET.Element, rule: dict | None) -> None:
    if rule and rule.get("file"):
        case.set("file", _x(rule["file"]))
        if rule.get("line"):
            case.set("line", str(rule["line"]))


def _x(value: object) -> str:
    return xml_text(value)
