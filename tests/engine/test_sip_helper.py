"""The SIP helper: RTP/RTCP pinholes from SDP, as nf_conntrack_sip makes them."""

from __future__ import annotations

import pytest
from engine_packets import (
    ACK,
    PSH,
    SYN,
    rule,
    ruleset,
    sip_invite,
    sip_message,
    sip_request,
    sip_response,
    tcp,
    udp,
)

from fwtest.engine import Engine, replay
from fwtest.rules.ir import Action, StringMatch

P, S = "198.51.100.7", "203.0.113.10"
P6, S6 = "2001:db8:100::7", "2001:db8:911::10"
MEDIA_SERVER = "198.51.100.200"


def rules(helpers=("sip",), extra=(), bases=()):
    """Media only through pinholes: related/established, SIP from the peers, nothing else."""
    return ruleset([*extra, rule("est", state=["established", "related"]),
                    rule("sip-udp", proto="udp", dport=5060, state=["new"]),
                    rule("sip-tcp", proto="tcp", dport=5060, state=["new"])],
                   policy="drop", conntrack=True, helpers=helpers, bases=bases)


def call_setup(peer=P, psap=S, peer_media=None, psap_media=None, prtp=20000, srtp=30000, t=0.0):
    return [udp(peer, 5060, psap, 5060, sip_invite(peer_media or peer, prtp), ts=t),
            udp(psap, 5060, peer, 5060, sip_response(200, "INVITE", media_addr=psap_media or psap, port=srtp),
                ts=t + 1)]


def verdicts(rs, records, **kw):
    return [(v.verdict, v.state) for v in replay(rs, records, **kw)]


def test_sdp_offer_and_answer_open_rtp_and_rtcp_both_ways():
    media = [udp(P, 20000, S, 30000, b"rtp", ts=2), udp(P, 20001, S, 30001, b"rtcp", ts=2.1),
             udp(S, 30001, P, 20001, b"rtcp", ts=2.2), udp(S, 30002, P, 20000, b"rtp", ts=2.3)]
    out = verdicts(rules(), call_setup() + media)
    assert out[:2] == [("accept", "new"), ("accept", "established")]
    # P's RTCP answer from S:30001 rides the entry RTCP made; S's RTP from another port is
    # the pinhole to P:20000 (any source port).
    assert out[2:] == [("accept", "related"), ("accept", "related"), ("accept", "established"),
                       ("accept", "related")]


def test_without_the_helper_rtp_is_new_and_dropped():
    out = verdicts(rules(helpers=()), call_setup() + [udp(P, 20000, S, 30000, b"rtp", ts=2)])
    assert out[-1] == ("drop", "new")


def test_related_only_from_the_other_party_signalling_address():
    out = verdicts(rules(), call_setup() + [udp("198.51.100.8", 20000, S, 30000, b"rtp", ts=2)])
    assert out[-1] == ("drop", "new")


def test_sdp_address_other_than_the_sender_opens_nothing():
    # sip_direct_media=1: the PSAP answers with a media server's address, not its own.
    out = verdicts(rules(), call_setup(psap_media="203.0.113.99") + [udp(P, 20000, "203.0.113.99", 30000, ts=2)])
    assert out[-1] == ("drop", "new")
    out = verdicts(rules(), call_setup(peer_media=MEDIA_SERVER) + [udp(S, 30000, MEDIA_SERVER, 20000, ts=2)])
    assert out[-1] == ("drop", "new")


def test_an_odd_sdp_port_expects_the_even_rtp_port_and_the_next():
    setup = [udp(P, 5060, S, 5060, sip_invite(P, 20000), ts=0),
             udp(S, 5060, P, 5060, sip_response(200, "INVITE", media_addr=S, port=30001), ts=1)]
    out = verdicts(rules(), setup + [udp(P, 1, S, 30000, ts=2), udp(P, 1, S, 30001, ts=2), udp(P, 1, S, 30002, ts=2)])
    assert [s for _, s in out[2:]] == ["related", "related", "new"]


def test_the_first_packet_uses_the_pinhole_up_even_if_dropped():
    drop_first = rule("drop-first", "drop", string=(StringMatch(b"FIRST"),))
    media = [udp(P, 20000, S, 30000, b"FIRST", ts=2), udp(P, 20000, S, 30000, b"rtp", ts=2.02)]
    out = verdicts(rules(extra=[drop_first]), call_setup() + media)
    assert out[-2:] == [("drop", "related"), ("drop", "new")]


def test_expectations_expire_after_three_minutes():
    out = verdicts(rules(), call_setup() + [udp(P, 20000, S, 30000, ts=1 + 179)])
    assert out[-1] == ("accept", "related")
    out = verdicts(rules(), call_setup() + [udp(P, 20000, S, 30000, ts=1 + 180)])
    assert out[-1] == ("drop", "new")


def test_bye_and_failed_invite_flush_the_expectations():
    bye = udp(P, 5060, S, 5060, sip_request("BYE", cseq=2), ts=1.5)
    assert verdicts(rules(), call_setup() + [bye, udp(P, 20000, S, 30000, ts=2)])[-1] == ("drop", "new")
    busy = [udp(P, 5060, S, 5060, sip_invite(P, 20000), ts=0),
            udp(S, 5060, P, 5060, sip_response(486, "INVITE"), ts=1)]
    assert verdicts(rules(), busy + [udp(S, 1, P, 20000, ts=2)])[-1] == ("drop", "new")


def test_provisional_response_sdp_opens_media():
    early = [udp(P, 5060, S, 5060, sip_invite(P, 20000), ts=0),
             udp(S, 5060, P, 5060, sip_response(180, "INVITE", media_addr=S, port=30000), ts=1)]
    assert verdicts(rules(), early + [udp(P, 20000, S, 30000, ts=2)])[-1] == ("accept", "related")


def test_media_port_below_1024_makes_the_helper_drop_the_invite():
    rs = rules()
    (v,) = replay(rs, [udp(P, 5060, S, 5060, sip_invite(P, 1000))])
    assert v.verdict == "drop" and v.rule is None
    assert v.source == rs.conntrack.source and "below 1024" in v.reason
    assert [r.id for r in v.trace] == ["sip-udp"]


def test_sdp_without_connection_address_makes_the_helper_drop():
    sdp = b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n"
    msg = sip_message("INVITE urn:service:sos SIP/2.0", "c1", "1 INVITE", sdp, "application/sdp")
    (v,) = replay(rules(), [udp(P, 5060, S, 5060, msg)])
    assert v.verdict == "drop" and "connection address" in v.reason


def test_request_without_cseq_is_dropped_by_the_helper():
    msg = b"INVITE urn:service:sos SIP/2.0\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    (v,) = replay(rules(), [udp(P, 5060, S, 5060, msg)])
    assert v.verdict == "drop" and "CSeq" in v.reason
    # OPTIONS is not a method the helper handles: no CSeq needed.
    msg = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    assert replay(rules(), [udp(P, 5060, S, 5060, msg)])[0].verdict == "accept"


def test_msrp_media_opens_nothing():
    invite = sip_invite(P, 2855, media="message", proto="TCP/MSRP")
    out = verdicts(rules(), [udp(P, 5060, S, 5060, invite, ts=0), udp(S, 1, P, 2855, ts=1)])
    assert out == [("accept", "new"), ("drop", "new")]


def test_video_and_image_media_are_expected_too():
    extra = "m=video 22000 RTP/AVP 96\r\nm=image 24000 udptl t38\r\n"
    invite = sip_invite(P, 20000, extra_sdp=extra)
    media = [udp(S, 1, P, 20000, ts=1), udp(S, 1, P, 22000, ts=1), udp(S, 1, P, 24001, ts=1)]
    assert [s for _, s in verdicts(rules(), [udp(P, 5060, S, 5060, invite)] + media)[1:]] == ["related"] * 3


def test_multipart_body_with_pidf_lo():
    sdp = (f"v=0\r\no=- 1 1 IN IP4 {P}\r\ns=-\r\nc=IN IP4 {P}\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n")
    pidf = '<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:caller@example.net"/>'
    body = ("--b1\r\nContent-Type: application/sdp\r\n\r\n" + sdp + "\r\n--b1\r\n"
            "Content-Type: application/pidf+xml\r\nContent-ID: <loc@example.net>\r\n\r\n" + pidf +
            "\r\n--b1--\r\n").encode()
    msg = sip_message("INVITE urn:service:sos SIP/2.0", "c1", "1 INVITE", body, "multipart/mixed;boundary=b1")
    out = verdicts(rules(), [udp(P, 5060, S, 5060, msg, ts=0), udp(S, 7, P, 20000, ts=1)])
    assert out[-1] == ("accept", "related")


def test_sip_over_tcp_complete_message_in_one_segment():
    invite = sip_invite(P, 20000)
    recs = [tcp(P, 40000, S, 5060, SYN, seq=100, ts=0),
            tcp(S, 5060, P, 40000, SYN | ACK, seq=900, ack=101, ts=0.01),
            tcp(P, 40000, S, 5060, ACK, seq=101, ack=901, ts=0.02),
            tcp(P, 40000, S, 5060, PSH | ACK, seq=101, ack=901, data=invite, ts=0.03),
            udp(S, 30000, P, 20000, b"rtp", ts=1)]
    assert verdicts(rules(), recs)[-1] == ("accept", "related")


def test_sip_over_tcp_message_split_across_segments_opens_nothing():
    # The kernel's helper reads each segment alone: half an INVITE is not parsed.
    invite = sip_invite(P, 20000)
    cut = len(invite) - 20
    recs = [tcp(P, 40000, S, 5060, SYN, seq=100, ts=0),
            tcp(S, 5060, P, 40000, SYN | ACK, seq=900, ack=101, ts=0.01),
            tcp(P, 40000, S, 5060, ACK, seq=101, ack=901, ts=0.02),
            tcp(P, 40000, S, 5060, PSH | ACK, seq=101, ack=901, data=invite[:cut], ts=0.03),
            tcp(P, 40000, S, 5060, PSH | ACK, seq=101 + cut, ack=901, data=invite[cut:], ts=0.04),
            udp(S, 30000, P, 20000, b"rtp", ts=1)]
    out = verdicts(rules(), recs)
    assert out[3:5] == [("accept", "established")] * 2
    assert out[-1] == ("drop", "new")


def test_tls_and_non_sip_ports_open_nothing():
    invite = sip_invite(P, 20000)
    rs = ruleset([rule("est", state=["established", "related"]), rule("sips", proto="tcp", dport=5061)],
                 policy="drop", conntrack=True, helpers=["sip"])
    recs = [tcp(P, 40000, S, 5061, SYN, seq=100, ts=0),
            tcp(S, 5061, P, 40000, SYN | ACK, seq=900, ack=101, ts=0.01),
            tcp(P, 40000, S, 5061, ACK, seq=101, ack=901, ts=0.02),
            tcp(P, 40000, S, 5061, PSH | ACK, seq=101, ack=901, data=invite, ts=0.03),  # even in clear text
            udp(S, 30000, P, 20000, b"rtp", ts=1)]
    assert verdicts(rs, recs)[-1] == ("drop", "new")


def test_sip_ports_choose_where_the_helper_listens():
    invite = sip_invite(P, 20000)
    rs = ruleset([rule("est", state=["established", "related"]), rule("sip", proto="udp", dport=5080)],
                 policy="drop", conntrack=True, helpers=["sip"])
    recs = [udp(P, 5080, S, 5080, invite, ts=0), udp(S, 1, P, 20000, ts=1)]
    assert verdicts(rs, recs)[-1] == ("drop", "new")
    assert verdicts(rs, recs, sip_ports=(5080,))[-1] == ("accept", "related")


def test_ct_helper_action_in_raw_assigns_the_helper():
    raw = ("raw", "prerouting", -300, "accept", [rule("ct-sip", Action("ct_helper", "sip"), dport=5080)])
    rs = ruleset([rule("est", state=["established", "related"]), rule("sip", proto="udp", dport=5080)],
                 policy="drop", conntrack=True, bases=[raw])
    recs = [udp(P, 5080, S, 5080, sip_invite(P, 20000), ts=0), udp(S, 1, P, 20000, ts=1)]
    assert verdicts(rs, recs)[-1] == ("accept", "related")


def test_helper_match_sees_the_master_connection_helper():
    rs = ruleset([rule("rtp-by-helper", state=["related"], helper="sip"),
                  rule("sip", proto="udp", dport=5060, state=["new"])], policy="drop", conntrack=True,
                 helpers=["sip"])
    recs = call_setup() + [udp(S, 30000, P, 20000, ts=2), udp(P, 20000, S, 30000, ts=2.5)]
    out = replay(rs, recs)
    # The 200 OK is established on the SIP entry itself (its own helper, no master): no match,
    # dropped -- so the helper never read its SDP and the PSAP's media has no pinhole.
    assert out[1].verdict == "drop"
    assert out[2].verdict == "accept" and out[2].rule.id == "rtp-by-helper"
    assert (out[3].verdict, out[3].state) == ("drop", "established")   # on S's entry, not related


def test_ipv6_call():
    media = [udp(P6, 20000, S6, 30000, ts=2), udp(S6, 9, P6, 20000, ts=2)]
    out = verdicts(rules(), call_setup(P6, S6) + media)
    assert out[2:] == [("accept", "related"), ("accept", "related")]


def test_at_most_four_audio_expectations_per_call_oldest_evicted():
    update = sip_invite(P, 22000, cseq=3).replace(b"INVITE urn:service:sos", b"UPDATE sip:psap@example.net") \
        .replace(b"3 INVITE", b"3 UPDATE")
    engine = Engine(rules())
    for r in call_setup():
        engine.feed(r)
    engine.feed(udp(P, 5060, S, 5060, update, ts=1.5))
    sip_conn = next(c for c in engine.conntrack.connections() if c.helper == "sip")
    assert len(sip_conn.expectations) == 4
    ports = sorted(e.dport for e in sip_conn.expectations)
    assert ports == [22000, 22001, 30000, 30001]   # P's first offer (20000/1) was evicted


@pytest.mark.parametrize("family", [4, 6])
def test_timeout_of_the_sip_entry_is_an_hour(family):
    peer, psap = (P, S) if family == 4 else (P6, S6)
    engine = Engine(rules())
    engine.feed(udp(peer, 5060, psap, 5060, sip_invite(peer, 20000), ts=0))
    (conn,) = engine.conntrack.connections()
    assert conn.helper == "sip" and conn.expires == 3600
