"""What a change does to the emergency path: exact differences between two rulesets.

``diff(base, candidate, profile)`` compiles both (they may come from
different formats: both are IR) in one header space and compares:

* **regression**: emergency packets (the profile's classes) the base accepts
  and the candidate drops, each part named by the rule that accepted it in
  the base and the rule that drops it in the candidate, with witness packets
  the engine confirms both ways (base: accepted; candidate: dropped where
  the diff says); rate limits the candidate newly exceeds on the profile's timelines (one call, or the surge);
* **warning**: packets between the profile's peers and its PSAP (any
  protocol, port or state: the address space the profile owns), on the
  profile's paths, that the candidate newly accepts (what the change opens);
* **restored**: emergency packets the base dropped and the candidate accepts.

When the two rulesets track connections differently (one stateless), the
same emergency packet is seen in different states or as fragments; such
classes are compared on the fields both views share.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fwtest.profile import EmergencyProfile
from fwtest.rules.ir import Ruleset
from fwtest.space.classes import PacketClass, ProfileClasses
from fwtest.space.compile import Box, Decider
from fwtest.space.header import HeaderSpace, ProofError
from fwtest.space.proof import (
    AtomJudge,
    ProfileCompile,
    Witness,
    _Prover,
    limit_findings,
    profile_classes_for,
)
from fwtest.space.region import Summary, summarise
from fwtest.space.witness import build_witness, said, same_decider
from fwtest.traffic.callflow import CallFlow

MAX_RECTS = 4


@dataclass(frozen=True)
class DiffChange:
    kind: str                        # regression | warning | restored
    flow: str                        # profile flow ("surge": the surge's rate limits); "profile" for warnings
    transport: str | None
    family: int | None
    label: str                       # class label, or "between peers and PSAP" for warnings
    path: str
    region: Summary
    base: Decider | None             # who decided these packets in the base
    candidate: Decider | None        # ... and in the candidate
    witnesses: tuple[Witness, ...] = ()
    detail: str = ""
    space: HeaderSpace | None = field(default=None, compare=False, repr=False)

    def region_text(self) -> list[str]:
        return self.region.describe(self.space) if self.space is not None else []

    def to_json(self) -> dict[str, Any]:
        """A report finding (kind regression/warning), both versions' deciding rules."""
        out: dict[str, Any] = {
            "kind": self.kind, "flow": self.flow, "message": self.label,
            "packet": self.witnesses[0].record.describe() if self.witnesses else None,
            "rule": self.candidate.to_json() if self.candidate else None,
            "baseline_rule": self.base.to_json() if self.base else None,
            "evidence": "proof", "path": self.path,
        }
        if self.transport is not None:
            out["transport"] = self.transport
        if self.family is not None:
            out["family"] = self.family
        if self.detail:
            out["detail"] = self.detail
        if self.space is not None:
            out["region"] = self.region.to_json(self.space)
            out["region_text"] = self.region_text()
        if self.witnesses:
            out["witnesses"] = [w.to_json() for w in self.witnesses]
        return out


@dataclass
class Diff:
    base: Ruleset
    candidate: Ruleset
    profile: EmergencyProfile
    changes: list[DiffChange]
    space: HeaderSpace
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def regressions(self) -> list[DiffChange]:
        return [c for c in self.changes if c.kind == "regression"]

    @property
    def warnings(self) -> list[DiffChange]:
        return [c for c in self.changes if c.kind == "warning"]

    @property
    def restored(self) -> list[DiffChange]:
        return [c for c in self.changes if c.kind == "restored"]

    @property
    def passed(self) -> bool:
        return not self.regressions

    def to_json(self) -> dict[str, Any]:
        return {"result": "pass" if self.passed else "fail",
                "findings": [c.to_json() for c in self.changes if c.kind != "restored"],
                "restored": [c.to_json() for c in self.restored], "stats": self.stats}


def profile_regions(space: HeaderSpace, profile: EmergencyProfile
                    ) -> tuple[dict[str, Any], dict[str, list[Box]]]:
    """Per path, every packet between the profile's peers and its PSAP (any protocol, port,
    state): the address space the profile owns, which warnings are about."""
    hooks = profile.hooks()
    regions: dict[str, Any] = {}
    boxes: dict[str, list[Box]] = {}
    for direction, src_side, dst_side in (("in", "peers", "psap"), ("out", "psap", "peers")):
        path = hooks[direction]
        u = space.false
        src_ranges, dst_ranges = [], []
        for fam in profile.families:
            src = space.false
            for n in profile.networks(src_side, fam):
                src |= space.range("src", int(n.network_address), int(n.broadcast_address))
                src_ranges.append((fam, int(n.network_address), int(n.broadcast_address)))
            dst = space.false
            for n in profile.networks(dst_side, fam):
                dst |= space.range("dst", int(n.network_address), int(n.broadcast_address))
                dst_ranges.append((fam, int(n.network_address), int(n.broadcast_address)))
            u |= space.family(fam) & src & dst
        regions[path] = regions.get(path, space.false) | (u & space.domain)
        boxes.setdefault(path, []).append(Box(frozenset(profile.families), None, tuple(src_ranges),
                                              tuple(dst_ranges)))
    return regions, boxes


def _class_key(cls: PacketClass) -> tuple:
    label = cls.label.replace(" (first fragment)", "").replace(" (later fragment)", "")
    return (cls.flow, cls.transport, cls.family, cls.direction, label, cls.proto)


def _differing_fields(a: PacketClass, b: PacketClass) -> list[str]:
    out = []
    if a.states != b.states:
        out.append("state")
    if a.frag != b.frag:
        out.extend(["frag", "sport", "dport", "flags"])
    elif a.flags != b.flags:
        out.append("flags")
    return out


class _Side:
    """One ruleset of the diff: its compile, atom judge and prover."""

    def __init__(self, space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile,
                 classified: ProfileClasses, classes_other: Sequence[PacketClass],
                 extra: dict[str, Any], extra_boxes: dict[str, list[Box]]) -> None:
        self.ruleset = ruleset
        self.classified = classified
        self.classes = list(classified.classes)
        classes = self.classes
        # Compile over both versions' classes and the PSAP region, in one space.
        every = list(dict.fromkeys([*classes, *classes_other]))
        self.pc = ProfileCompile(space, ruleset, profile, every, extra=extra, extra_boxes=extra_boxes)
        self.judge = AtomJudge(space, ruleset, profile)
        self.prover = _Prover(ruleset, profile, space, self.pc, self.judge, max_witnesses=1,
                              confirm_witnesses=True)


def diff(base: Ruleset, candidate: Ruleset, profile: EmergencyProfile, *,
         flows: Sequence[CallFlow] | None = None, space: HeaderSpace | None = None,
         backend: str | None = None, order: str = "field", confirm_witnesses: bool = True) -> Diff:
    """The emergency packets ``candidate`` newly drops (and what else it changes) against ``base``."""
    started = time.perf_counter()
    if flows is None:
        from fwtest.traffic.synth import synthesize
        flows = synthesize(profile)
    space = space or HeaderSpace.for_rulesets([base, candidate], profile, backend=backend, order=order)
    extra, extra_boxes = profile_regions(space, profile)
    base_classes = profile_classes_for(space, base, profile, flows)
    cand_classes = profile_classes_for(space, candidate, profile, flows)
    b = _Side(space, base, profile, base_classes, cand_classes.classes, extra, extra_boxes)
    c = _Side(space, candidate, profile, cand_classes, base_classes.classes, extra, extra_boxes)
    compiled = time.perf_counter()
    changes: list[DiffChange] = []
    base_by_key: dict[tuple, list[PacketClass]] = {}
    for cls in b.classes:
        base_by_key.setdefault(_class_key(cls), []).append(cls)
    base_set = set(b.classes)
    class_union: dict[str, Any] = {}
    for cls in c.classes:
        partners = [cls] if cls in base_set else base_by_key.get(_class_key(cls), [])
        for state in cls.states:
            val_c = c.judge.valuation(cls, state)
            region_c = c.pc.region(cls, (state,))
            class_union[cls.path] = class_union.get(cls.path, space.false) | region_c
            dropped_c = region_c & ~c.pc.accept(cls.path, val_c)
            accepted_c = region_c & ~dropped_c
            base_ok = space.false
            base_bad = space.false
            for p in partners:
                for pstate in p.states:
                    val_b = b.judge.valuation(p, pstate)
                    region_b = b.pc.region(p, (pstate,))
                    acc_b = b.pc.accept(p.path, val_b)
                    project = _differing_fields(p, cls) if p is not cls else []
                    ok, bad = region_b & acc_b, region_b & ~acc_b
                    if project:
                        ok, bad = space.exist(project, ok), space.exist(project, bad)
                    base_ok |= ok
                    base_bad |= bad
            regressed = dropped_c & base_ok
            if regressed != space.false:
                changes.extend(_split(space, "regression", cls, state, regressed, b, c, partners,
                                      val_c, confirm_witnesses))
            fixed = accepted_c & base_bad
            if fixed != space.false:
                changes.extend(_split(space, "restored", cls, state, fixed, b, c, partners, val_c,
                                      False))
    changes.extend(_limit_regressions(space, b, c))
    changes.extend(_warnings(space, profile, b, c, extra, class_union))
    done = time.perf_counter()
    stats = {"backend": space.backend_name, "compile_seconds": round(compiled - started, 3),
             "diff_seconds": round(done - compiled, 3),
             "regressions": sum(1 for x in changes if x.kind == "regression"),
             "warnings": sum(1 for x in changes if x.kind == "warning")}
    return Diff(base, candidate, profile, changes, space, stats)


def _split(space: HeaderSpace, kind: str, cls: PacketClass, state: str, region: Any, b: _Side, c: _Side,
           partners: Sequence[PacketClass], val_c: dict[str, bool], confirm_witnesses: bool
           ) -> list[DiffChange]:
    """``region`` (of candidate class ``cls``) split by (base decider, candidate decider)."""
    out = []
    cand = c.pc.deciders(cls.path, val_c)
    # Base deciders over the partner classes, projected onto this class's view.
    base_parts: list[tuple[Decider, Any]] = []
    for p in partners:
        for pstate in p.states:
            val_b = b.judge.valuation(p, pstate)
            region_b = b.pc.region(p, (pstate,))
            project = _differing_fields(p, cls) if p is not cls else []
            for d, u in b.pc.deciders(p.path, val_b):
                part = u & region_b
                if part == space.false:
                    continue
                base_parts.append((d, space.exist(project, part) if project else part))
    covered = space.false
    for bd, bu in base_parts:
        for cd, cu in cand:
            part = region & bu & cu & ~covered
            if part == space.false:
                continue
            covered |= part
            summary = summarise(space, part, max_rects=MAX_RECTS)
            witnesses: tuple[Witness, ...] = ()
            if confirm_witnesses and kind == "regression":
                witnesses = _regression_witness(space, cls, state, summary, bd, cd, b, c)
            out.append(DiffChange(kind, cls.flow, cls.transport, cls.family, cls.label, cls.path, summary,
                                  bd, cd, witnesses, cls.note, space))
    if covered != region:
        raise ProofError(f"{cls.side_label}: changed packets without a deciding rule in both versions")
    return out


def _regression_witness(space: HeaderSpace, cls: PacketClass, state: str, summary: Summary,
                        bd: Decider, cd: Decider, b: _Side, c: _Side) -> tuple[Witness, ...]:
    hints = {**cls.hints(), "iif": space.iface_index[cls.iface_in], "oif": space.iface_index[cls.iface_out]}
    for rect in summary.rects:
        record = build_witness(cls, rect.point(hints), space)
        v_cand = c.prover.confirmer.verdict(cls, record, state)
        if v_cand.accepted or not same_decider(v_cand, cd):
            raise ProofError(f"regression witness {record.short()} ({cls.side_label}): the diff says the "
                             f"candidate drops it ({cd.describe()}), the engine says {said(v_cand)}")
        if cls in b.classes and state in cls.states:
            # The same packet in the same state exists in the base: it must pass there.
            v_base = b.prover.confirmer.verdict(cls, record, state)
            if not v_base.accepted or not same_decider(v_base, bd):
                raise ProofError(f"regression witness {record.short()} ({cls.side_label}): the diff says the "
                                 f"base accepts it ({bd.describe()}), the engine says {said(v_base)}")
        return (Witness(record, state, v_cand),)
    return ()


def _limit_regressions(space: HeaderSpace, b: _Side, c: _Side) -> list[DiffChange]:
    """Packets a rate limit of the candidate drops on the profile's timelines (one call alone,
    or the surge) where the base's limits let that packet kind through."""
    def key(f: Any) -> tuple:
        return (f.flow, f.transport, f.family, f.label, f.decider.id)

    before = {key(f) for f in limit_findings(b.prover, b.classified)}
    out = []
    for f in limit_findings(c.prover, c.classified):
        if key(f) in before:
            continue
        out.append(DiffChange("regression", f.flow, f.transport, f.family, f.label, f.path, f.region,
                              None, f.decider, f.witnesses, f.detail, space))
    return out


def _warnings(space: HeaderSpace, profile: EmergencyProfile, b: _Side, c: _Side, extra: dict[str, Any],
              class_union: dict[str, Any]) -> list[DiffChange]:
    """Packets between peers and PSAP the candidate newly accepts (outside the emergency classes)."""
    # Rate limits as in normal operation (under the limit) on both sides; the
    # payload and helper atoms are shared, and any payload may come along.
    within = {a.var: not a.key[1].above for a in space.atoms.values() if a.kind == "limit"}
    atoms = [a.var for a in space.atoms.values() if a.kind != "limit"]
    out = []
    hooks = profile.hooks()
    for path, region in extra.items():
        acc_c = space.let_atoms(c.pc.compiled[path].accept, within)
        acc_b = space.let_atoms(b.pc.compiled[path].accept, within)
        newly = region & acc_c & ~acc_b
        if atoms:
            newly = space.bdd.exist(atoms, newly)
        newly &= ~class_union.get(path, space.false)
        if newly == space.false:
            continue
        label = "between peers and PSAP" if hooks["in"] == hooks["out"] else (
            "peers to PSAP" if path == hooks["in"] else "PSAP to peers")
        covered = space.false
        for cd, cu in c.pc.compiled[path].accept_deciders().items():
            cu = space.let_atoms(cu, within)
            cu = space.bdd.exist(atoms, cu) if atoms else cu
            for bd, bu in b.pc.compiled[path].drop_deciders().items():
                bu = space.let_atoms(bu, within)
                bu = space.bdd.exist(atoms, bu) if atoms else bu
                part = newly & cu & bu & ~covered
                if part == space.false:
                    continue
                covered |= part
                out.append(DiffChange("warning", "profile", None, None, label, path,
                                      summarise(space, part, max_rects=MAX_RECTS), bd, cd, (),
                                      "newly accepted by the candidate", space))
    return out
