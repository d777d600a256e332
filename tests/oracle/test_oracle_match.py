"""Matching what left the firewall to what was sent (no kernel needed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.packet import Raw, raw

from fwtest.oracle.match import Matcher, SentPackets, fragment_of, normalized
from fwtest.traffic._rawip import fragment_ipv4, fragment_ipv6
from fwtest.traffic.record import parse_ip

A4, B4 = "198.51.100.7", "203.0.113.10"
A6, B6 = "2001:db8:100::7", "2001:db8:911::10"


def forwarded(packet: bytes) -> bytes:
    """What forwarding does to a packet: TTL / hop limit minus one (and the checksum with it)."""
    if packet[0] >> 4 == 4:
        p = IP(packet)
        p.ttl -= 1
        del p.chksum
        return raw(p)
    p = IPv6(packet)
    p.hlim -= 1
    return raw(p)


def matcher_for(packets, out_side="psap", in_side="peers"):
    recs = [parse_ip(p) for p in packets]
    sent = SentPackets(recs, [in_side] * len(recs), [out_side] * len(recs))
    return Matcher(sent, frozenset())


def test_normalized_masks_what_forwarding_changes():
    p = raw(IP(src=A4, dst=B4, ttl=64) / UDP(sport=1, dport=2) / Raw(b"abc"))
    assert normalized(p) == normalized(forwarded(p))
    assert normalized(p) != normalized(raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=3) / Raw(b"abc")))
    q = raw(IPv6(src=A6, dst=B6, hlim=64) / UDP(sport=1, dport=2))
    assert normalized(q) == normalized(forwarded(q))


def test_forwarded_packets_are_accepted_and_the_rest_are_not():
    sent = [raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=p)) for p in (10, 11, 12)]
    m = matcher_for(sent)
    m.frame(0, "psap", forwarded(sent[0]))
    m.frame(2, "psap", forwarded(sent[2]))
    out = m.finish()
    assert sorted(out.accepted) == [0, 2]
    assert not out.rejected and not out.unexplained


def test_a_frame_matching_nothing_sent_is_unexplained():
    m = matcher_for([raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=10))])
    m.frame(0, "psap", raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=99)))
    assert m.finish().unexplained


def test_a_frame_on_the_wrong_side_is_not_acceptance():
    sent = [raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=10))]
    m = matcher_for(sent)
    m.frame(0, "peers", forwarded(sent[0]))
    out = m.finish()
    assert not out.accepted and out.unexplained


def test_duplicates_go_to_the_latest_packet_sent_before():
    one = raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=10))
    m = matcher_for([one, one, one])
    m.frame(1, "psap", forwarded(one))   # seen after the second was sent: the second passed
    assert sorted(m.finish().accepted) == [1]


def test_icmp_unreachable_and_rst_are_refusals():
    udp = raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=10) / Raw(b"x" * 20))
    tcp = raw(IPv6(src=A6, dst=B6) / TCP(sport=1000, dport=80, flags="S", seq=5))
    udp6 = raw(IPv6(src=A6, dst=B6) / UDP(sport=7, dport=9))
    m = matcher_for([udp, tcp, udp6])
    m.frame(0, "peers", raw(IP(src=B4, dst=A4) / ICMP(type=3, code=3) / forwarded(udp)[:28]))
    m.frame(1, "peers", raw(IPv6(src=B6, dst=A6) / TCP(sport=80, dport=1000, flags="RA", ack=6)))
    m.frame(2, "peers", raw(IPv6(src=B6, dst=A6) / ICMPv6DestUnreach(code=4) / forwarded(udp6)))
    out = m.finish()
    assert out.rejected == {0: "ICMP destination unreachable", 1: "TCP RST",
                            2: "ICMPv6 destination unreachable"}


def test_time_exceeded_is_not_a_refusal():
    udp = raw(IP(src=A4, dst=B4) / UDP(sport=1, dport=10))
    m = matcher_for([udp])
    m.frame(0, "peers", raw(IP(src=B4, dst=A4) / ICMP(type=11, code=0) / udp[:28]))
    out = m.finish()
    assert not out.rejected and out.unexplained


def datagram(family: int, size: int, ident: int) -> bytes:
    body = Raw((bytes(range(256)) * 16)[:size])
    if family == 4:
        return raw(IP(src=A4, dst=B4, id=ident) / UDP(sport=5060, dport=5060) / body)
    return raw(IPv6(src=A6, dst=B6) / UDP(sport=5060, dport=5060) / body)


def cut(family: int, packet: bytes, mtu: int) -> list[bytes]:
    return fragment_ipv4(packet, mtu) if family == 4 else fragment_ipv6(packet, mtu, 77)


@settings(max_examples=60)
@given(family=st.sampled_from([4, 6]), size=st.integers(1200, 4000), sent_cut=st.integers(600, 1500),
       out_cut=st.integers(600, 1500), order=st.randoms(use_true_random=False))
def test_a_datagram_cut_differently_on_the_way_out_still_matches(family, size, sent_cut, out_cut, order):
    whole = datagram(family, size, 77)
    sent = cut(family, whole, sent_cut)
    assert all(fragment_of(f) for f in sent)
    m = matcher_for(sent)
    came_out = [forwarded(f) for f in cut(family, whole, out_cut)]
    order.shuffle(came_out)
    for frame in came_out:
        m.frame(len(sent) - 1, "psap", frame)
    out = m.finish()
    assert sorted(out.accepted) == list(range(len(sent)))
    assert not out.unexplained


def test_an_incomplete_datagram_coming_out_is_unexplained():
    whole = datagram(4, 3000, 5)
    sent = cut(4, whole, 1400)
    m = matcher_for(sent[:2])
    other = datagram(4, 3000, 5)
    m.frame(1, "psap", forwarded(cut(4, other[:28] + b"\1" * (len(other) - 28), 1400)[0]))
    out = m.finish()
    assert not out.accepted and out.unexplained


def test_incomplete_sent_datagrams_are_reported():
    sent = cut(6, datagram(6, 3000, 9), 1400)
    recs = [parse_ip(p) for p in sent[:2]]
    assert SentPackets(recs, ["peers"] * 2, ["psap"] * 2).incomplete == [[0, 1]]
    recs = [parse_ip(p) for p in sent]
    assert SentPackets(recs, ["peers"] * 3, ["psap"] * 3).incomplete == []
