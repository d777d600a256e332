"""``fwtest bench``: how fast a capture replays, against the loop a user would write, and in how much memory.

A generated trace (emergency calls and callbacks over SIP on UDP and TCP,
IPv4 and IPv6, the INVITEs with their PIDF-LO fragmented over UDP, RTP both
ways at 50 packets a second and RTCP every 5 s, calls of one to five
minutes, about ``concurrency`` of them up at once) is replayed through a
ruleset (the reference psap-edge by default):

* fwtest's replay (``fwtest.replay.replay_capture``: verdicts and the call
  reconstruction), the median of several runs over the whole file;
* the plain engine, packet by packet (``replay_capture_plain``), and the
  naive loop (Scapy's ``PcapReader``, full dissection, a first-match rule
  walk over the dissected fields with a dictionary for connection state),
  both on the first packets of the same trace only (they are far slower);
* the peak memory of a replay of a 1M and a 5M packet trace, each in a fresh
  process (``ru_maxrss``), next to the memory of that process before the replay;
* what that means for a day of statewide traffic: 8,800 calls of a few
  minutes, 50 RTP packets a second each way.

Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from fwtest.profile import EmergencyProfile, load_profile
from fwtest.rules import load_ruleset
from fwtest.rules.ir import Ruleset

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = ROOT / "rulesets" / "psap-edge.yaml"
DEFAULT_PROFILE = ROOT / "rulesets" / "psap-edge.profile.yaml"

PTIME_US = 20_000                 # 20 ms packetisation: 50 RTP packets a second each way
RTCP_US = 5_000_000               # RFC 3550 6.2 minimum interval
EPOCH_US = 1718734800 * 1_000_000  # 2024-06-18 18:20:00 UTC
SLICE_US = 20_000_000             # trace written 20 s of traffic at a time
DAY_CALLS = 8800                  # Massachusetts' 204 PSAPs, calls a day (2023)
DAY_CALL_SECONDS = 180            # "a few minutes"
PEER_MAC = bytes.fromhex("020000000001")
PSAP_MAC = bytes.fromhex("020000000002")


# ----------------------------------------------------------------------------- the trace

@dataclass
class TraceInfo:
    path: str
    packets: int
    calls: int
    seconds: float                # capture duration
    sip_packets: int              # signalling (UDP, TCP segments, handshakes, fragments)
    fragments: int
    media_packets: int            # RTP and RTCP
    size: int                     # bytes


class _PcapOut:
    """Classic pcap (Ethernet, microseconds), written a slice at a time with numpy."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.packets = 0

    def write(self, stamps: list[np.ndarray], frames: list[np.ndarray]) -> None:
        """Write frames (each a 2-D array of equal-length frames, with its µs timestamps), merged by time."""
        ts = np.concatenate(stamps)
        lengths = np.concatenate([np.full(len(s), f.shape[1], np.int64) for s, f in zip(stamps, frames,
                                                                                     strict=True)])
        order = np.argsort(ts, kind="stable")
        ts, lengths = ts[order], lengths[order]
        offsets = np.zeros(len(ts), np.int64)
        np.cumsum(16 + lengths[:-1], out=offsets[1:])
        out = np.empty(int(offsets[-1] + 16 + lengths[-1]) if len(ts) else 0, np.uint8)
        heads = np.empty((len(ts), 4), "<u4")
        heads[:, 0] = ts // 1_000_000
        heads[:, 1] = ts % 1_000_000
        heads[:, 2] = heads[:, 3] = lengths
        out[offsets[:, None] + np.arange(16)] = heads.view(np.uint8)
        where = np.empty(len(ts), np.int64)
        where[order] = offsets + 16
        at = 0
        for f in frames:
            k = len(f)
            out[where[at:at + k, None] + np.arange(f.shape[1])] = f
            at += k
        self.f.write(out.tobytes())
        self.packets += len(ts)

    def close(self) -> None:
        self.f.close()


def _be_sum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _ethernet(from_psap: bool, family: int) -> bytes:
    """An Ethernet header as pcapwrite writes it: PSAP and peer side each have their MAC."""
    dst, src = (PEER_MAC, PSAP_MAC) if from_psap else (PSAP_MAC, PEER_MAC)
    return dst + src + struct.pack("!H", 0x0800 if family == 4 else 0x86DD)


class _RtpStream:
    """One direction of a call's RTP at 50 packets a second, built a slice at a time.

    The packet is Scapy's (builders.rtp_template); per packet only the marker,
    sequence number, timestamp and the UDP checksum change, computed here
    with numpy (RFC 768 / RFC 1071 on big-endian words).
    """

    def __init__(self, src: str, sport: int, dst: str, dport: int, from_psap: bool, start_us: int,
                 end_us: int, ssrc: int, rng: random.Random) -> None:
        from fwtest.traffic import builders

        packet = bytearray(builders.rtp_template(src, sport, dst, dport, ssrc))
        l4 = 20 if packet[0] >> 4 == 4 else 40
        rtp = l4 + 8
        frame = _ethernet(from_psap, 4 if l4 == 20 else 6)
        base = bytearray(packet)
        base[rtp:rtp + 8] = bytes(8)        # version/marker/PT, sequence, timestamp: summed per packet
        base[l4 + 6:l4 + 8] = b"\0\0"
        udp_len = len(packet) - l4
        pseudo = (bytes(packet[12:20]) + struct.pack("!BBH", 0, 17, udp_len) if l4 == 20
                  else bytes(packet[8:40]) + struct.pack("!IxxxB", udp_len, 17))
        self.rest = _be_sum(pseudo) + _be_sum(bytes(base[l4:]))
        self.base = np.frombuffer(bytes(frame + base), np.uint8)
        self.at = len(frame) + rtp          # where the RTP header starts in the frame
        self.csum = len(frame) + l4 + 6
        self.start, self.end = start_us, end_us
        self.seq0, self.ts0 = rng.getrandbits(16), rng.getrandbits(32)

    def slice(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps (µs) and frames of the packets in [lo, hi)."""
        first = max(0, -(-(lo - self.start) // PTIME_US))
        last = min((self.end - self.start) // PTIME_US, (hi - 1 - self.start) // PTIME_US)
        if last < first:
            return np.zeros(0, np.int64), np.zeros((0, len(self.base)), np.uint8)
        k = np.arange(first, last + 1, dtype=np.int64)
        seq = (self.seq0 + k) & 0xFFFF
        rts = (self.ts0 + k * 160) & 0xFFFFFFFF
        first_bytes = np.where(k == 0, 0x8080, 0x8000)   # RTP v2; marker on the talkspurt's first packet
        total = self.rest + first_bytes + seq + (rts >> 16) + (rts & 0xFFFF)
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        csum = ~total & 0xFFFF
        csum[csum == 0] = 0xFFFF           # RFC 768: a computed zero is sent as all ones
        rows = np.tile(self.base, (len(k), 1))
        a = self.at
        rows[:, a] = 0x80
        rows[:, a + 1] = first_bytes & 0xFF
        rows[:, a + 2], rows[:, a + 3] = seq >> 8, seq & 0xFF
        for i, shift in enumerate((24, 16, 8, 0)):
            rows[:, a + 4 + i] = (rts >> shift) & 0xFF
        rows[:, self.csum], rows[:, self.csum + 1] = csum >> 8, csum & 0xFF
        return self.start + k * PTIME_US, rows


@dataclass
class _PlannedCall:
    end: int                                  # µs of its last packet
    small: list[tuple[int, bytes]]            # signalling and RTCP: (µs, frame)
    streams: list[_RtpStream]


def _plan_call(profile: EmergencyProfile, index: int, start_us: int, rng: random.Random) -> _PlannedCall:
    """One call or callback: SIP (Scapy, via the synthesiser's call machinery), media by _RtpStream."""
    from fwtest.traffic import builders
    from fwtest.traffic._rawip import UdpFieldPatcher
    from fwtest.traffic.synth import FlowWriter, Instance, _bye_exchange, _Call, _invite_exchange

    six = rng.random() < 0.15
    transport = "tcp" if rng.random() < 0.25 else "udp"
    emergency = rng.random() < 0.9
    peer = f"2001:db8:100::{1 + index % 4000:x}" if six else f"198.51.100.{1 + index % 254}"
    psap = f"2001:db8:911::{1 + index % 4000:x}" if six else f"203.0.113.{1 + index % 62}"
    # Concurrent calls never share a media port (ports are even; RTCP is RTP + 1).
    inst = Instance(index, peer, psap, 16384 + 2 * (index % 4096), 32766 - 2 * (index % 4096))
    seconds = rng.randint(60, 300)
    w = FlowWriter(profile)
    call = _Call(profile, transport, inst, rng, w, peer_calls=emergency)
    caller, callee = (peer, psap) if emergency else (psap, peer)
    caller_rtp, callee_rtp = (inst.peer_rtp, inst.psap_rtp) if emergency else (inst.psap_rtp, inst.peer_rtp)
    if emergency:
        dialog = call.dialog("urn:service:sos")
        invite = dialog.emergency_invite(builders.emergency_sdp(caller, caller_rtp, rng.randint(1, 2 ** 31)),
                                         builders.pidf_lo(f"pres:{dialog.caller_user}@{builders.PEER_DOMAIN}"))
    else:
        dialog = call.dialog(f"sip:+15085550100@{builders.hostport(callee, 5060)};user=phone")
        invite = dialog.invite(builders.emergency_sdp(caller, caller_rtp, rng.randint(1, 2 ** 31)))
    answer = builders.emergency_sdp(callee, callee_rtp, rng.randint(1, 2 ** 31))
    t = call.open(0.0, "setup")
    t = _invite_exchange(call, dialog, invite, answer, t)
    media_at = t + 0.02
    t = _bye_exchange(call, dialog, rng.random() < 0.5, media_at + seconds + 0.05)
    call.close(t + 0.05, "teardown", True)
    small = [(start_us + round(step.record.ts * 1e6),
              _ethernet(step.direction == "out", step.record.family) + step.record.data) for step in w.finish()]
    media_start = start_us + round(media_at * 1e6)
    media_end = media_start + seconds * 1_000_000
    streams = []
    for src, sport, dst, dport, offset in ((caller, caller_rtp, callee, callee_rtp, 0),
                                           (callee, callee_rtp, caller, caller_rtp, PTIME_US // 2)):
        from_psap = src == psap
        stream = _RtpStream(src, sport, dst, dport, from_psap, media_start + offset, media_end + offset,
                            rng.getrandbits(32), rng)
        streams.append(stream)
        rtcp = builders.rtcp_template(builders.rtp_template(src, sport, dst, dport), 1, f"ua@{src}")
        patch = UdpFieldPatcher(rtcp, 8, "!QIII")
        eth = _ethernet(from_psap, 6 if ":" in src else 4)
        for at in range(media_start + offset + RTCP_US // 2, media_end + offset, RTCP_US):
            frames = (at - media_start - offset) // PTIME_US
            ntp = (EPOCH_US + at) * (1 << 32) // 1_000_000 + (2208988800 << 32)
            small.append((at, eth + patch.packet(ntp & (2 ** 64 - 1), frames * 160, frames, frames * 160)))
    return _PlannedCall(max(max(a for a, _ in small), media_end + PTIME_US), small, streams)


def generate_trace(path: str | Path, packets: int, *, profile: EmergencyProfile | None = None, seed: int = 7,
                   concurrency: int = 40, out: TextIO | None = None) -> TraceInfo:
    """Write a trace of about ``packets`` packets (the calls started until then, played to
    their end) of emergency calls and callbacks; see the module doc."""
    profile = profile or load_profile(DEFAULT_PROFILE)
    rng = random.Random(seed)
    path = Path(path)
    # Calls arrive at random (Poisson) with ``concurrency`` up on average (3-minute mean).
    gap_us = 180_000_000 // concurrency
    plan: list[_PlannedCall] = []
    start_us = expected = 0
    while expected < packets:
        call = _plan_call(profile, len(plan), start_us, rng)
        plan.append(call)
        expected += len(call.small) + sum((s.end - s.start) // PTIME_US + 1 for s in call.streams)
        start_us += max(1, int(rng.expovariate(1.0) * gap_us))
    sip = sum(1 for c in plan for _, data in c.small if not _is_rtcp(data))
    frags = sum(1 for c in plan for _, data in c.small if _is_fragment(data))
    writer = _PcapOut(path)
    end = max(c.end for c in plan)
    lo = 0
    live = plan
    while lo <= end:
        hi = lo + SLICE_US
        stamps: list[np.ndarray] = []
        frames: list[np.ndarray] = []
        for call in live:
            by_len: dict[int, list[tuple[int, bytes]]] = {}
            for at, data in call.small:
                if lo <= at < hi:
                    by_len.setdefault(len(data), []).append((at, data))
            for length, items in by_len.items():
                stamps.append(np.array([a for a, _ in items], np.int64))
                frames.append(np.frombuffer(b"".join(d for _, d in items), np.uint8).reshape(len(items), length))
            for stream in call.streams:
                when, rows = stream.slice(lo, hi)
                if len(when):
                    stamps.append(when)
                    frames.append(rows)
        live = [c for c in live if c.end >= hi]
        if stamps:
            writer.write([s + EPOCH_US for s in stamps], frames)
        lo = hi
        if out is not None:
            out.write(f"\r  writing {path.name}: {writer.packets:,} packets")
            out.flush()
    writer.close()
    if out is not None:
        out.write("\r\x1b[K")
        out.flush()
    return TraceInfo(str(path), writer.packets, len(plan), end / 1e6, sip, frags, writer.packets - sip,
                     path.stat().st_size)


def _is_fragment(frame: bytes) -> bool:
    ip = frame[14:]
    if ip[0] >> 4 == 4:
        return bool(struct.unpack_from("!H", ip, 6)[0] & 0x3FFF)
    return ip[6] == 44


def _is_rtcp(frame: bytes) -> bool:
    ip = frame[14:]
    l4 = 20 if ip[0] >> 4 == 4 else 40
    return ip[6 if l4 == 40 else 9] == 17 and len(ip) > l4 + 9 and ip[l4 + 9] == 200 and ip[l4 + 8] == 0x80


# ----------------------------------------------------------------------------- measuring

def head_pcap(src: str | Path, dst: str | Path, packets: int) -> int:
    """Copy the file header and the first ``packets`` records of a classic pcap; returns how many."""
    count = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(f.read(24))
        while count < packets:
            head = f.read(16)
            if len(head) < 16:
                break
            caplen = struct.unpack_from("<I", head, 8)[0]
            out.write(head + f.read(caplen))
            count += 1
    return count


def time_replay(rules: str, path: str, profile: EmergencyProfile, runs: int) -> tuple[list[float], object]:
    """Seconds of each ``replay_capture`` run (the whole capture: verdicts and calls)."""
    from fwtest.replay import replay_capture

    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = replay_capture(rules, path, profile)
        times.append(time.perf_counter() - start)
    return times, result


def time_plain(rules: str, path: str, profile: EmergencyProfile) -> tuple[float, int]:
    from fwtest.replay import replay_capture_plain

    start = time.perf_counter()
    result = replay_capture_plain(rules, path, profile)
    return time.perf_counter() - start, result.packets


class NaiveFirewall:
    """The loop a user would write: Scapy dissects each packet, a first-match walk over the
    rules reads the dissected fields, a dictionary of 5-tuples stands in for conntrack.

    Not fwtest's semantics (no hooks, timeouts, fragments, helpers, real rate limits): it
    only does the work such a loop does per packet, to time it.
    """

    def __init__(self, ruleset: Ruleset) -> None:
        base = next(b for b in ruleset.bases if b.hook in (None, "forward"))
        self.ruleset = ruleset
        self.chain = ruleset.chains[base.chain].rules
        self.policy = base.policy
        self.seen: dict[tuple, bool] = {}

    def verdict(self, pkt) -> str:
        from scapy.layers.inet import IP, TCP, UDP
        from scapy.layers.inet6 import IPv6

        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None:
            return "accept"
        family = 4 if isinstance(ip, IP) else 6
        proto = ip.proto if family == 4 else ip.nh
        l4 = pkt.getlayer(UDP) or pkt.getlayer(TCP)
        sport, dport = (l4.sport, l4.dport) if l4 is not None else (-1, -1)
        fields = {"family": family, "proto": proto, "src": int(ipaddress.ip_address(ip.src)),
                  "dst": int(ipaddress.ip_address(ip.dst)), "sport": sport, "dport": dport,
                  "payload": bytes(l4.payload) if l4 is not None else b""}
        key = (family, proto, fields["src"], fields["dst"], sport, dport)
        back = (family, proto, fields["dst"], fields["src"], dport, sport)
        if key in self.seen or back in self.seen:
            fields["state"] = "established" if back in self.seen or self.seen.get(key) else "new"
            if back in self.seen:
                self.seen[back] = True
        else:
            fields["state"] = "new"
        verdict = self.walk(self.chain, fields, pkt)
        if verdict == "accept" and key not in self.seen and back not in self.seen:
            self.seen[key] = False
        return verdict

    def walk(self, rules, fields: dict, pkt) -> str:
        for rule in rules:
            if not self.matches(rule.match, fields, pkt):
                continue
            kind = rule.action.kind
            if kind in ("accept", "drop", "reject"):
                return kind
            if kind in ("jump", "goto"):
                found = self.walk(self.ruleset.chains[rule.action.target].rules, fields, pkt)
                if found != "return":
                    return found
            elif kind == "return":
                return "return"
        return self.policy

    @staticmethod
    def matches(m, fields: dict, pkt) -> bool:
        import re

        if m.proto is not None and (fields["proto"] in m.proto.protocols) == m.proto.negated:
            return False
        for name in ("src", "dst"):
            addr = getattr(m, name)
            if addr is not None:
                inside = any(r.family == fields["family"] and r.first <= fields[name] <= r.last for r in addr.ranges)
                if inside == addr.negated:
                    return False
        for name in ("sport", "dport"):
            ports = getattr(m, name)
            if ports is not None:
                inside = any(lo <= fields[name] <= hi for lo, hi in ports.ranges)
                if fields[name] < 0 or inside == ports.negated:
                    return False
        if m.state is not None and (fields["state"] in m.state.states) == m.state.negated:
            return False
        if m.sip is not None:
            text = fields["payload"].decode("latin-1")
            if m.sip.method and not re.match(m.sip.method, text.split(" ", 1)[0]):
                return False
        for s in m.string:
            if (s.pattern in bytes(pkt)) == s.negated:
                return False
        return m.limit is None or not m.limit.above


def time_naive(rules: str, path: str, packets: int) -> tuple[float, int]:
    """Seconds for the naive loop over the first ``packets`` packets (reading and dissecting included)."""
    from scapy.utils import PcapReader

    import fwtest.traffic.sip  # noqa: F401 - binds Scapy's dissection of SIP on its ports, as a user's script would

    firewall = NaiveFirewall(load_ruleset(rules))
    count = 0
    start = time.perf_counter()
    with PcapReader(str(path)) as reader:
        for pkt in reader:
            firewall.verdict(pkt)
            count += 1
            if count >= packets:
                break
    return time.perf_counter() - start, count


_MEMORY_PROBE = """
import json, resource, sys, tracemalloc
from fwtest.profile import load_profile
from fwtest.replay import replay_capture

def status(field):
    # VmRSS / VmHWM of this address space. (ru_maxrss is not used: Linux carries the
    # parent's size at fork over the exec into the child's figure.)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

profile = load_profile(sys.argv[3])
traced = sys.argv[4] == "traced"
before = status("VmRSS")
if traced:
    tracemalloc.start()
result = replay_capture(sys.argv[1], sys.argv[2], profile)
peak = tracemalloc.get_traced_memory()[1] if traced else 0
print(json.dumps({"rss_before_kb": before, "peak_kb": status("VmHWM"), "traced_peak": peak,
                  "packets": result.packets}))
"""


def peak_memory(rules: str, path: str, profile_path: str) -> dict:
    """Two replays, each in a fresh process: the resident size when the replay starts and its peak
    (VmRSS, VmHWM, KiB); then, traced (tracemalloc costs memory of its own), the peak of the
    replay's own allocations."""
    out = {}
    for mode in ("plain", "traced"):
        done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, rules, path, profile_path, mode],
                              capture_output=True, text=True, check=True)
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if mode == "plain":
            out.update(found)
        else:
            out["traced_peak"] = found["traced_peak"]
    return out


def day_packets(calls: int = DAY_CALLS, seconds: int = DAY_CALL_SECONDS) -> int:
    """Packets of a day: RTP 50/s each way, RTCP every 5 s each way, and about 12 SIP packets a call."""
    return calls * (2 * 50 * seconds + 2 * (seconds // 5) + 12)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ----------------------------------------------------------------------------- the command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", default=str(DEFAULT_RULES), help="ruleset (default: rulesets/psap-edge.yaml)")
    parser.add_argument("--profile", default=str(DEFAULT_PROFILE), help="profile (default: psap-edge)")
    parser.add_argument("--packets", type=int, default=1_000_000, help="packets in the timed trace")
    parser.add_argument("--big", type=int, default=5_000_000,
                        help="packets in the second trace for the memory figure (0: skip it)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of fwtest's replay (the median counts)")
    parser.add_argument("--naive-sample", type=int, default=20_000, help="packets the naive loop is timed on")
    parser.add_argument("--plain-sample", type=int, default=200_000,
                        help="packets the packet-by-packet engine is timed on")
    parser.add_argument("--workdir", help="where the traces are written (default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=7)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    import platform
    import shutil
    import tempfile

    profile = load_profile(args.profile)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fwtest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr if sys.stderr.isatty() else None
    try:
        out.write(f"fwtest bench: {args.rules} (profile {profile.name}); Python {platform.python_version()}, "
                  f"numpy {np.__version__}, one process\n")
        start = time.perf_counter()
        info = generate_trace(work / f"calls-{args.packets}.pcap", args.packets, profile=profile, seed=args.seed,
                              out=progress)
        out.write(f"trace: {info.packets:,} packets, {info.calls} calls over {info.seconds / 60:.1f} min "
                  f"({info.sip_packets:,} signalling packets, {info.fragments} of them IP fragments; "
                  f"the rest RTP/RTCP), {info.size / 1e6:.0f} MB, written in {time.perf_counter() - start:.1f} s\n\n")
        times, result = time_replay(args.rules, info.path, profile, args.runs)
        median = statistics.median(times)
        rows = [("fwtest replay (verdicts + calls)", info.packets, median,
                 f"median of {len(times)} runs over the whole trace ({min(times):.2f}-{max(times):.2f} s)")]
        sample = work / "sample.pcap"
        plain_n = head_pcap(info.path, sample, args.plain_sample)
        plain_s, _ = time_plain(args.rules, str(sample), profile)
        rows.append(("fwtest engine, packet by packet", plain_n, plain_s, f"first {plain_n:,} packets"))
        naive_s, naive_n = time_naive(args.rules, info.path, args.naive_sample)
        rows.append(("naive loop: Scapy PcapReader + rule walk", naive_n, naive_s, f"first {naive_n:,} packets"))
        out.write(f"{'':42} {'packets':>10} {'seconds':>8} {'packets/s':>11}\n")
        for name, n, seconds, note in rows:
            out.write(f"{name:42} {n:>10,} {seconds:>8.2f} {n / seconds:>11,.0f}  {note}\n")
        fast_pps, naive_pps = info.packets / median, naive_n / naive_s
        out.write(f"fwtest's replay is {fast_pps / naive_pps:,.0f}x the naive loop and "
                  f"{fast_pps / (plain_n / plain_s):.0f}x its own engine packet by packet; "
                  f"{result.fast / max(result.packets, 1):.2%} of the packets were decided a run at a time; "
                  f"{len(result.reconstruction.calls)} calls rebuilt\n\n")

        out.write("peak memory of a replay, each in a fresh process (peak RSS: VmHWM):\n")
        traces = [info]
        if args.big:
            traces.append(generate_trace(work / f"calls-{args.big}.pcap", args.big, profile=profile,
                                         seed=args.seed + 1, out=progress))
        for trace in traces:
            mem = peak_memory(args.rules, trace.path, args.profile)
            out.write(f"  {trace.packets:>10,} packets ({trace.size / 1e6:,.0f} MB file): peak RSS "
                      f"{mem['peak_kb'] / 1024:,.0f} MiB ({mem['rss_before_kb'] / 1024:,.0f} MiB when the replay "
                      f"started); the replay's own allocations peak at {mem['traced_peak'] / 2 ** 20:,.1f} MiB "
                      "(tracemalloc)\n")

        day = day_packets()
        out.write(f"\na day of statewide traffic: {DAY_CALLS:,} calls of {DAY_CALL_SECONDS // 60} minutes, RTP at 50 "
                  f"packets/s each way, RTCP, SIP: {day / 1e6:,.1f} M packets\n")
        out.write(f"  fwtest replay:  {_duration(day / fast_pps)} on one core "
                  f"(at {fast_pps:,.0f} packets/s; --jobs N splits a day of capture files over N cores)\n")
        out.write(f"  naive loop:     {_duration(day / naive_pps)} (at {naive_pps:,.0f} packets/s)\n")
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fwtest bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
