"""Fragments: reassembled before the rules with conntrack, alone without it."""

from __future__ import annotations

import struct

from engine_packets import (
    frag_records,
    fragment,
    ip,
    ipv4,
    rec,
    rule,
    ruleset,
    sip_invite,
    udp_segment,
)

from fwtest.engine import Engine, replay
from fwtest.rules.ir import FragmentMatch, StringMatch

P, S = "198.51.100.7", "203.0.113.10"
P6, S6 = "2001:db8:100::7", "2001:db8:911::10"

BIG_INVITE = sip_invite(P, 20000, extra_sdp="a=x-pad:" + "z" * 1800 + "\r\n")


def invite_packet(src=P, dst=S):
    return ip(src, dst, 17, udp_segment(5060, 5060, BIG_INVITE))


def sip_in(conntrack=True, policy="drop", extra=()):
    return ruleset([*extra, rule("sip", proto="udp", dport=5060)], policy=policy, conntrack=conntrack)


def test_with_conntrack_fragments_share_the_datagram_verdict():
    for packet in (invite_packet(), invite_packet(P6, S6)):
        frags = frag_records(packet, 800)
        assert len(frags) == 3 and frags[1].sport == -1
        out = replay(sip_in(), frags)
        assert [v.verdict for v in out] == ["accept"] * 3
        assert all(v.rule.id == "sip" for v in out)


def test_without_conntrack_later_fragments_have_no_ports():
    frags = frag_records(invite_packet(), 800)
    out = replay(sip_in(conntrack=False), frags)
    assert [v.verdict for v in out] == ["accept", "drop", "drop"]
    assert out[1].rule is None and "policy drop" in out[1].reason
    # ... and a fragment rule is what lets them through.
    rs = sip_in(conntrack=False, extra=[rule("frags", fragment=FragmentMatch("later"))])
    assert [v.rule.id for v in replay(rs, frags)] == ["sip", "frags", "frags"]


def test_a_drop_fragments_rule_cannot_see_fragments_when_conntrack_reassembles():
    drop_frags = rule("drop-frag", "drop", fragment=FragmentMatch("any"))
    frags = frag_records(invite_packet(), 800)
    assert {v.verdict for v in replay(sip_in(extra=[drop_frags]), frags)} == {"accept"}
    assert [v.verdict for v in replay(sip_in(conntrack=False, extra=[drop_frags]), frags)] == ["drop"] * 3


def test_fragments_in_any_order():
    frags = frag_records(invite_packet(), 800)
    out = replay(sip_in(), [frags[2], frags[0], frags[1]])
    assert [v.verdict for v in out] == ["accept"] * 3


def test_a_dropped_datagram_drops_every_fragment():
    frags = frag_records(invite_packet(), 800)
    rs = sip_in(extra=[rule("no-sos", "drop", string=(StringMatch(b"urn:service:sos"),))])
    out = replay(rs, frags)
    assert [(v.verdict, v.rule.id) for v in out] == [("drop", "no-sos")] * 3


def test_string_match_sees_one_fragment_without_conntrack():
    # The token straddles the first fragment boundary (IP payload offset 800):
    # found in the reassembled datagram, in no fragment alone.
    token = b"UNIQUE-TOKEN"
    packet = ip(P, S, 17, udp_segment(5060, 5060, b"A" * 790 + token + b"B" * 800))
    frags = frag_records(packet, 800)
    assert all(token not in f.data for f in frags)
    drop_token = rule("s", "drop", string=(StringMatch(token),))
    rs_on = ruleset([drop_token], policy="accept", conntrack=True)
    assert [v.verdict for v in replay(rs_on, frags)] == ["drop"] * 3
    rs_off = ruleset([drop_token], policy="accept")
    assert [v.verdict for v in replay(rs_off, frags)] == ["accept"] * 3


def test_incomplete_datagram_times_out_with_a_reason():
    frags = frag_records(invite_packet(), 800)
    rs = sip_in(extra=[])
    engine = Engine(rs)
    assert engine.feed(frags[0]) == []
    assert engine.feed(frags[1]) == []
    later = rec(ip(P, S, 17, udp_segment(1, 2, b"x")), ts=31.0)     # 30 s later (ipfrag_time)
    decided = engine.feed(later)
    dropped = {i: v for i, v in decided if i in (0, 1)}
    assert set(dropped) == {0, 1}
    assert all(v.verdict == "drop" and v.rule is None and "never completed" in v.reason for v in dropped.values())
    assert "missing the last fragment" in dropped[0].reason


def test_never_completed_fragments_are_dropped_at_the_end():
    frags = frag_records(invite_packet(), 800)
    out = replay(sip_in(), [frags[0], frags[2]])
    assert [v.verdict for v in out] == ["drop", "drop"]
    assert "never completed" in out[0].reason and "middle fragment" in out[0].reason


def test_ipv6_reassembly_times_out_after_60_seconds():
    frags = frag_records(invite_packet(P6, S6), 800)
    out = replay(sip_in(), [frags[0], frags[1], rec(frags[2].data, ts=45.0)])
    assert [v.verdict for v in out] == ["accept"] * 3
    out = replay(sip_in(), [frags[0], frags[1], rec(frags[2].data, ts=61.0)])
    assert [v.verdict for v in out][:2] == ["drop", "drop"]


def test_overlapping_fragments_kill_the_datagram():
    packet = invite_packet()
    body = packet[20:]
    a = ipv4(P, S, 17, body[:800], ident=9, offset=0, more=True)
    b = ipv4(P, S, 17, body[400:1200], ident=9, offset=400, more=True)   # overlaps a
    c = ipv4(P, S, 17, body[1200:], ident=9, offset=1200)
    out = replay(sip_in(), [rec(a), rec(b), rec(c)])
    assert [v.verdict for v in out][:2] == ["drop", "drop"]
    assert "overlapping" in out[1].reason


def test_a_duplicate_fragment_is_dropped_alone():
    frags = frag_records(invite_packet(), 800)
    out = replay(sip_in(), [frags[0], frags[0], frags[1], frags[2]])
    assert [v.verdict for v in out] == ["accept", "drop", "accept", "accept"]
    assert "duplicate" in out[1].reason


def test_non_last_ipv6_fragment_must_be_a_multiple_of_8():
    body = invite_packet(P6, S6)[40:]
    bad = ip(P6, S6, 44, struct.pack("!BBHI", 17, 0, 1, 5) + body[:803])
    (v,) = replay(sip_in(), [rec(bad)])
    assert v.verdict == "drop" and "multiple of 8" in v.reason


def test_input_path_without_conntrack_reassembles_ipv4_before_input_but_not_ipv6():
    rs = sip_in(conntrack=False)
    v4 = replay(rs, frag_records(invite_packet(), 800), "input", native_hook="input")
    assert [v.verdict for v in v4] == ["accept"] * 3
    v6 = replay(rs, frag_records(invite_packet(P6, S6), 800), "input", native_hook="input")
    assert [v.verdict for v in v6] == ["accept", "drop", "drop"]


def test_output_path_sees_the_whole_datagram():
    rs = sip_in(conntrack=False)
    out = replay(rs, frag_records(invite_packet(S, P), 800), "output", native_hook="output")
    assert [v.verdict for v in out] == ["accept"] * 3


def test_chains_below_defrag_priority_see_raw_fragments():
    early = ("early", "prerouting", -450, "accept", [rule("drop-later", "drop", fragment=FragmentMatch("later"))])
    rs = ruleset([rule("sip", dport=5060)], policy="drop", conntrack=True, bases=[early])
    out = replay(rs, frag_records(invite_packet(), 800))
    # The later fragments die before reassembly; the first waits in vain.
    assert [v.verdict for v in out] == ["drop", "drop", "drop"]
    assert out[1].rule.id == "drop-later" and "never completed" in out[0].reason


def test_fragment_helper_splits_exactly():
    packet = invite_packet()
    pieces = fragment(packet, 800)
    assert b"".join(p[20:] for p in pieces) == packet[20:]
