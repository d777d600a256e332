"""The engine's claims about the kernel, checked against the kernel.

Each case here is a semantic the engine models on purpose, from the kernel
sources, where a plausible model would get it wrong: the SIP helper's
direct-media rule, its drop of SDP ports below 1024, its per-segment TCP
parsing, expectations used up by a dropped packet, SYN/ACK without SYN,
silent rejects of fragments, ICMP errors as RELATED. The same records go
through the engine and through real netfilter (fwtest.oracle, in throw-away
network namespaces), verdict for verdict.

The oracle sends packets a millisecond apart, so no case depends on time.
"""

from __future__ import annotations

import pytest
from engine_packets import (
    ACK,
    PSH,
    SYN,
    frag_records,
    ip,
    rec,
    sip_invite,
    sip_message,
    sip_response,
    tcp,
    udp,
    udp_segment,
)

from fwtest.engine import replay
from fwtest.rules.native import ruleset_from_dict

pytestmark = pytest.mark.kernel

P, S = "198.51.100.1", "203.0.113.5"
P6, S6 = "2001:db8:100::1", "2001:db8:911::5"
IFACE = {"in": ("eth0", "eth1"), "out": ("eth1", "eth0")}

PINHOLES_ONLY = {
    "name": "pinholes", "policy": "drop",
    "conntrack": {"helpers": ["sip"]},
    "rules": [
        {"id": "est", "state": ["established", "related"], "action": "accept"},
        {"id": "sip-udp", "proto": "udp", "dport": 5060, "state": "new", "action": "accept"},
        {"id": "sip-tcp", "proto": "tcp", "dport": 5060, "state": "new", "action": "accept"},
    ],
}


@pytest.fixture(scope="module")
def kernel():
    from fwtest.oracle import KernelFirewall

    start = ruleset_from_dict({"name": "start", "policy": "accept", "rules": []})
    with KernelFirewall(start, backend="nft", sip_ports=(5060,)) as fw:
        yield fw


def stamped(steps):
    """(record, direction) pairs a millisecond apart, with the interfaces of their direction."""
    out = []
    for i, (record, direction) in enumerate(steps):
        iface_in, iface_out = IFACE[direction]
        out.append(rec(record.data, i * 0.001, iface_in, iface_out))
    return out, [d for _, d in steps]


def agree(kernel, rules: dict, steps, expected: list[str], backend: str = "nft"):
    ruleset = ruleset_from_dict(rules)
    records, directions = stamped(steps)
    model = [v.verdict for v in replay(ruleset, records, "forward", native_hook="forward")]
    kernel.load(ruleset, backend=backend)
    real = [v.verdict for v in kernel.replay(records, directions)]
    assert model == real, f"model {model} != kernel {real}"
    assert model == expected


def call(peer=P, psap=S, peer_media=None, psap_media=None):
    return [(udp(peer, 5060, psap, 5060, sip_invite(peer_media or peer, 20000)), "in"),
            (udp(psap, 5060, peer, 5060, sip_response(200, "INVITE", media_addr=psap_media or psap, port=30000)),
             "out")]


def test_sdp_offer_and_answer_open_media_both_ways(kernel):
    steps = call() + [(udp(P, 20000, S, 30000, b"\x80rtp"), "in"), (udp(S, 30002, P, 20000, b"\x80rtp"), "out"),
                      (udp(P, 20001, S, 30001, b"\x80rtcp"), "in")]
    agree(kernel, PINHOLES_ONLY, steps, ["accept"] * 5)


def test_sdp_address_other_than_the_sender_opens_nothing(kernel):
    steps = call(psap_media="203.0.113.200") + [(udp(P, 20000, "203.0.113.200", 30000, b"\x80rtp"), "in")]
    agree(kernel, PINHOLES_ONLY, steps, ["accept", "accept", "drop"])


def test_rtp_from_another_host_than_the_signalling_peer_is_new(kernel):
    steps = call() + [(udp("198.51.100.130", 20000, S, 30000, b"\x80rtp"), "in")]
    agree(kernel, PINHOLES_ONLY, steps, ["accept", "accept", "drop"])


def test_media_port_below_1024_makes_the_helper_drop_the_invite(kernel):
    steps = [(udp(P, 5060, S, 5060, sip_invite(P, 1000)), "in")]
    agree(kernel, PINHOLES_ONLY, steps, ["drop"])


def test_msrp_opens_nothing_but_the_invite_passes(kernel):
    invite = sip_invite(P, 2855, media="message", proto="TCP/MSRP")
    steps = [(udp(P, 5060, S, 5060, invite), "in"), (udp(S, 4000, P, 2855, b"x"), "out")]
    agree(kernel, PINHOLES_ONLY, steps, ["accept", "drop"])


def test_a_dropped_first_media_packet_uses_the_pinhole_up(kernel):
    rules = dict(PINHOLES_ONLY, rules=[{"id": "no-first", "string": "FIRST", "action": "drop"}]
                 + PINHOLES_ONLY["rules"])
    steps = call() + [(udp(P, 20000, S, 30000, b"FIRST"), "in"), (udp(P, 20000, S, 30000, b"\x80rtp"), "in")]
    agree(kernel, rules, steps, ["accept", "accept", "drop", "drop"], backend="iptables")   # nft has no string


def _tcp_invite(split: bool, family: int = 4):
    peer, psap = (P, S) if family == 4 else (P6, S6)
    invite = sip_invite(peer, 20000)
    steps = [(tcp(peer, 40000, psap, 5060, SYN, seq=100), "in"),
             (tcp(psap, 5060, peer, 40000, SYN | ACK, seq=900, ack=101), "out"),
             (tcp(peer, 40000, psap, 5060, ACK, seq=101, ack=901), "in")]
    if split:
        cut = len(invite) - 30
        steps += [(tcp(peer, 40000, psap, 5060, PSH | ACK, seq=101, ack=901, data=invite[:cut]), "in"),
                  (tcp(peer, 40000, psap, 5060, PSH | ACK, seq=101 + cut, ack=901, data=invite[cut:]), "in")]
    else:
        steps.append((tcp(peer, 40000, psap, 5060, PSH | ACK, seq=101, ack=901, data=invite), "in"))
    steps.append((udp(psap, 30000, peer, 20000, b"\x80rtp"), "out"))
    return steps


@pytest.mark.parametrize("family", [4, 6])
def test_sip_over_tcp_opens_media_from_a_whole_message(kernel, family):
    agree(kernel, PINHOLES_ONLY, _tcp_invite(split=False, family=family), ["accept"] * 5)


def test_sip_over_tcp_split_message_opens_nothing(kernel):
    agree(kernel, PINHOLES_ONLY, _tcp_invite(split=True), ["accept"] * 5 + ["drop"])


def test_multipart_sdp_with_pidf_lo(kernel):
    sdp = f"v=0\r\no=- 1 1 IN IP4 {P}\r\ns=-\r\nc=IN IP4 {P}\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n"
    body = ("--b1\r\nContent-Type: application/sdp\r\n\r\n" + sdp + "\r\n--b1\r\n"
            "Content-Type: application/pidf+xml\r\n\r\n<presence/>\r\n--b1--\r\n").encode()
    msg = sip_message("INVITE urn:service:sos SIP/2.0", "c1", "1 INVITE", body, "multipart/mixed;boundary=b1")
    steps = [(udp(P, 5060, S, 5060, msg), "in"), (udp(S, 31000, P, 20000, b"\x80rtp"), "out")]
    agree(kernel, PINHOLES_ONLY, steps, ["accept", "accept"])


def test_syn_ack_without_syn_is_invalid(kernel):
    steps = [(tcp(S, 5060, P, 40000, SYN | ACK, seq=900, ack=101), "out")]
    agree(kernel, PINHOLES_ONLY, steps, ["drop"])
    loose = {"name": "loose", "policy": "drop", "conntrack": True,
             "rules": [{"id": "new", "state": "new", "action": "accept"},
                       {"id": "est", "state": "established", "action": "accept"}]}
    steps = [(tcp(P, 40000, S, 5060, ACK, seq=500, ack=700), "in"), (tcp(S, 5060, P, 40000, ACK, seq=700, ack=500), "out")]
    agree(kernel, loose, steps, ["accept", "accept"])


def test_icmp_error_about_a_tracked_flow_is_related(kernel):
    invite = udp(P, 5060, S, 5060, b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    error = rec(ip(S, P, 1, bytes([3, 3, 0, 0, 0, 0, 0, 0]) + invite.data[:28]))
    agree(kernel, PINHOLES_ONLY, [(invite, "in"), (error, "out")], ["accept", "accept"])


def test_reject_of_fragments_is_silent_without_conntrack(kernel):
    rules = {"name": "reject", "policy": "accept", "rules": [{"id": "r", "action": "reject"}]}
    frags = frag_records(ip(P, S, 17, udp_segment(5060, 5060, b"x" * 1500)), 1000)
    agree(kernel, rules, [(f, "in") for f in frags], ["drop", "drop"])
    agree(kernel, rules, [(udp(P, 5060, S, 5060, b"x"), "in")], ["reject"])


def test_an_odd_sdp_port_expects_the_even_rtp_port_and_the_next(kernel):
    steps = [(udp(P, 5060, S, 5060, sip_invite(P, 20001)), "in"),
             (udp(S, 4000, P, 20000, b"\x80rtp"), "out"), (udp(S, 4001, P, 20001, b"\x80rtcp"), "out"),
             (udp(S, 4002, P, 20002, b"\x80rtp"), "out")]
    agree(kernel, PINHOLES_ONLY, steps, ["accept", "accept", "accept", "drop"])


def test_invite_without_cseq_is_dropped_by_the_helper(kernel):
    msg = b"INVITE urn:service:sos SIP/2.0\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    agree(kernel, PINHOLES_ONLY, [(udp(P, 5060, S, 5060, msg), "in")], ["drop"])


def test_bye_and_a_failed_invite_close_the_pinholes(kernel):
    bye = sip_message("BYE sip:psap@example.net SIP/2.0", "call-1", "2 BYE", b"", None)
    steps = call() + [(udp(P, 5060, S, 5060, bye), "in"), (udp(P, 20000, S, 30000, b"\x80rtp"), "in")]
    agree(kernel, PINHOLES_ONLY, steps, ["accept", "accept", "accept", "drop"])
    busy = [(udp(P, 5060, S, 5060, sip_invite(P, 20000)), "in"),
            (udp(S, 5060, P, 5060, sip_response(486, "INVITE")), "out"),
            (udp(S, 4000, P, 20000, b"\x80rtp"), "out")]
    agree(kernel, PINHOLES_ONLY, busy, ["accept", "accept", "drop"])


def test_helper_match_is_the_master_connections_helper(kernel):
    rules = {"name": "helper", "policy": "drop", "conntrack": {"helpers": ["sip"]},
             "rules": [{"id": "media", "state": "related", "helper": "sip", "action": "accept"},
                       {"id": "sip-in", "proto": "udp", "dport": 5060, "state": "new", "action": "accept"}]}
    steps = call() + [(udp(S, 4000, P, 20000, b"\x80rtp"), "out")]
    # The 200 OK rides the SIP entry (no master, no helper match): dropped; the RTP the INVITE expected passes.
    agree(kernel, rules, steps, ["accept", "drop", "accept"])


def test_out_of_window_data_is_invalid(kernel):
    rules = {"name": "win", "policy": "drop", "conntrack": True,
             "rules": [{"id": "inv", "state": "invalid", "action": "drop"}, {"id": "all", "action": "accept"}]}
    steps = [(tcp(P, 40000, S, 5060, SYN, seq=100), "in"),
             (tcp(S, 5060, P, 40000, SYN | ACK, seq=900, ack=101), "out"),
             (tcp(P, 40000, S, 5060, ACK, seq=101, ack=901), "in"),
             (tcp(P, 40000, S, 5060, PSH | ACK, seq=101 + 5_000_000, ack=901, data=b"late"), "in"),
             (tcp(S, 5060, P, 40000, ACK, seq=901, ack=101 + 7_000_000), "out"),
             (tcp(P, 40000, S, 5060, PSH | ACK, seq=101, ack=901, data=b"ok"), "in")]
    agree(kernel, rules, steps, ["accept", "accept", "accept", "drop", "drop", "accept"])
