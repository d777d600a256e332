"""Connection tracking: the states the filter sees, timeouts on record time, TCP, ICMP."""

from __future__ import annotations

from engine_packets import ACK, FIN, PSH, RST, SYN, icmp, ip, rec, rule, ruleset, tcp, udp, udp_segment

from fwtest.engine import Engine, replay
from fwtest.rules.ir import Action

P, S = "198.51.100.7", "203.0.113.10"
P6, S6 = "2001:db8:100::7", "2001:db8:911::10"


def states(rs, records, paths="forward"):
    return [v.state for v in replay(rs, records, paths)]


def accept_all(**kw):
    return ruleset([], policy="accept", conntrack=True, **kw)


def stateful(**kw):
    """Replies only: established/related accepted, new only towards the PSAP on 5060."""
    return ruleset([rule("est", state=["established", "related"]),
                    rule("sip-in", proto="udp", dst="203.0.113.0/24", dport=5060, state=["new"]),
                    rule("tcp-in", proto="tcp", dst="203.0.113.0/24", dport=5060, state=["new"])],
                   policy="drop", conntrack=True, **kw)


# ------------------------------------------------------------------ UDP

def test_udp_new_then_established_both_ways():
    recs = [udp(P, 5060, S, 5060, b"a", ts=0), udp(S, 5060, P, 5060, b"b", ts=0.1),
            udp(P, 5060, S, 5060, b"c", ts=0.2)]
    assert states(accept_all(), recs) == ["new", "established", "established"]


def test_original_direction_stays_new_until_a_reply():
    recs = [udp(P, 20000, S, 30000, b"rtp", ts=i * 0.02) for i in range(5)]
    assert states(accept_all(), recs) == ["new"] * 5


def test_a_dropped_new_packet_leaves_no_entry():
    out = replay(stateful(), [udp(P, 40000, S, 9999, b"x", ts=0), udp(S, 9999, P, 40000, b"y", ts=0.1)])
    assert [v.verdict for v in out] == ["drop", "drop"]
    assert [v.state for v in out] == ["new", "new"]
    # The same exchange where the first packet is accepted: the answer is established.
    out = replay(stateful(), [udp(P, 40000, S, 5060, b"x", ts=0), udp(S, 5060, P, 40000, b"y", ts=0.1)])
    assert [(v.verdict, v.state) for v in out] == [("accept", "new"), ("accept", "established")]


def test_entry_is_only_created_when_accepted_on_the_whole_path():
    rs = ruleset([rule("acc")], policy="accept", conntrack=True,
                 bases=[("post", "postrouting", 100, "drop", [])])
    out = replay(rs, [udp(P, 1, S, 2, ts=0), udp(S, 2, P, 1, ts=1)])
    assert [(v.verdict, v.state) for v in out] == [("drop", "new"), ("drop", "new")]


def test_unreplied_udp_times_out_after_udp_timeout():
    rs = accept_all(timeouts={"udp": 30})
    assert states(rs, [udp(P, 1, S, 2, ts=0), udp(S, 2, P, 1, ts=29.9)])[1] == "established"
    assert states(rs, [udp(P, 1, S, 2, ts=0), udp(S, 2, P, 1, ts=30.0)])[1] == "new"


def test_udp_stream_timeout_needs_traffic_after_two_seconds():
    rs = accept_all(timeouts={"udp": 30, "udp_stream": 120})
    # Replied, and the last packet came more than 2 s after the first: udp_stream (120 s).
    long = [udp(P, 1, S, 2, ts=0), udp(S, 2, P, 1, ts=0.5), udp(P, 1, S, 2, ts=2.5),
            udp(S, 2, P, 1, ts=2.5 + 100)]
    assert states(rs, long)[-1] == "established"
    # Replied, but everything within the first 2 s: still the unreplied timeout (30 s).
    short = [udp(P, 1, S, 2, ts=0), udp(S, 2, P, 1, ts=0.5), udp(P, 1, S, 2, ts=1.9),
             udp(S, 2, P, 1, ts=1.9 + 40)]
    assert states(rs, short)[-1] == "new"
    # The kernel's test is time_after(now, first + 2 s): exactly 2 s is not after.
    edge = [udp(P, 1, S, 2, ts=0), udp(S, 2, P, 1, ts=0.5), udp(P, 1, S, 2, ts=2.0),
            udp(S, 2, P, 1, ts=2.0 + 40)]
    assert states(rs, edge)[-1] == "new"


def test_a_call_longer_than_the_udp_timeout_keeps_its_entry_while_media_flows():
    rs = accept_all(timeouts={"udp": 30, "udp_stream": 60})
    recs = []
    for i in range(0, 300):
        recs.append(udp(P, 20000, S, 30000, b"rtp", ts=i * 1.0))
        recs.append(udp(S, 30000, P, 20000, b"rtp", ts=i * 1.0 + 0.01))
    got = states(rs, recs)
    assert got[0] == "new" and set(got[1:]) == {"established"}


def test_bye_after_udp_stream_timeout_is_new_without_the_sip_helper():
    def call(udp_stream, helpers=()):
        rs = stateful(timeouts={"udp": 30, "udp_stream": udp_stream}, helpers=helpers)
        recs = [udp(P, 5060, S, 5060, b"INVITE", ts=0), udp(S, 5060, P, 5060, b"200", ts=1),
                udp(P, 5060, S, 5060, b"ACK", ts=3),
                udp(S, 5060, P, 5060, b"BYE", ts=200)]   # PSAP hangs up 197 s after the ACK
        return replay(rs, recs)[-1]
    assert (call(120).verdict, call(120).state) == ("drop", "new")
    assert call(300).verdict == "accept"
    # The kernel's SIP helper sets the SIP entry's timeout to sip_timeout (3600 s).
    assert call(120, helpers=["sip"]).verdict == "accept"


# ------------------------------------------------------------------ TCP

def handshake(sport=40000, t=0.0):
    return [tcp(P, sport, S, 5060, SYN, seq=1000, ts=t),
            tcp(S, 5060, P, sport, SYN | ACK, seq=5000, ack=1001, ts=t + 0.01),
            tcp(P, sport, S, 5060, ACK, seq=1001, ack=5001, ts=t + 0.02)]


def test_tcp_handshake_data_and_close():
    data = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    n = len(data)
    recs = handshake() + [
        tcp(P, 40000, S, 5060, PSH | ACK, seq=1001, ack=5001, data=data, ts=0.1),
        tcp(S, 5060, P, 40000, ACK, seq=5001, ack=1001 + n, ts=0.11),
        tcp(P, 40000, S, 5060, FIN | ACK, seq=1001 + n, ack=5001, ts=0.2),
        tcp(S, 5060, P, 40000, FIN | ACK, seq=5001, ack=1002 + n, ts=0.21),
        tcp(P, 40000, S, 5060, ACK, seq=1002 + n, ack=5002, ts=0.22),
    ]
    engine = Engine(accept_all())
    got = [engine.verdict(r).state for r in recs]
    assert got == ["new"] + ["established"] * 7
    (conn,) = engine.conntrack.connections()
    assert conn.tcp.state_name == "TIME_WAIT" and conn.assured


def test_syn_ack_without_syn_is_invalid():
    rs = stateful()
    v = replay(rs, [tcp(S, 5060, P, 40000, SYN | ACK, seq=5000, ack=1001)])[0]
    assert (v.verdict, v.state) == ("drop", "invalid")


def test_midstream_ack_is_picked_up_as_new():
    recs = [tcp(P, 40000, S, 5060, ACK, seq=777, ack=999, ts=0),
            tcp(S, 5060, P, 40000, ACK, seq=999, ack=777, ts=0.1)]
    assert states(accept_all(), recs) == ["new", "established"]


def test_invalid_flag_combinations_and_lone_fin_are_invalid():
    assert states(accept_all(), [tcp(P, 1, S, 2, FIN)]) == ["invalid"]
    assert states(accept_all(), [tcp(P, 1, S, 2, SYN | FIN)]) == ["invalid"]
    assert states(accept_all(), [tcp(P, 1, S, 2, 0)]) == ["invalid"]


def test_out_of_window_segments_are_invalid():
    recs = handshake() + [tcp(P, 40000, S, 5060, PSH | ACK, seq=1001 + 10_000_000, ack=5001, data=b"x", ts=1)]
    assert states(accept_all(), recs)[-1] == "invalid"
    recs = handshake() + [tcp(S, 5060, P, 40000, ACK, seq=5001, ack=1001 + 1_000_000, ts=1)]
    assert states(accept_all(), recs)[-1] == "invalid"


def test_syn_retransmission_stays_new_and_rst_to_a_syn_kills_the_entry():
    recs = [tcp(P, 40000, S, 5060, SYN, seq=1000, ts=0), tcp(P, 40000, S, 5060, SYN, seq=1000, ts=1),
            tcp(S, 5060, P, 40000, RST | ACK, seq=0, ack=1001, ts=1.1),
            tcp(P, 40000, S, 5060, SYN, seq=2000, ts=2)]
    engine = Engine(accept_all())
    got = [engine.verdict(r).state for r in recs]
    assert got == ["new", "new", "established", "new"]


def test_synack_answering_an_invalid_syn_is_not_accepted_by_state():
    # SYN/ACK in reply to a SYN that was dropped: no entry, so the SYN/ACK is invalid.
    rs = stateful()
    out = replay(rs, [tcp(P, 40000, S, 22, SYN, seq=1, ts=0), tcp(S, 22, P, 40000, SYN | ACK, seq=9, ack=2, ts=0.1)])
    assert [(v.verdict, v.state) for v in out] == [("drop", "new"), ("drop", "invalid")]


# ------------------------------------------------------------------ ICMP

def test_icmp_echo_and_reply():
    recs = [icmp(P, S, 8, ident=7, ts=0), icmp(S, P, 0, ident=7, ts=0.1)]
    assert states(accept_all(), recs) == ["new", "established"]
    assert states(accept_all(), [icmp(S, P, 0, ident=9)]) == ["invalid"]


def test_icmp_error_about_a_tracked_flow_is_related():
    quoted = ip(P, S, 17, udp_segment(40000, 5060, b"INVITE"))[:28]
    error = rec(ip(S, P, 1, bytes([3, 3, 0, 0, 0, 0, 0, 0]) + quoted), 0.5)
    out = replay(stateful(), [udp(P, 40000, S, 5060, b"INVITE", ts=0), error])
    assert [(v.verdict, v.state) for v in out] == [("accept", "new"), ("accept", "related")]
    # The same error about a flow nobody saw is invalid.
    assert states(stateful(), [error]) == ["invalid"]


def test_icmp_error_to_the_wrong_host_is_not_related():
    quoted = ip(P, S, 17, udp_segment(40000, 5060, b"INVITE"))[:28]
    error = rec(ip(S, "198.51.100.99", 1, bytes([3, 3, 0, 0, 0, 0, 0, 0]) + quoted), 0.5)
    assert states(stateful(), [udp(P, 40000, S, 5060, ts=0), error])[-1] == "invalid"


def test_ipv6_neighbour_discovery_is_untracked():
    assert states(accept_all(), [icmp(P6, S6, 135)]) == ["untracked"]
    assert states(accept_all(), [icmp(P6, S6, 128, ident=1), icmp(S6, P6, 129, ident=1)]) == \
        ["new", "established"]


# ------------------------------------------------------------------ untracked, raw, paths

def test_notrack_before_conntrack_makes_the_packet_untracked():
    rs = ruleset([rule("untracked", state=["untracked"])], policy="drop", conntrack=True,
                 bases=[("raw", "prerouting", -300, "accept", [rule("nt", Action("notrack"), dport=5060)])])
    out = replay(rs, [udp(P, 1, S, 5060, ts=0), udp(P, 1, S, 5061, ts=0)])
    assert [(v.verdict, v.state) for v in out] == [("accept", "untracked"), ("drop", "new")]


def test_raw_chains_see_no_entry_yet():
    rs = ruleset([], policy="accept", conntrack=True,
                 bases=[("raw", "prerouting", -300, "accept", [rule("d", "drop", state=["established"])])])
    # Even an established packet has no entry before the lookup: the raw rule never sees it established.
    out = replay(rs, [udp(P, 1, S, 2, ts=0), udp(S, 2, P, 1, ts=0.1)])
    assert [v.verdict for v in out] == ["accept", "accept"]


def test_without_conntrack_every_packet_is_untracked():
    rs = ruleset([rule("est", state=["established"]), rule("un", "drop", state=["untracked"])], policy="accept")
    out = replay(rs, [udp(P, 1, S, 2, ts=0), udp(S, 2, P, 1, ts=0.1)])
    assert [(v.verdict, v.state) for v in out] == [("drop", "untracked"), ("drop", "untracked")]
    assert out[0].rule.id == "un"


def test_one_table_across_input_and_output_paths():
    rs = ruleset([rule("est", state=["established"]), rule("sip", dport=5060)], policy="drop", conntrack=True)
    out = replay(rs, [udp(P, 40000, S, 5060, ts=0), udp(S, 5060, P, 40000, ts=0.1)], ["input", "output"],
                 native_hook="input")
    assert [(v.verdict, v.state) for v in out] == [("accept", "new"), ("accept", "established")]


def test_expired_entries_are_swept():
    engine = Engine(accept_all(timeouts={"udp": 30}))
    for i in range(50):
        engine.feed(udp(P, 1000 + i, S, 2, ts=0))
    engine.conntrack.sweep(100.0)
    assert engine.conntrack.connections() == []
