"""Diffs: regressions name the rule on both sides, warnings show what a change opens."""

from __future__ import annotations

import pytest
from space_helpers import (
    BROKEN,
    HARMLESS,
    REFERENCE,
    RULESETS,
    expected_rule,
    flows,
    load,
    profile,
    reference,
    with_rule,
)

from fwtest.space.diff import diff

DIFFED = [p for p in BROKEN if p.stem in ("deny-above-allow-overlap", "rtp-range-narrowed", "string-hits-sos",
                                           "udp-timeout-shorter-than-call", "rate-limit-below-surge",
                                           "fragments-stateless", "callback-closed")]


@pytest.mark.parametrize("path", DIFFED, ids=[p.stem for p in DIFFED])
def test_each_broken_variant_regresses_naming_both_rules(path):
    d = diff(reference(), load(path), profile(), flows=flows())
    assert not d.passed
    assert expected_rule(path) in {c.candidate.id for c in d.regressions}
    for c in d.regressions:
        j = c.to_json()
        assert j["kind"] == "regression" and j["evidence"] == "proof"
        assert j["rule"]["file"] == str(path)
        if c.flow != "surge":
            # Accepted in the base by a rule or policy of the reference, with its line.
            assert j["baseline_rule"]["file"] == str(REFERENCE) and j["baseline_rule"]["line"] > 0
            assert c.witnesses and not c.witnesses[0].verdict.accepted
        assert c.region_text()


@pytest.mark.parametrize("path", HARMLESS, ids=[p.stem for p in HARMLESS])
def test_harmless_edits_do_not_regress(path):
    assert diff(reference(), load(path), profile(), flows=flows()).passed


def test_the_host_deny_regression_is_exactly_that_host():
    rs = with_rule(REFERENCE, {"id": "deny-one-peer", "src": "198.51.100.77", "action": "drop"},
                   after="sip-scanners")
    d = diff(reference(), rs, profile(), flows=flows())
    invite = next(c for c in d.regressions if c.label == "INVITE" and c.family == 4 and c.flow == "emergency-call")
    assert invite.base.id == "sip-udp-in" and invite.candidate.id == "deny-one-peer"
    assert invite.region.count == 1 * 64 * 65535
    assert "src 198.51.100.77 " in invite.region_text()[0]


def test_newly_accepted_packets_between_peers_and_psap_are_warnings():
    rs = with_rule(REFERENCE, {"id": "ssh-from-peers", "proto": "tcp", "src": "198.51.100.0/24",
                               "dst": "203.0.113.0/26", "dport": 22, "action": "accept"}, before="log-rest")
    d = diff(reference(), rs, profile(), flows=flows())
    assert d.passed and d.warnings
    w = d.warnings[0]
    assert w.candidate.id == "ssh-from-peers" and w.base.id == "drop-rest"
    assert "dport 22" in w.region_text()[0] and "src 198.51.100.0/24" in w.region_text()[0]


def test_fixing_a_break_is_restored_not_a_regression():
    d = diff(load(BROKEN[0].parent / "msrp-closed.yaml"), reference(), profile(), flows=flows())
    assert d.passed and d.restored
    assert {c.candidate.id for c in d.restored} == {"msrp-in"}


def test_different_formats_compare_as_ir():
    base = load([RULESETS / "iptables" / "psap-edge.v4", RULESETS / "iptables" / "psap-edge.v6"])
    broken = load(BROKEN[0].parent / "rtp-range-narrowed.yaml")
    d = diff(base, broken, profile(), flows=flows())
    assert not d.passed
    assert {c.candidate.id for c in d.regressions} == {"drop-rest"}
    assert all(c.base.source.file.endswith((".v4", ".v6")) for c in d.regressions if c.base)
    # And nft JSON of the reference against the native reference: nothing regresses.
    assert diff(reference(), load(RULESETS / "nft" / "psap-edge.json"), profile(), flows=flows()).passed


def test_a_limit_one_call_outruns_is_a_regression():
    # `fwtest diff` once said "no emergency packet changes fate" for a 10/s limit added
    # to the established accept, while the replay saw every TLS call die: the diff
    # judged limits on the surge only. Now each flow's own timeline is judged too.
    from space_helpers import with_limit

    from fwtest.rules.ir import LimitMatch

    base = reference()
    limited = with_limit(base, "established", LimitMatch(rate=10, burst=10))
    d = diff(base, limited, profile(), flows=flows())
    regressions = [c for c in d.changes if c.kind == "regression"]
    assert {c.flow for c in regressions} >= {"emergency-call", "callback", "options-keepalive", "text", "surge"}
    for c in regressions:
        assert c.candidate.id == "drop-rest" and "finds the bucket empty" in c.detail
        w = c.witnesses[0]
        assert len(w.burst) > 10 and not w.verdict.accepted
    # The other way round the limit is lifted: nothing regresses.
    assert not [c for c in diff(limited, base, profile(), flows=flows()).changes if c.kind == "regression"]
