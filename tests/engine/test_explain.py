"""explain: the stateless, rule-by-rule walk of one packet."""

from __future__ import annotations

import pytest
from engine_packets import frag_records, ip, jump, rule, ruleset, sip_invite, tcp, udp, udp_segment

from fwtest.engine import explain, replay
from fwtest.rules.ir import Action, LimitMatch, SipMatch

P, S = "198.51.100.7", "203.0.113.10"


def psap_edge():
    return ruleset([
        rule("established", state=["established", "related"]),
        rule("sip-from-peers", proto="udp", src="198.51.100.0/24", dst="203.0.113.0/26", dport=5060),
        rule("to-guard", jump("guard"), proto="udp", dport="16384-32767"),
        rule("rtp", proto="udp", dport="16384-32767"),
    ], chains={"guard": [rule("rtp-burst", "drop", limit=LimitMatch(rate=1.0, burst=1, above=True))]},
        policy="drop", conntrack=True, helpers=["sip"])


def test_every_rule_looked_at_with_why_not():
    e = explain(psap_edge(), udp(P, 20000, S, 5060 + 1), state="new")
    assert e.verdict.verdict == "drop" and e.verdict.rule is None
    skipped = {s.rule.id: s.why_not for s in e.steps if s.rule is not None and not s.matched}
    assert skipped == {
        "established": "state new does not match established,related",
        "sip-from-peers": "dport 5061 not in 5060",
        "to-guard": "dport 5061 not in 16384-32767",
        "rtp": "dport 5061 not in 16384-32767",
    }
    assert e.steps[-1].action.startswith("policy drop")
    assert "verdict: drop" in e.lines()[-1]


def test_jumps_are_followed_and_indented():
    e = explain(psap_edge(), udp(P, 20000, S, 30000), state="new")
    assert e.verdict.verdict == "accept" and e.verdict.rule.id == "rtp"
    depths = [(s.rule.id if s.rule else s.action, s.depth) for s in e.steps]
    assert ("rtp-burst", 1) in depths and ("rtp", 0) in depths
    # A one-packet explanation has full buckets: the first packet is never over a limit.
    burst = next(s for s in e.steps if s.rule and s.rule.id == "rtp-burst")
    assert not burst.matched and "not exceeded" in burst.why_not
    assert [r.id for r in e.verdict.trace] == ["to-guard", "rtp"]


def test_state_is_what_the_caller_says():
    e = explain(psap_edge(), udp(S, 5060, P, 5060), state="established")
    assert e.verdict.accepted and e.verdict.rule.id == "established" and e.state == "established"
    with pytest.raises(ValueError):
        explain(psap_edge(), udp(S, 5060, P, 5060), state="ESTABLISHED!")


def test_explain_agrees_with_replay_on_first_packets():
    rs = psap_edge()
    for record in (udp(P, 5060, S, 5060, sip_invite(P, 20000)), udp(P, 1, S, 22), tcp(P, 1, S, 5060, 2),
                   udp("192.0.2.1", 5060, S, 5060)):
        assert explain(rs, record, state="new").verdict == replay(rs, [record])[0]


def test_without_conntrack_the_state_is_untracked_and_said_so():
    rs = ruleset([rule("est", state=["established"])], policy="drop")
    e = explain(rs, udp(P, 1, S, 2), state="established")
    assert e.state == "untracked" and not e.verdict.accepted
    assert any("no conntrack" in n for n in e.notes)


def test_a_lone_fragment_never_reaches_the_rules_with_conntrack():
    frags = frag_records(ip(P, S, 17, udp_segment(5060, 5060, b"x" * 1000)), 400)
    e = explain(psap_edge(), frags[1], state="new")
    assert e.verdict.verdict == "drop" and e.steps == ()
    assert "held for reassembly" in e.verdict.reason
    stateless = ruleset([rule("sip", dport=5060)], policy="drop")
    e = explain(stateless, frags[1])
    # nf_tables reads a later fragment's first data bytes as its ports ("xx" = 30840).
    assert e.steps[0].why_not == "dport 30840 (a later fragment: the bytes nf_tables reads as dport) not in 5060"


def test_helper_match_with_a_given_master_helper():
    rs = ruleset([rule("rtp-helper", state=["related"], helper="sip")], policy="drop", conntrack=True,
                 helpers=["sip"])
    record = udp(P, 20000, S, 30000)
    assert not explain(rs, record, state="related").verdict.accepted
    assert explain(rs, record, state="related", helper="sip").verdict.accepted


def test_sip_match_explains_itself():
    rs = ruleset([rule("options-only", sip=SipMatch(method="^OPTIONS$"))], policy="drop")
    e = explain(rs, udp(P, 5060, S, 5060, sip_invite(P, 20000)))
    assert e.steps[0].why_not == "sip method INVITE does not match '^OPTIONS$'"
    e = explain(rs, udp(P, 5060, S, 5060, b"\x80\x00 not sip at all"))
    assert e.steps[0].why_not == "no SIP message in the payload"


def test_notrack_in_raw_is_noted():
    rs = ruleset([rule("untracked", state=["untracked"])], policy="drop", conntrack=True,
                 bases=[("raw", "prerouting", -300, "accept", [rule("nt", Action("notrack"))])])
    e = explain(rs, udp(P, 1, S, 2), state="new")
    assert e.verdict.accepted and e.state == "new" and e.verdict.state == "untracked"
    assert any("notrack" in n for n in e.notes)
    assert [line.split()[0] for line in e.lines()[2:4]] == ["prerouting:", "match"]
