"""nft JSON import: the expressions as nft writes them into the IR (checked against
the real nft in a network namespace), verdict maps and flag sets lowered without
changing a verdict, lines from the .nft text, and every unknown construct an
error that names its rule."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from fwtest.errors import InputError
from fwtest.rules.ir import (
    AddrRange,
    FragmentMatch,
    IcmpMatch,
    IfaceMatch,
    PortMatch,
    StateMatch,
    TcpFlagsMatch,
)
from fwtest.rules.nftables import is_nft_json, load_nft, map_source_rules, sibling_nft_source

try:
    from nfwalk import Netns, differences
    from reference import SOURCES, source_ruleset
except ImportError:  # collected as a package
    from tests.rules.nfwalk import Netns, differences
    from tests.rules.reference import SOURCES, source_ruleset

ROOT = Path(__file__).resolve().parents[2]
NFT_DIR = ROOT / "rulesets" / "nft"
META = {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}


def document(*rules: list, extra: tuple = (), family: str = "inet", sub: tuple = ()) -> str:
    """nft JSON with table 'filter', base chain 'forward' (policy drop), chain 'sub',
    and one rule per expression list (handles 10, 11, ...; chain sub's from 100)."""
    objects = [META, {"table": {"family": family, "name": "filter", "handle": 1}}, *extra,
               {"chain": {"family": family, "table": "filter", "name": "forward", "handle": 1,
                          "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
               {"chain": {"family": family, "table": "filter", "name": "sub", "handle": 2}}]
    for i, expr in enumerate(rules):
        objects.append({"rule": {"family": family, "table": "filter", "chain": "forward",
                                 "handle": 10 + i, "expr": expr}})
    for i, expr in enumerate(sub):
        objects.append({"rule": {"family": family, "table": "filter", "chain": "sub",
                                 "handle": 100 + i, "expr": expr}})
    return json.dumps({"nftables": objects})


def match(left: dict, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


ACCEPT = {"accept": None}


def test_is_nft_json():
    assert is_nft_json(document([ACCEPT]))
    assert not is_nft_json('{"rules": []}')
    assert not is_nft_json("*filter\nCOMMIT\n")
    assert not is_nft_json("{ not json")


def test_tables_chains_and_ids():
    rs = load_nft(document([ACCEPT], [{"jump": {"target": "sub"}}]), "rules.json")
    assert rs.format == "nft" and set(rs.chains) == {"inet filter/forward", "inet filter/sub"}
    (base,) = rs.bases
    assert (base.chain, base.hook, base.priority, base.policy, base.family) == (
        "inet filter/forward", "forward", 0, "drop", None)
    first, second = rs.chains["inet filter/forward"].rules
    assert first.id == "inet filter/forward handle 10"
    assert (first.source.file, first.source.line) == ("rules.json", 0)
    assert second.action.kind == "jump" and second.action.target == "inet filter/sub"
    ip = load_nft(document([ACCEPT], family="ip6"), "r.json")
    # Rules of an ip6 table see IPv6 only, like those of an ip6tables-save file.
    assert ip.bases[0].family == 6 and ip.chains["ip6 filter/forward"].rules[0].match.family == 6


@pytest.mark.parametrize(("expr", "field", "expected"), [
    ([match(payload("ip", "saddr"), {"prefix": {"addr": "198.51.100.0", "len": 24}})], "src",
     (AddrRange(4, 0xC6336400, 0xC63364FF),)),
    ([match(payload("ip6", "daddr"), {"range": ["2001:db8::1", "2001:db8::9"]})], "dst",
     (AddrRange(6, 0x20010DB8 << 96 | 1, 0x20010DB8 << 96 | 9),)),
    ([match(payload("udp", "dport"), {"set": [5060, {"range": [16384, 32767]}]})], "dport",
     PortMatch(((5060, 5060), (16384, 32767)), False, "{ 5060, 16384-32767 }")),
    ([match(payload("tcp", "sport"), 1024, "<")], "sport", PortMatch(((0, 1023),), False, "1024")),
    ([match({"meta": {"key": "l4proto"}}, {"set": ["tcp", "udp"]})], "proto", frozenset({6, 17})),
    ([match({"meta": {"key": "iifname"}}, "eth*")], "iface_in", IfaceMatch(("eth+",))),
    ([match({"meta": {"key": "oifname"}}, {"set": ["eth0", "eth1"]}, "!=")], "iface_out",
     IfaceMatch(("eth0", "eth1"), True)),
    ([match({"ct": {"key": "state"}}, ["established", "related"], "in")], "state",
     StateMatch(frozenset({"established", "related"}))),
    ([match({"ct": {"key": "state"}}, "established", "!=")], "state",
     StateMatch(frozenset({"established"}), True)),
    ([match({"ct": {"key": "helper"}}, "sip")], "helper", "sip"),
    ([match({"&": [payload("ip", "frag-off"), 8191]}, 0, "!=")], "fragment", FragmentMatch("later")),
    ([match({"&": [payload("ip", "frag-off"), 16383]}, 0, "==")], "fragment", FragmentMatch("any", True)),
    ([match({"&": [payload("ip", "frag-off"), 16383]}, 8192, "==")], "fragment", FragmentMatch("first")),
    ([match({"exthdr": {"name": "frag"}}, True)], "fragment", FragmentMatch("any")),
    ([match({"exthdr": {"name": "frag", "field": "frag-off"}}, 0, "!=")], "fragment", FragmentMatch("later")),
    ([match({"&": [payload("tcp", "flags"), ["fin", "syn", "rst", "ack"]]}, "syn")], "tcp_flags",
     TcpFlagsMatch(0x17, 0x02)),
    ([match(payload("tcp", "flags"), "syn", "!=")], "tcp_flags", TcpFlagsMatch(0xFF, 0x02, True)),
    ([match(payload("icmp", "type"), "echo-request")], "icmp", IcmpMatch(4, frozenset({8}))),
    ([match(payload("icmpv6", "type"), {"set": ["echo-request", "nd-neighbor-solicit"]}, "!=")], "icmp",
     IcmpMatch(6, frozenset({128, 135}), negated=True)),
])
def test_each_expression_becomes_its_ir_field(expr, field, expected):
    (rule,) = load_nft(document(expr + [ACCEPT]), "r.json").rules()
    value = getattr(rule.match, field)
    if field == "src" or field == "dst":
        value = value.ranges
    if field == "proto":
        value = value.protocols
    assert value == expected


def test_payload_protocols_imply_family_and_protocol():
    (rule,) = load_nft(document([match(payload("ip", "saddr"), "10.0.0.1"),
                                 match(payload("udp", "dport"), 5060), ACCEPT]), "r.json").rules()
    assert rule.match.family == 4 and rule.match.proto.protocols == {17}
    (rule,) = load_nft(document([match(payload("ip6", "nexthdr"), "udp"), ACCEPT]), "r.json").rules()
    # The IPv6 header's own next-header field: fragments carry 44 there.
    assert rule.match.family == 6 and rule.match.fragment == FragmentMatch("any", True)
    (rule,) = load_nft(document([match({"meta": {"key": "nfproto"}}, "ipv6"), ACCEPT]), "r.json").rules()
    assert rule.match.family == 6


def test_statements_limits_and_verdicts():
    limit = {"limit": {"family": "inet", "name": "lim1", "table": "filter", "handle": 7, "rate": 50,
                       "per": "second", "burst": 100}}
    rs = load_nft(document(
        [{"limit": {"rate": 10, "burst": 5, "per": "minute", "inv": True}}, {"drop": None}],
        [{"limit": "lim1"}, ACCEPT],
        [{"log": {"prefix": "x: "}}, {"counter": {"packets": 0, "bytes": 0}}, ACCEPT],
        [{"log": {"prefix": "only"}}],
        [{"counter": {"packets": 0, "bytes": 0}}],
        [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}],
        [{"reject": None}],
        [match({"meta": {"key": "l4proto"}}, "tcp"), {"reject": {"type": "tcp reset"}}],
        [{"goto": {"target": "sub"}}],
        [{"return": None}],
        extra=(limit,)), "r.json")
    rules = list(rs.rules())
    over = rules[0].match.limit
    assert (over.rate, over.burst, over.above) == (pytest.approx(10 / 60), 5, True)
    named = rules[1].match.limit
    assert (named.rate, named.burst, named.name) == (50, 100, "nft:inet filter/lim1")
    assert [(r.action.kind, r.action.target) for r in rules[2:]] == [
        ("accept", None), ("log", "only"), ("continue", None), ("reject", "admin-prohibited"),
        ("reject", "port-unreachable"), ("reject", "tcp-reset"), ("goto", "inet filter/sub"), ("return", None)]


def test_verdict_map_lowers_to_one_rule_per_element_with_the_same_verdicts():
    vmap = {"vmap": {"key": payload("udp", "dport"),
                     "data": {"set": [[22, {"drop": None}], [{"range": [80, 90]}, {"jump": {"target": "sub"}}],
                                      [5060, ACCEPT]]}}}
    lowered = load_nft(document([vmap]), "a.json")
    explicit = load_nft(document(
        [match(payload("udp", "dport"), 22), {"drop": None}],
        [match(payload("udp", "dport"), {"range": [80, 90]}), {"jump": {"target": "sub"}}],
        [match(payload("udp", "dport"), 5060), ACCEPT]), "b.json")
    assert [r.id for r in lowered.rules()] == [f"inet filter/forward handle 10#{i}" for i in (1, 2, 3)]
    assert [r.action.kind for r in lowered.rules()] == ["drop", "jump", "accept"]
    assert differences(lowered, explicit, count=1500) == []


def test_named_sets_and_maps_resolve():
    peers = {"set": {"family": "inet", "name": "peers", "table": "filter", "type": "ipv4_addr", "handle": 3,
                     "flags": ["interval"], "elem": [{"prefix": {"addr": "198.51.100.0", "len": 24}},
                                                     {"elem": {"val": "192.0.2.1", "comment": "bcf"}}]}}
    vm = {"map": {"family": "inet", "name": "vm", "table": "filter", "type": "inet_service", "handle": 4,
                  "map": "verdict", "elem": [[22, {"drop": None}], [5060, ACCEPT]]}}
    rs = load_nft(document([match(payload("ip", "saddr"), "@peers"), ACCEPT],
                           [{"vmap": {"key": payload("tcp", "dport"), "data": "@vm"}}],
                           extra=(peers, vm)), "r.json")
    first, *lowered = rs.rules()
    assert first.match.src.ranges == (AddrRange(4, 0xC6336400, 0xC63364FF), AddrRange(4, 0xC0000201, 0xC0000201))
    assert [(r.match.dport.ranges, r.action.kind) for r in lowered] == [(((22, 22),), "drop"),
                                                                         (((5060, 5060),), "accept")]


def test_tcp_flag_sets_split_into_disjoint_rules():
    rs = load_nft(document([match(payload("tcp", "flags"), {"set": ["syn", "ack"]}), ACCEPT],
                           [match(payload("tcp", "flags"), ["syn", "ack"], "in"), ACCEPT]), "r.json")
    flags = [r.match.tcp_flags for r in rs.rules()]
    assert flags == [TcpFlagsMatch(0xFF, 0x02), TcpFlagsMatch(0xFF, 0x10),
                     TcpFlagsMatch(0x02, 0x02), TcpFlagsMatch(0x12, 0x10)]


def test_helpers_and_timeouts_configure_conntrack():
    helper = {"ct helper": {"family": "inet", "name": "sip-5060", "table": "filter", "handle": 5,
                            "type": "sip", "protocol": "udp", "l3proto": "inet"}}
    timeout = {"ct timeout": {"family": "inet", "name": "t", "table": "filter", "handle": 6,
                              "protocol": "udp", "l3proto": "inet", "policy": {"replied": 3600}}}
    rs = load_nft(document([match(payload("udp", "dport"), 5060), {"ct helper": "sip-5060"}],
                           [{"ct timeout": "t"}], extra=(helper, timeout)), "r.json")
    (rule,) = rs.rules()
    assert rule.action.kind == "ct_helper" and rule.action.target == "sip"
    assert rs.conntrack.enabled and rs.conntrack.helpers == frozenset()
    assert (rs.conntrack.timeouts["udp_stream"], rs.conntrack.timeouts["udp"]) == (3600, 30)


def test_only_ct_statements_enable_conntrack():
    assert not load_nft(document([match(payload("udp", "dport"), 53), {"notrack": None}]), "r.json").conntrack.enabled
    assert load_nft(document([match({"ct": {"key": "state"}}, "new"), ACCEPT]), "r.json").conntrack.enabled


def test_several_base_chains_on_one_hook_keep_their_priorities():
    objects = json.loads(document([ACCEPT]))["nftables"]
    objects.append({"chain": {"family": "inet", "table": "filter", "name": "early", "handle": 3,
                              "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}})
    rs = load_nft(json.dumps({"nftables": objects}), "r.json")
    assert [(b.chain, b.priority) for b in rs.base_chains("forward", 4)] == [
        ("inet filter/early", -10), ("inet filter/forward", 0)]


@pytest.mark.parametrize(("expr", "words"), [
    ([match(payload("ip", "dscp"), "ef"), ACCEPT], "'ip dscp'"),
    ([match({"meta": {"key": "mark"}}, 3), ACCEPT], "'meta mark'"),
    ([match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"), ACCEPT], "fib"),
    ([match({"ct": {"key": "status"}}, "dnat", "in"), ACCEPT], "'ct status'"),
    ([match({"concat": [payload("ip", "daddr"), payload("udp", "dport")]},
            {"set": [{"concat": ["1.2.3.5", 5060]}]}), ACCEPT], "ip daddr . udp dport"),
    ([match(payload("th", "dport"), 5060), ACCEPT], "th sport/dport"),
    ([{"xt": {"type": "match", "name": "multiport"}}, ACCEPT], "xt multiport"),
    ([{"masquerade": None}], "'masquerade'"),
    ([{"queue": {"num": 1}}], "'queue'"),
    ([{"jump": {"target": "nowhere"}}], "'nowhere'"),
    ([{"set": {"op": "add", "elem": payload("ip", "saddr"), "set": "@bad"}}, {"drop": None}], "dynamic sets"),
    ([match(payload("ip", "saddr"), "@nosuch"), ACCEPT], "'@nosuch'"),
    ([{"ct helper": "nosuch"}], "'nosuch'"),
    ([{"limit": {"rate": 1, "per": "second", "rate_unit": "kbytes"}}, ACCEPT], "byte rate"),
])
def test_unsupported_constructs_name_the_rule_and_the_construct(expr, words):
    with pytest.raises(InputError) as caught:
        load_nft(document(expr), "rules.json")
    assert caught.value.path == "rules.json[inet filter/forward handle 10]" and caught.value.line == 0
    assert words in caught.value.message, caught.value.message


def test_unsupported_tables_and_nat_rules_are_errors():
    nat = json.loads(document())["nftables"] + [
        {"table": {"family": "ip", "name": "nat", "handle": 3}},
        {"chain": {"family": "ip", "table": "nat", "name": "post", "handle": 1, "type": "nat",
                   "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "nat", "chain": "post", "handle": 2, "expr": [{"masquerade": None}]}}]
    with pytest.raises(InputError, match="nat chain"):
        load_nft(json.dumps({"nftables": nat}), "r.json")
    bridge = [META, {"table": {"family": "bridge", "name": "b", "handle": 1}},
              {"chain": {"family": "bridge", "table": "b", "name": "c", "handle": 1, "type": "filter",
                         "hook": "forward", "prio": 0, "policy": "drop"}}]
    with pytest.raises(InputError, match="family 'bridge'"):
        load_nft(json.dumps({"nftables": bridge}), "r.json")
    with pytest.raises(InputError, match="malformed JSON"):
        load_nft("{", "r.json")


# ---------------------------------------------------------------- lines


NFT_TEXT = textwrap.dedent("""\
    # written for nft -f
    table inet filter {
    \tchain forward {
    \t\ttype filter hook forward priority 0; policy drop;
    \t\tct state established,related accept
    \t\tip saddr { 198.51.100.0/24,
    \t\t           192.0.2.1 } udp dport 5060 accept

    \t\tjump sub
    \t}
    \tchain sub { return; }
    }
    add rule inet filter sub counter
    """)


def test_nft_text_maps_rules_to_lines_in_order_and_by_handle():
    found = map_source_rules(NFT_TEXT, "rules.nft")
    assert [r.line for r in found[("inet", "filter", "forward")]] == [5, 6, 9]
    assert [r.line for r in found[("inet", "filter", "sub")]] == [11, 13]
    listed = "table inet filter { # handle 1\n\tchain forward { # handle 1\n" \
             "\t\ttype filter hook forward priority filter; policy drop;\n" \
             "\t\tudp dport 22 drop # handle 7\n\t\taccept # handle 9\n\t}\n}\n"
    found = map_source_rules(listed, "l.nft")
    assert [(r.line, r.handle) for r in found[("inet", "filter", "forward")]] == [(4, 7), (5, 9)]


def test_lines_come_from_the_nft_source_and_errors_point_there():
    text = document([match({"ct": {"key": "state"}}, ["established", "related"], "in"), ACCEPT],
                    [match(payload("ip", "saddr"), {"set": ["192.0.2.1"]}), match(payload("udp", "dport"), 5060),
                     ACCEPT],
                    [{"jump": {"target": "sub"}}], sub=([{"return": None}], [{"counter": None}]))
    rs = load_nft(text, "rules.json", NFT_TEXT)
    forward = rs.chains["inet filter/forward"].rules
    assert [(r.source.file, r.source.line) for r in forward] == [("rules.nft", 5), ("rules.nft", 6), ("rules.nft", 9)]
    assert [r.source.line for r in rs.chains["inet filter/sub"].rules] == [11, 13]
    assert forward[0].text == "ct state established,related accept"
    # The policy is where "type ... policy drop;" is written.
    assert (rs.bases[0].source.file, rs.bases[0].source.line) == ("rules.nft", 4)
    assert rs.chains["inet filter/sub"].source.line == 11
    with pytest.raises(InputError) as caught:
        load_nft(document([ACCEPT], [match(payload("ip", "dscp"), "ef"), ACCEPT], [ACCEPT],
                          sub=([ACCEPT], [ACCEPT])), "rules.json", NFT_TEXT)
    assert (caught.value.path, caught.value.line) == ("rules.nft", 6)
    with pytest.raises(InputError, match="does not describe"):
        load_nft(document([ACCEPT]), "rules.json", NFT_TEXT)


def test_sibling_nft_source(tmp_path):
    (tmp_path / "rules.json").write_text(document([ACCEPT]))
    assert sibling_nft_source(tmp_path / "rules.json") is None
    (tmp_path / "rules.nft").write_text(NFT_TEXT)
    text, path = sibling_nft_source(tmp_path / "rules.json")
    assert text == NFT_TEXT and path == str(tmp_path / "rules.nft")


# ---------------------------------------------------------------- the real nft

KERNEL_SCRIPT = textwrap.dedent("""\
    table inet filter {
    \tct helper sip-5060 {
    \t\ttype "sip" protocol udp
    \t\tl3proto inet
    \t}
    \tset peers {
    \t\ttype ipv4_addr
    \t\tflags interval
    \t\telements = { 198.51.100.0/24, 10.0.0.1-10.0.0.9 }
    \t}
    \tset flood { type ipv4_addr; flags dynamic; }
    \tchain helpers {
    \t\ttype filter hook prerouting priority filter; policy accept;
    \t\tudp dport 5060 ct helper set "sip-5060"
    \t}
    \tchain forward {
    \t\ttype filter hook forward priority 0; policy drop;
    \t\tct state vmap { established : accept, related : accept, invalid : drop }
    \t\tip saddr @peers udp dport { 5060, 16384-32767 } accept
    \t\tip6 saddr != 2001:db8::/32 meta l4proto { tcp, udp } th dport 5060 drop
    \t\tiifname "eth*" oifname != "eth1" tcp flags syn / fin,syn,rst,ack accept
    \t\tip frag-off & 0x1fff != 0 drop
    \t\texthdr frag exists drop
    \t\ticmp type echo-request limit rate 5/second burst 10 packets accept
    \t\tupdate @flood { ip saddr limit rate over 20/second burst 100 packets } drop
    \t\ttcp dport 22 log prefix "ssh: " counter reject with tcp reset
    \t\tudp dport 9 reject with icmpx type admin-prohibited
    \t\tjump sub
    \t}
    \tchain sub {
    \t\treturn
    \t}
    }
    """)


@pytest.mark.kernel
def test_what_the_real_nft_lists_reads_back_as_written():
    with Netns() as ns:
        loaded = ns.run("nft", "-f", "-", stdin=KERNEL_SCRIPT)
        assert loaded.returncode == 0, loaded.stderr
        listed_json = ns.run("nft", "-j", "list", "ruleset").stdout
        listed_text = ns.run("nft", "-a", "list", "ruleset").stdout
    rs = load_nft(listed_json, "rules.json", listed_text, nft_path="rules.nft")
    rules = list(rs.chains["inet filter/forward"].rules)
    # nft lists the vmap's elements sorted: invalid, established, related.
    assert [r.action.kind for r in rules] == ["drop", "accept", "accept", "accept", "drop", "accept", "drop",
                                              "drop", "accept", "drop", "reject", "reject", "jump"]
    by_text = {r.text.split(" # handle")[0].strip(): r for r in rules}
    assert len({r.source.line for r in rules}) == len(rules) - 2       # the vmap is three rules on one line
    for r in rules:
        assert listed_text.splitlines()[r.source.line - 1].strip().startswith(r.text.split(" ")[0])
    peers = next(r for t, r in by_text.items() if t.startswith("ip saddr @peers"))
    assert peers.match.src.ranges == (AddrRange(4, 0x0A000001, 0x0A000009), AddrRange(4, 0xC6336400, 0xC63364FF))
    assert peers.match.dport.ranges == ((5060, 5060), (16384, 32767))
    th = next(r for t, r in by_text.items() if t.startswith("ip6 saddr"))
    assert th.match.proto.protocols == {6, 17} and th.match.src.negated and th.match.family == 6
    meter = next(r for r in rules if r.match.limit is not None and r.match.limit.per)
    assert (meter.match.limit.per, meter.match.limit.above, meter.match.limit.rate) == (("src",), True, 20)
    icmp = next(r for r in rules if r.match.icmp is not None)
    assert icmp.match.icmp.types == {8} and icmp.match.limit.burst == 10
    ssh = next(r for r in rules if r.match.dport and r.match.dport.ranges == ((22, 22),))
    assert ssh.action.target == "tcp-reset"
    (helper,) = rs.chains["inet filter/helpers"].rules
    assert helper.action.kind == "ct_helper" and helper.match.dport.ranges == ((5060, 5060),)


REFERENCE = sorted(name for name, (_path, backends) in SOURCES.items() if "nft" in backends)


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_files_are_their_yaml_packet_for_packet(name):
    json_path = NFT_DIR / f"{name}.json"
    text, nft_path = sibling_nft_source(json_path)
    rs = load_nft(json_path.read_text(), str(json_path), text, nft_path=nft_path)
    expected = source_ruleset(name, "nft")
    assert differences(expected, rs, count=1500) == []
    assert dict(rs.conntrack.timeouts) == dict(expected.conntrack.timeouts)
    assert rs.conntrack.enabled == expected.conntrack.enabled
    lines = Path(nft_path).read_text().splitlines()
    for r in rs.rules():
        assert r.source.file == nft_path and lines[r.source.line - 1].strip() == r.text
        assert r.comment and r.comment.split(":")[0] in {x.id for x in expected.rules()} | {"fwtest"}
