"""The profile coverage proof: is *every* packet of the emergency profile accepted?

``prove(ruleset, profile)`` turns the profile into packet classes
(``fwtest.space.classes``), compiles the ruleset for the paths they take
(``fwtest.space.compile``) and intersects: a class whose whole region is
accepted passes; otherwise each part of the blocked region is reported with
the rule (or policy) that decides it, summarised as a few rectangles, with
witness packets the replay engine has confirmed.

Atoms the header cannot decide are decided per class:

* ``string`` and ``sip`` matches against the class's own packet (the
  synthesiser's message: an emergency INVITE to ``urn:service:sos`` with a
  PIDF-LO body, the RTP packet, the TLS record), by the engine's own
  compiled match tests, so both agree byte for byte (a ``friendly-scanner``
  User-Agent match is false for every class, ``string "sos"`` true for the
  emergency INVITE);
* ``helper`` matches by the class's connection (media the SIP helper
  expected has ``sip`` as its master's helper);
* rate limits as "under the limit" for the header sets; whether a bucket
  runs dry depends on when packets come, which no header says. So each
  limited rule is then judged on the synthetic flows' own timelines
  (``dry_limits``): every flow instance alone, and every surge call
  together, as if one peer host and one PSAP host carried them (the worst
  case for a hashlimit keyed on addresses). A packet whose class is lost
  when the bucket is dry, and that finds it dry, is a finding (flow
  ``surge`` for the surge), confirmed by replaying copies of the witness at
  the times of every packet that paid into that bucket.

Conntrack timeouts: the classes come from a replay of each flow's timeline
through a model of connection tracking, so a packet that arrives after its
entry expired (a UDP BYE after a call longer than the ``udp_stream``
timeout) is a class of its own, seen as NEW, with a note saying why; the
proof then judges it like any NEW packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from fwtest import cache
from fwtest.engine.limits import TokenBucket, bucket_key
from fwtest.engine.verdict import Verdict
from fwtest.errors import InputError
from fwtest.profile import EmergencyProfile
from fwtest.rules.ir import Action, LimitMatch, Match, Rule, Ruleset, Source
from fwtest.space.classes import PacketClass, ProfileClasses, Timeline, classify_profile
from fwtest.space.compile import Box, Compiled, Decider, compile_path
from fwtest.space.header import STATE_CODES, Atom, HeaderSpace, ProofError
from fwtest.space.region import Summary, summarise
from fwtest.space.witness import (
    Confirmer,
    build_witness,
    confirm,
    confirm_burst,
    witness_file_name,
    write_pcap,
)
from fwtest.traffic.callflow import CallFlow
from fwtest.traffic.record import PacketRecord

MAX_RECTS = 4


@dataclass(frozen=True)
class Witness:
    """A concrete packet of a blocked region, and the engine's verdict on it."""

    record: PacketRecord
    state: str
    verdict: Verdict | None          # None only when confirmation was turned off
    burst: tuple[PacketRecord, ...] = ()   # the surge copies replayed (rate-limit findings)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"packet": self.record.describe(), "state": self.state}
        if self.verdict is not None:
            out["verdict"] = self.verdict.verdict
        if self.burst:
            out["copies"] = len(self.burst)
        return out


@dataclass(frozen=True)
class ProofFinding:
    """Part of a class the ruleset drops, who drops it, and packets that show it."""

    flow: str                        # profile flow, or "surge" (rate limits against the surge)
    transport: str
    family: int
    label: str                       # "INVITE", "RTP psap->peer", "BYE"
    direction: str
    phase: str
    state: str                       # conntrack state the rules see the packets in
    region: Summary
    decider: Decider
    witnesses: tuple[Witness, ...]
    detail: str = ""
    space: HeaderSpace | None = field(default=None, compare=False, repr=False)
    kind: str = "blocked"
    rate_limit: bool = False         # dropped only once a token bucket runs dry on the flow's timeline
    path: str = "forward"

    @property
    def rule(self) -> dict[str, Any]:
        return self.decider.to_json()

    @property
    def packet(self) -> dict[str, Any] | None:
        return self.witnesses[0].record.describe() if self.witnesses else None

    def region_text(self) -> list[str]:
        return self.region.describe(self.space) if self.space is not None else []

    def to_json(self) -> dict[str, Any]:
        """The report's finding object (DESIGN.md keys first)."""
        out: dict[str, Any] = {
            "kind": self.kind, "flow": self.flow, "message": self.label, "packet": self.packet,
            "rule": self.rule, "evidence": "proof", "transport": self.transport, "family": self.family,
            "state": self.state, "direction": self.direction,
        }
        if self.detail:
            out["detail"] = self.detail
        if self.rate_limit:
            out["rate_limit"] = True
        if self.space is not None:
            out["region"] = self.region.to_json(self.space)
            out["region_text"] = self.region_text()
        out["witnesses"] = [w.to_json() for w in self.witnesses]
        return out


@dataclass(frozen=True)
class ClassResult:
    cls: PacketClass
    state: str
    blocked: int                     # packet headers of the class the ruleset drops
    space: HeaderSpace = field(compare=False, repr=False)

    @property
    def accepted(self) -> bool:
        return self.blocked == 0

    @property
    def packets(self) -> int:
        """Packet headers in the class (counted on demand: counting is not free)."""
        return self.space.count(self.space.class_region(self.cls, (self.state,)))


@dataclass
class Proof:
    ruleset: Ruleset
    profile: EmergencyProfile
    results: list[ClassResult]
    findings: list[ProofFinding]
    space: HeaderSpace
    compiled: dict[str, Compiled]
    classes: list[PacketClass]
    stats: dict[str, Any] = field(default_factory=dict)
    judge: AtomJudge | None = field(default=None, compare=False, repr=False)  # its probes, for analyze

    @property
    def passed(self) -> bool:
        return not self.findings

    def first_per_flow(self) -> list[ProofFinding]:
        """One finding per (flow, transport, family): the earliest packet of the flow that dies
        (findings come in the order the flow's packets first appear), for a flow table."""
        seen: set[tuple[str, str, int]] = set()
        out = []
        for f in self.findings:
            key = (f.flow, f.transport, f.family)
            if key not in seen:
                seen.add(key)
                out.append(f)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"result": "pass" if self.passed else "fail",
                "classes": len(self.results),
                "blocked_classes": sum(1 for r in self.results if not r.accepted),
                "findings": [f.to_json() for f in self.findings], "stats": self.stats}


# ---------------------------------------------------------------- atoms

class AtomJudge:
    """Truth of the atoms for a packet class, decided by the engine's own match code."""

    def __init__(self, space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile) -> None:
        self.space = space
        self.ruleset = ruleset
        self.profile = profile
        self._l7: dict[tuple, bool] = {}
        self._views: dict[tuple, Any] = {}     # one PacketView per packet and state: SIP parsed once
        self._compiled: dict[str, tuple] = {}

    def probe(self, atom: Atom, record: PacketRecord, state: str) -> bool:
        """Does the one match of ``atom`` match ``record``? The engine's compiled test decides."""
        from fwtest.engine.packet import PacketView

        # A sip match reads the transport payload, a string match the whole packet.
        key = (atom.var, record.payload if atom.kind == "sip" else record.data, record.frag)
        got = self._l7.get(key)
        if got is None:
            state = state if self.ruleset.conntrack.enabled else "untracked"
            view_key = (record.data, record.payload_offset, record.frag, state)
            p = self._views.get(view_key)
            if p is None:
                p = self._views[view_key] = PacketView(record, state)
            got = all(test(p) for test in self._tests(atom))
            self._l7[key] = got
        return got

    def _tests(self, atom: Atom) -> tuple:
        from fwtest.engine.limits import LimitState
        from fwtest.engine.match import compile_match

        tests = self._compiled.get(atom.var)
        if tests is None:
            if atom.kind == "string":
                match = Match(string=(atom.key,))
            elif atom.kind == "sip":
                match = Match(sip=atom.key)
            else:  # pragma: no cover - callers only probe payload atoms
                raise ProofError(f"cannot probe a {atom.kind} atom")
            probe = Rule("probe", Source("<fwtest probe>", 0), match, Action("accept"))
            tests = compile_match(match, probe, LimitState())[0]
            self._compiled[atom.var] = tests
        return tests

    def payload_atoms(self) -> list[Atom]:
        return [a for a in self.space.atoms.values() if a.kind in ("string", "sip")]

    def valuation(self, cls: PacketClass, state: str, record: PacketRecord | None = None) -> dict[str, bool]:
        """Atom values for packets of ``cls`` (its template, or ``record``)."""
        rec = record if record is not None else cls.template
        out: dict[str, bool] = {}
        for atom in self.space.atoms.values():
            if atom.kind in ("string", "sip"):
                out[atom.var] = self.probe(atom, rec, state)
            elif atom.kind == "helper":
                out[atom.var] = cls.helper == atom.key
            elif atom.kind == "limit":
                limit: LimitMatch = atom.key[1]
                out[atom.var] = not limit.above      # under the limit
            else:  # pragma: no cover - HeaderSpace only declares the kinds above
                raise ProofError(f"atom kind {atom.kind!r}")
        return out


# ---------------------------------------------------------------- compile for a profile

def class_boxes(classes: Sequence[PacketClass]) -> list[Box]:
    """One box over all classes of a path (addresses, protocols and ports they can have)."""
    fams = frozenset(c.family for c in classes)
    protos = frozenset(c.proto for c in classes)
    src = tuple({(c.family, int(n.network_address), int(n.broadcast_address))
                 for c in classes for n in c.src})
    dst = tuple({(c.family, int(n.network_address), int(n.broadcast_address))
                 for c in classes for n in c.dst})
    sport = tuple({(c.sport[0], c.sport[1]) if c.sport else (0, 0) for c in classes})
    dport = tuple({(c.dport[0], c.dport[1]) if c.dport else (0, 0) for c in classes})
    return [Box(fams, protos, src, dst, sport, dport)]


class ProfileCompile:
    """A ruleset compiled for the paths of a set of classes (all conntrack states)."""

    def __init__(self, space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile,
                 classes: Sequence[PacketClass], *, extra: dict[str, Any] | None = None,
                 extra_boxes: dict[str, list[Box]] | None = None, track: bool = False) -> None:
        self.space = space
        self.ruleset = ruleset
        self.profile = profile
        self.track = track          # compiled[path].matched holds what each rule matched
        by_path: dict[str, list[PacketClass]] = {}
        for c in classes:
            by_path.setdefault(c.path, []).append(c)
        paths = set(by_path) | set(extra or {})
        self.compiled: dict[str, Compiled] = {}
        for path in sorted(paths):
            within = space.false
            boxes: list[Box] = []
            if path in by_path:
                for c in by_path[path]:
                    within |= self.region(c, tuple(STATE_CODES))
                boxes.extend(class_boxes(by_path[path]))
            if extra and path in extra:
                within |= extra[path]
                boxes.extend((extra_boxes or {}).get(path, [Box()]))
            self.compiled[path] = compile_path(space, ruleset, path, native_hook=profile.firewall,
                                               within=within, boxes=boxes, track=track)
        self._accept: dict[tuple, Any] = {}
        self._drops: dict[tuple, list[tuple[Decider, Any]]] = {}
        self._all: dict[tuple, list[tuple[Decider, Any]]] = {}

    def region(self, cls: PacketClass, states: tuple[str, ...]) -> Any:
        return self.space.class_region(cls, states)

    def accept(self, path: str, valuation: dict[str, bool]) -> Any:
        key = (path, tuple(sorted(valuation.items())))
        got = self._accept.get(key)
        if got is None:
            got = self.space.let_atoms(self.compiled[path].accept, valuation)
            self._accept[key] = got
        return got

    def drops(self, path: str, valuation: dict[str, bool]) -> list[tuple[Decider, Any]]:
        key = (path, tuple(sorted(valuation.items())))
        got = self._drops.get(key)
        if got is None:
            got = [(d, self.space.let_atoms(u, valuation))
                   for d, u in self.compiled[path].drop_deciders().items()]
            self._drops[key] = got
        return got

    def deciders(self, path: str, valuation: dict[str, bool]) -> list[tuple[Decider, Any]]:
        key = (path, tuple(sorted(valuation.items())))
        got = self._all.get(key)
        if got is None:
            got = [(d, self.space.let_atoms(u, valuation)) for d, u in self.compiled[path].deciders.items()]
            self._all[key] = got
        return got


def helper_decider(space: HeaderSpace, ruleset: Ruleset, pc: ProfileCompile):
    """For classes that open a connection: does a ct-helper rule attach the SIP helper to it?"""
    helper_rules = [r for r in ruleset.rules() if r.action.kind == "ct_helper"]

    def decide(cls: PacketClass) -> str | None:
        region = pc.region(cls, cls.states)
        covered = space.false
        for rule in helper_rules:
            if rule.action.target != "sip":
                continue
            covered |= pc.compiled[cls.path].effects.get(rule.id, space.false)
        covered = space.bdd.exist([a.var for a in space.atoms.values()], covered)
        hit = region & covered
        if hit == space.false:
            return None
        return "sip" if hit == region else "maybe"

    return decide


def check_modelled(ruleset: Ruleset, profile: EmergencyProfile, classes: Sequence[PacketClass]) -> None:
    """Configurations whose fragments the proof cannot see as the engine does: refuse, located."""
    from fwtest.engine.replay import check_helpers

    check_helpers(ruleset)
    fragmented = any(c.frag != "none" or c.template.frag for c in classes)
    if not fragmented and not any(len(c.template.data) > 1500 for c in classes):
        return
    if ruleset.conntrack.enabled:
        for b in ruleset.bases:
            if b.hook == "prerouting" and b.priority < -400 and ruleset.chains[b.chain].rules:
                raise InputError(b.source.file, b.source.line,
                                 f"base chain {b.chain} runs before defragmentation (priority {b.priority} "
                                 "< -400): fwtest's proof does not model rules that see raw fragments "
                                 "of a tracked flow; use replay, or move the chain after -400")
    elif any(c.path == "input" and c.family == 4 for c in classes):
        # Without conntrack the box reassembles IPv4 only before INPUT: prerouting
        # rules see the fragments, input rules the datagram. One class cannot be both.
        for b in ruleset.bases:
            if b.hook == "prerouting" and ruleset.chains[b.chain].rules:
                raise InputError(b.source.file, b.source.line,
                                 f"base chain {b.chain} on prerouting sees IPv4 fragments the input hook "
                                 "sees reassembled (no conntrack): fwtest's proof does not model both "
                                 "views of one datagram; use replay")


# Classes depend on the flows and on how the ruleset tracks connections only
# (ct-helper rules aside): a diff or a benchmark asks for the same ones again.
_CLASSES: dict[tuple, tuple[Sequence[CallFlow], ProfileClasses]] = {}
_HELPED: dict[tuple, tuple[Sequence[CallFlow], Ruleset, HeaderSpace, ProfileClasses]] = {}


def classes_for(space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile,
                flows: Sequence[CallFlow]) -> list[PacketClass]:
    """The profile's classes as ``ruleset`` sees them (ct-helper rules decided on its compile)."""
    return profile_classes_for(space, ruleset, profile, flows).classes


def profile_classes_for(space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile,
                        flows: Sequence[CallFlow]) -> ProfileClasses:
    """``classes_for`` with the timelines of the flows (for rate limits)."""
    ct = ruleset.conntrack
    key = (id(flows), ct.enabled, ct.helpers, tuple(sorted(ct.timeouts.items())))
    cached = _CLASSES.get(key)
    if cached is not None and cached[0] is flows:
        classified = cached[1]
    else:
        classified = _stored_profile_classes(profile, ruleset, flows)
        if len(_CLASSES) >= 8:
            _CLASSES.pop(next(iter(_CLASSES)))
        _CLASSES[key] = (flows, classified)
    check_modelled(ruleset, profile, classified.classes)
    if any(r.action.kind == "ct_helper" for r in ruleset.rules()):
        # The helper each connection gets depends on the rules: decided once per ruleset
        # and space (check's proof and analysis, and a diff's sides, ask again).
        helped_key = (id(flows), id(ruleset), id(space))
        helped = _HELPED.get(helped_key)
        if helped is not None and helped[0] is flows and helped[1] is ruleset and helped[2] is space:
            return helped[3]
        pc = ProfileCompile(space, ruleset, profile, classified.classes)
        classified = classify_profile(profile, ruleset, flows, helper_of=helper_decider(space, ruleset, pc))
        if len(_HELPED) >= 8:
            _HELPED.pop(next(iter(_HELPED)))
        _HELPED[helped_key] = (flows, ruleset, space, classified)
    return classified


def _stored_profile_classes(profile: EmergencyProfile, ruleset: Ruleset,
                            flows: Sequence[CallFlow]) -> ProfileClasses:
    """classify_profile, read from the on-disk cache when ``flows`` came from it.

    The classes depend on the flows, the profile and the ruleset's conntrack
    settings alone (not its rules: ct-helper rules are decided afterwards).
    """
    flows_key = getattr(flows, "key", None)  # synthesize()'s flows carry their cache key
    if flows_key is None:
        return classify_profile(profile, ruleset, flows)
    ct = ruleset.conntrack
    entry = cache.key("classes", flows_key, cache.profile_identity(profile), ct.enabled,
                      tuple(sorted(ct.helpers)), tuple(sorted(ct.timeouts.items())))
    classified = cache.load("classes", entry)
    if isinstance(classified, ProfileClasses):
        return classified
    classified = classify_profile(profile, ruleset, flows)
    cache.store("classes", entry, classified)
    return classified


# ---------------------------------------------------------------- the proof

class _Prover:
    def __init__(self, ruleset: Ruleset, profile: EmergencyProfile, space: HeaderSpace,
                 pc: ProfileCompile, judge: AtomJudge, *, max_witnesses: int, confirm_witnesses: bool) -> None:
        self.ruleset, self.profile, self.space, self.pc, self.judge = ruleset, profile, space, pc, judge
        self.max_witnesses = max_witnesses
        self.confirm_witnesses = confirm_witnesses
        self.confirmer = Confirmer(ruleset, profile)

    def findings_for(self, cls: PacketClass, state: str, blocked: Any, valuation: dict[str, bool], *,
                     flow: str | None = None, detail: str = "", burst: tuple[float, ...] | None = None
                     ) -> list[ProofFinding]:
        """Findings for ``blocked`` (part of ``cls`` in ``state``), one per drop rule or policy.
        ``burst``: the packet times at which a rate limit drops the last one."""
        sp = self.space
        out = []
        covered = sp.false
        for decider, region in self.pc.drops(cls.path, valuation):
            part = region & blocked
            if part == sp.false:
                continue
            covered |= part
            summary = summarise(sp, part, max_rects=MAX_RECTS)
            witnesses = self.witnesses(cls, state, summary, part, decider, valuation, burst)
            out.append(ProofFinding(
                flow=flow or cls.flow, transport=cls.transport, family=cls.family, label=cls.label,
                direction=cls.direction, phase=cls.phase, state=state, region=summary, decider=decider,
                witnesses=witnesses, detail=detail or cls.note, space=sp, path=cls.path))
        if covered != blocked:
            raise ProofError(f"{cls.side_label}: blocked packets no drop rule or policy accounts for")
        return out

    def witnesses(self, cls: PacketClass, state: str, summary: Summary, part: Any, decider: Decider,
                  valuation: dict[str, bool], burst: tuple[float, ...] | None) -> tuple[Witness, ...]:
        sp = self.space
        hints = {**cls.hints(), "iif": sp.iface_index[cls.iface_in], "oif": sp.iface_index[cls.iface_out]}
        out: list[Witness] = []
        for rect in summary.rects:
            if len(out) >= self.max_witnesses:
                break
            point = rect.point(hints)
            record = build_witness(cls, point, sp)
            if self._payload_atoms_differ(cls, state, record, valuation):
                continue    # a string match that also sees the rewritten header: not this point
            if not self.confirm_witnesses:
                out.append(Witness(record, state, None))
                continue
            if burst is not None:
                copies, dropped, v = confirm_burst(self.confirmer, cls, record, state, burst, decider)
                out.append(Witness(dropped, state, v, tuple(copies)))
            else:
                v = confirm(self.confirmer, cls, record, state, decider)
                out.append(Witness(record, state, v))
        if not out and summary.rects:
            raise ProofError(f"{cls.side_label}: no witness point of the blocked region keeps the "
                             "class's payload matches (a string match on header bytes?)")
        return tuple(out)

    def _payload_atoms_differ(self, cls: PacketClass, state: str, record: PacketRecord,
                              valuation: dict[str, bool]) -> bool:
        for atom in self.judge.payload_atoms():
            if self.judge.probe(atom, record, state) != valuation[atom.var]:
                return True
        return False


def prove(ruleset: Ruleset, profile: EmergencyProfile, *, flows: Sequence[CallFlow] | None = None,
          space: HeaderSpace | None = None, max_witnesses: int = 2, confirm_witnesses: bool = True,
          backend: str | None = None, order: str = "field") -> Proof:
    """Prove that every packet of ``profile`` gets through ``ruleset``, or show what does not."""
    started = time.perf_counter()
    if flows is None:
        from fwtest.traffic.synth import synthesize
        flows = synthesize(profile)
    synthesised = time.perf_counter()
    space = space or HeaderSpace.for_rulesets([ruleset], profile, backend=backend, order=order)
    classified = profile_classes_for(space, ruleset, profile, flows)
    classes = classified.classes
    # Rate limits are judged on timelines that include the surge's own classes, and
    # need to know which classes each limited rule matched.
    limited = any(r.match.limit is not None for r in ruleset.rules())
    pc = ProfileCompile(space, ruleset, profile, classified.every if limited else classes, track=limited)
    compiled_at = time.perf_counter()
    judge = AtomJudge(space, ruleset, profile)
    prover = _Prover(ruleset, profile, space, pc, judge, max_witnesses=max_witnesses,
                     confirm_witnesses=confirm_witnesses)
    results: list[ClassResult] = []
    findings: list[ProofFinding] = []
    for cls in classes:
        for state in cls.states:
            valuation = judge.valuation(cls, state)
            region = pc.region(cls, (state,))
            blocked = region & ~pc.accept(cls.path, valuation)
            n_blocked = 0 if blocked == space.false else space.count(blocked)
            results.append(ClassResult(cls, state, n_blocked, space))
            if n_blocked:
                findings.extend(prover.findings_for(cls, state, blocked, valuation))
    findings.extend(limit_findings(prover, classified))
    done = time.perf_counter()
    stats = {"classes": len(results), "rules": sum(len(c.rules) for c in ruleset.chains.values()),
             "rules_walked": sum(c.rules_walked for c in pc.compiled.values()),
             "bdd_nodes": sum(c.accept.dag_size for c in pc.compiled.values()),
             "backend": space.backend_name,
             "synth_seconds": round(synthesised - started, 3),
             "compile_seconds": round(compiled_at - synthesised, 3),
             "proof_seconds": round(done - compiled_at, 3)}
    return Proof(ruleset, profile, results, findings, space, pc.compiled, classes, stats, judge)


class DryBucket(NamedTuple):
    """A packet of the profile lost because a rate-limited rule's bucket ran dry."""

    rule: Rule                       # the rule whose limit it is
    limit: LimitMatch                # the limit judged (the rule's own, or the fuzzer's real one)
    timeline: Timeline               # the flow instance (or the surge) it happened in
    cls: PacketClass                 # the packet's class ...
    state: str                       # ... in this conntrack state
    lost: Any                        # the part of the class lost when the bucket is dry
    over: dict[str, bool]            # atom values with the limit over
    paid: list[float]                # times of every packet that paid into that bucket, until this one


def limit_findings(prover: _Prover, classified: ProfileClasses) -> list[ProofFinding]:
    """Packets of the profile that a rate limit drops, judged on the flows' own timelines
    (``dry_limits``), each with engine-confirmed witnesses."""
    out: list[ProofFinding] = []
    for dry in dry_limits(prover.space, prover.ruleset, prover.profile, prover.judge.valuation, classified,
                          pc=prover.pc):
        detail = _limit_detail(dry, prover.profile)
        out.extend(replace(f, rate_limit=True)
                   for f in prover.findings_for(dry.cls, dry.state, dry.lost, dry.over, detail=detail,
                                                burst=tuple(dry.paid)))
    return out


def dry_limits(space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile,
               valuation: Callable[[PacketClass, str], dict[str, bool]], classified: ProfileClasses, *,
               pc: ProfileCompile | None = None, rates: Mapping[str, LimitMatch] | None = None
               ) -> Iterator[DryBucket]:
    """Where a rate limit runs dry on the profile's timelines and a packet is lost for it.

    Whether a token bucket runs dry depends on when packets come, which no
    header set says. So each rate-limited rule is judged on the timelines of
    ``classified``: every flow instance alone (one call, keep-alive or text
    session), then every surge call together. A packet pays a token when its
    class reaches the rule and passes the rule's other matches (the engine
    tests the limit last); it is lost when its class is accepted under the
    limit and not over it. Addresses are taken as one peer host and one PSAP
    host, the worst case for a hashlimit keyed on them: one carrier SBC may
    carry every call of a surge. One result per rule, class and state: the
    first packet of it that finds the bucket empty, with the times of every
    packet that paid into that bucket until then (the witness burst).
    ``rates``: the limits to judge by rule id, when the rules carry stand-ins
    (the fuzzer keeps one BDD variable per rule whatever rate an edit picks).
    ``pc``: the ruleset compiled over ``classified.every`` with ``track=True``
    (made here when not given).
    """
    limited = [r for r in ruleset.rules() if r.match.limit is not None]
    if not limited:
        return
    # Which classes pay at a rule is what the rule matched: a compile that tracks it.
    if pc is None or not pc.track:
        pc = ProfileCompile(space, ruleset, profile, classified.every, track=True)
    for rule in limited:
        fates = _LimitFates(space, valuation, pc, classified.every, rule)
        if not any(fates.lost):
            continue
        limit = (rates or {}).get(rule.id, rule.match.limit)
        reported: set[tuple[int, str]] = set()
        for timeline in classified.timelines:
            for i, state, lost, over, paid in _dry_packets(limit, timeline, fates):
                if (i, state) not in reported:
                    reported.add((i, state))
                    yield DryBucket(rule, limit, timeline, classified.every[i], state, lost, over, paid)


class _LimitFates:
    """For one rate-limited rule, per class (by index into ``every``): does it pay tokens
    (``pays``), and which of its states lose what when the bucket is dry (``lost``)?"""

    def __init__(self, space: HeaderSpace, valuation: Callable[[PacketClass, str], dict[str, bool]],
                 tracked: ProfileCompile, every: Sequence[PacketClass], rule: Rule) -> None:
        self.space, self.valuation, self.tracked, self.rule = space, valuation, tracked, rule
        limit = rule.match.limit
        assert limit is not None
        self.above = limit.above
        self.var = space.atoms[("limit", (rule.id, limit))].var
        self._by_valuation: dict[tuple, tuple[Any, Any]] = {}
        self.pays: list[bool] = []
        self.lost: list[list[tuple[str, Any, dict[str, bool]]]] = []   # (state, region, valuation over)
        for cls in every:
            pays, lost = self._fate(cls)
            self.pays.append(pays)
            self.lost.append(lost)

    def _fate(self, cls: PacketClass) -> tuple[bool, list[tuple[str, Any, dict[str, bool]]]]:
        sp = self.space
        pays = False
        lost = []
        for state in cls.states:
            valuation = self.valuation(cls, state)
            tested, over = self._sets(cls.path, valuation)
            region = self.tracked.region(cls, (state,))
            pays = pays or region & tested != sp.false
            gone = region & over
            if gone != sp.false:
                lost.append((state, gone, {**valuation, self.var: self.above}))
        return pays, lost

    def _sets(self, path: str, valuation: dict[str, bool]) -> tuple[Any, Any]:
        """For packets with these atom values: those that test the limit, and those
        accepted under it and not over it. Few distinct valuations: computed once each."""
        key = (path, tuple(valuation.items()))
        got = self._by_valuation.get(key)
        if got is None:
            sp, pc = self.space, self.tracked
            matched = pc.compiled[path].matched.get(self.rule.id)
            # Reached, and every other match of the rule passes: the limit is tested.
            tested = sp.false if matched is None else (sp.let_atoms(matched, {**valuation, self.var: True})
                                                        | sp.let_atoms(matched, {**valuation, self.var: False}))
            over = pc.accept(path, valuation) & ~pc.accept(path, {**valuation, self.var: self.above})
            got = self._by_valuation[key] = (tested, over)
        return got


def _dry_packets(limit: LimitMatch, timeline: Timeline, fates: _LimitFates
                 ) -> Iterator[tuple[int, str, Any, dict[str, bool], list[float]]]:
    """(class index, state, lost region, valuation over the limit, times paid on that bucket)
    for every packet of ``timeline`` that finds its bucket empty and may be lost for it."""
    buckets: dict[tuple, TokenBucket] = {}
    paid: dict[tuple, list[float]] = {}
    pays, lost_by_class = fates.pays, fates.lost
    for ts, i, direction, sport, dport in timeline.packets:
        if not pays[i]:
            continue
        lost = lost_by_class[i]
        # One peer host (0) and one PSAP host (1): the bucket a hashlimit on addresses would share.
        src, dst = (0, 1) if direction == "in" else (1, 0)
        key = bucket_key(limit, timeline.family, src, dst, sport, dport)
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(limit.rate, limit.burst, ts)
        times = paid.setdefault(key, [])
        times.append(ts)
        if not bucket.take(ts):
            for state, region, exceeded in lost:
                yield i, state, region, exceeded, list(times)


def _limit_detail(dry: DryBucket, profile: EmergencyProfile) -> str:
    rule, limit, timeline, cls = dry.rule, dry.limit, dry.timeline, dry.cls
    packets, seconds = len(dry.paid), dry.paid[-1] - dry.paid[0]
    what = f"{limit.text or 'the rate limit'} of rule {rule.id} ({rule.source})"
    span = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    passes = f"it passes {limit.rate:g}/s with a burst of {limit.burst}"
    if timeline.flow == "surge" and profile.surge is not None:
        return (f"the surge of {profile.surge.calls} calls in {profile.surge.seconds:g} s brings {packets} "
                f"packets to {what} in {span}; {passes}, so this {cls.label} finds the bucket empty "
                "(judged as if one peer host sent the whole surge)")
    return (f"one {timeline.flow} flow ({timeline.transport}, IPv{timeline.family}) brings {packets} packets to "
            f"{what} in {span}; {passes}, so this {cls.label} finds the bucket empty "
            "(judged on the synthetic call's own timeline)")


def write_witnesses(result: Any, directory: str | Path) -> list[Path]:
    """Write the witnesses of a ``Proof`` (its findings) or a ``Diff`` (its regressions) as
    pcap files, one per finding, in ``directory``; returns the files written.

    Raw-IP pcaps (link type 101) that tcpdump, tshark and Scapy read; a rate-limit
    finding's file holds the whole burst the engine was fed.
    """
    findings = result.regressions if hasattr(result, "regressions") else result.findings
    directory = Path(directory)
    written = []
    for i, f in enumerate(findings, 1):
        records: list[PacketRecord] = []
        for w in f.witnesses:
            records.extend(w.burst or (w.record,))
        if not records:
            continue
        decider = f.candidate if hasattr(f, "candidate") else f.decider
        parts = [f.flow, f.transport or "", f"ipv{f.family}" if f.family else "", f.label,
                 decider.id if decider is not None else ""]
        written.append(write_pcap(directory / witness_file_name(i, [p for p in parts if p]), records))
    return written
