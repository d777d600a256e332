"""Captured traffic through a ruleset: per-packet verdicts and per-call outcomes.

``fwtest replay RULES... PCAP`` and ``fwtest check --trace PCAP`` both run a
capture, in capture order, through one stateful engine (as the firewall
would have met it), then rebuild the calls to say which of them the
candidate rules would have broken. The capture streams: memory stays bounded
whatever its size, except for fragments held for reassembly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fwtest.api import Finding, RulesetLike, rule_ref, sip_helper_ports
from fwtest.engine import Engine
from fwtest.engine.verdict import Verdict
from fwtest.profile import EmergencyProfile
from fwtest.rules import load_ruleset
from fwtest.rules.ir import Ruleset
from fwtest.traffic.calls import Call, Reconstruction, Transaction, reconstruct
from fwtest.traffic.pcap import ReadStats, read_frames
from fwtest.traffic.record import PacketRecord

PacketSink = Callable[[int, int, PacketRecord, Verdict], None]


@dataclass
class CaptureReplay:
    pcap: str
    ruleset: str
    reconstruction: Reconstruction
    read: ReadStats
    packets: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)    # accept/drop/reject -> packets
    outside_profile: int = 0      # packets whose addresses are on neither side of the profile

    @property
    def broken_calls(self) -> list[Call]:
        return [c for c in self.reconstruction.calls if c.failed_under_rules]

    @property
    def broken_transactions(self) -> list[Transaction]:
        return [t for t in self.reconstruction.transactions
                if t.completed and t.completed_under_rules is False]

    @property
    def exit_code(self) -> int:
        """1 when a call or transaction that worked in the capture would fail under the rules."""
        return 1 if self.broken_calls or self.broken_transactions else 0


class Orientation:
    """Which way a captured packet crosses the firewall, from the profile's sides."""

    def __init__(self, profile: EmergencyProfile) -> None:
        self.hooks = profile.hooks()
        self.ifaces = profile.interfaces
        self.firewall = profile.firewall
        self.psap = [(n.version, int(n.network_address), int(n.broadcast_address)) for n in profile.psap]
        self.peers = [(n.version, int(n.network_address), int(n.broadcast_address)) for n in profile.peers]

    @staticmethod
    def _inside(nets: list[tuple[int, int, int]], family: int, addr: int) -> bool:
        return any(f == family and lo <= addr <= hi for f, lo, hi in nets)

    def direction(self, r: PacketRecord) -> str | None:
        """``in`` (towards the PSAP), ``out``, or None when neither address is the profile's."""
        if self._inside(self.psap, r.family, r.dst) or self._inside(self.peers, r.family, r.src):
            return "in"
        if self._inside(self.psap, r.family, r.src) or self._inside(self.peers, r.family, r.dst):
            return "out"
        return None

    def orient(self, r: PacketRecord, direction: str) -> PacketRecord:
        """The record with the interfaces it would cross on the firewall."""
        peers, psap = self.ifaces["peers"], self.ifaces["psap"]
        if self.firewall == "forward":
            ins, outs = (peers, psap) if direction == "in" else (psap, peers)
        else:
            ins, outs = (peers, None) if direction == "in" else (None, peers)
        return r._replace(iface_in=ins, iface_out=outs)


def stream_verdicts(ruleset: Ruleset, frames: Iterator[tuple[int, PacketRecord]],
                    profile: EmergencyProfile, counts: CaptureReplay) -> Iterator[tuple[int, PacketRecord, Verdict]]:
    """(frame, record, verdict) in capture order.

    The engine decides a fragment only once its datagram completes; the
    records wait in a small reorder buffer until everything before them is
    decided, so output stays in capture order.
    """
    orientation = Orientation(profile)
    engine = Engine(ruleset, native_hook=profile.firewall, sip_ports=sip_helper_ports(profile))
    pending: dict[int, tuple[int, PacketRecord]] = {}
    decided: dict[int, Verdict] = {}
    next_out = 0
    for index, (frame, record) in enumerate(frames):
        direction = orientation.direction(record)
        if direction is None:
            counts.outside_profile += 1
            direction = "in"  # a forward firewall applies one path either way; interfaces say peers -> psap
        record = orientation.orient(record, direction)
        pending[index] = (frame, record)
        for i, v in engine.feed(record, orientation.hooks[direction]):
            decided[i] = v
        while next_out in decided:
            frame_no, rec = pending.pop(next_out)
            yield frame_no, rec, decided.pop(next_out)
            next_out += 1
    for i, v in engine.finish():
        decided[i] = v
    while next_out in decided:
        frame_no, rec = pending.pop(next_out)
        yield frame_no, rec, decided.pop(next_out)
        next_out += 1


def replay_capture(rules: RulesetLike, pcap: str | Path, profile: EmergencyProfile, *,
                   on_packet: PacketSink | None = None) -> CaptureReplay:
    """Replay one capture; ``on_packet(index, frame, record, verdict)`` sees every packet as it is decided."""
    ruleset = load_ruleset(rules)
    stats = ReadStats()
    result = CaptureReplay(pcap=str(pcap), ruleset=", ".join(ruleset.files) or ruleset.name,
                           reconstruction=None, read=stats)  # type: ignore[arg-type]
    verdicts: dict[str, int] = {}

    def decided() -> Iterator[tuple[tuple[int, PacketRecord], Verdict]]:
        for index, (frame, record, verdict) in enumerate(
                stream_verdicts(ruleset, read_frames(pcap, stats=stats), profile, result)):
            verdicts[verdict.verdict] = verdicts.get(verdict.verdict, 0) + 1
            if on_packet is not None:
                on_packet(index, frame, record, verdict)
            yield (frame, record), verdict

    pairs = decided()
    records = _Split(pairs)
    result.reconstruction = reconstruct(records.records(), records.verdicts(), numbered=True,
                                        sip_ports=sip_helper_ports(profile),
                                        tls_ports={profile.sip.get("tls", 5061)})
    result.packets = sum(verdicts.values())
    result.verdicts = verdicts
    return result


class _Split:
    """One stream of (item, verdict) pairs read as two lock-step iterators, as
    ``reconstruct(records, verdicts)`` takes them (it zips them one by one)."""

    def __init__(self, pairs: Iterator[tuple[tuple[int, PacketRecord], Verdict]]) -> None:
        self._pairs = pairs
        self._verdict: Verdict | None = None
        self._done = False

    def records(self) -> Iterator[tuple[int, PacketRecord]]:
        for item, verdict in self._pairs:
            self._verdict = verdict
            yield item
        self._done = True

    def verdicts(self) -> Iterator[Verdict]:
        # zip() asks the records first: each verdict asked for is the one of
        # the record just handed out, and the stream ends when they end.
        while not self._done:
            yield self._verdict  # type: ignore[misc]


def call_flow_name(call: Call, profile: EmergencyProfile) -> str:
    """The profile flow a captured call is an instance of."""
    caller = call.caller.rsplit(":", 1)[0].strip("[]")
    try:
        addr = ipaddress.ip_address(caller)
    except ValueError:
        return "call"
    if any(addr in n for n in profile.psap if n.version == addr.version):
        return "callback"
    return "emergency-call"


def trace_findings(replays: Sequence[CaptureReplay], profile: EmergencyProfile) -> list[Finding]:
    """A call or transaction that worked in the capture and fails under the rules."""
    findings = []
    for rp in replays:
        for call in rp.broken_calls:
            drop = call.first_drop
            findings.append(Finding(
                kind="blocked", flow=call_flow_name(call, profile),
                message=drop.what if drop else "call", packet=drop.record.describe() if drop else None,
                rule=rule_ref(drop.verdict) if drop else None, evidence="trace",
                transport=call.transport, family=call.family,
                detail=f"{rp.pcap}: call {call.call_id} ({call.caller} -> {call.callee}) worked in the "
                       f"capture; under these rules: not {', '.join(call.failed_under_rules)}"
                       + (f"; first dead packet is frame {drop.packet}" if drop else "")))
        for txn in rp.broken_transactions:
            drop = txn.first_drop
            flow = "options-keepalive" if txn.method == "OPTIONS" else ("text" if txn.method == "MESSAGE"
                                                                          else txn.method.lower())
            findings.append(Finding(
                kind="blocked", flow=flow, message=drop.what if drop else txn.method,
                packet=drop.record.describe() if drop else None,
                rule=rule_ref(drop.verdict) if drop else None, evidence="trace",
                transport=txn.transport, family=txn.family,
                detail=f"{rp.pcap}: {txn.method} {txn.client} -> {txn.server} was answered in the capture; "
                       "under these rules it is not" + (f" (frame {drop.packet})" if drop else "")))
    return findings
