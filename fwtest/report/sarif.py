"""``--format sarif``: findings as SARIF 2.1.0, for code-scanning annotations.

One run of the tool ``fwtest``; one rule (reportingDescriptor) per finding kind
and flow (``fwtest/blocked/emergency-call``); one result per finding, located
at the ruleset file and the line of the rule that kills the packet, so that
GitHub code scanning puts the annotation on the changed line of the pull
request. Paths are written relative to the repository root (the nearest
directory above the current one holding ``.git``, else the current directory)
under the ``uriBaseId`` ``SRCROOT``, as SARIF 3.4.4 suggests and GitHub
expects; files outside it keep an absolute ``file:`` URI.

``partialFingerprints`` identify a finding across runs (SARIF 3.27.17): kind,
flow, transport, family, evidence, the killing rule's id and file, and the
dead packet's label and destination port, but not the line, so an alert
survives rules being added above it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from fwtest.api import Finding, Report
from fwtest.report._shared import BLOCKING, finding_headline, packet_text, row_title
from fwtest.report.table import rule_label

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "SRCROOT"
FINGERPRINT_KEY = "fwtestFinding/v1"

_RULE_TEXT = {
    "blocked": ("{flow} is blocked",
                "A packet of the emergency flow '{flow}' is dropped or rejected by the firewall rules, "
                "so this 911 call path does not work end to end."),
    "regression": ("{flow} regressed against the baseline",
                   "The emergency flow '{flow}' got through the baseline ruleset but is cut by this one: "
                   "the change under review breaks a 911 call path that worked."),
    "warning": ("{flow} needs attention",
                "Something about the emergency flow '{flow}' deserves a look (it does not block the call)."),
}


def render_sarif(report: Report | Sequence[Report]) -> str:
    """SARIF 2.1.0 JSON for one report (or several rulesets' reports, in one run)."""
    reports = [report] if isinstance(report, Report) else list(report)
    root = _source_root()
    rules: dict[str, dict] = {}
    index: dict[str, int] = {}
    results = []
    seen: dict[str, int] = {}
    for rep in reports:
        for f in rep.findings:
            rule_id = f"fwtest/{f.kind}/{f.flow}"
            if rule_id not in rules:
                index[rule_id] = len(rules)
                rules[rule_id] = _descriptor(rule_id, f)
            results.append(_result(rep, f, rule_id, index[rule_id], root, seen))
    run: dict = {
        "tool": {"driver": {"name": "fwtest", "version": _version(), "rules": list(rules.values())}},
        "originalUriBaseIds": {SRCROOT: {"uri": root.as_uri().rstrip("/") + "/"}},
        "invocations": [{"executionSuccessful": True,
                         "exitCode": max((r.exit_code for r in reports), default=0)}],
        "results": results,
        "properties": {"reports": [{"ruleset": r.ruleset, "profile": r.profile, "baseline": r.baseline,
                                    "result": r.result} for r in reports]},
    }
    log = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2) + "\n"


def _descriptor(rule_id: str, f: Finding) -> dict:
    short, full = _RULE_TEXT.get(f.kind, ("{flow}: " + f.kind, "fwtest finding of kind " + f.kind + " on '{flow}'."))
    return {
        "id": rule_id,
        "name": "".join(part.capitalize() for part in f"{f.kind}-{f.flow}".replace("_", "-").split("-")),
        "shortDescription": {"text": short.format(flow=f.flow)},
        "fullDescription": {"text": full.format(flow=f.flow)},
        "help": {"text": "fwtest replays and proves the emergency (911) call flows of the profile through the "
                         "ruleset. The result names the first packet that dies and the rule (file:line) "
                         "that kills it; `fwtest explain RULES PACKET` walks that packet rule by rule."},
        "defaultConfiguration": {"level": _level(f.kind)},
        "properties": {"tags": ["911", "emergency-path", "firewall", f.kind]},
    }


def _result(report: Report, f: Finding, rule_id: str, rule_index: int, root: Path,
            seen: dict[str, int]) -> dict:
    title = row_title(f.flow, f.transport, f.family)
    text = f"{finding_headline(f)}: {title}"
    text += f" {f.detail}." if f.detail else "."
    if f.packet:
        text += f" Packet: {packet_text(f.packet)}."
    result: dict = {
        "ruleId": rule_id,
        "ruleIndex": rule_index,
        "level": _level(f.kind),
        "message": {"text": text},
        "locations": [_location(report, f, root)],
        "partialFingerprints": {FINGERPRINT_KEY: _fingerprint(f, seen)},
        "properties": {k: v for k, v in (("flow", f.flow), ("transport", f.transport), ("family", f.family),
                                          ("evidence", f.evidence), ("packet", f.packet), ("rule", f.rule),
                                          ("detail", f.detail or None), ("ruleset", report.ruleset))
                       if v is not None},
    }
    return result


def _location(report: Report, f: Finding, root: Path) -> dict:
    rule = f.rule or {}
    # Without a rule file (a finding no rule decided), the ruleset itself is the place to look.
    file = rule.get("file") or report.ruleset.split(", ")[0]
    physical: dict = {"artifactLocation": _artifact(file, root)}
    line = rule.get("line")
    if isinstance(line, int) and line >= 1:
        physical["region"] = {"startLine": line}
    location: dict = {"physicalLocation": physical}
    if rule:
        location["message"] = {"text": rule_label(rule)}
    return location


def _artifact(file: str, root: Path) -> dict:
    path = Path(os.path.abspath(file))
    try:
        relative = path.relative_to(root)
    except ValueError:
        return {"uri": path.as_uri()}
    return {"uri": quote(relative.as_posix(), safe="/"), "uriBaseId": SRCROOT}


def _source_root() -> Path:
    """The repository root above the current directory, else the current directory."""
    cwd = Path(os.path.abspath(os.getcwd()))
    for directory in (cwd, *cwd.parents):
        if (directory / ".git").exists():
            return directory
    return cwd


def _fingerprint(f: Finding, seen: dict[str, int]) -> str:
    rule = f.rule or {}
    packet = f.packet or {}
    parts = [f.kind, f.flow, f.transport or "", str(f.family or ""), f.evidence,
             str(rule.get("id") or ""), str(rule.get("file") or ""), f.message,
             str(packet.get("proto", "")), str(packet.get("dport", "")), str(packet.get("fragment", ""))]
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    # Two findings alike in all of the above are told apart by their order, which is stable.
    seen[digest] = seen.get(digest, 0) + 1
    return digest if seen[digest] == 1 else f"{digest}:{seen[digest]}"


def _level(kind: str) -> str:
    return "error" if kind in BLOCKING else "warning"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fwtest")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"
