"""The Python API: check() on paths, plain dicts and objects, as the CLI does."""

from __future__ import annotations

from pathlib import Path

import yaml

import fwtest
from fwtest.api import check

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "rulesets" / "psap-edge.yaml"
PROFILE = ROOT / "rulesets" / "psap-edge.profile.yaml"

SMALL_PROFILE = {"name": "tiny", "psap": ["203.0.113.0/26"], "peers": ["198.51.100.0/24"],
                 "sip": {"udp": 5060}, "flows": ["emergency-call", "options-keepalive"]}


def test_dicts_work_like_files():
    ruleset = yaml.safe_load(REFERENCE.read_text())
    profile = yaml.safe_load(PROFILE.read_text())
    from_dicts = check(ruleset, profile)
    from_files = check(str(REFERENCE), str(PROFILE))
    assert from_dicts.result == from_files.result == "pass"
    assert [(r.flow, r.transport, r.family, r.passed) for r in from_dicts.flows] == \
           [(r.flow, r.transport, r.family, r.passed) for r in from_files.flows]


def test_top_level_api_is_lazy_and_complete():
    report = fwtest.check({"policy": "accept", "rules": []}, SMALL_PROFILE)
    assert report.result == "pass" and report.exit_code == 0
    assert {(r.flow, r.transport, r.family) for r in report.flows} == {
        ("emergency-call", "udp", 4), ("options-keepalive", "udp", 4)}


def test_stateless_drop_all_blocks_everything_at_the_policy():
    report = check({"policy": "drop", "rules": []}, SMALL_PROFILE)
    assert report.result == "fail" and report.exit_code == 1
    assert all(not r.passed for r in report.flows)
    for f in report.findings:
        assert f.kind == "blocked" and f.rule["id"] == "policy"
    call = next(f for f in report.findings if f.flow == "emergency-call")
    assert call.message.startswith("INVITE") and call.detail.startswith("not set up")


def test_one_way_audio_is_named():
    # SIP both ways, RTP only towards the PSAP: the call sets up, the PSAP hears
    # the caller, the caller hears nothing (and the PSAP's RTP is never a reply:
    # the caller's RTP is dropped nowhere, the PSAP's is new in its direction).
    ruleset = {"policy": "drop", "rules": [
        # Stateless: the INVITE's later fragments carry no ports and need their own rule.
        {"id": "fragments", "fragment": True, "action": "accept"},
        {"id": "sip", "proto": "udp", "dport": 5060, "action": "accept"},
        {"id": "rtp-in", "proto": "udp", "dst": "203.0.113.0/26", "dport": "16384-32767", "action": "accept"},
    ]}
    report = check(ruleset, {**SMALL_PROFILE, "flows": ["emergency-call"]}, proof=False)
    (finding,) = report.findings
    assert finding.message.startswith("RTP") and finding.rule["id"] == "policy"
    assert "no audio from the PSAP to the caller" in finding.detail
