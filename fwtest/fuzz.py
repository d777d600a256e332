"""``fwtest fuzz``: which edits of a ruleset would cut the 911 path, and how good is the gate?

``fuzz(ruleset, profile)`` answers four questions:

(a) **Scan.** For every rule and every canonical single edit of it
    (``fwtest.strategies.single_edits``: delete, change the action, narrow,
    widen, add a rate limit, add a string match, move, insert a shadowing
    copy): does the edit break the emergency path, and which flows? From
    this, the **load-bearing** rules (DESIGN.md's contract): exactly those
    whose deletion, narrowing or flipped action (accept <-> drop/reject)
    breaks some flow. Widening an unrelated drop until it covers the path is
    a breaking edit of that drop, reported as such, but does not make the
    drop load-bearing. Rules no emergency traffic depends on are listed too.
(b) **Search.** Hypothesis draws sequences of up to three edits of distinct
    rules (``fwtest.strategies.edit_sequences``) and shrinks every breaking
    one it finds to the smallest; each round then leaves the rules already
    reported alone, so the report names different rules. A last round
    combines edits the scan found harmless one by one. Reproducible with
    ``seed``.
(c) **Gate self-check** (``mode="gate"``, for CI): every generated edit that
    the engine's replay (and, on Linux as root, the real netfilter in
    network namespaces) shows breaking must be flagged by ``fwtest check``
    or the proof; one that is not is a false pass of the gate.
(d) **Test quality.** Rule and clause coverage of the emergency traffic
    (which rules the profile's flows run into, per ``Verdict.trace``, and for
    each condition of a rule whether the traffic reaching it saw it true and
    false) and the mutation score: the share of breaking single edits that the
    replay of the synthetic calls catches, and the share the proof catches.
    ``fwtest check`` runs both; an edit only the proof catches is one the
    synthetic traffic misses, one only the replay catches is a gap in the
    proof's model. Gate mode measures the real ``check``.

Evidence. An edit "breaks" a flow row (flow x transport x family) that
passes on the ruleset as given and fails on the edited one, by either of:

* the proof (``fwtest.space``) over the profile's whole header space, with
  rate limits judged on the synthetic flows' timelines; it is exact and fast (tens of
  milliseconds an edit), and
* the replay of the synthetic flows through the engine (what ``check``
  does). An edit can only change the fate of packets that the rules it
  touches match, so flows that the touched rule never matched (per the base
  replay's traces), and that the edited or inserted rule cannot match
  (its header conditions tested on every packet of the flow), keep their
  base outcome; the rest are replayed. Gate mode replays everything, to
  check that shortcut too.

When the proof cannot judge a candidate (a configuration it does not model)
the replay alone decides, and the report says so: never silently "harmless".
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fwtest.errors import InputError
from fwtest.profile import EmergencyProfile
from fwtest.rules.ir import LimitMatch, Match, Rule, Ruleset
from fwtest.strategies import EDIT_KINDS, RuleEdit, apply_edits, edit_sequences, single_edits
from fwtest.traffic.callflow import CallFlow

Row = tuple[str, str, int]            # (flow, transport, family): one row of check's flow table
MODES = ("default", "scan", "gate")
DEFAULT_MAX_EXAMPLES = 40
SEARCH_ROUNDS = 3                      # distinct smallest breaking edits the search reports
KERNEL_MEDIA_PACKETS = 3               # media packets per stream kept in the kernel's sample of a flow


def _row_name(row: Row) -> str:
    flow, transport, family = row
    return f"{flow} {transport.upper()} IPv{family}"


def _flows_of(rows: Iterable[Row]) -> list[str]:
    order = ("emergency-call", "callback", "options-keepalive", "text", "surge")
    names = {r[0] for r in rows}
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _rule_ref(rule: Rule) -> dict[str, Any]:
    return {"id": rule.id, "file": rule.source.file, "line": rule.source.line}


# ====================================================================== evidence: replay

class ReplayJudge:
    """The synthetic flows through the engine, as ``check`` replays them, per candidate.

    ``rows(candidate, edits)`` replays only the flows the edits can affect (see the
    module docstring); ``rows(candidate)`` without edits replays everything.
    """

    def __init__(self, base: Ruleset, profile: EmergencyProfile, flows: Sequence[CallFlow]) -> None:
        from fwtest.api import replay_flows

        self.base = base
        self.profile = profile
        self.flows = list(flows)
        self.surge = [i for i, f in enumerate(self.flows) if f.flow == "surge"]
        self.base_outcomes = replay_flows(base, profile, self.flows)
        self.touched: dict[str, set[int]] = {}
        self.packets_matched: dict[str, int] = {}
        for i, outcome in enumerate(self.base_outcomes):
            for v in outcome.verdicts:
                for rule in v.trace:
                    self.touched.setdefault(rule.id, set()).add(i)
                    self.packets_matched[rule.id] = self.packets_matched.get(rule.id, 0) + 1
        self.representatives = [self._representatives(f) for f in self.flows]
        self.base_rows = self._failed_rows(self.base_outcomes)

    @staticmethod
    def _representatives(flow: CallFlow) -> list[Any]:
        """One engine view per distinct header (what a rule's header conditions can tell apart)."""
        from fwtest.engine.packet import PacketView

        seen: dict[tuple, Any] = {}
        for step in flow.steps:
            r = step.record
            icmp = r.data[r.l4_offset:r.l4_offset + 2] if r.proto in (1, 58) else b""
            key = (r.family, r.src, r.dst, r.proto, r.sport, r.dport, r.tcp_flags, icmp)
            if key not in seen:
                seen[key] = PacketView(r, "new")
        return list(seen.values())

    @staticmethod
    def _failed_rows(outcomes: Sequence[Any]) -> set[Row]:
        return {o.flow.key for o in outcomes if not o.passed}

    def _header_tests(self, rule: Rule) -> tuple:
        """The rule's conditions a header decides (a superset of what the rule matches:
        state, payload, interfaces, fragments, helpers and limits are taken as matching)."""
        from fwtest.engine.limits import LimitState
        from fwtest.engine.match import compile_match

        relaxed = replace(rule.match, limit=None, helper=None, iface_in=None, iface_out=None, state=None,
                          sip=None, string=(), fragment=None)
        tests, _ = compile_match(relaxed, rule, LimitState())
        return tests

    def affected(self, edits: Sequence[RuleEdit] | None) -> set[int]:
        """Flows whose outcome the edits can change (all of them when ``edits`` is None)."""
        if edits is None:
            return set(range(len(self.flows)))
        out: set[int] = set()
        for edit in edits:
            out |= self.touched.get(edit.rule.id, set()) if edit.kind != "insert" else set()
            if edit.only_own_packets:
                continue
            # Widened, moved or inserted: the rule as it now stands may match packets it did not.
            rule = edit.replacement if edit.replacement is not None else edit.rule
            tests = self._header_tests(rule)
            for i, views in enumerate(self.representatives):
                if i not in out and any(all(t(v) for t in tests) for v in views):
                    out.add(i)
        if out & set(self.surge):
            out |= set(self.surge)       # surge calls share one firewall: replay them together
        return out

    def outcomes(self, candidate: Ruleset, edits: Sequence[RuleEdit] | None = None, *,
                 stop_at_new_failure: bool = False) -> tuple[list[Any], bool]:
        """Outcomes of every flow (base outcomes where the edits cannot change them), and
        whether the replay is complete. With ``stop_at_new_failure`` it stops at the first
        flow row that fails where the base passes (enough to know that check catches it),
        trying the short flows first and the surge (one shared timeline) last."""
        from fwtest.api import replay_flows

        which = self.affected(edits)
        units = [[i] for i in sorted(which - set(self.surge), key=lambda i: (len(self.flows[i].steps), i))]
        if which & set(self.surge):
            units.append(sorted(self.surge))
        outcomes = list(self.base_outcomes)
        for n, unit in enumerate(units):
            fresh = replay_flows(candidate, self.profile, [self.flows[i] for i in unit])
            new_failure = False
            for i, o in zip(unit, fresh, strict=True):
                outcomes[i] = o
                new_failure |= not o.passed and o.flow.key not in self.base_rows
            if stop_at_new_failure and new_failure:
                return outcomes, n == len(units) - 1
        return outcomes, True

    def rows(self, candidate: Ruleset, edits: Sequence[RuleEdit] | None = None, *,
             stop_at_new_failure: bool = False) -> tuple[set[Row], bool]:
        outcomes, complete = self.outcomes(candidate, edits, stop_at_new_failure=stop_at_new_failure)
        return self._failed_rows(outcomes), complete

    def finding(self, candidate: Ruleset, new_rows: set[Row], edits: Sequence[RuleEdit] | None = None
                ) -> dict[str, Any] | None:
        """The check-style finding of the first newly broken row (the packet that died, the rule)."""
        from fwtest.api import group, replay_findings

        findings = replay_findings(group(self.outcomes(candidate, edits)[0]))
        for f in findings:
            if (f.flow, f.transport, f.family) in new_rows:
                return f.to_json()
        return None


# ====================================================================== evidence: proof

CANONICAL_LIMIT = {False: LimitMatch(1.0, 1, False, (), text="limit (canonical)"),
                   True: LimitMatch(1.0, 1, True, (), text="limit above (canonical)")}


def _canonical_limits(ruleset: Ruleset) -> tuple[Ruleset, dict[str, LimitMatch]]:
    """The ruleset with every rate limit replaced by a canonical one of the same sense.

    In the proof a limit is an atom (is the bucket dry?) whose header part never
    depends on the rate; only the judgement on the flows' timelines does, and it
    takes the real limits from the returned map. Canonical limits keep the BDD
    variables the same for every rate an edit may choose.
    """
    from fwtest.rules.ir import Chain

    real: dict[str, LimitMatch] = {}
    chains = {}
    for name, chain in ruleset.chains.items():
        rules = []
        for r in chain.rules:
            if r.match.limit is not None:
                real[r.id] = r.match.limit
                r = replace(r, match=replace(r.match, limit=CANONICAL_LIMIT[r.match.limit.above]))
            rules.append(r)
        chains[name] = Chain(chain.name, tuple(rules), chain.source)
    return replace(ruleset, chains=chains), real


class ProofUndecided(Exception):
    """The proof cannot judge this candidate (a configuration it does not model)."""


class ProofJudge:
    """The light proof: which flow rows have packets the candidate drops (no witnesses,
    no summaries: ``fwtest.space.proof.prove`` does those for the edits reported)."""

    def __init__(self, base: Ruleset, profile: EmergencyProfile, flows: Sequence[CallFlow],
                 extra: Iterable[Ruleset] = ()) -> None:
        from fwtest.rules.ir import StringMatch
        from fwtest.space.header import HeaderSpace, rule_atom_keys
        from fwtest.space.proof import AtomJudge, profile_classes_for
        from fwtest.strategies import STRING_PATTERNS

        self.base = base
        self.profile = profile
        self.flows = list(flows)
        names: list[str] = [n for n in profile.interfaces.values() if n]
        atoms: dict[tuple[str, Any], None] = {}
        for rs in (base, *extra):
            canon, _ = _canonical_limits(rs)
            for rule in canon.rules():
                for im in (rule.match.iface_in, rule.match.iface_out):
                    if im is not None:
                        names.extend(im.names)
                for key in rule_atom_keys(rule):
                    atoms[key] = None
        # Every string match an edit may add (``STRING_PATTERNS``), and a canonical limit
        # of both senses on every rule: drawn edits then never need a new variable.
        for pattern in STRING_PATTERNS:
            for icase in (False, True):
                atoms[("string", StringMatch(pattern, icase=icase))] = None
        for rule in base.rules():
            for above in (False, True):
                atoms[("limit", (rule.id, CANONICAL_LIMIT[above]))] = None
        self.space = HeaderSpace(interfaces=names, atoms=list(atoms))
        self._atom_keys = set(atoms)
        self._rule_atom_keys = rule_atom_keys
        self._classes_for = profile_classes_for
        self.classified = profile_classes_for(self.space, _canonical_limits(base)[0], profile, self.flows)
        self.classes = self.classified.classes
        self.atom_judge = AtomJudge(self.space, base, profile)
        self._valuations: dict[tuple[Any, str], dict[str, bool]] = {}
        self.base_rows = self.rows(base)

    def _valuation(self, cls: Any, state: str) -> dict[str, bool]:
        key = (cls, state)
        got = self._valuations.get(key)
        if got is None:
            got = self.atom_judge.valuation(cls, state)
            self._valuations[key] = got
        return got

    def rows(self, candidate: Ruleset) -> set[Row]:
        from fwtest.space.header import ProofError
        from fwtest.space.proof import AtomJudge, ProfileCompile, check_modelled, dry_limits

        sp = self.space
        canon, real = _canonical_limits(candidate)
        missing = [k for r in canon.rules() for k in self._rule_atom_keys(r) if k not in self._atom_keys]
        if missing:
            raise ProofUndecided(f"the proof space has no variable for {missing[0][0]} {missing[0][1]!r}")
        same_tracking = candidate.conntrack == self.base.conntrack and not any(
            r.action.kind == "ct_helper" for rs in (candidate, self.base) for r in rs.rules())
        try:
            if same_tracking:
                classified = self.classified
                check_modelled(canon, self.profile, classified.classes)
                valuation = self._valuation
            else:
                classified = self._classes_for(sp, canon, self.profile, self.flows)
                judge = AtomJudge(sp, canon, self.profile)
                valuation = judge.valuation
            classes = classified.classes
            pc = ProfileCompile(sp, canon, self.profile, classified.every if real else classes, track=bool(real))
            rows: set[Row] = set()
            for cls in classes:
                row = (cls.flow, cls.transport, cls.family)
                if row in rows:
                    continue
                for state in cls.states:
                    region = sp.class_region(cls, (state,))
                    if region & ~pc.accept(cls.path, valuation(cls, state)) != sp.false:
                        rows.add(row)
                        break
            # Rate limits on the flows' own timelines, as the proof judges them.
            for dry in dry_limits(sp, canon, self.profile, valuation, classified, pc=pc, rates=real):
                rows.add((dry.cls.flow, dry.cls.transport, dry.cls.family))
            return rows
        except (ProofError, InputError) as e:
            raise ProofUndecided(str(e)) from None


# ====================================================================== both

def _limit_chains(ruleset: Ruleset) -> tuple[set[str], set[str]]:
    """Chains holding a rate-limited rule, and chains from which a jump or goto leads to one."""
    holding = {name for name, chain in ruleset.chains.items() if any(r.match.limit for r in chain.rules)}
    leading = set(holding)
    changed = True
    while changed:
        changed = False
        for name, chain in ruleset.chains.items():
            if name not in leading and any(r.action.kind in ("jump", "goto") and r.action.target in leading
                                           for r in chain.rules):
                leading.add(name)
                changed = True
    return holding, leading


def limit_sensitive(base: Ruleset, candidate: Ruleset, edits: Sequence[RuleEdit] | None) -> bool:
    """Can the edits make a rate limit drop more than it does as given?

    The proof judges limits on the surge, not on every mix of traffic, so its
    "intact" is not enough when an edit adds or changes a limit, or lets more
    packets meet one: it widens or moves a jump towards a chain with limits; or,
    in such a chain (or one leading to it), above the jump or the limited rule,
    it deletes, narrows or moves below it a rule that used to take packets away.
    Edits that only keep packets away from limits (or remove a limit) leave them
    dropping no more than the replay of the ruleset as given shows. Without
    edits (a whole candidate), any limit counts.
    """
    base_limits = {r.id: r.match.limit for r in base.rules() if r.match.limit is not None}
    cand_limits = {r.id: r.match.limit for r in candidate.rules() if r.match.limit is not None}
    if any(base_limits.get(rid) != lm for rid, lm in cand_limits.items()):
        return True                                     # a limit added or changed
    if not cand_limits:
        return False
    if edits is None:
        return True
    holding, leading = _limit_chains(base)

    def gate(rule: Rule | None) -> bool:
        return rule is not None and (rule.match.limit is not None or (
            rule.action.kind in ("jump", "goto") and rule.action.target in leading))

    for edit in edits:
        if edit.kind in ("widen", "move") and (gate(edit.rule) and edit.rule.match.limit is None):
            return True                                 # more packets may take the jump
        if edit.chain not in leading:
            continue
        rules = base.chains[edit.chain].rules
        ids = [r.id for r in rules]
        last = max((i for i, r in enumerate(rules) if gate(r)), default=-1)
        at = ids.index(edit.rule.id) if edit.rule.id in ids else len(ids)
        if at >= last or edit.rule.action.kind not in ("accept", "drop", "reject"):
            continue
        # A rule above the gate that decided packets: after the edit some go on to the gate.
        if edit.kind in ("delete", "narrow", "string", "limit"):
            return True
        if edit.kind == "move" and (ids.index(edit.before) if edit.before in ids else len(ids)) > last:
            return True
        if edit.kind == "action" and edit.replacement is not None \
                and edit.replacement.action.kind not in ("accept", "drop", "reject"):
            return True
    return False


@dataclass(frozen=True)
class Judgement:
    """What one candidate does to the path, relative to the ruleset as given."""

    proof: frozenset[Row] | None       # rows newly blocked per the proof (None: it could not judge)
    replay: frozenset[Row] | None      # rows newly failing per the replay (None: not replayed)
    replay_complete: bool = False      # False: the replay stopped at the first new failure
    note: str = ""

    @property
    def rows(self) -> frozenset[Row]:
        return (self.proof or frozenset()) | (self.replay or frozenset())

    @property
    def breaks(self) -> bool:
        return bool(self.rows)

    @property
    def evidence(self) -> list[str]:
        return [name for name, rows in (("proof", self.proof), ("replay", self.replay)) if rows]

    def row_names(self) -> list[str]:
        """The rows for a report: the replay's (flow, transport, family) when it saw the break;
        the proof's as flow and family (its classes may stand for several transports)."""
        if self.replay:
            return [_row_name(r) for r in sorted(self.replay)]
        return sorted({f"{flow} IPv{family}" for flow, _t, family in self.proof or ()})


class PathJudge:
    """Proof and replay for candidates of one ruleset (results cached by edit)."""

    def __init__(self, base: Ruleset, profile: EmergencyProfile, *, seed: int = 0,
                 extra: Iterable[Ruleset] = (), use_proof: bool = True) -> None:
        from fwtest.traffic.synth import synthesize

        self.base = base
        self.profile = profile
        self.flows = synthesize(profile, seed=seed)
        self.notes: list[str] = []
        self.replay = ReplayJudge(base, profile, self.flows)
        self.proof: ProofJudge | None = None
        if use_proof:
            try:
                self.proof = ProofJudge(base, profile, self.flows, extra)
            except (ProofUndecided, InputError) as e:
                self.notes.append(f"the proof cannot judge this ruleset ({e}); replay alone decides")
            except Exception as e:  # noqa: BLE001 - a proof bug must not hide the replay's answer
                from fwtest.space.header import ProofError
                if not isinstance(e, ProofError):
                    raise
                self.notes.append(f"the proof failed on this ruleset ({e}); replay alone decides")
        self._cache: dict[tuple, Judgement] = {}

    @property
    def base_rows(self) -> set[Row]:
        rows = set(self.replay.base_rows)
        if self.proof is not None:
            rows |= self.proof.base_rows
        return rows

    def judge(self, candidate: Ruleset, edits: Sequence[RuleEdit] | None = None, *, replay: str = "auto",
              key: tuple | None = None) -> Judgement:
        """Newly broken rows of ``candidate`` (``edits``, when given, made it from the base:
        the replay then skips the flows they cannot affect).

        ``replay``: ``full`` replays every flow the edits can affect; ``auto`` lets the
        proof decide and replays only where it sees a break, up to the first newly failing
        row (enough to tell whether check's sampled traffic catches it), or everything when
        the proof cannot judge the candidate; ``none`` is the proof alone (``full`` when it
        cannot judge).
        """
        if replay not in ("auto", "full", "none"):
            raise ValueError(f"replay is auto, full or none, not {replay!r}")
        if key is None and edits is not None:
            key = (tuple(e.key for e in edits), replay)
        if key is not None and key in self._cache:
            return self._cache[key]
        proof_rows = None
        note = ""
        if self.proof is not None:
            try:
                proof_rows = frozenset(self.proof.rows(candidate) - self.proof.base_rows)
            except ProofUndecided as e:
                note = f"proof undecided: {e}"
        replay_rows, complete = None, False
        if proof_rows is not None and not proof_rows and limit_sensitive(self.base, candidate, edits):
            # The proof judges a rate limit class by class on the flows' timelines; where
            # a limit can meet other traffic than before, the replay (the engine on the
            # whole timeline) confirms its "intact".
            replay = "full"
            note = note or "rate limits in play: replayed in full"
        if proof_rows is None or replay == "full" or (replay == "auto" and proof_rows):
            first = replay == "auto" and proof_rows is not None
            rows, complete = self.replay.rows(candidate, edits, stop_at_new_failure=first)
            replay_rows = frozenset(rows - self.replay.base_rows)
        got = Judgement(proof_rows, replay_rows, complete, note)
        if key is not None:
            self._cache[key] = got
        return got

    def finding(self, candidate: Ruleset, judgement: Judgement, edits: Sequence[RuleEdit] | None = None
                ) -> dict[str, Any] | None:
        """A finding for a breaking candidate: the replay's (packet that died, rule that killed it),
        else the proof's first finding on a newly blocked row, with an engine-confirmed witness."""
        if judgement.replay:
            got = self.replay.finding(candidate, set(judgement.replay), edits)
            if got is not None:
                return got
        if judgement.proof:
            from fwtest.space.proof import prove

            proof = prove(candidate, self.profile, flows=self.flows, max_witnesses=1)
            for f in proof.findings:
                if (f.flow, f.transport, f.family) in judgement.proof:
                    out = f.to_json()
                    return {k: out[k] for k in ("kind", "flow", "message", "packet", "rule", "evidence",
                                                "transport", "family", "state", "detail") if k in out}
        return None


# ====================================================================== report pieces

@dataclass(frozen=True)
class EditResult:
    """One scanned single edit and what it does."""

    edit: RuleEdit
    judgement: Judgement

    @property
    def breaks(self) -> list[str]:
        return _flows_of(self.judgement.rows)

    @property
    def caught_by_replay(self) -> bool:
        """Caught by the replay of the profile's synthetic calls."""
        return bool(self.judgement.replay)

    def to_json(self) -> dict[str, Any]:
        j = self.judgement
        out = {**self.edit.to_json(), "breaks": self.breaks,
               "rows": j.row_names(), "evidence": j.evidence,
               "caught_by_replay": self.caught_by_replay}
        if j.note:
            out["note"] = j.note
        return out


@dataclass(frozen=True)
class LoadBearing:
    rule: Rule
    breaks: tuple[str, ...]
    edits: tuple[str, ...]            # descriptions of the dependency edits that break it

    def to_json(self) -> dict[str, Any]:
        return {**_rule_ref(self.rule), "breaks": list(self.breaks), "edits": list(self.edits)}


@dataclass(frozen=True)
class Independent:
    """A rule no emergency traffic depends on: no deletion, narrowing or flip of it breaks a flow."""

    rule: Rule
    packets: int                      # emergency packets it matched in the replay
    breaking_edits: tuple[str, ...] = ()   # other edits of it that do break (a widened drop, a move)

    def to_json(self) -> dict[str, Any]:
        out = {**_rule_ref(self.rule), "emergency_packets": self.packets}
        if self.breaking_edits:
            out["breaking_edits"] = list(self.breaking_edits)
        return out


@dataclass(frozen=True)
class BreakingEdit:
    """A smallest breaking edit sequence found by the search (or an incident class applied)."""

    edits: tuple[RuleEdit, ...]
    judgement: Judgement
    finding: dict[str, Any] | None
    source: str                       # "search", "search (harmless combination)", "seed <name>"
    description: str = ""

    @property
    def breaks(self) -> list[str]:
        return _flows_of(self.judgement.rows)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "edits": [e.to_json() for e in self.edits],
            "description": self.description or "; ".join(e.description for e in self.edits),
            "breaks": self.breaks, "rows": self.judgement.row_names(),
            "evidence": self.judgement.evidence, "caught_by_replay": bool(self.judgement.replay),
            "source": self.source, "finding": self.finding}
        return out


@dataclass
class Coverage:
    """Rule and clause coverage of the emergency traffic (the ruleset as given)."""

    rules: list[dict[str, Any]]
    representatives: int

    @property
    def matched(self) -> int:
        return sum(1 for r in self.rules if r["packets"])

    @property
    def clauses(self) -> tuple[int, int]:
        """(conditions seen both true and false by traffic reaching their rule, conditions judged)."""
        judged = [c for r in self.rules for c in r["clauses"] if c.get("judged", True)]
        both = [c for c in judged if c["true"] and c["false"]]
        return len(both), len(judged)

    def to_json(self) -> dict[str, Any]:
        both, judged = self.clauses
        return {"rules_matched": self.matched, "rules": len(self.rules), "clauses_both_ways": both,
                "clauses_judged": judged, "representative_packets": self.representatives,
                "by_rule": self.rules}


@dataclass
class GateCheck:
    """Gate mode: did check/proof flag everything replay and the kernel show breaking?"""

    candidates: int = 0
    breaking: int = 0
    flagged: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)           # false passes of the gate
    proof_misses: list[dict[str, Any]] = field(default_factory=list)     # replay breaks, proof says intact
    shortcut_errors: list[dict[str, Any]] = field(default_factory=list)  # fuzz's replay shortcut disagreed
    kernel: str = "not run"
    kernel_candidates: int = 0
    kernel_disagreements: list[dict[str, Any]] = field(default_factory=list)
    kernel_skipped: list[dict[str, Any]] = field(default_factory=list)   # edits netfilter cannot express

    @property
    def passed(self) -> bool:
        return not self.misses and not self.shortcut_errors

    @property
    def check_score(self) -> float | None:
        """The share of breaking candidates the real ``fwtest check`` flagged."""
        return round(self.flagged / self.breaking, 3) if self.breaking else None

    def to_json(self) -> dict[str, Any]:
        return {"result": "pass" if self.passed else "fail", "candidates": self.candidates,
                "breaking": self.breaking, "flagged": self.flagged, "check_score": self.check_score,
                "misses": self.misses,
                "proof_misses": self.proof_misses, "shortcut_errors": self.shortcut_errors,
                "kernel": self.kernel, "kernel_candidates": self.kernel_candidates,
                "kernel_disagreements": self.kernel_disagreements, "kernel_skipped": self.kernel_skipped}


@dataclass
class SeedResult:
    """A seed scenario: still caught by fwtest (its own base and candidate), and what its
    class of edit does to the ruleset being fuzzed."""

    name: str
    caught: bool
    detail: str
    on_ruleset: str = ""            # "breaks emergency-call, ..." / "harmless" / "not applicable: ..."

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "caught": self.caught, "detail": self.detail}
        if self.on_ruleset:
            out["on_ruleset"] = self.on_ruleset
        return out


@dataclass
class FuzzReport:
    ruleset: str
    profile: str
    mode: str
    seed: int
    max_examples: int
    base_blocked: list[str]                  # rows the ruleset already blocks, as given
    load_bearing: list[LoadBearing]
    independent: list[Independent]
    single_edits: list[EditResult]
    breaking_edits: list[BreakingEdit]
    coverage: Coverage | None
    gate: GateCheck | None = None
    seeds: list[SeedResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def mutation_score(self) -> dict[str, Any]:
        """How many breaking single edits each kind of evidence catches.

        ``replay_score``: the synthetic traffic's replay (how good the sampled calls
        are); ``proof_score``: the proof over the header space. ``fwtest check`` runs
        both, so it catches an edit either finds; gate mode (``gate.check_score``) runs
        the real ``check`` on a sample to show that it does.
        """
        breaking = [r for r in self.single_edits if r.judgement.breaks]
        replayed = [r for r in breaking if r.caught_by_replay]
        proved = [r for r in breaking if r.judgement.proof]

        def share(part: list) -> float | None:
            return round(len(part) / len(breaking), 3) if breaking else None

        return {"breaking_single_edits": len(breaking), "caught_by_replay": len(replayed),
                "caught_by_proof": len(proved), "replay_score": share(replayed), "proof_score": share(proved),
                "missed_by_replay": [r.edit.description for r in breaking if not r.caught_by_replay],
                "missed_by_proof": [r.edit.description for r in breaking if not r.judgement.proof]}

    @property
    def exit_code(self) -> int:
        """1 when the path is already blocked as given, a seed scenario is no longer caught,
        or (gate mode) the gate passed an edit that breaks the path; else 0."""
        if self.base_blocked or any(not s.caught for s in self.seeds):
            return 1
        if self.gate is not None and not self.gate.passed:
            return 1
        return 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "load_bearing": [r.to_json() for r in self.load_bearing],
            "breaking_edits": [b.to_json() for b in self.breaking_edits],
            "independent": [r.to_json() for r in self.independent],
            "single_edits": [r.to_json() for r in self.single_edits],
            "mutation_score": self.mutation_score,
            "coverage": self.coverage.to_json() if self.coverage is not None else None,
            "ruleset": self.ruleset, "profile": self.profile, "mode": self.mode, "seed": self.seed,
            "max_examples": self.max_examples, "base_blocked": self.base_blocked,
            "notes": self.notes, "stats": self.stats,
        }
        if self.gate is not None:
            out["gate"] = self.gate.to_json()
        if self.seeds:
            out["seeds"] = [s.to_json() for s in self.seeds]
        return out


# ====================================================================== (a) scan

def scan(judge: PathJudge, edits: Sequence[RuleEdit]) -> list[EditResult]:
    """Judge every single edit with proof and replay."""
    return [EditResult(e, judge.judge(e.apply(), [e])) for e in edits]


def dependencies(ruleset: Ruleset, results: Sequence[EditResult], packets: Mapping[str, int]
                 ) -> tuple[list[LoadBearing], list[Independent]]:
    """Load-bearing rules (DESIGN.md) and the rules no emergency traffic depends on."""
    by_rule: dict[str, list[EditResult]] = {}
    for r in results:
        if r.edit.kind != "insert":
            by_rule.setdefault(r.edit.rule.id, []).append(r)
    load_bearing, independent = [], []
    for rule in ruleset.rules():
        mine = by_rule.get(rule.id, [])
        needed = [r for r in mine if r.edit.tests_dependency and r.judgement.breaks]
        if needed:
            rows = set().union(*(r.judgement.rows for r in needed))
            load_bearing.append(LoadBearing(rule, tuple(_flows_of(rows)),
                                            tuple(r.edit.description for r in needed)))
        else:
            other = tuple(r.edit.description for r in mine if r.judgement.breaks)
            independent.append(Independent(rule, packets.get(rule.id, 0), other))
    return load_bearing, independent


# ====================================================================== (b) search

class _Breaks(Exception):
    def __init__(self, edits: Sequence[RuleEdit], judgement: Judgement) -> None:
        super().__init__("; ".join(e.description for e in edits))
        self.edits = tuple(edits)
        self.judgement = judgement


def _run_search(strategy: Any, probe: Any, max_examples: int, seed: int) -> _Breaks | None:
    """Run Hypothesis over ``strategy``; the smallest example ``probe`` raises _Breaks for, shrunk."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(max_examples=max_examples, database=None, deadline=None, derandomize=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck),
              report_multiple_bugs=False, verbosity=Verbosity.quiet, print_blob=False)
    @given(strategy)
    def search(example: Any) -> None:
        probe(example)

    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            search()
    except _Breaks as found:
        return found
    return None


def search(judge: PathJudge, ruleset: Ruleset, *, max_examples: int, seed: int,
           harmless: Sequence[RuleEdit] = (), rounds: int = SEARCH_ROUNDS) -> tuple[list[BreakingEdit], list[str]]:
    """Hypothesis-driven multi-edit search: up to ``rounds`` smallest breaking edit sequences of
    different rules, then a round combining edits that are harmless one by one."""
    from hypothesis import reject
    from hypothesis import strategies as st

    from fwtest.strategies import EditError

    found: list[BreakingEdit] = []
    notes: list[str] = []

    def probe(edits: Sequence[RuleEdit]) -> None:
        if not edits:
            reject()
        try:
            candidate = apply_edits(ruleset, edits)
        except EditError:
            reject()
        j = judge.judge(candidate, edits, replay="none")   # the proof steers; replay confirms the hits
        if j.breaks:
            raise _Breaks(edits, j)

    allowed = [r.id for r in ruleset.rules()]
    for n in range(rounds):
        if not allowed:
            break
        hit = _run_search(edit_sequences(ruleset, max_edits=3, rules=allowed, profile=judge.profile),
                          probe, max_examples, seed + n)
        if hit is None:
            notes.append(f"search round {n + 1}: no breaking edit of the remaining {len(allowed)} rules "
                         f"in {max_examples} examples")
            break
        found.append(_confirmed(judge, ruleset, hit, "search"))
        touched = {e.rule.id for e in hit.edits} | {e.before for e in hit.edits if e.before}
        allowed = [a for a in allowed if a not in touched]
    if len(harmless) >= 2:
        pool = list(harmless)
        combos = st.lists(st.sampled_from(pool), min_size=2, max_size=3,
                          unique_by=(lambda e: e.rule.id, lambda e: e.before or e.rule.id))
        hit = _run_search(combos, probe, max_examples, seed + rounds)
        if hit is None:
            notes.append(f"no combination of 2-3 edits that are harmless one by one breaks the path "
                         f"({max_examples} examples)")
        else:
            found.append(_confirmed(judge, ruleset, hit, "search (harmless one by one)"))
    return found, notes


def _confirmed(judge: PathJudge, ruleset: Ruleset, hit: _Breaks, source: str) -> BreakingEdit:
    """A search hit with both kinds of evidence and a finding to show."""
    candidate = apply_edits(ruleset, hit.edits)
    j = judge.judge(candidate, list(hit.edits), replay="full")
    return BreakingEdit(hit.edits, j, judge.finding(candidate, j, list(hit.edits)), source)


# ====================================================================== (d) coverage

_CLAUSES = ("family", "proto", "src", "dst", "sport", "dport", "iface_in", "iface_out", "state", "fragment",
            "tcp_flags", "icmp", "helper", "sip", "string", "limit")
_STATEFUL = ("helper", "limit")   # need a connection or a bucket: not judged on single packets


def coverage(ruleset: Ruleset, profile: EmergencyProfile, replay: ReplayJudge) -> Coverage:
    """Which rules the emergency traffic runs into, and which of their conditions it tells apart.

    Rule coverage counts every packet of every synthetic flow (``Verdict.trace``). Clause
    coverage walks one representative packet per flow row, message and conntrack state
    through ``explain`` and, at every rule it reaches, evaluates each condition alone:
    a condition seen both true and false is exercised by the traffic. Rate limits and
    helper matches depend on state a single packet does not carry and are not judged.
    """
    from fwtest.engine import explain
    from fwtest.engine.limits import LimitState
    from fwtest.engine.match import compile_match
    from fwtest.engine.packet import PacketView
    from fwtest.strategies import match_text

    hooks = profile.hooks()
    reps: dict[tuple, tuple[Any, str, str]] = {}
    for flow, outcome in zip(replay.flows, replay.base_outcomes, strict=True):
        for step, v in zip(flow.steps, outcome.verdicts, strict=True):
            if step.record.frag:
                continue     # the rules see the reassembled datagram; its first fragment stands for it
            key = (flow.key, step.label, step.direction, v.state)
            if key not in reps:
                reps[key] = (step.record, hooks[step.direction], v.state)
    tests: dict[tuple[str, str, int], Any] = {}
    counts: dict[tuple[str, int], list[int]] = {}
    for record, path, state in reps.values():
        try:
            walk = explain(ruleset, record, path=path, state=state, native_hook=profile.firewall)
        except (InputError, ValueError):
            continue
        for step in walk.steps:
            rule = step.rule
            if rule is None:
                continue
            view = PacketView(record, walk.state)
            view.at_hook(step.hook)
            for i, name in enumerate(_CLAUSES):
                if name in _STATEFUL or not _present(rule.match, name):
                    continue
                key = (rule.id, name, i)
                test = tests.get(key)
                if test is None:
                    alone = Match(**{name: getattr(rule.match, name)})
                    test = compile_match(alone, rule, LimitState())[0]
                    tests[key] = test
                hit = all(t(view) for t in test)
                counts.setdefault((rule.id, i), [0, 0])[0 if hit else 1] += 1
    rules = []
    for chain in ruleset.chains.values():
        for rule in chain.rules:
            clauses = []
            for i, name in enumerate(_CLAUSES):
                if not _present(rule.match, name):
                    continue
                t, f = counts.get((rule.id, i), [0, 0])
                entry = {"clause": match_text(Match(**{name: getattr(rule.match, name)})), "true": t, "false": f}
                if name in _STATEFUL:
                    entry["judged"] = False
                clauses.append(entry)
            rules.append({**_rule_ref(rule), "packets": replay.packets_matched.get(rule.id, 0),
                          "flows": _flows_of({replay.flows[i].key for i in replay.touched.get(rule.id, ())}),
                          "clauses": clauses})
    return Coverage(rules, len(reps))


def _present(match: Match, name: str) -> bool:
    value = getattr(match, name)
    return bool(value) if name == "string" else value is not None


# ====================================================================== (c) gate self-check

def _kernel_sample(flows: Sequence[CallFlow], hooks: Mapping[str, str]) -> list[tuple[CallFlow, list, list]]:
    """One instance per flow row, media trimmed to its first packets per stream, on the
    kernel oracle's compressed timeline (no surge: the kernel sees packets 1 ms apart)."""
    from fwtest.oracle import compress_timeline

    out = []
    seen: set[Row] = set()
    for flow in flows:
        if flow.flow == "surge" or flow.key in seen:
            continue
        seen.add(flow.key)
        kept, streams = [], {}
        for step in flow.steps:
            if step.phase.startswith("media") and step.label in ("RTP", "RTCP"):
                r = step.record
                k = (r.src, r.dst, r.sport, r.dport)
                streams[k] = streams.get(k, 0) + 1
                if streams[k] > KERNEL_MEDIA_PACKETS:
                    continue
            kept.append(step)
        records = compress_timeline([s.record for s in kept])
        out.append((flow, records, [s.direction for s in kept]))
    return out


def gate_check(judge: PathJudge, ruleset: Ruleset, candidates: Sequence[tuple[Sequence[RuleEdit], Ruleset]], *,
               kernel: str = "auto") -> GateCheck:
    """Every candidate through the real ``check`` (the gate), the proof, a full replay
    (the evidence), and the kernel oracle when available."""
    from fwtest.api import check, replay_flows
    from fwtest.oracle import kernel_unavailable

    profile = judge.profile
    gate = GateCheck()
    base_rows = set(judge.replay.base_rows)
    use_kernel = kernel != "no"
    reason = kernel_unavailable() if use_kernel else "turned off (--kernel no)"
    if reason and kernel == "yes":
        raise InputError("fwtest", 0, f"--kernel yes: {reason}")
    fw = None
    sample: list[tuple[CallFlow, list, list]] = []
    stack = contextlib.ExitStack()
    with stack:
        if use_kernel and reason is None:
            from fwtest.oracle import KernelFirewall
            from fwtest.rules.native import ruleset_from_dict

            # Start empty: the ruleset itself is loaded below, where a construct netfilter
            # cannot express is reported instead of ending the run.
            start = ruleset_from_dict({"name": "fwtest-gate-start", "policy": "accept", "rules": []})
            fw = stack.enter_context(KernelFirewall(start, firewall=profile.firewall,
                                                    interfaces=profile.interfaces,
                                                    sip_ports=profile.sip_helper_ports, backend="nft"))
            sample = _kernel_sample(judge.flows, profile.hooks())
            gate.kernel = "netfilter (nft) in network namespaces"
        else:
            gate.kernel = f"not run: {reason}"
        base_kernel: tuple[set[Row], list] = (set(), [])
        if fw is not None:
            try:
                base_kernel = _kernel_rows(fw, ruleset, profile, sample)
            except InputError as e:
                # Not every model construct exists in netfilter (a SIP header match, say).
                if kernel == "yes":
                    raise InputError(e.path, e.line, f"--kernel yes: cannot load the ruleset into netfilter: "
                                                     f"{e.message}") from None
                gate.kernel = f"not run: the ruleset cannot be loaded into netfilter ({e})"
                fw = None
        for edits, candidate in candidates:
            gate.candidates += 1
            label = "; ".join(e.description for e in edits)
            full = {o.flow.key for o in replay_flows(candidate, profile, judge.flows) if not o.passed}
            evidence = full - base_rows
            shortcut = judge.judge(candidate, edits, replay="full")
            if shortcut.replay is not None and set(shortcut.replay) != evidence:
                gate.shortcut_errors.append({"edits": label, "full_replay": sorted(map(_row_name, evidence)),
                                             "shortcut": sorted(map(_row_name, shortcut.replay))})
            report = check(candidate, profile, analysis=False)      # the gate, as CI runs it
            flagged_rows = {(f.flow, f.transport, f.family) for f in report.findings
                            if f.kind in ("blocked", "regression")} - base_rows
            kernel_rows: set[Row] = set()
            if fw is not None:
                try:
                    kernel_rows, disagreements = _kernel_rows(fw, candidate, profile, sample)
                except InputError as e:
                    gate.kernel_skipped.append({"edits": label, "reason": str(e)})
                else:
                    kernel_rows -= base_kernel[0]
                    gate.kernel_candidates += 1
                    for d in disagreements:
                        gate.kernel_disagreements.append({"edits": label, **d})
            shown = evidence | kernel_rows
            if shown:
                gate.breaking += 1
            if evidence and shortcut.proof is not None and not shortcut.proof:
                gate.proof_misses.append({"edits": label, "replay": sorted(map(_row_name, evidence))})
            unflagged = shown - flagged_rows
            if unflagged:
                gate.misses.append({"edits": label, "rows": sorted(map(_row_name, unflagged)),
                                    "evidence": ["replay"] * bool(unflagged & evidence)
                                    + ["kernel"] * bool(unflagged & kernel_rows)})
            elif shown:
                gate.flagged += 1
    return gate


def _kernel_rows(fw: Any, ruleset: Ruleset, profile: EmergencyProfile, sample: Sequence[tuple]
                 ) -> tuple[set[Row], list[dict[str, Any]]]:
    """Rows whose sampled packets the kernel drops where the model, on the same compressed
    timeline, accepts them (and every packet-level disagreement, for the report)."""
    from fwtest.engine import replay

    # Loading an edited ruleset from its files would load the unedited file: export the IR.
    fw.load(replace(ruleset, files=()), backend="nft")
    hooks = profile.hooks()
    rows: set[Row] = set()
    disagreements: list[dict[str, Any]] = []
    for flow, records, directions in sample:
        kernel = fw.replay(records, directions)
        model = replay(ruleset, records, [hooks[d] for d in directions], native_hook=profile.firewall,
                       sip_ports=profile.sip_helper_ports)
        for i, (k, m) in enumerate(zip(kernel, model, strict=True)):
            if k.accepted != m.accepted:
                disagreements.append({"row": _row_name(flow.key), "packet": i, "record": records[i].short(),
                                      "kernel": k.verdict, "model": m.verdict,
                                      "rule": m.rule.id if m.rule else (m.reason or "policy")})
            if not k.accepted and m.accepted:
                rows.add(flow.key)
    return rows, disagreements


# ====================================================================== seeds

@dataclass(frozen=True)
class Seed:
    """An incident scenario (``seeds/<name>/``): a base ruleset, the breaking edit as a
    candidate file, and the finding fwtest must report for it."""

    name: str
    folder: Path
    description: str
    expected: Mapping[str, Any]

    @property
    def base(self) -> Path:
        return self.folder / "base.yaml"

    @property
    def candidate(self) -> Path:
        return self.folder / "candidate.yaml"

    @property
    def profile(self) -> Path:
        own = self.folder / "profile.yaml"
        return own if own.is_file() else self.folder.parent / "profile.yaml"


def load_seeds(folder: str | Path) -> list[Seed]:
    """Every scenario in a seeds folder (a subfolder with base.yaml, candidate.yaml, edit.txt,
    expected.json)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(str(root), 0, "no such seeds folder")
    seeds = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in ("base.yaml", "candidate.yaml", "edit.txt", "expected.json"):
            if not (sub / name).is_file():
                raise InputError(str(sub / name), 0, f"seed {sub.name} has no {name}")
        try:
            expected = json.loads((sub / "expected.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(str(sub / "expected.json"), 0, f"not JSON: {e}") from None
        if not isinstance(expected, Mapping) or not {"kind", "flow", "rule"} <= set(expected):
            raise InputError(str(sub / "expected.json"), 0, "expected.json needs kind, flow and rule")
        description = (sub / "edit.txt").read_text(encoding="utf-8").strip().splitlines()
        seeds.append(Seed(sub.name, sub, description[0] if description else "", expected))
    if not seeds:
        raise InputError(str(root), 0, "no seed scenarios in this folder")
    return seeds


def expected_finding_matches(expected: Mapping[str, Any], findings: Sequence[Mapping[str, Any]]) -> bool:
    """Does a report hold the seed's expected finding? ``rule`` is the deciding rule's id;
    ``kind``, ``flow`` and, when given, ``message``, ``transport`` and ``family`` must equal."""
    keys = [k for k in ("kind", "flow", "message", "transport", "family") if k in expected]
    for f in findings:
        if (f.get("rule") or {}).get("id") != expected["rule"]:
            continue
        if all(f.get(k) == expected[k] for k in keys):
            return True
    return False


def run_seed(seed: Seed) -> SeedResult:
    """The seed's base passes ``check`` and its candidate fails with the expected finding."""
    from fwtest.api import check
    from fwtest.profile import load_profile

    profile = load_profile(seed.profile)
    base = check(str(seed.base), profile, analysis=False)
    if base.result != "pass":
        return SeedResult(seed.name, False, f"base.yaml does not pass: {[f.to_json() for f in base.findings][:1]}")
    candidate = check(str(seed.candidate), profile, analysis=False)
    findings = [f.to_json() for f in candidate.findings]
    if candidate.result == "pass":
        return SeedResult(seed.name, False, "candidate.yaml passes: the incident is not caught")
    if not expected_finding_matches(seed.expected, findings):
        got = sorted({(f["kind"], f["flow"], (f.get("rule") or {}).get("id")) for f in findings})
        return SeedResult(seed.name, False, f"expected {dict(seed.expected)}, got {got}")
    return SeedResult(seed.name, True, seed.description)


def _template_rule(spec: Mapping[str, Any], rule_id: str, where: Rule | None) -> Rule:
    """A rule written as in the native YAML, through the native loader (so it means what
    the same YAML would), placed at ``where``'s file and line."""
    from fwtest.rules.ir import Source
    from fwtest.rules.native import ruleset_from_dict

    rs = ruleset_from_dict({"name": "seed", "policy": "accept", "rules": [{"id": rule_id, **spec}]},
                           "<seed class>")
    rule = next(rs.rules())
    source = where.source if where is not None else Source("<seed class>", 0)
    return replace(rule, source=source)


def _filter_chains(ruleset: Ruleset, profile: EmergencyProfile, family: int | None) -> list[str]:
    """Base chains on the profile's filtering hook that see ``family`` (None: any)."""
    return [b.chain for b in ruleset.bases
            if b.hook in (None, profile.firewall) and (family is None or b.family in (None, family))]


def _insert_at_top(ruleset: Ruleset, profile: EmergencyProfile, spec: Mapping[str, Any], what: str,
                   family: int | None = None) -> list[RuleEdit]:
    edits = []
    for n, name in enumerate(_filter_chains(ruleset, profile, family)):
        rules = ruleset.chains[name].rules
        first = rules[0] if rules else None
        rule = _template_rule(spec, f"seed-class-{n + 1}", first)
        edits.append(RuleEdit("insert", rule, f"insert at the top of {name}: {what}", name, ruleset, rule,
                              first.id if first is not None else None))
    return edits


def seed_class_edits(klass: str, ruleset: Ruleset, profile: EmergencyProfile
                     ) -> tuple[str, Ruleset | None, tuple[RuleEdit, ...]]:
    """The incident class of a seed, applied to another ruleset: (what was done, the edited
    ruleset or None when the class does not apply, the rule edits it consists of)."""
    from fwtest.strategies import _limit_edit, _nets_text, _with_addr, _with_ports

    edits: list[RuleEdit] = []
    if klass == "deny-above-allow":
        nets = [n for n in profile.peers if n.version == 4 and n.prefixlen > 0]
        for net in nets:
            wider = net.supernet(prefixlen_diff=1)
            neighbour = next(x for x in wider.subnets(prefixlen_diff=1) if x != net)
            edits += _insert_at_top(ruleset, profile, {"src": str(wider), "action": "drop"},
                                    f"drop src {wider} (a deny for the neighbouring {neighbour}, typed one "
                                    f"prefix bit short, covering the peers' {net})", family=4)
    elif klass == "drop-fragments":
        edits = _insert_at_top(ruleset, profile, {"fragment": "any", "action": "drop"},
                               "drop every IP fragment (hardening)")
    elif klass == "drop-options":
        if "udp" not in profile.sip:
            return "the profile has no SIP over UDP", None, ()
        edits = _insert_at_top(ruleset, profile, {"proto": "udp", "dst": [str(n) for n in profile.psap],
                                                  "dport": profile.sip["udp"], "sip": {"method": "OPTIONS"},
                                                  "action": "drop"}, "drop SIP OPTIONS over UDP to the PSAP")
    elif klass == "surge-limit":
        limited = [(name, r) for name, c in ruleset.chains.items() for r in c.rules if r.match.limit is not None]
        if limited:
            edits = [_limit_edit(ruleset, name, r, 5.0, 10) for name, r in limited]
        else:
            port = profile.sip.get("udp", next(iter(profile.sip.values())))
            edits = _insert_at_top(ruleset, profile, {
                "proto": "udp", "dst": [str(n) for n in profile.psap], "dport": port,
                "sip": {"method": "INVITE"}, "limit": {"rate": "5/s", "burst": 10, "above": True},
                "action": "drop"}, "drop INVITEs above one global bucket of 5/s, burst 10")
    elif klass == "narrow-rtp":
        ranges = {profile.rtp_psap, profile.rtp_peers}
        for name, chain in ruleset.chains.items():
            for r in chain.rules:
                new = r.match
                for which in ("sport", "dport"):
                    pm = getattr(new, which)
                    if pm is not None and not pm.negated and any(lo <= a and b <= hi for lo, hi in pm.ranges
                                                                 for a, b in ranges):
                        new = _with_ports(new, which, [(10000, 20000)])
                if new is not r.match:
                    edits.append(RuleEdit("narrow", r, f"narrow the media ports of {r.id} ({r.source}) to 10000-20000",
                                          name, ruleset, replace(r, match=new), None, True))
    elif klass == "forget-ipv6":
        for name, chain in ruleset.chains.items():
            for r in chain.rules:
                if r.action.kind != "accept":
                    continue
                new = r.match
                for which in ("src", "dst"):
                    am = getattr(new, which)
                    if am is not None and not am.negated and {4, 6} <= am.families:
                        new = _with_addr(new, which, [x for x in am.ranges if x.family == 4])
                if new is not r.match:
                    kept = ", ".join(_nets_text(x.family, x.first, x.last) for am in (new.src, new.dst)
                                     if am is not None for x in am.ranges)
                    edits.append(RuleEdit("narrow", r, f"drop the IPv6 prefixes of {r.id} ({r.source}), keeping {kept}",
                                          name, ruleset, replace(r, match=new), None, True))
    elif klass == "helper-off":
        ct = ruleset.conntrack
        if not ct.enabled or "sip" not in ct.helpers:
            return "the ruleset does not use the SIP helper", None, ()
        candidate = replace(ruleset, conntrack=replace(ct, helpers=ct.helpers - {"sip"}))
        return "turn the SIP conntrack helper off", candidate, ()
    elif klass == "udp-stream-timeout":
        ct = ruleset.conntrack
        if not ct.enabled:
            return "the ruleset tracks no connections", None, ()
        value = 120 if profile.call_seconds > 120 else max(1, profile.call_seconds // 2)
        if ct.timeout("udp_stream") <= value:
            return f"udp_stream is already {ct.timeout('udp_stream')} s", None, ()
        timeouts = {**dict(ct.timeouts), "udp_stream": value}
        candidate = replace(ruleset, conntrack=replace(ct, timeouts=timeouts))
        return f"lower the udp_stream conntrack timeout to {value} s", candidate, ()
    else:
        return f"unknown seed class {klass!r}", None, ()
    if not edits:
        return "nothing in the ruleset this class of edit applies to", None, ()
    if klass == "forget-ipv6":
        what = f"drop the IPv6 prefixes of {len(edits)} accept rules ({', '.join(e.rule.id for e in edits)})"
    elif klass == "narrow-rtp":
        what = f"narrow the media ports of {', '.join(e.rule.id for e in edits)} to 10000-20000"
    else:
        what = "; ".join(e.description for e in edits)
    return what, apply_edits(ruleset, edits), tuple(edits)


def apply_seed_classes(judge: PathJudge, ruleset: Ruleset, seeds: Sequence[Seed], results: list[SeedResult]
                       ) -> list[BreakingEdit]:
    """Each seed's class of edit applied to ``ruleset``: the breaking ones, and a line per seed."""
    found = []
    for seed, result in zip(seeds, results, strict=True):
        klass = seed.expected.get("class")
        if not klass:
            continue
        what, candidate, edits = seed_class_edits(str(klass), ruleset, judge.profile)
        if candidate is None:
            result.on_ruleset = f"not applicable: {what}"
            continue
        j = judge.judge(candidate, list(edits) if edits else None, replay="full")
        if j.breaks:
            found.append(BreakingEdit(edits, j, judge.finding(candidate, j, list(edits) if edits else None),
                                      f"seed {seed.name}", what))
            result.on_ruleset = f"breaks {', '.join(_flows_of(j.rows))}: {what}"
        else:
            result.on_ruleset = f"harmless: {what}"
    return found


# ====================================================================== the whole run

def fuzz(ruleset: Any, profile: Any, *, max_examples: int = DEFAULT_MAX_EXAMPLES, seed: int = 0,
         mode: str = "default", kinds: Iterable[str] = EDIT_KINDS, kernel: str = "auto",
         seeds: str | Path | None = None) -> FuzzReport:
    """Fuzz the edits of ``ruleset`` against ``profile`` (paths, dicts or loaded objects).

    ``mode``: ``default`` (scan, search, coverage and mutation score), ``scan`` (no
    search), ``gate`` (scan plus the gate self-check over ``max_examples`` single
    edits, a seeded sample, and ``max_examples`` drawn edit sequences; ``kernel``
    ``auto``/``yes``/``no`` says whether the kernel oracle joins in). ``seeds``: a seeds folder whose incident
    scenarios are run first (each must still be caught).
    """
    from fwtest.profile import load_profile
    from fwtest.rules import load_ruleset

    if mode not in MODES:
        raise InputError("fwtest", 0, f"fuzz mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(max_examples, int) or not 1 <= max_examples <= 100000:
        raise InputError("fwtest", 0, f"--max-examples must be 1..100000, not {max_examples!r}")
    if kernel not in ("auto", "yes", "no"):
        raise InputError("fwtest", 0, f"--kernel must be auto, yes or no, not {kernel!r}")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in EDIT_KINDS]
    if unknown or not kinds:
        raise InputError("fwtest", 0, f"--kinds must name edit kinds among {', '.join(EDIT_KINDS)}, "
                                      f"not {', '.join(unknown) or 'nothing'}")
    started = time.perf_counter()
    rs = load_ruleset(ruleset)
    prof = profile if isinstance(profile, EmergencyProfile) else load_profile(profile)
    seed_list = load_seeds(seeds) if seeds is not None else []
    seed_results = [run_seed(s) for s in seed_list]
    edits = single_edits(rs, kinds=kinds)
    judge = PathJudge(rs, prof, seed=seed, extra=[e.apply() for e in edits])
    notes = list(judge.notes)
    base_blocked = sorted(_row_name(r) for r in judge.base_rows)
    if base_blocked:
        notes.append("the ruleset already blocks part of the path as given: edits are judged on the rows "
                     "that pass (run fwtest check for the findings)")
    prepared = time.perf_counter()
    results = scan(judge, edits)
    load_bearing, independent = dependencies(rs, results, judge.replay.packets_matched)
    undecided = [r for r in results if r.judgement.proof is None and judge.proof is not None]
    if undecided:
        notes.append(f"the proof could not judge {len(undecided)} edits (replay alone decided them), "
                     f"e.g. {undecided[0].edit.description}: {undecided[0].judgement.note}")
    scanned = time.perf_counter()
    breaking: list[BreakingEdit] = apply_seed_classes(judge, rs, seed_list, seed_results)
    if mode == "default":
        harmless = [r.edit for r in results if not r.judgement.breaks]
        found, search_notes = search(judge, rs, max_examples=max_examples, seed=seed, harmless=harmless)
        breaking.extend(found)
        notes.extend(search_notes)
    searched = time.perf_counter()
    cov = coverage(rs, prof, judge.replay)
    gate = None
    if mode == "gate":
        # ``max_examples`` single edits (a seeded sample, every breaking kind included) and as
        # many drawn edit sequences: each costs a full replay, a check and a proof.
        import random

        singles = [r.edit for r in results]
        if len(singles) > max_examples:
            singles = sorted(random.Random(seed).sample(range(len(singles)), max_examples))
            singles = [results[i].edit for i in singles]
        candidates: list[tuple[Sequence[RuleEdit], Ruleset]] = [([e], e.apply()) for e in singles]
        candidates.extend((seq, apply_edits(rs, seq)) for seq in _drawn_sequences(rs, prof, max_examples, seed))
        gate = gate_check(judge, rs, candidates, kernel=kernel)
    done = time.perf_counter()
    stats = {"single_edits": len(results), "flows": len(judge.flows),
             "packets": sum(len(f.steps) for f in judge.flows),
             "prepare_seconds": round(prepared - started, 2), "scan_seconds": round(scanned - prepared, 2),
             "search_seconds": round(searched - scanned, 2), "total_seconds": round(done - started, 2)}
    return FuzzReport(", ".join(rs.files) or rs.name, prof.name, mode, seed, max_examples, base_blocked,
                      load_bearing, independent, results, breaking, cov, gate, seed_results, notes, stats)


def _drawn_sequences(ruleset: Ruleset, profile: EmergencyProfile, count: int, seed: int) -> list[list[RuleEdit]]:
    """``count`` edit sequences drawn by Hypothesis (generation only, reproducible by seed)."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed

    drawn: list[list[RuleEdit]] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, derandomize=False, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(edit_sequences(ruleset, max_edits=3, profile=profile))
    def draw(edits: list[RuleEdit]) -> None:
        drawn.append(edits)

    draw()
    return drawn


# ====================================================================== rendering

def render_fuzz_table(report: FuzzReport) -> str:
    """The terminal report: load-bearing rules, the rest, the smallest breaking edits, the figures."""
    from tabulate import tabulate

    lines = [f"fwtest fuzz: {report.ruleset} against profile '{report.profile}' "
             f"(seed {report.seed}, {report.stats.get('single_edits', 0)} single edits)", ""]
    if report.base_blocked:
        lines += ["The ruleset already blocks: " + ", ".join(report.base_blocked), ""]
    lines.append("Load-bearing rules (deleting, narrowing or flipping them breaks the path):")
    if report.load_bearing:
        rows = [[lb.rule.id, str(lb.rule.source), ", ".join(lb.breaks), _short(lb.edits)]
                for lb in report.load_bearing]
        lines.append(tabulate(rows, headers=["Rule", "Where", "Breaks", "For example"], tablefmt="simple"))
    else:
        lines.append("  none")
    lines += ["", "Rules no emergency traffic depends on:"]
    if report.independent:
        rows = [[r.rule.id, str(r.rule.source), r.packets, _short(r.breaking_edits) or "-"]
                for r in report.independent]
        lines.append(tabulate(rows, headers=["Rule", "Where", "Emergency packets", "Yet breaks the path if"],
                              tablefmt="simple"))
    else:
        lines.append("  none")
    if report.breaking_edits:
        lines += ["", "Breaking edits found (the search's are shrunk to the smallest by Hypothesis):"]
        for n, b in enumerate(report.breaking_edits, 1):
            lines.append(f"  {n}. [{b.source}] {b.to_json()['description']}")
            lines.append(f"     breaks {', '.join(b.breaks)} ({', '.join(b.judgement.evidence)})")
            f = b.finding
            if f:
                rule = f.get("rule") or {}
                where = f"{rule.get('id')} ({rule.get('file')}:{rule.get('line')})" if rule.get("file") else \
                    str(rule.get("id") or rule.get("reason") or "")
                packet = f.get("packet") or {}
                pkt = (f"{packet.get('proto')} {packet.get('src')}:{packet.get('sport', '')} > "
                       f"{packet.get('dst')}:{packet.get('dport', '')}") if packet else ""
                lines.append(f"     {f.get('flow')}: {f.get('message')} {pkt} dies at {where}")
    ms = report.mutation_score
    lines += ["", "How good is the gate:"]
    if ms["replay_score"] is not None:
        lines.append(f"  mutation score: of {ms['breaking_single_edits']} breaking single edits, the replay of the "
                     f"synthetic calls catches {ms['caught_by_replay']} ({ms['replay_score']:.0%}), the proof "
                     f"{ms['caught_by_proof']} ({ms['proof_score']:.0%}); fwtest check runs both")
        for d in ms["missed_by_replay"][:5]:
            lines.append(f"    missed by the synthetic traffic, caught by the proof: {d}")
        if len(ms["missed_by_replay"]) > 5:
            lines.append(f"    ... and {len(ms['missed_by_replay']) - 5} more (--format json lists them)")
        for d in ms["missed_by_proof"][:5]:
            lines.append(f"    missed by the proof's rate-limit model, caught by replay: {d}")
    if report.coverage is not None:
        cov = report.coverage
        both, judged = cov.clauses
        lines.append(f"  rule coverage: the emergency traffic runs into {cov.matched} of {len(cov.rules)} rules; "
                     f"{both} of {judged} conditions seen both true and false "
                     f"({cov.representatives} representative packets)")
    if report.gate is not None:
        g = report.gate
        lines += ["", f"Gate self-check: {g.candidates} candidates, {g.breaking} breaking, {g.flagged} flagged "
                      f"by fwtest check; kernel: {g.kernel}"]
        for m in g.misses:
            lines.append(f"  FALSE PASS: {m['edits']}: {', '.join(m['rows'])} ({', '.join(m['evidence'])})")
        for m in g.shortcut_errors:
            lines.append(f"  FUZZ SHORTCUT WRONG: {m['edits']}")
        for m in g.proof_misses[:5]:
            lines.append(f"  proof missed (replay caught): {m['edits']}")
        for d in g.kernel_disagreements[:5]:
            lines.append(f"  model/kernel disagree: {d['edits']}: {d['row']} #{d['packet']} {d['record']} "
                         f"kernel {d['kernel']}, model {d['model']} ({d['rule']})")
        lines.append("  PASS: no false pass" if g.passed else "  FAIL: the gate let a breaking edit through")
    if report.seeds:
        lines += ["", "Seed scenarios (incident classes):"]
    for s in report.seeds:
        lines.append(f"  {s.name}: {'still caught' if s.caught else 'NOT CAUGHT: ' + s.detail}")
        if s.on_ruleset:
            lines.append(f"    on this ruleset: {s.on_ruleset}")
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append(f"({report.stats.get('total_seconds', 0)} s)")
    return "\n".join(lines) + "\n"


def _short(descriptions: Sequence[str]) -> str:
    if not descriptions:
        return ""
    first = descriptions[0]
    return first if len(descriptions) == 1 else f"{first} (+{len(descriptions) - 1} more)"


def run_fuzz_command(rules: Sequence[str], profile: EmergencyProfile, *, max_examples: int, seed: int,
                     mode: str, kernel: str, seeds: str | None, output_format: str,
                     kinds: Sequence[str] = EDIT_KINDS) -> tuple[str, int]:
    """What ``fwtest fuzz`` prints and its exit code (the CLI is a thin shell over this)."""
    import os

    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        # Hypothesis keeps files in ./.hypothesis by default: a command must not litter the
        # directory it runs in, so they go to fwtest's cache instead.
        from hypothesis.configuration import set_hypothesis_home_dir

        from fwtest import cache
        set_hypothesis_home_dir(cache.directory() / "hypothesis")
    report = fuzz(list(rules), profile, max_examples=max_examples, seed=seed, mode=mode, kernel=kernel,
                  seeds=seeds, kinds=kinds)
    if output_format == "json":
        return json.dumps(report.to_json(), indent=2) + "\n", report.exit_code
    return render_fuzz_table(report), report.exit_code
