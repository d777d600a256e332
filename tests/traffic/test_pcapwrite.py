"""fwtest.traffic.pcapwrite: pcap files that Scapy and tshark read as the synthetic traffic."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader

from fwtest.profile import load_profile
from fwtest.traffic.pcapwrite import EPOCH, FLOW_GAP, lay_out, write_flows, write_pcap
from fwtest.traffic.synth import synthesize

PROFILE = {
    "psap": ["203.0.113.0/26", "2001:db8:911::/64"],
    "peers": ["198.51.100.0/24", "2001:db8:100::/56"],
    "sip": {"udp": 5060, "tcp": 5060, "tls": 5061},
    "rtp": "16384-32767",
    "flows": ["emergency-call", "text"],
    "surge": {"calls": 3, "seconds": 1},
    "call_seconds": 4,
}


@pytest.fixture(scope="module")
def flows():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FWTEST_CACHE", "0")
        return synthesize(load_profile(PROFILE))


def test_records_round_trip_through_the_file(tmp_path, flows):
    records = [s.record for s in flows[0].steps[:40]] + [s.record for s in flows[-5].steps[:5]]
    path = tmp_path / "x.pcap"
    assert write_pcap(records, path) == len(records)
    reader = RawPcapReader(str(path))
    assert reader.linktype == 1
    frames = list(reader)
    assert len(frames) == len(records)
    for (frame, meta), rec in zip(frames, records, strict=True):
        assert frame[14:] == rec.data
        assert Ether(frame).type == (0x0800 if rec.family == 4 else 0x86DD)
        stamp = meta.sec + meta.usec / 1e6
        assert stamp == pytest.approx(EPOCH + rec.ts, abs=1e-6)
        peer_side = rec.iface_in == "eth0"
        assert Ether(frame).src == ("02:00:00:00:00:01" if peer_side else "02:00:00:00:00:02")


def test_flows_laid_one_after_another(flows):
    laid = lay_out(flows)
    assert len(laid) == sum(len(f.steps) for f in flows)
    times = [r.ts for r in laid]
    assert times == sorted(times)
    # Each non-surge flow begins a gap after the previous block ends.
    position, starts = 0, []
    for f in flows:
        if f.flow != "surge":
            starts.append((laid[position].ts, laid[position + len(f.steps) - 1].ts))
            position += len(f.steps)
    for (_, end), (start, _) in zip(starts[:-1], starts[1:], strict=True):
        assert start == pytest.approx(end + FLOW_GAP)
    surge = laid[position:]
    first = [f for f in flows if f.flow == "surge"]
    assert len(surge) == sum(len(f.steps) for f in first)
    # Surge calls keep their shared timeline (relative set-up times).
    assert surge[-1].ts - surge[0].ts == pytest.approx(
        max(s.record.ts for f in first for s in f.steps) - min(s.record.ts for f in first for s in f.steps), abs=1e-5)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (apt-get install tshark)")
def test_tshark_sees_sip_rtp_msrp_and_tls(tmp_path, flows):
    path = tmp_path / "synth.pcap"
    assert write_flows(flows, path) == sum(len(f.steps) for f in flows)
    rtp_ports = sorted({s.record.dport for f in flows for s in f.steps if s.label == "RTP"})
    decode = []
    for port in rtp_ports:
        decode += ["-d", f"udp.port=={port},rtp", "-d", f"udp.port=={port + 1},rtcp"]
    checks = ["-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"]
    out = subprocess.run(["tshark", "-r", str(path), *checks, *decode, "-T", "fields", "-e", "_ws.col.Protocol",
                          "-e", "_ws.col.Info"], capture_output=True, text=True, check=True, timeout=120).stdout
    lines = out.splitlines()
    assert len(lines) == sum(len(f.steps) for f in flows)
    assert any(line.startswith("SIP/SDP/XML\tRequest: INVITE urn:service:sos") for line in lines)  # reassembled
    assert any("Status: 200 OK" in line for line in lines)
    assert sum(line.startswith("RTP\t") for line in lines) == sum(
        1 for f in flows for s in f.steps if s.label == "RTP")
    assert any(line.startswith("RTCP\t") and "Sender Report" in line for line in lines)
    assert any(line.startswith("MSRP\t") for line in lines)
    assert any(line.startswith("TLSv1.3\t") for line in lines)
    expert = subprocess.run(["tshark", "-r", str(path), *checks, *decode, "-q", "-z", "expert,warn"],
                            capture_output=True, text=True, check=True, timeout=120).stdout
    # No malformed packets, bad checksums or TCP sequence anomalies.
    assert "Errors" not in expert and "Warnings" not in expert, expert
