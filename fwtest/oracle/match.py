"""Telling which sent packet came out of the firewall, and which one it refused.

The kernel changes what it forwards in a few ways the matcher must see
through: the TTL / hop limit drops by one (and the IPv4 header checksum with
it), and when conntrack is on it reassembles fragments before the rules and
fragments the datagram again on the way out, not always at the same
boundaries (``ip_do_fragment`` cuts at the largest fragment received). So a
frame is matched in two ways: byte for byte with TTL and checksum masked
(every packet, and every fragment a stateless firewall forwards as it came),
and as a datagram (addresses, protocol and the reassembled transport bytes)
once all its fragments are in.

A refusal is seen coming back towards the sender: an ICMP destination
unreachable (ICMPv6 type 1) quoting the packet, or a TCP RST for its
connection, the two answers of REJECT.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from fwtest.traffic.record import TCP_RST, MalformedPacket, PacketRecord, parse_ip

_IPV6_EXT = frozenset({0, 43, 60, 51, 135, 139, 140})
ICMP, ICMPV6, TCP = 1, 58, 6

# (family, src, dst, frag id) of one fragmented datagram.
FragKey = tuple[int, int, int, int]
# (family, src, dst, protocol, transport bytes): what a datagram carries, however cut.
Form = tuple[int, int, int, int, bytes]


def normalized(ip: bytes) -> bytes:
    """The packet with what forwarding changes masked: TTL / hop limit and the IPv4 header checksum."""
    b = bytearray(ip)
    if b and b[0] >> 4 == 4 and len(b) >= 20:
        total = struct.unpack_from("!H", b, 2)[0]
        del b[total:]
        b[8] = 0
        b[10:12] = b"\0\0"
    elif b and b[0] >> 4 == 6 and len(b) >= 40:
        del b[40 + struct.unpack_from("!H", b, 4)[0]:]
        b[7] = 0
    return bytes(b)


@dataclass(frozen=True)
class Fragment:
    key: FragKey
    proto: int          # the protocol the fragments carry (IPv4 protocol, IPv6 fragment next header)
    offset: int         # bytes
    more: bool
    chunk: bytes        # fragment data


def fragment_of(ip: bytes) -> Fragment | None:
    """The fragment fields of an IPv4/IPv6 packet, or None when it is not a fragment."""
    version = ip[0] >> 4
    if version == 4:
        ihl = (ip[0] & 0x0F) * 4
        total, ident, field_, proto = struct.unpack_from("!2xHHH xB", ip, 0)
        offset, more = (field_ & 0x1FFF) * 8, bool(field_ & 0x2000)
        if not offset and not more:
            return None
        src, dst = struct.unpack_from("!II", ip, 12)
        return Fragment((4, src, dst, ident), proto, offset, more, bytes(ip[ihl:total]))
    if version == 6:
        end = 40 + struct.unpack_from("!H", ip, 4)[0]
        nh, pos = ip[6], 40
        while nh in _IPV6_EXT and pos + 8 <= end:
            nh, pos = ip[pos], pos + ((ip[pos + 1] + 2) * 4 if nh == 51 else (ip[pos + 1] + 1) * 8)
        if nh != 44 or pos + 8 > end:
            return None
        inner, off_field, ident = struct.unpack_from("!BxHI", ip, pos)
        src = int.from_bytes(ip[8:24], "big")
        dst = int.from_bytes(ip[24:40], "big")
        return Fragment((6, src, dst, ident), inner, off_field & 0xFFF8, bool(off_field & 1),
                        bytes(ip[pos + 8:end]))
    return None


@dataclass
class Reassembly:
    """Fragments of one datagram as they arrive; ``form`` once they cover it."""

    key: FragKey
    proto: int = -1
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None
    raw: list[tuple[bytes, bool]] = field(default_factory=list)   # (fragment, matched by itself)

    def add(self, frag: Fragment) -> Form | None:
        self.proto = frag.proto
        self.pieces[frag.offset] = frag.chunk
        if not frag.more:
            self.total = frag.offset + len(frag.chunk)
        if self.total is None:
            return None
        data = bytearray()
        for offset in sorted(self.pieces):
            if offset > len(data):
                return None  # a hole
            chunk = self.pieces[offset]
            data[offset:offset + len(chunk)] = chunk
        if len(data) < self.total:
            return None
        family, src, dst, _ident = self.key
        return (family, src, dst, self.proto, bytes(data[:self.total]))


def form_of(record: PacketRecord) -> Form | None:
    """The form of an unfragmented packet."""
    if record.frag:
        return None
    return (record.family, record.src, record.dst, record.proto, record.data[record.l4_offset:])


@dataclass
class SentPackets:
    """What was sent, indexed for matching what comes out.

    ``out_side[i]`` is the side packet ``i`` leaves the firewall on when
    accepted, ``in_side[i]`` the side it was sent from (refusals come back there).
    """

    records: Sequence[PacketRecord]
    in_side: Sequence[str]
    out_side: Sequence[str]
    by_bytes: dict[bytes, list[int]] = field(default_factory=dict)
    by_form: dict[Form, list[list[int]]] = field(default_factory=dict)
    datagram_of: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        partial: dict[FragKey, tuple[Reassembly, list[int]]] = {}
        for i, rec in enumerate(self.records):
            self.by_bytes.setdefault(normalized(rec.data), []).append(i)
            frag = fragment_of(rec.data)
            if frag is None:
                form = form_of(rec)
                if form is not None:
                    self.by_form.setdefault(form, []).append([i])
                continue
            reasm, members = partial.get(frag.key, (None, None))
            if reasm is None:
                reasm, members = Reassembly(key=frag.key), []
                partial[frag.key] = (reasm, members)
            members.append(i)
            form = reasm.add(frag)
            if form is not None:
                # A datagram the kernel can rebuild; later fragments with the
                # same id start a new one (the kernel frees the queue when done).
                self.by_form.setdefault(form, []).append(list(members))
                for m in members:
                    self.datagram_of[m] = members
                del partial[frag.key]
        # Fragmented datagrams that never completed (their packets' indices):
        # the kernel keeps their fragments queued until ipfrag_time runs out.
        self.incomplete: list[list[int]] = []
        for _key, (_r, members) in partial.items():
            self.incomplete.append(members)
            for m in members:
                self.datagram_of[m] = members


@dataclass
class Outcome:
    accepted: dict[int, str] = field(default_factory=dict)   # index -> how it was seen
    rejected: dict[int, str] = field(default_factory=dict)
    unexplained: list[bytes] = field(default_factory=list)   # frames that match nothing sent


class Matcher:
    """Feed it the frames seen after each step; it marks packets accepted or rejected."""

    def __init__(self, sent: SentPackets, ignore_sources: frozenset[tuple[int, int]]) -> None:
        self.sent = sent
        self.outcome = Outcome()
        self.reassembly: dict[tuple[str, FragKey], Reassembly] = {}
        self.ignore_sources = ignore_sources  # the firewall's own addresses: its ND/MLD chatter

    def frame(self, step: int, side: str, ip: bytes) -> None:
        """A packet (from its IP header on) seen on ``side`` after packets 0..step were sent."""
        try:
            rec = parse_ip(ip)
        except MalformedPacket:
            self.outcome.unexplained.append(ip)
            return
        matched = self._accepted_individually(step, side, ip)
        frag = fragment_of(ip)
        if frag is not None:
            # Every fragment also goes to reassembly: the datagram as a whole
            # explains fragments that were cut differently on the way out.
            r = self.reassembly.setdefault((side, frag.key), Reassembly(key=frag.key))
            r.raw.append((ip, matched))
            form = r.add(frag)
            if form is None:
                return  # wait for the rest; ``finish`` judges what never completes
            del self.reassembly[(side, frag.key)]
            if not self._accepted_as_datagram(step, side, form):
                self.outcome.unexplained += [f for f, ok in r.raw if not ok]
            return
        if matched or self._refusal(step, side, rec):
            return
        form = form_of(rec)
        if form is not None and self._accepted_as_datagram(step, side, form):
            return
        if (rec.family, rec.src) in self.ignore_sources or _is_neighbour_chatter(rec):
            return
        self.outcome.unexplained.append(ip)

    def finish(self) -> Outcome:
        """Fragments that came out but never made a whole datagram, and were not
        each a packet sent, are unexplained."""
        for r in self.reassembly.values():
            self.outcome.unexplained += [f for f, ok in r.raw if not ok]
        self.reassembly.clear()
        return self.outcome

    def _latest(self, candidates: Sequence[int], step: int, side: str, attr: str) -> int | None:
        sides = self.sent.out_side if attr == "out" else self.sent.in_side
        best = None
        for i in candidates:
            if i <= step and sides[i] == side and i not in self.outcome.accepted \
                    and i not in self.outcome.rejected:
                best = i if best is None or i > best else best
        return best

    def _accepted_individually(self, step: int, side: str, ip: bytes) -> bool:
        i = self._latest(self.sent.by_bytes.get(normalized(ip), ()), step, side, "out")
        if i is None:
            return False
        self.outcome.accepted[i] = "as sent"
        return True

    def _accepted_as_datagram(self, step: int, side: str, form: Form) -> bool:
        groups = self.sent.by_form.get(form, ())
        for members in reversed(groups):
            if members[-1] > step or self.sent.out_side[members[-1]] != side:
                continue
            fresh = [m for m in members if m not in self.outcome.rejected]
            if not fresh:
                continue
            if all(m in self.outcome.accepted for m in fresh):
                return True   # its fragments came out as they went in, already counted
            for m in fresh:
                self.outcome.accepted.setdefault(m, "as part of its reassembled datagram")
            return True
        return False

    def _refusal(self, step: int, side: str, rec: PacketRecord) -> bool:
        quoted = _quoted_by_unreachable(rec)
        if quoted is not None:
            how = "ICMP destination unreachable" if rec.family == 4 else "ICMPv6 destination unreachable"
            return self._mark_refused(step, side, how, lambda r: _same_flow(r, quoted))
        if rec.proto == TCP and rec.tcp_flags & TCP_RST and not rec.frag:
            return self._mark_refused(
                step, side, "TCP RST",
                lambda r: (r.proto == TCP and r.family == rec.family and r.src == rec.dst
                           and r.dst == rec.src and r.sport == rec.dport and r.dport == rec.sport
                           and not r.tcp_flags & TCP_RST))
        return False

    def _mark_refused(self, step: int, side: str, how: str, fits) -> bool:
        for i in range(min(step, len(self.sent.records) - 1), -1, -1):
            if self.sent.in_side[i] != side or i in self.outcome.accepted or i in self.outcome.rejected:
                continue
            members = self.sent.datagram_of.get(i, [i])
            if any(fits(self.sent.records[m]) for m in members):
                for m in members:
                    if m <= step and m not in self.outcome.accepted:
                        self.outcome.rejected[m] = how
                return True
        return False


def _quoted_by_unreachable(rec: PacketRecord) -> PacketRecord | None:
    """The packet an ICMP/ICMPv6 destination-unreachable error quotes, parsed."""
    if rec.frag:
        return None
    if rec.family == 4 and rec.proto == ICMP:
        kind = rec.data[rec.l4_offset] if len(rec.data) > rec.l4_offset else -1
        if kind != 3:
            return None
    elif rec.family == 6 and rec.proto == ICMPV6:
        kind = rec.data[rec.l4_offset] if len(rec.data) > rec.l4_offset else -1
        if kind != 1:
            return None
    else:
        return None
    inner = rec.data[rec.l4_offset + 8:]
    try:
        return parse_ip(_padded(inner))
    except (MalformedPacket, struct.error, IndexError):
        return None


def _padded(inner: bytes) -> bytes:
    """A quoted packet is cut short; make its length fields agree with what is there."""
    b = bytearray(inner)
    if b and b[0] >> 4 == 4 and len(b) >= 20:
        struct.pack_into("!H", b, 2, min(len(b), struct.unpack_from("!H", b, 2)[0]))
    elif b and b[0] >> 4 == 6 and len(b) >= 40:
        struct.pack_into("!H", b, 4, min(len(b) - 40, struct.unpack_from("!H", b, 4)[0]))
    return bytes(b)


def _same_flow(sent: PacketRecord, quoted: PacketRecord) -> bool:
    if (sent.family, sent.src, sent.dst, sent.proto) != (quoted.family, quoted.src, quoted.dst, quoted.proto):
        return False
    if sent.has_ports and quoted.has_ports:
        return (sent.sport, sent.dport) == (quoted.sport, quoted.dport)
    return True


def _is_neighbour_chatter(rec: PacketRecord) -> bool:
    """Neighbour discovery and MLD (ICMPv6 130..137, 143): the firewall's own link traffic."""
    if rec.family != 6 or rec.proto != ICMPV6 or rec.frag or len(rec.data) <= rec.l4_offset:
        return False
    return rec.data[rec.l4_offset] in (130, 131, 132, 133, 134, 135, 136, 137, 143)
