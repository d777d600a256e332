"""Rule analysis: which rules the emergency path leans on, which never act, which are spare.

* **load-bearing** (DESIGN.md, ``fwtest fuzz`` contract): deleting the rule,
  narrowing its match or flipping its action breaks some flow. Only a rule
  that matches some emergency packet where it stands can be: for an accept,
  flipping it to drop breaks every flow whose accepted packets it accepts
  (and deleting or narrowing it can break no flow flipping does not); a
  jump, goto, return, notrack or ct-helper rule is deleted and the path
  proved again (narrowing removes packets from its match, which for each of
  them is the deletion). Drops are never load-bearing: deleting, narrowing or
  flipping a drop only lets more through (widening one until it covers the
  path is a breaking edit of the drop, not a dependency on it).
* **shadowed**: the rule matches some packet, but every packet it matches is
  taken by earlier rules before it is reached (on the profile's paths), so
  it never acts; the earlier rules that take its packets are named.
* **unreachable**: the rule sits in a chain no packet of the profile's
  paths enters.
* **redundant**: the rule acts, but deleting it changes no verdict: every
  packet it decides would be decided the same way (same verdict) by the
  rest of its chain or the chain's policy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fwtest.profile import EmergencyProfile
from fwtest.rules.ir import Chain, Rule, Ruleset
from fwtest.space.compile import HOOK_PATHS, HOOK_SEES_IN, HOOK_SEES_OUT, base_chains_on, compile_path
from fwtest.space.header import HeaderSpace
from fwtest.space.proof import AtomJudge, ProfileCompile, classes_for
from fwtest.traffic.callflow import CallFlow

TERMINAL = ("accept", "drop", "reject")


@dataclass(frozen=True)
class RuleNote:
    rule: Rule
    flows: tuple[str, ...] = ()          # load-bearing: the flows an edit breaks
    edits: tuple[str, ...] = ()          # load-bearing: which edits break them ("flip", "delete")
    by: tuple[Rule, ...] = ()            # shadowed: earlier rules that take its packets;
                                         # redundant: later rules that decide them the same way
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.rule.id, "file": self.rule.source.file, "line": self.rule.source.line}
        if self.flows:
            out["breaks"] = list(self.flows)
            out["edits"] = list(self.edits)
        if self.by:
            out["by"] = [r.id for r in self.by]
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Analysis:
    load_bearing: list[RuleNote]
    shadowed: list[RuleNote]
    unreachable: list[RuleNote]
    redundant: list[RuleNote]
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"load_bearing": [n.to_json() for n in self.load_bearing],
                "shadowed": [n.to_json() for n in self.shadowed],
                "unreachable": [n.to_json() for n in self.unreachable],
                "redundant": [n.to_json() for n in self.redundant],
                "notes": self.notes, "stats": self.stats}


def without_rule(ruleset: Ruleset, rule: Rule) -> Ruleset:
    """The ruleset with ``rule`` deleted."""
    chains = {}
    for name, chain in ruleset.chains.items():
        rules = tuple(r for r in chain.rules if r is not rule)
        chains[name] = chain if len(rules) == len(chain.rules) else Chain(chain.name, rules, chain.source)
    return replace(ruleset, chains=chains)


def analyze(ruleset: Ruleset, profile: EmergencyProfile, *, flows: Sequence[CallFlow] | None = None,
            space: HeaderSpace | None = None, backend: str | None = None,
            judge: AtomJudge | None = None) -> Analysis:
    """Load-bearing, shadowed, unreachable and redundant rules of ``ruleset`` for ``profile``.

    ``judge``: the AtomJudge of a proof of the same ruleset in the same ``space``
    (``Proof.judge``), whose payload probes are then not run again.
    """
    started = time.perf_counter()
    if flows is None:
        from fwtest.traffic.synth import synthesize
        flows = synthesize(profile)
    space = space or HeaderSpace.for_rulesets([ruleset], profile, backend=backend)
    classes = classes_for(space, ruleset, profile, flows)
    pc = ProfileCompile(space, ruleset, profile, classes, track=True)
    if judge is None or judge.space is not space or judge.ruleset is not ruleset or judge.profile is not profile:
        judge = AtomJudge(space, ruleset, profile)
    load_bearing = _load_bearing(space, ruleset, profile, classes, pc, judge)
    profiled = time.perf_counter()
    shadowed, unreachable, redundant, notes = _structure(space, ruleset, profile)
    done = time.perf_counter()
    return Analysis(load_bearing, shadowed, unreachable, redundant, notes,
                    {"load_bearing_seconds": round(profiled - started, 3),
                     "structure_seconds": round(done - profiled, 3)})


def _load_bearing(space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile, classes: Sequence[Any],
                  pc: ProfileCompile, judge: AtomJudge) -> list[RuleNote]:
    evaluations = []   # (cls, state, valuation, region, accepted)
    for cls in classes:
        for state in cls.states:
            val = judge.valuation(cls, state)
            region = pc.region(cls, (state,))
            evaluations.append((cls, state, val, region, region & pc.accept(cls.path, val)))
    # Few distinct valuations: restrict each rule's matched set once per (path, valuation).
    restricted: dict[tuple, Any] = {}
    out = []
    for chain in ruleset.chains.values():
        for rule in chain.rules:
            kind = rule.action.kind
            if kind in ("drop", "reject", "log", "continue"):
                continue
            touched = []
            for cls, state, val, region, accepted in evaluations:
                matched = pc.compiled[cls.path].matched.get(rule.id)
                if matched is None:
                    continue
                rkey = (rule.id, cls.path, tuple(val.items()))
                under = restricted.get(rkey)
                if under is None:
                    under = restricted[rkey] = space.let_atoms(matched, val)
                hit = under & region
                if hit != space.false:
                    touched.append((cls, state, val, region, accepted, hit))
            if not touched:
                continue
            flows: dict[str, set[str]] = {}
            if kind == "accept":
                for cls, _state, _val, _region, accepted, hit in touched:
                    if hit & accepted != space.false:
                        flows.setdefault(cls.flow, set()).add("flip")
            else:
                edited = ProfileCompile(space, without_rule(ruleset, rule), profile, classes)
                for cls, _state, val, _region, accepted, _hit in touched:
                    if accepted & ~edited.accept(cls.path, val) != space.false:
                        flows.setdefault(cls.flow, set()).add("delete")
            if flows:
                edits = sorted({e for es in flows.values() for e in es})
                out.append(RuleNote(rule, tuple(f for f in profile.flows if f in flows), tuple(edits)))
    return out


def _structure(space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile
               ) -> tuple[list[RuleNote], list[RuleNote], list[RuleNote], list[str]]:
    """Shadowed, unreachable and redundant rules over every packet of the profile's paths."""
    paths = sorted(set(profile.hooks().values()))
    compiled = [compile_path(space, ruleset, p, native_hook=profile.firewall, track=True) for p in paths]
    notes: list[str] = []
    seen_needed = ruleset.conntrack.enabled and any(
        r.action.kind == "notrack" for r in ruleset.rules()) or any(
        b.priority < -200 and b.hook in ("prerouting", "output") for b in ruleset.bases)
    shadowed, unreachable = [], []
    for chain in ruleset.chains.values():
        reached = any(c.chain_reached.get(chain.name, space.false) != space.false for c in compiled)
        for i, rule in enumerate(chain.rules):
            if not reached:
                unreachable.append(RuleNote(rule, reason=f"no packet of the {'/'.join(paths)} path enters "
                                                         f"chain {chain.name}"))
                continue
            if any(c.matched.get(rule.id, space.false) != space.false for c in compiled):
                continue
            own = space.rule_match(rule)
            if own == space.false:
                shadowed.append(RuleNote(rule, reason="its match is empty: it can never match"))
                continue
            by = tuple(r for r in chain.rules[:i]
                       if r.action.kind not in ("log", "continue", "notrack", "ct_helper")
                       and space.rule_match(r) & own != space.false)
            shadowed.append(RuleNote(rule, by=by[:5], reason="earlier rules take every packet it matches"))
    redundant: list[RuleNote] = []
    if seen_needed:
        notes.append("redundancy not analysed: rules before the conntrack lookup or notrack rules "
                     "make the state the rules see differ from the packet's")
    else:
        redundant = _redundant(space, ruleset, profile, compiled, notes)
    return shadowed, unreachable, redundant, notes


def _redundant(space: HeaderSpace, ruleset: Ruleset, profile: EmergencyProfile, compiled: Sequence[Any],
               notes: list[str]) -> list[RuleNote]:
    # Which hook views each chain runs under (interface matches depend on them).
    views: dict[str, set[tuple[bool, bool]]] = {}
    for c in compiled:
        for hook in HOOK_PATHS[c.path]:
            for base in base_chains_on(ruleset, hook, profile.firewall):
                for name in _chains_below(ruleset, base.chain):
                    views.setdefault(name, set()).add((HOOK_SEES_IN[hook], HOOK_SEES_OUT[hook]))
    policy_of: dict[str, str] = {b.chain: b.policy for b in ruleset.bases}
    summaries: dict[tuple[str, tuple[bool, bool]], tuple[Any, Any, Any, Any]] = {}
    out = []
    for chain in ruleset.chains.values():
        chain_views = views.get(chain.name, set())
        if len(chain_views) != 1:
            if len(chain_views) > 1 and _has_iface(ruleset, chain.name):
                notes.append(f"redundancy not analysed in chain {chain.name}: it runs on hooks that see "
                             "different interfaces")
                continue
            if not chain_views:
                continue
        view = next(iter(chain_views))
        suffixes = _suffixes(space, ruleset, chain.name, view, summaries)
        for i, rule in enumerate(chain.rules):
            kind = rule.action.kind
            if kind not in TERMINAL:
                continue
            decided = space.false
            for c in compiled:
                decided |= c.matched.get(rule.id, space.false)
            if decided == space.false:
                continue   # shadowed or unreachable, reported as such
            acc, drop, rej, fall = suffixes[i + 1]
            same = {"accept": acc, "drop": drop, "reject": rej}[kind]
            if policy_of.get(chain.name) == kind:
                same = same | fall
            if decided & ~same == space.false:
                later = tuple(r for r in chain.rules[i + 1:] if r.action.kind == kind
                              and space.rule_match(r) & decided != space.false)
                reason = "the rules after it decide its packets the same way"
                if not later:
                    reason = f"the chain's policy ({kind}) decides its packets the same way"
                out.append(RuleNote(rule, by=later[:5], reason=reason))
    return out


def _chains_below(ruleset: Ruleset, name: str, seen: set[str] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if name in seen or name not in ruleset.chains:
        return seen
    seen.add(name)
    for r in ruleset.chains[name].rules:
        if r.action.kind in ("jump", "goto") and r.action.target:
            _chains_below(ruleset, r.action.target, seen)
    return seen


def _has_iface(ruleset: Ruleset, name: str) -> bool:
    return any(r.match.iface_in is not None or r.match.iface_out is not None
               for c in _chains_below(ruleset, name) for r in ruleset.chains[c].rules)


def _suffixes(space: HeaderSpace, ruleset: Ruleset, name: str, view: tuple[bool, bool],
              summaries: dict) -> list[tuple[Any, Any, Any, Any]]:
    """For each position i of the chain: the packets the rules from i on accept, drop, reject,
    or let fall off the end (return), whatever came before. Built backwards."""
    false, true = space.false, space.true
    rules = ruleset.chains[name].rules
    out: list[tuple[Any, Any, Any, Any]] = [(false, false, false, true)]
    for rule in reversed(rules):
        acc, drop, rej, fall = out[-1]
        m = space.rule_match(rule, sees_in=view[0], sees_out=view[1])
        kind = rule.action.kind
        if kind == "accept":
            act = (true, false, false, false)
        elif kind == "drop":
            act = (false, true, false, false)
        elif kind == "reject":
            act = (false, false, true, false)
        elif kind == "return":
            act = (false, false, false, true)
        elif kind in ("jump", "goto"):
            sub = _chain_summary(space, ruleset, rule.action.target or "", view, summaries)
            back = (acc, drop, rej, fall) if kind == "jump" else (false, false, false, true)
            act = (sub[0] | (sub[3] & back[0]), sub[1] | (sub[3] & back[1]),
                   sub[2] | (sub[3] & back[2]), sub[3] & back[3])
        else:   # log, continue, ct_helper: fall through to the next rule
            act = (acc, drop, rej, fall)
        out.append(tuple(space.bdd.ite(m, a, b) for a, b in zip(act, (acc, drop, rej, fall), strict=True)))
    out.reverse()
    return out


def _chain_summary(space: HeaderSpace, ruleset: Ruleset, name: str, view: tuple[bool, bool],
                   summaries: dict) -> tuple[Any, Any, Any, Any]:
    key = (name, view)
    got = summaries.get(key)
    if got is None:
        got = _suffixes(space, ruleset, name, view, summaries)[0]
        summaries[key] = got
    return got
