"""A ruleset, for one path through the box, compiled to the set of packets it accepts.

The walk is netfilter's, done on sets instead of packets: the set of packets
still being evaluated ("live") flows down a chain; each rule takes from it
the packets it matches. ``accept``/``drop``/``reject`` end the walk for
them; ``log``, ``continue`` and ``ct_helper`` let them go on; ``jump`` walks
the target chain with them and takes back what it returns; ``goto`` does the
same but what the target returns goes to the caller of the current chain;
``return`` (or falling off the end) hands them back to the caller, and on a
base chain applies its policy.

A path is the list of hooks a packet crosses (``HOOK_PATHS``, the engine's
``PATH_HOOKS``); on each hook the base chains run in priority order, an
accept in one of them moves the packet on to the next one, a drop or reject
ends it. Native chains (hook ``None``) sit on the profile's filtering hook
only. With conntrack, the lookup runs on prerouting/output at priority -200:
chains before it (the raw table) see the state ``invalid`` (no entry yet), a
``notrack`` there makes the packet ``untracked`` for the rest of the path;
after it, the rules see the packet's own state. These views live in the
``seen`` field; the packet's own state stays in ``state``. Hooks that do not
know an interface (no output device before routing, no input device for the
box's own packets) make interface matches see none.

For every packet the compile keeps *who decided*: the drop/reject rule or the
policy that dropped it, or, as the engine reports it, the last accepting
rule (a policy only when no rule accepted). Findings and diffs name these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fwtest.rules.ir import BaseChain, Match, Rule, Ruleset, Source
from fwtest.space.header import HeaderSpace, ProofError

# Hooks a packet crosses, by the filtering hook that names the path (DESIGN.md:
# forward traffic crosses the box, input/output traffic ends/starts on it).
HOOK_PATHS: Mapping[str, tuple[str, ...]] = {
    "forward": ("prerouting", "forward", "postrouting"),
    "input": ("prerouting", "input"),
    "output": ("output", "postrouting"),
}
MAX_CHAIN_DEPTH = 64  # the kernel allows fewer nested jumps; loaders reject loops
PRI_CONNTRACK = -200  # nf_conntrack_in on prerouting and output
PRI_CONNTRACK_DEFRAG = -400
# Interfaces a hook knows (netfilter's state->in / state->out).
HOOK_SEES_IN = {"prerouting": True, "input": True, "forward": True, "output": False, "postrouting": False}
HOOK_SEES_OUT = {"prerouting": False, "input": False, "forward": True, "output": True, "postrouting": True}


@dataclass(frozen=True)
class Decider:
    """What decided a packet's fate: a rule, a base chain's policy, or no chain at all."""

    verdict: str                     # accept | drop | reject
    rule: Rule | None = None
    chain: BaseChain | None = None   # for a policy
    reason: str = ""

    @property
    def source(self) -> Source | None:
        if self.rule is not None:
            return self.rule.source
        return self.chain.source if self.chain is not None else None

    @property
    def id(self) -> str:
        if self.rule is not None:
            return self.rule.id
        return "policy" if self.chain is not None else "no-chain"

    def describe(self) -> str:
        if self.rule is not None:
            return f"{self.verdict} by rule {self.rule.id} ({self.rule.source})"
        if self.chain is not None:
            return f"{self.chain.chain} policy {self.chain.policy} ({self.chain.source})"
        return f"{self.verdict}: {self.reason}"

    def to_json(self) -> dict:
        """The report's ``rule`` object."""
        src = self.source
        out: dict[str, Any] = {"id": self.id, "file": src.file if src else None,
                               "line": src.line if src else None}
        if self.rule is None:
            out["reason"] = self.describe()
        return out


@dataclass(frozen=True)
class Box:
    """An over-approximation of a region, field by field, to skip rules that cannot touch it
    without building their sets. ``None`` means "any value"."""

    families: frozenset[int] = frozenset({4, 6})
    protos: frozenset[int] | None = None
    src: tuple[tuple[int, int, int], ...] | None = None   # (family, first, last)
    dst: tuple[tuple[int, int, int], ...] | None = None
    sport: tuple[tuple[int, int], ...] | None = None
    dport: tuple[tuple[int, int], ...] | None = None

    def may_touch(self, m: Match) -> bool:
        if m.family is not None and m.family not in self.families:
            return False
        if m.proto is not None and not m.proto.negated and self.protos is not None \
                and not (m.proto.protocols & self.protos):
            return False
        for am, box in ((m.src, self.src), (m.dst, self.dst)):
            if am is None or box is None:
                continue
            if not am.families & self.families:
                return False
            if not am.negated and not any(
                    r.family == f and r.first <= hi and lo <= r.last
                    for r in am.ranges for f, lo, hi in box):
                return False
        for pm, box in ((m.sport, self.sport), (m.dport, self.dport)):
            if pm is None or box is None or pm.negated:
                continue
            if not any(a <= hi and lo <= b for a, b in pm.ranges for lo, hi in box):
                return False
        return True


@dataclass
class Compiled:
    """The accept set of one ruleset on one path, and who decided every packet."""

    space: HeaderSpace
    ruleset: Ruleset
    path: str
    hooks: tuple[str, ...]
    within: Any                                   # the region compiled (packets outside: unknown)
    accept: Any
    deciders: dict[Decider, Any]                  # disjoint regions, union = within
    matched: dict[str, Any] = field(default_factory=dict)      # rule id -> reached and matched
    chain_reached: dict[str, Any] = field(default_factory=dict)
    effects: dict[str, Any] = field(default_factory=dict)      # ct_helper/notrack rule id -> region
    rules_walked: int = 0

    def drop_deciders(self) -> dict[Decider, Any]:
        return {d: u for d, u in self.deciders.items() if d.verdict != "accept"}

    def accept_deciders(self) -> dict[Decider, Any]:
        return {d: u for d, u in self.deciders.items() if d.verdict == "accept"}


class _Walk:
    def __init__(self, space: HeaderSpace, ruleset: Ruleset, boxes: Sequence[Box] | None,
                 track: bool, seen: bool) -> None:
        self.space = space
        self.ruleset = ruleset
        self.boxes = boxes
        self.track = track
        self.seen = seen                      # rules test the ``seen`` field, not ``state``
        self.looked_up = False
        self.sees_in = self.sees_out = True
        self.matched: dict[str, Any] = {}
        self.chain_reached: dict[str, Any] = {}
        self.effects: dict[str, Any] = {}
        self.decided: dict[Decider, Any] = {}
        self.rules_walked = 0
        self._touch: dict[int, bool] = {}
        if seen:
            self.seen_untracked = space.state("untracked", seen=True)
            self.seen_invalid = space.state("invalid", seen=True)
            self.nt = space.bdd.var(space.vars["nt"][0])

    def may_touch(self, rule: Rule) -> bool:
        if self.boxes is None:
            return True
        key = id(rule)
        got = self._touch.get(key)
        if got is None:
            got = any(b.may_touch(rule.match) for b in self.boxes)
            self._touch[key] = got
        return got

    def note(self, decider: Decider, u: Any) -> None:
        old = self.decided.get(decider)
        self.decided[decider] = u if old is None else old | u

    def note_effect(self, rule: Rule, u: Any) -> None:
        old = self.effects.get(rule.id)
        self.effects[rule.id] = u if old is None else old | u

    def notrack(self, live: Any, m: Any) -> Any:
        """xt_CT --notrack / nft notrack: only a packet without an entry becomes untracked."""
        if not self.seen:
            return live   # without conntrack every packet is untracked already
        sp = self.space
        if not self.looked_up:
            return (live & ~m) | (sp.bdd.exist(sp.vars["nt"], m) & self.nt)
        # After the lookup only packets the lookup gave no entry (invalid) are affected.
        hit = m & self.seen_invalid
        if hit == sp.false:
            return live
        return (live & ~hit) | (sp.bdd.exist(sp.vars["seen"], hit) & self.seen_untracked)

    def walk(self, chain_name: str, live: Any, depth: int) -> tuple[Any, Any]:
        """Walk ``chain_name`` with the packets ``live``: (ended here, returned to the caller).

        Decisions are noted per decider.
        """
        if depth > MAX_CHAIN_DEPTH:
            raise ProofError(f"chains nested deeper than {MAX_CHAIN_DEPTH} at {chain_name}")
        chain = self.ruleset.chains.get(chain_name)
        if chain is None:
            raise ProofError(f"jump to missing chain {chain_name!r} (the loader should have refused it)")
        sp = self.space
        false = sp.false
        if self.track:
            old = self.chain_reached.get(chain_name)
            self.chain_reached[chain_name] = live if old is None else old | live
        ended = false
        returned = false
        for rule in chain.rules:
            if live == false:
                break
            if not self.may_touch(rule):
                continue
            self.rules_walked += 1
            m = sp.rule_match(rule, seen_state=self.seen, sees_in=self.sees_in,
                              sees_out=self.sees_out) & live
            if m == false:
                continue
            if self.track:
                old = self.matched.get(rule.id)
                self.matched[rule.id] = m if old is None else old | m
            kind = rule.action.kind
            if kind in ("accept", "drop", "reject"):
                self.note(Decider(kind, rule), m)
                ended |= m
                live &= ~m
            elif kind in ("log", "continue"):
                pass
            elif kind == "ct_helper":
                # The helper is attached to the connection; what it changes (media
                # becoming RELATED, `helper` matches) is judged per packet class.
                self.note_effect(rule, m)
            elif kind == "notrack":
                self.note_effect(rule, m)
                live = self.notrack(live, m)
            elif kind == "return":
                returned |= m
                live &= ~m
            elif kind in ("jump", "goto"):
                if rule.action.target is None:
                    raise ProofError(f"rule {rule.id} ({rule.source}): {kind} without a target chain")
                sub_ended, sub_returned = self.walk(rule.action.target, m, depth + 1)
                ended |= sub_ended
                live &= ~m
                if kind == "jump":
                    live |= sub_returned
                else:
                    # goto: when the target returns, control goes back to *our* caller.
                    returned |= sub_returned
            else:
                raise ProofError(f"rule {rule.id} ({rule.source}): action {kind!r} is not modelled")
        return ended, returned | live


def base_chains_on(ruleset: Ruleset, hook: str, native_hook: str) -> list[BaseChain]:
    """Base chains of both families on ``hook``, in run order."""
    found = [b for b in ruleset.bases
             if b.hook == hook or (b.hook is None and hook == native_hook)]
    return sorted(found, key=lambda b: b.priority)


def stages(ruleset: Ruleset, path: str, native_hook: str) -> list[tuple[str, Any]]:
    """What a packet meets on ``path``: ("chains", (hook, [base...])) and ("lookup", hook)."""
    out: list[tuple[str, Any]] = []
    tracked = ruleset.conntrack.enabled
    for hook in HOOK_PATHS[path]:
        bases = base_chains_on(ruleset, hook, native_hook)
        if tracked and hook in ("prerouting", "output"):
            out.append(("chains", (hook, [b for b in bases if b.priority < PRI_CONNTRACK])))
            out.append(("lookup", hook))
            out.append(("chains", (hook, [b for b in bases if b.priority >= PRI_CONNTRACK])))
        else:
            out.append(("chains", (hook, bases)))
    return [s for s in out if s[0] == "lookup" or s[1][1]]


def compile_path(space: HeaderSpace, ruleset: Ruleset, path: str, *, native_hook: str,
                 within: Any = None, boxes: Sequence[Box] | None = None,
                 track: bool = False) -> Compiled:
    """Compile ``ruleset`` for the packets of ``within`` (default: every packet) on ``path``.

    ``boxes``, when given, must cover ``within``: rules outside every box are
    skipped without building their sets (the speed-up for big rulesets).
    """
    if path not in HOOK_PATHS:
        raise ValueError(f"unknown path {path!r} ({', '.join(HOOK_PATHS)})")
    sp = space
    false = sp.false
    region = sp.domain if within is None else within & sp.domain
    plan = stages(ruleset, path, native_hook)
    lookup_at = next((i for i, s in enumerate(plan) if s[0] == "lookup"), None)
    has_notrack = any(r.action.kind == "notrack" for r in ruleset.rules())
    pre_lookup = lookup_at is not None and any(s[0] == "chains" for s in plan[:lookup_at])
    # The seen field is needed only where the rules may see another state than
    # the packet's own: chains before the lookup, or notrack rules.
    seen = ruleset.conntrack.enabled and (pre_lookup or has_notrack)
    w = _Walk(sp, ruleset, boxes, track, seen)
    nt0 = ~sp.bdd.var(sp.vars["nt"][0])
    if seen:
        live = region & w.seen_invalid & nt0 if lookup_at is not None else region & sp.seen_equals_state()
    else:
        live = region
    w.looked_up = lookup_at is None
    untouched = live
    accepted_by: dict[Decider, Any] = {}
    rule_accepted = false            # packets some rule (not a policy) accepted so far
    for kind, arg in plan:
        if kind == "lookup":
            w.looked_up = True
            if seen:
                forget = [*sp.vars["seen"], *sp.vars["nt"]]
                tracked_part = sp.bdd.exist(forget, live & nt0) & sp.seen_equals_state()
                untracked_part = sp.bdd.exist(forget, live & ~nt0) & w.seen_untracked
                live = (tracked_part | untracked_part) & nt0
                # Bookkeeping sets refer to packets by their fields; keep them aligned.
                untouched = _relabel(sp, untouched, nt0, w)
                rule_accepted = _relabel(sp, rule_accepted, nt0, w)
                accepted_by = {d: _relabel(sp, u, nt0, w) for d, u in accepted_by.items()}
            continue
        hook, bases = arg
        w.sees_in, w.sees_out = HOOK_SEES_IN[hook], HOOK_SEES_OUT[hook]
        for base in bases:
            entering = live if base.family is None else live & sp.family(base.family)
            if entering == false:
                continue
            untouched &= ~entering
            before = w.decided
            w.decided = {}
            _ended, fell = w.walk(base.chain, entering, 0)
            if fell != false:
                w.note(Decider(base.policy, chain=base), fell)
            chain_decided, w.decided = w.decided, before
            accepted_here = false
            by_rule_here = false
            by_policy_here = false
            for d, u in chain_decided.items():
                if d.verdict == "accept":
                    accepted_here |= u
                    if d.rule is not None:
                        by_rule_here |= u
                    else:
                        by_policy_here |= u
                else:
                    w.note(d, u)
            # As the engine reports it: the last accepting rule; the last
            # accepting policy only when no rule accepted the packet on its way.
            policy_only = by_policy_here & ~rule_accepted
            for d in list(accepted_by):
                accepted_by[d] &= ~(by_rule_here | policy_only) if d.rule is None else ~by_rule_here
            for d, u in chain_decided.items():
                if d.verdict != "accept":
                    continue
                if d.rule is None:
                    u = u & ~rule_accepted
                old = accepted_by.get(d)
                accepted_by[d] = u if old is None else old | u
            rule_accepted |= by_rule_here
            live = (live & ~entering) | accepted_here
    if untouched != false:
        accepted_by[Decider("accept", reason="no base chain on the path: nothing filters this packet")] = \
            untouched
    # A packet accepted by one chain and dropped by a later one is decided by the drop.
    deciders = {d: u & live for d, u in accepted_by.items() if u & live != false}
    deciders.update({d: u for d, u in w.decided.items() if u != false})
    accept = live
    matched, reached, effects = w.matched, w.chain_reached, w.effects
    if seen:
        accept = sp.forget_seen(accept)
        deciders = {d: sp.forget_seen(u) for d, u in deciders.items()}
        matched = {k: sp.forget_seen(u) for k, u in matched.items()}
        reached = {k: sp.forget_seen(u) for k, u in reached.items()}
        effects = {k: sp.forget_seen(u) for k, u in effects.items()}
    return Compiled(space=sp, ruleset=ruleset, path=path, hooks=HOOK_PATHS[path], within=region,
                    accept=accept, deciders=deciders, matched=matched, chain_reached=reached,
                    effects=effects, rules_walked=w.rules_walked)


def _relabel(sp: HeaderSpace, u: Any, nt0: Any, w: _Walk) -> Any:
    """A pre-lookup set expressed the way the lookup rewrites the seen field."""
    if u == sp.false:
        return u
    forget = [*sp.vars["seen"], *sp.vars["nt"]]
    return ((sp.bdd.exist(forget, u & nt0) & sp.seen_equals_state())
            | (sp.bdd.exist(forget, u & ~nt0) & w.seen_untracked)) & nt0
