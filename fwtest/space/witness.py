"""Witnesses: concrete packets for a blocked region, confirmed by the engine.

A witness is the class's own template packet (the synthesiser's message,
payload and all) moved to a point of the blocked region: addresses, ports
and TCP flags rewritten, checksums redone. The replay engine then judges it,
with fresh state for a class the rules see as NEW (or untracked), or with
``explain`` under the class's state (ESTABLISHED, RELATED); the proof only
reports a witness the engine drops *at the same rule or policy* the proof
named. Anything else is a bug in one of the two, raised as ``ProofError``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fwtest.engine.packet import later_fragment_ports
from fwtest.engine.verdict import Verdict
from fwtest.profile import EmergencyProfile
from fwtest.rules.ir import PORT_PROTOCOLS, TCP, UDP, Ruleset
from fwtest.space.header import HeaderSpace, ProofError
from fwtest.traffic._rawip import finish_ip, set_l4_checksum
from fwtest.traffic.record import FIRST_FRAGMENT, LATER_FRAGMENT, PacketRecord, parse_ip

if TYPE_CHECKING:
    from fwtest.space.classes import PacketClass
    from fwtest.space.compile import Decider

def _addr_bytes(value: int, family: int) -> bytes:
    return value.to_bytes(4 if family == 4 else 16, "big")


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(data: bytes) -> int:
    if len(data) & 1:
        data += b"\x00"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _incremental(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over the changed words."""
    total = (~checksum & 0xFFFF) + _words(bytes(~b & 0xFF for b in old)) + _words(new)
    return ~_fold(total) & 0xFFFF


def build_witness(cls: PacketClass, point: dict[str, int], space: HeaderSpace) -> PacketRecord:
    """The class template moved to ``point`` (a dict of field values), as a record.

    The template's bytes with addresses, ports and TCP flags rewritten and the
    checksums redone (``fwtest.traffic._rawip``, byte for byte what Scapy
    builds: the templates are Scapy's, without IP options or extension
    headers but a fragment header). No Scapy here: a failing check must not
    pay for its import.
    """
    t = cls.template
    family = t.family
    src, dst = point["src"], point["dst"]
    data = bytearray(t.data)
    addr_at = 12 if family == 4 else 8
    data[addr_at:addr_at + 2 * len(_addr_bytes(src, family))] = _addr_bytes(src, family) + _addr_bytes(dst, family)
    l4 = t.l4_offset
    has_l4 = t.frag != LATER_FRAGMENT and (
        (t.proto == UDP and len(data) >= l4 + 8) or (t.proto == TCP and len(data) >= l4 + 20))
    old_ports = bytes(data[l4:l4 + 4]) if has_l4 else b""
    if has_l4:
        struct.pack_into("!HH", data, l4, point["sport"], point["dport"])
        if t.proto == TCP:
            data[l4 + 13] = point["flags"] & 0xFF
    if family == 4:
        finish_ip(data)                    # the header checksum (length and id unchanged)
    if has_l4:
        if t.frag == FIRST_FRAGMENT:
            # The UDP checksum covers the whole datagram, which a first fragment
            # does not carry: update it for the changed words (RFC 1624).
            where = l4 + (6 if t.proto == UDP else 16)
            (checksum,) = struct.unpack_from("!H", data, where)
            if checksum:
                old = _addr_bytes(t.src, family) + _addr_bytes(t.dst, family) + old_ports
                new = _addr_bytes(src, family) + _addr_bytes(dst, family) + bytes(data[l4:l4 + 4])
                struct.pack_into("!H", data, where, _incremental(checksum, old, new) or 0xFFFF)
        else:
            set_l4_checksum(data, l4, t.proto)
    data = bytes(data)
    iface_in = space.ifaces[point["iif"]] if "iif" in point else cls.iface_in
    iface_out = space.ifaces[point["oif"]] if "oif" in point else cls.iface_out
    record = parse_ip(data, t.ts, iface_in, iface_out)
    ports: tuple[int, int] | None = (record.sport, record.dport) if record.has_ports else None
    if record.frag == LATER_FRAGMENT and record.proto in PORT_PROTOCOLS:
        ports = later_fragment_ports(record)    # the message's own bytes: the class pinned them
    if (record.src, record.dst) != (src, dst) or (ports is not None
                                                  and ports != (point["sport"], point["dport"])):
        raise ProofError(f"witness built for {point} parses as {record.short()}")
    return record



class Confirmer:
    """The engine's verdicts on witness packets of one ruleset.

    NEW and untracked packets meet a fresh stateful engine, exactly as such a
    packet meets the firewall. Compiling the engine costs more than judging a
    packet, so one engine is compiled per ruleset and each witness is fed
    ``gap`` seconds after the previous one: longer than every conntrack,
    expectation and reassembly timeout, and long enough for every token
    bucket to fill up again, so each witness finds the state of a fresh
    engine, whatever the packets before it left behind. ESTABLISHED
    and RELATED packets need a connection the engine would have to be led
    through first; ``explain`` walks them under that state instead.
    """

    def __init__(self, ruleset: Ruleset, profile: EmergencyProfile) -> None:
        self.ruleset = ruleset
        self.profile = profile
        self._engine: Any = None
        self._clock = 0.0
        longest = max([float(v) for v in ruleset.conntrack.timeouts.values()] + [SIP_TIMEOUT_S, 600.0])
        refill = max([r.match.limit.burst / r.match.limit.rate for r in ruleset.rules()
                      if r.match.limit is not None and r.match.limit.rate > 0] + [0.0])
        self.gap = 2 * (longest + refill) + 1.0

    def _fresh(self) -> Any:
        from fwtest.engine import Engine

        if self._engine is None:
            self._engine = Engine(self.ruleset, native_hook=self.profile.firewall,
                                  sip_ports=self.profile.sip_helper_ports)
        return self._engine

    def verdict(self, cls: PacketClass, record: PacketRecord, state: str) -> Verdict:
        from fwtest.engine import explain

        if state not in ("new", "untracked"):
            return explain(self.ruleset, record, path=cls.path, state=state, native_hook=self.profile.firewall,
                           helper=cls.helper).verdict
        engine = self._fresh()
        self._clock += self.gap
        v = engine.verdict(record._replace(ts=self._clock), cls.path)
        if v is None:   # a fragment held for reassembly: judge it alone, as replay does
            self._engine = None
            return replay_one(self.ruleset, self.profile, cls, record)
        return v

    def burst(self, cls: PacketClass, copies: Sequence[PacketRecord], state: str = "new") -> list[Verdict]:
        """Verdicts for ``copies`` (time-spread copies of one packet) on fresh token buckets.

        NEW and untracked copies go through a fresh engine (the first creates the
        connection the others join, still NEW without a reply); other states
        are walked as ``explain`` walks them, sharing one set of buckets.
        """
        if state not in ("new", "untracked"):
            from fwtest.engine import explain
            from fwtest.engine.limits import LimitState
            from fwtest.engine.walk import CompiledRuleset

            hook = self.profile.firewall
            shared = CompiledRuleset(self.ruleset, LimitState(), hook)   # one set of buckets for the burst
            return [explain(self.ruleset, c, path=cls.path, state=state, native_hook=hook, helper=cls.helper,
                            compiled=shared).verdict for c in copies]
        engine = self._fresh()
        engine.reset()   # empty conntrack table, full buckets: the copies keep their own times
        out = []
        for c in copies:
            v = engine.verdict(c, cls.path)
            if v is None:
                raise ProofError(f"rate-limit witness {c.short()} is a fragment: not judged alone")
            out.append(v)
        self._clock = max(self._clock, copies[-1].ts)   # later witnesses come after these
        return out


SIP_TIMEOUT_S = 3600.0


def replay_one(ruleset: Ruleset, profile: EmergencyProfile, cls: PacketClass, record: PacketRecord) -> Verdict:
    from fwtest.engine import replay

    return replay(ruleset, [record], cls.path, native_hook=profile.firewall,
                  sip_ports=profile.sip_helper_ports)[0]


def same_decider(v: Verdict, decider: Decider) -> bool:
    if decider.rule is not None:
        return v.rule is not None and v.rule.id == decider.rule.id
    return v.rule is None and decider.chain is not None and v.source == decider.chain.source


def confirm(confirmer: Confirmer, cls: PacketClass, record: PacketRecord, state: str,
            decider: Decider) -> Verdict:
    """The engine's verdict, which must drop ``record`` where the proof says; else ProofError."""
    v = confirmer.verdict(cls, record, state)
    if v.accepted or not same_decider(v, decider):
        raise ProofError(f"witness not confirmed: {record.short()} ({cls.side_label}, state {state}): "
                         f"the proof says {decider.describe()}, the engine says {said(v)}")
    return v


def said(v: Verdict) -> str:
    return f"{v.verdict} by {v.rule.id if v.rule else v.reason or v.source}"


def confirm_burst(confirmer: Confirmer, cls: PacketClass, record: PacketRecord, state: str,
                  times: Sequence[float], decider: Decider) -> tuple[list[PacketRecord], PacketRecord, Verdict]:
    """Replay copies of ``record`` at ``times``; the engine must drop one of them at ``decider``.
    Returns the copies, the first copy dropped there and its verdict.

    The times are the flow's own, unshifted: the engine's token bucket then
    does the same arithmetic as the proof's, to the last bit of a float.
    """
    copies = [record._replace(ts=t) for t in times]
    for copy, v in zip(copies, confirmer.burst(cls, copies, state), strict=True):
        if not v.accepted and same_decider(v, decider):
            return copies, copy, v
    raise ProofError(f"rate-limit witness not confirmed: {len(copies)} copies of {record.short()} in "
                     f"{times[-1] - times[0]:g} s all pass the engine, but the proof says "
                     f"{decider.describe()} drops some")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "packet"


def write_pcap(path: str | Path, records: Iterable[PacketRecord]) -> Path:
    """Raw-IP pcap of ``records`` (link type RAW: the bytes are IP), absolute timestamps."""
    from fwtest.traffic import pcapwrite

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcapwrite.write_pcap(records, path, epoch=0.0, raw_ip=True)
    return path


def witness_file_name(index: int, parts: Sequence[Any]) -> str:
    return f"{index:03d}-" + "-".join(_slug(str(p)) for p in parts) + ".pcap"
