"""The call-flow synthesiser: a profile in, deterministic emergency traffic out.

For each flow of the profile, each SIP transport and each address family,
several instances of the flow: they vary the hosts (first, middle and last
usable address of every prefix on both sides, rotated so that the edges of
one side meet different edges of the other) and the media ports (low end,
middle and high end of both RTP ranges; RTP even, RTCP = RTP + 1). With a
surge in the profile, ``surge.calls`` more emergency calls share one
timeline, their set-ups spread evenly over ``surge.seconds``.

Phases (``fwtest.traffic.callflow``): SIP set-up, teardown, keep-alive and
MESSAGE packets carry their phase; a TCP/TLS handshake takes the phase of the
first message the connection carries; media (RTP, RTCP, and the MSRP
connection with its SENDs and 200s) is ``media-in`` or ``media-out`` by
direction; TCP ACKs take the phase of the data they acknowledge.

Every packet is built with Scapy (``fwtest.traffic.builders``) and handed on
as a ``PacketRecord``. Synthesis is deterministic for a seed, and its result
is cached on disk (``fwtest.cache``): a warm cache is read without importing
Scapy at all.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fwtest import cache
from fwtest.profile import EmergencyProfile
from fwtest.traffic._rawip import UdpFieldPatcher
from fwtest.traffic.callflow import CallFlow, FlowStep
from fwtest.traffic.record import PacketRecord, parse_ip

if TYPE_CHECKING:  # builders imports Scapy: only when synthesising for real
    from fwtest.traffic.builders import SipDialog, TcpConnection, UdpChannel, Wired

INSTANCES_PER_PREFIX = 3          # first, middle and last usable host
PTIME = 0.020                     # 20 ms packetisation (RFC 3551 4.5: PCMU default)
BURST_PACKETS = 50                # the first second of media at full rate, then one per second
RTCP_INTERVAL = 5.0               # RFC 3550 6.2: minimum RTCP interval
OPTIONS_ROUNDS = 3
OPTIONS_INTERVAL = 30.0
SURGE_HOLD = 10.0                 # surge calls hang up this long after the last set-up
EPHEMERAL = (32768, 60999)        # Linux net.ipv4.ip_local_port_range default
NTP_EPOCH_OFFSET = 2208988800     # seconds from 1900 (NTP) to 1970 (Unix)
WALLCLOCK = 1718734800            # 2024-06-18 18:20:00 UTC, for RTCP NTP timestamps


# ----------------------------------------------------------------------------
# Public entry point


class SynthesisedFlows(list[CallFlow]):
    """The flows of one profile and seed; ``key`` names them in the cache (``fwtest.cache``),
    so what is derived from them alone (the proof's packet classes) can be cached too."""

    key: str


def synthesize(profile: EmergencyProfile, *, seed: int = 0) -> SynthesisedFlows:
    """Every synthetic call flow of the profile, deterministic for ``seed``.

    With the cache on, asking again in one process (a check of several rulesets,
    check and its proof) gives the same object back, so what is derived from it
    in memory (the proof's classes) is found again too.
    """
    entry = cache_key(profile, seed)
    recent = (str(cache.directory()), entry)
    if cache.enabled() and recent in _RECENT:
        return _RECENT[recent]
    flows = cache.load("flows", entry)
    if not (isinstance(flows, list) and all(isinstance(f, CallFlow) for f in flows)):
        flows = _synthesize(profile, seed)
        cache.store("flows", entry, flows)
    out = SynthesisedFlows(flows)
    out.key = entry
    if cache.enabled():
        if len(_RECENT) >= 4:
            _RECENT.pop(next(iter(_RECENT)))
        _RECENT[recent] = out
    return out


_RECENT: dict[tuple[str, str], SynthesisedFlows] = {}   # (cache directory, entry) -> flows


def cache_key(profile: EmergencyProfile, seed: int) -> str:
    return cache.key("flows", seed, cache.profile_identity(profile))


def cache_path(profile: EmergencyProfile, seed: int) -> Path:
    return cache.path("flows", cache_key(profile, seed))


# ----------------------------------------------------------------------------
# Hosts and ports of the instances


def edge_hosts(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    """First, middle and last usable address of a prefix (deduplicated, in that order).

    IPv4 excludes the network and broadcast addresses except on /31 and /32
    (RFC 3021); IPv6 excludes the Subnet-Router anycast address (RFC 4291 2.6.1).
    """
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4 and net.prefixlen <= 30:
        first, last = first + 1, last - 1
    elif net.version == 6 and net.prefixlen <= 126:
        first += 1
    out: list[str] = []
    for value in (first, first + (last - first) // 2, last):
        text = str(ipaddress.ip_address(value) if net.version == 4 else ipaddress.IPv6Address(value))
        if text not in out:
            out.append(text)
    return out


def edge_ports(port_range: tuple[int, int]) -> list[int]:
    """Low, middle and high RTP port of a range: even, with RTP + 1 (RTCP) inside when possible."""
    lo, hi = port_range
    low = lo + (lo & 1)
    high = hi - 1 if hi & 1 else hi - 2
    if high < low:  # a range too narrow for an even/odd pair: use its start
        return [lo]
    middle = (low + (high - low) // 2) & ~1
    out: list[int] = []
    for p in (low, max(low, middle), high):
        if p not in out:
            out.append(p)
    return out


@dataclass(frozen=True)
class Instance:
    """Who talks to whom in one flow instance (RTP ports even; RTCP is RTP + 1)."""

    index: int
    peer: str
    psap: str
    peer_rtp: int
    psap_rtp: int


def plan_instances(profile: EmergencyProfile, family: int) -> list[Instance]:
    """The instances of a flow for one family: every edge host of every prefix on both
    sides, and every edge RTP port on both sides, each used at least once."""
    peers = _unique(h for net in profile.networks("peers", family) for h in edge_hosts(net))
    psaps = _unique(h for net in profile.networks("psap", family) for h in edge_hosts(net))
    peer_ports, psap_ports = edge_ports(profile.rtp_peers), edge_ports(profile.rtp_psap)
    count = max(len(peers), len(psaps), len(peer_ports), len(psap_ports), INSTANCES_PER_PREFIX)
    # Rotate the PSAP side against the peer side: the first peer host meets
    # the last PSAP host, low peer ports meet high PSAP ports, and so on.
    return [Instance(i, peers[i % len(peers)], psaps[(i + len(psaps) - 1) % len(psaps)],
                     peer_ports[i % len(peer_ports)],
                     psap_ports[(i + len(psap_ports) - 1) % len(psap_ports)])
            for i in range(count)]


def _unique(items) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


# ----------------------------------------------------------------------------
# Writing one flow


class FlowWriter:
    """Collects the steps of one CallFlow: timestamps, phases, directions, interfaces."""

    gap = 0.0002   # between packets of one burst (segments, fragments, the ACK after them)

    def __init__(self, profile: EmergencyProfile):
        peers_if, psap_if = profile.interfaces["peers"], profile.interfaces["psap"]
        if profile.firewall == "forward":
            self.ifaces = {"in": (peers_if, psap_if), "out": (psap_if, peers_if)}
        else:
            self.ifaces = {"in": (peers_if, None), "out": (None, peers_if)}
        self.steps: list[tuple[float, int, FlowStep]] = []

    def put(self, wires: list[Wired], at: float, phase: str | None, a_is_peer: bool) -> float:
        """Record ``wires`` from time ``at`` on, ``gap`` apart; returns the time of the last.

        ``phase`` None tags each packet by its direction (media-in / media-out).
        """
        t = at
        for w in wires:
            direction = "in" if w.from_a == a_is_peer else "out"
            self.add(w.data, t, w.label, phase or f"media-{direction}", direction)
            t += self.gap
        return t - self.gap

    def add(self, data: bytes, ts: float, label: str, phase: str, direction: str) -> None:
        record = self.record(data, direction, ts)
        self.steps.append((record.ts, len(self.steps), FlowStep(record, label, phase, direction)))

    def record(self, data: bytes, direction: str, ts: float = 0.0) -> PacketRecord:
        iface_in, iface_out = self.ifaces[direction]
        return parse_ip(data, round(ts, 6), iface_in, iface_out)

    def add_like(self, like: PacketRecord, data: bytes, ts: float, label: str, phase: str,
                 direction: str) -> None:
        """A packet whose headers are those of ``like`` (same stream, payload fields patched):
        its record is ``like``'s with the new bytes and time, what parse_ip would give."""
        ts = round(ts, 6)
        record = PacketRecord._make((ts, *like[1:12], data, *like[13:]))
        self.steps.append((ts, len(self.steps), FlowStep(record, label, phase, direction)))

    def finish(self) -> tuple[FlowStep, ...]:
        return tuple(step for _, _, step in sorted(self.steps, key=lambda s: (s[0], s[1])))


def _seeded(seed: int, *parts: object) -> random.Random:
    # A str seed goes through SHA-512 (random.seed version 2): the same bytes
    # on every run and platform, whatever PYTHONHASHSEED says.
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def _sip_port(profile: EmergencyProfile, transport: str) -> int:
    return profile.sip[transport]


def _ephemeral(rng) -> int:
    return rng.randint(*EPHEMERAL)


class _Call:
    """Shared machinery of one flow instance: SIP channel, dialog, media."""

    def __init__(self, profile: EmergencyProfile, transport: str, inst: Instance, rng, writer: FlowWriter,
                 *, peer_calls: bool):
        from fwtest.traffic import builders

        self.b = builders
        self.profile, self.transport, self.inst, self.rng, self.w = profile, transport, inst, rng, writer
        self.peer_calls = peer_calls
        port = _sip_port(profile, transport)
        caller, callee = (inst.peer, inst.psap) if peer_calls else (inst.psap, inst.peer)
        # UDP SIP goes from port to port; a TCP/TLS caller connects from an
        # ephemeral port to the callee's listening port (RFC 3261 18.1.1).
        caller_src = port if transport == "udp" else _ephemeral(rng)
        self.channel: UdpChannel | TcpConnection = builders.connection(transport, caller, caller_src,
                                                                       callee, port, rng)
        self.a_is_peer = peer_calls

    def dialog(self, request_uri: str) -> SipDialog:
        port = _sip_port(self.profile, self.transport)
        caller, callee = (self.inst.peer, self.inst.psap) if self.peer_calls else (self.inst.psap, self.inst.peer)
        d = self.b.SipDialog(self.transport, caller, port, callee, port, request_uri, rng=self.rng)
        if not self.peer_calls:
            d.caller_user, d.callee_user = "psap", "+15085550100"
            d.caller_domain, d.callee_domain = self.b.PSAP_DOMAIN, self.b.PEER_DOMAIN
        return d

    def open(self, at: float, phase: str) -> float:
        """Open the channel (TCP/TLS handshakes); returns when the first message can go."""
        if isinstance(self.channel, self.b.UdpChannel):
            return at
        return self.w.put(self.channel.open(), at, phase, self.a_is_peer) + 0.001

    def sip(self, from_caller: bool, message, at: float, phase: str) -> float:
        wires = self.b.send_sip(self.channel, from_caller, message, self.b.sip_label(message))
        return self.w.put(wires, at, phase, self.a_is_peer)

    def close(self, at: float, phase: str, by_caller: bool = True) -> float:
        if isinstance(self.channel, self.b.UdpChannel):
            return at
        return self.w.put(self.channel.close(by_caller), at, phase, self.a_is_peer)

    def media(self, start: float, seconds: float, ssrc_in: int, ssrc_out: int) -> None:
        """RTP and RTCP both ways, symmetric (RFC 4961): each side sends from the port it receives on."""
        inst = self.inst
        for direction, src, sport, dst, dport, ssrc, offset in (
                ("in", inst.peer, inst.peer_rtp, inst.psap, inst.psap_rtp, ssrc_in, 0.0),
                ("out", inst.psap, inst.psap_rtp, inst.peer, inst.peer_rtp, ssrc_out, PTIME / 2)):
            self._rtp_stream(direction, src, sport, dst, dport, ssrc, start + offset, seconds)

    def _rtp_stream(self, direction: str, src: str, sport: int, dst: str, dport: int, ssrc: int,
                    start: float, seconds: float) -> None:
        # Scapy takes about 0.4 ms to build a packet, and a three-minute call
        # is hundreds of media packets per direction that differ only in
        # sequence number, timestamp (for RTCP, the sender's counters) and
        # the UDP checksum. So Scapy builds one packet per stream and the
        # others are its bytes patched, checksum recomputed (``_rawip``; the
        # tests compare them with what Scapy builds for the same fields).
        phase = f"media-{direction}"
        template = self.b.rtp_template(src, sport, dst, dport)
        seq0, ts0 = self.rng.getrandbits(16), self.rng.getrandbits(32)
        times = [start + i * PTIME for i in range(BURST_PACKETS)]
        t = start + BURST_PACKETS * PTIME - PTIME + 1.0
        while t <= start + seconds:
            times.append(t)
            t += 1.0
        rtp = UdpFieldPatcher(template, 0, "!BBHII")
        first = self.w.record(template, direction)
        for n, ts in enumerate(times):
            # Sequence number and timestamp are those of the full 50-packet/s
            # stream this one samples; the first packet of the talkspurt
            # carries the marker bit (RFC 3551 4.1). Payload type 0: PCMU.
            frames = round((ts - start) / PTIME)
            data = rtp.packet(0x80, 0x80 if n == 0 else 0x00, (seq0 + frames) & 0xFFFF,
                              (ts0 + frames * 160) & 0xFFFFFFFF, ssrc)
            self.w.add_like(first, data, ts, "RTP", phase, direction)
        rtcp_template = self.b.rtcp_template(template, ssrc, f"{ssrc:08x}@{self.b.hostport(src)}")
        rtcp = UdpFieldPatcher(rtcp_template, 8, "!QIII")
        first = self.w.record(rtcp_template, direction)
        # RFC 3550 6.2: the first report may go after half the minimum interval.
        t = start + RTCP_INTERVAL / 2
        while t <= start + seconds:
            frames = round((t - start) / PTIME)
            wallclock = WALLCLOCK + NTP_EPOCH_OFFSET + t
            ntp = (int(wallclock) << 32) | int((wallclock % 1) * (1 << 32))
            data = rtcp.packet(ntp, (ts0 + frames * 160) & 0xFFFFFFFF, frames, frames * 160)
            self.w.add_like(first, data, t, "RTCP", phase, direction)
            t += RTCP_INTERVAL


def _invite_exchange(call: _Call, dialog: SipDialog, invite, answer_sdp: bytes, at: float) -> float:
    """INVITE, 100 Trying, 180 Ringing, 200 OK (SDP answer), ACK: the dialog set up."""
    t = call.sip(True, invite, at, "setup")
    t = call.sip(False, dialog.response(invite, 100, "Trying"), t + 0.02, "setup")
    t = call.sip(False, dialog.response(invite, 180, "Ringing"), t + 0.5, "setup")
    t = call.sip(False, dialog.response(invite, 200, "OK", body=answer_sdp,
                                        content_type="application/sdp"), t + 2.0, "setup")
    return call.sip(True, dialog.ack(), t + 0.05, "setup")


def _bye_exchange(call: _Call, dialog: SipDialog, by_caller: bool, at: float) -> float:
    bye = dialog.bye(by_caller)
    t = call.sip(by_caller, bye, at, "teardown")
    return call.sip(not by_caller, dialog.response(bye, 200, "OK"), t + 0.03, "teardown")


def _voice_call(profile: EmergencyProfile, transport: str, inst: Instance, rng, *, emergency: bool,
                bye_by_peer: bool, start: float = 0.0, seconds: float | None = None,
                writer: FlowWriter | None = None) -> FlowWriter:
    """An emergency call (peer -> PSAP) or a callback (PSAP -> peer), media both ways for
    ``seconds`` (default: the profile's call_seconds), BYE."""
    seconds = profile.call_seconds if seconds is None else seconds
    w = writer or FlowWriter(profile)
    call = _Call(profile, transport, inst, rng, w, peer_calls=emergency)
    b = call.b
    caller_rtp, callee_rtp = (inst.peer_rtp, inst.psap_rtp) if emergency else (inst.psap_rtp, inst.peer_rtp)
    caller, callee = (inst.peer, inst.psap) if emergency else (inst.psap, inst.peer)
    port = _sip_port(profile, transport)
    if emergency:
        dialog = call.dialog("urn:service:sos")
        offer = b.emergency_sdp(caller, caller_rtp, rng.randint(1, 2 ** 31))
        invite = dialog.emergency_invite(offer, b.pidf_lo(f"pres:{dialog.caller_user}@{b.PEER_DOMAIN}"))
    else:
        scheme = "sips" if transport == "tls" else "sip"
        dialog = call.dialog(f"{scheme}:+15085550100@{b.hostport(callee, port)};user=phone")
        invite = dialog.invite(b.emergency_sdp(caller, caller_rtp, rng.randint(1, 2 ** 31)))
    answer = b.emergency_sdp(callee, callee_rtp, rng.randint(1, 2 ** 31))
    t = call.open(start, "setup")
    t = _invite_exchange(call, dialog, invite, answer, t)
    media_start = t + 0.02
    call.media(media_start, seconds, rng.getrandbits(32), rng.getrandbits(32))
    by_caller = bye_by_peer == emergency
    t = _bye_exchange(call, dialog, by_caller, media_start + seconds + 0.05)
    call.close(t + 0.05, "teardown", by_caller)
    return w


def _options_keepalive(profile: EmergencyProfile, transport: str, inst: Instance, rng) -> FlowWriter:
    """OPTIONS both ways and their 200s, every 30 s, as SBCs and PSAPs ping each other."""
    w = FlowWriter(profile)
    from_peer = _Call(profile, transport, inst, rng, w, peer_calls=True)
    from_psap = _Call(profile, transport, inst, rng, w, peer_calls=False)
    b = from_peer.b
    port = _sip_port(profile, transport)
    scheme = "sips" if transport == "tls" else "sip"
    pings = (
        (from_peer, from_peer.dialog(f"{scheme}:{b.hostport(inst.psap, port)}"), 0.0),
        (from_psap, from_psap.dialog(f"{scheme}:{b.hostport(inst.peer, port)}"), 0.5),
    )
    ready = [call.open(offset, "keepalive") for call, _, offset in pings]
    for round_no in range(OPTIONS_ROUNDS):
        for n, (call, dialog, offset) in enumerate(pings):
            at = max(round_no * OPTIONS_INTERVAL + offset, ready[n])
            options = dialog.options()
            t = call.sip(True, options, at, "keepalive")
            ready[n] = call.sip(False, dialog.response(options, 200, "OK"), t + 0.01, "keepalive") + 0.001
    end = (OPTIONS_ROUNDS - 1) * OPTIONS_INTERVAL + 1.0
    for call, _, offset in pings:
        call.close(end + offset, "keepalive")
    return w


def _text(profile: EmergencyProfile, transport: str, inst: Instance, rng) -> FlowWriter:
    """Text to 911: a SIP MESSAGE, then an MSRP session (RFC 4975) set up by INVITE."""
    w = FlowWriter(profile)
    call = _Call(profile, transport, inst, rng, w, peer_calls=True)
    b = call.b
    t = call.open(0.0, "message")
    pager = call.dialog("urn:service:sos")
    message = pager.message("Help, I cannot speak. Gunshots at 1 Tremont Street.")
    t = call.sip(True, message, t, "message")
    t = call.sip(False, pager.response(message, 200, "OK"), t + 0.02, "message")

    dialog = call.dialog("urn:service:sos")
    peer_msrp_port = _ephemeral(rng)
    peer_path = f"msrp://{b.hostport(inst.peer, peer_msrp_port)}/{b._hex(rng, 8)};tcp"
    psap_path = f"msrp://{b.hostport(inst.psap, profile.msrp)}/{b._hex(rng, 8)};tcp"
    # RFC 4975 5.4 / RFC 6135: the offerer (the caller's side) opens the
    # TCP connection to the answerer's MSRP port.
    offer = b.build_sdp(inst.peer, msrp_port=peer_msrp_port, msrp_path=peer_path, msrp_setup="active",
                        session_id=rng.randint(1, 2 ** 31))
    answer = b.build_sdp(inst.psap, msrp_port=profile.msrp, msrp_path=psap_path, msrp_setup="passive",
                         session_id=rng.randint(1, 2 ** 31))
    invite = dialog.invite(offer)
    t = call.sip(True, invite, t + 1.0, "setup")
    t = call.sip(False, dialog.response(invite, 100, "Trying"), t + 0.02, "setup")
    t = call.sip(False, dialog.response(invite, 200, "OK", body=answer, content_type="application/sdp"),
                 t + 0.5, "setup")
    t = call.sip(True, dialog.ack(), t + 0.05, "setup")

    msrp = b.TcpConnection(inst.peer, peer_msrp_port, inst.psap, profile.msrp, rng)
    t = w.put(msrp.open(), t + 0.05, None, True)
    lines = (("in", "I am hiding in the closet. Please send help."),
             ("out", "911, help is on the way. Are you safe where you are?"),
             ("in", "Yes. The door is locked."),
             ("out", "Stay on the line with me."))
    for n, (direction, text) in enumerate(lines):
        from_peer = direction == "in"
        to_path, from_path = (psap_path, peer_path) if from_peer else (peer_path, psap_path)
        wires = b.msrp_exchange(msrp, from_peer, to_path=to_path, from_path=from_path, text=text, rng=rng)
        t = w.put(wires, t + (2.0 if n else 0.05), None, True)
    t = _bye_exchange(call, dialog, True, t + 2.0)
    t = w.put(msrp.close(True), t + 0.05, "teardown", True)
    call.close(t + 0.05, "teardown")
    return w


# ----------------------------------------------------------------------------
# The profile's flows


def _instance_text(inst: Instance, *, peer_calls: bool, transport: str, extra: str = "") -> str:
    from fwtest.traffic.builders import hostport

    a, b = (inst.peer, inst.psap) if peer_calls else (inst.psap, inst.peer)
    ra, rb = (inst.peer_rtp, inst.psap_rtp) if peer_calls else (inst.psap_rtp, inst.peer_rtp)
    return f"{hostport(a)} -> {hostport(b)}, rtp {ra}/{rb}, {transport}{extra}"


def flow_instance(profile: EmergencyProfile, flow: str, transport: str, family: int, inst: Instance,
                  rng: random.Random, *, seconds: float | None = None, bye_by_peer: bool | None = None
                  ) -> CallFlow:
    """One instance of a profile flow: ``inst``'s hosts and media ports, ``rng`` for the
    rest (Call-IDs, tags, ephemeral ports). A voice call lasts ``seconds`` (default: the
    profile's call_seconds) and is hung up by the peer side when ``bye_by_peer``
    (default: every other instance, so both sides send BYE across the instances)."""
    extra = ""
    if flow in ("emergency-call", "callback"):
        emergency = flow == "emergency-call"
        if bye_by_peer is None:
            bye_by_peer = (inst.index % 2 == 0) == emergency
        writer = _voice_call(profile, transport, inst, rng, emergency=emergency, bye_by_peer=bye_by_peer,
                             seconds=seconds)
        length = "" if seconds is None else f", {seconds:g} s"
        extra = f"{length}, BYE from {'peer' if bye_by_peer else 'psap'}"
    elif flow == "options-keepalive":
        writer = _options_keepalive(profile, transport, inst, rng)
    elif flow == "text":
        writer = _text(profile, transport, inst, rng)
    else:
        raise ValueError(f"no such profile flow: {flow!r}")
    text = _instance_text(inst, peer_calls=flow != "callback", transport=transport, extra=extra)
    return CallFlow(flow, transport, family, text, writer.finish())


def _synthesize(profile: EmergencyProfile, seed: int) -> list[CallFlow]:
    flows = [flow_instance(profile, flow, transport, family, inst,
                           _seeded(seed, flow, transport, family, inst.index))
             for flow in profile.flows for transport in profile.sip for family in profile.families
             for inst in plan_instances(profile, family)]
    if profile.surge is not None:
        flows.extend(_surge(profile, seed))
    return flows


def _surge(profile: EmergencyProfile, seed: int) -> list[CallFlow]:
    """``surge.calls`` emergency calls from distinct peer hosts on one shared timeline."""
    surge = profile.surge
    assert surge is not None
    transport = "udp" if "udp" in profile.sip else next(iter(profile.sip))
    family = profile.families[0]
    peer_nets = profile.networks("peers", family)
    psap_hosts = _unique(h for net in profile.networks("psap", family) for h in edge_hosts(net))
    lo_peer, hi_peer = profile.rtp_peers
    lo_psap, hi_psap = profile.rtp_psap
    flows = []
    for i in range(surge.calls):
        net = peer_nets[i % len(peer_nets)]
        first = edge_hosts(net)[0]
        usable = int(ipaddress.ip_address(edge_hosts(net)[-1])) - int(ipaddress.ip_address(first)) + 1
        peer = str(ipaddress.ip_address(int(ipaddress.ip_address(first)) + (i // len(peer_nets)) % usable))
        inst = Instance(i, peer, psap_hosts[i % len(psap_hosts)],
                        _nth_even(lo_peer, hi_peer, i), _nth_even(lo_psap, hi_psap, i))
        rng = _seeded(seed, "surge", i)
        start = round(i * surge.seconds / surge.calls, 6)
        writer = FlowWriter(profile)
        # Every surge call stays up until SURGE_HOLD seconds after the last
        # set-up, so all of them are on the line at once (their media meets
        # the same limits); long calls are the emergency-call flows' job.
        seconds = min(profile.call_seconds, surge.seconds - start + SURGE_HOLD)
        _voice_call(profile, transport, inst, rng, emergency=True, bye_by_peer=i % 2 == 0,
                    start=start, seconds=seconds, writer=writer)
        text = _instance_text(inst, peer_calls=True, transport=transport, extra=f", set-up at {start:g} s")
        flows.append(CallFlow("surge", transport, family, text, writer.finish()))
    return flows


def _nth_even(lo: int, hi: int, n: int) -> int:
    """The n-th even port of a range (wrapping), so that concurrent calls use distinct media ports."""
    low = lo + (lo & 1)
    high = hi - 1 if hi & 1 else hi - 2
    if high < low:
        return lo
    return low + (2 * n) % (high - low + 2)
