"""Call reconstruction: from a capture's packet records to calls and their outcomes.

What a PSAP asks of a capture is not "which packets passed" but "which calls
worked": did the call set up (a 2xx to the INVITE and its ACK), did media
flow both ways, was it torn down (BYE and its 2xx). ``reconstruct`` answers
that from the records alone (what happened in the capture) and, given the
engine's verdicts for the same records, under the candidate ruleset too:
which calls would have failed, and the first packet of each that died, with
its rule.

How the signalling is found:

* SIP over UDP on the SIP ports, or on any port when the payload starts with
  a SIP start line (lab and carrier captures use 5070, 5080, 15060, ...).
  IP fragments are reassembled first (an emergency INVITE with its PIDF-LO
  is often bigger than one MTU).
* SIP over TCP: each direction of a connection is reassembled by sequence
  number and framed into messages by Content-Length (``split_sip_stream``).
  A connection is SIP when one of its ports is a SIP port or its first line
  is a SIP start line (HTTP, LoST and the like are let go after one line).
* TLS on the TLS ports: the payload is opaque, so such a connection is
  reported as a signalling flow (packets each way, handshake, drops), never
  as calls it might carry. (Plain SIP on a TLS port, which a misconfigured
  peer sends, is read as SIP and counted in the stats.)
* Dialogs are grouped by Call-ID. SDP offers and answers (also inside
  multipart bodies next to a PIDF-LO) give each side's media endpoints; UDP
  packets to or from them are the call's RTP/RTCP, TCP packets to or from an
  ``m=message`` endpoint are its MSRP session.
* Call-IDs without an INVITE (OPTIONS keep-alives, MESSAGE, REGISTER, ...)
  are reported as non-INVITE transactions.

Under the rules (``verdicts`` given): a UDP message is delivered when all of
its fragments were accepted; on a path where it was sent several times
(retransmissions), one delivered copy suffices; a message seen on several
legs (a proxy in the capture) must be delivered on each. TCP delivers bytes
in order, so once a data segment of one direction was dropped (or the
handshake was), nothing after it in that direction counts as delivered. A
retransmission that the rules accept after dropping the first copy is not
credited: that can only report a failure that did not happen, never hide
one. A call the rules would not let set up sends no media and no BYE, so
under the rules it has neither, whatever the capture shows after its
set-up. Media packets dropped in a direction that still works (clipped
audio) are listed by ``Call.media_dropped``.

Memory is bounded by the number of calls and live connections, not by the
number of packets: media is counted, not kept.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from fwtest.traffic.record import FIRST_FRAGMENT, PacketRecord
from fwtest.traffic.sdp import sdp_of
from fwtest.traffic.sipmsg import SipMessage, parse_sip, split_sip_stream

if TYPE_CHECKING:   # traffic/ sits before engine/ in the data flow: only the type is needed
    from fwtest.engine.verdict import Verdict

DEFAULT_SIP_PORTS = frozenset({5060})
DEFAULT_TLS_PORTS = frozenset({5061})

TCP_SYN, TCP_FIN, TCP_RST = 0x02, 0x01, 0x04
_SEQ_MASK = 0xFFFFFFFF
_SEQ_HALF = 1 << 31

MAX_STREAM_BUFFER = 1 << 18     # bytes of one direction held without a complete SIP message
MAX_PENDING_SEGMENTS = 256      # out-of-order segments held per direction before a gap is declared
MAX_CONNECTIONS = 65536         # live TCP connections tracked; the oldest is forgotten beyond
MAX_CLOSED_CONNECTIONS = 4096   # closed ones remembered, for their last ACKs and retransmissions
MAX_REGISTRATIONS = 4          # calls remembered per media endpoint (newest wins when ambiguous)
MAX_FRAGMENT_SETS = 4096        # incomplete IP datagrams held; the oldest is given up beyond
FRAGMENT_TIMEOUT = 30.0         # seconds, as Linux's ipfrag_time / nf_conntrack_frag6_timeout

# A SIP start line (RFC 3261 7.1 / 7.2), after optional CRLF keep-alives.
_SIP_START = re.compile(
    rb"[\r\n]{0,8}(?:SIP/2\.0 [1-6]\d\d[ \r\n]|[A-Za-z][A-Za-z0-9.!%*_+`'~-]* [^ \r\n]+ SIP/2\.0\r?\n)")
_TAG = re.compile(r";\s*tag\s*=\s*([^;>\s,]+)", re.IGNORECASE)


def looks_like_sip(payload: bytes) -> bool:
    """True when the bytes start with a SIP request or status line."""
    return _SIP_START.match(payload) is not None


# ----------------------------------------------------------------------------
# What reconstruction reports


@dataclass(frozen=True)
class Drop:
    """A packet the rules did not accept, and what it was carrying."""

    packet: int          # position in the records (0-based), or frame number when numbered
    record: PacketRecord
    verdict: Verdict
    what: str            # "INVITE", "200 OK (INVITE)", "RTP to caller", "TCP handshake", ...

    def describe(self) -> str:
        rule = self.verdict.rule
        where = self.verdict.source
        by = f"rule {rule.id}" if rule is not None else (self.verdict.reason or "policy")
        if where is not None:
            by += f" ({where})"
        return f"packet {self.packet} ({self.what}, {self.record.short()}): {self.verdict.verdict} by {by}"


@dataclass(frozen=True)
class SipEvent:
    """One SIP message of a dialog, as a ladder diagram would draw it."""

    packet: int          # its last packet (the one that completed it)
    ts: float
    label: str           # "INVITE", "180 Ringing (INVITE)", "ACK", ...
    from_caller: bool
    transport: str       # udp | tcp
    src: str             # "198.51.100.7:5060"
    dst: str
    cseq: int            # CSeq number (-1 when the message has none)
    method: str          # CSeq method: the transaction the message belongs to
    delivered: bool | None   # under the rules; None without verdicts


@dataclass
class MediaStream:
    """One m= line of a call's SDP and what flowed on it."""

    media: str                         # audio, video, message, ...
    proto: str                         # RTP/AVP, TCP/MSRP, ...
    caller_endpoints: list[str] = field(default_factory=list)   # where the caller receives ("addr:port")
    callee_endpoints: list[str] = field(default_factory=list)
    to_callee: int = 0                 # media packets seen flowing to the callee (RTP, or MSRP data)
    to_caller: int = 0
    rtcp_to_callee: int = 0
    rtcp_to_caller: int = 0
    delivered_to_callee: int = 0       # of the media packets to the callee, how many the rules accepted
    delivered_to_caller: int = 0

    @property
    def is_msrp(self) -> bool:
        return "MSRP" in self.proto.upper()


@dataclass(frozen=True)
class CallOutcome:
    set_up: bool             # a 2xx to an INVITE, and the ACK for it
    media_to_callee: bool    # RTP (or MSRP data) reached the callee's SDP endpoint
    media_to_caller: bool
    torn_down: bool          # a BYE and a 2xx for it

    @property
    def media_both_ways(self) -> bool:
        return self.media_to_callee and self.media_to_caller

    def failures_against(self, captured: CallOutcome) -> list[str]:
        """What worked in ``captured`` but not here, in the words of a call taker."""
        lost = []
        if captured.set_up and not self.set_up:
            lost.append("set up")
        if captured.media_to_callee and not self.media_to_callee:
            lost.append("media to callee")
        if captured.media_to_caller and not self.media_to_caller:
            lost.append("media to caller")
        if captured.torn_down and not self.torn_down:
            lost.append("torn down")
        return lost


@dataclass
class Call:
    """An INVITE dialog (all of one Call-ID), with its media and outcome."""

    call_id: str
    transport: str           # of the first INVITE: udp | tcp
    family: int
    caller: str              # "addr:port" the first INVITE came from
    callee: str              # "addr:port" it went to
    request_uri: str
    first_packet: int
    start: float
    end: float
    final_status: int | None             # final response to the first INVITE
    events: list[SipEvent]
    media: list[MediaStream]
    captured: CallOutcome
    under_rules: CallOutcome | None      # None without verdicts
    first_drop: Drop | None              # the first packet of this call the rules did not accept

    @property
    def failed_under_rules(self) -> list[str]:
        """What worked in the capture but would not under the rules ([] when nothing, or no verdicts)."""
        if self.under_rules is None:
            return []
        return self.under_rules.failures_against(self.captured)

    @property
    def msrp(self) -> list[MediaStream]:
        return [m for m in self.media if m.is_msrp]

    @property
    def media_dropped(self) -> list[str]:
        """Media the rules dropped although the direction still works (clipped audio):
        ``["3 of 50 RTP packets to callee"]``; [] without verdicts."""
        if self.under_rules is None:
            return []
        out = []
        for direction in ("callee", "caller"):
            seen = sum(getattr(m, f"to_{direction}") for m in self.media)
            delivered = sum(getattr(m, f"delivered_to_{direction}") for m in self.media)
            if delivered < seen:
                kind = "MSRP" if all(m.is_msrp for m in self.media) else "media"
                out.append(f"{seen - delivered} of {seen} {kind} packets to {direction}")
        return out


@dataclass
class Transaction:
    """A non-INVITE transaction outside any INVITE dialog: OPTIONS, MESSAGE, REGISTER, ..."""

    call_id: str
    method: str
    cseq: int
    transport: str
    family: int
    client: str
    server: str
    request_uri: str
    first_packet: int
    start: float
    final_status: int | None            # first final response seen
    events: list[SipEvent]
    completed_under_rules: bool | None  # request and a final response delivered; None without verdicts
    first_drop: Drop | None

    @property
    def answered(self) -> bool:
        return self.final_status is not None

    @property
    def completed(self) -> bool:
        return self.final_status is not None and 200 <= self.final_status < 300


@dataclass
class SignallingFlow:
    """A TLS connection on a SIP TLS port: signalling whose content the capture does not show."""

    transport: str           # "tls"
    family: int
    client: str
    server: str              # the side on the TLS port
    first_packet: int
    handshake: bool          # the TCP SYN was seen
    packets_to_server: int = 0
    packets_to_client: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0
    delivered_to_server: int = 0
    delivered_to_client: int = 0
    first_drop: Drop | None = None

    @property
    def data_both_ways(self) -> bool:
        return self.bytes_to_server > 0 and self.bytes_to_client > 0


@dataclass
class CallStats:
    packets: int = 0
    sip_messages: int = 0
    sip_over_udp: int = 0
    sip_over_tcp: int = 0
    sip_not_parsed: int = 0          # payloads on SIP ports that are not SIP (and not keep-alives)
    sip_keepalives: int = 0          # CRLF keep-alives (RFC 5626)
    sip_without_call_id: int = 0
    datagrams_reassembled: int = 0
    fragments_given_up: int = 0      # fragments of datagrams that never completed
    tcp_gaps: int = 0                # holes in a captured stream (bytes missing from the capture)
    tcp_resyncs: int = 0             # bytes skipped to find the next SIP start line
    media_packets: int = 0
    msrp_packets: int = 0
    tls_packets: int = 0
    sip_cleartext_on_tls_port: int = 0   # connections on a TLS port that carried plain SIP
    other_packets: int = 0
    sdp_unusable: int = 0            # SDP media without a usable numeric address


@dataclass
class Reconstruction:
    calls: list[Call]
    transactions: list[Transaction]
    tls_flows: list[SignallingFlow]
    stats: CallStats


# ----------------------------------------------------------------------------
# Entry point


def reconstruct(records: Iterable[PacketRecord] | Iterable[tuple[int, PacketRecord]],
                verdicts: Iterable[Verdict] | None = None, *, numbered: bool = False,
                sip_ports: Iterable[int] = DEFAULT_SIP_PORTS,
                tls_ports: Iterable[int] = DEFAULT_TLS_PORTS,
                sniff_sip: bool = True) -> Reconstruction:
    """Calls, non-INVITE transactions and TLS signalling flows of a capture.

    ``records`` in capture order; with ``numbered=True`` they are
    ``(frame_number, record)`` pairs (as ``pcap.read_frames`` yields) and
    reports name frame numbers, else positions (0-based). ``verdicts``, one
    per record in the same order, add the outcome under the rules. With
    ``sniff_sip`` SIP is also recognised on ports outside ``sip_ports`` by
    its start line.
    """
    builder = CallBuilder(frozenset(sip_ports), frozenset(tls_ports), sniff_sip, verdicts is not None)
    items = records if numbered else enumerate(records)
    if verdicts is None:
        for packet, record in items:
            builder.packet(packet, record, None)
    else:
        for (packet, record), verdict in zip(items, verdicts, strict=True):
            builder.packet(packet, record, verdict)
    return builder.finish()


# ----------------------------------------------------------------------------
# Internals


def _endpoint(family: int, addr: int, port: int) -> str:
    if family == 4:
        return f"{ipaddress.IPv4Address(addr)}:{port}"
    return f"[{ipaddress.IPv6Address(addr)}]:{port}"


def _accepted(verdict: Verdict | None) -> bool:
    return verdict is None or verdict.verdict == "accept"


def _label(msg: SipMessage) -> str:
    if msg.method is not None:
        return msg.method
    cseq = msg.cseq
    reason = f" {msg.reason}" if msg.reason else ""
    return f"{msg.status}{reason} ({cseq[1] if cseq else '?'})"


def _party(value: str | None) -> str:
    """Who a From/To header names: its tag, else the header without parameters."""
    if not value:
        return ""
    m = _TAG.search(value)
    if m:
        return "tag:" + m.group(1)
    return value.split(";", 1)[0].strip()


class _Dialog:
    """Everything seen of one Call-ID."""

    def __init__(self, call_id: str, first_packet: int, record: PacketRecord, transport: str,
                 from_caller_party: str) -> None:
        self.call_id = call_id
        self.first_packet = first_packet
        self.start = self.end = record.ts
        self.family = record.family
        self.transport = transport
        # The caller's side of the dialog: the From of the first request, plus the From of
        # every dialog-creating request relayed with a new tag (a B2BUA's second leg keeps
        # the Call-ID but not the tag).
        self.caller_parties = {from_caller_party}
        self.events: list[SipEvent] = []
        self.has_invite = False
        self.invite_info: tuple[str, str, str, str, int] | None = None   # transport, caller, callee, uri, family
        # (cseq number, method) -> per-transaction facts
        self.txns: dict[tuple[int, str], _Txn] = {}
        self.media: list[MediaStream] = []
        self.media_state: list[_MediaState] = []
        self.first_drop: Drop | None = None

    def note_drop(self, drop: Drop | None) -> None:
        if drop is not None and (self.first_drop is None or drop.packet < self.first_drop.packet):
            self.first_drop = drop


class _MediaState:
    """A media stream and the endpoints (family, addr, port) each side announced for it."""

    __slots__ = ("stream", "dialog", "keys")

    def __init__(self, stream: MediaStream, dialog: _Dialog) -> None:
        self.stream = stream
        self.dialog = dialog
        self.keys: dict[str, set[tuple[int, int, int]]] = {"caller": set(), "callee": set()}


def _pick(regs: list[tuple[_MediaState, str, bool]], other_end: tuple[int, int, int]
          ) -> tuple[_MediaState, str, bool]:
    """Of the streams sharing an endpoint, the one whose other side is this packet's other end."""
    for media, side, rtcp in reversed(regs):
        if other_end in media.keys["callee" if side == "caller" else "caller"]:
            return media, side, rtcp
    return regs[-1]


class _Txn:
    """One transaction (CSeq number + method) of a dialog."""

    def __init__(self, method: str, number: int) -> None:
        self.method = method
        self.number = number
        self.request: _Message | None = None
        self.ack: _Message | None = None
        self.final_status: int | None = None
        self.success: _Message | None = None     # the 2xx responses
        self.finals: _Message | None = None      # any final response
        self.info: tuple[str, str, str, str, int, int, float] | None = None
        self.first_drop: Drop | None = None


class _Message:
    """Delivery of one message over the legs it was seen on."""

    __slots__ = ("legs",)

    def __init__(self) -> None:
        self.legs: dict[tuple, bool] = {}

    def seen(self, leg: tuple, delivered: bool) -> None:
        # On a leg, one delivered copy is enough (retransmissions).
        self.legs[leg] = self.legs.get(leg, False) or delivered

    @property
    def delivered(self) -> bool:
        # A message relayed over several legs must cross each of them.
        return all(self.legs.values())


class _Fragments:
    __slots__ = ("pieces", "first", "last_end", "start", "packets")

    def __init__(self, ts: float) -> None:
        self.pieces: dict[int, bytes] = {}
        self.first: PacketRecord | None = None
        self.last_end: int | None = None
        self.start = ts
        self.packets: list[tuple[int, PacketRecord, Verdict | None]] = []


class _Stream:
    """One direction of a TCP connection, reassembled."""

    __slots__ = ("next_seq", "buf", "segments", "pending", "hole", "closed")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.buf = b""
        self.segments: list[tuple[int, int, PacketRecord, Verdict | None]] = []  # (bytes, packet, ...)
        self.pending: dict[int, tuple[bytes, int, PacketRecord, Verdict | None]] = {}
        self.hole: Drop | None = None      # first dropped data segment: nothing after it is delivered
        self.closed = False


class _Connection:
    __slots__ = ("kind", "a", "streams", "handshake_drop", "flow", "first_packet", "msrp", "sniffing")

    def __init__(self, kind: str, a: tuple[int, int], first_packet: int) -> None:
        self.kind = kind                  # sip | tls | msrp | other
        # A connection on no SIP port is read as SIP until its first line shows it is not.
        self.sniffing = False
        self.a = a                        # (addr, port) of the side that sent the first packet seen
        self.streams = (_Stream(), _Stream())
        self.handshake_drop: Drop | None = None
        self.flow: SignallingFlow | None = None
        self.first_packet = first_packet
        self.msrp: tuple[MediaStream, str, _Dialog] | None = None


class CallBuilder:
    """The reconstruction's state: dialogs, media endpoints, reassembly; fed one packet
    at a time (``reconstruct``), or a decided chunk at a time (``fwtest.replay``)."""

    def __init__(self, sip_ports: frozenset[int], tls_ports: frozenset[int], sniff: bool,
                 judged: bool) -> None:
        self.sip_ports = sip_ports
        self.tls_ports = tls_ports
        self.sniff = sniff
        self.judged = judged
        self.stats = CallStats()
        self.dialogs: dict[str, _Dialog] = {}
        # (family, addr, port) -> [(stream, side receiving there: "caller"|"callee", rtcp?), ...]
        self.rtp_endpoints: dict[tuple[int, int, int], list[tuple[_MediaState, str, bool]]] = {}
        self.msrp_endpoints: dict[tuple[int, int, int], tuple[MediaStream, str, _Dialog]] = {}
        self.fragments: dict[tuple, _Fragments] = {}
        self.connections: dict[tuple, _Connection] = {}
        self.closed: dict[tuple, _Connection] = {}
        self.tls_flows: list[SignallingFlow] = []

    # -- dispatch ---------------------------------------------------------------
    def packet(self, packet: int, rec: PacketRecord, verdict: Verdict | None) -> None:
        self.stats.packets += 1
        if rec.frag:
            self.fragment(packet, rec, verdict)
            return
        proto = rec.proto
        if proto == 17:
            if rec.dport in self.sip_ports or rec.sport in self.sip_ports:
                self.udp_sip(rec, rec.payload, [(packet, rec, verdict)])
                return
            if self.media(packet, rec, verdict):
                return
            payload = rec.payload
            if self.sniff and payload and looks_like_sip(payload):
                self.udp_sip(rec, payload, [(packet, rec, verdict)])
                return
            self.stats.other_packets += 1
        elif proto == 6:
            self.tcp(packet, rec, verdict)
        else:
            self.stats.other_packets += 1

    # -- UDP ----------------------------------------------------------------------
    def media_target(self, family: int, src: int, sport: int, dst: int, dport: int
                     ) -> tuple[MediaStream, _Dialog, str, bool] | None:
        """What a packet from ``src``:``sport`` to ``dst``:``dport`` is media of: (stream,
        dialog, the side it goes toward, RTCP?), or None when it is no call's media."""
        there, here = (family, dst, dport), (family, src, sport)
        regs = self.rtp_endpoints.get(there)
        if regs is not None:
            media, side, rtcp = regs[-1] if len(regs) == 1 else _pick(regs, here)
            return media.stream, media.dialog, side, rtcp
        # Symmetric RTP (RFC 4961): from a known endpoint, toward the other side.
        regs = self.rtp_endpoints.get(here)
        if regs is None:
            return None
        media, side, rtcp = regs[-1] if len(regs) == 1 else _pick(regs, there)
        return media.stream, media.dialog, "callee" if side == "caller" else "caller", rtcp

    def media(self, packet: int, rec: PacketRecord, verdict: Verdict | None) -> bool:
        target = self.media_target(rec.family, rec.src, rec.sport, rec.dst, rec.dport)
        if target is None:
            return False
        stream, dialog, toward, rtcp = target
        self.stats.media_packets += 1
        dialog.end = rec.ts
        accepted = _accepted(verdict)
        if toward == "callee":
            if rtcp:
                stream.rtcp_to_callee += 1
            else:
                stream.to_callee += 1
                stream.delivered_to_callee += accepted
        else:
            if rtcp:
                stream.rtcp_to_caller += 1
            else:
                stream.to_caller += 1
                stream.delivered_to_caller += accepted
        if not accepted:
            dialog.note_drop(Drop(packet, rec, verdict, f"{'RTCP' if rtcp else 'RTP'} to {toward}"))
        return True

    def udp_sip(self, rec: PacketRecord, payload: bytes,
                packets: list[tuple[int, PacketRecord, Verdict | None]]) -> None:
        msg = parse_sip(payload)
        if msg is None:
            if not payload.strip(b"\r\n\0 "):
                self.stats.sip_keepalives += 1
            else:
                self.stats.sip_not_parsed += 1
            return
        self.stats.sip_over_udp += 1
        drop = next((Drop(p, r, v, _label(msg)) for p, r, v in packets if not _accepted(v)), None)
        self.sip_message(msg, "udp", rec, packets[-1][0], drop is None, drop)

    def fragment(self, packet: int, rec: PacketRecord, verdict: Verdict | None) -> None:
        if rec.proto not in (6, 17):
            self.stats.other_packets += 1
            return
        key = (rec.family, rec.src, rec.dst, rec.proto, rec.frag_id)
        pending = self.fragments.get(key)
        if pending is None:
            self.expire_fragments(rec.ts)
            pending = self.fragments[key] = _Fragments(rec.ts)
        pending.packets.append((packet, rec, verdict))
        data = rec.data[_fragment_data_start(rec):]
        pending.pieces[rec.frag_offset] = data
        if rec.frag == FIRST_FRAGMENT:
            pending.first = rec
        if not rec.more_fragments:
            pending.last_end = rec.frag_offset + len(data)
        if pending.first is None or pending.last_end is None:
            return
        whole = bytearray()
        for offset in sorted(pending.pieces):
            piece = pending.pieces[offset]
            if offset > len(whole):
                return      # a hole: wait for the missing fragment
            whole[offset:offset + len(piece)] = piece
        if len(whole) < pending.last_end:
            return
        del self.fragments[key]
        self.stats.datagrams_reassembled += 1
        first = pending.first
        transport = bytes(whole[first.l4_offset - _fragment_data_start(first):])
        if rec.proto == 17:
            payload = transport[8:]
            sip_port = first.dport in self.sip_ports or first.sport in self.sip_ports
            if sip_port or (self.sniff and looks_like_sip(payload)):
                self.udp_sip(first, payload, pending.packets)
                return
            for p, r, v in pending.packets:
                if not self.media(p, first._replace(ts=r.ts), v):
                    self.stats.other_packets += 1
            return
        # TCP segments are not expected to be fragmented (PMTU discovery); counted, not read.
        self.stats.other_packets += len(pending.packets)

    def expire_fragments(self, now: float) -> None:
        while self.fragments:
            key, oldest = next(iter(self.fragments.items()))
            if now - oldest.start <= FRAGMENT_TIMEOUT and len(self.fragments) < MAX_FRAGMENT_SETS:
                break
            del self.fragments[key]
            self.stats.fragments_given_up += len(oldest.packets)

    # -- TCP ----------------------------------------------------------------------
    def tcp(self, packet: int, rec: PacketRecord, verdict: Verdict | None) -> None:
        here, there = (rec.src, rec.sport), (rec.dst, rec.dport)
        key = (rec.family,) + ((here, there) if here <= there else (there, here))
        conn = self.connections.get(key)
        flags = rec.tcp_flags
        if conn is None:
            conn = self.closed.get(key)
            if conn is not None and flags & TCP_SYN:
                del self.closed[key]         # the ports are reused: a new connection
                conn = None
        if conn is None:
            if not flags & TCP_SYN and len(rec.data) == rec.payload_offset:
                # A bare ACK/FIN/RST of a connection we never saw open carries nothing to read.
                self.stats.other_packets += 1
                return
            conn = self.new_connection(key, packet, rec)
        direction = 0 if here == conn.a else 1
        accepted = _accepted(verdict)
        if flags & TCP_SYN and not accepted and conn.handshake_drop is None:
            conn.handshake_drop = Drop(packet, rec, verdict, "TCP handshake")
        payload_len = len(rec.data) - rec.payload_offset
        kind = conn.kind
        if (kind == "tls" and payload_len and not (conn.flow.bytes_to_server or conn.flow.bytes_to_client)
              and looks_like_sip(rec.payload)):
            # Plain SIP on the TLS port (a TLS record starts with a byte 20-24, never a
            # letter): a misconfigured peer, but readable signalling, so read it.
            self.tls_flows.remove(conn.flow)
            self.stats.tls_packets -= conn.flow.packets_to_server + conn.flow.packets_to_client
            self.stats.sip_cleartext_on_tls_port += 1
            conn.flow = None
            kind = conn.kind = "sip"
        if kind == "sip":
            self.tcp_sip(conn, direction, packet, rec, verdict)
        elif kind == "tls":
            self.tls_packet(conn, packet, rec, verdict, payload_len)
        elif kind == "msrp":
            self.msrp_packet(conn, packet, rec, verdict, payload_len)
        else:
            self.stats.other_packets += 1
        if flags & TCP_FIN:
            conn.streams[direction].closed = True
        if flags & TCP_RST or (conn.streams[0].closed and conn.streams[1].closed):
            self.close_connection(key, conn)

    def close_connection(self, key: tuple, conn: _Connection) -> None:
        """Keep a closed connection a while (its last ACKs and retransmissions still come), small."""
        if self.connections.pop(key, None) is None:
            return
        for stream in conn.streams:
            stream.buf, stream.segments, stream.pending = b"", [], {}
        self.closed[key] = conn
        if len(self.closed) > MAX_CLOSED_CONNECTIONS:
            del self.closed[next(iter(self.closed))]

    def new_connection(self, key: tuple, packet: int, rec: PacketRecord) -> _Connection:
        if len(self.connections) >= MAX_CONNECTIONS:
            del self.connections[next(iter(self.connections))]
        family = rec.family
        if rec.dport in self.tls_ports or rec.sport in self.tls_ports:
            kind = "tls"
        elif (family, rec.dst, rec.dport) in self.msrp_endpoints or (
                family, rec.src, rec.sport) in self.msrp_endpoints:
            kind = "msrp"
        elif rec.dport in self.sip_ports or rec.sport in self.sip_ports:
            kind = "sip"
        else:
            kind = "sip" if self.sniff else "other"
        conn = self.connections[key] = _Connection(kind, (rec.src, rec.sport), packet)
        conn.sniffing = kind == "sip" and not (rec.dport in self.sip_ports or rec.sport in self.sip_ports)
        if kind == "tls":
            server_is_dst = rec.dport in self.tls_ports
            client = (rec.src, rec.sport) if server_is_dst else (rec.dst, rec.dport)
            server = (rec.dst, rec.dport) if server_is_dst else (rec.src, rec.sport)
            conn.flow = SignallingFlow("tls", family, _endpoint(family, *client), _endpoint(family, *server),
                                       packet, handshake=bool(rec.tcp_flags & TCP_SYN))
            self.tls_flows.append(conn.flow)
        elif kind == "msrp":
            hit = (self.msrp_endpoints.get((family, rec.dst, rec.dport))
                   or self.msrp_endpoints.get((family, rec.src, rec.sport)))
            conn.msrp = hit
        return conn

    def tls_packet(self, conn: _Connection, packet: int, rec: PacketRecord, verdict: Verdict | None,
                   payload_len: int) -> None:
        self.stats.tls_packets += 1
        flow = conn.flow
        accepted = _accepted(verdict)
        to_server = _endpoint(rec.family, rec.dst, rec.dport) == flow.server
        if to_server:
            flow.packets_to_server += 1
            flow.bytes_to_server += payload_len
            flow.delivered_to_server += accepted
        else:
            flow.packets_to_client += 1
            flow.bytes_to_client += payload_len
            flow.delivered_to_client += accepted
        if not accepted and flow.first_drop is None:
            what = "TCP handshake" if rec.tcp_flags & TCP_SYN else (
                f"TLS to {'server' if to_server else 'client'}")
            flow.first_drop = Drop(packet, rec, verdict, what)

    def msrp_packet(self, conn: _Connection, packet: int, rec: PacketRecord, verdict: Verdict | None,
                    payload_len: int) -> None:
        self.stats.msrp_packets += 1
        if conn.msrp is None:
            return
        stream, receiver, dialog = conn.msrp
        dialog.end = rec.ts
        accepted = _accepted(verdict)
        if not accepted:
            dialog.note_drop(conn.handshake_drop or Drop(packet, rec, verdict, "MSRP"))
        if not payload_len:
            return
        # The SDP endpoint is where ``receiver`` listens: packets to it go to that side.
        to_endpoint = self.msrp_endpoints.get((rec.family, rec.dst, rec.dport)) is conn.msrp
        toward = receiver if to_endpoint else ("callee" if receiver == "caller" else "caller")
        delivered = accepted and conn.handshake_drop is None
        if toward == "callee":
            stream.to_callee += 1
            stream.delivered_to_callee += delivered
        else:
            stream.to_caller += 1
            stream.delivered_to_caller += delivered

    def tcp_sip(self, conn: _Connection, direction: int, packet: int, rec: PacketRecord,
                verdict: Verdict | None) -> None:
        stream = conn.streams[direction]
        data = rec.data
        l4 = rec.l4_offset
        if len(data) < l4 + 8:
            return
        seq = int.from_bytes(data[l4 + 4:l4 + 8], "big")
        if rec.tcp_flags & TCP_SYN:
            stream.next_seq = (seq + 1) & _SEQ_MASK
            return
        payload = rec.payload
        if not payload:
            return
        if stream.next_seq is None:
            stream.next_seq = seq          # capture started mid-connection
        ahead = (seq - stream.next_seq) & _SEQ_MASK
        if ahead >= _SEQ_HALF:             # (partly) old data: retransmission or overlap
            behind = _SEQ_MASK + 1 - ahead
            if behind >= len(payload):
                return
            payload = payload[behind:]
            ahead = 0
        if ahead:
            if len(stream.pending) >= MAX_PENDING_SEGMENTS:
                self.tcp_gap(conn, stream, rec)
            else:
                stream.pending[seq] = (payload, packet, rec, verdict)
                return
        self.tcp_append(conn, stream, payload, packet, rec, verdict)
        while stream.pending:
            for pseq in list(stream.pending):
                ahead = (pseq - stream.next_seq) & _SEQ_MASK
                if ahead == 0 or ahead >= _SEQ_HALF:
                    pdata, ppacket, prec, pverdict = stream.pending.pop(pseq)
                    if ahead:
                        behind = _SEQ_MASK + 1 - ahead
                        if behind >= len(pdata):
                            break
                        pdata = pdata[behind:]
                    self.tcp_append(conn, stream, pdata, ppacket, prec, pverdict)
                    break
            else:
                break
        self.tcp_frame(conn, direction, stream, rec)

    def tcp_gap(self, conn: _Connection, stream: _Stream, rec: PacketRecord) -> None:
        """Bytes are missing from the capture: restart at the earliest segment held."""
        self.stats.tcp_gaps += 1
        earliest = min(stream.pending, key=lambda s: (s - stream.next_seq) & _SEQ_MASK)
        stream.next_seq = earliest
        stream.buf = b""
        stream.segments = []

    def tcp_append(self, conn: _Connection, stream: _Stream, payload: bytes, packet: int,
                   rec: PacketRecord, verdict: Verdict | None) -> None:
        stream.next_seq = (stream.next_seq + len(payload)) & _SEQ_MASK
        stream.buf += payload
        stream.segments.append((len(payload), packet, rec, verdict))
        if not _accepted(verdict) and stream.hole is None:
            stream.hole = Drop(packet, rec, verdict, "TCP segment")

    def tcp_frame(self, conn: _Connection, direction: int, stream: _Stream, rec: PacketRecord) -> None:
        head = stream.buf[:2048]
        first_line_read = b"\n" in head.lstrip(b"\r\n") or len(head) == 2048
        if conn.sniffing:
            if not first_line_read:
                return                       # too little to tell yet
            if not looks_like_sip(head):
                conn.kind = "other"          # HTTP (LoST), LDAP, anything but SIP: stop buffering
                for s in conn.streams:
                    s.buf, s.segments, s.pending = b"", [], {}
                return
            conn.sniffing = False
        messages, rest = split_sip_stream(stream.buf)
        if messages:
            last_packet = stream.segments[-1][1]
            drop = conn.handshake_drop or stream.hole
            delivered = drop is None
            for msg in messages:
                self.stats.sip_over_tcp += 1
                if drop is not None and drop.what == "TCP segment":
                    # The hole may lie in an earlier message: say which message it stops.
                    drop = replace(drop, what=f"TCP segment before {_label(msg)}")
                self.sip_message(msg, "tcp", rec, last_packet, delivered, drop)
            stream.buf = rest
            # Keep only the segments that still hold bytes of the rest.
            keep, held = [], 0
            for seg in reversed(stream.segments):
                if held >= len(rest):
                    break
                keep.append(seg)
                held += seg[0]
            stream.segments = keep[::-1]
            return
        if first_line_read and not looks_like_sip(head):
            # Not at a message start (capture began mid-message, or bytes lost): skip to the
            # next line that starts a SIP message.
            match = re.search(rb"\n(?=SIP/2\.0 \d|[A-Z]+ \S+ SIP/2\.0\r?\n)", stream.buf)
            self.stats.tcp_resyncs += 1
            stream.buf = stream.buf[match.end():] if match else b""
            if not stream.buf:
                stream.segments = []
            elif match:
                self.tcp_frame(conn, direction, stream, rec)
            return
        if len(stream.buf) > MAX_STREAM_BUFFER:
            self.stats.tcp_resyncs += 1
            stream.buf = b""
            stream.segments = []

    # -- SIP dialogs ------------------------------------------------------------------
    def sip_message(self, msg: SipMessage, transport: str, rec: PacketRecord, packet: int,
                    delivered: bool, drop: Drop | None) -> None:
        self.stats.sip_messages += 1
        call_id = msg.call_id
        if not call_id:
            self.stats.sip_without_call_id += 1
            return
        cseq = msg.cseq
        is_request = msg.method is not None
        src = _endpoint(rec.family, rec.src, rec.sport)
        dst = _endpoint(rec.family, rec.dst, rec.dport)
        dialog = self.dialogs.get(call_id)
        from_party = _party(msg.header("from"))
        to_value = msg.header("to")
        if dialog is None:
            # The caller is whoever sent the first request we see; with only a response,
            # the From side (the response goes back to it).
            dialog = self.dialogs[call_id] = _Dialog(call_id, packet, rec, transport, from_party)
        elif is_request and to_value is not None and _TAG.search(to_value) is None:
            dialog.caller_parties.add(from_party)       # an initial request: From is the caller side
        dialog.end = rec.ts
        # A request addressed To the caller's side comes from the callee (a BYE from the PSAP,
        # say); a response whose To is the caller's side answers a request of the callee.
        to_caller_side = _party(to_value) in dialog.caller_parties
        from_caller = not to_caller_side if is_request else to_caller_side
        method = cseq[1].upper() if cseq else (msg.method or "?")
        number = cseq[0] if cseq else -1
        txn_key = (number, "INVITE") if method == "ACK" else (number, method)
        txn = dialog.txns.get(txn_key)
        if txn is None:
            txn = dialog.txns[txn_key] = _Txn(txn_key[1], number)
        leg = (rec.family, rec.src, rec.sport, rec.dst, rec.dport, transport)
        if is_request:
            if msg.method.upper() == "ACK":
                txn.ack = txn.ack or _Message()
                txn.ack.seen(leg, delivered)
            else:
                txn.request = txn.request or _Message()
                txn.request.seen(leg, delivered)
                if txn.info is None:
                    txn.info = (transport, src, dst, msg.uri or "", rec.family, packet, rec.ts)
                if msg.method.upper() == "INVITE" and dialog.invite_info is None:
                    dialog.invite_info = (transport, src, dst, msg.uri or "", rec.family)
        elif msg.status is not None and msg.status >= 200:
            if txn.final_status is None:
                txn.final_status = msg.status
            txn.finals = txn.finals or _Message()
            txn.finals.seen(leg, delivered)
            if msg.status < 300:
                txn.success = txn.success or _Message()
                txn.success.seen(leg, delivered)
        if method == "INVITE" or (is_request and msg.method.upper() == "INVITE"):
            dialog.has_invite = True
        dialog.events.append(SipEvent(packet, rec.ts, _label(msg), from_caller, transport, src, dst,
                                      number, method, delivered if self.judged else None))
        dialog.note_drop(drop)
        if drop is not None and (txn.first_drop is None or drop.packet < txn.first_drop.packet):
            txn.first_drop = drop
        self.sdp(msg, dialog, "caller" if from_caller else "callee")

    def sdp(self, msg: SipMessage, dialog: _Dialog, side: str) -> None:
        if not msg.body:
            return
        for index, media in enumerate(sdp_of(msg)):
            while len(dialog.media) <= index:
                dialog.media.append(MediaStream(media.media, media.proto))
                dialog.media_state.append(_MediaState(dialog.media[-1], dialog))
            stream = dialog.media[index]
            if media.port == 0 or not media.address:
                continue
            try:
                address = ipaddress.ip_address(media.address)
            except ValueError:
                self.stats.sdp_unusable += 1     # a host name: we cannot resolve it here
                continue
            if address.is_unspecified:
                continue                          # 0.0.0.0: on hold (RFC 3264 8.4)
            family, addr = address.version, int(address)
            endpoints = stream.caller_endpoints if side == "caller" else stream.callee_endpoints
            text = _endpoint(family, addr, media.port)
            if text not in endpoints:
                endpoints.append(text)
            if "MSRP" in media.proto.upper():
                self.msrp_endpoints[(family, addr, media.port)] = (stream, side, dialog)
                continue
            state = dialog.media_state[index]
            state.keys[side].add((family, addr, media.port))
            self.register_rtp((family, addr, media.port), (state, side, False))
            if media.rtcp_port and media.rtcp_port != media.port:
                state.keys[side].add((family, addr, media.rtcp_port))
                self.register_rtp((family, addr, media.rtcp_port), (state, side, True))

    def register_rtp(self, key: tuple[int, int, int], registration: tuple[_MediaState, str, bool]) -> None:
        regs = self.rtp_endpoints.setdefault(key, [])
        if registration in regs:
            return
        # Ports are reused from call to call, and one endpoint can serve two calls at once
        # (a recorder fed from a PSAP's own media port): keep the latest few, newest last.
        regs.append(registration)
        if len(regs) > MAX_REGISTRATIONS:
            del regs[0]

    # -- results ------------------------------------------------------------------
    def finish(self) -> Reconstruction:
        for pending in self.fragments.values():
            self.stats.fragments_given_up += len(pending.packets)
        calls: list[Call] = []
        transactions: list[Transaction] = []
        for dialog in self.dialogs.values():
            if dialog.has_invite:
                calls.append(self.call(dialog))
            else:
                transactions.extend(self.transactions(dialog))
        calls.sort(key=lambda c: c.first_packet)
        transactions.sort(key=lambda t: (t.first_packet, t.cseq))
        return Reconstruction(calls, transactions, self.tls_flows, self.stats)

    def call(self, dialog: _Dialog) -> Call:
        invites = [t for t in dialog.txns.values() if t.method == "INVITE"]
        byes = [t for t in dialog.txns.values() if t.method == "BYE"]
        set_up = any(t.success is not None and t.ack is not None for t in invites)
        torn_down = any(t.success is not None for t in byes)
        media_to_callee = any(m.to_callee for m in dialog.media)
        media_to_caller = any(m.to_caller for m in dialog.media)
        captured = CallOutcome(set_up, media_to_callee, media_to_caller, torn_down)
        under = None
        if self.judged:
            set_up_under = any(t.request is not None and t.request.delivered and t.success is not None
                               and t.success.delivered and t.ack is not None and t.ack.delivered
                               for t in invites)
            # A call the rules would not let set up sends no media and no BYE, whatever the
            # capture shows (unless the capture never showed the set-up: then media and BYE
            # are judged on their own).
            could_follow = set_up_under or not set_up
            under = CallOutcome(
                set_up_under,
                could_follow and any(m.delivered_to_callee for m in dialog.media),
                could_follow and any(m.delivered_to_caller for m in dialog.media),
                could_follow and any(t.request is not None and t.request.delivered and t.success is not None
                                     and t.success.delivered for t in byes))
        first_invite = min(invites, key=lambda t: t.number)
        transport, caller, callee, uri, family = dialog.invite_info or (
            dialog.transport, "", "", "", dialog.family)
        return Call(dialog.call_id, transport, family, caller, callee, uri, dialog.first_packet,
                    dialog.start, dialog.end, first_invite.final_status, dialog.events, dialog.media,
                    captured, under, dialog.first_drop)

    def transactions(self, dialog: _Dialog) -> list[Transaction]:
        out = []
        for (number, method), txn in dialog.txns.items():
            info = txn.info
            if info is None:      # only responses seen
                transport, client, server, uri, family, first, start = (
                    dialog.transport, "", "", "", dialog.family, dialog.first_packet, dialog.start)
            else:
                transport, client, server, uri, family, first, start = info
            completed = None
            if self.judged:
                completed = bool(txn.request is not None and txn.request.delivered
                                 and txn.finals is not None and txn.finals.delivered)
            events = [e for e in dialog.events if e.cseq == number and e.method == method]
            out.append(Transaction(dialog.call_id, method, number, transport, family, client, server,
                                   uri, first, start, txn.final_status, events, completed, txn.first_drop))
        return out


def _fragment_data_start(rec: PacketRecord) -> int:
    """Where the fragmentable part starts: after the IPv4 header, or after the IPv6 fragment header."""
    data = rec.data
    if rec.family == 4:
        return (data[0] & 0x0F) * 4
    next_header, pos = data[6], 40
    while next_header != 44 and pos + 8 <= len(data):
        length = (data[pos + 1] + 2) * 4 if next_header == 51 else (data[pos + 1] + 1) * 8
        next_header = data[pos]
        pos += length
    return pos + 8
