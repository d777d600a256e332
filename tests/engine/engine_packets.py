"""Small, exact packet and ruleset builders for the engine tests.

Packets are built byte by byte with struct (no Scapy: fast, and every field
is the one the test means); rulesets with the IR constructors directly.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Iterable, Sequence

from fwtest.rules.ir import (
    DEFAULT_TIMEOUTS,
    Action,
    BaseChain,
    Chain,
    Conntrack,
    Match,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    Source,
    StateMatch,
    addr_match,
)
from fwtest.traffic.record import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, PacketRecord, parse_ip

FILE = "rules.yaml"
SYN, ACK, FIN, RST, PSH = TCP_SYN, TCP_ACK, TCP_FIN, TCP_RST, TCP_PSH

_lines = itertools.count(10)


# ------------------------------------------------------------------ packets

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(w for (w,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 1, offset: int = 0,
         more: bool = False, ttl: int = 64) -> bytes:
    frag = (offset // 8) | (0x2000 if more else 0)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, ttl, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


_CHECKSUM_AT = {6: 16, 17: 6, 58: 2, 1: 2}


def with_checksum(src: str, dst: str, proto: int, segment: bytes) -> bytes:
    """The transport segment with its checksum filled in (pseudo header for TCP, UDP, ICMPv6)."""
    at = _CHECKSUM_AT.get(proto)
    if at is None or len(segment) < at + 2:
        return segment
    seg = bytearray(segment)
    seg[at:at + 2] = b"\0\0"
    if proto == 1:
        pseudo = b""
    elif ":" in src:
        pseudo = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
                  + struct.pack("!IxxxB", len(seg), proto))
    else:
        pseudo = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
                  + struct.pack("!xBH", proto, len(seg)))
    value = _checksum(pseudo + bytes(seg))
    if proto == 17 and value == 0:
        value = 0xFFFF
    seg[at:at + 2] = struct.pack("!H", value)
    return bytes(seg)


def ip(src: str, dst: str, proto: int, payload: bytes, *, checksum: bool = True, **kw: int) -> bytes:
    """An IP packet; the transport checksum is computed unless ``checksum=False``."""
    if checksum:
        payload = with_checksum(src, dst, proto, payload)
    if ":" in src:
        return ipv6(src, dst, proto, payload)
    return ipv4(src, dst, proto, payload, **kw)


def udp_segment(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp_segment(sport: int, dport: int, flags: int, seq: int = 0, ack: int = 0, data: bytes = b"",
                window: int = 65535, options: bytes = b"") -> bytes:
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0) + options + data


def icmp_message(icmp_type: int, code: int = 0, ident: int = 0, seq: int = 0, data: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", icmp_type, code, 0, ident, seq) + data


def rec(data: bytes, ts: float = 0.0, iface_in: str | None = None, iface_out: str | None = None) -> PacketRecord:
    return parse_ip(data, ts, iface_in, iface_out)


def udp(src: str, sport: int, dst: str, dport: int, data: bytes = b"", ts: float = 0.0, **kw) -> PacketRecord:
    return rec(ip(src, dst, 17, udp_segment(sport, dport, data)), ts, **kw)


def tcp(src: str, sport: int, dst: str, dport: int, flags: int, seq: int = 0, ack: int = 0,
        data: bytes = b"", ts: float = 0.0, **kw) -> PacketRecord:
    return rec(ip(src, dst, 6, tcp_segment(sport, dport, flags, seq, ack, data)), ts, **kw)


def icmp(src: str, dst: str, icmp_type: int, code: int = 0, ident: int = 0, data: bytes = b"",
         ts: float = 0.0) -> PacketRecord:
    proto = 58 if ":" in src else 1
    return rec(ip(src, dst, proto, icmp_message(icmp_type, code, ident, 1, data)), ts)


def fragment(packet: bytes, size: int, ident: int = 0x1234) -> list[bytes]:
    """Split an IPv4 or IPv6 packet into fragments carrying ``size`` bytes each (a multiple of 8)."""
    assert size % 8 == 0
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        src, dst = packet[12:16], packet[16:20]
        proto = packet[9]
        body = packet[ihl:]
        out = []
        for at in range(0, len(body), size):
            chunk = body[at:at + size]
            more = at + size < len(body)
            out.append(ipv4(str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst)), proto, chunk,
                            ident=ident, offset=at, more=more))
        return out
    nh = packet[6]
    src, dst = packet[8:24], packet[24:40]
    body = packet[40:]
    out = []
    for at in range(0, len(body), size):
        chunk = body[at:at + size]
        more = at + size < len(body)
        frag_header = struct.pack("!BBHI", nh, 0, at | (1 if more else 0), ident)
        out.append(ipv6(str(ipaddress.IPv6Address(src)), str(ipaddress.IPv6Address(dst)), 44,
                        frag_header + chunk))
    return out


def frag_records(packet: bytes, size: int, ts: float = 0.0, step: float = 0.001,
                 ident: int = 0x1234) -> list[PacketRecord]:
    return [rec(f, ts + i * step) for i, f in enumerate(fragment(packet, size, ident))]


# ------------------------------------------------------------------ SIP

def sip_invite(media_addr: str, port: int, *, call_id: str = "call-1", cseq: int = 1,
               media: str = "audio", proto: str = "RTP/AVP", extra_sdp: str = "",
               uri: str = "urn:service:sos", content_type: str = "application/sdp") -> bytes:
    family = "IP6" if ":" in media_addr else "IP4"
    sdp = (f"v=0\r\no=- 1 1 IN {family} {media_addr}\r\ns=-\r\nc=IN {family} {media_addr}\r\nt=0 0\r\n"
           f"m={media} {port} {proto} 0\r\n{extra_sdp}").encode()
    return sip_message(f"INVITE {uri} SIP/2.0", call_id, f"{cseq} INVITE", sdp, content_type)


def sip_response(code: int, method: str, *, media_addr: str | None = None, port: int = 0,
                 call_id: str = "call-1", cseq: int = 1) -> bytes:
    body = b""
    if media_addr is not None:
        family = "IP6" if ":" in media_addr else "IP4"
        body = (f"v=0\r\no=- 2 2 IN {family} {media_addr}\r\ns=-\r\nc=IN {family} {media_addr}\r\n"
                f"t=0 0\r\nm=audio {port} RTP/AVP 0\r\n").encode()
    reason = {100: "Trying", 180: "Ringing", 200: "OK", 486: "Busy Here"}.get(code, "X")
    return sip_message(f"SIP/2.0 {code} {reason}", call_id, f"{cseq} {method}", body,
                       "application/sdp" if body else None)


def sip_request(method: str, *, call_id: str = "call-1", cseq: int = 2, uri: str = "sip:psap@example.net",
                user_agent: str | None = None) -> bytes:
    extra = {"User-Agent": user_agent} if user_agent else {}
    return sip_message(f"{method} {uri} SIP/2.0", call_id, f"{cseq} {method}", b"", None, extra)


def sip_message(start: str, call_id: str, cseq: str, body: bytes, content_type: str | None,
                extra: dict[str, str] | None = None) -> bytes:
    headers = [start, "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", "From: <sip:a@example.net>;tag=1",
               "To: <sip:b@example.net>", f"Call-ID: {call_id}", f"CSeq: {cseq}", "Max-Forwards: 70"]
    for name, value in (extra or {}).items():
        headers.append(f"{name}: {value}")
    if content_type:
        headers.append(f"Content-Type: {content_type}")
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------ rulesets

def ports(text: str) -> PortMatch:
    ranges = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ranges.append((int(lo), int(hi or lo)))
    return PortMatch(tuple(ranges), text=text)


def proto(name: str) -> ProtoMatch:
    return ProtoMatch(frozenset({{"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}[name]}), text=name)


def state(*names: str, negated: bool = False) -> StateMatch:
    return StateMatch(frozenset(names), negated)


def rule(rule_id: str, action: str | Action = "accept", **match: object) -> Rule:
    """A rule; match keywords are Match fields, with shortcuts: proto/src/dst/sport/dport as text."""
    fields = dict(match)
    if isinstance(fields.get("proto"), str):
        fields["proto"] = proto(fields["proto"])  # type: ignore[arg-type]
    for key in ("src", "dst"):
        if isinstance(fields.get(key), (str, list)):
            fields[key] = addr_match(fields[key])  # type: ignore[arg-type]
    for key in ("sport", "dport"):
        if isinstance(fields.get(key), (str, int)):
            fields[key] = ports(str(fields[key]))
    if isinstance(fields.get("state"), (list, tuple)):
        fields["state"] = state(*fields["state"])  # type: ignore[misc]
    act = action if isinstance(action, Action) else Action(action)
    return Rule(rule_id, Source(FILE, next(_lines)), Match(**fields), act)  # type: ignore[arg-type]


def jump(target: str) -> Action:
    return Action("jump", target)


def goto(target: str) -> Action:
    return Action("goto", target)


def ruleset(rules: Sequence[Rule], *, policy: str = "drop", chains: dict[str, Sequence[Rule]] | None = None,
            conntrack: bool = False, helpers: Iterable[str] = (), timeouts: dict[str, int] | None = None,
            bases: Sequence[tuple[str, str | None, int, str, Sequence[Rule]]] = ()) -> Ruleset:
    """A native-style ruleset: ``rules`` in the base chain "filter" (on the native hook),
    ``chains`` as user chains, ``bases`` as extra base chains (name, hook, priority, policy, rules)."""
    all_chains = {"filter": Chain("filter", tuple(rules), Source(FILE, 1))}
    for name, body in (chains or {}).items():
        all_chains[name] = Chain(name, tuple(body), Source(FILE, 2))
    base_list = [BaseChain("filter", None, 0, policy, None, Source(FILE, 3))]  # type: ignore[arg-type]
    for name, hook, priority, base_policy, body in bases:
        all_chains[name] = Chain(name, tuple(body), Source(FILE, 4))
        base_list.append(BaseChain(name, hook, priority, base_policy, None, Source(FILE, 5)))  # type: ignore[arg-type]
    ct = Conntrack()
    if conntrack:
        merged = dict(DEFAULT_TIMEOUTS)
        merged.update(timeouts or {})
        ct = Conntrack(enabled=True, helpers=frozenset(helpers), timeouts=merged, source=Source(FILE, 6))
    return Ruleset("test", (FILE,), "yaml", all_chains, tuple(base_list), ct)


__all__ = [n for n in dir() if not n.startswith("_")] + ["TCP_ACK", "TCP_FIN", "TCP_PSH", "TCP_RST", "TCP_SYN"]
