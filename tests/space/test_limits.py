"""Rate limits in the proof, against the replay of the same synthetic timelines.

The proof judges a limited rule on the flows' own timelines, class by class,
with every address of one side taken as one host. That over-approximates
what pays into a bucket, never under: so a flow the replay finds blocked by a
rate limit must be one the proof reports (the proof may report more, each
with a burst the engine confirms).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from space_helpers import flows, profile, reference, with_limit

from fwtest.api import replay_flows
from fwtest.rules.ir import LimitMatch, Ruleset
from fwtest.space.proof import prove

RULE_IDS = [r.id for r in reference().rules() if r.action.kind in ("accept", "jump", "drop")]


limits = st.builds(
    LimitMatch,
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0, 25.0, 60.0, 200.0]),
    burst=st.integers(1, 120),
    above=st.booleans(),
    per=st.sampled_from([(), ("src",), ("dst",), ("src", "dport"), ("sport",), ("src", "dst")]),
)


def rows_replay(rs: Ruleset) -> set[tuple]:
    return {(o.flow.flow, o.flow.transport, o.flow.family) for o in replay_flows(rs, profile(), flows())
            if not o.passed}


def rows_proof(rs: Ruleset) -> set[tuple]:
    rows = {(f.flow, f.transport, f.family) for f in prove(rs, profile(), flows=flows(), max_witnesses=1).findings}
    # Surge calls are emergency calls: a class the proof finds blocked for every
    # emergency call is reported under that flow, and blocks the surge's calls too.
    return rows | {("surge", t, f) for flow, t, f in rows if flow == "emergency-call"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(RULE_IDS), limits)
def test_what_a_limit_costs_the_replay_the_proof_reports(rule_id, limit):
    candidate = with_limit(reference(), rule_id, limit)
    assert rows_replay(candidate) <= rows_proof(candidate)


def test_the_reference_rate_guard_passes_and_tighter_ones_fail():
    assert not rows_proof(reference()) and not rows_replay(reference())
    flood = next(r for r in reference().rules() if r.match.limit is not None)
    # One bucket for every caller: the surge's INVITEs run it dry, in the replay and the proof.
    shared = with_limit(reference(), flood.id, replace(flood.match.limit, rate=2.0, burst=5, per=()))
    assert ("surge", "udp", 4) in rows_replay(shared) <= rows_proof(shared)
    # One bucket per source host: the synthetic surge comes from 50 hosts and passes the
    # replay, but one carrier SBC may bring the whole surge, and the proof says so.
    per_host = with_limit(reference(), flood.id, replace(flood.match.limit, rate=2.0, burst=5))
    assert not rows_replay(per_host) and ("surge", "udp", 4) in rows_proof(per_host)
