"""Call reconstruction: SIP over UDP (fragmented), TCP (reassembled), TLS, dialogs, media, verdicts.

Packets are built with Scapy here, the synthesiser's flows and the engine's
verdicts come from the project's own modules, and the real captures in
traces/ (SIPp between network namespaces, and an NG911 test lab's) are read
from disk; tshark, where installed, counts their SIP messages independently.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.packet import Raw

from fwtest.engine.verdict import Verdict
from fwtest.rules import load_ruleset
from fwtest.traffic.calls import looks_like_sip, reconstruct
from fwtest.traffic.pcap import read_frames, read_records
from fwtest.traffic.record import PacketRecord, parse_ip

ROOT = Path(__file__).resolve().parents[2]
SIPP = ROOT / "traces" / "sipp"
NG911 = ROOT / "traces" / "ng911-lab"
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="needs tshark (apt-get install tshark)")

PEER4, PSAP4 = "198.51.100.7", "203.0.113.10"
PEER6, PSAP6 = "2001:db8:100::7", "2001:db8:911::10"

# -- building SIP packets ---------------------------------------------------------------------------


def sip_bytes(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start] + [f"{n}: {v}" for n, v in headers] + [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def sdp(address: str, port: int, *, msrp: int | None = None) -> bytes:
    family = "IP6" if ":" in address else "IP4"
    lines = ["v=0", f"o=- 1 1 IN {family} {address}", "s=-", f"c=IN {family} {address}", "t=0 0",
             f"m=audio {port} RTP/AVP 0", "a=rtpmap:0 PCMU/8000"]
    if msrp is not None:
        lines += [f"m=message {msrp} TCP/MSRP *", f"a=path:msrp://{address}:{msrp}/s1;tcp"]
    return ("\r\n".join(lines) + "\r\n").encode()


PIDF = (b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
        b'xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10" entity="pres:caller@example.net">'
        + b"<tuple id='t'><status><gp:geopriv><gp:location-info>" + b"<pad/>" * 300
        + b"</gp:location-info></gp:geopriv></status></tuple></presence>")


def multipart(offer: bytes) -> tuple[str, bytes]:
    body = (b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + offer
            + b"\r\n--b1\r\nContent-Type: application/pidf+xml\r\nContent-ID: <loc@example.net>\r\n\r\n"
            + PIDF + b"\r\n--b1--\r\n")
    return "multipart/mixed;boundary=b1", body


class Dialog:
    """Headers of one dialog, so messages can be written the way a user agent writes them."""

    def __init__(self, call_id: str, caller_tag: str = "c1", callee_tag: str = "p1") -> None:
        self.call_id = call_id
        self.caller = f"<sip:caller@example.net>;tag={caller_tag}"
        self.callee = f"<urn:service:sos>;tag={callee_tag}"

    def request(self, method: str, cseq: int, *, by_caller: bool = True, initial: bool = False,
                body: bytes = b"", ctype: str | None = None, uri: str = "urn:service:sos",
                extra: list[tuple[str, str]] | None = None) -> bytes:
        frm, to = (self.caller, self.callee) if by_caller else (self.callee, self.caller)
        if initial:
            to = "<urn:service:sos>"
        headers = [("Via", "SIP/2.0/UDP host;branch=z9hG4bK1"), ("From", frm), ("To", to),
                   ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")] + (extra or [])
        if ctype:
            headers.append(("Content-Type", ctype))
        return sip_bytes(f"{method} {uri} SIP/2.0", headers, body)

    def response(self, status: int, reason: str, cseq: int, method: str, *, to_caller: bool = True,
                 body: bytes = b"", tagged: bool = True) -> bytes:
        frm, to = (self.caller, self.callee) if to_caller else (self.callee, self.caller)
        if not tagged:
            to = to.split(";tag=")[0]
        headers = [("Via", "SIP/2.0/UDP host;branch=z9hG4bK1"), ("From", frm), ("To", to),
                   ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return sip_bytes(f"SIP/2.0 {status} {reason}", headers, body)


def ip(src: str, dst: str, **kw):
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, **kw)


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes, ts: float) -> PacketRecord:
    return parse_ip(bytes(ip(src, dst) / UDP(sport=sport, dport=dport) / Raw(payload)), ts)


def udp_fragments(src: str, sport: int, dst: str, dport: int, payload: bytes, ts: float,
                  ident: int) -> list[PacketRecord]:
    if ":" in src:
        pkt = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=ident) / UDP(sport=sport, dport=dport) / Raw(payload)
        frags = fragment6(pkt, 1280)
    else:
        frags = fragment(IP(src=src, dst=dst, id=ident) / UDP(sport=sport, dport=dport) / Raw(payload), 1480)
    return [parse_ip(bytes(f), ts) for f in frags]


def rtp(src: str, sport: int, dst: str, dport: int, ts: float, seq: int = 0) -> PacketRecord:
    header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + bytes(8)
    return udp(src, sport, dst, dport, header + b"\xff" * 160, ts)


def udp_call(peer: str = PEER4, psap: str = PSAP4, *, call_id: str = "call-1@example.net",
             rtp_each_way: int = 5, bye_by_caller: bool = True, reorder_fragments: bool = False,
             peer_rtp: int = 16384, psap_rtp: int = 24576, ident: int = 100) -> list[PacketRecord]:
    """An emergency call over UDP: fragmented INVITE (SDP + PIDF-LO), 100/180/200, ACK, RTP, BYE."""
    d = Dialog(call_id)
    ctype, body = multipart(sdp(peer, peer_rtp))
    invite = d.request("INVITE", 1, initial=True, body=body, ctype=ctype,
                       extra=[("Geolocation", "<cid:loc@example.net>"), ("Resource-Priority", "esnet.1")])
    frags = udp_fragments(peer, 5060, psap, 5060, invite, 1.0, ident)
    if reorder_fragments:
        frags = frags[::-1]
    out = frags + [
        udp(psap, 5060, peer, 5060, d.response(100, "Trying", 1, "INVITE", tagged=False), 1.01),
        udp(psap, 5060, peer, 5060, d.response(180, "Ringing", 1, "INVITE"), 1.02),
        udp(psap, 5060, peer, 5060, d.response(200, "OK", 1, "INVITE", body=sdp(psap, psap_rtp)), 1.03),
        udp(peer, 5060, psap, 5060, d.request("ACK", 1), 1.04),
    ]
    for i in range(rtp_each_way):
        out.append(rtp(peer, peer_rtp, psap, psap_rtp, 1.1 + i * 0.02, i))
        out.append(rtp(psap, psap_rtp, peer, peer_rtp, 1.1 + i * 0.02, i))
    out.append(udp(peer, peer_rtp + 1, psap, psap_rtp + 1, b"\x81\xc8" + bytes(26), 1.5))   # RTCP
    if bye_by_caller:
        out += [udp(peer, 5060, psap, 5060, d.request("BYE", 2), 2.0),
                udp(psap, 5060, peer, 5060, d.response(200, "OK", 2, "BYE"), 2.01)]
    else:
        out += [udp(psap, 5060, peer, 5060, d.request("BYE", 1, by_caller=False), 2.0),
                udp(peer, 5060, psap, 5060, d.response(200, "OK", 1, "BYE", to_caller=False), 2.01)]
    return out


class TcpFlow:
    """One TCP connection, segments written with real sequence numbers."""

    def __init__(self, a: str, a_port: int, b: str, b_port: int, isn_a: int = 1000, isn_b: int = 5000):
        self.ends = {True: (a, a_port), False: (b, b_port)}
        self.seq = {True: isn_a, False: isn_b}

    def segment(self, from_a: bool, flags: str, data: bytes, ts: float, seq: int | None = None) -> PacketRecord:
        (src, sport), (dst, dport) = self.ends[from_a], self.ends[not from_a]
        s = self.seq[from_a] if seq is None else seq
        pkt = ip(src, dst) / TCP(sport=sport, dport=dport, flags=flags, seq=s & 0xFFFFFFFF,
                                 ack=self.seq[not from_a] & 0xFFFFFFFF) / Raw(data)
        if seq is None:
            self.seq[from_a] = (s + len(data) + (1 if "S" in flags or "F" in flags else 0)) & 0xFFFFFFFF
        return parse_ip(bytes(pkt), ts)

    def handshake(self, ts: float) -> list[PacketRecord]:
        return [self.segment(True, "S", b"", ts), self.segment(False, "SA", b"", ts + 0.001),
                self.segment(True, "A", b"", ts + 0.002)]

    def send(self, from_a: bool, data: bytes, ts: float, mss: int = 1400) -> list[PacketRecord]:
        return [self.segment(from_a, "PA", data[i:i + mss], ts) for i in range(0, len(data), mss)]


def tcp_call(peer: str = PEER4, psap: str = PSAP4, call_id: str = "tcp-1@example.net") -> list[PacketRecord]:
    d = Dialog(call_id)
    conn = TcpFlow(peer, 40000, psap, 5060)
    ctype, body = multipart(sdp(peer, 16384))
    out = conn.handshake(0.9)
    out += conn.send(True, d.request("INVITE", 1, initial=True, body=body, ctype=ctype), 1.0)
    out += conn.send(False, d.response(100, "Trying", 1, "INVITE", tagged=False)
                     + d.response(200, "OK", 1, "INVITE", body=sdp(psap, 24576)), 1.01)  # two in one segment
    out += conn.send(True, d.request("ACK", 1), 1.02)
    for i in range(3):
        out += [rtp(peer, 16384, psap, 24576, 1.1 + i / 50, i), rtp(psap, 24576, peer, 16384, 1.1 + i / 50, i)]
    out += conn.send(True, d.request("BYE", 2), 2.0)
    out += conn.send(False, d.response(200, "OK", 2, "BYE"), 2.01)
    return out


# -- verdicts -----------------------------------------------------------------------------------------

RULES = load_ruleset({"name": "t", "policy": "drop", "rules": [
    {"id": "allow-all", "action": "accept"},
    {"id": "drop-test", "action": "drop"},
]})


def verdicts(records: list[PacketRecord], dropped: set[int]) -> list[Verdict]:
    """Real Verdict objects naming real rules: the packets at ``dropped`` die by drop-test."""
    accept, drop = RULES.rule("allow-all"), RULES.rule("drop-test")
    return [Verdict("drop", drop, drop.source, "new") if i in dropped else Verdict("accept", accept, accept.source,
                                                                                     "new")
            for i in range(len(records))]


# -- UDP ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("reorder", [False, True])
def test_udp_call_with_fragmented_invite(family, reorder):
    peer, psap = (PEER4, PSAP4) if family == 4 else (PEER6, PSAP6)
    records = udp_call(peer, psap, reorder_fragments=reorder)
    assert sum(1 for r in records if r.frag) >= 2
    result = reconstruct(records)
    (call,) = result.calls
    assert call.call_id == "call-1@example.net" and call.request_uri == "urn:service:sos"
    assert call.transport == "udp" and call.family == family and call.final_status == 200
    assert (call.captured.set_up, call.captured.media_both_ways, call.captured.torn_down) == (True, True, True)
    assert [e.label for e in call.events] == ["INVITE", "100 Trying (INVITE)", "180 Ringing (INVITE)",
                                              "200 OK (INVITE)", "ACK", "BYE", "200 OK (BYE)"]
    assert [e.from_caller for e in call.events] == [True, False, False, False, True, True, False]
    (audio,) = call.media
    assert (audio.to_callee, audio.to_caller, audio.rtcp_to_callee) == (5, 5, 1)
    fmt = "{}:{}" if family == 4 else "[{}]:{}"
    assert audio.caller_endpoints == [fmt.format(peer, 16384)]
    assert audio.callee_endpoints == [fmt.format(psap, 24576)]
    assert result.stats.datagrams_reassembled == 1 and result.stats.fragments_given_up == 0
    assert call.under_rules is None and call.first_drop is None


def test_bye_from_the_psap_is_from_the_callee():
    (call,) = reconstruct(udp_call(bye_by_caller=False)).calls
    assert call.captured.torn_down
    assert [(e.label, e.from_caller) for e in call.events[-2:]] == [("BYE", False), ("200 OK (BYE)", True)]


def test_call_not_answered():
    d = Dialog("busy@example.net")
    records = [udp(PEER4, 5060, PSAP4, 5060, d.request("INVITE", 1, initial=True), 1.0),
               udp(PSAP4, 5060, PEER4, 5060, d.response(486, "Busy Here", 1, "INVITE"), 1.1),
               udp(PEER4, 5060, PSAP4, 5060, d.request("ACK", 1), 1.2)]
    (call,) = reconstruct(records).calls
    assert call.final_status == 486 and not call.captured.set_up and not call.captured.torn_down


def test_incomplete_fragments_are_given_up_and_counted():
    d = Dialog("lost@example.net")
    ctype, body = multipart(sdp(PEER4, 16384))
    frags = udp_fragments(PEER4, 5060, PSAP4, 5060, d.request("INVITE", 1, initial=True, body=body, ctype=ctype),
                          1.0, 7)
    result = reconstruct(frags[:-1])
    assert result.calls == [] and result.stats.fragments_given_up == len(frags) - 1


def test_sip_on_other_ports_is_found_by_its_start_line():
    d = Dialog("odd-port@example.net")
    records = [udp(PEER4, 15060, PSAP4, 5080, d.request("OPTIONS", 7, initial=True, uri="sip:psap@x"), 1.0),
               udp(PSAP4, 5080, PEER4, 15060, d.response(200, "OK", 7, "OPTIONS"), 1.1)]
    assert reconstruct(records).transactions[0].completed
    assert reconstruct(records, sniff_sip=False).transactions == []


def test_keepalives_and_non_sip_on_the_sip_port_are_counted():
    records = [udp(PEER4, 5060, PSAP4, 5060, b"\r\n\r\n", 1.0), udp(PEER4, 5060, PSAP4, 5060, b"\x00\x01junk", 1.1)]
    stats = reconstruct(records).stats
    assert (stats.sip_keepalives, stats.sip_not_parsed, stats.sip_messages) == (1, 1, 0)


def test_looks_like_sip():
    assert looks_like_sip(b"INVITE urn:service:sos SIP/2.0\r\nVia: x\r\n")
    assert looks_like_sip(b"\r\nSIP/2.0 200 OK\r\n")
    assert not looks_like_sip(b"POST /lost HTTP/1.1\r\nHost: ecrf\r\n")
    assert not looks_like_sip(b"HTTP/1.1 200 OK\r\n")
    assert not looks_like_sip(b"\x80\x00\x00\x01" + bytes(20))
    assert not looks_like_sip(b"\x16\x03\x01\x02\x00\x01")


# -- non-INVITE transactions ---------------------------------------------------------------------------

def test_options_and_message_are_transactions():
    ka = Dialog("ka@example.net")
    text = Dialog("text@example.net")
    records = [
        udp(PEER4, 5060, PSAP4, 5060, ka.request("OPTIONS", 1, initial=True, uri="sip:psap@x"), 1.0),
        udp(PSAP4, 5060, PEER4, 5060, ka.response(200, "OK", 1, "OPTIONS"), 1.01),
        udp(PEER4, 5060, PSAP4, 5060, ka.request("OPTIONS", 2, initial=True, uri="sip:psap@x"), 31.0),
        udp(PEER4, 5060, PSAP4, 5060, text.request("MESSAGE", 1, initial=True, body=b"help", ctype="text/plain",
                                                   uri="urn:service:sos"), 2.0),
    ]
    result = reconstruct(records)
    assert result.calls == []
    got = [(t.call_id, t.method, t.cseq, t.final_status, t.completed) for t in result.transactions]
    assert got == [("ka@example.net", "OPTIONS", 1, 200, True), ("ka@example.net", "OPTIONS", 2, None, False),
                   ("text@example.net", "MESSAGE", 1, None, False)]
    assert [e.label for e in result.transactions[0].events] == ["OPTIONS", "200 OK (OPTIONS)"]
    assert result.transactions[0].client == f"{PEER4}:5060"


def test_keepalive_transactions_under_the_rules():
    ka = Dialog("ka@example.net")
    records = []
    for cseq in (1, 2):
        records += [udp(PEER4, 5060, PSAP4, 5060, ka.request("OPTIONS", cseq, initial=True, uri="sip:psap@x"),
                        cseq * 30.0),
                    udp(PSAP4, 5060, PEER4, 5060, ka.response(200, "OK", cseq, "OPTIONS"), cseq * 30.0 + 0.01)]
    first, second = reconstruct(records, verdicts(records, {3})).transactions
    assert (first.completed_under_rules, first.first_drop) == (True, None)
    assert second.completed and not second.completed_under_rules
    assert (second.first_drop.packet, second.first_drop.what) == (3, "200 OK (OPTIONS)")


def test_in_dialog_requests_belong_to_the_call():
    records = udp_call(rtp_each_way=1)
    d = Dialog("call-1@example.net")
    records.insert(-2, udp(PSAP4, 5060, PEER4, 5060, d.request("MESSAGE", 1, by_caller=False, body=b"hi",
                                                               ctype="text/plain"), 1.9))
    result = reconstruct(records)
    assert result.transactions == [] and "MESSAGE" in [e.label for e in result.calls[0].events]


# -- TCP -----------------------------------------------------------------------------------------------

def test_tcp_call():
    result = reconstruct(tcp_call())
    (call,) = result.calls
    assert call.transport == "tcp"
    assert [e.label for e in call.events] == ["INVITE", "100 Trying (INVITE)", "200 OK (INVITE)", "ACK", "BYE",
                                              "200 OK (BYE)"]
    assert (call.captured.set_up, call.captured.media_both_ways, call.captured.torn_down) == (True, True, True)
    assert result.stats.sip_over_tcp == 6


messages_strategy = st.lists(st.sampled_from(["INVITE", "OPTIONS", "MESSAGE", "200", "180"]), min_size=1,
                             max_size=6)


@settings(max_examples=80)
@given(kinds=messages_strategy, cuts=st.lists(st.integers(1, 4000), max_size=12),
       isn=st.sampled_from([1000, 0xFFFFFF00, 0x7FFFFFF0]), seed=st.integers(0, 2**16),
       shuffle=st.booleans(), duplicate=st.booleans(), repack=st.none() | st.tuples(st.integers(0, 99),
                                                                                   st.integers(1, 500)))
def test_property_tcp_stream_framing(kinds, cuts, isn, seed, shuffle, duplicate, repack):
    """However the byte stream is cut into segments, reordered (within the window), duplicated,
    resent with other boundaries (overlapping what came before) or wrapped around 2^32, the
    messages come out once each, in order."""
    d = Dialog("stream@example.net")
    stream = b""
    labels = []
    for i, kind in enumerate(kinds, 1):
        if kind in ("200", "180"):
            stream += d.response(int(kind), "OK" if kind == "200" else "Ringing", i, "INVITE")
            labels.append(f"{kind} {'OK' if kind == '200' else 'Ringing'} (INVITE)")
        else:
            body = b"x" * (i * 97) if kind == "MESSAGE" else b""
            stream += d.request(kind, i, body=body, ctype="text/plain" if body else None)
            labels.append(kind)
    bounds = sorted({c % len(stream) for c in cuts} - {0})
    pieces = [(a, stream[a:b]) for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True)]
    if repack is not None and len(pieces) > 1:
        # a retransmission repacketised: piece i resent starting inside piece i-1, and the
        # original piece i lost from the capture
        i = 1 + repack[0] % (len(pieces) - 1)
        start, data = pieces[i]
        back = min(repack[1], start)
        pieces[i] = (start - back, stream[start - back:start + len(data)])
    conn = TcpFlow(PEER4, 40000, PSAP4, 5060, isn_a=isn)
    records = conn.handshake(0.0)
    segs = [conn.segment(True, "PA", data, 1.0, seq=(isn + 1 + off) & 0xFFFFFFFF) for off, data in pieces]
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(segs)
    if duplicate:
        segs += [segs[rng.randrange(len(segs))]]
    records += segs
    result = reconstruct(records)
    events = [e.label for t in result.transactions for e in t.events] + [
        e.label for c in result.calls for e in c.events]
    assert sorted(events) == sorted(labels)
    assert result.stats.sip_over_tcp == len(labels) and result.stats.tcp_gaps == 0


def test_tcp_capture_starting_mid_message_resynchronises():
    d = Dialog("mid@example.net")
    first = d.request("OPTIONS", 1, initial=True, uri="sip:psap@x")
    second = d.request("OPTIONS", 2, initial=True, uri="sip:psap@x")
    conn = TcpFlow(PEER4, 40000, PSAP4, 5060)
    records = [conn.segment(True, "PA", first[40:] + second, 1.0)]     # no SYN, mid-message
    result = reconstruct(records)
    assert [t.cseq for t in result.transactions] == [2] and result.stats.tcp_resyncs == 1


# -- TLS and MSRP ---------------------------------------------------------------------------------------

def test_tls_is_a_signalling_flow():
    conn = TcpFlow(PEER4, 40001, PSAP4, 5061)
    records = conn.handshake(1.0)
    records += conn.send(True, b"\x16\x03\x01\x00\x50" + bytes(80), 1.1)
    records += conn.send(False, b"\x16\x03\x03\x00\x40" + bytes(64), 1.2)
    result = reconstruct(records)
    assert result.calls == [] and result.transactions == []
    (flow,) = result.tls_flows
    assert (flow.client, flow.server, flow.handshake) == (f"{PEER4}:40001", f"{PSAP4}:5061", True)
    assert (flow.packets_to_server, flow.packets_to_client, flow.bytes_to_server, flow.bytes_to_client) == (
        3, 2, 85, 69)
    assert flow.data_both_ways
    judged = reconstruct(records, verdicts(records, {0}))
    assert judged.tls_flows[0].first_drop.what == "TCP handshake"
    assert judged.tls_flows[0].delivered_to_server == 2


def test_plain_sip_on_the_tls_port_is_read():
    d = Dialog("plain@example.net")
    conn = TcpFlow(PSAP4, 5061, PEER4, 5060)
    records = conn.handshake(1.0) + conn.send(True, d.request("INVITE", 1, initial=True), 1.1)
    result = reconstruct(records)
    assert len(result.calls) == 1 and result.tls_flows == []
    assert result.stats.sip_cleartext_on_tls_port == 1


def test_msrp_session_of_a_text_call():
    d = Dialog("text-call@example.net")
    sip = TcpFlow(PEER4, 40000, PSAP4, 5060)
    records = sip.handshake(0.5)
    records += sip.send(True, d.request("INVITE", 1, initial=True, body=sdp(PEER4, 16384, msrp=40100),
                                        ctype="application/sdp"), 1.0)
    records += sip.send(False, d.response(200, "OK", 1, "INVITE", body=sdp(PSAP4, 24576, msrp=2855)), 1.1)
    records += sip.send(True, d.request("ACK", 1), 1.2)
    msrp = TcpFlow(PEER4, 40100, PSAP4, 2855)     # the offerer connects to the answerer's path
    records += msrp.handshake(1.3)
    records += msrp.send(True, b"MSRP a1 SEND\r\nTo-Path: x\r\n\r\nhelp\r\n-------a1$\r\n", 1.4)
    records += msrp.send(False, b"MSRP a1 200 OK\r\n-------a1$\r\n", 1.5)
    records += msrp.send(False, b"MSRP b2 SEND\r\n\r\nwhere are you\r\n-------b2$\r\n", 1.6)
    (call,) = reconstruct(records).calls
    (session,) = call.msrp
    assert (session.to_callee, session.to_caller) == (1, 2)
    assert call.captured.media_both_ways


# -- media attribution ----------------------------------------------------------------------------------

def test_an_endpoint_shared_by_two_calls_is_told_apart_by_the_other_end():
    """A recorder leg reusing the PSAP's media port (SIPREC, as in an NG911 lab capture)."""
    records = udp_call(call_id="a@x", rtp_each_way=0, psap_rtp=24576, peer_rtp=16384, ident=1)
    d = Dialog("b@x", "r1", "r2")
    recorder = "203.0.113.50"
    records += [udp(PSAP4, 5060, recorder, 5060, d.request("INVITE", 1, initial=True, body=sdp(PSAP4, 24576),
                                                            ctype="application/sdp"), 3.0),
                udp(recorder, 5060, PSAP4, 5060, d.response(200, "OK", 1, "INVITE", body=sdp(recorder, 30000)),
                    3.1),
                udp(PSAP4, 5060, recorder, 5060, d.request("ACK", 1), 3.2)]
    for i in range(4):
        records += [rtp(PEER4, 16384, PSAP4, 24576, 4 + i, i), rtp(PSAP4, 24576, PEER4, 16384, 4 + i, i),
                    rtp(PSAP4, 24576, recorder, 30000, 4 + i, i)]
    a, b = reconstruct(records).calls
    assert (a.media[0].to_callee, a.media[0].to_caller) == (4, 4)
    assert (b.media[0].to_callee, b.media[0].to_caller) == (4, 0)


def proxied_call() -> tuple[list[PacketRecord], list[str]]:
    """Caller -> proxy -> PSAP, each message seen on both legs (same Call-ID and tags)."""
    d = Dialog("proxied@x")
    proxy = "198.51.100.1"
    legs = {True: [(PEER4, proxy), (proxy, PSAP4)], False: [(PSAP4, proxy), (proxy, PEER4)]}
    records, labels = [], []
    for i, (payload, by_caller, label) in enumerate([
            (d.request("INVITE", 1, initial=True), True, "INVITE"),
            (d.response(200, "OK", 1, "INVITE", body=sdp(PSAP4, 24576)), False, "200"),
            (d.request("ACK", 1), True, "ACK")]):
        for leg, (src, dst) in enumerate(legs[by_caller]):
            records.append(udp(src, 5060, dst, 5060, payload, 1.0 + i / 10 + leg / 100))
            labels.append(f"{label} leg {leg + 1}")
    return records, labels


def test_a_message_relayed_over_two_legs_must_cross_both():
    records, labels = proxied_call()
    assert reconstruct(records, verdicts(records, set())).calls[0].under_rules.set_up
    second_leg_invite = labels.index("INVITE leg 2")
    call = reconstruct(records, verdicts(records, {second_leg_invite})).calls[0]
    assert call.captured.set_up and not call.under_rules.set_up
    assert call.first_drop.packet == second_leg_invite


def test_b2bua_leg_keeps_the_caller_side():
    """A B2BUA relays the INVITE with the same Call-ID and a new From tag."""
    d1, d2 = Dialog("relay@x", "leg1", "p1"), Dialog("relay@x", "leg2", "p1")
    bcf = "198.51.100.1"
    records = [udp(PEER4, 5060, bcf, 5060, d1.request("INVITE", 1, initial=True, body=sdp(PEER4, 16384),
                                                      ctype="application/sdp"), 1.0),
               udp(bcf, 5060, PSAP4, 5060, d2.request("INVITE", 1, initial=True, body=sdp(bcf, 16500),
                                                      ctype="application/sdp"), 1.01),
               udp(PSAP4, 5060, bcf, 5060, d2.response(200, "OK", 1, "INVITE", body=sdp(PSAP4, 24576)), 1.1),
               udp(PSAP4, 5060, bcf, 5060, d2.request("BYE", 2, by_caller=False), 2.0)]
    (call,) = reconstruct(records).calls
    assert [e.from_caller for e in call.events] == [True, True, False, False]
    assert call.media[0].caller_endpoints == [f"{PEER4}:16384", f"{bcf}:16500"]
    assert call.media[0].callee_endpoints == [f"{PSAP4}:24576"]


# -- under the rules -----------------------------------------------------------------------------------

def test_dropped_answer_fails_the_call_and_names_the_packet_and_rule():
    records = udp_call()
    answer = next(i for i, r in enumerate(records) if b"SIP/2.0 200 OK" in r.payload and b"INVITE" in r.payload)
    call = reconstruct(records, verdicts(records, {answer})).calls[0]
    assert call.captured.set_up and not call.under_rules.set_up
    assert call.failed_under_rules == ["set up", "media to callee", "media to caller", "torn down"]
    drop = call.first_drop
    assert (drop.packet, drop.what, drop.verdict.rule.id) == (answer, "200 OK (INVITE)", "drop-test")
    assert "drop by rule drop-test" in drop.describe()
    assert [e.delivered for e in call.events][3] is False


def test_one_dropped_fragment_loses_the_invite():
    records = udp_call()
    second_fragment = next(i for i, r in enumerate(records) if r.frag == 2)
    call = reconstruct(records, verdicts(records, {second_fragment})).calls[0]
    assert not call.under_rules.set_up and call.first_drop.packet == second_fragment
    assert call.first_drop.what == "INVITE"


def test_a_retransmission_that_gets_through_delivers_the_message():
    records = udp_call()
    ack = next(i for i, r in enumerate(records) if r.payload.startswith(b"ACK"))
    records.insert(ack + 1, records[ack])            # the ACK sent twice; the first copy dies
    call = reconstruct(records, verdicts(records, {ack})).calls[0]
    assert call.under_rules.set_up and call.failed_under_rules == []
    assert call.first_drop.packet == ack


def test_dropped_rtp_clips_audio_without_failing_the_call():
    records = udp_call(rtp_each_way=5)
    first_rtp = next(i for i, r in enumerate(records) if r.dport == 24576)
    call = reconstruct(records, verdicts(records, {first_rtp})).calls[0]
    assert call.failed_under_rules == [] and call.under_rules.media_both_ways
    assert call.media_dropped == ["1 of 5 media packets to callee"]
    assert call.first_drop.what == "RTP to callee"


def test_all_rtp_one_way_dropped_is_one_way_audio():
    records = udp_call(rtp_each_way=5)
    inbound = {i for i, r in enumerate(records) if r.dport == 24576}
    call = reconstruct(records, verdicts(records, inbound)).calls[0]
    assert call.failed_under_rules == ["media to callee"]


def test_dropped_tcp_segment_breaks_the_rest_of_its_direction():
    records = tcp_call()
    invite = next(i for i, r in enumerate(records) if r.payload.startswith(b"INVITE"))
    call = reconstruct(records, verdicts(records, {invite})).calls[0]
    assert not call.under_rules.set_up
    delivered = {e.label: e.delivered for e in call.events}
    # caller -> PSAP carries INVITE, ACK and BYE: all after the hole; the other direction is intact
    assert delivered == {"INVITE": False, "100 Trying (INVITE)": True, "200 OK (INVITE)": True, "ACK": False,
                         "BYE": False, "200 OK (BYE)": True}
    assert call.first_drop.packet == invite and call.first_drop.what == "TCP segment before INVITE"


def test_dropped_syn_breaks_the_connection():
    records = tcp_call()
    call = reconstruct(records, verdicts(records, {0})).calls[0]
    assert not any(e.delivered for e in call.events)
    assert call.first_drop.what == "TCP handshake" and call.first_drop.packet == 0


def test_verdicts_must_match_records():
    records = udp_call()
    with pytest.raises(ValueError):
        reconstruct(records, verdicts(records, set())[:-1])


# -- bounded memory ---------------------------------------------------------------------------------------

def test_memory_does_not_grow_with_media_packets():
    setup = udp_call(rtp_each_way=0)
    template = rtp(PEER4, 16384, PSAP4, 24576, 0.0)

    def stream(n):
        yield from setup
        for i in range(n):
            yield template._replace(ts=3.0 + i * 0.02)

    tracemalloc.start()
    try:
        result = reconstruct(stream(50_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.calls[0].media[0].to_callee == 50_000
    assert peak < 2 * 2**20


# -- the synthesiser's flows: reconstruction tells the same story ---------------------------------------------

@pytest.fixture(scope="module")
def synthetic_flows():
    from fwtest.profile import load_profile
    from fwtest.traffic.synth import synthesize

    return synthesize(load_profile(ROOT / "rulesets" / "psap-edge.profile.yaml"))


def test_synthesised_flows_reconstruct_as_what_they_are(synthetic_flows):
    seen = set()
    for flow in synthetic_flows:
        result = reconstruct([step.record for step in flow.steps])
        seen.add(flow.flow)
        if flow.transport == "tls":
            assert result.calls == [] and result.transactions == [] and result.tls_flows
            assert all(f.data_both_ways for f in result.tls_flows)
        elif flow.flow in ("emergency-call", "callback", "surge", "text"):
            (call,) = result.calls
            assert (call.captured.set_up, call.captured.media_both_ways, call.captured.torn_down) == (
                True, True, True), flow.instance
            if flow.flow == "text":
                assert call.msrp and [t.method for t in result.transactions] == ["MESSAGE"]
            # the caller is the side the flow starts from: peers for emergency calls, the PSAP for callbacks
            first = flow.steps[0].record
            assert call.caller.startswith(first.addr("src").join("[]") if first.family == 6 else first.addr("src"))
        elif flow.flow == "options-keepalive":
            assert result.calls == [] and result.transactions
            assert all(t.method == "OPTIONS" and t.completed for t in result.transactions)
    assert {"emergency-call", "callback", "options-keepalive", "text"} <= seen


def test_surge_on_one_timeline(synthetic_flows):
    surge = [f for f in synthetic_flows if f.flow == "surge"]
    records = sorted((s.record for f in surge for s in f.steps), key=lambda r: r.ts)
    calls = reconstruct(records).calls
    assert len(calls) == len(surge) >= 50
    assert all(c.captured.set_up and c.captured.media_both_ways and c.captured.torn_down for c in calls)


# -- real captures: SIPp between network namespaces ------------------------------------------------------

# capture -> (calls, BYE from the PSAP?, OPTIONS transactions, datagrams reassembled, SIP messages)
SIPP_EXPECTED = {
    "emergency-udp-v4.pcap": (2, False, 1, 2, 16),
    "emergency-tcp-v4-ns.pcap": (2, True, 0, 0, 14),
    "emergency-udp-v6.pcapng": (1, True, 0, 1, 7),
    "emergency-tcp-v6-sll.pcap": (1, False, 0, 0, 7),
}


def test_every_sipp_capture_is_expected():
    assert sorted(p.name for p in SIPP.glob("*.pcap*")) == sorted(SIPP_EXPECTED)


@pytest.mark.parametrize("name", sorted(SIPP_EXPECTED))
def test_sipp_captures_reconstruct(name):
    calls, psap_hangs_up, options, reassembled, messages = SIPP_EXPECTED[name]
    result = reconstruct(read_frames(SIPP / name, on_error="raise"), numbered=True)
    assert len(result.calls) == calls
    for call in result.calls:
        assert call.request_uri == "urn:service:sos" and call.final_status == 200
        assert (call.captured.set_up, call.captured.media_both_ways, call.captured.torn_down) == (True, True, True)
        assert call.caller.startswith(("198.51.100.10:", "[2001:db8:100::10]:"))
        (audio,) = call.media
        assert audio.to_callee == audio.to_caller == 50         # one second of 20 ms PCMU, echoed
        bye = next(e for e in call.events if e.label == "BYE")
        assert bye.from_caller is not psap_hangs_up
    assert [(t.method, t.completed) for t in result.transactions] == [("OPTIONS", True)] * options
    assert result.stats.datagrams_reassembled == reassembled
    assert result.stats.sip_messages == messages and result.stats.sip_not_parsed == 0


@needs_tshark
@pytest.mark.parametrize("name", sorted(SIPP_EXPECTED))
def test_sipp_sip_counts_agree_with_tshark(name):
    assert tshark_sip_frames(SIPP / name) == SIPP_EXPECTED[name][4]


def tshark_sip_frames(path: Path) -> int:
    out = subprocess.run([TSHARK, "-r", str(path), "-o", "tcp.analyze_sequence_numbers:FALSE", "-Y",
                          "sip and not icmp", "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


@pytest.fixture(scope="module")
def engine_replay():
    from fwtest.engine import replay

    return replay


def judge(engine_replay, name: str, ruleset: str):
    records = list(read_records(SIPP / name, on_error="raise"))
    verdict_list = engine_replay(load_ruleset(ROOT / "rulesets" / ruleset), records)
    return reconstruct(records, verdict_list)


@pytest.mark.parametrize("name", sorted(SIPP_EXPECTED))
def test_sipp_captures_pass_the_reference_ruleset(engine_replay, name):
    result = judge(engine_replay, name, "psap-edge.yaml")
    for call in result.calls:
        assert call.under_rules == call.captured and call.first_drop is None and call.media_dropped == []
    assert all(t.completed_under_rules for t in result.transactions)


ALL_LOST = ["set up", "media to callee", "media to caller", "torn down"]


@pytest.mark.parametrize("ruleset, failing", [
    # TCP signalling closed: the TCP calls never set up (so no media, no BYE); the SYN dies first
    ("broken/sip-tcp-tls-missing.yaml", {"tcp": True, "udp": False}),
    # IPv6 forgotten: every IPv6 call is lost
    ("broken/ipv6-forgotten.yaml", {4: False, 6: True}),
])
def test_sipp_captures_under_broken_rulesets(engine_replay, ruleset, failing):
    for name in SIPP_EXPECTED:
        result = judge(engine_replay, name, ruleset)
        for call in result.calls:
            key = call.transport if "udp" in failing else call.family
            if failing[key]:
                assert call.failed_under_rules == ALL_LOST, (name, call.call_id)
                assert call.first_drop.verdict.rule.id == "drop-rest"
                assert call.first_drop.verdict.source.file.endswith(ruleset.split("/")[-1])
                if ruleset.endswith("sip-tcp-tls-missing.yaml"):
                    assert call.first_drop.what == "TCP handshake"
            else:
                assert call.failed_under_rules == [] and call.first_drop is None, (name, ruleset)


def test_stateless_fragments_live_or_die_by_the_bytes_read_as_ports(engine_replay):
    # Without conntrack, nf_tables reads a later fragment's "ports" from its first
    # bytes (IPv4) or the IPv6 header (fwtest.engine.packet.later_fragment_ports).
    # The IPv6 INVITE's later fragments match no port rule and die at drop-rest;
    # the IPv4 ones carry SDP text whose first bytes read as a port in the RTP
    # range, so rtp-in lets them through: such a filter passes calls by accident.
    v6 = judge(engine_replay, "emergency-udp-v6.pcapng", "broken/fragments-stateless.yaml")
    assert v6.calls and all(c.failed_under_rules == ALL_LOST for c in v6.calls)
    assert all(c.first_drop.what == "INVITE" and c.first_drop.record.frag == 2 for c in v6.calls)
    v4 = judge(engine_replay, "emergency-udp-v4.pcap", "broken/fragments-stateless.yaml")
    assert v4.calls and all(c.failed_under_rules == [] for c in v4.calls)


def test_narrowed_rtp_range_drops_the_first_packets_to_the_psap(engine_replay):
    # The PSAP answers on 24576, outside the narrowed 10000-20000: the caller's first RTP packets
    # die at drop-rest until the PSAP's own audio (inside the range) opens the conntrack entry.
    result = judge(engine_replay, "emergency-udp-v4.pcap", "broken/rtp-range-narrowed.yaml")
    assert result.calls
    for call in result.calls:
        assert call.first_drop.what == "RTP to callee" and call.first_drop.verdict.rule.id == "drop-rest"
        assert call.media_dropped and call.media_dropped[0].endswith("media packets to callee")


# -- real captures: the NG911 lab -------------------------------------------------------------------------

# file -> (calls as (set up, media both ways, torn down, final status), transactions as (method, status),
#          TLS flows, SIP messages); SIP messages agree with tshark (test below) except where noted.
NG911_EXPECTED = {
    "BCF_001_artem.success.pcap": ([(False, False, False, 504)], {("OPTIONS", None): 234, ("OPTIONS", 200): 2},
                                   3, 1170),
    "BCF_005_bcf_005_pass.pcap": ([(False, False, False, None)] * 2, {("MESSAGE", None): 2}, 0, 10),
    "BCF_006_BYE_ACK_BCF_006_pass.pcap": ([(True, False, True, 200)], {}, 0, 10),
    "BCF_010_BCF_010_tls_sip.pcap": ([], {}, 2, 0),
    "CHFE_009_CHFE_9_pass_all_fields.pcap": ([(True, True, True, 200)], {}, 0, 5),
    "CHFE_011_CHFE_011_pass.pcap": ([(True, True, True, 200), (True, False, False, 200)], {}, 0, 8),
    "CHFE_014_Variation_1_04_sip_invite_failed_from_ESRP_no_closing_boundary.pcap": (
        [(False, False, False, 400)], {}, 0, 3),
    "CHFE_014_Variation_2_01_sip_invite_success_from_ESRP_complex_multipart_mixed_fixed.pcap": (
        [(False, False, False, 200)], {}, 0, 4),
    "ECRF_LVF_001_TC_ECRF_LVF_001_pass.pcap": ([], {}, 0, 0),
    "ESRP_002_TC_ESRP_002_SIP_INVITE_EMERGENCY_SINGLE_pass.pcap": ([(False, False, False, None)] * 2, {}, 0, 2),
    # 8 interfaces of several machines merged: tshark counts 12 SIP frames. Copies of a segment
    # on a second interface (same connection, same sequence numbers) are not new messages: 6
    # messages on 3 legs. One leg's whole connection shows up again 6.8 s later (another
    # machine's clock), SYN to FIN: a new connection, so its 2 messages count again.
    "ESRP_009_MESSAGE_ESRP_009_pass.pcap": ([], {("MESSAGE", 200): 1}, 0, 8),
}


@pytest.mark.parametrize("name", sorted(NG911_EXPECTED))
def test_ng911_captures_reconstruct(name):
    calls, transactions, tls, messages = NG911_EXPECTED[name]
    result = reconstruct(read_frames(NG911 / name, on_error="raise"), numbered=True)
    assert [(c.captured.set_up, c.captured.media_both_ways, c.captured.torn_down, c.final_status)
            for c in result.calls] == calls
    got = {}
    for t in result.transactions:
        got[(t.method, t.final_status)] = got.get((t.method, t.final_status), 0) + 1
    assert got == transactions
    assert len(result.tls_flows) == tls
    assert result.stats.sip_messages == messages


def test_ng911_sos_calls_carry_location():
    """The emergency INVITEs of the lab are to urn:service:sos and their SDP is found next to the PIDF-LO."""
    result = reconstruct(read_frames(NG911 / "BCF_006_BYE_ACK_BCF_006_pass.pcap"), numbered=True)
    (call,) = result.calls
    assert call.request_uri == "urn:service:sos" and call.media[0].caller_endpoints == ["192.168.56.3:6000"]
    # a proxy in the capture: each message seen on two legs
    assert [e.label for e in call.events].count("BYE") == 2


@needs_tshark
@pytest.mark.parametrize("name", sorted(n for n in NG911_EXPECTED if not n.startswith("ESRP_009")))
def test_ng911_sip_counts_agree_with_tshark(name):
    assert tshark_sip_frames(NG911 / name) == NG911_EXPECTED[name][3]


@needs_tshark
def test_ng911_merged_capture_counts_explained():
    assert tshark_sip_frames(NG911 / "ESRP_009_MESSAGE_ESRP_009_pass.pcap") == 12
