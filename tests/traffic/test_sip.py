"""fwtest.traffic.sip: the Scapy SIP layer (build, dissect, bindings)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from fwtest.traffic.sip import SIP, bind_sip, sip_request, sip_response
from fwtest.traffic.sipmsg import canonical_name, parse_sip

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
                min_size=1, max_size=12)
header_name = token.filter(lambda n: canonical_name(n) != "content-length")
header_value = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40).map(str.strip)
uri = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)


def _layer(pkt):
    assert SIP in pkt, pkt.summary()
    return pkt[SIP]


@st.composite
def sip_layers(draw) -> SIP:
    headers = draw(st.lists(st.tuples(header_name, header_value), max_size=8))
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        return sip_request(draw(token), draw(uri), headers, body)
    reason = draw(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1,
                          max_size=20).map(str.strip).filter(bool))
    return sip_response(draw(st.integers(100, 699)), reason, headers, body)


@settings(max_examples=120)
@given(sip_layers(), st.sampled_from(["udp4", "udp6", "tcp4"]))
def test_build_dissect_round_trip(layer, carrier):
    built = bytes(layer)
    if carrier == "udp4":
        wire = IP(bytes(IP(src="198.51.100.7", dst="203.0.113.10") / UDP(sport=5060, dport=5060) / layer))
    elif carrier == "udp6":
        wire = IPv6(bytes(IPv6(src="2001:db8:100::7", dst="2001:db8:911::10") / UDP(sport=40000, dport=5060) / layer))
    else:
        wire = IP(bytes(IP(src="198.51.100.7", dst="203.0.113.10") / TCP(sport=5060, dport=40000) / layer))
    got = _layer(wire)
    assert got.start_line == layer.start_line
    assert got.headers == [(n, v) for n, v in layer.headers[:-1]] + [("Content-Length", str(len(layer.body)))]
    assert got.body == layer.body
    assert bytes(got) == built
    # The same bytes through the Scapy-free parser give the same message.
    message = parse_sip(built)
    assert message == got.message()
    assert message.body == layer.body
    assert (message.method, message.status) == (layer.method, layer.status)


def test_content_length_is_computed_and_fields_are_readable():
    layer = sip_request("MESSAGE", "urn:service:sos", [("Call-ID", "c1"), ("CSeq", "7 MESSAGE")], b"help")
    assert b"\r\nContent-Length: 4\r\n\r\nhelp" in bytes(layer)
    assert (layer.method, layer.uri, layer.status) == ("MESSAGE", "urn:service:sos", None)
    ok = sip_response(200, "OK", [("CSeq", "7 MESSAGE")])
    assert (ok.status, ok.reason, ok.method) == (200, "OK", None)
    assert ok.header("cseq") == "7 MESSAGE" and SIP(bytes(ok)).header("l") == "0"
    assert "SIP MESSAGE urn:service:sos" in layer.summary()


def test_explicit_content_length_is_kept():
    layer = sip_request("OPTIONS", "sip:a", [("Content-Length", "0")])
    assert bytes(layer).count(b"Content-Length") == 1


def test_bound_to_5060_both_directions_and_not_elsewhere():
    payload = bytes(sip_request("OPTIONS", "sip:a", []))
    for l4 in (UDP(sport=5060, dport=40000), UDP(sport=40000, dport=5060),
               TCP(sport=5060, dport=40000), TCP(sport=40000, dport=5060)):
        assert SIP in IP(bytes(IP() / l4 / Raw(payload)))
    assert SIP not in IP(bytes(IP() / UDP(sport=40000, dport=5080) / Raw(payload)))


def test_any_port_by_binding_or_explicitly():
    payload = bytes(sip_request("OPTIONS", "sip:a", []))
    assert SIP(payload).method == "OPTIONS"
    bind_sip(5090)
    assert SIP in IP(bytes(IP() / UDP(sport=40000, dport=5090) / Raw(payload)))


def test_two_messages_in_one_segment_and_continuation_segments():
    two = bytes(sip_response(100, "Trying", [])) + bytes(sip_response(180, "Ringing", []))
    pkt = IP(bytes(IP() / TCP(sport=5060, dport=40000) / Raw(two)))
    first = pkt[SIP]
    second = first.payload
    assert isinstance(second, SIP) and (first.status, second.status) == (100, 180)
    # A segment carrying the middle of a message is not dissected as SIP.
    middle = IP(bytes(IP() / TCP(sport=5060, dport=40000) / Raw(b"a=rtpmap:0 PCMU/8000\r\n")))
    assert SIP not in middle and Raw in middle


def test_folded_header_is_unfolded_on_dissection():
    got = SIP(b"OPTIONS sip:a SIP/2.0\r\nSubject: one\r\n two\r\nContent-Length: 0\r\n\r\n")
    assert got.headers == [("Subject", "one two"), ("Content-Length", "0")]


def test_tcp_reassemble_waits_for_the_whole_body():
    whole = bytes(sip_request("MESSAGE", "sip:a", [], b"x" * 50))
    assert SIP.tcp_reassemble(whole[:-10], {}, {}) is None
    assert SIP.tcp_reassemble(whole, {}, {}).body == b"x" * 50
