"""Single matches: netfilter's corner cases and the L7 matches."""

from __future__ import annotations

import time

import pytest
from engine_packets import (
    ACK,
    SYN,
    frag_records,
    icmp,
    ip,
    rule,
    ruleset,
    sip_invite,
    sip_request,
    sip_response,
    tcp,
    udp,
    udp_segment,
)

from fwtest.engine import Engine, replay
from fwtest.engine.match import MAX_SIP_FIELD
from fwtest.errors import InputError
from fwtest.rules.ir import (
    FragmentMatch,
    PortMatch,
    ProtoMatch,
    SipMatch,
    StringMatch,
    TcpFlagsMatch,
    addr_match,
)

P, S = "198.51.100.7", "203.0.113.10"
P6, S6 = "2001:db8:100::7", "2001:db8:911::10"


def verdict(match_rule, record, **kw):
    """accept if ``match_rule`` (an accept rule) matches ``record``, else drop by policy."""
    return replay(ruleset([match_rule], policy="drop"), [record], **kw)[0].verdict


def matches(record, **match):
    return verdict(rule("r", **match), record) == "accept"


def test_ports_never_match_packets_without_ports_even_negated():
    neg = PortMatch(((5060, 5060),), negated=True)
    assert matches(udp(P, 1, S, 80), dport=neg)
    assert not matches(icmp(P, S, 8), dport=neg)


def test_later_fragments_match_ports_on_the_bytes_nf_tables_reads():
    # nf_tables reads a non-first IPv4 fragment's first data bytes as ports
    # ("xx" = 0x7878 = 30840): a negated port match hits it, as in the kernel
    # (tests/oracle/test_regressions.py pins the kernel side).
    neg = PortMatch(((5060, 5060),), negated=True)
    later = frag_records(ip(P, S, 17, udp_segment(1, 80, b"x" * 100)), 64)[1]
    assert matches(later, dport=neg) and matches(later, sport=neg)
    assert matches(later, dport=PortMatch(((30840, 30840),)))
    assert not matches(later, dport=PortMatch(((80, 80),)))


def test_port_ranges_and_lists():
    rtp = PortMatch(((16384, 32767),))
    assert matches(udp(P, 1, S, 16384), dport=rtp) and matches(udp(P, 1, S, 32767), dport=rtp)
    assert not matches(udp(P, 1, S, 32768), dport=rtp)
    multi = PortMatch(((5060, 5061), (2855, 2855)))
    assert matches(tcp(P, 1, S, 2855, SYN), dport=multi) and not matches(tcp(P, 1, S, 2856, SYN), dport=multi)


def test_address_match_only_matches_its_families():
    v4 = addr_match("198.51.100.0/24")
    assert matches(udp(P, 1, S, 2), src=v4)
    assert not matches(udp(P6, 1, S6, 2), src=v4)
    assert not matches(udp(P6, 1, S6, 2), src=addr_match("198.51.100.0/24", negated=True))
    assert matches(udp("192.0.2.1", 1, S, 2), src=addr_match("198.51.100.0/24", negated=True))
    both = addr_match(["198.51.100.0/24", "2001:db8:100::/56"])
    assert matches(udp(P6, 1, S6, 2), src=both) and matches(udp(P, 1, S, 2), src=both)


def test_address_lists_with_many_ranges():
    many = addr_match([f"10.{i}.0.0/16" for i in range(0, 200, 2)])
    assert matches(udp("10.4.1.1", 1, S, 2), src=many)
    assert not matches(udp("10.5.1.1", 1, S, 2), src=many)


def test_protocol_match_and_negation():
    assert matches(udp(P, 1, S, 2), proto="udp")
    assert not matches(tcp(P, 1, S, 2, SYN), proto="udp")
    assert matches(tcp(P, 1, S, 2, SYN), proto=ProtoMatch(frozenset({17}), negated=True))


def test_tcp_flags_only_on_tcp_headers():
    syn = TcpFlagsMatch(mask=0x17, comp=0x02)
    assert matches(tcp(P, 1, S, 2, SYN), tcp_flags=syn)
    assert not matches(tcp(P, 1, S, 2, SYN | ACK), tcp_flags=syn)
    not_syn = TcpFlagsMatch(mask=0x17, comp=0x02, negated=True)
    assert not matches(udp(P, 1, S, 2), tcp_flags=not_syn)


def test_fragment_kinds():
    frags = frag_records(ip(P, S, 17, udp_segment(1, 2, b"x" * 100)), 64)
    whole = udp(P, 1, S, 2)
    for kind, expect in (("later", [False, True, False]), ("first", [True, False, False]),
                         ("any", [True, True, False])):
        got = [matches(r, fragment=FragmentMatch(kind)) for r in (frags[0], frags[1], whole)]
        assert got == expect, kind
    assert matches(whole, fragment=FragmentMatch("later", negated=True))


def test_string_offsets_icase_and_negation():
    record = udp(P, 5060, S, 5060, sip_request("OPTIONS"))
    at = record.data.find(b"OPTIONS")
    assert matches(record, string=(StringMatch(b"OPTIONS"),))
    assert matches(record, string=(StringMatch(b"OPTIONS", offset_from=at, offset_to=at + 7),))
    # Must lie wholly inside [from, to).
    assert not matches(record, string=(StringMatch(b"OPTIONS", offset_from=at, offset_to=at + 6),))
    assert not matches(record, string=(StringMatch(b"OPTIONS", offset_from=at + 1, offset_to=at + 30),))
    assert matches(record, string=(StringMatch(b"options", icase=True),))
    assert not matches(record, string=(StringMatch(b"options"),))
    assert matches(record, string=(StringMatch(b"INVITE", negated=True),))
    assert not matches(record, string=(StringMatch(b"OPTIONS", negated=True),))


def test_sip_match_method_uri_header_status():
    invite = udp(P, 5060, S, 5060, sip_invite(P, 20000))
    assert matches(invite, sip=SipMatch(method="^INVITE$"))
    assert matches(invite, sip=SipMatch(uri="^urn:service:sos"))
    assert not matches(invite, sip=SipMatch(method="^OPTIONS$"))
    assert matches(invite, sip=SipMatch(headers=(("call-id", "call-1"),)))
    assert matches(invite, sip=SipMatch(headers=(("i", "^call-1$"),)))        # compact form
    assert not matches(invite, sip=SipMatch(headers=(("User-Agent", "."),)))  # absent header
    ok = udp(S, 5060, P, 5060, sip_response(200, "INVITE"))
    assert matches(ok, sip=SipMatch(status="^2"))
    assert not matches(ok, sip=SipMatch(method="."))
    assert not matches(invite, sip=SipMatch(status="."))


def test_sip_match_never_matches_without_a_sip_message():
    everything = SipMatch(method=".*")
    assert not matches(udp(P, 20000, S, 30000, b"\x80\x00rtp"), sip=everything)
    assert not matches(icmp(P, S, 8), sip=everything)
    frags = frag_records(ip(P, S, 17, udp_segment(5060, 5060, sip_invite(P, 20000, extra_sdp="a=p:" + "q" * 600))),
                         400)
    assert [matches(f, sip=everything) for f in frags] == [True] + [False] * (len(frags) - 1)


def test_sip_scanner_rule():
    drop = rule("scanner", "drop", sip=SipMatch(headers=(("User-Agent", "(?i)friendly-scanner|sipvicious"),)))
    rs = ruleset([drop, rule("sip", dport=5060)], policy="drop")
    bad = udp(P, 5060, S, 5060, sip_request("OPTIONS", user_agent="Friendly-Scanner 1.0"))
    good = udp(P, 5060, S, 5060, sip_request("OPTIONS", user_agent="PSAP-CPE/4.2"))
    assert [v.rule.id for v in replay(rs, [bad, good])] == ["scanner", "sip"]


@pytest.mark.parametrize("pattern", ["(a+)+b", "(.*x)*", "(?:a|ab)*c", "(a*)*", "((ab)+)+"])
def test_exponential_sip_regexes_are_refused_at_their_rule(pattern):
    r = rule("evil", "drop", sip=SipMatch(uri=pattern))
    with pytest.raises(InputError) as e:
        Engine(ruleset([r]))
    assert e.value.line == r.source.line and "backtracks" in e.value.message


def test_several_open_ended_repetitions_are_refused():
    r = rule("cubic", "drop", sip=SipMatch(uri="a.*b.*c"))
    with pytest.raises(InputError, match="open-ended"):
        Engine(ruleset([r]))


@pytest.mark.parametrize("pattern", ["(?i)friendly-scanner|sipvicious", "^urn:service:sos(\\..*)?$",
                                     "(?:INVITE|OPTIONS)", "a{2,5}b", "(?:ab|cd)+", "^sips?:[^@]+@",
                                     ".*sos.*", "(?i)^.*scanner.*x.*$"])
def test_ordinary_sip_regexes_are_accepted(pattern):
    Engine(ruleset([rule("ok", "drop", sip=SipMatch(uri=pattern))]))


def test_sip_regex_work_is_bounded_on_hostile_headers():
    # Cubic as written (a leading .* and two more); runs as the quadratic "x.*y" on at
    # most MAX_SIP_FIELD characters of the 60 KB header value.
    slow = rule("slow", "drop", sip=SipMatch(headers=(("User-Agent", ".*x.*y"),)))
    hostile = sip_request("OPTIONS", user_agent="x" * 60000)
    record = udp(P, 5060, S, 5060, hostile)
    start = time.perf_counter()
    (v,) = replay(ruleset([slow], policy="accept"), [record])
    assert time.perf_counter() - start < 2.0
    assert v.verdict == "accept"
    assert MAX_SIP_FIELD < 60000


def test_icmp_type_and_code():
    from fwtest.rules.ir import IcmpMatch

    unreachable = IcmpMatch(family=4, types=frozenset({3}), codes=(0, 4))
    assert matches(icmp(P, S, 3, 3), icmp=unreachable)
    assert not matches(icmp(P, S, 3, 9), icmp=unreachable)
    assert not matches(icmp(P, S, 8), icmp=unreachable)
    assert not matches(icmp(P6, S6, 1, 3), icmp=unreachable)           # ICMPv6 is another family
    echo6 = IcmpMatch(family=6, types=frozenset({128}))
    assert matches(icmp(P6, S6, 128), icmp=echo6)
    # Negated: still only ICMP packets of the family.
    not_echo = IcmpMatch(family=4, types=frozenset({8}), negated=True)
    assert matches(icmp(P, S, 0), icmp=not_echo)
    assert not matches(udp(P, 1, S, 2), icmp=not_echo)


def test_a_match_field_the_engine_does_not_know_stops_it(monkeypatch):
    from fwtest.engine import match as match_module
    from fwtest.rules.ir import IcmpMatch

    monkeypatch.setattr(match_module, "HANDLED_FIELDS", match_module.HANDLED_FIELDS - {"icmp"})
    r = rule("icmp-rule", icmp=IcmpMatch(family=4, types=frozenset({8})))
    with pytest.raises(InputError, match="not modelled") as e:
        Engine(ruleset([r]))
    assert e.value.line == r.source.line
