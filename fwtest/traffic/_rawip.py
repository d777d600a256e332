"""Packets derived from a Scapy-built template by patching bytes (no Scapy here).

Scapy takes about 0.4 ms to build one IP packet, and a synthesised profile is
tens of thousands of packets, most of them differing from a sibling only in
a few fields (RTP sequence number and timestamp; TCP seq/ack/flags and the
payload). So Scapy builds one packet per stream or connection direction, and
the others are its bytes with those fields replaced and the lengths and
checksums recomputed here. The tests check that the result is byte for byte
what Scapy builds for the same fields.

Templates never carry IPv4 options or IPv6 extension headers.
"""

from __future__ import annotations

import struct

UDP, TCP = 17, 6


def ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement sum of ``data`` (RFC 1071), in native byte order."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    # RFC 1071 2(B): the sum does not depend on byte order, so summing native
    # 16-bit words (at C speed) and storing the result natively is correct.
    total = sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def l4_offset(packet: bytes | bytearray) -> int:
    return (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40


def finish_ip(packet: bytearray, ident: int | None = None) -> int:
    """Set the IP length fields (and the IPv4 id and header checksum); returns the L4 offset."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        struct.pack_into("!H", packet, 2, len(packet))
        if ident is not None:
            struct.pack_into("!H", packet, 4, ident & 0xFFFF)
        packet[10:12] = b"\x00\x00"
        packet[10:12] = struct.pack("=H", ~ones_complement_sum(packet[:ihl]) & 0xFFFF)
        return ihl
    struct.pack_into("!H", packet, 4, len(packet) - 40)
    return 40


def set_l4_checksum(packet: bytearray, l4: int, proto: int) -> None:
    """Recompute the UDP or TCP checksum in place (RFC 768, RFC 9293 3.1, RFC 8200 8.1)."""
    length = len(packet) - l4
    if packet[0] >> 4 == 4:
        pseudo = bytes(packet[12:20]) + struct.pack("!BBH", 0, proto, length)
    else:
        pseudo = bytes(packet[8:40]) + struct.pack("!IxxxB", length, proto)
    where = l4 + (6 if proto == UDP else 16)
    packet[where:where + 2] = b"\x00\x00"
    total = ones_complement_sum(pseudo) + ones_complement_sum(memoryview(packet)[l4:])
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = ~total & 0xFFFF
    if proto == UDP and checksum == 0:
        checksum = 0xFFFF  # RFC 768: zero means "no checksum", a computed zero is sent as ones
    packet[where:where + 2] = struct.pack("=H", checksum)


def udp_from_template(template: bytes, payload: bytes, ident: int | None = None, *,
                      sport: int | None = None, dport: int | None = None) -> bytes:
    """The template's IP/UDP headers around a new payload (and, if given, new ports)."""
    l4 = l4_offset(template)
    packet = bytearray(template[:l4 + 8]) + payload
    finish_ip(packet, ident)
    if sport is not None:
        struct.pack_into("!H", packet, l4, sport)
    if dport is not None:
        struct.pack_into("!H", packet, l4 + 2, dport)
    struct.pack_into("!H", packet, l4 + 4, 8 + len(payload))
    set_l4_checksum(packet, l4, UDP)
    return bytes(packet)


def patch_udp(template: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """A copy of a UDP packet with ``values`` packed at payload ``offset``, checksum redone."""
    l4 = l4_offset(template)
    packet = bytearray(template)
    struct.pack_into(fmt, packet, l4 + 8 + offset, *values)
    set_l4_checksum(packet, l4, UDP)
    return bytes(packet)


def tcp_from_template(template: bytes, *, seq: int, ack: int, flags: int, window: int,
                      payload: bytes = b"", ident: int | None = None, options: bytes = b"") -> bytes:
    """A TCP segment from an option-less IP/TCP template: new seq/ack/flags/window,
    options (padded with end-of-option-list octets to 32 bits) and payload."""
    l4 = l4_offset(template)
    options += b"\x00" * (-len(options) % 4)
    packet = bytearray(template[:l4 + 20]) + options + payload
    finish_ip(packet, ident)
    struct.pack_into("!IIBBH", packet, l4 + 4, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                     (20 + len(options)) // 4 << 4, flags, window)
    set_l4_checksum(packet, l4, TCP)
    return bytes(packet)


class UdpFieldPatcher:
    """Packets of one UDP stream that differ only in a few payload fields (RTP, RTCP).

    The checksum of everything that stays the same (pseudo-header, headers,
    the rest of the payload) is summed once; each packet then costs the sum
    of its patched bytes only. ``offset`` (into the UDP payload) and the
    field size must be even so that the patched words line up.
    """

    def __init__(self, template: bytes, offset: int, fmt: str):
        self.fields = struct.Struct(fmt)
        l4 = l4_offset(template)
        start = l4 + 8 + offset
        if offset % 2 or self.fields.size % 2:
            raise ValueError("patched fields must start and end on 16-bit boundaries")
        base = bytearray(template)
        base[start:start + self.fields.size] = bytes(self.fields.size)
        set_l4_checksum(base, l4, UDP)
        # The stored checksum is ~sum: undo the complement to get the sum of the rest.
        (stored,) = struct.unpack_from("=H", base, l4 + 6)
        self.rest_sum = ~stored & 0xFFFF
        self.before_checksum = bytes(template[:l4 + 6])
        self.before_fields = bytes(template[l4 + 8:start])
        self.after_fields = bytes(template[start + self.fields.size:])

    def packet(self, *values: int) -> bytes:
        patched = self.fields.pack(*values)
        total = self.rest_sum + ones_complement_sum(patched)
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        checksum = ~total & 0xFFFF or 0xFFFF
        return (self.before_checksum + struct.pack("=H", checksum) + self.before_fields
                + patched + self.after_fields)


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes]:
    """IPv4 fragments of a datagram (RFC 791 3.2): payload cut at multiples of 8 bytes,
    MF on all but the last, DF cleared, the header (and id) copied."""
    ihl = l4_offset(packet)
    payload = packet[ihl:]
    step = (mtu - ihl) // 8 * 8
    out = []
    for offset in range(0, len(payload), step):
        more = offset + step < len(payload)
        fragment = bytearray(packet[:ihl]) + payload[offset:offset + step]
        struct.pack_into("!H", fragment, 6, (0x2000 if more else 0) | offset // 8)
        finish_ip(fragment)
        out.append(bytes(fragment))
    return out


def fragment_ipv6(packet: bytes, mtu: int, ident: int) -> list[bytes]:
    """IPv6 fragments of a packet without extension headers (RFC 8200 4.5): a Fragment
    header after the IPv6 header, fragment data in multiples of 8 bytes."""
    next_header = packet[6]
    payload = packet[40:]
    step = (mtu - 48) // 8 * 8
    out = []
    for offset in range(0, len(payload), step):
        more = offset + step < len(payload)
        fragment = bytearray(packet[:40]) + struct.pack("!BxHI", next_header, offset | more, ident) \
            + payload[offset:offset + step]
        fragment[6] = 44
        finish_ip(fragment)
        out.append(bytes(fragment))
    return out
