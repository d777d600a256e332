"""A firewall's packet-tracer: one packet, rule by rule, without state.

``explain`` walks one record along its path like the engine does, but with a
conntrack state you choose instead of a connection table, and records every
rule it looks at: matched or not, and why not ("dport 5060 not in
16384-32767"). ``fwtest explain`` prints it; the proof uses it to confirm
that a witness packet really dies where the proof says.

Stateless means: the conntrack lookup gives the packet the ``state`` you
pass (rules before the lookup, in the raw table, see no entry: ``invalid``);
no entry is created; the SIP helper does not run; every limit bucket is full
(the packet is the first of its kind); a ``helper`` match sees the master
helper you pass, if any. A fragment that conntrack would hold for reassembly
never reaches the rules alone, and the explanation says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from fwtest.engine.conntrack import Connection
from fwtest.engine.defrag import Complete, Defragmenter, Dropped
from fwtest.engine.limits import LimitState
from fwtest.engine.packet import PacketView
from fwtest.engine.replay import (
    CHAINS,
    CONFIRM,
    DEFRAG,
    LOOKUP,
    NATIVE_HOOKS,
    Acceptance,
    build_pipeline,
    check_helpers,
    decided,
    frag_timeouts,
)
from fwtest.engine.verdict import Verdict
from fwtest.engine.walk import ACCEPT, CompiledRuleset, Step, walk_base_explained
from fwtest.rules.ir import CT_STATES, Rule, Ruleset
from fwtest.traffic.record import NOT_FRAGMENT, PacketRecord


@dataclass(frozen=True)
class Explanation:
    record: PacketRecord
    path: str
    state: str                   # the state the rules after the lookup saw
    steps: tuple[Step, ...]
    verdict: Verdict
    notes: tuple[str, ...] = ()

    @property
    def matched(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.matched and s.rule is not None)

    def lines(self) -> list[str]:
        """Plain text, one line per step, for ``fwtest explain``."""
        out = [f"{self.record.short()}  path {self.path}, conntrack state {self.state}"]
        out.extend(f"note: {n}" for n in self.notes)
        current = None
        for step in self.steps:
            where = (step.hook, step.chain)
            if where != current:
                current = where
                out.append(f"{step.hook}: chain {step.chain}")
            indent = "  " * (step.depth + 1)
            if step.rule is None:
                out.append(f"{indent}{step.action}")
            elif step.matched:
                out.append(f"{indent}match  {step.rule.id} ({step.rule.source}) -> {step.action}")
            else:
                out.append(f"{indent}skip   {step.rule.id} ({step.rule.source}): {step.why_not}")
        v = self.verdict
        if v.rule is not None:
            out.append(f"verdict: {v.verdict} by {v.rule.id} ({v.rule.source})")
        else:
            where = f" ({v.source})" if v.source else ""
            out.append(f"verdict: {v.verdict}: {v.reason}{where}")
        return out


def _master(record: PacketRecord, helper: str) -> Connection:
    """A stand-in master connection carrying ``helper``, for the helper match."""
    key = (record.family, record.proto, record.src, record.dst, record.sport, record.dport, 0)
    conn = Connection(key, key, record.ts)
    master = Connection(key, key, record.ts)
    master.helper = helper
    conn.master = master
    conn.expected = True
    return conn


def explain(ruleset: Ruleset, record: PacketRecord, *, path: str = "forward", state: str = "new",
            native_hook: str = "forward", helper: str | None = None,
            compiled: CompiledRuleset | None = None) -> Explanation:
    """Walk ``record`` rule by rule with conntrack state ``state``.

    Stateless: nothing is remembered, except in ``compiled`` when given (a
    ``CompiledRuleset`` of ``ruleset`` for ``native_hook``): walks that share
    it pay into the same token buckets, and the rules are compiled once.
    """
    if state not in CT_STATES:
        raise ValueError(f"state is one of {', '.join(sorted(CT_STATES))}, not {state!r}")
    if native_hook not in NATIVE_HOOKS:
        raise ValueError(f"native_hook is one of {', '.join(NATIVE_HOOKS)}, not {native_hook!r}")
    check_helpers(ruleset)
    tracked = ruleset.conntrack.enabled
    notes: list[str] = []
    if not tracked:
        if state != "untracked":
            notes.append(f"the ruleset has no conntrack: every packet is untracked (state {state} ignored)")
        state = "untracked"
    if compiled is None:
        compiled = CompiledRuleset(ruleset, LimitState(), native_hook)
    elif compiled.ruleset is not ruleset or compiled.native_hook != native_hook:
        raise ValueError("compiled is another ruleset's, or for another native hook")
    stages = build_pipeline(compiled, path, record.family, tracked)
    initial = "invalid" if tracked else "untracked"
    p = PacketView(record, initial)
    steps: list[Step] = []
    trace: list[Rule] = []
    decision = Acceptance()
    for kind, arg in stages:
        if kind == CHAINS:
            hook, bases = arg  # type: ignore[misc]
            p.at_hook(hook)
            for cb in bases:
                code, rule = walk_base_explained(cb, p, trace, steps)
                if code == ACCEPT:
                    decision.accepted(cb, rule, hook)
                    continue
                v = decided(code, rule, cb, p, trace)
                return Explanation(record, path, state, tuple(steps), v, tuple(notes))
        elif kind == DEFRAG:
            if p.frag == NOT_FRAGMENT:
                continue
            result = Defragmenter(*frag_timeouts(ruleset)).add(record, arg, None)
            if isinstance(result, Complete):      # an IPv6 atomic fragment completes alone
                p = PacketView(result.datagram, initial)
                continue
            why = {"conntrack": "conntrack reassembles fragments before the rules",
                   "local-deliver": "the box reassembles IPv4 fragments before INPUT",
                   "local-out": "the box's own datagrams are fragmented after POSTROUTING"}[str(arg)]
            reason = (result.reason if isinstance(result, Dropped) else
                      f"a lone fragment is held for reassembly and never reaches the rules ({why}); "
                      "explain the whole datagram instead")
            v = Verdict("drop", None, None, p.state, tuple(trace), reason)
            return Explanation(record, path, state, tuple(steps), v, tuple(notes))
        elif kind == LOOKUP:
            p.looked_up = True
            if p.notrack:
                p.state = "untracked"
                notes.append("a notrack rule ran before the conntrack lookup: the packet is untracked")
            else:
                p.state = state
                if helper is not None:
                    p.conn = _master(record, helper)
                    p.ctinfo = state
        elif kind == CONFIRM:
            pass
    v = Verdict("accept", decision.rule, decision.source, p.state, tuple(trace), decision.reason)
    return Explanation(record, path, state, tuple(steps), v, tuple(notes))
