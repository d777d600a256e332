"""Captured traffic through a ruleset: per-packet verdicts and per-call outcomes.

``fwtest replay RULES... PCAP`` and ``fwtest check --trace PCAP`` both run a
capture, in capture order, through one stateful engine (as the firewall
would have met it), then rebuild the calls to say which of them the
candidate rules would have broken.

``replay_capture`` does it at capture speed (fwtest.engine.fastpath): the
capture is read a chunk at a time into arrays (fwtest.traffic.pcapfast);
packets of established UDP streams whose verdict the engine has already
given their direction are decided a run at a time, everything else goes
through the engine in capture order; the call reconstruction then counts
the media of those runs in bulk and reads everything else packet by packet.
Verdicts and reconstruction are those of the plain, packet-by-packet replay
(``stream_verdicts`` + ``reconstruct``), which stays here as the reference.
Memory stays bounded whatever the capture's size: one chunk, the live
connections and calls, and the chunks waiting for fragments held for
reassembly (at most the reassembly timeout's worth of traffic).

``replay_captures`` replays several captures in parallel processes.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from fwtest.api import Finding, RulesetLike, rule_ref
from fwtest.engine import Engine
from fwtest.engine.fastpath import ChunkVerdicts, FastEngine
from fwtest.engine.verdict import Verdict
from fwtest.errors import InputError
from fwtest.profile import EmergencyProfile
from fwtest.rules import load_ruleset
from fwtest.rules.ir import Ruleset
from fwtest.traffic.calls import Call, CallBuilder, Drop, Reconstruction, Transaction, reconstruct
from fwtest.traffic.pcap import ReadStats, read_frames
from fwtest.traffic.pcapfast import CHUNK_BYTES, read_chunks
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
    fast: int = 0                 # packets decided a run at a time (the rest went through the engine one by one)

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

    def oriented(self, r: PacketRecord) -> tuple[PacketRecord, str, bool]:
        """(the record with its interfaces, its path, whether neither address is the profile's)."""
        direction = self.direction(r)
        outside = direction is None
        if outside:
            direction = "in"  # a forward firewall applies one path either way; interfaces say peers -> psap
        return self.orient(r, direction), self.hooks[direction], outside


def stream_verdicts(ruleset: Ruleset, frames: Iterator[tuple[int, PacketRecord]],
                    profile: EmergencyProfile, counts: CaptureReplay) -> Iterator[tuple[int, PacketRecord, Verdict]]:
    """(frame, record, verdict) in capture order.

    The engine decides a fragment only once its datagram completes; the
    records wait in a small reorder buffer until everything before them is
    decided, so output stays in capture order.
    """
    orientation = Orientation(profile)
    engine = Engine(ruleset, native_hook=profile.firewall, sip_ports=profile.sip_helper_ports)
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


Progress = Callable[[int, int], None]      # (bytes of the capture read, packets replayed)


def replay_capture(rules: RulesetLike, pcap: str | Path, profile: EmergencyProfile, *,
                   on_packet: PacketSink | None = None, progress: Progress | None = None,
                   chunk_bytes: int = CHUNK_BYTES) -> CaptureReplay:
    """Replay one capture; ``on_packet(index, frame, record, verdict)`` sees every packet, in capture
    order, once decided; ``progress(bytes_read, packets)`` is called after each chunk;
    ``chunk_bytes`` of the capture are read at a time."""
    ruleset = load_ruleset(rules)
    stats = ReadStats()
    result = CaptureReplay(pcap=str(pcap), ruleset=", ".join(ruleset.files) or ruleset.name,
                           reconstruction=None, read=stats)  # type: ignore[arg-type]
    orientation = Orientation(profile)
    ports = profile.sip_helper_ports
    fast = FastEngine(Engine(ruleset, native_hook=profile.firewall, sip_ports=ports), orientation.oriented)
    builder = _CallBuilder(ports, {profile.sip.get("tls", 5061)})
    accounting = _Accounting(result, builder, on_packet)
    waiting: deque[ChunkVerdicts] = deque()
    for chunk in read_chunks(pcap, stats=stats, chunk_bytes=chunk_bytes):
        waiting.append(fast.decide(chunk))
        # A chunk's calls are read once all its packets are decided (fragments held for
        # reassembly are decided by a later packet).
        while waiting and not waiting[0].undecided:
            accounting.add(waiting.popleft())
        if progress is not None:
            progress(chunk.end_offset, accounting.index)
    fast.finish()
    while waiting:
        accounting.add(waiting.popleft())
    result.reconstruction = builder.finish()
    result.packets = accounting.index
    result.verdicts = dict(accounting.verdicts)
    return result


def replay_capture_plain(rules: RulesetLike, pcap: str | Path, profile: EmergencyProfile, *,
                         on_packet: PacketSink | None = None) -> CaptureReplay:
    """``replay_capture`` packet by packet: every record through ``Engine.feed`` and
    ``reconstruct``. The reference the fast replay must equal (and slower by far)."""
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

    records = _Split(decided())
    result.reconstruction = reconstruct(records.records(), records.verdicts(), numbered=True,
                                        sip_ports=profile.sip_helper_ports,
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


# Bytes a SIP start line can begin with (calls._SIP_START): CR, LF or a letter. A UDP
# payload starting with anything else is not sniffed as SIP.
_SIP_FIRST_BYTE = np.zeros(257, bool)
for _b in b"\r\n" + bytes(range(65, 91)) + bytes(range(97, 123)):
    _SIP_FIRST_BYTE[_b + 1] = True


class _CallBuilder(CallBuilder):
    """Call reconstruction that can be told about a run of one stream's media packets at once.

    It learns which media endpoints each SIP message (re)registered, so that a
    run is never counted against a registration that changed within it.
    """

    def __init__(self, sip_ports: Sequence[int], tls_ports: set[int]) -> None:
        super().__init__(frozenset(sip_ports), frozenset(tls_ports), True, True)
        self.changed: set[tuple[int, int, int]] = set()

    def register_rtp(self, key: tuple[int, int, int], registration) -> None:
        self.changed.add(key)
        super().register_rtp(key, registration)


class _Flow:
    """One direction of a conversation within a chunk, for the call reconstruction."""

    __slots__ = ("rows", "side", "target", "applied")

    def __init__(self, rows: np.ndarray, side) -> None:
        self.rows = rows
        self.side = side
        self.target = None
        self.applied = 0


class _Accounting:
    """Verdict counts, the per-packet sink and the call reconstruction, a decided chunk at a time."""

    def __init__(self, result: CaptureReplay, builder: _CallBuilder, on_packet: PacketSink | None) -> None:
        self.result = result
        self.builder = builder
        self.on_packet = on_packet
        self.index = 0
        self.verdicts: dict[str, int] = {}
        self.sip_ports = np.array(sorted(builder.sip_ports), np.int64)

    def add(self, d: ChunkVerdicts) -> None:
        n = len(d.chunk)
        counts = np.bincount(d.vid, minlength=len(d.table))
        for v, count in zip(d.table, counts.tolist(), strict=False):
            if count:
                self.verdicts[v.verdict] = self.verdicts.get(v.verdict, 0) + count
        outside = d.outside
        if d.convs:
            fast = np.flatnonzero(d.fast)
            per_side = np.bincount(d.conv[fast].astype(np.int64) * 2 + d.dirs[fast], minlength=2 * len(d.convs))
            flags = np.array([bool(s is not None and s.outside) for c in d.convs for s in c.sides])
            outside += int(per_side[flags].sum())
        self.result.outside_profile += outside
        self.result.fast += int(np.count_nonzero(d.fast))
        if self.on_packet is not None:
            number = d.chunk.number
            for i in range(n):
                self.on_packet(self.index + i, int(number[i]), d.record(i), d.verdict(i))
        self.index += n
        self._reconstruct(d)

    def _reconstruct(self, d: ChunkVerdicts) -> None:
        builder = self.builder
        chunk = d.chunk
        number = chunk.number
        n = len(chunk)
        if not d.monotonic or not d.convs:
            for i in range(n):
                builder.packet(int(number[i]), d.record(i), d.verdict(i))
            return
        accepted = np.array([v.verdict == "accept" for v in d.table], bool)[d.vid]
        cand = d.conv >= 0
        if len(self.sip_ports):
            cand &= ~(np.isin(chunk.sport, self.sip_ports) | np.isin(chunk.dport, self.sip_ports))
        rows = np.flatnonzero(cand)
        fid = d.conv[rows].astype(np.int64) * 2 + d.dirs[rows]
        order = np.argsort(fid, kind="stable")
        fs = fid[order]
        bounds = (np.flatnonzero(np.concatenate(([True], fs[1:] != fs[:-1], [True]))) if len(fs)
                  else np.zeros(1, np.int64))
        unsafe = _SIP_FIRST_BYTE[chunk.first_byte + 1]
        slow = ~cand
        flows: list[_Flow] = []
        for s, e in zip(list(bounds[:-1]), list(bounds[1:]), strict=True):
            f = int(fs[s])
            flow = _Flow(rows[order[s:e]], d.convs[f >> 1].sides[f & 1])
            r = flow.side.record
            flow.target = builder.media_target(r.family, r.src, r.sport, r.dst, r.dport)
            if flow.target is None:
                slow[flow.rows[unsafe[flow.rows]]] = True
            flows.append(flow)
        events = np.flatnonzero(slow).tolist()
        by_endpoint: dict[tuple[int, int, int], list[_Flow]] | None = None
        builder.changed.clear()
        k = 0
        while k < len(events):
            i = events[k]
            k += 1
            if not slow[i]:
                continue          # became media: counted with its flow
            builder.packet(int(number[i]), d.record(i), d.verdict(i))
            if not builder.changed:
                continue
            if by_endpoint is None:
                by_endpoint = {}
                for flow in flows:
                    r = flow.side.record
                    for key in ((r.family, r.src, r.sport), (r.family, r.dst, r.dport)):
                        by_endpoint.setdefault(key, []).append(flow)
            hit = {id(f): f for key in builder.changed for f in by_endpoint.get(key, ())}
            builder.changed.clear()
            added = []
            for flow in hit.values():
                self._apply(d, flow, i, slow, accepted)
                r = flow.side.record
                was = flow.target
                flow.target = builder.media_target(r.family, r.src, r.sport, r.dst, r.dport)
                later = flow.rows[flow.applied:]
                later = later[unsafe[later] & (later > i)]
                if flow.target is None and was is not None:
                    slow[later] = True
                    added.extend(later.tolist())
                elif flow.target is not None and was is None:
                    slow[later] = False
            if added:
                events = sorted(set(events[k:]) | set(added))
                k = 0
        if not flows:
            return
        # The rest of every flow at once: per flow, how many rows are left to count, how many
        # the rules accepted, the last one and the first one they did not accept.
        srt = rows[order]
        starts = bounds[:-1]
        flow_of = np.repeat(np.arange(len(flows)), np.diff(bounds))
        applied = np.array([f.applied for f in flows], np.int64)
        left = ((np.arange(len(srt)) - starts[flow_of]) >= applied[flow_of]) & ~slow[srt]
        counts = np.bincount(flow_of[left], minlength=len(flows))
        ok = accepted[srt] & left
        delivered = np.bincount(flow_of[ok], minlength=len(flows))
        last = np.maximum.reduceat(np.where(left, srt, -1), starts)
        dropped = np.minimum.reduceat(np.where(left & ~ok, srt, n), starts)
        for k in np.flatnonzero(counts).tolist():
            self._count(d, flows[k], int(counts[k]), int(delivered[k]), int(last[k]), int(dropped[k]))

    def _apply(self, d: ChunkVerdicts, flow: _Flow, upto: int, slow: np.ndarray, accepted: np.ndarray) -> None:
        """Count ``flow``'s rows before ``upto`` that are not read one by one."""
        end = int(np.searchsorted(flow.rows, upto))
        if end <= flow.applied:
            return
        rows = flow.rows[flow.applied:end]
        flow.applied = end
        rows = rows[~slow[rows]]
        if len(rows):
            ok = accepted[rows]
            self._count(d, flow, len(rows), int(np.count_nonzero(ok)), int(rows[-1]),
                        int(rows[np.argmin(ok)]) if not ok.all() else -1)

    def _count(self, d: ChunkVerdicts, flow: _Flow, count: int, delivered: int, last_row: int,
               first_dropped: int) -> None:
        """What ``media()`` does for ``count`` packets of ``flow`` (``delivered`` of them accepted)."""
        stats = self.builder.stats
        stats.packets += count
        if flow.target is None:
            stats.other_packets += count
            return
        stream, dialog, toward, rtcp = flow.target
        stats.media_packets += count
        # Timestamps never go back in a chunk read this way: the last packet is the latest.
        last = float(d.chunk.ts[last_row])
        if last > dialog.end:
            dialog.end = last
        if toward == "callee":
            if rtcp:
                stream.rtcp_to_callee += count
            else:
                stream.to_callee += count
                stream.delivered_to_callee += delivered
        else:
            if rtcp:
                stream.rtcp_to_caller += count
            else:
                stream.to_caller += count
                stream.delivered_to_caller += delivered
        if delivered < count:
            dialog.note_drop(Drop(int(d.chunk.number[first_dropped]), d.record(first_dropped),
                                  d.verdict(first_dropped), f"{'RTCP' if rtcp else 'RTP'} to {toward}"))


# ----------------------------------------------------------------------------- several captures

def replay_captures(rules: RulesetLike, pcaps: Sequence[str | Path], profile: EmergencyProfile, *,
                    jobs: int = 1, progress: bool | None = None,
                    stream: TextIO | None = None) -> list[CaptureReplay]:
    """Replay each capture (``jobs`` processes in parallel); results in the order given.

    ``progress``: a progress bar (packets, rate, ETA) on ``stream`` (stderr);
    None shows it when that stream is a terminal.
    """
    ruleset = load_ruleset(rules)
    paths = [str(p) for p in pcaps]
    out = stream if stream is not None else sys.stderr
    sizes = [_size(p) for p in paths]
    bar = ProgressBar(sum(sizes), out, enabled=progress)
    try:
        if jobs <= 1 or len(paths) <= 1:
            results = []
            done_bytes = done_packets = 0
            for path, size in zip(paths, sizes, strict=True):
                def tick(read: int, packets: int, base_b: int = done_bytes, base_p: int = done_packets) -> None:
                    bar.update(base_b + read, base_p + packets)
                r = replay_capture(ruleset, path, profile, progress=tick)
                results.append(r)
                done_bytes += size
                done_packets += r.packets
                bar.update(done_bytes, done_packets)
            return results
        results = _parallel(rules, ruleset, paths, profile, jobs, bar)
        return results if results is not None else replay_captures(ruleset, paths, profile, jobs=1,
                                                                     progress=bar.enabled, stream=out)
    finally:
        bar.close()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


_SHARED = None      # in a worker: where it reports progress
_RULESET: Ruleset | None = None   # the parent's ruleset, inherited by forked workers


def _init_worker(shared, rules) -> None:
    global _SHARED, _RULESET
    _SHARED = shared
    if rules is not None:
        _RULESET = load_ruleset(rules)


def _replay_worker(path: str, profile: EmergencyProfile, slot: int) -> CaptureReplay | tuple[str, int, str]:
    shared = _SHARED

    def tick(read: int, packets: int) -> None:
        if shared is not None:
            shared[2 * slot] = read
            shared[2 * slot + 1] = packets

    try:
        return replay_capture(_RULESET, path, profile, progress=tick)  # type: ignore[arg-type]
    except InputError as e:
        return (e.path, e.line, e.message)      # InputError does not pickle: sent as its parts


def _parallel(rules: RulesetLike, ruleset: Ruleset, paths: list[str], profile: EmergencyProfile, jobs: int,
              bar: ProgressBar) -> list[CaptureReplay] | None:
    """The replays in worker processes; None when the ruleset cannot reach them."""
    global _RULESET
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # fork: the workers inherit the loaded ruleset (the IR holds read-only mappings, which do
    # not pickle). Where there is no fork, they load it again from what the caller gave.
    if "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        _RULESET, send = ruleset, None
    elif isinstance(rules, (str, Path, list, tuple, dict)):
        ctx, send = multiprocessing.get_context("spawn"), rules
    else:
        return None
    shared = ctx.Array("d", 2 * len(paths), lock=False)
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(paths)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(shared, send)) as pool:
            futures = [pool.submit(_replay_worker, p, profile, i) for i, p in enumerate(paths)]
            pending = set(futures)
            while pending:
                _done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                bar.update(int(sum(shared[0::2])), int(sum(shared[1::2])))
                if any(f.done() and f.exception() is not None for f in futures):
                    for f in pending:
                        f.cancel()
                    break
            results = [f.result() for f in futures]
    finally:
        _RULESET = None
    for r in results:
        if isinstance(r, tuple):
            raise InputError(*r)
    return results  # type: ignore[return-value]


class ProgressBar:
    """``[#####.....]  45%  12,345,678 packets  1.20 M pkt/s  ETA 0:01:23`` on one terminal line.

    Silent unless enabled (default: when the stream is a terminal, so never in
    CI logs or pipes); no colour when NO_COLOR is set (https://no-color.org).
    """

    WIDTH = 24

    def __init__(self, total_bytes: int, stream: TextIO, *, enabled: bool | None = None) -> None:
        self.stream = stream
        self.total = max(total_bytes, 1)
        isatty = getattr(stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self.colour = self.enabled and not os.environ.get("NO_COLOR")
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.drawn = False

    def update(self, done_bytes: int, packets: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last_draw < 0.1 and done_bytes < self.total:
            return
        self.last_draw = now
        self.stream.write("\r" + self.line(done_bytes, packets, now - self.start) + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def line(self, done_bytes: int, packets: int, elapsed: float) -> str:
        frac = min(max(done_bytes / self.total, 0.0), 1.0)
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        if self.colour:
            bar = f"\x1b[32m{'#' * filled}\x1b[2m{'.' * (self.WIDTH - filled)}\x1b[0m"
        rate = packets / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else None
        eta_text = "--:--" if eta is None else _clock(eta)
        return (f"[{bar}] {frac * 100:3.0f}%  {packets:,} packets  {rate / 1e6:.2f} M pkt/s  "
                f"ETA {eta_text}")

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
