"""fwtest.traffic.builders: RFC-realistic SIP, media and transports."""

from __future__ import annotations

import ipaddress
import random
import struct
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.rtcp import RTCP
from scapy.layers.inet import IP, UDP, defragment
from scapy.layers.inet6 import IPv6, defragment6

from fwtest.traffic import builders as b
from fwtest.traffic.record import (
    FIRST_FRAGMENT,
    LATER_FRAGMENT,
    NOT_FRAGMENT,
    TCP_ACK,
    TCP_FIN,
    TCP_SYN,
    parse_ip,
)
from fwtest.traffic.sdp import multipart_parts, sdp_of
from fwtest.traffic.sip import SIP
from fwtest.traffic.sipmsg import parse_sip, split_sip_stream

PEER4, PSAP4 = "198.51.100.7", "203.0.113.10"
PEER6, PSAP6 = "2001:db8:100::7", "2001:db8:911::10"
NS = {"pidf": "urn:ietf:params:xml:ns:pidf", "gp": "urn:ietf:params:xml:ns:pidf:geopriv10",
      "ca": "urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr", "gml": "http://www.opengis.net/gml",
      "gs": "http://www.opengis.net/pidflo/1.0", "dm": "urn:ietf:params:xml:ns:pidf:data-model"}


def _dialog(peer=PEER4, psap=PSAP4, transport="udp", seed=1):
    return b.SipDialog(transport, peer, 5060, psap, 5060, "urn:service:sos", rng=random.Random(seed))


def _emergency(dialog):
    sdp = b.emergency_sdp(dialog.caller, 16384, 7)
    return dialog.emergency_invite(sdp, b.pidf_lo(f"pres:{dialog.caller_user}@{b.PEER_DOMAIN}"))


@pytest.mark.parametrize("peer,psap", [(PEER4, PSAP4), (PEER6, PSAP6)])
def test_emergency_invite_is_rfc_realistic(peer, psap):
    dialog = _dialog(peer, psap)
    msg = parse_sip(bytes(_emergency(dialog)))
    assert (msg.method, msg.uri) == ("INVITE", "urn:service:sos")                 # RFC 5031
    assert msg.header("to") == "<urn:service:sos>"
    via = msg.header("via")
    assert via.startswith(f"SIP/2.0/UDP {b.hostport(peer, 5060)};branch=z9hG4bK")   # RFC 3261 8.1.1.7
    assert msg.header("max-forwards") == "70"
    assert msg.header("contact").startswith("<sip:+15085550100@")
    assert msg.headers_named("p-asserted-identity") == [
        "<sip:+15085550100@bcf.example.net;user=phone>", "<tel:+15085550100>"]    # RFC 3325
    assert msg.header("resource-priority") == "esnet.1"                            # RFC 7135
    assert "resource-priority" in msg.header("supported") and msg.header("require") is None
    assert msg.header("geolocation-routing") == "yes"                             # RFC 6442
    geolocation = msg.header("geolocation")
    assert geolocation.startswith("<cid:") and geolocation.endswith(">")
    assert msg.cseq[1] == "INVITE" and msg.call_id
    assert msg.content_type == "multipart/mixed"
    boundary = msg.header("content-type").split("boundary=")[1]
    parts = multipart_parts(msg.body, boundary)
    assert [p[0]["content-type"] for p in parts] == ["application/sdp", "application/pidf+xml"]
    # The Geolocation cid: URI names the PIDF-LO part's Content-ID (RFC 6442 4.1, RFC 2392).
    assert parts[1][0]["content-id"] == "<" + geolocation[len("<cid:"):-1] + ">"
    media = sdp_of(msg)
    assert [(m.media, m.port, m.address) for m in media] == [("audio", 16384, peer)]
    pidf = ET.fromstring(parts[1][1])
    assert pidf.tag == "{urn:ietf:params:xml:ns:pidf}presence"
    circle = pidf.find(".//gp:location-info/gs:Circle", NS)
    assert circle is not None and circle.get("srsName") == "urn:ogc:def:crs:EPSG::4326"
    lat, lon = map(float, circle.find("gml:pos", NS).text.split())
    assert -90 <= lat <= 90 and -180 <= lon <= 180
    civic = pidf.find(".//gp:location-info/ca:civicAddress", NS)
    assert civic.find("ca:country", NS).text == "US" and civic.find("ca:A1", NS).text
    # One location per location-info (RFC 5491 3.4).
    assert all(len(li) - len(li.findall("con:confidence", {"con": "urn:ietf:params:xml:ns:geopriv:conf"})) == 1
               for li in pidf.iterfind(".//gp:location-info", NS))


@pytest.mark.parametrize("peer,psap", [(PEER4, PSAP4), (PEER6, PSAP6)])
def test_emergency_invite_exceeds_the_mtu_and_is_fragmented(peer, psap):
    invite = _emergency(_dialog(peer, psap))
    channel = b.UdpChannel(peer, 5060, psap, 5060, random.Random(3))
    wires = b.send_sip(channel, True, invite, "INVITE")
    whole = bytes((IPv6(src=peer, dst=psap) if ":" in peer else IP(src=peer, dst=psap))
                  / UDP(sport=5060, dport=5060) / invite)
    assert len(whole) > 1500 and len(wires) >= 2
    records = [parse_ip(w.data) for w in wires]
    assert [r.frag for r in records] == [FIRST_FRAGMENT] + [LATER_FRAGMENT] * (len(wires) - 1)
    assert all(len(w.data) <= 1500 for w in wires) and len({r.frag_id for r in records}) == 1
    assert all(r.frag_offset % 8 == 0 for r in records) and records[-1].more_fragments is False
    if ":" in peer:
        assembled = defragment6([IPv6(w.data) for w in wires])
        assert bytes(assembled[UDP]) == bytes(IPv6(whole)[UDP])
        assert assembled[SIP].method == "INVITE"
    else:
        assembled = defragment([IP(w.data) for w in wires])
        assert len(assembled) == 1
        got = assembled[0]
        assert bytes(got[IP].payload) == whole[20:]
        assert IP(bytes(got))[SIP].uri == "urn:service:sos"


def test_small_datagrams_are_not_fragmented_and_carry_df():
    channel = b.UdpChannel(PEER4, 5060, PSAP4, 5060, random.Random(3))
    (wire,) = channel.send(False, b"x" * 100, "RTP")
    rec = parse_ip(wire.data)
    assert rec.frag == NOT_FRAGMENT and IP(wire.data).flags.DF and (rec.sport, rec.dport) == (5060, 5060)
    assert rec.payload == b"x" * 100 and wire.from_a is False


def test_responses_follow_rfc3261_8_2_6():
    dialog = _dialog()
    invite = _emergency(dialog)
    trying = parse_sip(bytes(dialog.response(invite, 100, "Trying")))
    ok = parse_sip(bytes(dialog.response(invite, 200, "OK", body=b"v=0\r\n", content_type="application/sdp")))
    req = parse_sip(bytes(invite))
    for resp in (trying, ok):
        for name in ("via", "from", "call-id", "cseq"):
            assert resp.header(name) == req.header(name)
    assert ";tag=" not in trying.header("to") and ";tag=" in ok.header("to")
    assert ok.header("contact") == f"<sip:psap@{PSAP4}:5060;transport=udp>"
    assert ok.content_type == "application/sdp" and ok.body == b"v=0\r\n"


def test_ack_and_bye_are_in_dialog():
    dialog = _dialog()
    invite = parse_sip(bytes(_emergency(dialog)))
    ok = parse_sip(bytes(dialog.response(SIP(bytes(_emergency(_dialog()))), 200, "OK")))
    ack = parse_sip(bytes(dialog.ack()))
    assert ack.uri == ok.header("contact")[1:-1]                   # to the remote target (12.2.1.1)
    assert ack.cseq == (invite.cseq[0], "ACK") and ack.call_id == invite.call_id
    assert ack.header("via") != invite.header("via")               # a new transaction: new branch
    caller_bye = parse_sip(bytes(dialog.bye(True)))
    assert caller_bye.cseq == (invite.cseq[0] + 1, "BYE")
    assert caller_bye.header("from") == invite.header("from")
    callee_bye = parse_sip(bytes(dialog.bye(False)))
    assert callee_bye.uri == f"sip:+15085550100@{PEER4}:5060;transport=udp"
    assert callee_bye.header("to") == invite.header("from")       # From/To swapped (12.2.1.1)
    assert callee_bye.header("from").startswith("<urn:service:sos>;tag=")
    assert callee_bye.header("via").startswith(f"SIP/2.0/UDP {PSAP4}:5060;branch=z9hG4bK")


def test_options_and_message():
    dialog = b.SipDialog("tls", PEER6, 5061, PSAP6, 5061, f"sips:{b.hostport(PSAP6, 5061)}", rng=random.Random(2))
    options = parse_sip(bytes(dialog.options()))
    assert options.method == "OPTIONS" and options.header("via").startswith("SIP/2.0/TLS [2001:db8:100::7]:5061")
    assert options.header("contact") == f"<sips:+15085550100@[{PEER6}]:5061;transport=tls>"
    ok = parse_sip(bytes(dialog.response(dialog.options(), 200, "OK")))
    assert ok.status == 200 and ok.cseq[1] == "OPTIONS" and ok.header("allow")
    message = parse_sip(bytes(dialog.message("help")))
    assert message.method == "MESSAGE" and message.content_type == "text/plain" and message.body == b"help"


def _check_tcp(wires):
    """Every segment's seq is what its sender sent so far, its ack what it received so far."""
    isn, nxt = {}, {}
    for w in wires:
        rec = parse_ip(w.data)
        side = w.from_a
        seq, ack = struct.unpack_from("!II", rec.data, rec.l4_offset + 4)
        if rec.tcp_flags & TCP_SYN:
            isn[side] = seq
            nxt[side] = seq
        assert seq == nxt[side], (w.label, seq, nxt[side])
        if rec.tcp_flags & TCP_ACK:
            assert ack == nxt[not side], (w.label, ack, nxt[not side])
        nxt[side] = (seq + len(rec.payload) + bool(rec.tcp_flags & TCP_SYN) + bool(rec.tcp_flags & TCP_FIN)) & 0xFFFFFFFF
    return nxt


@settings(max_examples=30)
@given(st.sampled_from([(PEER4, PSAP4), (PEER6, PSAP6)]), st.integers(0, 2 ** 32 - 1),
       st.lists(st.tuples(st.booleans(), st.integers(1, 5000)), max_size=6), st.booleans(), st.booleans())
def test_tcp_connection_seq_ack_consistent(addrs, seed, messages, closer, tls):
    peer, psap = addrs
    conn = (b.TlsConnection if tls else b.TcpConnection)(peer, 40000, psap, 5061, random.Random(seed))
    wires = conn.open()
    assert [w.label for w in wires[:3]] == ["SYN", "SYN-ACK", "TCP ACK"]
    for from_a, size in messages:
        sent = conn.send(from_a, b"m" * size, "MSG")
        data = [w for w in sent if w.label == "MSG"]
        assert all(len(parse_ip(w.data).payload) <= conn.mss for w in data)
        assert parse_ip(data[-1].data).tcp_flags & 0x08     # PSH on the last segment
        wires += sent
    wires += conn.close(closer)
    assert [parse_ip(w.data).tcp_flags & TCP_FIN != 0 for w in wires[-3:]] == [True, True, False]
    _check_tcp(wires)


def test_tcp_stream_carries_the_sip_messages_in_order():
    conn = b.TcpConnection(PEER4, 40000, PSAP4, 5060, random.Random(1))
    dialog = _dialog(transport="tcp")
    invite = _emergency(dialog)
    wires = conn.open() + b.send_sip(conn, True, invite, "INVITE") + \
        b.send_sip(conn, False, dialog.response(invite, 180, "Ringing"), "180")
    stream = b"".join(parse_ip(w.data).payload for w in wires if w.from_a)
    messages, rest = split_sip_stream(stream)
    assert [m.method for m in messages] == ["INVITE"] and rest == b""
    assert len([w for w in wires if w.label == "INVITE"]) == 3     # 3.6 KB in segments of one MSS


def test_tls_records_frame_the_sip_lengths():
    conn = b.TlsConnection(PEER4, 40000, PSAP4, 5061, random.Random(1))
    handshake = conn.open()
    invite = bytes(_emergency(_dialog(transport="tls")))
    sent = conn.send(True, invite, "INVITE")
    client_stream = b"".join(parse_ip(w.data).payload for w in handshake + sent if w.from_a)
    server_stream = b"".join(parse_ip(w.data).payload for w in handshake if not w.from_a)
    client, server = _records(client_stream), _records(server_stream)
    assert client[0][:2] == (22, 0x0301) and client[0][2][0] == 1            # ClientHello
    assert server[0][0] == 22 and server[0][2][0] == 2                       # ServerHello
    assert [r[0] for r in server[1:]] == [20, 23] and [r[0] for r in client[1:3]] == [20, 23]
    app = client[3:]
    assert all(t == 23 and v == 0x0303 for t, v, _ in app)
    assert sum(len(body) for _, _, body in app) == len(invite) + 17           # AEAD overhead
    assert invite[:20] not in client_stream                                  # opaque, not the plaintext


def _records(stream: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(stream):
        ctype, version, length = struct.unpack_from("!BHH", stream, pos)
        out.append((ctype, version, stream[pos + 5:pos + 5 + length]))
        pos += 5 + length
    assert pos == len(stream)
    return out


def test_rtp_template_and_rtcp_sender_report():
    rtp = b.rtp_template(PEER4, 16384, PSAP4, 32766, 0x1234)
    pkt = IP(rtp)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (16384, 32766) and len(pkt[UDP].payload) == 12 + 160
    rtcp = b.rtcp_template(rtp, 0x1234, "1234@198.51.100.7")
    got = IP(rtcp)
    assert (got[UDP].sport, got[UDP].dport) == (16385, 32767)
    report = RTCP(bytes(got[UDP].payload))
    assert report.packet_type == 200 and report.sourcesync == 0x1234
    sdes = RTCP(bytes(report.payload))
    assert sdes.packet_type == 202
    assert sdes.sdes_chunks[0].items[0].value == b"1234@198.51.100.7"
    assert len(bytes(got[UDP].payload)) % 4 == 0
    compound = b.rtcp_compound(7, ntp=1 << 32, rtp_ts=160, packets=3, octets=480, cname="x")
    info = RTCP(compound).sender_info
    assert (info.ntp_timestamp, info.rtp_timestamp, info.sender_packet_count, info.sender_octet_count) == \
        (1 << 32, 160, 3, 480)


def test_msrp_exchange_on_a_connection():
    conn = b.TcpConnection(PEER4, 40000, PSAP4, 2855, random.Random(1))
    wires = conn.open() + b.msrp_exchange(conn, True, to_path="msrp://p:2855/a;tcp", from_path="msrp://q:4000/b;tcp",
                                          text="help", rng=random.Random(1))
    labels = [w.label for w in wires[3:]]
    assert labels == ["MSRP SEND", "MSRP 200 OK", "TCP ACK"]
    send = parse_ip(wires[3].data).payload
    assert send.startswith(b"MSRP ") and b"\r\n\r\nhelp\r\n-------" in send
    _check_tcp(wires)


@pytest.mark.parametrize("method", ["INVITE", "ACK", "BYE", "OPTIONS", "MESSAGE", "REGISTER", "cancel"])
def test_example_sip_message(method):
    src, dst = ipaddress.ip_address(PEER4), ipaddress.ip_address(PSAP4)
    payload = b.example_sip_message(method, src, 5060, dst, 5060)
    msg = parse_sip(payload)
    assert msg.method == method.upper()
    assert payload == b.example_sip_message(method, src, 5060, dst, 5060)   # deterministic
    if method == "INVITE":
        assert msg.uri == "urn:service:sos" and b"<presence" in msg.body

