"""One packet described on the command line, for ``fwtest explain``.

    udp 198.51.100.7:5060 > 203.0.113.10:5060 sip=INVITE
    tcp [2001:db8:100::7]:40000 > [2001:db8:911::10]:5061 flags=S in=eth0
    udp 198.51.100.7 > 203.0.113.10 fragment=later

Keys after the addresses: ``state`` (new, established, related, invalid,
untracked: the conntrack state the rules see), ``in``/``out`` (interfaces),
``flags`` (TCP flags as letters, ``S``, ``SA``, ``A``, ``FA``, ``R``),
``fragment`` (first or later), ``sip`` (a SIP method: the payload is the
realistic message fwtest's synthesiser sends, an emergency INVITE for INVITE),
``payload`` (literal text).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from fwtest.errors import InputError
from fwtest.rules.ir import CT_STATES, PROTO_NUMBERS
from fwtest.traffic.record import PacketRecord, parse_ip

_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<addr>[^\s:\[\]]+|[0-9a-fA-F:]+))(?::(?P<port>\d+))?$")
_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}


@dataclass(frozen=True)
class PacketSpec:
    record: PacketRecord
    state: str | None         # None: let the caller decide (explain defaults to new)


def parse_packet_spec(text: str, where: str = "PACKET") -> PacketSpec:
    """Parse the description; errors are InputError located at ``where``."""
    words = text.replace("->", ">").split()
    if ">" not in words or words.index(">") != 2 or len(words) < 4:
        raise InputError(where, 0, f"cannot read packet {text!r}: write it as "
                         "'udp 198.51.100.7:5060 > 203.0.113.10:5060 [key=value ...]'")
    proto_name, src_text, _, dst_text, *options = words
    proto = PROTO_NUMBERS.get(proto_name.lower())
    if proto is None:
        if not proto_name.isdigit() or not 0 <= int(proto_name) <= 255:
            raise InputError(where, 0, f"unknown protocol {proto_name!r}")
        proto = int(proto_name)
    src, sport = _endpoint(src_text, where)
    dst, dport = _endpoint(dst_text, where)
    if src.version != dst.version:
        raise InputError(where, 0, "source and destination are of different address families")
    opts: dict[str, str] = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        if not eq or key not in ("state", "in", "out", "flags", "fragment", "sip", "payload"):
            raise InputError(where, 0, f"unknown packet option {opt!r} "
                             "(state=, in=, out=, flags=, fragment=, sip=, payload=)")
        opts[key] = value
    state = opts.get("state")
    if state is not None and state not in CT_STATES:
        raise InputError(where, 0, f"state must be one of {', '.join(sorted(CT_STATES))}")
    flags = 0
    for letter in opts.get("flags", "S" if proto == 6 else "").upper():
        if letter not in _FLAG_BITS:
            raise InputError(where, 0, f"unknown TCP flag {letter!r} (use F S R P A U)")
        flags |= _FLAG_BITS[letter]
    payload = opts.get("payload", "").encode()
    if "sip" in opts:
        from fwtest.traffic.builders import example_sip_message
        payload = example_sip_message(opts["sip"].upper(), src, sport or 5060, dst, dport or 5060)
    fragment = opts.get("fragment")
    if fragment not in (None, "first", "later"):
        raise InputError(where, 0, "fragment must be first or later")
    data = _build(src, dst, proto, sport, dport, flags, payload, fragment)
    return PacketSpec(parse_ip(data, 0.0, opts.get("in"), opts.get("out")), state)


def _endpoint(text: str, where: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    m = _ENDPOINT.match(text)
    addr_text = port = None
    if m:
        addr_text, port = m.group("v6") or m.group("addr"), m.group("port")
    try:
        if m and m.group("v6") is None and addr_text and addr_text.count(":") > 1:
            return ipaddress.ip_address(text), None  # bare IPv6 address without brackets or port
        addr = ipaddress.ip_address(addr_text or "")
    except ValueError:
        raise InputError(where, 0, f"{text!r} is not ADDRESS[:PORT] (IPv6 as [ADDR]:PORT)") from None
    number = int(port) if port else None
    if number is not None and not 0 <= number <= 65535:
        raise InputError(where, 0, f"port {number} out of range")
    return addr, number


def _build(src, dst, proto: int, sport: int | None, dport: int | None, flags: int,
           payload: bytes, fragment: str | None) -> bytes:
    # Scapy only here: explain is interactive, one packet, and its checksums
    # and lengths must be right for the kernel oracle to accept the bytes too.
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.packet import Raw

    if proto == 6:
        l4 = TCP(sport=sport or 40000, dport=dport or 0, flags=flags, seq=1000) / Raw(payload)
    elif proto == 17:
        l4 = UDP(sport=sport or 40000, dport=dport or 0) / Raw(payload)
    else:
        l4 = Raw(payload or b"\x00" * 8)
    if src.version == 4:
        ip = IP(src=str(src), dst=str(dst), proto=proto, id=4242)
        if fragment == "first":
            ip.flags = "MF"
        elif fragment == "later":
            ip.frag = 185  # 1480 bytes in: a later fragment carries no transport header
            return bytes(ip / Raw(bytes(l4)[:64]))
        return bytes(ip / l4)
    ip6 = IPv6(src=str(src), dst=str(dst))
    if fragment:
        ip6 = ip6 / IPv6ExtHdrFragment(id=4242, m=1 if fragment == "first" else 0,
                                        offset=0 if fragment == "first" else 185, nh=proto)
        if fragment == "later":
            return bytes(ip6 / Raw(bytes(l4)[:64]))
        return bytes(ip6 / l4)
    ip6.nh = proto
    return bytes(ip6 / l4)
