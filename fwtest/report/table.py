"""The terminal report: one row per flow x transport x family, then the findings."""

from __future__ import annotations

import os
from typing import TextIO

from tabulate import tabulate

from fwtest.api import Finding, Report

FAMILY = {4: "IPv4", 6: "IPv6"}


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if colour else text


def rule_label(rule: dict | None) -> str:
    if not rule:
        return ""
    rid = rule.get("id")
    where = f"{rule['file']}:{rule['line']}" if rule.get("file") else ""
    if rid == "policy":
        text = f"policy ({where})" if where else "policy"
        return f"{text}: {rule['reason']}" if rule.get("reason") else text
    if rid is None:
        return rule.get("reason", "")
    return f"{rid} ({where})" if where else str(rid)


def render_table(report: Report, *, colour: bool = False) -> str:
    rows = []
    for row in report.flows:
        bad = row.first_failure
        if bad is None:
            result = _paint("PASS", "32", colour)
            rows.append([row.flow, row.transport.upper(), FAMILY[row.family], result, "", "", ""])
            continue
        finding_rule = _rule_of(report.findings, row.flow, row.transport, row.family)
        rows.append([row.flow, row.transport.upper(), FAMILY[row.family], _paint("BLOCKED", "1;31", colour),
                     bad.broke, f"{bad.first_dead.label}: {bad.first_dead.record.short()}",
                     rule_label(finding_rule)])
    lines = [f"fwtest: {report.ruleset} against profile '{report.profile}'"]
    if report.baseline:
        lines[0] += f" (baseline {report.baseline})"
    lines.append("")
    lines.append(tabulate(rows, headers=["Flow", "Transport", "Family", "Result", "Where it broke",
                                         "Packet that died", "Killed by"], tablefmt="simple"))
    other = [f for f in report.findings if f.evidence not in ("replay", "kernel") or f.kind != "blocked"]
    if other:
        lines += ["", "Findings:"]
        for f in other:
            lines.append(f"  {f.kind.upper()} [{f.evidence}] {f.flow}: {f.message}"
                         f"{' - ' + f.detail if f.detail else ''}  {rule_label(f.rule)}")
    if report.analysis is not None:
        lines += ["", *analysis_lines(report.analysis)]
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append("")
    blocked = sum(not r.passed for r in report.flows)
    verdict = (_paint("PASS", "1;32", colour) + ": the emergency path is intact"
               if report.result == "pass"
               else _paint("FAIL", "1;31", colour) + f": {blocked} of {len(report.flows)} flows blocked"
               + (f", {len(report.findings)} findings" if report.findings else ""))
    stats = report.stats
    lines.append(f"{verdict} ({stats.get('calls', 0)} synthetic calls, {stats.get('packets', 0)} packets)")
    return "\n".join(lines) + "\n"


def analysis_lines(analysis: dict) -> list[str]:
    """Rule analysis in a few lines: what the path leans on, and dead weight."""
    def names(notes: list[dict]) -> str:
        return ", ".join(f"{n['id']} (line {n['line']})" for n in notes) or "none"

    out = [f"Load-bearing rules (the path breaks without them): {names(analysis['load_bearing'])}"]
    if analysis["shadowed"]:
        out.append(f"Shadowed rules (never decide a packet): {names(analysis['shadowed'])}")
    if analysis["redundant"]:
        out.append(f"Redundant rules (removing them changes nothing): {names(analysis['redundant'])}")
    return out


def _rule_of(findings: list[Finding], flow: str, transport: str, family: int) -> dict | None:
    for f in findings:
        if f.flow == flow and f.transport == transport and f.family == family and f.evidence in ("replay", "kernel"):
            return f.rule
    return None
