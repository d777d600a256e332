"""Chain walking: first match, jump/goto/return, policies, several base chains per hook."""

from __future__ import annotations

import pytest
from engine_packets import goto, jump, rule, ruleset, udp

from fwtest.engine import Engine, replay
from fwtest.errors import InputError
from fwtest.rules.ir import Action, IfaceMatch

P, S = "198.51.100.7", "203.0.113.10"


def one(rs, record, path="forward", **kw):
    (v,) = replay(rs, [record], path, **kw)
    return v


def pkt(dport=5060, **kw):
    return udp(P, 40000, S, dport, b"x", **kw)


def test_first_match_wins_and_names_the_rule():
    a = rule("a", "drop", dport=5060)
    b = rule("b", "accept", dport=5060)
    v = one(ruleset([a, b]), pkt())
    assert (v.verdict, v.rule, v.source) == ("drop", a, a.source)
    assert v.trace == (a,)


def test_policy_decides_when_nothing_matches():
    rs = ruleset([rule("a", dport=80)], policy="drop")
    v = one(rs, pkt())
    assert v.verdict == "drop" and v.rule is None
    assert v.source == rs.bases[0].source
    assert "policy drop" in v.reason
    assert one(ruleset([], policy="accept"), pkt()).verdict == "accept"


def test_log_and_continue_fall_through_and_appear_in_the_trace():
    log = rule("log", "log")
    cont = rule("count", "continue")
    acc = rule("acc")
    v = one(ruleset([log, cont, acc]), pkt())
    assert v.verdict == "accept" and v.rule is acc
    assert v.trace == (log, cont, acc)


def test_reject_is_its_own_verdict():
    v = one(ruleset([rule("r", "reject")], policy="accept"), pkt())
    assert v.verdict == "reject" and not v.accepted


def test_end_of_user_chain_returns_to_the_caller():
    j = rule("j", jump("sub"))
    after = rule("after", "drop")
    rs = ruleset([j, after], chains={"sub": [rule("nope", dport=1)]}, policy="accept")
    v = one(rs, pkt())
    assert v.rule is after and v.trace == (j, after)


def test_return_in_user_chain_resumes_after_the_jump():
    ret = rule("ret", "return")
    rs = ruleset([rule("j", jump("sub")), rule("after", "drop")],
                 chains={"sub": [ret, rule("unreached")]}, policy="accept")
    v = one(rs, pkt())
    assert v.rule.id == "after"
    assert [r.id for r in v.trace] == ["j", "ret", "after"]


def test_return_from_goto_chain_goes_back_to_the_chain_that_jumped():
    # filter -jump-> A -goto-> B -return-> back into filter (not into A).
    rs = ruleset([rule("j", jump("A")), rule("after-jump", "drop")],
                 chains={"A": [rule("g", goto("B")), rule("in-A-after-goto", "accept")],
                         "B": [rule("ret", "return")]}, policy="accept")
    v = one(rs, pkt())
    assert v.rule.id == "after-jump"
    assert [r.id for r in v.trace] == ["j", "g", "ret", "after-jump"]


def test_goto_from_base_chain_then_end_applies_the_policy():
    rs = ruleset([rule("g", goto("B")), rule("unreached", "accept")], chains={"B": []}, policy="drop")
    v = one(rs, pkt())
    assert v.verdict == "drop" and v.rule is None and v.trace[0].id == "g"


def test_return_in_base_chain_applies_the_policy():
    rs = ruleset([rule("ret", "return"), rule("unreached", "drop")], policy="accept")
    v = one(rs, pkt())
    assert v.verdict == "accept" and v.rule is None


def test_accept_ends_only_its_base_chain():
    rs = ruleset([rule("acc")], policy="drop",
                 bases=[("late", "forward", 10, "accept", [rule("late-drop", "drop", dport=5060)])])
    v = one(rs, pkt())
    assert v.verdict == "drop" and v.rule.id == "late-drop"
    assert [r.id for r in v.trace] == ["acc", "late-drop"]


def test_base_chains_run_in_priority_order():
    rs = ruleset([rule("native-drop", "drop")], policy="drop",
                 bases=[("early", "forward", -10, "accept", [rule("early-drop", "drop")])])
    assert one(rs, pkt()).rule.id == "early-drop"


def test_drop_on_an_earlier_hook_ends_the_packet():
    rs = ruleset([rule("acc")], bases=[("pre", "prerouting", 0, "drop", [])])
    v = one(rs, pkt())
    assert v.verdict == "drop" and "prerouting" in v.reason


def test_native_chain_sits_only_on_the_native_hook():
    rs = ruleset([rule("d", "drop")], policy="drop")
    # On the input path with native hook forward, no chain filters the packet.
    v = one(rs, pkt(), "input", native_hook="forward")
    assert v.verdict == "accept" and "no base chain" in v.reason
    assert one(rs, pkt(), "input", native_hook="input").verdict == "drop"
    assert one(rs, pkt(), "output", native_hook="output").verdict == "drop"


def test_accept_names_the_accepting_rule_not_a_later_policy():
    rs = ruleset([rule("acc")], bases=[("post", "postrouting", 100, "accept", [])])
    v = one(rs, pkt())
    assert v.verdict == "accept" and v.rule.id == "acc"


def test_interfaces_are_only_known_where_the_kernel_knows_them():
    r_in = rule("in-eth0", "accept", iface_in=IfaceMatch(("eth0",)))
    r_out = rule("out-eth1", "accept", iface_out=IfaceMatch(("eth1",)))
    record = pkt(iface_in="eth0", iface_out="eth1")
    rs = ruleset([r_out], policy="drop")
    assert one(rs, record).rule is r_out                              # forward: both known
    assert one(rs, record, "input", native_hook="input").verdict == "drop"  # input: no output device
    rs_in = ruleset([r_in], policy="drop")
    assert one(rs_in, record, "output", native_hook="output").verdict == "drop"
    assert one(ruleset([rule("w", iface_in=IfaceMatch(("eth+",)))]), record).verdict == "accept"


def test_rule_family_restricts_the_rule():
    r = rule("v6-only", "drop", family=6)
    assert one(ruleset([r], policy="accept"), pkt()).verdict == "accept"
    assert one(ruleset([r], policy="accept"), udp("2001:db8::1", 1, "2001:db8::2", 5060)).verdict == "drop"


def test_jump_loop_is_refused_at_its_rule():
    loop = rule("back", jump("A"))
    rs = ruleset([rule("j", jump("A"))], chains={"A": [rule("to-b", jump("B"))], "B": [loop]})
    with pytest.raises(InputError) as e:
        Engine(rs)
    assert e.value.line == loop.source.line and "loop" in e.value.message


def test_jump_to_missing_chain_is_refused():
    r = rule("j", jump("nowhere"))
    with pytest.raises(InputError) as e:
        Engine(ruleset([r]))
    assert e.value.line == r.source.line


def test_unmodelled_helper_is_refused_not_ignored():
    r = rule("ftp", Action("ct_helper", "ftp"))
    with pytest.raises(InputError, match="ftp"):
        Engine(ruleset([r], conntrack=True))
    with pytest.raises(InputError, match="ftp"):
        Engine(ruleset([], conntrack=True, helpers=["ftp"]))


def test_unknown_path_and_hook_are_errors():
    with pytest.raises(ValueError):
        replay(ruleset([]), [pkt()], "sideways")
    with pytest.raises(ValueError):
        Engine(ruleset([]), native_hook="prerouting")
    with pytest.raises(ValueError):
        replay(ruleset([]), [pkt(), pkt()], ["forward"])


def test_paths_per_record():
    rs = ruleset([rule("d", "drop")], policy="drop")
    out = replay(rs, [pkt(), pkt()], ["forward", "input"], native_hook="forward")
    assert [v.verdict for v in out] == ["drop", "accept"]


def test_reject_the_kernel_cannot_answer_is_a_silent_drop():
    from engine_packets import frag_records, icmp, ip, tcp, udp_segment

    rs = ruleset([rule("r", "reject")], policy="accept")
    frags = frag_records(ip(P, S, 17, udp_segment(1, 2, b"x" * 100)), 64)
    out = replay(rs, frags)
    assert [v.verdict for v in out] == ["drop", "drop"]
    assert all(v.rule.id == "r" and "silently dropped" in v.reason for v in out)
    # UDP without checksum: the first fragment can be answered, the later one cannot.
    frags = frag_records(ip(P, S, 17, udp_segment(1, 2, b"x" * 100), checksum=False), 64)
    assert [v.verdict for v in replay(rs, frags)] == ["reject", "drop"]
    # With conntrack the datagram is rejected whole.
    rs_ct = ruleset([rule("r", "reject")], policy="accept", conntrack=True)
    assert [v.verdict for v in replay(rs_ct, frags)] == ["reject", "reject"]
    assert replay(rs, [icmp(P, S, 3, 3)])[0].verdict == "drop"          # no error about an error
    assert replay(rs, [icmp(P, S, 8)])[0].verdict == "reject"
    reset = ruleset([rule("rst", Action("reject", "tcp-reset"), proto="tcp")], policy="accept")
    assert replay(reset, [tcp(P, 1, S, 2, 0x04)])[0].verdict == "drop"   # no RST for an RST
    assert replay(reset, [tcp(P, 1, S, 2, 0x02)])[0].verdict == "reject"
