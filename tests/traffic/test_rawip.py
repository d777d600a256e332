"""fwtest.traffic._rawip: packets patched from templates are exactly what Scapy builds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.rtp import RTP
from scapy.packet import Raw

from fwtest.traffic._rawip import (
    UdpFieldPatcher,
    fragment_ipv4,
    fragment_ipv6,
    tcp_from_template,
    udp_from_template,
)

V4 = ("198.51.100.7", "203.0.113.10")
V6 = ("2001:db8:100::7", "2001:db8:911::10")
families = st.sampled_from([V4, V6])


def _ip(addrs, **kw):
    src, dst = addrs
    if ":" in src:
        return IPv6(src=src, dst=dst)
    return IP(src=src, dst=dst, flags="DF", **kw)


@settings(max_examples=150)
@given(families, st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1), st.integers(0, 0x3F),
       st.integers(0, 0xFFFF), st.binary(max_size=1400), st.integers(0, 0xFFFF),
       st.sampled_from([b"", b"\x02\x04\x05\xb4\x04\x02\x01\x03\x03\x07", b"\x01\x01\x08\x0a" + bytes(8)]))
def test_tcp_segment_equals_scapy(addrs, seq, ack, flags, window, payload, ident, options):
    template = bytes(_ip(addrs) / TCP(sport=40000, dport=5060, flags="A"))
    got = tcp_from_template(template, seq=seq, ack=ack, flags=flags, window=window, payload=payload,
                            ident=ident, options=options)
    kw = {} if ":" in addrs[0] else {"id": ident}
    tcp = TCP(sport=40000, dport=5060, seq=seq, ack=ack, flags=flags, window=window)
    if not options:
        assert got == bytes(_ip(addrs, **kw) / tcp / Raw(payload) if payload else _ip(addrs, **kw) / tcp)
    # Scapy reads the fields back, and recomputing every length and checksum changes nothing.
    parsed = (IPv6 if ":" in addrs[0] else IP)(got)
    seg = parsed[TCP]
    assert (seg.seq, seg.ack, int(seg.flags), seg.window) == (seq, ack, flags, window)
    assert bytes(seg.payload) == payload
    assert seg.dataofs * 4 == 20 + len(options) + (-len(options) % 4)
    del seg.chksum
    if IP in parsed:
        del parsed[IP].chksum, parsed[IP].len
    else:
        del parsed[IPv6].plen
    assert bytes(parsed) == got


def test_syn_options_equal_scapy_option_list():
    template = bytes(IP(src=V4[0], dst=V4[1], flags="DF") / TCP(sport=40000, dport=5060, flags="A"))
    got = tcp_from_template(template, seq=1, ack=0, flags=0x02, window=64240, ident=9,
                            options=b"\x02\x04\x05\xb4\x04\x02\x01\x03\x03\x07")
    want = bytes(IP(src=V4[0], dst=V4[1], flags="DF", id=9) / TCP(
        sport=40000, dport=5060, seq=1, flags="S", window=64240,
        options=[("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]))
    assert got == want


@settings(max_examples=100)
@given(families, st.binary(max_size=1400), st.integers(0, 0xFFFF), st.integers(1, 65535), st.integers(1, 65535))
def test_udp_datagram_equals_scapy(addrs, payload, ident, sport, dport):
    template = bytes(_ip(addrs) / UDP(sport=5060, dport=5060))
    got = udp_from_template(template, payload, ident, sport=sport, dport=dport)
    kw = {} if ":" in addrs[0] else {"id": ident}
    assert got == bytes(_ip(addrs, **kw) / UDP(sport=sport, dport=dport) / Raw(payload))


@settings(max_examples=150)
@given(families, st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1))
def test_rtp_patch_equals_scapy(addrs, marker, seq, timestamp, ssrc):
    def rtp(**fields):
        return bytes(_ip(addrs) / UDP(sport=16384, dport=32766) / RTP(payload_type=0, **fields) / Raw(b"\xff" * 160))

    patcher = UdpFieldPatcher(rtp(), 0, "!BBHII")
    got = patcher.packet(0x80, 0x80 if marker else 0, seq, timestamp, ssrc)
    assert got == rtp(marker=int(marker), sequence=seq, timestamp=timestamp, sourcesync=ssrc)


def test_patcher_needs_aligned_fields():
    template = bytes(IP() / UDP() / Raw(bytes(20)))
    for offset, fmt in ((1, "!H"), (0, "!B")):
        try:
            UdpFieldPatcher(template, offset, fmt)
        except ValueError:
            continue
        raise AssertionError(f"{offset} {fmt} accepted")


@settings(max_examples=40)
@given(st.integers(1473, 9000), st.integers(1, 0xFFFF))
def test_ipv4_fragments_equal_scapy_and_reassemble(size, ident):
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    data = bytes(IP(src=V4[0], dst=V4[1], id=ident) / UDP(sport=5060, dport=5060) / Raw(payload))
    got = fragment_ipv4(data, 1500)
    assert got == [bytes(p) for p in fragment(IP(data[:20]) / Raw(data[20:]), fragsize=1480)]
    assert all(len(f) <= 1500 for f in got)
    assert b"".join(f[20:] for f in got) == data[20:]
    assert [IP(f).frag * 8 for f in got] == list(range(0, len(data) - 20, 1480))
    assert [IP(f).flags.MF for f in got] == [True] * (len(got) - 1) + [False]


@settings(max_examples=40)
@given(st.integers(1453, 9000), st.integers(0, 2 ** 32 - 1))
def test_ipv6_fragments_equal_scapy(size, ident):
    data = bytes(IPv6(src=V6[0], dst=V6[1]) / UDP(sport=5060, dport=5060) / Raw(b"x" * size))
    got = fragment_ipv6(data, 1500, ident)
    scapy = fragment6(IPv6(src=V6[0], dst=V6[1]) / IPv6ExtHdrFragment(id=ident, nh=17) / Raw(data[40:]), 1500)
    assert got == [bytes(p) for p in scapy]
    assert all(len(f) <= 1500 for f in got)
