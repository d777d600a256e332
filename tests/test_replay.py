"""Captures through rulesets: per-packet verdicts, per-call outcomes, trace evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fwtest.cli import main
from fwtest.profile import load_profile, profile_from_dict
from fwtest.replay import replay_capture
from fwtest.traffic.pcap import read_records

ROOT = Path(__file__).resolve().parent.parent
PROFILE = str(ROOT / "rulesets/psap-edge.profile.yaml")
REFERENCE = str(ROOT / "rulesets/psap-edge.yaml")
SIPP = sorted((ROOT / "traces/sipp").glob("*.pcap*"))
LAB = sorted((ROOT / "traces/ng911-lab").glob("*.pcap"))


@pytest.mark.parametrize("pcap", SIPP, ids=lambda p: p.name)
def test_sipp_calls_complete_under_the_reference(pcap):
    result = replay_capture(REFERENCE, pcap, load_profile(PROFILE))
    calls = result.reconstruction.calls
    assert calls and result.exit_code == 0
    for call in calls:
        assert call.captured.set_up and call.captured.media_both_ways and call.captured.torn_down
        assert call.under_rules == call.captured and call.first_drop is None


@pytest.mark.parametrize("broken, pcaps", [
    ("fragments-stateless", ["emergency-udp-v6.pcapng"]),   # v4: see tests/traffic/test_calls.py
    ("sip-tcp-tls-missing", ["emergency-tcp-v4-ns.pcap", "emergency-tcp-v6-sll.pcap"]),
    ("ipv6-forgotten", ["emergency-udp-v6.pcapng", "emergency-tcp-v6-sll.pcap"]),
])
def test_sipp_calls_break_under_broken_rulesets(broken, pcaps):
    path = str(ROOT / "rulesets/broken" / f"{broken}.yaml")
    for name in pcaps:
        result = replay_capture(path, ROOT / "traces/sipp" / name, load_profile(PROFILE))
        assert result.exit_code == 1 and result.broken_calls
        for call in result.broken_calls:
            assert "set up" in call.failed_under_rules
            assert call.first_drop.verdict.rule.id == "drop-rest"
            assert call.first_drop.verdict.rule.source.file == path


def test_jsonl_has_one_object_per_packet(capsys):
    pcap = str(ROOT / "traces/sipp/emergency-udp-v4.pcap")
    assert main(["replay", REFERENCE, pcap, "--profile", PROFILE, "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == sum(1 for _ in read_records(pcap))
    objects = [json.loads(line) for line in lines]
    assert [o["index"] for o in objects] == list(range(len(objects)))
    assert {o["verdict"] for o in objects} <= {"accept", "drop", "reject"}
    assert all(o["rule"]["file"] == REFERENCE for o in objects if o["verdict"] == "drop")


def test_check_trace_evidence(capsys):
    broken = str(ROOT / "rulesets/broken/fragments-stateless.yaml")
    code = main(["check", broken, "--profile", PROFILE, "--trace", str(ROOT / "traces/sipp/emergency-udp-v6.pcapng"),
                 "--format", "json", "--no-proof"])
    report = json.loads(capsys.readouterr().out)
    traced = [f for f in report["findings"] if f["evidence"] == "trace"]
    assert code == 1 and len(traced) == 1
    assert all(f["rule"]["id"] == "drop-rest" and f["flow"] == "emergency-call" for f in traced)


# The lab's addresses are its own (loopback, private ranges): a profile that
# names them and a ruleset that lets everything through must leave every call
# exactly as captured; a drop-all ruleset must break every call that set up.
LAB_PROFILE = profile_from_dict({"psap": ["0.0.0.0/0", "::/0"], "peers": ["0.0.0.0/0", "::/0"]}, "<lab>")


@pytest.mark.parametrize("pcap", LAB, ids=lambda p: p.name[:30])
def test_lab_captures_replay(pcap):
    everything = replay_capture({"policy": "accept", "rules": []}, pcap, LAB_PROFILE)
    assert everything.read.malformed == 0 and everything.exit_code == 0
    for call in everything.reconstruction.calls:
        assert call.under_rules == call.captured
    nothing = replay_capture({"policy": "drop", "rules": []}, pcap, LAB_PROFILE)
    set_up = [c for c in nothing.reconstruction.calls if c.captured.set_up]
    assert all("set up" in c.failed_under_rules for c in set_up)
    if set_up:
        assert nothing.exit_code == 1
