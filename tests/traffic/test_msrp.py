"""fwtest.traffic.msrp: MSRP SEND and responses as a Scapy layer (RFC 4975)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from fwtest.traffic.msrp import MSRP, bind_msrp, msrp_response, msrp_send

TO = "msrp://psap.example.org:2855/kjhd37s2s20w2a;tcp"
FROM = "msrp://bcf.example.net:7654/jshA7weztas;tcp"


def test_send_matches_rfc4975_layout():
    send = msrp_send("a786hjs2", TO, FROM, message_id="87652491", body=b"Hey, are you there?")
    assert bytes(send) == (
        b"MSRP a786hjs2 SEND\r\n"
        b"To-Path: " + TO.encode() + b"\r\n"
        b"From-Path: " + FROM.encode() + b"\r\n"
        b"Message-ID: 87652491\r\n"
        b"Byte-Range: 1-19/19\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"Hey, are you there?\r\n"
        b"-------a786hjs2$\r\n")
    assert (send.transaction_id, send.method, send.status) == ("a786hjs2", "SEND", None)


def test_response_has_no_body_and_swapped_paths():
    ok = msrp_response("a786hjs2", 200, "OK", to_path=FROM, from_path=TO)
    assert bytes(ok) == (b"MSRP a786hjs2 200 OK\r\nTo-Path: " + FROM.encode() + b"\r\nFrom-Path: "
                         + TO.encode() + b"\r\n-------a786hjs2$\r\n")
    got = MSRP(bytes(ok))
    assert (got.status, got.method, got.body, got.header("to-path")) == (200, None, b"", FROM)


@settings(max_examples=100)
@given(st.binary(max_size=400).filter(lambda b: b"\r\n-------" not in b),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=4, max_size=16))
@example(b"-------", "0000")        # data that starts like an end-line is still the body
@example(b"", "0000")
@example(b"\r\nabc", "0000")
def test_round_trip_over_tcp_2855(body, tid):
    send = msrp_send(tid, TO, FROM, message_id="m1", body=body)
    wire = IP(bytes(IP(src="198.51.100.7", dst="203.0.113.10") / TCP(sport=40000, dport=2855) / send))
    got = wire[MSRP]
    assert got.start_line == send.start_line
    assert got.headers == send.headers
    assert got.body == body
    assert got.end_line == f"-------{tid}$".encode()
    assert bytes(got) == bytes(send)


def test_body_may_contain_dashes_of_another_transaction():
    body = b"line\r\n-------other$ not the end"
    got = MSRP(bytes(msrp_send("t1", TO, FROM, message_id="m", body=body)))
    assert got.body == body


def test_two_messages_in_one_segment_and_binding():
    ok = msrp_response("t1", 200, "OK", to_path=FROM, from_path=TO)
    send = msrp_send("t2", TO, FROM, message_id="m", body=b"hi")
    pkt = IP(bytes(IP() / TCP(sport=2855, dport=40000) / Raw(bytes(ok) + bytes(send))))
    assert pkt[MSRP].status == 200 and isinstance(pkt[MSRP].payload, MSRP)
    assert pkt[MSRP].payload.body == b"hi"
    assert MSRP not in IP(bytes(IP() / TCP(sport=40000, dport=2856) / Raw(bytes(ok))))
    bind_msrp(2856)
    assert MSRP in IP(bytes(IP() / TCP(sport=40000, dport=2856) / Raw(bytes(ok))))
    assert MSRP not in IP(bytes(IP() / TCP(sport=40000, dport=2855) / Raw(b"not msrp")))
