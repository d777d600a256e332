"""The Python API behind ``fwtest check``: rulesets and profiles in, a verdict out.

``check(ruleset, profile)`` takes paths, plain dicts (same structure as the
YAML files) or loaded objects, so automation never writes temporary files.
The CLI is a thin shell over this module.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fwtest.engine.outcome import FlowOutcome, judge, severity
from fwtest.engine.verdict import Verdict
from fwtest.errors import InputError
from fwtest.profile import EmergencyProfile, load_profile
from fwtest.rules import load_ruleset
from fwtest.rules.ir import Ruleset, Source
from fwtest.traffic.callflow import CallFlow

RulesetLike = Ruleset | Mapping[str, Any] | str | Path | Sequence[str | Path]
ProfileLike = EmergencyProfile | Mapping[str, Any] | str | Path


@dataclass(frozen=True)
class Finding:
    """One thing wrong with the emergency path (JSON report contract keys first)."""

    kind: str                    # blocked | regression | warning
    flow: str
    message: str                 # the packet that died, as a call-flow diagram labels it ("INVITE")
    packet: dict | None
    rule: dict | None            # {"id", "file", "line"} of the deciding rule or policy
    evidence: str                # replay | proof | trace | kernel
    transport: str | None = None
    family: int | None = None
    detail: str = ""             # where the flow broke, in words

    def to_json(self) -> dict:
        out = {"kind": self.kind, "flow": self.flow, "message": self.message, "packet": self.packet,
               "rule": self.rule, "evidence": self.evidence}
        if self.transport is not None:
            out["transport"] = self.transport
        if self.family is not None:
            out["family"] = self.family
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class FlowResult:
    """One row of the flow table: a profile flow over one transport and family."""

    flow: str
    transport: str
    family: int
    outcomes: tuple[FlowOutcome, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def failed(self) -> tuple[FlowOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.passed)

    @property
    def first_failure(self) -> FlowOutcome | None:
        """The worst failed instance (a call that never set up before one with clipped audio)."""
        return min(self.failed, key=severity) if self.failed else None


@dataclass
class Report:
    ruleset: str
    profile: str
    flows: list[FlowResult]
    findings: list[Finding]
    baseline: str | None = None
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)       # what the reader must know (e.g. no baseline at REV)
    baseline_report: Report | None = None                # the baseline's own check, for diff views

    @property
    def result(self) -> str:
        return "fail" if any(f.kind in ("blocked", "regression") for f in self.findings) else "pass"

    @property
    def exit_code(self) -> int:
        return 0 if self.result == "pass" else 1

    def to_json(self) -> dict:
        out = {"result": self.result, "ruleset": self.ruleset, "baseline": self.baseline,
               "profile": self.profile, "findings": [f.to_json() for f in self.findings],
               "stats": self.stats}
        if self.notes:
            out["notes"] = self.notes
        return out


def rule_ref(verdict: Verdict) -> dict | None:
    """The JSON ``rule`` object of a verdict: the rule, or the policy that decided."""
    if verdict.rule is not None:
        ref = {"id": verdict.rule.id, "file": verdict.rule.source.file, "line": verdict.rule.source.line}
        if verdict.rule.comment:
            ref["comment"] = verdict.rule.comment
        return ref
    if verdict.source is not None:
        return {"id": "policy", "file": verdict.source.file, "line": verdict.source.line,
                "reason": verdict.reason}
    return {"id": None, "file": None, "line": None, "reason": verdict.reason} if verdict.reason else None


def where(verdict: Verdict | None) -> Source | None:
    return None if verdict is None else verdict.source


def replay_flows(ruleset: Ruleset, profile: EmergencyProfile,
                 flows: Sequence[CallFlow]) -> list[FlowOutcome]:
    """Judge every synthetic flow through the model.

    Each flow starts from a fresh firewall (empty conntrack table, full token
    buckets): a callback hours after the call finds no state to ride on, and
    that is the case the path must survive. Surge calls are the exception:
    they share one firewall and one timeline, since a surge is exactly many
    calls meeting the same rate limits at once.
    """
    from fwtest.engine import replay

    hooks = profile.hooks()
    sip_ports = sip_helper_ports(profile)
    outcomes: dict[int, FlowOutcome] = {}
    surge = [i for i, f in enumerate(flows) if f.flow == "surge"]
    for i, flow in enumerate(flows):
        if flow.flow == "surge":
            continue
        verdicts = replay(ruleset, [s.record for s in flow.steps],
                          [hooks[s.direction] for s in flow.steps],
                          native_hook=profile.firewall, sip_ports=sip_ports)
        outcomes[i] = judge(flow, verdicts)
    if surge:
        timeline = sorted(((s.record.ts, i, j) for i in surge for j, s in enumerate(flows[i].steps)))
        verdicts = replay(ruleset, [flows[i].steps[j].record for _, i, j in timeline],
                          [hooks[flows[i].steps[j].direction] for _, i, j in timeline],
                          native_hook=profile.firewall, sip_ports=sip_ports)
        per_flow: dict[int, list] = {i: [None] * len(flows[i].steps) for i in surge}
        for (_, i, j), v in zip(timeline, verdicts, strict=True):
            per_flow[i][j] = v
        for i in surge:
            outcomes[i] = judge(flows[i], per_flow[i])
    return [outcomes[i] for i in range(len(flows))]


def sip_helper_ports(profile: EmergencyProfile) -> tuple[int, ...]:
    """Ports the kernel's SIP helper watches: the cleartext SIP ports (it cannot read TLS)."""
    return tuple(sorted({port for transport, port in profile.sip.items() if transport != "tls"}))


def group(outcomes: Sequence[FlowOutcome]) -> list[FlowResult]:
    rows: dict[tuple[str, str, int], list[FlowOutcome]] = {}
    for o in outcomes:
        rows.setdefault(o.flow.key, []).append(o)
    return [FlowResult(flow, transport, family, tuple(os)) for (flow, transport, family), os in rows.items()]


def replay_findings(rows: Sequence[FlowResult]) -> list[Finding]:
    findings = []
    for row in rows:
        bad = row.first_failure
        if bad is None:
            continue
        findings.append(Finding(
            kind="blocked", flow=row.flow, message=bad.first_dead.label,
            packet=bad.first_dead.record.describe(), rule=rule_ref(bad.verdict), evidence="replay",
            transport=row.transport, family=row.family,
            detail=f"{bad.broke} ({len(row.failed)}/{len(row.outcomes)} instances; {bad.flow.instance})"))
    return findings


def load_baseline(specs: Sequence[str | Path] | RulesetLike, rules: RulesetLike) -> tuple[Ruleset | None, str, list[str]]:
    """The baseline ruleset, its label, and notes.

    ``git:REV`` reads each of the checked ruleset's files at REV (the same
    path); ``git:REV:path`` one named file. A file absent at REV (a ruleset
    added by this change) leaves nothing to compare: the result is None and a
    note says so, and only the profile check applies.
    """
    from fwtest.gitsource import is_git_spec, read_git_file
    from fwtest.rules import merge, parse_ruleset

    if isinstance(specs, (Ruleset, Mapping)):
        rs = load_ruleset(specs)
        return rs, ", ".join(rs.files) or rs.name, []
    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    rule_paths = [str(r) for r in ([rules] if isinstance(rules, (str, Path)) else
                                   rules if isinstance(rules, Sequence) else [])]
    parts, labels, notes = [], [], []
    for spec in map(str, specs):
        if not is_git_spec(spec):
            parts.append(load_ruleset(spec))
            labels.append(spec)
            continue
        has_path = spec.count(":") >= 2
        for path in ([None] if has_path else rule_paths) or [None]:
            if path is None and not has_path:
                raise InputError(spec, 0, "git:REV needs the ruleset to be a file path (or use git:REV:path)")
            got = read_git_file(spec, path or "")
            if got.text is None:
                notes.append(f"{got.path} does not exist at {got.rev}: a new ruleset, no regression check")
                continue
            parts.append(parse_ruleset(got.text, got.label))
            labels.append(got.label)
    if not parts:
        return None, ", ".join(map(str, specs)), notes
    return merge(parts), ", ".join(labels), notes


def regression_findings(rows: Sequence[FlowResult], base_rows: Sequence[FlowResult],
                        findings: list[Finding]) -> list[Finding]:
    """A blocked flow that the baseline carried is a regression: this change broke it."""
    carried = {(r.flow, r.transport, r.family) for r in base_rows if r.passed}
    out = []
    for f in findings:
        if f.kind == "blocked" and (f.flow, f.transport, f.family) in carried:
            f = Finding("regression", f.flow, f.message, f.packet, f.rule, f.evidence, f.transport, f.family,
                        f.detail)
        out.append(f)
    return out


def check(ruleset: RulesetLike, profile: ProfileLike, *, baseline: RulesetLike | Sequence[str] | None = None,
          traces: Sequence[str | Path] = (), seed: int = 0) -> Report:
    """Run the emergency profile through the ruleset; the report says pass or fail and why."""
    from fwtest.traffic.synth import synthesize

    started = time.perf_counter()
    rs = load_ruleset(ruleset)
    prof = profile if isinstance(profile, EmergencyProfile) else load_profile(profile)
    flows = synthesize(prof, seed=seed)
    synthesized = time.perf_counter()
    rows = group(replay_flows(rs, prof, flows))
    findings = replay_findings(rows)
    done = time.perf_counter()
    report = Report(
        ruleset=", ".join(rs.files) or rs.name, profile=prof.name, flows=rows, findings=findings,
        stats={"flows": len(rows), "calls": len(flows), "packets": sum(len(f.steps) for f in flows),
               "synth_seconds": round(synthesized - started, 3),
               "replay_seconds": round(done - synthesized, 3)})
    if traces:
        from fwtest.replay import replay_capture, trace_findings

        replays = [replay_capture(rs, pcap, prof) for pcap in traces]
        report.findings.extend(trace_findings(replays, prof))
        report.stats["trace_packets"] = sum(r.packets for r in replays)
        report.stats["trace_calls"] = sum(len(r.reconstruction.calls) for r in replays)
    if baseline:
        base_rs, label, notes = load_baseline(baseline, ruleset)
        report.baseline = label
        report.notes.extend(notes)
        if base_rs is not None:
            base_rows = group(replay_flows(base_rs, prof, flows))
            report.baseline_report = Report(ruleset=label, profile=prof.name, flows=base_rows,
                                            findings=replay_findings(base_rows))
            report.findings = regression_findings(rows, base_rows, report.findings)
    return report
