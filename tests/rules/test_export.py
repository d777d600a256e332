"""Export to iptables-restore and nft -f: what the kernel loads and lists back is the
ruleset it came from, packet for packet; what netfilter cannot say is an error at
the rule's line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.errors import InputError
from fwtest.rules.export import timeout_sysctls, to_iptables, to_nft
from fwtest.rules.iptables import load_iptables
from fwtest.rules.ir import (
    DEFAULT_TIMEOUTS,
    Action,
    AddrMatch,
    AddrRange,
    BaseChain,
    Chain,
    Conntrack,
    FragmentMatch,
    IcmpMatch,
    IfaceMatch,
    LimitMatch,
    Match,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    SipMatch,
    Source,
    StateMatch,
    StringMatch,
    TcpFlagsMatch,
    addr_match,
)
from fwtest.rules.native import load_native
from fwtest.rules.nftables import load_nft

try:
    from nfwalk import Netns, canonical, differences
    from reference import SOURCES, source_ruleset
except ImportError:  # collected as a package
    from tests.rules.nfwalk import Netns, canonical, differences
    from tests.rules.reference import SOURCES, source_ruleset

ROOT = Path(__file__).resolve().parents[2]
NATIVE = sorted(p for p in (ROOT / "rulesets").rglob("*.yaml") if not p.name.endswith(".profile.yaml"))


def ruleset(*rules: Rule, policy: str = "drop", chains: dict | None = None, conntrack: Conntrack | None = None,
            hook: str | None = None) -> Ruleset:
    all_chains = {"main": Chain("main", tuple(rules), Source("gen.yaml", 1))}
    for name, body in (chains or {}).items():
        all_chains[name] = Chain(name, tuple(body), Source("gen.yaml", 1))
    uses_state = any(r.match.state or r.match.helper for c in all_chains.values() for r in c.rules)
    return Ruleset("gen", ("gen.yaml",), "yaml", all_chains,
                   (BaseChain("main", hook, 0, policy, None, Source("gen.yaml", 1)),),
                   conntrack or Conntrack(enabled=uses_state))


def rule(rule_id: str, action: str | Action = "accept", line: int = 7, **match) -> Rule:
    act = Action(action) if isinstance(action, str) else action
    return Rule(rule_id, Source("gen.yaml", line), Match(**match), act)


def merge(*rulesets: Ruleset) -> Ruleset:
    chains, bases = {}, ()
    for rs in rulesets:
        chains.update(rs.chains)
        bases += rs.bases
    return Ruleset("merged", (), "merged", chains, bases, rulesets[0].conntrack)


def iptables_back(rs: Ruleset, texts: dict[int, str]) -> Ruleset:
    return merge(*(load_iptables(text, f"export.v{f}") for f, text in texts.items()))


def kernel_iptables(texts: dict[int, str]) -> Ruleset:
    """Load the texts into a network namespace; what iptables-save lists, read back."""
    loaded = []
    with Netns() as ns:
        for family, text in texts.items():
            tool = "ip6tables" if family == 6 else "iptables"
            done = ns.run(f"{tool}-restore", stdin=text)
            assert done.returncode == 0, f"{tool}-restore refused:\n{done.stderr}\n{text}"
            saved = ns.run(f"{tool}-save").stdout
            loaded.append(load_iptables(saved, f"saved.v{family}"))
    return merge(*loaded)


def kernel_nft(script: str) -> Ruleset:
    with Netns() as ns:
        done = ns.run("nft", "-f", "-", stdin=script)
        assert done.returncode == 0, f"nft -f refused:\n{done.stderr}\n{script}"
        listed = ns.run("nft", "-j", "list", "ruleset").stdout
        text = ns.run("nft", "-a", "list", "ruleset").stdout
    return load_nft(listed, "listed.json", text, nft_path="listed.nft")


def without(rs: Ruleset, predicate) -> Ruleset:
    chains = {name: dataclasses.replace(c, rules=tuple(r for r in c.rules if not predicate(r)))
              for name, c in rs.chains.items()}
    return dataclasses.replace(rs, chains=chains)


# ---------------------------------------------------------------- the shipped native rulesets


def first_rule(rs: Ruleset, predicate) -> Rule | None:
    return next((r for r in rs.rules() if predicate(r)), None)


@pytest.mark.parametrize("path", NATIVE, ids=lambda p: str(p.relative_to(ROOT / "rulesets")))
def test_native_rulesets_export_or_name_what_netfilter_cannot_say(path):
    rs = load_native(path.read_text(), str(path))
    sip = first_rule(rs, lambda r: r.match.sip is not None)
    for export in (to_iptables, to_nft):
        if sip is None:
            export(rs)
            continue
        with pytest.raises(InputError) as caught:
            export(rs)
        assert (caught.value.path, caught.value.line) == (str(path), sip.source.line)
        assert f"rule '{sip.id}'" in caught.value.message and "SIP" in caught.value.message


@pytest.mark.kernel
@pytest.mark.parametrize("path", NATIVE, ids=lambda p: str(p.relative_to(ROOT / "rulesets")))
def test_native_rulesets_load_into_the_kernel_and_list_back_the_same(path):
    """Every shipped native ruleset, less what netfilter cannot read (SIP; strings for nft):
    the kernel accepts the export (--test, nft -c) and lists back the same rules."""
    rs = without(load_native(path.read_text(), str(path)), lambda r: r.match.sip is not None)
    texts = to_iptables(rs)
    with Netns() as ns:
        for family, text in texts.items():
            tool = "ip6tables" if family == 6 else "iptables"
            checked = ns.run(f"{tool}-restore", "--test", stdin=text)
            assert checked.returncode == 0, checked.stderr
    assert differences(rs, kernel_iptables(texts), count=1500) == []
    for_nft = without(rs, lambda r: bool(r.match.string))
    script = to_nft(for_nft)
    with Netns() as ns:
        checked = ns.run("nft", "-c", "-f", "-", stdin=script)
        assert checked.returncode == 0, checked.stderr
    listed = kernel_nft(script)
    assert differences(for_nft, listed, count=1500) == []
    assert dict(listed.conntrack.timeouts) == dict(rs.conntrack.timeouts)


# ---------------------------------------------------------------- round trips of imports


@pytest.mark.parametrize("name", sorted(n for n, (_p, b) in SOURCES.items() if "iptables" in b))
def test_iptables_import_exported_again_is_the_same_rules(name):
    """load_iptables(to_iptables(x)) has the Match/Action parts of x, rule for rule."""
    for family in (4, 6):
        path = ROOT / "rulesets" / "iptables" / f"{name}.v{family}"
        original = load_iptables(path.read_text(), str(path))
        again = load_iptables(to_iptables(original)[family], f"again.v{family}")
        assert canonical(again, family) == canonical(original, family)
        assert dict(again.conntrack.timeouts) == dict(original.conntrack.timeouts)
        # The ids travel in the comments: "ip4:FORWARD:9: invite-guard: every INVITE ...".
        for before, after in zip(original.rules(), again.rules(), strict=True):
            assert after.comment == (f"{before.id}: {before.comment}" if before.comment else before.id)


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(n for n, (_p, b) in SOURCES.items() if "nft" in b))
def test_nft_import_exported_to_both_tools_is_the_same_ruleset(name):
    path = ROOT / "rulesets" / "nft" / f"{name}.json"
    original = load_nft(path.read_text(), str(path))
    assert differences(original, kernel_nft(to_nft(original)), count=1000) == []
    assert differences(original, kernel_iptables(to_iptables(original)), count=1000) == []


def test_reference_nft_scripts_are_what_the_exporter_writes():
    for name, (_path, backends) in SOURCES.items():
        if "nft" in backends:
            written = (ROOT / "rulesets" / "nft" / f"{name}.nft").read_text()
            assert written == to_nft(source_ruleset(name, "nft")), f"regenerate: python tests/rules/reference.py {name}"


# ---------------------------------------------------------------- conntrack


def test_sip_helper_and_timeouts():
    ct = Conntrack(enabled=True, helpers=frozenset({"sip"}),
                   timeouts=MappingProxyType({**DEFAULT_TIMEOUTS, "udp_stream": 3600, "icmp": 10}))
    rs = ruleset(rule("established", state=StateMatch(frozenset({"established"}))), conntrack=ct)
    v4 = to_iptables(rs, sip_ports=(5060, 5080))[4]
    assert "-A PREROUTING -p udp -m udp --dport 5080 -m comment --comment \"fwtest: SIP helper\" " \
           "-j CT --helper sip" in v4
    assert "#   sysctl -w net.netfilter.nf_conntrack_udp_timeout_stream=3600" in v4
    back = load_iptables(v4, "x.v4")
    assert back.conntrack.timeouts["udp_stream"] == 3600
    assigned = [r for r in back.rules() if r.action.kind == "ct_helper"]
    assert sorted(r.match.dport.ranges[0][0] for r in assigned) == [5060, 5060, 5060, 5060, 5080, 5080, 5080, 5080]
    assert timeout_sysctls(ct) == {"net.netfilter.nf_conntrack_udp_timeout_stream": 3600,
                                   "net.netfilter.nf_conntrack_icmp_timeout": 10,
                                   "net.netfilter.nf_conntrack_icmpv6_timeout": 10}
    script = to_nft(rs, sip_ports=(5060,))
    assert 'ct helper set "fwtest-sip-udp"' in script and "policy = { replied : 3600 }" in script
    assert "# conntrack timeouts nft cannot set here" in script and "icmp_timeout=10" in script


@pytest.mark.kernel
def test_sip_helper_and_timeouts_survive_the_kernel():
    ct = Conntrack(enabled=True, helpers=frozenset({"sip"}),
                   timeouts=MappingProxyType({**DEFAULT_TIMEOUTS, "udp_stream": 3600, "tcp_established": 7200}))
    rs = ruleset(rule("established", state=StateMatch(frozenset({"established"}))), conntrack=ct)
    listed = kernel_nft(to_nft(rs))
    assert (listed.conntrack.timeouts["udp_stream"], listed.conntrack.timeouts["tcp_established"]) == (3600, 7200)
    helpers = [r for r in listed.rules() if r.action.kind == "ct_helper"]
    # One per protocol (a ct helper object serves one) and hook (prerouting, output).
    assert sorted(p for r in helpers for p in r.match.proto.protocols) == [6, 6, 17, 17]
    assert all(r.match.dport.ranges == ((5060, 5060),) for r in helpers)
    saved = kernel_iptables(to_iptables(rs))
    assert saved.conntrack.enabled and differences(rs, saved, count=500) == []


@pytest.mark.kernel
def test_conntrack_on_without_state_rules_still_loads_conntrack():
    """The model reassembles fragments when conntrack is on; the kernel only does so when
    a rule needs conntrack, so the export adds one that changes nothing else."""
    rs = ruleset(rule("any", dport=PortMatch(((5060, 5060),)), proto=ProtoMatch(frozenset({17}))),
                 conntrack=Conntrack(enabled=True))
    texts = to_iptables(rs)
    assert "fwtest: load conntrack" in texts[4]
    back = kernel_iptables(texts)
    assert back.conntrack.enabled and differences(rs, back, count=500) == []
    listed = kernel_nft(to_nft(rs))
    assert listed.conntrack.enabled and differences(rs, listed, count=500) == []


def test_state_rules_in_a_stateless_ruleset_cannot_be_exported():
    rs = ruleset(rule("est", line=12, state=StateMatch(frozenset({"established"}))),
                 conntrack=Conntrack(enabled=False))
    for export in (to_iptables, to_nft):
        with pytest.raises(InputError, match="ruleset has conntrack off") as caught:
            export(rs)
        assert caught.value.line == 12


# ---------------------------------------------------------------- what cannot be said


@pytest.mark.parametrize(("match", "backend", "words"), [
    (dict(sip=SipMatch(method="INVITE")), "iptables", "SIP message match"),
    (dict(sip=SipMatch(method="INVITE")), "nft", "SIP message match"),
    (dict(string=(StringMatch(b"sos", icase=True),)), "nft", "string match has no nft equivalent"),
    (dict(proto=ProtoMatch(frozenset({6})), tcp_flags=TcpFlagsMatch(0xC2, 0x02)), "iptables", "ECE or CWR"),
    (dict(fragment=FragmentMatch("later")), "iptables", "ip6tables cannot match"),
    (dict(fragment=FragmentMatch("first"), family=4), "iptables", "'first' fragments of IPv4"),
    (dict(iface_in=IfaceMatch(("eth0", "eth1"), True)), "iptables", "takes one interface"),
    (dict(proto=ProtoMatch(frozenset({6, 17}), True)), "iptables", "takes one protocol"),
    (dict(limit=LimitMatch(rate=7 / 13, burst=5)), "iptables", "not a whole number"),
])
def test_what_netfilter_cannot_say_is_an_error_at_the_rule(match, backend, words):
    rs = ruleset(rule("the-rule", "drop", line=42, **match))
    export = to_iptables if backend == "iptables" else to_nft
    with pytest.raises(InputError) as caught:
        export(rs)
    assert (caught.value.path, caught.value.line) == ("gen.yaml", 42)
    assert "rule 'the-rule'" in caught.value.message and words in caught.value.message, caught.value.message


def test_two_base_chains_on_one_iptables_chain_are_an_error():
    rs = ruleset(rule("a"))
    rs = dataclasses.replace(rs, chains={**rs.chains, "other": Chain("other", (rule("b", "drop"),), Source("x", 1))},
                             bases=rs.bases + (BaseChain("other", "forward", 0, "accept", None, Source("x", 1)),))
    with pytest.raises(InputError, match="both map to iptables filter/FORWARD"):
        to_iptables(rs)
    assert to_nft(rs).count("type filter hook forward priority 0") == 2


def test_chain_names_nft_reserves_get_a_suffix_and_ids_travel_as_comments():
    rs = ruleset(rule("to-limit", Action("jump", "limit")),
                 chains={"limit": [rule("inner", "return", comment_free=None)] if False else
                         [Rule("inner", Source("gen.yaml", 9), Match(), Action("return"))]})
    script = to_nft(rs)
    assert "chain limit_ {" in script and "jump limit_ comment \"to-limit\"" in script
    v4 = to_iptables(rs)[4]
    assert ":limit - [0:0]" in v4 and '-m comment --comment "to-limit" -j limit' in v4


# ---------------------------------------------------------------- generated rulesets

ADDRESSES = ["198.51.100.0/24", "203.0.113.0/26", "10.0.0.0/8", "192.0.2.7", "2001:db8:100::/56",
             "2001:db8:911::/64", "2001:db8::1"]
PORTS = [(5060, 5060), (5061, 5061), (16384, 32767), (22, 22), (1, 1023), (2855, 2855)]


@st.composite
def addresses(draw):
    texts = draw(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3, unique=True))
    match = addr_match(texts, negated=draw(st.booleans()) and len(texts) == 1)
    if draw(st.integers(0, 4)) == 0:     # a range that is no CIDR block (iptables: -m iprange)
        return AddrMatch((AddrRange(4, 0x0A000005, 0x0A000014),), draw(st.booleans()), "10.0.0.5-10.0.0.20")
    return match


@st.composite
def ports(draw):
    ranges = tuple(sorted(draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3, unique=True))))
    return PortMatch(ranges, draw(st.booleans()))


@st.composite
def matches(draw, strings: bool = False):
    fields: dict = {}
    proto = draw(st.sampled_from([None, "udp", "tcp", "both", "!udp", "icmp"]))
    if proto in ("udp", "tcp"):
        fields["proto"] = ProtoMatch(frozenset({17 if proto == "udp" else 6}))
    elif proto == "both":
        fields["proto"] = ProtoMatch(frozenset({6, 17}))
    elif proto == "!udp":
        fields["proto"] = ProtoMatch(frozenset({17}), True)
    elif proto == "icmp":
        family = draw(st.sampled_from([4, 6]))
        fields["family"] = family
        fields["proto"] = ProtoMatch(frozenset({1 if family == 4 else 58}))
        if draw(st.booleans()):
            fields["icmp"] = IcmpMatch(family, frozenset({8 if family == 4 else 128}),
                                       draw(st.sampled_from([(0, 255), (0, 0)])), draw(st.booleans()))
    if draw(st.booleans()):
        fields["src"] = draw(addresses())
    if draw(st.integers(0, 2)) == 0:
        fields["dst"] = draw(addresses())
    if proto in ("udp", "tcp", "both", None) and draw(st.booleans()):
        fields["dport"] = draw(ports())
    if proto in ("udp", "tcp") and draw(st.integers(0, 3)) == 0:
        fields["sport"] = draw(ports())
    if proto == "tcp" and draw(st.integers(0, 2)) == 0:
        mask = draw(st.sampled_from([0x17, 0x3F, 0x12, 0x02]))
        fields["tcp_flags"] = TcpFlagsMatch(mask, mask & draw(st.sampled_from([0x02, 0x12, 0x00])),
                                            draw(st.booleans()))
    if draw(st.integers(0, 3)) == 0:
        fields["iface_in"] = draw(st.sampled_from([IfaceMatch(("eth0",)), IfaceMatch(("eth+",)),
                                                   IfaceMatch(("eth0", "eth1")), IfaceMatch(("eth1",), True)]))
    if draw(st.integers(0, 3)) == 0:
        fields["iface_out"] = IfaceMatch(("eth1",), draw(st.booleans()))
    if draw(st.integers(0, 2)) == 0:
        states = draw(st.sets(st.sampled_from(["new", "established", "related", "invalid", "untracked"]),
                              min_size=1, max_size=3))
        fields["state"] = StateMatch(frozenset(states), draw(st.booleans()))
    if "family" not in fields and draw(st.integers(0, 5)) == 0:
        fields["family"] = 4
        fields["fragment"] = FragmentMatch("later", draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0:
        fields["helper"] = "sip"
    if draw(st.integers(0, 4)) == 0:
        per = draw(st.sampled_from([(), ("src",)]))
        fields["limit"] = LimitMatch(draw(st.sampled_from([1.0, 50.0, 1 / 60])), draw(st.sampled_from([1, 5, 100])),
                                     draw(st.booleans()), per)
    if "family" not in fields and draw(st.integers(0, 4)) == 0:
        fields["family"] = draw(st.sampled_from([4, 6]))
    if strings and draw(st.integers(0, 3)) == 0:      # iptables only: nft has no string match
        fields["string"] = (StringMatch(draw(st.sampled_from([b"sos", b"INVITE ", b'a "q"\\', b"\r\n\x00"])),
                                        draw(st.sampled_from(["bm", "kmp"])), draw(st.sampled_from([0, 20])),
                                        draw(st.sampled_from([65535, 400])), draw(st.booleans()),
                                        draw(st.booleans())),)
    return Match(**fields)


@st.composite
def actions(draw, match: Match, targets: list[str]):
    kinds = ["accept", "drop", "reject", "log", "continue", "return"] + (["jump", "goto"] if targets else [])
    kind = draw(st.sampled_from(kinds))
    if kind in ("jump", "goto"):
        return Action(kind, draw(st.sampled_from(targets)))
    if kind == "reject":
        tcp_only = match.proto is not None and not match.proto.negated and match.proto.protocols == {6}
        types = ["port-unreachable", "admin-prohibited", "icmp-host-prohibited"] + (["tcp-reset"] if tcp_only else [])
        return Action("reject", draw(st.sampled_from(types)))
    if kind == "log":
        return Action("log", draw(st.sampled_from([None, "fw: "])))
    return Action(kind)


@st.composite
def rulesets(draw, strings: bool = False):
    names = ["main", "guard", "media"]
    chains: dict[str, list[Rule]] = {}
    count = 0
    for index, name in enumerate(names):
        targets = names[index + 1:] if name != "media" else []   # no loops
        body = []
        for _ in range(draw(st.integers(0 if name != "main" else 1, 4))):
            count += 1
            m = draw(matches(strings))
            body.append(Rule(f"r{count}", Source("gen.yaml", count), m, draw(actions(m, targets))))
        chains[name] = body
    uses_state = any(r.match.state or r.match.helper for body in chains.values() for r in body)
    conntrack = Conntrack(enabled=uses_state or draw(st.booleans()))
    return ruleset(*chains["main"], policy=draw(st.sampled_from(["drop", "accept"])),
                   chains={"guard": chains["guard"], "media": chains["media"]}, conntrack=conntrack)


@settings(max_examples=60)
@given(rulesets(strings=True))
def test_iptables_export_reads_back_as_the_same_ruleset(rs):
    assert differences(rs, iptables_back(rs, to_iptables(rs)), count=300) == []


@pytest.mark.kernel
@settings(max_examples=25)
@given(rulesets(strings=True))
def test_iptables_export_survives_the_kernel(rs):
    assert differences(rs, kernel_iptables(to_iptables(rs)), count=300) == []


@pytest.mark.kernel
@settings(max_examples=25)
@given(rulesets())
def test_nft_export_survives_the_kernel(rs):
    listed = kernel_nft(to_nft(rs))
    assert differences(rs, listed, count=300) == []
    assert listed.conntrack.enabled == rs.conntrack.enabled


def test_export_is_deterministic_and_json_free():
    rs = source_ruleset("psap-edge", "nft")
    assert to_nft(rs) == to_nft(rs) and to_iptables(rs) == to_iptables(rs)
    with pytest.raises(json.JSONDecodeError):
        json.loads(to_nft(rs))
