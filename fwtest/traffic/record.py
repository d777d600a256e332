"""Compact packet records: what the engine, the proof's witnesses and the kernel
oracle exchange. Scapy builds packets; the hot path only ever sees these.

A record is a plain ``NamedTuple`` of ints and one ``bytes`` (the IP packet as
it travels, from the IP header on), parsed once with ``struct``.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

# Fragment classes, as netfilter distinguishes them.
NOT_FRAGMENT, FIRST_FRAGMENT, LATER_FRAGMENT = 0, 1, 2

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# IPv6 extension headers walked to find the transport header (RFC 8200 4.1).
_IPV6_EXT = frozenset({0, 43, 60, 51, 135, 139, 140})
_IPV6_FRAGMENT = 44


class PacketRecord(NamedTuple):
    ts: float                 # seconds (capture or synthetic timeline)
    family: int               # 4 or 6
    src: int                  # address as integer
    dst: int
    proto: int                # transport protocol number (after IPv6 extension headers)
    sport: int                # -1 when the packet has no ports (other protocol, later fragment)
    dport: int
    tcp_flags: int            # 0 unless TCP
    frag: int                 # NOT_FRAGMENT, FIRST_FRAGMENT, LATER_FRAGMENT
    frag_id: int              # IPv4 id / IPv6 fragment identification (0 when not a fragment)
    frag_offset: int          # in bytes
    more_fragments: bool
    data: bytes               # the IP packet from the IP header on
    l4_offset: int            # where the transport header (or fragment data) starts in data
    payload_offset: int       # where the transport payload starts in data (== l4_offset if unknown)
    iface_in: str | None = None
    iface_out: str | None = None

    @property
    def payload(self) -> bytes:
        return self.data[self.payload_offset:]

    @property
    def has_ports(self) -> bool:
        return self.sport >= 0

    def addr(self, which: str) -> str:
        value = self.src if which == "src" else self.dst
        return str(ipaddress.ip_address(value) if self.family == 4
                   else ipaddress.IPv6Address(value))

    def describe(self) -> dict:
        """The JSON report's ``packet`` object."""
        from fwtest.rules.ir import PROTO_NAMES

        out = {"family": self.family, "proto": PROTO_NAMES.get(self.proto, str(self.proto)),
               "src": self.addr("src"), "dst": self.addr("dst")}
        if self.has_ports:
            out["sport"], out["dport"] = self.sport, self.dport
        if self.frag:
            out["fragment"] = "first" if self.frag == FIRST_FRAGMENT else "later"
        return out

    def short(self) -> str:
        """One-line description for tables: ``udp 198.51.100.7:5060 > 203.0.113.10:5060``."""
        d = self.describe()
        fmt = "[{}]:{}" if self.family == 6 else "{}:{}"
        if self.has_ports:
            s, t = fmt.format(d["src"], self.sport), fmt.format(d["dst"], self.dport)
        else:
            s, t = d["src"], d["dst"]
        frag = f" ({d['fragment']} fragment)" if self.frag else ""
        return f"{d['proto']} {s} > {t}{frag}"


class MalformedPacket(ValueError):
    """The bytes are not a well-formed IPv4/IPv6 packet."""


def parse_ip(data: bytes, ts: float = 0.0, iface_in: str | None = None,
             iface_out: str | None = None) -> PacketRecord:
    """Parse an IP packet (from its IP header) into a record. Raises MalformedPacket."""
    if not data:
        raise MalformedPacket("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data, ts, iface_in, iface_out)
    if version == 6:
        return _parse_ipv6(data, ts, iface_in, iface_out)
    raise MalformedPacket(f"IP version {version}")


def _parse_ipv4(data: bytes, ts: float, iface_in: str | None, iface_out: str | None) -> PacketRecord:
    if len(data) < 20:
        raise MalformedPacket("IPv4 header truncated")
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl:
        raise MalformedPacket(f"IPv4 header length {ihl}")
    total, ident, frag_field, proto = struct.unpack_from("!2xHHH xB", data, 0)
    if total < ihl:
        raise MalformedPacket(f"IPv4 total length {total}")
    data = data[:total]  # drop link-layer padding
    src, dst = struct.unpack_from("!II", data, 12)
    offset = (frag_field & 0x1FFF) * 8
    more = bool(frag_field & 0x2000)
    if offset:
        frag = LATER_FRAGMENT
    elif more:
        frag = FIRST_FRAGMENT
    else:
        frag = NOT_FRAGMENT
    return _transport(ts, 4, src, dst, proto, frag, ident if frag else 0, offset, more,
                      data, ihl, iface_in, iface_out)


def _parse_ipv6(data: bytes, ts: float, iface_in: str | None, iface_out: str | None) -> PacketRecord:
    if len(data) < 40:
        raise MalformedPacket("IPv6 header truncated")
    payload_len, next_header = struct.unpack_from("!HB", data, 4)
    data = data[:40 + payload_len]
    src = int.from_bytes(data[8:24], "big")
    dst = int.from_bytes(data[24:40], "big")
    pos = 40
    frag, frag_id, offset, more = NOT_FRAGMENT, 0, 0, False
    while next_header in _IPV6_EXT or next_header == _IPV6_FRAGMENT:
        if len(data) < pos + 8:
            raise MalformedPacket("IPv6 extension header truncated")
        if next_header == _IPV6_FRAGMENT:
            nh, off_field, frag_id = struct.unpack_from("!BxHI", data, pos)
            offset, more = off_field & 0xFFF8, bool(off_field & 1)
            frag = LATER_FRAGMENT if offset else FIRST_FRAGMENT
            pos += 8
            next_header = nh
            if offset:
                break  # later fragments: the rest is fragment data
            continue
        nh, hdr_len = data[pos], data[pos + 1]
        # AH counts its length in 4-octet units, the others in 8-octet units (RFC 4302 2.2).
        pos += (hdr_len + 2) * 4 if next_header == 51 else (hdr_len + 1) * 8
        next_header = nh
    return _transport(ts, 6, src, dst, next_header, frag, frag_id, offset, more,
                      data, pos, iface_in, iface_out)


def _transport(ts: float, family: int, src: int, dst: int, proto: int, frag: int,
               frag_id: int, offset: int, more: bool, data: bytes, l4: int,
               iface_in: str | None, iface_out: str | None) -> PacketRecord:
    sport = dport = -1
    flags = 0
    payload = l4
    if frag != LATER_FRAGMENT:
        if proto in (6, 17, 132, 136) and len(data) >= l4 + 4:
            sport, dport = struct.unpack_from("!HH", data, l4)
            if proto == 17 or proto == 136:
                payload = l4 + 8
            elif proto == 132:
                payload = l4 + 12
        if proto == 6 and len(data) >= l4 + 14:
            flags = data[l4 + 13] & 0x3F
            payload = l4 + (data[l4 + 12] >> 4) * 4
    payload = min(payload, len(data))
    return PacketRecord(ts, family, src, dst, proto, sport, dport, flags, frag, frag_id,
                        offset, more, data, l4, payload, iface_in, iface_out)
