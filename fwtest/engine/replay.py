"""The stateful engine: packet records in, one ``Verdict`` per record out.

A packet crosses the hooks of its path in order:

* ``forward``: prerouting, forward, postrouting (the box routes it);
* ``input``: prerouting, input (the box is the destination);
* ``output``: output, postrouting (the box sends it).

On each hook the base chains run in priority order (accept ends only that
base chain; drop or reject ends the packet). With conntrack, the hooks where
the kernel looks packets up (prerouting, output) are split at the kernel's
priorities: chains below -400 see raw fragments, then defragmentation
(-400), chains below -200 (raw: ``notrack``, ``ct helper``), the conntrack
lookup (-200), the remaining chains; after the path's last hook, accepted
packets are confirmed (helper, then the new entry is inserted).

Fragments: with conntrack they are reassembled before the rules and share
the datagram's verdict. Without it, forwarded fragments meet the rules one
by one (later fragments have no ports); for the box itself, IPv4 reassembles
before INPUT (ip_local_deliver), IPv6 only after it; a datagram the box
sends is fragmented after POSTROUTING, so its rules see the whole datagram.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fwtest.engine.conntrack import ConntrackTable
from fwtest.engine.defrag import Complete, Defragmenter, Dropped, Held
from fwtest.engine.limits import LimitState
from fwtest.engine.packet import PacketView
from fwtest.engine.verdict import Verdict
from fwtest.engine.walk import (
    ACCEPT,
    REJECT,
    SUPPORTED_HELPERS,
    VERDICT_NAMES,
    CompiledBase,
    CompiledRuleset,
    silent_reject,
    walk_base,
)
from fwtest.errors import InputError
from fwtest.rules.ir import DEFAULT_TIMEOUTS, Rule, Ruleset, Source
from fwtest.traffic.record import NOT_FRAGMENT, PacketRecord

PATH_HOOKS: dict[str, tuple[str, ...]] = {
    "forward": ("prerouting", "forward", "postrouting"),
    "input": ("prerouting", "input"),
    "output": ("output", "postrouting"),
}
NATIVE_HOOKS = ("forward", "input", "output")

# Netfilter priorities (include/uapi/linux/netfilter_ipv4.h)
PRI_CONNTRACK_DEFRAG = -400
PRI_CONNTRACK = -200

CHAINS, DEFRAG, LOOKUP, CONFIRM = range(4)
KERNEL_FRAG6_TIMEOUT = 60     # IPV6_FRAG_TIMEOUT
Stage = tuple[int, object]


def build_pipeline(compiled: CompiledRuleset, path: str, family: int, conntrack: bool) -> tuple[Stage, ...]:
    """What a packet of ``family`` meets on ``path``, in order."""
    if path not in PATH_HOOKS:
        raise ValueError(f"unknown path {path!r}: forward, input or output")
    stages: list[Stage] = []

    def chains(hook: str, bases: list[CompiledBase]) -> None:
        if bases:
            stages.append((CHAINS, (hook, tuple(bases))))

    if path == "output":
        # Locally generated datagrams are fragmented after POSTROUTING
        # (ip_finish_output / ip6_finish_output): the rules see them whole.
        stages.append((DEFRAG, "local-out"))
    for hook in PATH_HOOKS[path]:
        bases = compiled.bases(hook, family)
        if conntrack and hook in ("prerouting", "output"):
            chains(hook, [b for b in bases if b.base.priority < PRI_CONNTRACK_DEFRAG])
            if hook == "prerouting":
                stages.append((DEFRAG, "conntrack"))
            chains(hook, [b for b in bases if PRI_CONNTRACK_DEFRAG <= b.base.priority < PRI_CONNTRACK])
            stages.append((LOOKUP, hook))
            chains(hook, [b for b in bases if b.base.priority >= PRI_CONNTRACK])
        else:
            if hook == "input" and not conntrack and family == 4:
                stages.append((DEFRAG, "local-deliver"))
            chains(hook, bases)
    if conntrack:
        stages.append((CONFIRM, None))
    return tuple(stages)


def check_helpers(ruleset: Ruleset) -> None:
    unknown = sorted(set(ruleset.conntrack.helpers) - SUPPORTED_HELPERS)
    if unknown:
        where = ruleset.conntrack.source or Source(ruleset.files[0] if ruleset.files else ruleset.name, 0)
        raise InputError(where.file, where.line,
                         f"conntrack helper {', '.join(map(repr, unknown))} is not modelled "
                         f"(fwtest models {', '.join(sorted(SUPPORTED_HELPERS))})")


def frag_timeouts(ruleset: Ruleset) -> tuple[float, float]:
    """Reassembly timeouts (IPv4, IPv6).

    The kernel has two sysctls: ipfrag_time (30 s) for IPv4 and
    nf_conntrack_frag6_timeout (60 s) for IPv6. The IR's ``frag`` names both:
    when a ruleset sets it, it applies to both families; left at its default,
    each family keeps the kernel's own default. ``frag6`` sets IPv6 alone.
    """
    timeouts = ruleset.conntrack.timeouts
    v4 = float(ruleset.conntrack.timeout("frag"))
    if "frag6" in timeouts:
        v6 = float(timeouts["frag6"])
    elif v4 != DEFAULT_TIMEOUTS["frag"]:
        v6 = v4
    else:
        v6 = float(KERNEL_FRAG6_TIMEOUT)
    return v4, v6


def decided(code: int, rule: Rule | None, cb: CompiledBase, p: PacketView, trace: list[Rule]) -> Verdict:
    """The verdict of a base chain that dropped or rejected the packet."""
    if rule is None:
        return Verdict("drop", None, cb.base.source, p.state, tuple(trace),
                       f"policy drop of chain {cb.base.chain} at {p.hook}")
    if code == REJECT:
        silent = silent_reject(p, rule)
        if silent:
            return Verdict("drop", rule, rule.source, p.state, tuple(trace), silent)
    return Verdict(VERDICT_NAMES[code], rule, rule.source, p.state, tuple(trace))


class Acceptance:
    """Who accepted so far: the last accepting rule, else the last accepting policy."""

    __slots__ = ("rule", "source", "reason")

    def __init__(self) -> None:
        self.rule: Rule | None = None
        self.source: Source | None = None
        self.reason = "no base chain on the path: nothing filters this packet"

    def accepted(self, cb: CompiledBase, rule: Rule | None, hook: str) -> None:
        if rule is not None:
            self.rule, self.source, self.reason = rule, rule.source, ""
        elif self.rule is None:
            self.source = cb.base.source
            self.reason = f"policy accept of chain {cb.base.chain} at {hook}"


class Engine:
    """Stateful netfilter model of one firewall. Feed it records in time order.

    ``feed`` returns the verdicts that packet decided: usually its own, none
    while it is a fragment held for reassembly, all of a datagram's fragments
    when it completes one, plus drops for reassembly queues that timed out.
    Each verdict comes with the ordinal of its record (0 for the first record
    fed). ``finish`` drops whatever is still held at the end.
    """

    def __init__(self, ruleset: Ruleset, *, native_hook: str = "forward",
                 sip_ports: Iterable[int] = (5060,)) -> None:
        if native_hook not in NATIVE_HOOKS:
            raise ValueError(f"native_hook is one of {', '.join(NATIVE_HOOKS)}, not {native_hook!r}")
        check_helpers(ruleset)
        self.ruleset = ruleset
        self.native_hook = native_hook
        self.limits = LimitState()
        self.compiled = CompiledRuleset(ruleset, self.limits, native_hook)
        self.sip_ports = tuple(sip_ports)
        self.conntrack: ConntrackTable | None = (
            ConntrackTable(ruleset.conntrack, self.sip_ports) if ruleset.conntrack.enabled else None)
        self.defrag = Defragmenter(*frag_timeouts(ruleset))
        self._pipelines: dict[tuple[str, int], tuple[Stage, ...]] = {}
        self._initial_state = "invalid" if self.conntrack is not None else "untracked"
        self._count = 0

    def reset(self) -> None:
        """A fresh firewall with the same compiled rules: empty conntrack table and
        reassembly queues, full token buckets (compiling is the costly part)."""
        self.limits.reset()
        if self.conntrack is not None:
            self.conntrack = ConntrackTable(self.ruleset.conntrack, self.sip_ports)
        self.defrag = Defragmenter(*frag_timeouts(self.ruleset))
        self._count = 0

    def run(self, records: Sequence[PacketRecord], paths: Sequence[str] | str = "forward") -> list[Verdict]:
        """One verdict per record, in record order, from a fresh state (see ``replay``)."""
        if isinstance(paths, str):
            per_record: Sequence[str] = [paths] * len(records)
        else:
            per_record = paths
            if len(per_record) != len(records):
                raise ValueError(f"{len(per_record)} paths for {len(records)} records")
        self.reset()
        out: list[Verdict | None] = [None] * len(records)
        for record, path in zip(records, per_record, strict=True):
            for index, v in self.feed(record, path):
                out[index] = v
        for index, v in self.finish():
            out[index] = v
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:  # pragma: no cover - every fed record is decided by feed or finish
            raise RuntimeError(f"no verdict for records {missing[:5]}")
        return out  # type: ignore[return-value]

    def pipeline(self, path: str, family: int) -> tuple[Stage, ...]:
        key = (path, family)
        stages = self._pipelines.get(key)
        if stages is None:
            stages = build_pipeline(self.compiled, path, family, self.conntrack is not None)
            self._pipelines[key] = stages
        return stages

    def feed(self, record: PacketRecord, path: str = "forward") -> list[tuple[int, Verdict]]:
        index = self._count
        self._count += 1
        out: list[tuple[int, Verdict]] = []
        if self.defrag.queues:
            for dropped in self.defrag.expire(record.ts):
                out.extend(self._dropped(dropped))
        p = PacketView(record, self._initial_state)
        out.extend(self._traverse(p, path, self.pipeline(path, record.family), 0, [(index, ())]))
        return out

    def verdict(self, record: PacketRecord, path: str = "forward") -> Verdict | None:
        """Feed ``record`` and return its own verdict (None while it is a held fragment).

        Verdicts it decides for other records (earlier fragments completed or
        timed out by this one) are not returned: use ``feed`` when the
        traffic has fragments.
        """
        index = self._count
        for i, v in self.feed(record, path):
            if i == index:
                return v
        return None

    def finish(self) -> list[tuple[int, Verdict]]:
        out: list[tuple[int, Verdict]] = []
        for dropped in self.defrag.drain():
            out.extend(self._dropped(dropped))
        return out

    # ------------------------------------------------------------------

    def _dropped(self, dropped: Dropped) -> list[tuple[int, Verdict]]:
        out = []
        for member in dropped.members:
            index, pre = member  # type: ignore[misc]
            out.append((index, Verdict("drop", None, None, self._initial_state, pre, dropped.reason)))
        return out

    def _traverse(self, p: PacketView, path: str, stages: tuple[Stage, ...], start: int,
                  members: list[tuple[int, tuple[Rule, ...]]]) -> list[tuple[int, Verdict]]:
        trace: list[Rule] = []
        decision = Acceptance()
        for pos in range(start, len(stages)):
            kind, arg = stages[pos]
            if kind == CHAINS:
                hook, bases = arg  # type: ignore[misc]
                p.at_hook(hook)
                for cb in bases:
                    code, rule = walk_base(cb, p, trace)
                    if code == ACCEPT:
                        decision.accepted(cb, rule, hook)
                        continue
                    return _share(decided(code, rule, cb, p, trace), members)
            elif kind == LOOKUP:
                self.conntrack.lookup(p)  # type: ignore[union-attr]
            elif kind == DEFRAG:
                if p.frag == NOT_FRAGMENT:
                    continue
                (index, pre), = members
                result = self.defrag.add(p.record, (path, pos), (index, pre + tuple(trace)))
                if isinstance(result, Held):
                    return []
                if isinstance(result, Dropped):
                    return self._dropped(result)
                assert isinstance(result, Complete)
                whole = PacketView(result.datagram, self._initial_state)
                return self._traverse(whole, path, stages, pos + 1, list(result.members))  # type: ignore[arg-type]
            elif kind == CONFIRM:
                reason = self.conntrack.confirm(p)  # type: ignore[union-attr]
                if reason:
                    v = Verdict("drop", None, self.ruleset.conntrack.source, p.state, tuple(trace), reason)
                    return _share(v, members)
        v = Verdict("accept", decision.rule, decision.source, p.state, tuple(trace), decision.reason)
        return _share(v, members)


def _share(v: Verdict, members: list[tuple[int, tuple[Rule, ...]]]) -> list[tuple[int, Verdict]]:
    if len(members) == 1 and not members[0][1]:
        return [(members[0][0], v)]
    return [(index, v._replace(trace=pre + v.trace)) for index, pre in members]


def replay(ruleset: Ruleset, records: Sequence[PacketRecord], paths: Sequence[str] | str = "forward", *,
           native_hook: str = "forward", sip_ports: Iterable[int] = (5060,)) -> list[Verdict]:
    """One verdict per record, in record order, from a fresh engine.

    ``paths`` is one path for every record, or one path per record (a call
    through an ``input`` firewall has its requests on ``input`` and the
    box's answers on ``output``).
    """
    return Engine(ruleset, native_hook=native_hook, sip_ports=sip_ports).run(records, paths)
