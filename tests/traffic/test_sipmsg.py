"""fwtest.traffic.sipmsg: the Scapy-free SIP parser the hot path uses."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.traffic.sipmsg import SipMessage, canonical_name, parse_sip, split_sip_stream

INVITE = (
    b"INVITE urn:service:sos SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <urn:service:sos>\r\n"
    b"From: <sip:+15085550100@bcf.example.net>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@198.51.100.7\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_request_fields():
    m = parse_sip(INVITE)
    assert m is not None
    assert (m.method, m.uri, m.status, m.reason) == ("INVITE", "urn:service:sos", None, None)
    assert m.is_request
    assert m.call_id == "a84b4c76e66710@198.51.100.7"
    assert m.cseq == (314159, "INVITE")
    assert m.content_type == "application/sdp"
    assert m.body == b"v=0\n"
    assert m.headers[0] == ("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds")
    assert [name for name, _ in m.headers][-1] == "Content-Length"


def test_response_fields_and_empty_reason():
    m = parse_sip(b"SIP/2.0 180 Ringing\r\nCSeq: 1 INVITE\r\n\r\n")
    assert (m.method, m.status, m.reason) == (None, 180, "Ringing")
    empty = parse_sip(b"SIP/2.0 200 \r\n\r\n")
    assert (empty.status, empty.reason) == (200, "")
    assert parse_sip(b"SIP/2.0 200\r\n\r\n").reason == ""


def test_compact_forms_and_case():
    m = parse_sip(b"OPTIONS sip:psap.example.org SIP/2.0\r\ni: abc\r\nv: SIP/2.0/UDP a\r\n"
                  b"VIA: SIP/2.0/UDP b\r\nc: text/plain;charset=UTF-8\r\nl: 0\r\nk: timer\r\n"
                  b"f: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\nm: <sip:a@1.2.3.4>\r\no: dialog\r\n"
                  b"u: presence\r\nr: <sip:x@y>\r\ne: gzip\r\ns: hi\r\n\r\n")
    assert m.call_id == "abc"
    assert m.headers_named("Via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b"]
    assert m.header("CONTENT-TYPE") == "text/plain;charset=UTF-8"
    assert m.content_type == "text/plain"
    for long, short in (("Supported", "timer"), ("From", "<sip:a@b>;tag=1"), ("To", "<sip:c@d>"),
                        ("Contact", "<sip:a@1.2.3.4>"), ("Event", "dialog"), ("Allow-Events", "presence"),
                        ("Refer-To", "<sip:x@y>"), ("Content-Encoding", "gzip"), ("Subject", "hi")):
        assert m.header(long) == short
    assert canonical_name(" I ") == "call-id"


def test_folded_headers_and_bare_lf():
    m = parse_sip(b"MESSAGE sip:a@b SIP/2.0\nSubject: I know you're there,\n\t pick up the phone\n"
                  b"Via: SIP/2.0/UDP a\n  ;branch=z9hG4bK1\nContent-Length: 2\n\nhi")
    assert m.header("subject") == "I know you're there, pick up the phone"
    assert m.header("via") == "SIP/2.0/UDP a ;branch=z9hG4bK1"
    assert m.body == b"hi"


def test_udp_without_content_length_takes_the_rest():
    m = parse_sip(b"MESSAGE sip:a@b SIP/2.0\r\nVia: x\r\n\r\nhello there")
    assert m.body == b"hello there"


def test_content_length_cuts_the_body_and_keeps_truncated_bodies():
    assert parse_sip(b"MESSAGE sip:a@b SIP/2.0\r\nl: 3\r\n\r\nhello").body == b"hel"
    assert parse_sip(b"MESSAGE sip:a@b SIP/2.0\r\nl: 30\r\n\r\nhello").body == b"hello"


def test_headers_only_datagram_still_shows_call_id():
    m = parse_sip(b"BYE sip:a@b SIP/2.0\r\nCall-ID: x1\r\nCSeq: 2 BYE")
    assert m is not None and m.call_id == "x1" and m.cseq == (2, "BYE")


def test_leading_crlf_keepalive_is_skipped():
    assert parse_sip(b"\r\n\r\nOPTIONS sip:a SIP/2.0\r\n\r\n").method == "OPTIONS"


def test_not_sip():
    for data in (b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
                 b"\x80\x00\x12\x34" + bytes(160), b"SIP/2.0 2000 OK\r\n\r\n", b"SIP/2.0 OK\r\n\r\n",
                 b"INVITE sip:a\r\n\r\n", b"IN VITE sip:a SIP/2.0\r\n\r\n", b"INV\x00TE sip:a SIP/2.0\r\n\r\n",
                 b"\r\n\r\n"):
        assert parse_sip(data) is None, data


def test_malformed_lines_are_skipped_not_fatal():
    m = parse_sip(b"INVITE sip:a SIP/2.0\r\nthis line has no colon\r\n: empty name\r\nCall-ID: ok\r\n\r\n")
    assert m.headers == (("Call-ID", "ok"),)


def test_bad_cseq_and_missing_headers():
    assert parse_sip(b"INVITE sip:a SIP/2.0\r\nCSeq: one INVITE\r\n\r\n").cseq is None
    assert parse_sip(b"INVITE sip:a SIP/2.0\r\nCSeq: 1\r\n\r\n").cseq is None
    m = parse_sip(b"INVITE sip:a SIP/2.0\r\n\r\n")
    assert m.cseq is None and m.call_id is None and m.content_type is None


def test_hostile_input_is_bounded():
    many = b"INVITE sip:a SIP/2.0\r\n" + b"X: y\r\n" * 10_000 + b"\r\n"   # 60 KB, 10000 lines
    no_end = b"INVITE sip:a SIP/2.0\r\n" + b"X" * 2_000_000
    started = time.perf_counter()
    m = parse_sip(many)
    assert m is not None and len(m.headers) <= 1024
    assert parse_sip(no_end) is None  # a header section larger than any SIP message
    messages, rest = split_sip_stream(no_end)
    assert messages == [] and rest == no_end
    assert time.perf_counter() - started < 5


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
                min_size=1, max_size=12)
header_name = token.filter(lambda n: canonical_name(n) != "content-length")
header_value = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40).map(str.strip)
uri = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)


@st.composite
def sip_messages(draw) -> SipMessage:
    headers = tuple(draw(st.lists(st.tuples(header_name, header_value), max_size=8)))
    body = draw(st.binary(max_size=200))
    headers += (("Content-Length", str(len(body))),)
    if draw(st.booleans()):
        return SipMessage(draw(token), draw(uri), None, None, headers, body)
    reason = draw(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20).map(str.strip))
    return SipMessage(None, None, draw(st.integers(100, 699)), reason, headers, body)


@settings(max_examples=150)
@given(sip_messages())
def test_parse_round_trip(message):
    assert parse_sip(message.to_bytes()) == message


@settings(max_examples=100)
@given(st.lists(sip_messages(), min_size=1, max_size=4), st.data())
def test_stream_framing_at_any_cut(messages, data):
    stream = b"\r\n".join(m.to_bytes() for m in messages)  # CRLF keep-alives between messages
    cut = data.draw(st.integers(0, len(stream)))
    first, rest = split_sip_stream(stream[:cut])
    second, tail = split_sip_stream(rest + stream[cut:])
    assert first + second == messages
    assert tail == b""
    # What stays unconsumed after the first part is exactly the incomplete tail.
    assert stream[:cut].endswith(rest)


def test_stream_stops_at_non_sip_bytes():
    ok = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    messages, rest = split_sip_stream(ok + b"\x16\x03\x01garbage\r\n\r\n")
    assert len(messages) == 1 and rest.startswith(b"\x16\x03\x01")


def test_stream_without_content_length_means_no_body():
    messages, rest = split_sip_stream(b"OPTIONS sip:a SIP/2.0\r\nCall-ID: 1\r\n\r\nOPTIONS sip:b SIP/2.0\r\n\r\n")
    assert [m.uri for m in messages] == ["sip:a", "sip:b"] and rest == b""
