"""fwtest.traffic.synth: the call-flow synthesiser and its cache."""

from __future__ import annotations

import ipaddress
import os
import struct
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from fwtest import cache
from fwtest.profile import load_profile
from fwtest.traffic import synth
from fwtest.traffic.callflow import CallFlow
from fwtest.traffic.record import TCP_ACK, TCP_FIN, TCP_SYN
from fwtest.traffic.sdp import sdp_of
from fwtest.traffic.sipmsg import SipMessage, parse_sip, split_sip_stream
from fwtest.traffic.synth import edge_hosts, edge_ports, plan_instances, synthesize

PROFILE = {
    "name": "test-edge",
    "psap": ["203.0.113.0/26", "2001:db8:911::/64"],
    "peers": ["198.51.100.0/24", "192.0.2.0/28", "2001:db8:100::/56"],
    "sip": {"udp": 5060, "tcp": 5060, "tls": 5061},
    "rtp": {"psap": "16384-32767", "peers": "10000-20001"},
    "msrp": 2855,
    "surge": {"calls": 6, "seconds": 3},
    "call_seconds": 12,
    "interfaces": {"peers": "ens1", "psap": "ens2"},
}
PHASES = {"setup", "media-in", "media-out", "teardown", "keepalive", "message"}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FWTEST_CACHE", raising=False)


@pytest.fixture(scope="module")
def profile():
    return load_profile(PROFILE)


@pytest.fixture(scope="module")
def flows(profile) -> list[CallFlow]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FWTEST_CACHE", "0")
        return synthesize(profile, seed=3)


def _of(flows, flow, transport=None, family=None):
    return [f for f in flows if f.flow == flow and transport in (None, f.transport) and family in (None, f.family)]


def _sip_messages(flow: CallFlow) -> list[tuple[SipMessage, str]]:
    """(message, direction) of every cleartext SIP message of a flow, reassembling
    fragments (UDP) and the byte streams (TCP) the way a receiver would."""
    out: list[tuple[SipMessage, str]] = []
    fragments: dict[tuple, list] = defaultdict(list)
    streams: dict[tuple, bytes] = defaultdict(bytes)
    sip_ports = {5060}
    for step in flow.steps:
        rec = step.record
        if rec.proto == 17 and rec.frag:
            key = (rec.src, rec.dst, rec.frag_id)
            fragments[key].append(rec)
            if not rec.more_fragments:
                data = b"".join(r.data[r.l4_offset:] for r in sorted(fragments.pop(key), key=lambda r: r.frag_offset))
                out.append((parse_sip(data[8:]), step.direction))
        elif rec.proto == 17 and 5060 in (rec.sport, rec.dport):
            out.append((parse_sip(rec.payload), step.direction))
        elif rec.proto == 6 and sip_ports & {rec.sport, rec.dport} and rec.payload:
            key = (rec.src, rec.sport, rec.dst, rec.dport)
            messages, streams[key] = split_sip_stream(streams[key] + rec.payload)
            out.extend((m, step.direction) for m in messages)
    return out


def _label(message: SipMessage) -> str:
    return message.method or f"{message.status} ({message.cseq[1]})"


def test_edge_hosts_and_ports():
    net = ipaddress.ip_network
    assert edge_hosts(net("198.51.100.0/24")) == ["198.51.100.1", "198.51.100.127", "198.51.100.254"]
    assert edge_hosts(net("203.0.113.0/26")) == ["203.0.113.1", "203.0.113.31", "203.0.113.62"]
    assert edge_hosts(net("192.0.2.4/31")) == ["192.0.2.4", "192.0.2.5"]            # RFC 3021
    assert edge_hosts(net("192.0.2.9/32")) == ["192.0.2.9"]
    assert edge_hosts(net("2001:db8:911::/64")) == [
        "2001:db8:911::1", "2001:db8:911:0:8000::", "2001:db8:911:0:ffff:ffff:ffff:ffff"]
    assert edge_ports((16384, 32767)) == [16384, 24574, 32766]
    assert edge_ports((10001, 20001)) == [10002, 15000, 20000]
    assert edge_ports((5004, 5005)) == [5004] and edge_ports((5005, 5005)) == [5005]


def test_every_flow_transport_family_and_instance(profile, flows):
    counts = Counter(f.key for f in flows)
    for flow in profile.flows:
        for transport in profile.sip:
            for family in (4, 6):
                assert counts[(flow, transport, family)] == len(plan_instances(profile, family))
    assert len(plan_instances(profile, 4)) == 6 and len(plan_instances(profile, 6)) == 3
    assert counts[("surge", "udp", 4)] == 6
    for f in flows:
        assert f.steps and all(s.phase in PHASES and s.direction in ("in", "out") for s in f.steps)
        times = [s.record.ts for s in f.steps]
        assert times == sorted(times)
        if f.flow != "surge":
            assert times[0] == 0.0
        assert all(s.record.family == f.family for s in f.steps)


def test_hosts_cover_both_sides_edges(profile, flows):
    for family in (4, 6):
        calls = _of(flows, "emergency-call", "udp", family)
        seen = {s.record.addr("src") for f in calls for s in f.steps}
        for side in ("peers", "psap"):
            for net in profile.networks(side, family):
                assert set(edge_hosts(net)) <= seen, (side, net)
        # The peer's first host does not always meet the PSAP's first host.
        pairs = {(f.steps[0].record.src, f.steps[0].record.dst) for f in calls}
        assert len(pairs) == len(calls)


def test_media_ports_cover_both_ranges(flows):
    for family in (4, 6):
        rtp_in, rtp_out = set(), set()
        for f in _of(flows, "emergency-call", "udp", family) + _of(flows, "callback", "tcp", family):
            for s in f.steps:
                rec = s.record
                if s.label == "RTP":
                    assert rec.sport % 2 == 0 and rec.dport % 2 == 0
                    (rtp_in if s.direction == "in" else rtp_out).add((rec.sport, rec.dport))
                elif s.label == "RTCP":
                    assert rec.sport % 2 == 1 and rec.dport % 2 == 1
        assert {p for p, _ in rtp_in} == {10000, 15000, 20000}            # peers: low, middle, high
        assert {p for _, p in rtp_in} == {16384, 24574, 32766}            # psap
        assert rtp_out == {(b, a) for a, b in rtp_in}                     # symmetric RTP


def test_sdp_announces_the_media_that_flows(flows):
    for f in [f for f in _of(flows, "emergency-call") + _of(flows, "callback") if f.transport != "tls"]:
        messages = _sip_messages(f)
        offer = next(m for m, _ in messages if m.method == "INVITE")
        answer = next(m for m, _ in messages if m.status == 200 and m.cseq[1] == "INVITE")
        rtp = {(s.record.addr("dst"), s.record.dport) for s in f.steps if s.label == "RTP"}
        rtcp = {(s.record.addr("dst"), s.record.dport) for s in f.steps if s.label == "RTCP"}
        announced = {(m.address, m.port) for sdp in (offer, answer) for m in sdp_of(sdp)}
        assert rtp == announced
        assert rtcp == {(m.address, m.rtcp_port) for sdp in (offer, answer) for m in sdp_of(sdp)}


def test_emergency_call_ladder(profile, flows):
    for f in _of(flows, "emergency-call"):
        labels = [(s.label, s.direction, s.phase) for s in f.steps if s.label not in ("RTP", "RTCP", "TCP ACK")]
        sip = [(lab, d, p) for lab, d, p in labels if not lab.startswith(("SYN", "FIN", "TLS"))]
        dedup = [x for i, x in enumerate(sip) if i == 0 or x != sip[i - 1]]  # fragments/segments of one message
        by = "in" if dedup[-2][1] == "in" else "out"
        assert dedup == [("INVITE", "in", "setup"), ("100 Trying (INVITE)", "out", "setup"),
                         ("180 Ringing (INVITE)", "out", "setup"), ("200 OK (INVITE)", "out", "setup"),
                         ("ACK", "in", "setup"), ("BYE", by, "teardown"),
                         ("200 OK (BYE)", "out" if by == "in" else "in", "teardown")]
        if f.transport != "udp":
            assert labels[0][:2] == ("SYN", "in") and labels[-1][0] == "FIN"
        media = [s for s in f.steps if s.label in ("RTP", "RTCP")]
        assert {s.phase for s in media if s.direction == "in"} == {"media-in"}
        assert {s.phase for s in media if s.direction == "out"} == {"media-out"}
        rtp_in = [s.record.ts for s in media if s.label == "RTP" and s.direction == "in"]
        assert len(rtp_in) == synth.BURST_PACKETS + profile.call_seconds - 1
        assert all(b - a == pytest.approx(1.0) for a, b in zip(rtp_in[synth.BURST_PACKETS - 1:-1],
                                                                rtp_in[synth.BURST_PACKETS:], strict=True))
        assert rtp_in[-1] - rtp_in[0] <= profile.call_seconds
    # BYE alternates between the two sides across instances.
    byes = {next(s.direction for s in f.steps if s.label == "BYE") for f in _of(flows, "emergency-call", "udp", 4)}
    assert byes == {"in", "out"}


def test_every_emergency_invite_has_sos_and_pidf_lo_and_exceeds_the_mtu(flows):
    for f in _of(flows, "emergency-call") + _of(flows, "surge"):
        invite_packets = [s.record for s in f.steps if s.label == "INVITE"]
        assert sum(len(r.data) for r in invite_packets) > 1500
        if f.transport == "udp":
            assert invite_packets[0].frag and len(invite_packets) >= 2   # as IP fragments
        if f.transport == "tls":
            continue
        invite = next(m for m, _ in _sip_messages(f) if m.method == "INVITE")
        assert invite.uri == "urn:service:sos" and invite.content_type == "multipart/mixed"
        assert b"application/pidf+xml" in invite.body and b"<gs:Circle" in invite.body
        assert invite.header("resource-priority").startswith("esnet.")


def test_callback_is_from_the_psap(flows):
    for f in _of(flows, "callback"):
        first_sip = next(s for s in f.steps if s.label in ("INVITE", "SYN"))
        assert first_sip.direction == "out"
        if f.transport != "tls":
            invite = next(m for m, _ in _sip_messages(f) if m.method == "INVITE")
            assert invite.uri.startswith(("sip:+15085550100@", "sips:+15085550100@"))


def test_sip_over_tcp_rides_one_connection(profile, flows):
    for f in _of(flows, "emergency-call", "tcp") + _of(flows, "emergency-call", "tls") + _of(flows, "text", "tcp"):
        port = profile.sip[f.transport]
        tuples = {frozenset({(s.record.src, s.record.sport), (s.record.dst, s.record.dport)})
                  for s in f.steps if s.record.proto == 6 and port in (s.record.sport, s.record.dport)}
        assert len(tuples) == 1, f.instance


def test_tcp_seq_ack_consistent_over_whole_flows(flows):
    checked = 0
    for f in flows:
        nxt: dict[tuple, int] = {}
        for s in f.steps:
            rec = s.record
            if rec.proto != 6:
                continue
            me, peer = (rec.src, rec.sport), (rec.dst, rec.dport)
            seq, ack = struct.unpack_from("!II", rec.data, rec.l4_offset + 4)
            if rec.tcp_flags & TCP_SYN:
                nxt[(me, peer)] = seq
            assert seq == nxt[(me, peer)], (f.instance, s.label)
            if rec.tcp_flags & TCP_ACK:
                assert ack == nxt[(peer, me)], (f.instance, s.label)
            nxt[(me, peer)] = (seq + len(rec.payload) + bool(rec.tcp_flags & TCP_SYN)
                               + bool(rec.tcp_flags & TCP_FIN)) & 0xFFFFFFFF
            checked += 1
    assert checked > 1000


def test_tls_streams_are_whole_records(profile, flows):
    for f in _of(flows, "options-keepalive", "tls") + _of(flows, "emergency-call", "tls"):
        streams: dict[tuple, bytes] = defaultdict(bytes)
        for s in f.steps:
            rec = s.record
            if rec.proto == 6 and profile.sip["tls"] in (rec.sport, rec.dport):
                streams[(rec.src, rec.sport)] += rec.payload
        assert len(streams) == 4 if f.flow == "options-keepalive" else len(streams) == 2
        for stream in streams.values():
            assert b"SIP/2.0" not in stream
            pos, types = 0, []
            while pos < len(stream):
                ctype, version, length = struct.unpack_from("!BHH", stream, pos)
                assert version in (0x0301, 0x0303)
                types.append(ctype)
                pos += 5 + length
            assert pos == len(stream) and types[0] == 22 and set(types) <= {20, 22, 23}
            assert types.count(23) >= 2          # encrypted handshake, then the SIP messages


def test_options_both_ways_every_30_seconds(flows):
    for f in _of(flows, "options-keepalive"):
        assert {s.phase for s in f.steps} == {"keepalive"}
        times = {"in": [], "out": []}
        for s in f.steps:
            if s.label == "OPTIONS" and (not times[s.direction] or s.record.ts - times[s.direction][-1] > 1):
                times[s.direction].append(s.record.ts)
        for direction in ("in", "out"):
            assert len(times[direction]) == synth.OPTIONS_ROUNDS
            gaps = [b - a for a, b in zip(times[direction][:-1], times[direction][1:], strict=True)]
            assert all(g == pytest.approx(30.0, abs=0.1) for g in gaps)
        if f.transport != "tls":
            answers = [m for m, _ in _sip_messages(f) if m.status == 200]
            assert len(answers) == 2 * synth.OPTIONS_ROUNDS and all(m.cseq[1] == "OPTIONS" for m in answers)


def test_text_flow_message_and_msrp(profile, flows):
    for f in _of(flows, "text"):
        message = [s for s in f.steps if s.label in ("MESSAGE", "200 OK (MESSAGE)")]
        assert {s.phase for s in message} == {"message"} and {s.direction for s in message} == {"in", "out"}
        msrp = [s for s in f.steps if s.record.proto == 6 and profile.msrp in (s.record.sport, s.record.dport)]
        syn = msrp[0]
        assert syn.label == "SYN" and syn.direction == "in" and syn.record.dport == profile.msrp
        sends = {s.direction for s in msrp if s.label == "MSRP SEND"}
        assert sends == {"in", "out"}
        assert {s.phase for s in msrp if s.direction == "in" and s.phase != "teardown"} == {"media-in"}
        assert any(s.label == "BYE" and s.phase == "teardown" for s in f.steps)
        if f.transport != "tls":
            invite = next(m for m, _ in _sip_messages(f) if m.method == "INVITE")
            (offer,) = sdp_of(invite)
            assert offer.media == "message" and offer.proto == "TCP/MSRP"
            assert offer.port == syn.record.sport            # the path the offer announced connects


def test_interfaces_follow_the_firewall_position(flows, monkeypatch):
    for f in flows[:20]:
        for s in f.steps:
            expected = ("ens1", "ens2") if s.direction == "in" else ("ens2", "ens1")
            assert (s.record.iface_in, s.record.iface_out) == expected
    endpoint = load_profile({**PROFILE, "firewall": "input", "surge": None, "flows": ["options-keepalive"]})
    monkeypatch.setenv("FWTEST_CACHE", "0")
    for f in synthesize(endpoint):
        for s in f.steps:
            expected = ("ens1", None) if s.direction == "in" else (None, "ens1")
            assert (s.record.iface_in, s.record.iface_out) == expected


def test_surge_shares_one_timeline(profile, flows):
    surge = _of(flows, "surge")
    assert len(surge) == 6 and all(f.transport == "udp" and f.family == 4 for f in surge)
    peers = [f.steps[0].record.src for f in surge]
    assert len(set(peers)) == len(peers)
    starts = [f.steps[0].record.ts for f in surge]
    assert starts == pytest.approx([i * 3 / 6 for i in range(6)])
    for f in surge:
        assert f.steps[0].label == "INVITE" and any(s.label == "BYE" for s in f.steps)
    media_ports = {s.record.dport for f in surge for s in f.steps if s.label == "RTP" and s.direction == "in"}
    assert len(media_ports) == 6


def test_deterministic_for_a_seed(profile, flows, monkeypatch):
    monkeypatch.setenv("FWTEST_CACHE", "0")
    again = synthesize(profile, seed=3)
    assert [(f.key, f.instance) for f in again] == [(f.key, f.instance) for f in flows]
    assert all(a.steps == b.steps for a, b in zip(again, flows, strict=True))
    other = synthesize(load_profile({**PROFILE, "flows": ["emergency-call"], "surge": None}), seed=4)
    same_seed = [f for f in flows if f.flow == "emergency-call"]
    assert [f.steps[0].record.data for f in other] != [f.steps[0].record.data for f in same_seed]


def test_cache_round_trip_without_scapy(tmp_path, monkeypatch):
    small = {**PROFILE, "flows": ["options-keepalive"], "surge": None}
    profile = load_profile(small)
    first = synthesize(profile)
    (entry,) = (tmp_path / "cache" / "fwtest").glob("flows-*.pickle")
    assert synthesize(profile) == first
    code = ("import sys; from fwtest.profile import load_profile; from fwtest.traffic.synth import synthesize;"
            f"flows = synthesize(load_profile({small!r})); print(len(flows), 'scapy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}).stdout.split()
    assert out == [str(len(first)), "False"]
    # A corrupt entry is ignored and rebuilt (by a new process: this one remembers its flows).
    assert synthesize(profile) is synthesize(profile)
    synth._RECENT.clear()
    entry.write_bytes(b"\x80\x05not a pickle")
    assert synthesize(profile) == first
    assert entry.read_bytes()[:2] == b"\x80\x05" and len(entry.read_bytes()) > 1000
    entry.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x07.")   # a pickle of the wrong type
    synth._RECENT.clear()
    assert synthesize(profile) == first
    # Another profile is another entry; FWTEST_CACHE=0 reads and writes nothing.
    synthesize(load_profile({**small, "msrp": 2856}))
    assert len(list((tmp_path / "cache" / "fwtest").glob("flows-*.pickle"))) == 2
    entry.unlink()
    monkeypatch.setenv("FWTEST_CACHE", "0")
    synthesize(profile)
    assert not entry.exists()


def test_cache_keeps_the_newest_entries(tmp_path):
    folder = tmp_path / "cache" / "fwtest"
    folder.mkdir(parents=True)
    for i in range(cache.ENTRIES + 4):
        old = folder / f"flows-{i:032x}.pickle"
        old.write_bytes(b"old")
        os.utime(old, (1000 + i, 1000 + i))
    profile = load_profile({**PROFILE, "flows": ["options-keepalive"], "surge": None, "sip": {"udp": 5060}})
    synthesize(profile)
    left = sorted(folder.glob("flows-*.pickle"))
    assert len(left) == cache.ENTRIES and synth.cache_path(profile, 0) in left
    assert not (folder / f"flows-{0:032x}.pickle").exists()      # the oldest went first
