"""The Python API behind ``fwtest check``: rulesets and profiles in, a verdict out.

``check(ruleset, profile)`` takes paths, plain dicts (same structure as the
YAML files) or loaded objects, so automation never writes temporary files.
The CLI is a thin shell over this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fwtest.engine.outcome import FlowOutcome, judge, severity
from fwtest.engine.verdict import Verdict
from fwtest.errors import InputError
from fwtest.profile import EmergencyProfile, load_profile
from fwtest.rules import load_ruleset
from fwtest.rules.ir import Ruleset
from fwtest.traffic.callflow import CallFlow
from fwtest.traffic.record import PacketRecord

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
    extra: dict = field(default_factory=dict, compare=False)   # evidence-specific keys (region, witnesses...)

    def to_json(self) -> dict:
        out = {"kind": self.kind, "flow": self.flow, "message": self.message, "packet": self.packet,
               "rule": self.rule, "evidence": self.evidence}
        if self.transport is not None:
            out["transport"] = self.transport
        if self.family is not None:
            out["family"] = self.family
        if self.detail:
            out["detail"] = self.detail
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict) -> Finding:
        """A finding from the proof's JSON objects (``fwtest.space``): contract keys, the rest as extra."""
        known = ("kind", "flow", "message", "packet", "rule", "evidence", "transport", "family", "detail")
        return cls(data["kind"], data["flow"], data["message"], data.get("packet"), data.get("rule"),
                   data["evidence"], data.get("transport"), data.get("family"), data.get("detail", ""),
                   {k: v for k, v in data.items() if k not in known})


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
    analysis: dict | None = None                         # load-bearing / shadowed / redundant rules
    proof: object | None = field(default=None, repr=False)      # fwtest.space.Proof, for witnesses
    diff: object | None = field(default=None, repr=False)       # fwtest.space.Diff against the baseline

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
        if self.analysis is not None:
            out["analysis"] = self.analysis
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



Runner = Callable[[Sequence[PacketRecord], Sequence[str]], list[Verdict]]


def replay_flows(ruleset: Ruleset, profile: EmergencyProfile, flows: Sequence[CallFlow],
                 runner: Runner | None = None) -> list[FlowOutcome]:
    """Judge every synthetic flow through the model (or through ``runner``).

    Each flow starts from a fresh firewall (empty conntrack table, full token
    buckets): a callback hours after the call finds no state to ride on, and
    that is the case the path must survive. Surge calls are the exception:
    they share one firewall and one timeline, since a surge is exactly many
    calls meeting the same rate limits at once. ``runner(records, directions)``
    gives one verdict per record from a fresh firewall (the kernel oracle).
    """
    if runner is None:
        runner = model_runner(ruleset, profile)
    outcomes: dict[int, FlowOutcome] = {}
    surge = [i for i, f in enumerate(flows) if f.flow == "surge"]
    for i, flow in enumerate(flows):
        if flow.flow != "surge":
            outcomes[i] = judge(flow, runner([s.record for s in flow.steps], [s.direction for s in flow.steps]))
    if surge:
        timeline = sorted(((s.record.ts, i, j) for i in surge for j, s in enumerate(flows[i].steps)))
        verdicts = runner([flows[i].steps[j].record for _, i, j in timeline],
                          [flows[i].steps[j].direction for _, i, j in timeline])
        per_flow: dict[int, list] = {i: [None] * len(flows[i].steps) for i in surge}
        for (_, i, j), v in zip(timeline, verdicts, strict=True):
            per_flow[i][j] = v
        for i in surge:
            outcomes[i] = judge(flows[i], per_flow[i])
    return [outcomes[i] for i in range(len(flows))]


def model_runner(ruleset: Ruleset, profile: EmergencyProfile, *, compress: bool = False) -> Runner:
    """The engine as a runner; ``compress`` replays on the kernel oracle's back-to-back timeline."""
    from fwtest.engine import Engine

    hooks = profile.hooks()
    # Compiled once; each run starts from an empty state (Engine.run resets it).
    engine = Engine(ruleset, native_hook=profile.firewall, sip_ports=profile.sip_helper_ports)

    def run(records: Sequence[PacketRecord], directions: Sequence[str]) -> list[Verdict]:
        if compress:
            from fwtest.oracle import compress_timeline
            records = compress_timeline(records)
        return engine.run(records, [hooks[d] for d in directions])
    return run


def kernel_disagreements(flows: Sequence[CallFlow], model: Sequence[FlowOutcome],
                         kernel: Sequence[FlowOutcome]) -> list[Finding]:
    """Every packet on which the model and the kernel disagree: a bug in one of them, so a failure."""
    out = []
    for flow, m, k in zip(flows, model, kernel, strict=True):
        for step, mv, kv in zip(flow.steps, m.verdicts, k.verdicts, strict=True):
            if mv.verdict != kv.verdict:
                out.append(Finding(
                    "blocked", flow.flow, step.label, step.record.describe(), rule_ref(mv), "kernel",
                    flow.transport, flow.family,
                    f"model and kernel disagree: model {mv.verdict}, kernel {kv.verdict} ({kv.reason}); "
                    f"{flow.instance}"))
                break  # the first disagreement of a flow; later packets follow from it
    return out



def group(outcomes: Sequence[FlowOutcome]) -> list[FlowResult]:
    rows: dict[tuple[str, str, int], list[FlowOutcome]] = {}
    for o in outcomes:
        rows.setdefault(o.flow.key, []).append(o)
    return [FlowResult(flow, transport, family, tuple(os)) for (flow, transport, family), os in rows.items()]


def replay_findings(rows: Sequence[FlowResult], evidence: str = "replay") -> list[Finding]:
    findings = []
    for row in rows:
        bad = row.first_failure
        if bad is None:
            continue
        findings.append(Finding(
            kind="blocked", flow=row.flow, message=bad.first_dead.label,
            packet=bad.first_dead.record.describe(), rule=rule_ref(bad.verdict), evidence=evidence,
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


def proof_findings(proof) -> list[Finding]:
    """The proof's findings, one per flow row (the earliest packet of the flow that dies)."""
    out = []
    for pf in proof.first_per_flow():
        f = Finding.from_json(pf.to_json())
        region = "; ".join(pf.region_text())
        detail = f"{f.detail + ': ' if f.detail else ''}blocked region {region}" if region else f.detail
        out.append(replace(f, detail=detail))
    return out


def check(ruleset: RulesetLike, profile: ProfileLike, *, baseline: RulesetLike | Sequence[str] | None = None,
          traces: Sequence[str | Path] = (), seed: int = 0, proof: bool = True,
          analysis: bool = True, engine: str = "model", jobs: int = 1) -> Report:
    """Run the emergency profile through the ruleset; the report says pass or fail and why.

    Evidence: replay of the synthetic calls (always), the symbolic proof over
    the whole profile (``proof``), captures (``traces``), and against a
    ``baseline`` both a replay comparison and the exact symbolic diff.
    """
    from fwtest.traffic.synth import synthesize

    if engine not in ("model", "kernel", "both"):
        raise InputError("--engine", 0, f"engine is model, kernel or both, not {engine!r}")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    rs = load_ruleset(ruleset)
    prof = profile if isinstance(profile, EmergencyProfile) else load_profile(profile)
    flows = synthesize(prof, seed=seed)
    timings["synth_seconds"] = time.perf_counter() - started
    mark = time.perf_counter()
    disagreements: list[Finding] = []
    if engine == "model":
        outcomes = replay_flows(rs, prof, flows)
    else:
        from fwtest.oracle import KernelFirewall, kernel_unavailable

        why = kernel_unavailable()
        if why:
            raise InputError("--engine", 0, f"the kernel engine cannot run here: {why}")
        with KernelFirewall(rs, firewall=prof.firewall, interfaces=prof.interfaces,
                            sip_ports=prof.sip_helper_ports) as firewall:
            outcomes = replay_flows(rs, prof, flows, firewall.replay)
        if engine == "both":
            # The kernel meets the packets back to back (no timeouts, no token refill):
            # the model is asked the same question on the same timeline.
            model = replay_flows(rs, prof, flows, model_runner(rs, prof, compress=True))
            disagreements = kernel_disagreements(flows, model, outcomes)
            # Where they agree, the model knows which rule decided (the kernel does not say).
            outcomes = [judge(flow, [mv if mv.verdict == kv.verdict else kv
                                     for mv, kv in zip(m.verdicts, k.verdicts, strict=True)])
                        for flow, m, k in zip(flows, model, outcomes, strict=True)]
    rows = group(outcomes)
    findings = replay_findings(rows, "replay" if engine == "model" else "kernel") + disagreements
    timings["replay_seconds"] = time.perf_counter() - mark
    report = Report(
        ruleset=", ".join(rs.files) or rs.name, profile=prof.name, flows=rows, findings=findings,
        stats={"flows": len(rows), "calls": len(flows), "packets": sum(len(f.steps) for f in flows),
               "engine": engine})
    if proof or analysis:
        from fwtest import space  # imported here: dd costs ~0.2 s at start-up

        mark = time.perf_counter()
        if proof:
            report.proof = space.prove(rs, prof, flows=flows)
            report.findings.extend(proof_findings(report.proof))
            report.stats["proof_classes"] = len(report.proof.results)
        if analysis:
            # One BDD manager and one set of payload probes for both.
            shared, probes = (report.proof.space, report.proof.judge) if report.proof is not None else (None, None)
            report.analysis = space.analyze(rs, prof, flows=flows, space=shared, judge=probes).to_json()
        timings["proof_seconds"] = time.perf_counter() - mark
    if traces:
        from fwtest.replay import replay_captures, trace_findings

        mark = time.perf_counter()
        replays = replay_captures(rs, list(traces), prof, jobs=jobs)
        report.findings.extend(trace_findings(replays, prof))
        report.stats["trace_packets"] = sum(r.packets for r in replays)
        report.stats["trace_calls"] = sum(len(r.reconstruction.calls) for r in replays)
        timings["trace_seconds"] = time.perf_counter() - mark
    if baseline:
        mark = time.perf_counter()
        base_rs, label, notes = load_baseline(baseline, ruleset)
        report.baseline = label
        report.notes.extend(notes)
        if base_rs is not None:
            base_rows = group(replay_flows(base_rs, prof, flows))
            report.baseline_report = Report(ruleset=label, profile=prof.name, flows=base_rows,
                                            findings=replay_findings(base_rows))
            report.findings = regression_findings(rows, base_rows, report.findings)
            if proof:
                from fwtest import space

                report.diff = space.diff(base_rs, rs, prof, flows=flows)
                report.findings.extend(Finding.from_json(c.to_json()) for c in report.diff.changes
                                       if c.kind in ("regression", "warning"))
        timings["baseline_seconds"] = time.perf_counter() - mark
    report.stats.update({k: round(v, 3) for k, v in timings.items()})
    return report
