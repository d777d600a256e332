"""limit / hashlimit token buckets on record timestamps."""

from __future__ import annotations

from engine_packets import rule, ruleset, udp

from fwtest.engine import replay
from fwtest.engine.limits import TokenBucket
from fwtest.rules.ir import LimitMatch

S = "203.0.113.10"


def sip_from(src, ts):
    return udp(src, 5060, S, 5060, b"INVITE", ts=ts)


def under_limit_accepts(limit):
    return ruleset([rule("lim", limit=limit, dport=5060)], policy="drop")


def test_burst_then_rate():
    # 10/s, burst 5: five at once pass, the sixth waits for a token (0.1 s).
    rs = under_limit_accepts(LimitMatch(rate=10.0, burst=5))
    recs = [sip_from("198.51.100.1", 0.0)] * 6 + [sip_from("198.51.100.1", 0.05), sip_from("198.51.100.1", 0.1)]
    got = [v.verdict for v in replay(rs, recs)]
    assert got == ["accept"] * 5 + ["drop", "drop", "accept"]


def test_above_matches_once_the_rate_is_exceeded():
    rs = ruleset([rule("over", "drop", limit=LimitMatch(rate=1.0, burst=2, above=True)), rule("acc")],
                 policy="drop")
    got = [v.rule.id for v in replay(rs, [sip_from("198.51.100.1", 0.0)] * 3 + [sip_from("198.51.100.1", 1.5)])]
    assert got == ["acc", "acc", "over", "acc"]


def test_a_surge_above_the_limit_loses_calls():
    # 50 calls in 5 s against 5/s burst 10: 10 + 5 * 5 = 35 get through (tokens refill as time passes).
    rs = under_limit_accepts(LimitMatch(rate=5.0, burst=10))
    recs = [sip_from(f"198.51.100.{1 + i}", i * 0.1) for i in range(50)]
    accepted = sum(v.accepted for v in replay(rs, recs))
    assert 33 <= accepted <= 36


def test_per_source_buckets_and_prefixes():
    per_src = LimitMatch(rate=1.0, burst=1, per=("src",))
    rs = under_limit_accepts(per_src)
    recs = [sip_from("198.51.100.1", 0), sip_from("198.51.100.2", 0), sip_from("198.51.100.1", 0.1)]
    assert [v.verdict for v in replay(rs, recs)] == ["accept", "accept", "drop"]
    per_24 = LimitMatch(rate=1.0, burst=1, per=("src",), src_prefix=24)
    rs = under_limit_accepts(per_24)
    recs = [sip_from("198.51.100.1", 0), sip_from("198.51.100.2", 0), sip_from("198.51.101.1", 0)]
    assert [v.verdict for v in replay(rs, recs)] == ["accept", "drop", "accept"]


def test_named_hashlimits_share_a_table():
    shared = LimitMatch(rate=1.0, burst=1, name="sip")
    rs = ruleset([rule("a", limit=shared, sport=1), rule("b", limit=shared, sport=2)], policy="drop")
    recs = [udp("198.51.100.1", 1, S, 5060, ts=0), udp("198.51.100.1", 2, S, 5060, ts=0)]
    assert [v.verdict for v in replay(rs, recs)] == ["accept", "drop"]
    unnamed = LimitMatch(rate=1.0, burst=1)
    rs = ruleset([rule("a", limit=unnamed, sport=1), rule("b", limit=unnamed, sport=2)], policy="drop")
    assert [v.verdict for v in replay(rs, recs)] == ["accept", "accept"]


def test_only_packets_the_rest_of_the_rule_matches_pay():
    rs = ruleset([rule("lim", limit=LimitMatch(rate=0.001, burst=1), dport=5060)], policy="drop")
    recs = [udp("198.51.100.1", 1, S, 9999, ts=0), udp("198.51.100.1", 1, S, 5060, ts=0)]
    assert [v.verdict for v in replay(rs, recs)] == ["drop", "accept"]


def test_bucket_refills_to_burst_at_most():
    bucket = TokenBucket(rate=100.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]
