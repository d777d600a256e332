"""The fast replay gives the plain engine's verdicts, packet for packet, and the same calls.

``fwtest.replay.replay_capture`` (fastpath.FastEngine: runs of established UDP
decided from a per-flow verdict cache, everything else through the engine)
against ``replay_capture_plain`` (every packet through ``Engine.feed`` and
``reconstruct``): generated traffic with calls, RTP both ways, gaps past the
UDP timeouts, first replies, SIP helper expectations, IP fragments (some
never completed), TCP, ICMP errors quoting RTP flows, packets with IP
options on an RTP flow's ports, SIP sniffed on odd ports, timestamps that go
back, through generated rulesets (rate limits, string and SIP matches,
notrack in a raw chain, user chains, rejects, helper matches, stateless),
read in small chunks, with the conntrack sweep made frequent. Then the real
captures and a benchmark trace.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from unittest import mock

import pytest
from engine_packets import (
    ACK,
    FIN,
    PSH,
    SYN,
    Action,
    frag_records,
    icmp,
    ip,
    jump,
    rule,
    ruleset,
    sip_invite,
    sip_request,
    sip_response,
    tcp,
    udp,
    udp_segment,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwtest.engine import conntrack
from fwtest.engine.fastpath import PureWalk
from fwtest.engine.replay import Engine
from fwtest.profile import load_profile, profile_from_dict
from fwtest.replay import replay_capture, replay_capture_plain
from fwtest.rules.ir import LimitMatch, SipMatch, StringMatch
from fwtest.traffic.pcapwrite import write_pcap
from fwtest.traffic.record import parse_ip

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = str(ROOT / "rulesets/psap-edge.yaml")
PROFILE = load_profile(str(ROOT / "rulesets/psap-edge.profile.yaml"))
NETS = {"psap": ["203.0.113.0/26", "2001:db8:911::/64"], "peers": ["198.51.100.0/24", "2001:db8:100::/56"]}
PROFILES = {fw: profile_from_dict({**NETS, "firewall": fw}, "<test>") for fw in ("forward", "input", "output")}

PEERS4 = ["198.51.100.7", "198.51.100.8"]
PSAP4 = ["203.0.113.10", "203.0.113.11"]
OUTSIDE4 = ["192.0.2.1"]
PEERS6 = ["2001:db8:100::7"]
PSAP6 = ["2001:db8:911::10"]
RTP = "16384-32767"


def same_replay(rules, pcap, profile, chunk_bytes: int):
    """Replay both ways; assert everything the two report is equal. Returns the fast result."""
    fast_rows: list = []
    plain_rows: list = []
    fast = replay_capture(rules, pcap, profile, on_packet=lambda *a: fast_rows.append(a), chunk_bytes=chunk_bytes)
    plain = replay_capture_plain(rules, pcap, profile, on_packet=lambda *a: plain_rows.append(a))
    assert len(fast_rows) == len(plain_rows) == plain.packets
    for got, want in zip(fast_rows, plain_rows, strict=True):
        assert got == want, f"packet {want[0]} (frame {want[1]}): {got[3]} != {want[3]}"
    assert fast.verdicts == plain.verdicts
    assert fast.outside_profile == plain.outside_profile
    assert fast.read == plain.read
    assert fast.reconstruction == plain.reconstruction
    # Without a per-packet sink the reconstruction counts media in bulk: the same again.
    quiet = replay_capture(rules, pcap, profile, chunk_bytes=chunk_bytes)
    assert quiet.reconstruction == plain.reconstruction
    assert (quiet.verdicts, quiet.packets, quiet.fast) == (plain.verdicts, plain.packets, fast.fast)
    return fast


# ----------------------------------------------------------------------------- generated traffic

def ip_options_udp(src: str, sport: int, dst: str, dport: int, data: bytes, ts: float):
    """IPv4/UDP with four bytes of options (NOP NOP NOP EOL): the flow's ports, but not a plain header."""
    plain = ip(src, dst, 17, udp_segment(sport, dport, data))
    header = bytearray(plain[:20])
    header[0] = 0x46
    struct.pack_into("!H", header, 2, len(plain) + 4)
    header[10:12] = b"\0\0"
    total = sum(struct.unpack("!12H", bytes(header) + b"\x01\x01\x01\x00"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", header, 10, ~total & 0xFFFF)
    return parse_ip(bytes(header) + b"\x01\x01\x01\x00" + plain[20:], ts)


def rtp_flow(rng: random.Random, f: int, t: float, long_gaps: float, out: list, calls: list) -> None:
    """One RTP conversation (maybe with its SIP), appended to ``out``."""
    six = rng.random() < 0.25
    peer = rng.choice(PEERS6 if six else PEERS4 + OUTSIDE4)
    psap = rng.choice(PSAP6 if six else PSAP4)
    peer_port = rng.choice([16384, 20000, 24000, 40000, 5070]) + 2 * f
    psap_port = rng.choice([16384, 20004, 30000, 30002]) + 2 * f
    # Signalling first, sometimes: SDP on both sides gives the reconstruction (and the SIP
    # helper) these media endpoints. On an odd port pair it is only found by sniffing.
    if rng.random() < 0.6:
        call_id = f"call-{f}-{rng.getrandbits(16)}"
        sip_port = 5060 if rng.random() < 0.8 else 5080
        invite = sip_invite(peer, peer_port, call_id=call_id,
                            extra_sdp="a=x:" + "y" * (1600 if rng.random() < 0.3 else 0) + "\r\n")
        packet = ip(peer, psap, 17, udp_segment(sip_port, sip_port, invite))
        if len(packet) > 1500:
            pieces = frag_records(packet, 1000, ts=t, ident=rng.getrandbits(16))
            if rng.random() < 0.15:
                pieces = pieces[:-1]          # a fragment lost: held until the reassembly timeout
            out.extend(pieces)
        else:
            out.append(parse_ip(packet, t))
        t += 0.05
        out.append(udp(psap, sip_port, peer, sip_port, sip_response(200, "INVITE", media_addr=psap, port=psap_port,
                                                                    call_id=call_id), ts=t))
        t += 0.02
        out.append(udp(peer, sip_port, psap, sip_port, sip_request("ACK", call_id=call_id, cseq=1), ts=t))
        calls.append((peer, psap, sip_port, call_id))
    mode = rng.choice(["two-way", "one-way", "reply-later", "psap-first"])
    n = rng.randint(1, 80)
    for k in range(n):
        t += 0.02 if rng.random() > long_gaps else rng.choice([2.5, 6.0, 9.0, 31.0, 125.0])
        if mode == "one-way":
            back = False
        elif mode == "psap-first":
            back = k % 2 == 0
        elif mode == "reply-later":
            back = k > n // 3 and k % 2 == 1
        else:
            back = rng.random() < 0.5
        src, sp, dst, dp = (psap, psap_port, peer, peer_port) if back else (peer, peer_port, psap, psap_port)
        payload = rng.choice([b"\x80\x00rtp-audio", b"\x80\x00rtp-audio", b"\x80\x00drop-me", b"",
                              b"OPTIONS-looking text"])
        out.append(udp(src, sp, dst, dp, payload, ts=t))
        roll = rng.random()
        if roll < 0.02 and not six:
            out.append(ip_options_udp(src, sp, dst, dp, b"\x80\x00opt", t + 0.001))
        elif roll < 0.04:
            # The far end says the port is unreachable: an ICMP error quoting this packet.
            quoted = ip(src, dst, 17, udp_segment(sp, dp, payload))[:48]
            out.append(icmp(dst, src, 1 if ":" not in src else 128 - 127, 3 if ":" not in src else 4,
                            data=quoted, ts=t + 0.002))
        elif roll < 0.05:
            out.extend(frag_records(ip(src, dst, 17, udp_segment(sp, dp, b"\x80\x00" + b"z" * 1200)), 600,
                                    ts=t + 0.003, ident=rng.getrandbits(16)))
        elif roll < 0.06:
            out.append(icmp(src, dst, 8 if ":" not in src else 128, ident=k, ts=t + 0.004))


def build_traffic(seed: int, flows: int, long_gaps: float, backwards: int) -> list:
    rng = random.Random(seed)
    out: list = []
    calls: list = []
    for f in range(flows):
        rtp_flow(rng, f, rng.uniform(0, 4), long_gaps, out, calls)
    end = max(r.ts for r in out) if out else 0.0
    for peer, psap, sip_port, call_id in calls:
        if rng.random() < 0.7:
            out.append(udp(peer, sip_port, psap, sip_port, sip_request("BYE", call_id=call_id, cseq=2),
                           ts=end + rng.uniform(0, 1)))
    if rng.random() < 0.5:
        # SIP over TCP: handshake, an OPTIONS, its answer, the close.
        a, b, port, t = rng.choice(PEERS4), rng.choice(PSAP4), 40000 + rng.randint(0, 9), rng.uniform(0, 3)
        data = sip_request("OPTIONS", call_id="tcp-ping")
        out += [tcp(a, port, b, 5060, SYN, seq=100, ts=t), tcp(b, 5060, a, port, SYN | ACK, seq=900, ack=101, ts=t + .01),
                tcp(a, port, b, 5060, ACK, seq=101, ack=901, ts=t + .02),
                tcp(a, port, b, 5060, PSH | ACK, seq=101, ack=901, data=data, ts=t + .03),
                tcp(b, 5060, a, port, ACK, seq=901, ack=101 + len(data), ts=t + .04),
                tcp(a, port, b, 5060, FIN | ACK, seq=101 + len(data), ack=901, ts=t + 40)]
    out.sort(key=lambda r: r.ts)
    for _ in range(backwards):
        # A capture merged from two taps: some timestamps go back.
        if len(out) > 2:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def build_ruleset(seed: int, conntrack_on: bool):
    rng = random.Random(seed)
    rules = []
    if conntrack_on and rng.random() < 0.85:
        rules.append(rule("established", state=["established", "related"]))
    if conntrack_on and rng.random() < 0.4:
        rules.append(rule("invalid", "drop", state=["invalid"]))
    pool = [
        rule("sip-in", proto="udp", dport=5060),
        rule("scanners", "drop", proto="udp", dport="5060,5080", sip=SipMatch(method="OPTIONS|BYE")),
        rule("rtp-limit", "drop", proto="udp", dport=RTP,
             limit=LimitMatch(rate=20.0, burst=5, above=True, per=("src",))),
        rule("drop-me", "drop", proto="udp", string=(StringMatch(b"drop-me"),)),
        rule("rtp-in", proto="udp", src="198.51.100.0/24", dst="203.0.113.0/26", dport=RTP),
        rule("rtp-out", proto="udp", src="203.0.113.0/26", dport=RTP),
        rule("rtp-v6", proto="udp", src="2001:db8:100::/56", dport=RTP),
        rule("new-from-psap", proto="udp", src="203.0.113.0/26", state=["new"]),
        rule("reject-odd", "reject", proto="udp", dport="40000-40100"),
        rule("log-udp", "log", proto="udp"),
        rule("guard", jump("guard"), proto="udp", dport=RTP),
        rule("icmp", proto="icmp"),
        rule("tcp-sip", proto="tcp", dport=5060),
        rule("tcp-back", proto="tcp", sport=5060),
    ]
    if conntrack_on:
        pool.append(rule("helper-media", helper="sip", proto="udp"))
    rules += rng.sample(pool, rng.randint(2, len(pool)))
    chains = {"guard": [rule("guard-log", "log"), rule("guard-back", "return", dport="30000-30010"),
                        rule("guard-drop", "drop", src="192.0.2.0/24")]}
    bases = []
    if conntrack_on and rng.random() < 0.3:
        bases.append(("raw", "prerouting", -300, "accept",
                      [rule("no-track", Action("notrack"), proto="udp", dport="20000-20010")]))
    return ruleset(rules, policy=rng.choice(["drop", "accept"]), chains=chains, conntrack=conntrack_on,
                   helpers=["sip"] if conntrack_on and rng.random() < 0.5 else (),
                   timeouts={"udp": rng.choice([5, 30]), "udp_stream": rng.choice([8, 120, 3600])}, bases=bases)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1), flows=st.integers(1, 6), long_gaps=st.sampled_from([0.0, 0.03, 0.2]),
       backwards=st.sampled_from([0, 0, 0, 3]), conntrack_on=st.booleans(),
       firewall=st.sampled_from(["forward", "forward", "input", "output"]),
       chunk_bytes=st.sampled_from([400, 3000, 1 << 20]), sweep_every=st.sampled_from([3, 17, 8192]))
def test_fast_replay_is_the_engine_packet_for_packet(tmp_path_factory, seed, flows, long_gaps, backwards,
                                                     conntrack_on, firewall, chunk_bytes, sweep_every):
    records = build_traffic(seed, flows, long_gaps, backwards)
    pcap = tmp_path_factory.mktemp("fast") / "t.pcap"
    write_pcap(records, pcap, epoch=1718734800.0)
    with mock.patch.object(conntrack, "SWEEP_EVERY", sweep_every):
        same_replay(build_ruleset(seed, conntrack_on), pcap, PROFILES[firewall], chunk_bytes)


# ----------------------------------------------------------------------------- particular cases

def write(tmp_path, records) -> Path:
    pcap = tmp_path / "t.pcap"
    write_pcap(sorted(records, key=lambda r: r.ts), pcap, epoch=1718734800.0)
    return pcap


def rtp_both_ways(peer, pport, psap, sport, start, count, step=0.02):
    out = []
    for k in range(count):
        out.append(udp(peer, pport, psap, sport, b"\x80\x00in", ts=start + k * step))
        out.append(udp(psap, sport, peer, pport, b"\x80\x00out", ts=start + k * step + step / 2))
    return out


def test_established_media_is_decided_in_bulk(tmp_path):
    pcap = write(tmp_path, rtp_both_ways("198.51.100.7", 20000, "203.0.113.10", 30000, 0.0, 2000))
    result = same_replay(REFERENCE, pcap, PROFILE, 1 << 16)
    assert result.packets == 4000 and result.verdicts == {"accept": 4000}
    assert result.fast >= 3990          # all but the first packet of each direction (and chunk edges)


def test_timeout_in_the_middle_of_a_flow(tmp_path):
    # The PSAP's media stops longer than the UDP timeout: its entry expires and the next peer
    # packet is NEW again. Only NEW peer media is allowed in, so nothing is lost, but the
    # PSAP's next packet opens a NEW entry from the PSAP side, which this ruleset drops.
    rs = ruleset([rule("established", state=["established", "related"]),
                  rule("rtp-in", proto="udp", src="198.51.100.0/24", dport=RTP)],
                 conntrack=True, timeouts={"udp": 5, "udp_stream": 8})
    records = rtp_both_ways("198.51.100.7", 20000, "203.0.113.10", 30000, 0.0, 200)
    records += rtp_both_ways("198.51.100.7", 20000, "203.0.113.10", 30000, 30.0, 200)
    records.append(udp("203.0.113.10", 30000, "198.51.100.7", 20000, b"\x80\x00late", ts=80.0))
    result = same_replay(rs, write(tmp_path, records), PROFILE, 1 << 16)
    assert result.verdicts["drop"] == 1 and result.fast > 700


def test_sip_helper_expectation_makes_media_related(tmp_path):
    rs = ruleset([rule("established", state=["established", "related"]), rule("sip", proto="udp", dport=5060)],
                 conntrack=True, helpers=["sip"])
    peer, psap = "198.51.100.7", "203.0.113.10"
    records = [udp(peer, 5060, psap, 5060, sip_invite(peer, 20000), ts=0.0),
               udp(psap, 5060, peer, 5060, sip_response(200, "INVITE", media_addr=psap, port=30000), ts=0.1)]
    # The callee talks first (RELATED), the caller only later (then both ESTABLISHED).
    records += [udp(psap, 30000, peer, 20000, b"\x80\x00out", ts=0.2 + k * 0.02) for k in range(300)]
    records += rtp_both_ways(peer, 20000, psap, 30000, 6.2, 300)
    result = same_replay(rs, write(tmp_path, records), PROFILE, 1 << 14)
    assert result.verdicts == {"accept": 902} and result.fast > 850


def test_a_rate_limit_on_the_media_path_is_never_cached(tmp_path):
    rs = ruleset([rule("rtp-limit", "drop", proto="udp", dport=RTP, limit=LimitMatch(rate=10.0, burst=5, above=True)),
                  rule("established", state=["established", "related"]),
                  rule("rtp-in", proto="udp", dport=RTP)], conntrack=True)
    pcap = write(tmp_path, rtp_both_ways("198.51.100.7", 20000, "203.0.113.10", 30000, 0.0, 500))
    result = same_replay(rs, pcap, PROFILE, 1 << 16)
    assert result.fast == 0 and result.verdicts["drop"] > 500    # 100 packets/s against 10/s


def test_a_payload_rule_after_a_failing_header_test_is_no_obstacle(tmp_path):
    # The SIP-matching rule sits before the media rules, but its dport test fails first for
    # RTP: the engine never reads an RTP payload there, so the verdict is cached.
    pcap = write(tmp_path, rtp_both_ways("198.51.100.7", 20000, "203.0.113.10", 30000, 0.0, 500))
    result = same_replay(REFERENCE, pcap, PROFILE, 1 << 16)
    assert result.fast > 990


def test_sweeps_happen_at_the_engine_lookup(tmp_path):
    records = []
    for f in range(20):
        records += rtp_both_ways("198.51.100.7", 20000 + 2 * f, "203.0.113.10", 30000 + 2 * f, f * 3.0, 40)
    rs = ruleset([rule("established", state=["established", "related"]), rule("media", proto="udp")],
                 conntrack=True, timeouts={"udp": 5, "udp_stream": 8})
    with mock.patch.object(conntrack, "SWEEP_EVERY", 11):
        result = same_replay(rs, write(tmp_path, records), PROFILE, 2000)
    assert result.fast > 1000


def test_an_icmp_error_sees_the_entry_as_the_runs_left_it(tmp_path):
    # Twenty seconds of media in one chunk, then the PSAP's host answers with Port
    # Unreachable: the entry was refreshed by every packet (cached or not), so the error is
    # RELATED and accepted; had the runs not been made effective first, the entry would look
    # expired since second 5 and the error would be INVALID.
    rs = ruleset([rule("established", state=["established", "related"]),
                  rule("invalid", "drop", state=["invalid"]), rule("rtp", proto="udp", dport=RTP)],
                 conntrack=True, timeouts={"udp": 5, "udp_stream": 8})
    peer, psap = "198.51.100.7", "203.0.113.10"
    records = rtp_both_ways(peer, 20000, psap, 30000, 0.0, 1000)
    quoted = ip(peer, psap, 17, udp_segment(20000, 30000, b"\x80\x00in"))[:48]
    records.append(icmp(psap, peer, 3, 3, data=quoted, ts=20.001))
    records += rtp_both_ways(peer, 20000, psap, 30000, 20.002, 100)
    result = same_replay(rs, write(tmp_path, records), PROFILE, 1 << 20)
    assert result.verdicts == {"accept": 2201} and result.fast > 2190


def test_pure_walk_is_the_engine_walk():
    rs = ruleset([rule("log", "log"), rule("guard", jump("g"), proto="udp"),
                  rule("established", state=["established"])], chains={"g": [rule("back", "return")]},
                 conntrack=True, policy="accept")
    engine = Engine(rs)
    first = udp("198.51.100.7", 20000, "203.0.113.10", 30000, b"\x80", ts=0.0, iface_in="eth0", iface_out="eth1")
    reply = udp("203.0.113.10", 30000, "198.51.100.7", 20000, b"\x80", ts=0.1, iface_in="eth1", iface_out="eth0")
    engine.verdict(first)
    engine.verdict(reply)
    conn, is_reply = engine.conntrack.entries[(4, 17, first.src, first.dst, 20000, 30000, 0)]
    nxt = first._replace(ts=0.2)
    cached = PureWalk(engine).verdict(nxt, "forward", conn, is_reply, "established")
    assert cached == engine.verdict(nxt) and cached.rule.id == "established"


def test_a_string_rule_the_packet_reaches_makes_it_uncacheable():
    rs = ruleset([rule("s", "drop", string=(StringMatch(b"x"),)), rule("ok", "accept")], conntrack=True)
    engine = Engine(rs)
    r = udp("198.51.100.7", 20000, "203.0.113.10", 30000, b"\x80", ts=0.0)
    assert PureWalk(engine).verdict(r, "forward", None, False, "new") is None


# ----------------------------------------------------------------------------- real captures

SIPP = sorted((ROOT / "traces/sipp").glob("*.pcap*"))
LAB = sorted((ROOT / "traces/ng911-lab").glob("*.pcap"))
BROKEN = sorted((ROOT / "rulesets/broken").glob("*.yaml"))


@pytest.mark.parametrize("pcap", SIPP, ids=lambda p: p.name)
def test_sipp_captures(pcap):
    for rules in [REFERENCE, *map(str, BROKEN)]:
        same_replay(rules, pcap, PROFILE, 4096)


@pytest.mark.parametrize("pcap", LAB, ids=lambda p: p.name[:30])
def test_lab_captures(pcap):
    lab = profile_from_dict({"psap": ["0.0.0.0/0", "::/0"], "peers": ["0.0.0.0/0", "::/0"]}, "<lab>")
    for rules in ({"policy": "accept", "rules": []}, REFERENCE):
        same_replay(rules, pcap, lab, 4096)


def test_benchmark_trace(tmp_path):
    from fwtest.bench import generate_trace

    info = generate_trace(tmp_path / "bench.pcap", 40_000, seed=3, concurrency=8)
    assert info.fragments and info.sip_packets
    for rules in (REFERENCE, str(ROOT / "rulesets/broken/fragments-stateless.yaml"),
                  str(ROOT / "rulesets/broken/ipv6-forgotten.yaml")):
        result = same_replay(rules, info.path, PROFILE, 1 << 20)
        assert result.packets == info.packets
    assert result.fast > 0.9 * info.packets
