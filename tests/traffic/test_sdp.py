"""fwtest.traffic.sdp: media descriptions, SDP inside SIP (also multipart), building offers."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.traffic.sdp import SdpMedia, build_sdp, multipart_parts, parse_sdp, sdp_of
from fwtest.traffic.sipmsg import parse_sip

OFFER = b"""v=0\r
o=- 20518 0 IN IP4 198.51.100.7\r
s=-\r
c=IN IP4 198.51.100.7\r
t=0 0\r
m=audio 16384 RTP/AVP 0 101\r
a=rtpmap:0 PCMU/8000\r
m=video 20000 RTP/AVP 96\r
c=IN IP6 2001:db8:100::7\r
a=rtcp:20011 IN IP6 2001:db8:100::7\r
m=audio 30000/2 RTP/SAVP 0\r
a=rtcp-mux\r
m=audio 0 RTP/AVP 0\r
m=message 2855 TCP/MSRP *\r
a=path:msrp://198.51.100.7:2855/s1;tcp\r
"""


def test_media_lines_addresses_and_rtcp():
    assert parse_sdp(OFFER) == [
        SdpMedia("audio", 16384, "RTP/AVP", "198.51.100.7", 4, 16385),
        SdpMedia("video", 20000, "RTP/AVP", "2001:db8:100::7", 6, 20011),   # media c= wins, a=rtcp
        SdpMedia("audio", 30000, "RTP/SAVP", "198.51.100.7", 4, 30000),     # rtcp-mux
        SdpMedia("audio", 0, "RTP/AVP", "198.51.100.7", 4, 0),              # disabled stream
        SdpMedia("message", 2855, "TCP/MSRP", "198.51.100.7", 4, 0),        # no RTCP for MSRP
    ]


def test_without_connection_and_malformed_lines():
    assert parse_sdp(b"v=0\nm=audio 5004 RTP/AVP 0\n") == [SdpMedia("audio", 5004, "RTP/AVP", "", 0, 5005)]
    assert parse_sdp(b"v=0\nc=IN IP4 233.252.0.1/127\nm=audio x RTP/AVP 0\nm=audio 70000 RTP/AVP 0\n"
                     b"m=audio\nm=audio 4000 RTP/AVP 0\nc=ATM NSAP 47\n") == \
        [SdpMedia("audio", 4000, "RTP/AVP", "233.252.0.1", 4, 4001)]  # multicast TTL cut, bad c= ignored
    assert parse_sdp(b"") == [] and parse_sdp(b"\xff\xfe garbage") == []


def _invite(content_type: str, body: bytes) -> bytes:
    return (f"INVITE urn:service:sos SIP/2.0\r\nCall-ID: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


PIDF = b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:a@b"/>'


def test_sdp_of_plain_body():
    assert [m.port for m in sdp_of(parse_sip(_invite("application/sdp", OFFER)))] == [16384, 20000, 30000, 0, 2855]
    assert sdp_of(parse_sip(_invite("text/plain", OFFER))) == []
    assert sdp_of(parse_sip(b"BYE sip:a SIP/2.0\r\n\r\n")) == []


def test_sdp_of_multipart_mixed_rfc5621():
    body = (b"--boundary1\r\nContent-Type: application/sdp\r\n\r\n" + OFFER +
            b"\r\n--boundary1\r\nContent-Type: application/pidf+xml\r\nContent-ID: <target123@bcf.example.net>\r\n\r\n"
            + PIDF + b"\r\n--boundary1--\r\n")
    media = sdp_of(parse_sip(_invite("multipart/mixed;boundary=boundary1", body)))
    assert [m.port for m in media] == [16384, 20000, 30000, 0, 2855]
    # Quoted boundary with a ';' in it, parameters after it, and the SDP as the second part.
    body2 = (b"preamble\r\n--a;b\r\nContent-Type: application/pidf+xml\r\n\r\n" + PIDF +
             b"\r\n--a;b\r\ncontent-type: Application/SDP\r\n\r\n" + OFFER + b"\r\n--a;b--\r\nepilogue")
    media2 = sdp_of(parse_sip(_invite('multipart/mixed; boundary="a;b"; foo=bar', body2)))
    assert [m.port for m in media2] == [16384, 20000, 30000, 0, 2855]


def test_sdp_of_nested_multipart_and_parts_without_type():
    inner = (b"--in\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 203.0.113.9\r\nm=audio 17000 RTP/AVP 0\r\n"
             b"\r\n--in--\r\n")
    outer = (b"--out\r\n\r\nplain text part without headers\r\n"
             b"--out\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n" + inner + b"\r\n--out--\r\n")
    media = sdp_of(parse_sip(_invite("multipart/mixed; boundary=out", outer)))
    assert media == [SdpMedia("audio", 17000, "RTP/AVP", "203.0.113.9", 4, 17001)]


def test_multipart_without_boundary_or_too_deep():
    assert sdp_of(parse_sip(_invite("multipart/mixed", b"--x\r\nContent-Type: application/sdp\r\n\r\n" + OFFER))) == []
    body = b"v=0\r\nc=IN IP4 203.0.113.9\r\nm=audio 17000 RTP/AVP 0\r\n"
    for depth in range(6):
        b = f"b{depth}"
        ctype = "application/sdp" if depth == 0 else f"multipart/mixed; boundary=b{depth - 1}"
        body = f"--{b}\r\nContent-Type: {ctype}\r\n\r\n".encode() + body + f"\r\n--{b}--\r\n".encode()
    assert sdp_of(parse_sip(_invite("multipart/mixed; boundary=b5", body))) == []   # bounded nesting


def test_multipart_parts_lf_only():
    parts = multipart_parts(b"--z\nContent-Type: text/plain\n\nhello\n--z--\n", "z")
    assert parts == [({"content-type": "text/plain"}, b"hello")]


ipv4 = st.integers(0, 2 ** 32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2 ** 128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@settings(max_examples=100)
@given(st.one_of(ipv4, ipv6), st.integers(1, 65534), st.one_of(st.none(), st.integers(1, 65535)),
       st.one_of(st.none(), st.integers(1, 65535)))
def test_build_then_parse(address, rtp, rtcp, msrp):
    body = build_sdp(address, rtp_port=rtp, rtcp_port=rtcp, msrp_port=msrp, msrp_setup="active")
    family = 6 if ":" in address else 4
    expected = [SdpMedia("audio", rtp, "RTP/AVP", address, family, rtp + 1 if rtcp is None else rtcp)]
    if msrp is not None:
        expected.append(SdpMedia("message", msrp, "TCP/MSRP", address, family, 0))
    assert parse_sdp(body) == expected
    assert body.endswith(b"\r\n") and b"\n\n" not in body


def test_build_msrp_path_rfc4975():
    body = build_sdp("2001:db8:911::10", msrp_port=2855).decode()
    assert "m=message 2855 TCP/MSRP *\r\n" in body
    assert "a=path:msrp://[2001:db8:911::10]:2855/s1;tcp\r\n" in body
    assert "a=accept-types:" in body and "c=IN IP6 2001:db8:911::10" in body
    assert "m=audio" not in body
    audio = build_sdp("203.0.113.10", rtp_port=16384).decode()
    assert "a=rtpmap:0 PCMU/8000" in audio and "a=rtcp" not in audio
