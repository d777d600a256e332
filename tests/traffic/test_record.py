"""parse_ip: Scapy builds the packet, the record must agree with Scapy's dissection."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from scapy.packet import Raw

from fwtest.traffic.record import (
    FIRST_FRAGMENT,
    LATER_FRAGMENT,
    NOT_FRAGMENT,
    MalformedPacket,
    parse_ip,
)

ports = st.integers(0, 65535)


@given(sport=ports, dport=ports, flags=st.integers(0, 0x3F), body=st.binary(max_size=64))
def test_ipv4_tcp_fields(sport, dport, flags, body):
    pkt = IP(src="198.51.100.7", dst="203.0.113.10") / TCP(sport=sport, dport=dport, flags=flags) / Raw(body)
    r = parse_ip(bytes(pkt), 1.5)
    assert (r.family, r.proto, r.sport, r.dport, r.tcp_flags) == (4, 6, sport, dport, flags)
    assert r.addr("src") == "198.51.100.7" and r.addr("dst") == "203.0.113.10"
    assert r.payload == body and r.frag == NOT_FRAGMENT and r.ts == 1.5


@given(sport=ports, dport=ports, body=st.binary(max_size=64))
def test_ipv6_udp_behind_extension_headers(sport, dport, body):
    pkt = (IPv6(src="2001:db8:100::7", dst="2001:db8:911::10") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
           / UDP(sport=sport, dport=dport) / Raw(body))
    r = parse_ip(bytes(pkt))
    assert (r.family, r.proto, r.sport, r.dport, r.payload) == (6, 17, sport, dport, body)
    assert r.addr("dst") == "2001:db8:911::10"


def test_ipv4_fragments_first_and_later():
    big = IP(src="198.51.100.7", dst="203.0.113.10", id=77) / UDP(sport=5060, dport=5060) / Raw(b"x" * 3000)
    frags = [parse_ip(bytes(f)) for f in fragment(big, fragsize=1480)]
    assert [f.frag for f in frags] == [FIRST_FRAGMENT, LATER_FRAGMENT, LATER_FRAGMENT]
    assert frags[0].dport == 5060 and frags[1].sport == frags[1].dport == -1
    assert {f.frag_id for f in frags} == {77}
    assert [f.more_fragments for f in frags] == [True, True, False]
    assert frags[1].frag_offset == 1480


def test_ipv6_fragments_first_and_later():
    big = (IPv6(src="2001:db8:100::7", dst="2001:db8:911::10") / IPv6ExtHdrFragment(id=99)
           / UDP(sport=5060, dport=5060) / Raw(b"y" * 3000))
    frags = [parse_ip(bytes(f)) for f in fragment6(big, 1280)]
    assert frags[0].frag == FIRST_FRAGMENT and frags[0].dport == 5060 and frags[0].proto == 17
    assert all(f.frag == LATER_FRAGMENT and not f.has_ports for f in frags[1:])
    assert {f.frag_id for f in frags} == {99}


def test_link_padding_is_cut():
    pkt = bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2) / Raw(b"ab")) + b"\x00" * 20
    assert parse_ip(pkt).payload == b"ab"


@pytest.mark.parametrize("data", [b"", b"\x45" + b"\x00" * 10, b"\x60" + b"\x00" * 20, b"\x75" * 40,
                                  b"\x42" + b"\x00" * 30])
def test_malformed(data):
    with pytest.raises(MalformedPacket):
        parse_ip(data)


@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_crash(data):
    with contextlib.suppress(MalformedPacket):
        parse_ip(data)
