"""The native YAML loader: every key into the IR, every mistake an InputError at its line,
and the Python API (plain dicts) equal to the YAML file it mirrors."""

from __future__ import annotations

import dataclasses
import ipaddress
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.errors import InputError
from fwtest.rules.ir import (
    DEFAULT_TIMEOUTS,
    AddrRange,
    Chain,
    FragmentMatch,
    IfaceMatch,
    Ruleset,
    Source,
    StateMatch,
    StringMatch,
    TcpFlagsMatch,
)
from fwtest.rules.native import MAX_REGEX_CHARS, load_native, ruleset_from_dict

ROOT = Path(__file__).resolve().parents[2]
RULESETS = ROOT / "rulesets"


def load(text: str, path: str = "r.yaml") -> Ruleset:
    return load_native(textwrap.dedent(text), path)


def one_rule(body: str, header: str = "") -> object:
    """The only rule of a ruleset whose rule body is ``body`` (indented under ``- ``)."""
    text = "policy: drop\n" + textwrap.dedent(header) + "rules:\n  - " + \
        textwrap.indent(textwrap.dedent(body), "    ").lstrip() + "\n"
    rs = load_native(text, "r.yaml")
    (rule,) = rs.chains["rules"].rules
    return rule


def net(text: str) -> AddrRange:
    return AddrRange.from_network(ipaddress.ip_network(text))


CT = "conntrack: {helpers: [sip]}\n"


# ----------------------------------------------------------------- structure

def test_design_example_loads_into_the_ir():
    rs = load("""\
        name: psap-edge
        policy: drop
        conntrack:
          helpers: [sip]
          timeouts: {udp: 30, udp_stream: 120, tcp_established: 432000}
        definitions:
          PEERS: [198.51.100.0/24, 2001:db8:100::/56]
          RTP: 16384-32767
        rules:
          - id: established
            state: [established, related]
            action: accept
          - id: sip-from-peers
            proto: udp
            src: PEERS
            dport: 5060
            action: {jump: rate-guard}
        chains:
          rate-guard:
            - id: sip-burst
              limit: {rate: 50/s, burst: 100, per: src}
              action: return
        """)
    assert rs.name == "psap-edge" and rs.format == "yaml" and rs.files == ("r.yaml",)
    (base,) = rs.bases
    assert (base.chain, base.hook, base.priority, base.policy, base.family) == ("rules", None, 0, "drop", None)
    assert base.source == Source("r.yaml", 2)
    assert list(rs.chains) == ["rules", "rate-guard"]
    assert rs.chains["rate-guard"].source == Source("r.yaml", 19)
    est, sip = rs.chains["rules"].rules
    assert est.source == Source("r.yaml", 10) and sip.source == Source("r.yaml", 13)
    assert est.match.state == StateMatch(frozenset({"established", "related"}))
    assert sip.match.src.ranges == (net("198.51.100.0/24"), net("2001:db8:100::/56"))
    assert sip.match.src.text == "PEERS"
    assert (str(sip.action), sip.action.kind, sip.action.target) == ("jump rate-guard", "jump", "rate-guard")
    assert sip.text == "{proto: udp, src: PEERS, dport: 5060, action: {jump: rate-guard}}"
    burst = rs.rule("sip-burst")
    assert burst.source.line == 20
    assert (burst.match.limit.rate, burst.match.limit.burst, burst.match.limit.per) == (50.0, 100, ("src",))
    ct = rs.conntrack
    assert ct.enabled and ct.helpers == {"sip"} and ct.source == Source("r.yaml", 3)
    assert ct.timeout("udp_stream") == 120 and ct.timeout("tcp_close") == DEFAULT_TIMEOUTS["tcp_close"]


def test_policy_defaults_to_drop_located_at_rules():
    rs = load("""\
        name: x
        rules:
          - action: accept
        """)
    assert rs.bases[0].policy == "drop" and rs.bases[0].source.line == 2


def test_policy_accept_and_name_from_file():
    rs = load("policy: accept\nrules: []\n", "dir/edge.yaml")
    assert rs.name == "edge" and rs.bases[0].policy == "accept" and rs.chains["rules"].rules == ()


def test_default_ids_are_chain_and_position():
    rs = load("""\
        policy: drop
        rules:
          - action: log
          - id: named
            action: {jump: guard}
          - action: drop
        chains:
          guard:
            - action: return
        """)
    assert [r.id for r in rs.rules()] == ["rules[0]", "named", "rules[2]", "guard[0]"]


def test_numeric_ids_and_comments():
    rule = one_rule("id: 10\ncomment: why this rule exists\naction: accept")
    assert rule.id == "10" and rule.comment == "why this rule exists"


@pytest.mark.parametrize("value, enabled", [("false", False), ("true", True), ("{}", True), ("null", False)])
def test_conntrack_forms(value, enabled):
    rs = load(f"policy: drop\nconntrack: {value}\nrules: []\n")
    assert rs.conntrack.enabled is enabled and rs.conntrack.helpers == frozenset()
    assert dict(rs.conntrack.timeouts) == dict(DEFAULT_TIMEOUTS)


def test_no_conntrack_section_is_stateless():
    assert not load("policy: drop\nrules: []\n").conntrack.enabled


# ----------------------------------------------------------------- matches

@pytest.mark.parametrize("value, protocols, negated", [
    ("udp", {17}, False), ("17", {17}, False), ("'17'", {17}, False), ("[tcp, udp]", {6, 17}, False),
    ("'!tcp'", {6}, True), ("ICMPv6", {58}, False), ("[132]", {132}, False),
])
def test_proto(value, protocols, negated):
    m = one_rule(f"proto: {value}\naction: accept").match.proto
    assert (m.protocols, m.negated) == (protocols, negated)


@pytest.mark.parametrize("value, ranges, negated", [
    ("198.51.100.0/24", ["198.51.100.0/24"], False),
    ("198.51.100.7", ["198.51.100.7/32"], False),
    ("[198.51.100.0/24, '2001:db8:100::/56']", ["198.51.100.0/24", "2001:db8:100::/56"], False),
    ("'!198.51.100.0/24'", ["198.51.100.0/24"], True),
    ("['!198.51.100.0/24', '!192.0.2.0/24']", ["198.51.100.0/24", "192.0.2.0/24"], True),
    ("10.0.0.1/8", ["10.0.0.0/8"], False),   # host bits set: masked, as iptables and nft do
])
def test_addresses(value, ranges, negated):
    m = one_rule(f"src: {value}\naction: accept").match.src
    assert m.ranges == tuple(net(r) for r in ranges) and m.negated is negated


def test_address_range():
    m = one_rule("dst: 192.0.2.10-192.0.2.20\naction: accept").match.dst
    (r,) = m.ranges
    assert (r.family, r.first, r.last) == (4, int(ipaddress.ip_address("192.0.2.10")),
                                           int(ipaddress.ip_address("192.0.2.20")))
    v6 = one_rule("dst: 2001:db8::1-2001:db8::ff\naction: accept").match.dst.ranges[0]
    assert v6.family == 6 and v6.last - v6.first == 0xFE


@pytest.mark.parametrize("value, ranges, negated", [
    ("5060", [(5060, 5060)], False),
    ("'5060'", [(5060, 5060)], False),
    ("16384-32767", [(16384, 32767)], False),
    ("[5060, 5061, 16384-32767]", [(5060, 5060), (5061, 5061), (16384, 32767)], False),
    ("'!5060'", [(5060, 5060)], True),
    ("['!1-1023', '!5060']", [(1, 1023), (5060, 5060)], True),
    ("65535", [(65535, 65535)], False),
])
def test_ports(value, ranges, negated):
    m = one_rule(f"proto: udp\ndport: {value}\nsport: 5060\naction: accept").match
    assert m.dport.ranges == tuple(ranges) and m.dport.negated is negated
    assert m.sport.ranges == ((5060, 5060),)


def test_ports_without_proto_are_allowed():
    assert one_rule("dport: 5060\naction: accept").match.dport.ranges == ((5060, 5060),)


@pytest.mark.parametrize("key, value, expected", [
    ("in", "eth0", IfaceMatch(("eth0",))),
    ("out", "'eth+'", IfaceMatch(("eth+",))),
    ("in", "[eth0, bond1]", IfaceMatch(("eth0", "bond1"))),
    ("in", "'!eth1'", IfaceMatch(("eth1",), negated=True)),
])
def test_interfaces(key, value, expected):
    m = one_rule(f"{key}: {value}\naction: accept").match
    assert (m.iface_in if key == "in" else m.iface_out) == expected


@pytest.mark.parametrize("value, expected", [
    ("new", StateMatch(frozenset({"new"}))),
    ("[established, related]", StateMatch(frozenset({"established", "related"}))),
    ("'!invalid'", StateMatch(frozenset({"invalid"}), negated=True)),
    ("[untracked]", StateMatch(frozenset({"untracked"}))),
])
def test_state(value, expected):
    assert one_rule(f"state: {value}\naction: accept", CT).match.state == expected


def test_untracked_state_needs_no_conntrack():
    assert one_rule("state: untracked\naction: accept").match.state.states == {"untracked"}


@pytest.mark.parametrize("value, expected", [
    ("true", FragmentMatch("later")), ("false", FragmentMatch("later", negated=True)),
    ("later", FragmentMatch("later")), ("first", FragmentMatch("first")), ("any", FragmentMatch("any")),
    ("'!any'", FragmentMatch("any", negated=True)),
])
def test_fragment(value, expected):
    assert one_rule(f"fragment: {value}\naction: drop").match.fragment == expected


@pytest.mark.parametrize("body, expected", [
    ("syn: true", TcpFlagsMatch(0x17, 0x02)),
    ("syn: false", TcpFlagsMatch(0x17, 0x02, negated=True)),
    ("tcp_flags: 'SYN,RST,ACK,FIN SYN'", TcpFlagsMatch(0x17, 0x02)),
    ("tcp_flags: '! SYN,ACK SYN,ACK'", TcpFlagsMatch(0x12, 0x12, negated=True)),
    ("tcp_flags: {mask: [syn, rst], comp: [rst]}", TcpFlagsMatch(0x06, 0x04)),
    ("tcp_flags: {mask: ALL, comp: NONE, negate: true}", TcpFlagsMatch(0x3F, 0, negated=True)),  # iptables' ALL
    ("tcp_flags: {mask: [ALL, ECE, CWR], comp: SYN}", TcpFlagsMatch(0xFF, 0x02)),
])
def test_tcp_flags(body, expected):
    assert one_rule(f"proto: tcp\n{body}\naction: drop").match.tcp_flags == expected


def test_helper():
    assert one_rule("helper: sip\naction: accept", CT).match.helper == "sip"


def test_sip_match():
    m = one_rule("""\
        proto: udp
        sip:
          method: INVITE
          uri: "^urn:service:sos"
          header: {User-Agent: "(?i)friendly-scanner", Accept-Contact: x, f: y}
        action: accept""").match.sip
    assert m.method == "INVITE" and m.uri == "^urn:service:sos" and m.status is None
    # every header must match, so their order is canonical (by lower-case name)
    assert m.headers == (("Accept-Contact", "x"), ("f", "y"), ("User-Agent", "(?i)friendly-scanner"))


def test_sip_method_list_and_status_code():
    import re

    method = one_rule("sip: {method: [INVITE, OPTIONS]}\naction: accept").match.sip.method
    assert re.search(method, "OPTIONS") and re.search(method, "INVITE") and not re.search(method, "INVITES")
    status = one_rule("sip: {status: 200}\naction: accept").match.sip.status
    assert re.search(status, "200") and not re.search(status, "2000")
    assert one_rule("sip: {}\naction: accept").match.sip is not None


def test_string_forms():
    (plain,) = one_rule("string: friendly-scanner\naction: drop").match.string
    assert plain == StringMatch(b"friendly-scanner")
    (full,) = one_rule("string: {pattern: SoS, from: 28, to: 1500, icase: true, algo: kmp, negate: true}\n"
                       "action: drop").match.string
    assert full == StringMatch(b"SoS", "kmp", 28, 1500, True, True)
    both = one_rule("string: [a, {pattern: b}]\naction: drop").match.string
    assert [s.pattern for s in both] == [b"a", b"b"]


@pytest.mark.parametrize("rate, per_second", [
    ("50/s", 50.0), ("50/second", 50.0), ("50/sec", 50.0), ("120/minute", 2.0), ("120/min", 2.0),
    ("3600/hour", 1.0), ("86400/day", 1.0), ("1.5/s", 1.5), ("10/seconds", 10.0), ("6/Minute", 0.1),
])
def test_limit_rates(rate, per_second):
    lim = one_rule(f"limit: {{rate: {rate}}}\naction: return").match.limit
    assert lim.rate == pytest.approx(per_second) and lim.burst == 5 and lim.per == () and not lim.above


def test_limit_everything():
    lim = one_rule("limit: {rate: 10/s, burst: 20, per: [src, dport], above: true, src_prefix: 24, name: g}\n"
                   "action: drop").match.limit
    assert (lim.rate, lim.burst, lim.per, lim.above, lim.src_prefix, lim.dst_prefix, lim.name) == \
        (10.0, 20, ("src", "dport"), True, 24, None, "g")
    assert lim.text == "over 10/s burst 20 per src,dport"


def test_family():
    assert one_rule("family: 6\naction: accept").match.family == 6
    assert one_rule("family: ipv4\naction: accept").match.family == 4


@pytest.mark.parametrize("value, kind, target", [
    ("accept", "accept", None), ("drop", "drop", None), ("reject", "reject", None), ("log", "log", None),
    ("return", "return", None), ("{reject: icmp-admin-prohibited}", "reject", "icmp-admin-prohibited"),
    ("{goto: c}", "goto", "c"), ("{jump: c}", "jump", "c"),
])
def test_actions(value, kind, target):
    rs = load(f"policy: drop\nrules:\n  - action: {value}\nchains:\n  c: []\n")
    action = rs.chains["rules"].rules[0].action
    assert (action.kind, action.target) == (kind, target)


def test_reject_tcp_reset_with_tcp():
    assert one_rule("proto: tcp\naction: {reject: tcp-reset}").action.target == "tcp-reset"


def test_empty_rule_matches_everything():
    assert one_rule("action: drop").match.is_empty()


# ----------------------------------------------------------------- definitions

DEFS = """\
definitions:
  PEERS_V4: 198.51.100.0/24
  PEERS_V6: 2001:db8:100::/56
  PEERS: [PEERS_V4, PEERS_V6]
  ALL: [PEERS, 192.0.2.0/24]
  RTP: 16384-32767
  SIP: [5060, "5061"]
  MEDIA: [RTP, SIP]
"""


def test_definitions_nest_and_mix_with_literals():
    m = one_rule("src: [ALL, 10.0.0.0/8]\ndport: MEDIA\nproto: udp\naction: accept", DEFS).match
    assert m.src.ranges == tuple(net(n) for n in ("198.51.100.0/24", "2001:db8:100::/56",
                                                  "192.0.2.0/24", "10.0.0.0/8"))
    assert m.src.text == "ALL, 10.0.0.0/8"
    assert m.dport.ranges == ((16384, 32767), (5060, 5060), (5061, 5061))


def test_negated_definition():
    m = one_rule("dst: '!PEERS'\naction: drop", DEFS).match.dst
    assert m.negated and m.ranges == (net("198.51.100.0/24"), net("2001:db8:100::/56"))


def test_unused_definitions_are_still_checked():
    with pytest.raises(InputError) as e:
        load("policy: drop\ndefinitions:\n  A: 10.0.0.0/8\n  B: 10.0.0.0/99\nrules: []\n")
    assert e.value.line == 4 and "more than 32" in str(e.value)


# ----------------------------------------------------------------- errors

ERRORS = [
    # (document, line, words the message must contain)
    ("polcy: drop\nrules: []\n", 1, "did you mean 'policy'"),
    ("policy: drop\n", 1, "no 'rules:'"),
    ("policy: allow\nrules: []\n", 1, "accept or drop"),
    ("policy: drop\nrules:\n  - id: sip\n    proto: udp\n    dprt: 5060\n    action: accept\n", 5,
     "did you mean 'dport'"),
    ("policy: drop\nrules:\n  - id: a\n    sip: {methd: INVITE}\n    action: drop\n", 4,
     "did you mean 'method'"),
    ("policy: drop\nrules:\n  - id: a\n    limit:\n      rate: 5/s\n      brust: 10\n    action: drop\n", 6,
     "did you mean 'burst'"),
    ("policy: drop\nconntrack:\n  helper: [sip]\nrules: []\n", 3, "did you mean 'helpers'"),
    ("policy: drop\nconntrack:\n  timeouts:\n    udp_steam: 3600\nrules: []\n", 4, "did you mean 'udp_stream'"),
    ("policy: drop\nconntrack:\n  timeouts:\n    udp: 0\nrules: []\n", 4, "whole number of seconds"),
    ("policy: drop\nconntrack:\n  timeouts:\n    udp: true\nrules: []\n", 4, "whole number of seconds"),
    ("policy: drop\nconntrack:\n  helpers:\n    - sip\n    - ftp\nrules: []\n", 5, "only sip"),
    ("policy: drop\nconntrack: yes please\nrules: []\n", 2, "conntrack is true, false, or a mapping"),
    ("policy: drop\nrules:\n  - dport: 0\n    action: drop\n", 3, "port 0 is not 1..65535"),
    ("policy: drop\nrules:\n  - dport: 65536\n    action: drop\n", 3, "port 65536"),
    ("policy: drop\nrules:\n  - dport: 5061-5060\n    action: drop\n", 3, "reversed"),
    ("policy: drop\nrules:\n  - dport: true\n    action: drop\n", 3, "not a port"),
    ("policy: drop\nrules:\n  - dport: [5060, false]\n    action: drop\n", 3, "not a port"),
    ("policy: drop\nrules:\n  - dport: '5060:5061'\n    action: drop\n", 3, "first-last"),
    ("policy: drop\nrules:\n  - dport: {a: 1}\n    action: drop\n", 3, "not a mapping"),
    ("policy: drop\nrules:\n  - src: 10.0.0.0/33\n    action: drop\n", 3, "prefix length 33 is more than 32"),
    ("policy: drop\nrules:\n  - src: 2001:db8::/129\n    action: drop\n", 3, "more than 128"),
    ("policy: drop\nrules:\n  - src: 198.51.100.0/24x\n    action: drop\n", 3, "not an address or CIDR"),
    ("policy: drop\nrules:\n  - src:\n      - 10.0.0.0/8\n      - 10.0.0.0/8x\n    action: drop\n", 5,
     "10.0.0.0/8x"),
    ("policy: drop\nrules:\n  - src: 10.0.0.1-2001:db8::1\n    action: drop\n", 3, "mixes IPv4 and IPv6"),
    ("policy: drop\nrules:\n  - src: 10.0.0.9-10.0.0.1\n    action: drop\n", 3, "reversed"),
    ("policy: drop\nrules:\n  - src: 17\n    action: drop\n", 3, "not an address"),
    ("policy: drop\nrules:\n  - src: {a: 1}\n    action: drop\n", 3, "not a mapping"),
    ("policy: drop\nrules:\n  - src: []\n    action: drop\n", 3, "empty list"),
    ("policy: drop\nrules: {a: 1}\n", 2, "must be a list of rules"),
    ("policy: drop\nrules:\n  - drop\n", 3, "a rule is a mapping"),
    ("policy: drop\nrules: []\nchains: [a]\n", 3, "chains is a mapping"),
    ("policy: drop\nrules: []\nchains:\n  a: {b: 1}\n", 4, "chain 'a' must be a list"),
    ("policy: drop\nrules: []\nchains:\n  rules: []\n", 4, "base chain"),
    ("policy: drop\nrules: []\nchains:\n  'a b': []\n", 4, "bad chain name"),
    ("policy: drop\nrules:\n  - sip: {header: {User-Agent: '(unclosed'}}\n    action: drop\n", 3, "bad regex"),
    ("policy: drop\nrules:\n  - sip:\n      uri: '[a-'\n    action: drop\n", 4, "bad regex"),
    ("policy: drop\nrules:\n  - sip:\n      uri: '" + "a" * (MAX_REGEX_CHARS + 1) + "'\n    action: drop\n", 4,
     f"more than {MAX_REGEX_CHARS}"),
    ("policy: drop\nrules:\n  - sip: {header: {'Bad Name': x}}\n    action: drop\n", 3, "not a SIP header name"),
    ("policy: drop\nrules:\n  - sip: {method: INVITE, status: 200}\n    action: drop\n", 3, "request"),
    ("policy: drop\nrules:\n  - sip: {status: 99}\n    action: drop\n", 3, "100..699"),
    ("policy: drop\nrules:\n  - sip: INVITE\n    action: drop\n", 3, "sip is a mapping"),
    ("policy: drop\nrules:\n  - id: a\n    action: accept\n  - id: b\n    action: accept\n"
     "  - id: a\n    action: drop\n", 7, "duplicate rule id 'a': already used (line 3)"),
    ("policy: drop\nrules:\n  - action: accept\n  - id: rules[0]\n    action: drop\n", 4, "duplicate rule id"),
    ("policy: drop\nrules:\n  - id: a b\n    action: accept\n", 3, "rule id must be a word"),
    ("policy: drop\nrules:\n  - id: j\n    action: {jump: rate-gaurd}\nchains:\n  rate-guard: []\n", 4,
     "'rate-gaurd', which does not exist (did you mean 'rate-guard'?)"),
    ("policy: drop\nrules:\n  - id: j\n    action: {goto: nowhere}\n", 4, "no 'chains:' section"),
    ("policy: drop\nrules:\n  - id: j\n    action:\n      jump: rules\n", 4, "base chain"),
    ("policy: drop\nrules:\n  - action: {jump: a}\nchains:\n  a:\n    - action: {jump: b}\n  b:\n"
     "    - action: log\n    - id: back\n      action: {goto: a}\n", 10, "jump loop: a -> b -> a"),
    ("policy: drop\nrules: []\nchains:\n  a:\n    - id: self\n      action: {jump: a}\n", 6, "jump loop: a -> a"),
    ("", 0, "empty ruleset"),
    ("# nothing but a comment\n\n", 0, "empty ruleset"),
    ("{}\n", 1, "empty ruleset"),
    ("- policy: drop\n", 1, "a ruleset is a mapping"),
    ("policy: drop\nrules:\n  - src: PEER\n    action: drop\ndefinitions:\n  PEERS: 10.0.0.0/8\n", 3,
     "unknown definition 'PEER' (did you mean 'PEERS'?)"),
    ("policy: drop\nrules:\n  - dport: RTP\n    action: drop\n", 3, "unknown definition 'RTP'"),
    ("policy: drop\nrules:\n  - src: any\n    action: drop\n", 3, "leave the key out"),
    ("policy: drop\ndefinitions:\n  A: B\n  B: [10.0.0.0/8, A]\nrules: []\n", 3, "refers to itself: A -> B -> A"),
    ("policy: drop\ndefinitions:\n  A: [10.0.0.0/8, 5060]\nrules: []\n", 3, "mixes addresses and ports"),
    ("policy: drop\ndefinitions:\n  RTP: 16384-32767\nrules:\n  - src: RTP\n    action: drop\n", 5,
     "'RTP' is a set of ports (definition at line 3), not addresses"),
    ("policy: drop\ndefinitions:\n  P: 10.0.0.0/8\nrules:\n  - dport: P\n    action: drop\n", 5,
     "set of addresses"),
    ("policy: drop\ndefinitions:\n  A: '!10.0.0.0/8'\nrules: []\n", 3, "negate where it is used"),
    ("policy: drop\ndefinitions:\n  1A: 10.0.0.0/8\nrules: []\n", 3, "bad definition name"),
    ("policy: drop\ndefinitions:\n  A: []\nrules: []\n", 3, "is empty"),
    ("policy: drop\nrules:\n  - src: !PEERS\n    action: drop\n", 3, 'quote the negation, write "!PEERS"'),
    ("policy: drop\nrules:\n  - src: ['!10.0.0.0/8', 192.0.2.0/24]\n    action: drop\n", 3,
     "mixes negated and plain"),
    ("policy: drop\nrules:\n  - state: [established, related]\n    action: accept\n", 3, "state needs conntrack"),
    ("policy: drop\nconntrack: true\nrules:\n  - state: [establised]\n    action: accept\n", 4,
     "did you mean 'established'"),
    ("policy: drop\nconntrack: true\nrules:\n  - helper: sip\n    action: accept\n", 4, "no connection ever has"),
    ("policy: drop\nrules:\n  - proto: icmp\n    dport: 8\n    action: drop\n", 4, "needs a protocol with ports"),
    ("policy: drop\nrules:\n  - src: 10.0.0.0/8\n    dst: 2001:db8::/32\n    action: drop\n", 3,
     "can never match"),
    ("policy: drop\nrules:\n  - family: 6\n    src: 10.0.0.0/8\n    action: drop\n", 3, "can never match"),
    ("policy: drop\nrules:\n  - proto: icmp\n    dst: 2001:db8::/32\n    action: accept\n", 3, "icmpv6"),
    ("policy: drop\nrules:\n  - proto: udp\n    syn: true\n    action: accept\n", 4, "syn needs proto: tcp"),
    ("policy: drop\nrules:\n  - proto: tcp\n    syn: yes please\n    action: accept\n", 4, "syn is true"),
    ("policy: drop\nrules:\n  - tcp_flags: SYN SYN\n    action: accept\n", 3, "tcp_flags needs proto: tcp"),
    ("policy: drop\nrules:\n  - proto: tcp\n    tcp_flags: SYN SYX\n    action: accept\n", 4, "unknown TCP flag"),
    ("policy: drop\nrules:\n  - proto: tcp\n    tcp_flags: SYN SYN,ACK\n    action: accept\n", 4,
     "outside mask"),
    ("policy: drop\nrules:\n  - proto: udp\n    fragment: true\n    dport: 5060\n    action: drop\n", 5,
     "a later fragment has no ports"),
    ("policy: drop\nrules:\n  - fragment: middle\n    action: drop\n", 3, "fragment is true"),
    ("policy: drop\nrules:\n  - proto: udp\n    action: {reject: tcp-reset}\n", 4, "tcp-reset needs proto: tcp"),
    ("policy: drop\nrules:\n  - action: {reject: icmp-port-unreachible}\n", 3, "unknown reject type"),
    ("policy: drop\nrules:\n  - action: acept\n", 3, "did you mean 'accept'"),
    ("policy: drop\nrules:\n  - action: jump\n", 3, "jump needs a chain"),
    ("policy: drop\nrules:\n  - action: {jump: a, goto: b}\n", 3, "action is accept"),
    ("policy: drop\nrules:\n  - id: x\n    proto: udp\n", 3, "rule 'x' has no action"),
    ("policy: drop\nrules:\n  - limit: {rate: 50}\n    action: drop\n", 3, "rate is N/unit"),
    ("policy: drop\nrules:\n  - limit: {rate: 50/fortnight}\n    action: drop\n", 3, "rate is N/unit"),
    ("policy: drop\nrules:\n  - limit: {rate: 0/s}\n    action: drop\n", 3, "above zero"),
    ("policy: drop\nrules:\n  - limit: {rate: 5/s, burst: 0}\n    action: drop\n", 3, "burst"),
    ("policy: drop\nrules:\n  - limit: {rate: 5/s, per: source}\n    action: drop\n", 3, "did you mean 'src'"),
    ("policy: drop\nrules:\n  - limit: {rate: 5/s, dst_prefix: 24}\n    action: drop\n", 3, "needs 'dst' in per"),
    ("policy: drop\nrules:\n  - limit: {burst: 5}\n    action: drop\n", 3, "limit needs a rate"),
    ("policy: drop\nrules:\n  - limit: 5/s\n    action: drop\n", 3, "limit is a mapping"),
    ("policy: drop\nrules:\n  - string: {pattern: ''}\n    action: drop\n", 3, "non-empty pattern"),
    ("policy: drop\nrules:\n  - string:\n      pattern: x\n      patern: y\n    action: drop\n", 5,
     "did you mean 'pattern'"),
    ("policy: drop\nrules:\n  - string: " + "x" * 129 + "\n    action: drop\n", 3, "at most 128"),
    ("policy: drop\nrules:\n  - string: {pattern: x, from: 100, to: 10}\n    action: drop\n", 3, "is after"),
    ("policy: drop\nrules:\n  - string: {pattern: x, algo: rabin}\n    action: drop\n", 3, "bm or kmp"),
    ("policy: drop\nrules:\n  - in: averyveryverylongname0\n    action: drop\n", 3, "bad interface name"),
    ("policy: drop\nrules:\n  - in: 'e+th'\n    action: drop\n", 3, "bad interface name"),
    ("policy: drop\nrules:\n  - proto: 0\n    action: drop\n", 3, "omit proto"),
    ("policy: drop\nrules:\n  - proto: 256\n    action: drop\n", 3, "1..255"),
    ("policy: drop\nrules:\n  - proto: ucp\n    action: drop\n", 3, "did you mean 'udp'"),
    ("policy: drop\nrules:\n  - family: 5\n    action: drop\n", 3, "family is 4 or 6"),
    ("policy: drop\nrules:\n  - helper: ftp\n    action: drop\n", 3, "unknown helper"),
    ("policy: drop\nrules:\n  - comment: [a]\n    action: drop\n", 3, "comment must be a string"),
    ("name: ''\npolicy: drop\nrules: []\n", 1, "name must be"),
    ("policy: drop\nrules:\n  - id: x\n    action: [accept\n", 5, "malformed YAML"),
    ("policy: drop\nrules:\n  - dport: !!int abc\n    action: drop\n", 3, "bad value"),
    ("policy: drop\nrules:\n  - id: !!timestamp x\n    action: drop\n", 3, "bad value"),
    ("policy: !!python/name:os.system drop\nrules: []\n", 1, "bad value"),
]


@pytest.mark.parametrize("text, line, words", ERRORS, ids=[f"{i}:{e[2][:30]}" for i, e in enumerate(ERRORS)])
def test_errors_name_file_and_line(text, line, words):
    with pytest.raises(InputError) as e:
        load_native(text, "rules.yaml")
    assert (e.value.path, e.value.line) == ("rules.yaml", line), str(e.value)
    assert words in e.value.message, str(e.value)
    assert "\n" not in str(e.value)


def test_dict_errors_have_line_zero():
    with pytest.raises(InputError) as e:
        ruleset_from_dict({"policy": "drop", "rules": [{"dprt": 5060, "action": "accept"}]}, "api")
    assert (e.value.path, e.value.line) == ("api", 0) and "dport" in e.value.message


def test_dict_api_accepts_tuples():
    rs = ruleset_from_dict({"rules": ({"src": ("10.0.0.0/8",), "action": "accept"},)})
    assert rs.chains["rules"].rules[0].source == Source("<dict>", 0)


# ----------------------------------------------------------------- Python API == YAML file

def strip_lines(value):
    """The same IR with every Source line set to 0 (a dict has no lines)."""
    if isinstance(value, Source):
        return Source(value.file, 0)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: strip_lines(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, (dict, MappingProxyType)):
        return {k: strip_lines(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(strip_lines(v) for v in value)
    return value


V4 = st.sampled_from(["198.51.100.0/24", "203.0.113.0/26", "192.0.2.7", "10.0.0.0/8", "192.0.2.1-192.0.2.9"])
V6 = st.sampled_from(["2001:db8:100::/56", "2001:db8:911::/64", "2001:db8::1-2001:db8::ff"])
PORT = st.one_of(st.integers(1, 65535), st.integers(1, 65535).map(str),
                 st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(
                     lambda t: f"{min(t)}-{max(t)}"))
NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True)


def negate_all(items, negate):
    return [f"!{i}" for i in items] if negate else items


@st.composite
def rulesets(draw):
    conntrack = draw(st.sampled_from([None, False, True, "map"]))
    helpers = []
    doc: dict = {}
    if draw(st.booleans()):
        doc["name"] = draw(st.sampled_from(["psap-edge", "lab", "x"]))
    if draw(st.booleans()):
        doc["policy"] = draw(st.sampled_from(["accept", "drop"]))
    if conntrack == "map":
        helpers = draw(st.sampled_from([[], ["sip"]]))
        timeouts = draw(st.dictionaries(st.sampled_from(sorted(DEFAULT_TIMEOUTS)), st.integers(1, 10**6),
                                        max_size=3))
        doc["conntrack"] = {"helpers": helpers, "timeouts": timeouts}
    elif conntrack is not None:
        doc["conntrack"] = conntrack
    stateful = conntrack in (True, "map")

    # Address definitions always hold an IPv4 range, so any two address matches share IPv4.
    names = draw(st.lists(NAMES, min_size=0, max_size=5, unique=True))
    addr_defs, port_defs = [], []
    definitions: dict = {}
    for name in names:
        if draw(st.booleans()):
            items = [draw(V4)] + draw(st.lists(st.one_of(V6, V4), max_size=2))
            if addr_defs and draw(st.booleans()):
                items.append(draw(st.sampled_from(addr_defs)))
            definitions[name] = items if len(items) > 1 or draw(st.booleans()) else items[0]
            addr_defs.append(name)
        else:
            items = draw(st.lists(PORT, min_size=1, max_size=3))
            if port_defs and draw(st.booleans()):
                items.append(draw(st.sampled_from(port_defs)))
            definitions[name] = items
            port_defs.append(name)
    if definitions:
        doc["definitions"] = definitions

    chain_names = draw(st.lists(st.sampled_from(["guard", "media", "c-2", "x.y"]), max_size=3, unique=True))
    counter = iter(range(10**6))

    def addresses():
        items = [draw(st.one_of(V4, st.sampled_from(addr_defs) if addr_defs else V4))]
        items += draw(st.lists(st.one_of(V4, V6), max_size=2))
        items = negate_all(items, draw(st.booleans()))
        return items[0] if len(items) == 1 and draw(st.booleans()) else items

    def ports():
        items = draw(st.lists(st.one_of(PORT, st.sampled_from(port_defs) if port_defs else PORT),
                              min_size=1, max_size=3))
        if draw(st.booleans()):
            items = [f"!{i}" for i in items]
        return items[0] if len(items) == 1 and draw(st.booleans()) else items

    def rule(chain_index: int) -> dict:
        r: dict = {}
        if draw(st.booleans()):
            r["id"] = f"r{next(counter)}"
        if draw(st.booleans()):
            r["comment"] = draw(st.text(max_size=20))
        proto = draw(st.sampled_from([None, "tcp", "udp", 17, ["tcp", "udp"], "!tcp", "icmp"]))
        if proto is not None:
            r["proto"] = proto
        has_ports = proto in (None, "tcp", "udp", 17, ["tcp", "udp"], "!tcp") and draw(st.booleans())
        for key in ("src", "dst"):
            if draw(st.booleans()):
                r[key] = addresses()
        if has_ports:
            for key in draw(st.sets(st.sampled_from(["sport", "dport"]), min_size=1)):
                r[key] = ports()
        if draw(st.booleans()):
            r[draw(st.sampled_from(["in", "out"]))] = draw(st.sampled_from(["eth0", "eth+", "!bond1",
                                                                          ["eth0", "eth1"]]))
        if stateful and draw(st.booleans()):
            r["state"] = draw(st.sampled_from(["new", ["established", "related"], "!invalid", ["untracked"]]))
        if draw(st.booleans()):
            kinds = ["first", "any", "!later", False] if has_ports else [True, "later", "first", "!any"]
            r["fragment"] = draw(st.sampled_from(kinds))
        if proto == "tcp" and draw(st.booleans()):
            if draw(st.booleans()):
                r["syn"] = draw(st.booleans())
            else:
                r["tcp_flags"] = draw(st.sampled_from(["SYN,RST,ACK,FIN SYN", {"mask": ["SYN", "ACK"],
                                                                               "comp": ["ACK"]}]))
        if "sip" in helpers and draw(st.booleans()):
            r["helper"] = "sip"
        if draw(st.booleans()):
            sip: dict = {}
            if draw(st.booleans()):
                sip["method"] = draw(st.sampled_from(["INVITE", ["INVITE", "OPTIONS"], "^(BYE|CANCEL)$"]))
            elif draw(st.booleans()):
                sip["status"] = draw(st.sampled_from([200, "^4"]))
            if draw(st.booleans()):
                sip["uri"] = "urn:service:sos"
            if draw(st.booleans()):
                sip["header"] = {"User-Agent": "(?i)friendly-scanner|sipvicious", "From": "x"}
            r["sip"] = sip
        if draw(st.booleans()):
            r["string"] = draw(st.sampled_from(["sos", {"pattern": "x", "from": 20, "to": 200, "icase": True},
                                                ["a", {"pattern": "b", "algo": "kmp", "negate": True}]]))
        if draw(st.booleans()):
            r["limit"] = draw(st.sampled_from([{"rate": "50/s"}, {"rate": "2/minute", "burst": 10, "per": "src"},
                                               {"rate": "1.5/hour", "per": ["src", "dport"], "above": True,
                                                "src_prefix": 24}]))
        actions = ["accept", "drop", "reject", "log", "return", {"reject": "icmp-admin-prohibited"}]
        later = chain_names[chain_index + 1:] if chain_index >= 0 else chain_names
        if later:
            actions += [{"jump": c} for c in later] + [{"goto": c} for c in later]
        r["action"] = draw(st.sampled_from(actions))
        return r

    doc["rules"] = [rule(-1) for _ in range(draw(st.integers(0, 4)))]
    if chain_names:
        doc["chains"] = {c: [rule(i) for _ in range(draw(st.integers(0, 3)))]
                         for i, c in enumerate(chain_names)}
    return doc


@settings(max_examples=60)
@given(rulesets())
def test_dict_api_equals_yaml_file(doc):
    from_dict = ruleset_from_dict(doc, "r.yaml")
    from_yaml = load_native(yaml.dump(doc), "r.yaml")
    assert strip_lines(from_yaml) == strip_lines(from_dict)
    # and the YAML side really knows its lines
    assert all(r.source.line > 0 for r in from_yaml.rules())
    assert all(r.source.line == 0 for r in from_dict.rules())
    # each rule's one-line text is YAML that reads back as the rule as written
    written = [*doc["rules"], *(r for body in doc.get("chains", {}).values() for r in body)]
    for rule, data in zip(from_dict.rules(), written, strict=True):
        assert yaml.safe_load(rule.text) == {k: v for k, v in data.items() if k not in ("id", "comment")}


# ----------------------------------------------------------------- the shipped rulesets

REFERENCE_FILES = sorted([RULESETS / "psap-edge.yaml", *RULESETS.glob("broken/*.yaml"),
                          *RULESETS.glob("harmless/*.yaml")])


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reference_rulesets_load(path):
    rs = load_native(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    for rule in rs.rules():
        # the line a finding names is the rule's `- id:` line
        assert lines[rule.source.line - 1].strip() == f"- id: {rule.id}", (rule.id, rule.source)
    assert rs.bases[0].policy == "drop"
    assert isinstance(rs.chains["rules"], Chain)


FLOWS = {"emergency-call", "callback", "options-keepalive", "text", "surge"}


@pytest.mark.parametrize("path", sorted(RULESETS.glob("broken/*.yaml")), ids=lambda p: p.stem)
def test_broken_rulesets_say_what_they_expect(path):
    """The first line names the killing rule (which must exist) and the flows it kills;
    the end-to-end check that fwtest finds exactly that is tests/test_reference_rulesets.py."""
    import re

    first, *rest = path.read_text().splitlines()
    m = re.fullmatch(r"# fwtest-expect: rule=(\S+) flows=(\S+)", first)
    assert m, first
    rule, flows = m.group(1), m.group(2).split(",")
    assert set(flows) <= FLOWS and len(set(flows)) == len(flows)
    rs = load_native(path.read_text(), str(path))
    assert rule == "policy" or rs.rule(rule)
    assert rest[0].startswith("# Edit:"), "the second line says what the edit is"


def test_enough_reference_edits():
    broken = sorted(RULESETS.glob("broken/*.yaml"))
    assert len(broken) >= 11 and len(list(RULESETS.glob("harmless/*.yaml"))) >= 3
    # each a different failure class: no two broken files are the same edit
    assert len({p.read_text() for p in broken}) == len(broken)


def test_reference_ruleset_has_what_the_profile_needs():
    rs = load_native((RULESETS / "psap-edge.yaml").read_text(), "psap-edge.yaml")
    assert rs.conntrack.enabled
    assert rs.conntrack.timeout("udp_stream") >= 3600   # longer than any call the profile makes
    assert "rate-guard" in rs.chains
