"""nftables import: the JSON of ``nft -j list ruleset``.

    is_nft_json(text)                              is this nft JSON?
    load_nft(text, path, nft_source=None, *, nft_path=None)
    sibling_nft_source(json_path)                  the .nft text beside a JSON file, if any

What a ruleset becomes
----------------------
Tables of family ``ip``, ``ip6`` and ``inet``; every chain is an IR chain named
``"<family> <table>/<chain>"`` (``inet filter/forward``). Base chains (those
with a hook) keep their hook, priority and policy, with ``family`` 4 for
``ip``, 6 for ``ip6`` and None for ``inet``. Several base chains on one hook
are kept as they are: netfilter runs them by priority and a drop in any of
them ends the packet (the engine does that).

Rules are identified as ``inet filter/forward handle 7`` (``Rule.id``). An
nft rule that fwtest has to spell as several IR rules (a verdict map, a TCP
flag set, a rule that both sets a helper and accepts) gives ids ``... handle
7#1``, ``#2``, ... in the order nft would try them.

Line numbers
------------
JSON has none. Without the ruleset's text, ``Source`` is ``(json path, 0)``
and errors read ``rules.json[inet filter/forward handle 7]: ...``. The text
is the output of ``nft -a list ruleset`` (each rule ends in ``# handle N``)
or the script that was loaded with ``nft -f``; callers find it with
``sibling_nft_source(json_path)``: the file of the same name with the
extension ``.nft`` beside the JSON (``rules.json`` -> ``rules.nft``), and
pass its text as ``nft_source`` and its path as ``nft_path``. Rules are then
``Source(rules.nft, line)`` and ``Rule.text`` is their line. Rules are
matched to lines by handle when the text has handles, else in order within
each chain; a text that does not have the JSON's rules is an error rather
than a wrong line.

Semantics that need a word
--------------------------
* A verdict map ``udp dport vmap { 22 : drop, 5060 : accept }`` becomes one
  IR rule per element, in the listed order, each matching its key. A packet
  has one value for the key and nft refuses overlapping keys, so at most one
  element can match: the lowered rules see the same packets take the same
  verdicts, and a packet matching none falls through in both.
* ``tcp flags syn,ack`` (nft's ``in``: any of the bits) and ``tcp flags {
  syn, ack }`` (exactly one of the values) are split into disjoint IR rules,
  since ``TcpFlagsMatch`` is one mask/value test.
* ``log`` and ``counter`` do not end the walk. A rule that logs and then
  accepts is one IR rule with the verdict (the log changes no verdict); a rule
  that only logs or counts is ``log`` / ``continue``.
* ``ip6 nexthdr P`` is the protocol in the IPv6 header itself: a fragment
  carries 44 there, so it becomes "protocol P and not a fragment" (packets
  with other extension headers before P are outside what fwtest models; nft's
  ``meta l4proto`` is the transport protocol after them).
* ``th sport``/``th dport`` read bytes 0-3 of whatever transport header
  follows; fwtest models ports of TCP, UDP, SCTP and UDP-Lite, so such a rule
  must also say ``meta l4proto`` with those protocols.
* Named limits (``limit name "x"``) and per-key limits (``update @set { ip
  saddr limit rate ... }``) keep one bucket per object: ``LimitMatch.name``
  is ``nft:<family> <table>/<object>`` for the engine to share it.
* ``ct helper set "obj"`` assigns the helper type of the ``ct helper`` object
  to connections of the object's protocol (the kernel ignores others): an
  ``Action('ct_helper')`` with that protocol added to its match.
  ``Conntrack.helpers`` stays empty (it would mean the helper on every
  connection to the SIP ports, which the rule may not give); ``ct
  timeout set "obj"`` in a rule without other conditions sets the ruleset's
  conntrack timeouts (the ``policy`` keys nft lists; keys it omits are the
  kernel defaults).
* Connection tracking is enabled when a rule uses ``ct`` (state, helper,
  helper or timeout assignment): the kernel loads it for those rules only.
* nft's listing leaves out a ``meta nfproto`` test it deems implied: before
  ``meta l4proto icmp``/``ipv6-icmp`` and before ``reject`` in an inet table
  (``meta nfproto ipv6 meta l4proto tcp reject with tcp reset`` is listed
  without its first test). fwtest reads what is listed, so such a rule is
  read as applying to both families. The difference is confined to packets
  of the other family that reach it (ICMPv4 carried in IPv6, or an IPv4 TCP
  packet the model then rejects where the kernel goes on): fwtest's own
  exports write the test as ``meta nfproto != ipv4``, which is listed.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fwtest.errors import InputError
from fwtest.rules.iptables import (
    FAMILY_BITS,
    ICMP,
    ICMPV6,
    combine_addresses,
    combine_ports,
    combine_states,
    combine_tcp_flags,
    complement_ranges,
)
from fwtest.rules.ir import (
    CT_STATES,
    DEFAULT_TIMEOUTS,
    PORT_PROTOCOLS,
    PROTO_NAMES,
    PROTO_NUMBERS,
    TCP,
    UDP,
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
    Source,
    StateMatch,
    TcpFlagsMatch,
)

TABLE_FAMILIES = MappingProxyType({"ip": 4, "ip6": 6, "inet": None})
PRIORITY_NAMES = MappingProxyType({"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0,
                                   "security": 50, "srcnat": 100})
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
RATE_UNITS = MappingProxyType({"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800})
# nft's icmp / icmpv6 type and code names (src/proto.c, src/icmpx.c).
NFT_ICMP_TYPES = MappingProxyType({
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
    "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11,
    "parameter-problem": 12, "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15,
    "info-reply": 16, "address-mask-request": 17, "address-mask-reply": 18,
})
NFT_ICMPV6_TYPES = MappingProxyType({
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
    "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130, "mld-listener-report": 131,
    "mld-listener-done": 132, "mld-listener-reduction": 132, "nd-router-solicit": 133,
    "nd-router-advert": 134, "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136,
    "nd-redirect": 137, "router-renumbering": 138, "ind-neighbor-solicit": 141,
    "ind-neighbor-advert": 142, "mld2-listener-report": 143,
})
NFT_ICMP_CODES = MappingProxyType({
    "net-unreachable": 0, "host-unreachable": 1, "prot-unreachable": 2, "port-unreachable": 3,
    "frag-needed": 4, "net-prohibited": 9, "host-prohibited": 10, "admin-prohibited": 13,
})
NFT_ICMPV6_CODES = MappingProxyType({
    "no-route": 0, "admin-prohibited": 1, "addr-unreachable": 3, "port-unreachable": 4,
    "policy-fail": 5, "reject-route": 6,
})
TCP_FLAGS_NFT = MappingProxyType({"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10,
                                  "urg": 0x20, "ecn": 0x40, "cwr": 0x80})
# nft ct timeout policy keys -> fwtest's names (the kernel's sysctl names).
TIMEOUT_KEYS = MappingProxyType({
    "udp": {"unreplied": "udp", "replied": "udp_stream"},
    "tcp": {"syn_sent": "tcp_syn_sent", "syn_recv": "tcp_syn_recv", "established": "tcp_established",
            "fin_wait": "tcp_fin_wait", "close_wait": "tcp_close_wait", "last_ack": "tcp_last_ack",
            "time_wait": "tcp_time_wait", "close": "tcp_close", "unack": "tcp_unacknowledged",
            "unacknowledged": "tcp_unacknowledged"},
})
PORT_PAYLOADS = {"tcp": TCP, "udp": UDP, "sctp": 132, "udplite": 136, "th": None}
# Statements that change nothing fwtest's verdicts depend on.
NEUTRAL_STATEMENTS = ("counter",)


# ===================================================================== detection


def is_nft_json(text: str) -> bool:
    """True for the JSON ``nft -j list ruleset`` prints: an object with an ``nftables`` list."""
    head = text.lstrip()[:200]
    if not head.startswith("{") or '"nftables"' not in text[:10000]:
        return False
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("nftables"), list)


def sibling_nft_source(json_path: str | Path) -> tuple[str, str] | None:
    """(text, path) of ``<name>.nft`` beside ``<name>.json``, when that file exists."""
    candidate = Path(json_path).with_suffix(".nft")
    if candidate == Path(json_path) or not candidate.is_file():
        return None
    try:
        return candidate.read_text(encoding="utf-8"), str(candidate)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(candidate), 0, f"cannot read nft source: {e}") from None


# ===================================================================== .nft text -> lines


@dataclass
class _SourceRule:
    line: int
    handle: int | None
    text: str


_HANDLE = re.compile(r"#\s*handle\s+(\d+)\s*$")
_BLOCK_KEYWORDS = ("chain", "set", "map", "flowtable", "counter", "quota", "limit", "ct", "secmark",
                   "synproxy")
_CHAIN_PROPERTIES = ("type", "policy", "comment", "devices", "flags")


def _nft_tokens(text: str) -> tuple[list[tuple[str, int]], dict[int, int]]:
    """Words, quoted strings, braces, ';' and newlines of an nft text, with their lines;
    and the '# handle N' comment of each line that has one."""
    tokens: list[tuple[str, int]] = []
    handles: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        i = 0
        while i < len(line):
            ch = line[i]
            if ch in " \t\r":
                i += 1
            elif ch == "#":
                m = _HANDLE.search(line[i:])
                if m:
                    handles[number] = int(m.group(1))
                break
            elif ch in "{};":
                tokens.append((ch, number))
                i += 1
            elif ch == '"':
                end = line.find('"', i + 1)
                end = len(line) - 1 if end < 0 else end
                tokens.append((line[i:end + 1], number))
                i = end + 1
            else:
                j = i
                while j < len(line) and line[j] not in ' \t\r{};#"':
                    j += 1
                tokens.append((line[i:j], number))
                i = j
        tokens.append(("\n", number))
    return tokens, handles


class _NftText:
    """Finds the rules of an nft text: block syntax (``table ... { chain ... { rules } }``)
    and ``add rule FAMILY TABLE CHAIN ...`` lines."""

    def __init__(self, text: str, path: str) -> None:
        self.tokens, self.handles = _nft_tokens(text)
        self.path = path
        self.pos = 0
        self.found: dict[tuple[str, str, str], list[_SourceRule]] = {}
        # Where each chain's policy is written ("type ... policy drop;"), else its "chain" line.
        self.chain_lines: dict[tuple[str, str, str], int] = {}

    def parse(self) -> dict[tuple[str, str, str], list[_SourceRule]]:
        self.block(("top",))
        return self.found

    def block(self, ctx: tuple) -> None:
        while self.pos < len(self.tokens):
            tok, line = self.tokens[self.pos]
            if tok in ("\n", ";"):
                self.pos += 1
            elif tok == "}":
                if ctx[0] == "top":
                    raise InputError(self.path, line, "unbalanced '}'")
                self.pos += 1
                return
            else:
                self.statement(ctx)
        if ctx[0] != "top":
            raise InputError(self.path, self.tokens[-1][1] if self.tokens else 0, "unclosed '{'")

    def statement(self, ctx: tuple) -> None:
        words: list[str] = []
        first = last = self.tokens[self.pos][1]
        level = 0
        while self.pos < len(self.tokens):
            tok, line = self.tokens[self.pos]
            if level == 0 and tok in ("\n", ";", "}"):
                break
            if tok == "{":
                if level == 0 and self.opens_block(words, ctx):
                    self.pos += 1
                    inner = self.inner(words, ctx)
                    if inner[0] == "chain":
                        self.chain_lines.setdefault(inner[1:], first)
                    self.block(inner)
                    return
                level += 1
            elif tok == "}":
                level -= 1
            words.append(tok)
            last = line
            self.pos += 1
        self.emit(ctx, words, first, last)

    @staticmethod
    def opens_block(words: list[str], ctx: tuple) -> bool:
        if not words:
            return False
        if ctx[0] == "top":
            return words[0] in ("table", "add", "create") or words[0] in _BLOCK_KEYWORDS
        return ctx[0] == "table" and words[0] in _BLOCK_KEYWORDS

    @staticmethod
    def inner(words: list[str], ctx: tuple) -> tuple:
        if ctx[0] == "top" and words[0] == "table":
            rest = words[1:]
            family, name = (rest[0], rest[1]) if len(rest) >= 2 else ("ip", rest[0] if rest else "")
            return ("table", family, name)
        if ctx[0] == "table" and words[0] == "chain" and len(words) >= 2:
            return ("chain", ctx[1], ctx[2], words[1])
        return ("other",)

    def emit(self, ctx: tuple, words: list[str], first: int, last: int) -> None:
        if not words:
            return
        key = None
        if ctx[0] == "chain" and words[0] in ("type", "policy"):
            self.chain_lines[(ctx[1], ctx[2], ctx[3])] = first
        if ctx[0] == "chain" and words[0] not in _CHAIN_PROPERTIES:
            key = (ctx[1], ctx[2], ctx[3])
        elif ctx[0] == "top" and words[0] in ("add", "insert") and len(words) >= 5 and words[1] == "rule":
            key = (words[2], words[3], words[4]) if words[2] in TABLE_FAMILIES else ("ip", words[2], words[3])
        if key is None:
            return
        entry = _SourceRule(first, self.handles.get(last), " ".join(words))
        rules = self.found.setdefault(key, [])
        if words[0] == "insert":
            rules.insert(0, entry)
        else:
            rules.append(entry)


def map_source_rules(text: str, path: str) -> dict[tuple[str, str, str], list[_SourceRule]]:
    """Rules of an nft text by (family, table, chain), in order, with line and handle."""
    return _NftText(text, path).parse()


# ===================================================================== JSON -> IR


@dataclass
class _Conds:
    families: set[int] = field(default_factory=lambda: {4, 6})
    protos: list[ProtoMatch] = field(default_factory=list)
    src: list[AddrMatch] = field(default_factory=list)
    dst: list[AddrMatch] = field(default_factory=list)
    sport: list[PortMatch] = field(default_factory=list)
    dport: list[PortMatch] = field(default_factory=list)
    th_ports: bool = False
    iface_in: list[IfaceMatch] = field(default_factory=list)
    iface_out: list[IfaceMatch] = field(default_factory=list)
    state: list[StateMatch] = field(default_factory=list)
    fragment: list[FragmentMatch] = field(default_factory=list)
    tcp_flags: list[TcpFlagsMatch] = field(default_factory=list)
    helper: str | None = None
    limit: LimitMatch | None = None
    icmp_types: list[tuple[int, frozenset[int], bool]] = field(default_factory=list)
    icmp_codes: list[tuple[int, tuple[int, int]]] = field(default_factory=list)

    def copy(self) -> _Conds:
        c = _Conds()
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            setattr(c, name, value.copy() if isinstance(value, (list, set)) else value)
        return c


class _Unsupported(Exception):
    """A message for InputError at the rule's location."""


@dataclass
class _Table:
    family: str
    name: str
    sets: dict[str, dict] = field(default_factory=dict)
    maps: dict[str, dict] = field(default_factory=dict)
    helpers: dict[str, dict] = field(default_factory=dict)
    timeouts: dict[str, dict] = field(default_factory=dict)
    limits: dict[str, dict] = field(default_factory=dict)
    chains: dict[str, dict] = field(default_factory=dict)
    rules: dict[str, list[dict]] = field(default_factory=dict)


def load_nft(text: str, path: str, nft_source: str | None = None, *, nft_path: str | None = None) -> Ruleset:
    """The ruleset in ``nft -j list ruleset`` output (module docstring).

    ``nft_source`` is the ruleset's nft text (``nft -a list ruleset`` or the
    ``nft -f`` script) and ``nft_path`` its file name, for rule lines; when
    ``nft_path`` is omitted it is the JSON path with the extension ``.nft``.
    """
    try:
        data = json.loads(text)
    except ValueError as e:
        line = getattr(e, "lineno", 0)
        raise InputError(path, line, f"malformed JSON: {e}") from None
    except RecursionError:
        raise InputError(path, 0, "malformed JSON: nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("nftables"), list):
        raise InputError(path, 0, "not nft JSON: expected an object with an 'nftables' list "
                                  "(the output of 'nft -j list ruleset')")
    source = None
    if nft_source is not None:
        nft_path = nft_path or str(Path(path).with_suffix(".nft"))
        source = _NftText(nft_source, nft_path)
        source.parse()
    try:
        return _Loader(path, nft_path, source).load(data["nftables"])
    except (TypeError, AttributeError, KeyError) as e:
        # nft itself never writes these: a hand-edited or truncated document put a
        # value of the wrong JSON type where nft writes an object, string or number.
        raise InputError(path, 0, f"malformed nft JSON: a value of the wrong type ({type(e).__name__}: {e})") \
            from None


class _Loader:
    def __init__(self, path: str, nft_path: str | None, source: _NftText | None) -> None:
        self.path = path
        self.nft_path = nft_path
        self.source_rules = source.found if source else None
        self.chain_lines = source.chain_lines if source else {}
        self.tables: dict[tuple[str, str], _Table] = {}
        self.uses_conntrack = False
        self.timeouts: dict[str, int] = {}
        self.timeout_source: Source | None = None

    def where(self, family: str, table: str, chain: str | None = None, handle: Any = None) -> str:
        inner = f"{family} {table}" + (f"/{chain}" if chain else "")
        if handle is not None:
            inner += f" handle {handle}"
        return f"{self.path}[{inner}]"

    # ---------------------------------------------------------------- objects
    def load(self, objects: list) -> Ruleset:
        order: list[tuple[str, str, str]] = []
        for index, obj in enumerate(objects):
            if not isinstance(obj, dict) or len(obj) != 1:
                raise InputError(f"{self.path}[nftables {index}]", 0, "each entry of 'nftables' is an "
                                                                      "object with one key")
            ((kind, body),) = obj.items()
            if kind == "metainfo":
                continue
            if not isinstance(body, dict):
                raise InputError(f"{self.path}[nftables {index}]", 0, f"'{kind}' is not an object")
            family, tname = body.get("family"), body.get("table", body.get("name"))
            if kind == "table":
                self.table_object(body)
                continue
            if (family, tname) not in self.tables:
                if family not in TABLE_FAMILIES and kind in ("chain", "rule"):
                    raise InputError(self.where(str(family), str(tname)), 0,
                                     f"unsupported table family '{family}' (fwtest reads ip, ip6 and inet)")
                self.tables.setdefault((family, tname), _Table(str(family), str(tname)))
            table = self.tables[(family, tname)]
            name = body.get("name")
            if kind == "chain":
                table.chains[name] = body
                table.rules.setdefault(name, [])
                order.append((family, tname, name))
            elif kind == "rule":
                chain = body.get("chain")
                if chain not in table.chains:
                    raise InputError(self.where(family, tname, chain, body.get("handle")), 0,
                                     f"rule of chain '{chain}', which is not listed before it")
                table.rules[chain].append(body)
            elif kind == "set":
                table.sets[name] = body
            elif kind == "map":
                table.maps[name] = body
            elif kind == "ct helper":
                table.helpers[name] = body
            elif kind == "ct timeout":
                table.timeouts[name] = body
            elif kind == "limit":
                table.limits[name] = body
            elif kind in ("counter", "flowtable", "quota", "secmark", "ct expectation", "synproxy",
                          "element"):
                # Objects only matter through the rules that use them; those are checked there.
                continue
            else:
                raise InputError(self.where(str(family), str(tname)), 0, f"unsupported nft object '{kind}'")
        for (family, _tname), table in self.tables.items():
            if family not in TABLE_FAMILIES and table.chains:
                raise InputError(self.where(family, table.name), 0,
                                 f"unsupported table family '{family}' (fwtest reads ip, ip6 and inet)")
        chains: dict[str, Chain] = {}
        bases: list[BaseChain] = []
        for family, tname, cname in order:
            table = self.tables[(family, tname)]
            body = table.chains[cname]
            qualified = f"{family} {tname}/{cname}"
            line = self.chain_lines.get((family, tname, cname))
            chain_source = Source(self.nft_path, line) if line and self.nft_path else Source(self.path, 0)
            if "hook" in body:
                base = self.base_chain(table, body, qualified)
                if base is None:
                    continue
                bases.append(base)
                chain_source = base.source
            rules = tuple(self.chain_rules(table, cname))
            chains[qualified] = Chain(qualified, rules, chain_source)
        conntrack = Conntrack(
            # helpers stays empty: the ct helper set rules say which connections get one
            # (Conntrack.helpers would put it on every connection to the SIP ports).
            enabled=self.uses_conntrack,
            timeouts=MappingProxyType({**DEFAULT_TIMEOUTS, **self.timeouts}),
            source=self.timeout_source if self.uses_conntrack else None)
        return Ruleset(name=Path(self.path).name, files=(self.path,), format="nft", chains=chains,
                       bases=tuple(bases), conntrack=conntrack)

    def table_object(self, body: dict) -> None:
        key = (body.get("family"), body.get("name"))
        self.tables.setdefault(key, _Table(str(key[0]), str(key[1])))

    def base_chain(self, table: _Table, body: dict, qualified: str) -> BaseChain | None:
        where = self.where(table.family, table.name, body.get("name"))
        ctype, hook = body.get("type", "filter"), body.get("hook")
        if ctype == "nat":
            # An empty nat chain changes no packet; one with rules would rewrite addresses.
            if table.rules.get(body["name"]):
                first = table.rules[body["name"]][0]
                raise InputError(self.where(table.family, table.name, body["name"], first.get("handle")),
                                 0, "unsupported: rule in a nat chain (fwtest does not model NAT: "
                                    "DNAT/SNAT change the addresses the filter sees)")
            return None
        if ctype not in ("filter", "route"):
            raise InputError(where, 0, f"unsupported chain type '{ctype}'")
        if hook not in HOOKS:
            raise InputError(where, 0, f"unsupported hook '{hook}' (fwtest models {', '.join(HOOKS)})")
        prio = body.get("prio", 0)
        if isinstance(prio, str):
            if prio not in PRIORITY_NAMES:
                raise InputError(where, 0, f"unknown priority '{prio}'")
            prio = PRIORITY_NAMES[prio]
        if not isinstance(prio, int):
            raise InputError(where, 0, f"priority {prio!r} is not a number")
        policy = body.get("policy", "accept")
        if policy not in ("accept", "drop"):
            raise InputError(where, 0, f"policy '{policy}' is not accept or drop")
        line = self.chain_lines.get((table.family, table.name, body["name"]))
        where_written = Source(self.nft_path, line) if line and self.nft_path else Source(self.path, 0)
        return BaseChain(qualified, hook, prio, policy, TABLE_FAMILIES[table.family], where_written)

    # ---------------------------------------------------------------- rules
    def chain_rules(self, table: _Table, cname: str) -> Iterable[Rule]:
        bodies = table.rules.get(cname, [])
        lines = self.lines_for(table, cname, bodies)
        family_restriction = TABLE_FAMILIES[table.family]
        for index, body in enumerate(bodies):
            handle = body.get("handle")
            ident = (f"{table.family} {table.name}/{cname} handle {handle}" if handle is not None
                     else f"{table.family} {table.name}/{cname} rule {index + 1}")
            src_rule = lines[index] if lines else None
            source = Source(self.nft_path, src_rule.line) if src_rule else Source(self.path, 0)
            try:
                parser = _RuleParser(self, table, body, family_restriction)
                lowered = parser.lower()
                text = src_rule.text if src_rule else parser.render()
            except _Unsupported as e:
                if src_rule:
                    raise InputError(self.nft_path or self.path, src_rule.line, str(e)) from None
                where = f"{self.path}[{ident}]"
                raise InputError(where, 0, str(e)) from None
            comment = body.get("comment")
            for i, (match, action) in enumerate(lowered, 1):
                rule_id = ident if len(lowered) == 1 else f"{ident}#{i}"
                yield Rule(rule_id, source, match, action, comment if isinstance(comment, str) else None,
                           text)

    def lines_for(self, table: _Table, cname: str, bodies: list[dict]) -> list[_SourceRule] | None:
        if self.source_rules is None:
            return None
        written = self.source_rules.get((table.family, table.name, cname), [])
        by_handle = {r.handle: r for r in written if r.handle is not None}
        if bodies and all(b.get("handle") in by_handle for b in bodies):
            return [by_handle[b["handle"]] for b in bodies]
        if len(written) != len(bodies):
            raise InputError(self.nft_path or "", 0,
                             f"this nft text does not describe {self.path}: chain '{table.family} "
                             f"{table.name}/{cname}' has {len(bodies)} rules in the JSON and {len(written)} "
                             "here (give the 'nft -a list ruleset' output or the script that was loaded)")
        return written

    def set_elements(self, table: _Table, name: str) -> tuple[list, dict]:
        if name in table.sets:
            body = table.sets[name]
        elif name in table.maps:
            body = table.maps[name]
        else:
            raise _Unsupported(f"unknown set '@{name}'")
        flags = body.get("flags", [])
        if isinstance(flags, str):
            flags = [flags]
        if "dynamic" in flags or "timeout" in flags or body.get("timeout"):
            raise _Unsupported(f"unsupported: lookup in dynamic set '@{name}' (its elements change "
                               "as packets pass)")
        elem = body.get("elem", [])
        return (elem if isinstance(elem, list) else [elem]), body


# ===================================================================== one rule


def _value_of(element: Any) -> Any:
    """Unwrap {"elem": {"val": ...}} (elements with counters or comments)."""
    if isinstance(element, dict) and "elem" in element and isinstance(element["elem"], dict):
        return element["elem"].get("val")
    return element


class _RuleParser:
    def __init__(self, loader: _Loader, table: _Table, body: dict, family: int | None) -> None:
        self.loader = loader
        self.table = table
        self.body = body
        self.exprs = body.get("expr", [])
        self.conds = _Conds()
        if family is not None:
            self.conds.families = {family}
        # Disjunctions: each a list of alternative condition sets, multiplied out.
        # Disjunctions ("any of these flags"): each a list of (field, value) choices, one
        # IR rule per combination.
        self.alternatives: list[list[tuple[str, Any]]] = []
        self.statements: list[tuple[str, Any]] = []     # (kind, detail) of effects, in order
        self.verdict: Action | None = None
        self.vmap: list[tuple[list[tuple[str, Any]], Action]] | None = None
        self.rendered: list[str] = []

    def render(self) -> str:
        return " ".join(self.rendered)

    # ---------------------------------------------------------------- walk
    def lower(self) -> list[tuple[Match, Action]]:
        if not isinstance(self.exprs, list):
            raise _Unsupported("rule 'expr' is not a list")
        for expr in self.exprs:
            if not isinstance(expr, dict) or len(expr) != 1:
                raise _Unsupported(f"malformed expression {json.dumps(expr)[:60]}")
            if self.verdict is not None or self.vmap is not None:
                raise _Unsupported(f"statement after the verdict: {json.dumps(expr)[:60]}")
            ((kind, value),) = expr.items()
            self.expression(kind, value)
        return self.build()

    def expression(self, kind: str, value: Any) -> None:
        if kind == "match":
            self.match(value)
        elif kind in ("accept", "drop", "return", "continue"):
            self.verdict = Action(kind)
            self.rendered.append(kind)
        elif kind in ("jump", "goto"):
            self.verdict = Action(kind, self.chain_target(value))
            self.rendered.append(f"{kind} {value.get('target')}")
        elif kind == "reject":
            self.verdict = Action("reject", self.reject_type(value))
            self.rendered.append("reject" + (f" with {self.verdict.target}" if value else ""))
        elif kind == "counter":
            self.rendered.append("counter")
        elif kind == "log":
            prefix = value.get("prefix") if isinstance(value, dict) else None
            self.statements.append(("log", prefix))
            self.rendered.append("log" + (f' prefix "{prefix}"' if prefix else ""))
        elif kind == "limit":
            self.limit_statement(value)
        elif kind == "vmap":
            self.verdict_map(value)
        elif kind == "ct helper":
            self.ct_helper(value)
        elif kind == "ct timeout":
            self.ct_timeout(value)
        elif kind == "notrack":
            self.statements.append(("notrack", None))
            self.rendered.append("notrack")
        elif kind == "set":
            self.set_statement(value)
        elif kind == "xt":
            name = value.get("name") if isinstance(value, dict) else value
            raise _Unsupported(f"unsupported: iptables-nft compat expression 'xt {name}' (a rule "
                               "iptables-nft wrote with an xtables extension: read that table with "
                               "iptables-save instead)")
        else:
            raise _Unsupported(f"unsupported statement '{kind}'")

    def chain_target(self, value: Any) -> str:
        target = value.get("target") if isinstance(value, dict) else None
        if not isinstance(target, str) or target not in self.table.chains:
            raise _Unsupported(f"jump to unknown chain '{target}'")
        if "hook" in self.table.chains[target]:
            raise _Unsupported(f"cannot jump to base chain '{target}'")
        return f"{self.table.family} {self.table.name}/{target}"

    def reject_type(self, value: Any) -> str:
        if not value:
            return "port-unreachable"  # nft's plain 'reject' is icmpx port-unreachable
        rtype, code = value.get("type"), value.get("expr")
        if rtype == "tcp reset":
            protos = self.protocol_set()
            if protos != frozenset({TCP}):
                raise _Unsupported("'reject with tcp reset' needs the rule to match TCP only")
            return "tcp-reset"
        if rtype == "icmpx":
            if code not in ("port-unreachable", "admin-prohibited", "no-route", "host-unreachable"):
                raise _Unsupported(f"unknown icmpx reject code '{code}'")
            return code
        if rtype == "icmp":
            self.restrict_family(4, "reject with icmp")
            names = {"net-unreachable": "icmp-net-unreachable", "host-unreachable": "icmp-host-unreachable",
                     "prot-unreachable": "icmp-proto-unreachable", "port-unreachable": "icmp-port-unreachable",
                     "net-prohibited": "icmp-net-prohibited", "host-prohibited": "icmp-host-prohibited",
                     "admin-prohibited": "icmp-admin-prohibited"}
        elif rtype == "icmpv6":
            self.restrict_family(6, "reject with icmpv6")
            names = {"no-route": "icmp6-no-route", "admin-prohibited": "icmp6-adm-prohibited",
                     "addr-unreachable": "icmp6-addr-unreachable", "port-unreachable": "icmp6-port-unreachable",
                     "policy-fail": "icmp6-policy-fail", "reject-route": "icmp6-reject-route"}
        else:
            raise _Unsupported(f"unknown reject type '{rtype}'")
        if code is None:
            code = "port-unreachable"
        if code not in names:
            raise _Unsupported(f"unknown {rtype} reject code '{code}'")
        return names[code]

    def protocol_set(self) -> frozenset[int] | None:
        protos = combine_protocols(self.conds.protos)
        if protos is None or protos.negated:
            return None
        return protos.protocols

    def restrict_family(self, family: int, why: str) -> None:
        if family not in self.conds.families:
            raise _Unsupported(f"{why} is IPv{family}, but this rule only sees IPv{6 if family == 4 else 4}")
        self.conds.families = {family}

    # ---------------------------------------------------------------- matches
    def match(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise _Unsupported("malformed match")
        op, left, right = value.get("op", "=="), value.get("left"), value.get("right")
        # "in" is "any of these flag bits", "!" is "none of them" (nft's bitmask tests).
        if op not in ("==", "!=", "in", "!", "<", ">", "<=", ">="):
            raise _Unsupported(f"unsupported operator '{op}'")
        self.rendered.append(f"{render_expr(left)} {'' if op in ('==', 'in') else op + ' '}"
                             f"{render_expr(right)}")
        self.apply(self.conds, left, op, right)

    def apply(self, conds: _Conds, left: Any, op: str, right: Any) -> None:
        """Add the condition 'left op right' to conds (a disjunction to self.alternatives)."""
        negated = op == "!="
        if isinstance(left, dict) and "payload" in left:
            self.payload(conds, left["payload"], op, right, negated)
        elif isinstance(left, dict) and "meta" in left:
            self.meta(conds, left["meta"].get("key"), op, right, negated)
        elif isinstance(left, dict) and "ct" in left:
            self.ct(conds, left["ct"], op, right, negated)
        elif isinstance(left, dict) and "exthdr" in left:
            self.exthdr(conds, left["exthdr"], op, right)
        elif isinstance(left, dict) and "&" in left:
            self.bitwise(conds, left["&"], op, right)
        else:
            raise _Unsupported(f"unsupported match on {render_expr(left)}")

    def elements(self, right: Any) -> tuple[list, bool]:
        """(elements, is_set) of a right-hand side: literal, anonymous or named set."""
        if isinstance(right, str) and right.startswith("@"):
            elems, _ = self.loader.set_elements(self.table, right[1:])
            return [_value_of(e) for e in elems], True
        if isinstance(right, dict) and "set" in right:
            items = right["set"]
            return [_value_of(e) for e in (items if isinstance(items, list) else [items])], True
        return [right], False

    def payload(self, conds: _Conds, payload: dict, op: str, right: Any, negated: bool) -> None:
        proto, fieldname = payload.get("protocol"), payload.get("field")
        if proto is None:
            raise _Unsupported(f"unsupported raw payload match {json.dumps(payload)}")
        ordered = fieldname in ("sport", "dport") and op in ("<", ">", "<=", ">=")
        if op not in ("==", "!=") and not ordered and (proto, fieldname) != ("tcp", "flags"):
            raise _Unsupported(f"unsupported operator '{op}' on '{proto} {fieldname}'")
        if proto in ("ip", "ip6") and fieldname in ("saddr", "daddr"):
            family = 4 if proto == "ip" else 6
            self.family_of(conds, family, f"{proto} {fieldname}")
            ranges = self.address_ranges(right, family, op)
            text = render_expr(right)
            match = AddrMatch(ranges, negated, ("!" if negated else "") + text)
            (conds.src if fieldname == "saddr" else conds.dst).append(match)
            return
        if (proto, fieldname) in (("ip", "protocol"), ("ip6", "nexthdr")):
            family = 4 if proto == "ip" else 6
            self.family_of(conds, family, f"{proto} {fieldname}")
            numbers = self.protocols(right)
            if proto == "ip6":
                # The IPv6 header's own next-header field: a fragment has 44 there.
                if negated:
                    raise _Unsupported("unsupported: 'ip6 nexthdr !=' (use 'meta l4proto !=': fwtest "
                                       "models the transport protocol after extension headers)")
                conds.fragment.append(FragmentMatch("any", negated=True))
            conds.protos.append(ProtoMatch(numbers, negated, render_expr(right)))
            return
        if fieldname in ("sport", "dport") and proto in PORT_PAYLOADS:
            number = PORT_PAYLOADS[proto]
            if number is None:
                conds.th_ports = True
            else:
                conds.protos.append(ProtoMatch(frozenset({number}), False, proto))
            ranges = self.port_ranges(right, op)
            match = PortMatch(ranges, negated, ("!" if negated else "") + render_expr(right))
            (conds.sport if fieldname == "sport" else conds.dport).append(match)
            return
        if proto == "tcp" and fieldname == "flags":
            conds.protos.append(ProtoMatch(frozenset({TCP}), False, "tcp"))
            self.tcp_flags(conds, None, op, right)
            return
        if proto in ("icmp", "icmpv6") and fieldname in ("type", "code"):
            family = 4 if proto == "icmp" else 6
            self.family_of(conds, family, proto)
            conds.protos.append(ProtoMatch(frozenset({ICMP if family == 4 else ICMPV6}), False, proto))
            elems, _ = self.elements(right)
            if fieldname == "type":
                names = NFT_ICMP_TYPES if family == 4 else NFT_ICMPV6_TYPES
                types = frozenset(self.named_number(e, names, f"{proto} type") for e in elems)
                conds.icmp_types.append((family, types, negated))
            else:
                if len(elems) != 1:
                    raise _Unsupported(f"unsupported: '{proto} code' with a set")
                names = NFT_ICMP_CODES if family == 4 else NFT_ICMPV6_CODES
                (elem,) = elems
                if isinstance(elem, dict) and "range" in elem:
                    lo, hi = (self.named_number(v, names, f"{proto} code") for v in elem["range"])
                else:
                    lo = hi = self.named_number(elem, names, f"{proto} code")
                spans = complement_ranges([(lo, hi)], 255) if negated else ((lo, hi),)
                if len(spans) == 1:
                    conds.icmp_codes.append((family, spans[0]))
                else:
                    # "code != 3" is code 0-2 or code 4-255: disjoint alternatives.
                    self.alternatives.append([("icmp_codes", (family, span)) for span in spans])
            return
        raise _Unsupported(f"unsupported match on '{proto} {fieldname}'")

    def family_of(self, conds: _Conds, family: int, what: str) -> None:
        # In an inet table, 'ip saddr' brings its own 'meta nfproto ipv4' (nft adds it).
        if family not in conds.families:
            raise _Unsupported(f"'{what}' is IPv{family}, but this rule only sees IPv{6 if family == 4 else 4}")
        conds.families = {family}

    def named_number(self, value: Any, names: Mapping[str, int], what: str) -> int:
        if isinstance(value, int) and 0 <= value <= 255:
            return value
        if isinstance(value, str) and value in names:
            return names[value]
        raise _Unsupported(f"unknown {what} {value!r}")

    def address_ranges(self, right: Any, family: int, op: str) -> tuple[AddrRange, ...]:
        if op not in ("==", "!="):
            raise _Unsupported(f"unsupported operator '{op}' on an address")
        elems, _ = self.elements(right)
        out = []
        for elem in elems:
            lo, hi = self.address_span(elem, family)
            out.append(AddrRange(family, lo, hi))  # type: ignore[arg-type]
        return tuple(out)

    def address_span(self, elem: Any, family: int) -> tuple[int, int]:
        import ipaddress

        try:
            if isinstance(elem, str):
                addr = ipaddress.ip_address(elem)
                self.check_version(addr.version, family, elem)
                return int(addr), int(addr)
            if isinstance(elem, dict) and "prefix" in elem:
                prefix = elem["prefix"]
                net = ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False)
                self.check_version(net.version, family, str(net))
                return int(net.network_address), int(net.broadcast_address)
            if isinstance(elem, dict) and "range" in elem:
                first, last = (ipaddress.ip_address(v) for v in elem["range"])
                self.check_version(first.version, family, str(first))
                return int(first), int(last)
        except (ValueError, KeyError, TypeError):
            pass
        raise _Unsupported(f"unsupported address {json.dumps(elem)[:60]}")

    @staticmethod
    def check_version(version: int, family: int, text: str) -> None:
        if version != family:
            raise _Unsupported(f"'{text}' is not an IPv{family} address")

    def port_ranges(self, right: Any, op: str) -> tuple[tuple[int, int], ...]:
        if op in ("<", ">", "<=", ">="):
            port = self.port_number(right)
            lo, hi = {"<": (0, port - 1), "<=": (0, port), ">": (port + 1, 65535), ">=": (port, 65535)}[op]
            return ((lo, hi),) if lo <= hi else ()
        elems, _ = self.elements(right)
        out = []
        for elem in elems:
            if isinstance(elem, dict) and "range" in elem:
                lo, hi = (self.port_number(v) for v in elem["range"])
                out.append((lo, hi))
            else:
                p = self.port_number(elem)
                out.append((p, p))
        return tuple(out)

    def port_number(self, value: Any) -> int:
        if isinstance(value, int) and 0 <= value <= 65535:
            return value
        if isinstance(value, str):
            try:
                return socket.getservbyname(value)
            except OSError:
                pass
        raise _Unsupported(f"unsupported port {json.dumps(value)[:40]}")

    def protocols(self, right: Any) -> frozenset[int]:
        elems, _ = self.elements(right)
        out = set()
        for elem in elems:
            if isinstance(elem, int) and 0 <= elem <= 255:
                out.add(elem)
            elif isinstance(elem, str) and elem in PROTO_NUMBERS:
                out.add(PROTO_NUMBERS[elem])
            else:
                raise _Unsupported(f"unknown protocol {json.dumps(elem)}")
        return frozenset(out)

    def meta(self, conds: _Conds, key: Any, op: str, right: Any, negated: bool) -> None:
        if op not in ("==", "!="):
            raise _Unsupported(f"unsupported operator '{op}' on meta {key}")
        if key == "l4proto":
            conds.protos.append(ProtoMatch(self.protocols(right), negated, render_expr(right)))
            return
        if key == "nfproto":
            elems, _ = self.elements(right)
            fams = set()
            for elem in elems:
                if elem not in ("ipv4", "ipv6"):
                    raise _Unsupported(f"unsupported meta nfproto {elem!r}")
                fams.add(4 if elem == "ipv4" else 6)
            if negated:
                fams = {4, 6} - fams
            conds.families &= fams
            if not conds.families:
                raise _Unsupported("this rule can match neither IPv4 nor IPv6")
            return
        if key in ("iifname", "oifname", "iif", "oif"):
            elems, _ = self.elements(right)
            names = []
            for elem in elems:
                if not isinstance(elem, str):
                    raise _Unsupported(f"unsupported interface {json.dumps(elem)} (by index)")
                names.append(iface_name(elem))
            match = IfaceMatch(tuple(names), negated)
            (conds.iface_in if key in ("iifname", "iif") else conds.iface_out).append(match)
            return
        raise _Unsupported(f"unsupported match on 'meta {key}'")

    def ct(self, conds: _Conds, ct: dict, op: str, right: Any, negated: bool) -> None:
        key = ct.get("key")
        self.loader.uses_conntrack = True
        if ct.get("dir") is not None or ct.get("family") is not None:
            raise _Unsupported(f"unsupported match on 'ct {ct.get('dir', '')} {key}'")
        if key == "state":
            elems, _ = self.elements(right)
            if op in ("in", "!") and not isinstance(right, dict):
                elems = right if isinstance(right, list) else [right]
                negated = op == "!"
            states = set()
            for elem in elems:
                if elem not in CT_STATES:
                    raise _Unsupported(f"unknown ct state {elem!r}")
                states.add(elem)
            # A connection is in exactly one state: "in" (any of the bits) and "==" with a
            # set (one of the values) say the same.
            conds.state.append(StateMatch(frozenset(states), negated))
            return
        if key == "helper":
            if negated or op not in ("==",):
                raise _Unsupported("unsupported: 'ct helper !=' (fwtest matches a helper, not its absence)")
            elems, is_set = self.elements(right)
            if is_set or len(elems) != 1 or not isinstance(elems[0], str):
                raise _Unsupported("unsupported: 'ct helper' with a set")
            conds.helper = elems[0]
            return
        raise _Unsupported(f"unsupported match on 'ct {key}'")

    def exthdr(self, conds: _Conds, exthdr: dict, op: str, right: Any) -> None:
        name, fieldname = exthdr.get("name"), exthdr.get("field")
        if name != "frag":
            raise _Unsupported(f"unsupported match on 'exthdr {name}'")
        self.family_of(conds, 6, "exthdr frag")
        if fieldname is None:
            if op not in ("==", "!=") or not isinstance(right, bool):
                raise _Unsupported("unsupported 'exthdr frag' test")
            present = right != (op == "!=")
            conds.fragment.append(FragmentMatch("any", negated=not present))
            return
        if fieldname == "frag-off" and right == 0 and op in ("==", "!="):
            # Reading a field of a header the packet lacks fails the rule: "frag-off != 0"
            # is a later fragment, "frag-off 0" the first fragment (or an atomic fragment,
            # RFC 6946, which fwtest counts as no fragment: a known gap).
            conds.fragment.append(FragmentMatch("later") if op == "!=" else FragmentMatch("first"))
            return
        # "frag more-fragments 1" after "frag frag-off 0": the first fragment, already said.
        if (fieldname == "more-fragments" and op == "==" and right == 1
                and conds.fragment and conds.fragment[-1] == FragmentMatch("first")):
            return
        raise _Unsupported(f"unsupported match on 'frag {fieldname}'")

    def bitwise(self, conds: _Conds, operands: Any, op: str, right: Any) -> None:
        if not isinstance(operands, list) or len(operands) != 2:
            raise _Unsupported("unsupported bitwise expression")
        inner, mask = operands
        payload = inner.get("payload") if isinstance(inner, dict) else None
        if payload == {"protocol": "ip", "field": "frag-off"}:
            self.family_of(conds, 4, "ip frag-off")
            conds.fragment.append(ip_frag_match(mask, op, right))
            return
        if payload == {"protocol": "tcp", "field": "flags"}:
            conds.protos.append(ProtoMatch(frozenset({TCP}), False, "tcp"))
            self.tcp_flags(conds, mask, op, right)
            return
        raise _Unsupported(f"unsupported bitwise match {render_expr(inner)} & {render_expr(mask)}")

    def tcp_flags(self, conds: _Conds, mask: Any, op: str, right: Any) -> None:
        mask_bits = 0xFF if mask is None else flag_bits(mask)
        if isinstance(right, dict) and "set" in right:
            if mask is not None or op != "==":
                raise _Unsupported("unsupported TCP flags match with a set")
            values = [flag_bits(v) for v in right["set"]]
            # Exactly one of these values: disjoint alternatives.
            self.alternatives.append([("tcp_flags", TcpFlagsMatch(0xFF, v)) for v in values])
            return
        value = flag_bits(right)
        if op == "!" and mask is None:
            conds.tcp_flags.append(TcpFlagsMatch(value, 0))
            return
        if op == "in":
            # Any of the bits: split into "bit i set and the bits before it clear".
            bits = [b for b in TCP_FLAGS_NFT.values() if value & b]
            alts, before = [], 0
            for b in bits:
                alts.append(("tcp_flags", TcpFlagsMatch(before | b, b)))
                before |= b
            if len(alts) == 1:
                conds.tcp_flags.append(alts[0][1])
            else:
                self.alternatives.append(alts)
            return
        if op not in ("==", "!="):
            raise _Unsupported(f"unsupported operator '{op}' on tcp flags")
        conds.tcp_flags.append(TcpFlagsMatch(mask_bits, value & mask_bits, op == "!="))

    # ---------------------------------------------------------------- statements
    def limit_statement(self, value: Any) -> None:
        if self.conds.limit is not None:
            raise _Unsupported("unsupported: two limits in one rule")
        if isinstance(value, str):
            obj = self.table.limits.get(value)
            if obj is None:
                raise _Unsupported(f"unknown limit object '{value}'")
            limit = limit_of(obj, f"nft:{self.table.family} {self.table.name}/{value}")
            self.rendered.append(f'limit name "{value}"')
        else:
            limit = limit_of(value, "")
            self.rendered.append(limit.text)
        self.conds.limit = limit

    def set_statement(self, value: dict) -> None:
        """``update @s { KEY limit rate ... }``: a limit per key value."""
        stmts = value.get("stmt") or []
        name = str(value.get("set", "")).lstrip("@")
        if value.get("op") not in ("add", "update") or len(stmts) != 1 or "limit" not in stmts[0]:
            raise _Unsupported(f"unsupported: '{value.get('op')} @{name}' (fwtest models dynamic sets "
                               "only as per-key rate limits)")
        if self.conds.limit is not None:
            raise _Unsupported("unsupported: two limits in one rule")
        keys = value.get("elem")
        parts = keys["concat"] if isinstance(keys, dict) and "concat" in keys else [keys]
        per, prefixes = [], {}
        for part in parts:
            mask = None
            if isinstance(part, dict) and "&" in part:
                part, mask = part["&"]
            payload = part.get("payload") if isinstance(part, dict) else None
            if not payload:
                raise _Unsupported(f"unsupported limit key {render_expr(part)}")
            proto, fieldname = payload.get("protocol"), payload.get("field")
            if proto in ("ip", "ip6") and fieldname in ("saddr", "daddr"):
                family = 4 if proto == "ip" else 6
                self.family_of(self.conds, family, f"{proto} {fieldname}")
                side = "src" if fieldname == "saddr" else "dst"
                per.append(side)
                if mask is not None:
                    prefixes[side] = mask_prefix(mask, family)
            elif fieldname in ("sport", "dport") and proto in PORT_PAYLOADS and mask is None:
                number = PORT_PAYLOADS[proto]
                if number is not None:
                    self.conds.protos.append(ProtoMatch(frozenset({number}), False, proto))
                else:
                    self.conds.th_ports = True
                per.append(fieldname)
            else:
                raise _Unsupported(f"unsupported limit key {render_expr(part)}")
        base = limit_of(stmts[0]["limit"], f"nft:{self.table.family} {self.table.name}/@{name}")
        self.conds.limit = LimitMatch(base.rate, base.burst, base.above, tuple(per), prefixes.get("src"),
                                      prefixes.get("dst"), base.name,
                                      f"{base.text} per {','.join(per)}")
        self.rendered.append(f"{value.get('op')} @{name} {{ {' . '.join(render_expr(p) for p in parts)} "
                             f"{base.text} }}")

    def ct_helper(self, value: Any) -> None:
        obj = self.table.helpers.get(value) if isinstance(value, str) else None
        if obj is None:
            raise _Unsupported(f"'ct helper set' names unknown ct helper object {value!r}")
        helper = obj.get("type")
        if helper != "sip":
            raise _Unsupported(f"unsupported conntrack helper '{helper}' (fwtest models the SIP helper "
                               "only; another helper would change which packets are RELATED)")
        proto = obj.get("protocol")
        if proto not in ("udp", "tcp"):
            raise _Unsupported(f"ct helper object '{value}' has protocol {proto!r}")
        l3 = obj.get("l3proto", self.table.family)
        self.loader.uses_conntrack = True
        self.statements.append(("ct_helper", (helper, PROTO_NUMBERS[proto],
                                              {"ip": 4, "ip6": 6}.get(l3))))
        self.rendered.append(f'ct helper set "{value}"')

    def ct_timeout(self, value: Any) -> None:
        obj = self.table.timeouts.get(value) if isinstance(value, str) else None
        if obj is None:
            raise _Unsupported(f"'ct timeout set' names unknown ct timeout object {value!r}")
        self.statements.append(("ct_timeout", obj))
        self.rendered.append(f'ct timeout set "{value}"')

    def verdict_map(self, value: dict) -> None:
        key, data = value.get("key"), value.get("data")
        if isinstance(data, str) and data.startswith("@"):
            elems, body = self.loader.set_elements(self.table, data[1:])
            if body.get("map") != "verdict":
                raise _Unsupported(f"'@{data[1:]}' is not a verdict map")
        elif isinstance(data, dict) and "set" in data:
            elems = data["set"]
        else:
            raise _Unsupported("unsupported verdict map")
        lowered = []
        for elem in elems:
            if not isinstance(elem, list) or len(elem) != 2:
                raise _Unsupported(f"unsupported verdict map element {json.dumps(elem)[:60]}")
            k, verdict = _value_of(elem[0]), elem[1]
            if not isinstance(verdict, dict) or len(verdict) != 1:
                raise _Unsupported(f"unsupported verdict {json.dumps(verdict)[:60]}")
            ((vkind, vvalue),) = verdict.items()
            if vkind in ("accept", "drop", "return", "continue"):
                action = Action(vkind)
            elif vkind in ("jump", "goto"):
                action = Action(vkind, self.chain_target(vvalue))
            else:
                raise _Unsupported(f"unsupported verdict '{vkind}' in a verdict map")
            lowered.append((k, action))
        self.vmap = [([("==", key, k)], action) for k, action in lowered]
        self.rendered.append(f"{render_expr(key)} vmap {render_expr(data)}")

    # ---------------------------------------------------------------- result
    def build(self) -> list[tuple[Match, Action]]:
        effects: list[tuple[Action, dict]] = []
        for kind, detail in self.statements:
            if kind == "log":
                effects.append((Action("log", detail), {}))
            elif kind == "notrack":
                effects.append((Action("notrack"), {}))
            elif kind == "ct_helper":
                helper, proto, l3 = detail
                effects.append((Action("ct_helper", helper), {"proto": proto, "family": l3}))
            elif kind == "ct_timeout":
                self.global_timeouts(detail)
        if self.verdict is not None:
            # The log of a rule that also decides changes nothing fwtest judges.
            effects = [e for e in effects if e[0].kind != "log"]
            effects.append((self.verdict, {}))
        elif not effects and self.vmap is None:
            if any(kind == "ct_timeout" for kind, _ in self.statements):
                return []
            effects.append((Action("continue"), {}))
        if self.conds.limit is not None and len(effects) + (len(self.vmap) if self.vmap else 0) > 1:
            raise _Unsupported("unsupported: a rate-limited rule with several effects (each would need "
                               "the same bucket)")
        out: list[tuple[Match, Action]] = []
        variants = self.variants()
        for extra_proto, action in ((e[1], e[0]) for e in effects):
            for conds in variants:
                c = conds.copy()
                if extra_proto.get("proto") is not None:
                    c.protos.append(ProtoMatch(frozenset({extra_proto["proto"]}), False,
                                               PROTO_NAMES[extra_proto["proto"]]))
                if extra_proto.get("family") is not None:
                    c.families &= {extra_proto["family"]}
                match = self.to_match(c)
                if match is not None:
                    out.append((match, action))
        if self.vmap is not None:
            for tests, action in self.vmap:
                for conds in variants:
                    c = conds.copy()
                    pending = len(self.alternatives)
                    for op, key, k in tests:
                        self.apply(c, key, op, k)
                    if len(self.alternatives) != pending:
                        raise _Unsupported("unsupported verdict map key: an element stands for several "
                                           "values of it")
                    match = self.to_match(c)
                    if match is not None:
                        out.append((match, action))
        return out

    def variants(self) -> list[_Conds]:
        if not self.alternatives:
            return [self.conds]
        out = []
        for combo in itertools.product(*self.alternatives):
            c = self.conds.copy()
            for name, value in combo:
                getattr(c, name).append(value)
            out.append(c)
        return out

    def global_timeouts(self, obj: dict) -> None:
        other = [e for e in self.exprs if "match" in e]
        for e in other:
            m = e["match"]
            left = m.get("left", {})
            if left == {"ct": {"key": "state"}} and m.get("right") == "new":
                continue
            if left == {"meta": {"key": "l4proto"}} and m.get("right") == obj.get("protocol"):
                continue
            raise _Unsupported("unsupported: 'ct timeout set' for some connections only (fwtest models "
                               "one set of conntrack timeouts per ruleset)")
        if obj.get("l3proto", "inet") != "inet" and self.table.family != "inet":
            raise _Unsupported("unsupported: conntrack timeouts for one address family only")
        protocol = obj.get("protocol")
        keys = TIMEOUT_KEYS.get(protocol)
        if keys is None:
            raise _Unsupported(f"unsupported: ct timeout for protocol {protocol!r} (fwtest reads udp and tcp)")
        policy = obj.get("policy") or {}
        for key, seconds in policy.items():
            if key not in keys:
                raise _Unsupported(f"unsupported ct timeout state '{key}' for {protocol}")
            self.loader.timeouts[keys[key]] = int(seconds)
        self.loader.uses_conntrack = True

    def to_match(self, c: _Conds) -> Match | None:
        """The IR match of one alternative, or None when it can never match."""
        families = c.families
        family = next(iter(families)) if len(families) == 1 else None
        proto = combine_protocols(c.protos)
        if proto is not None and not proto.negated and not proto.protocols:
            return None
        if c.th_ports and (proto is None or proto.negated or not proto.protocols <= PORT_PROTOCOLS):
            raise _Unsupported("'th sport/dport' needs 'meta l4proto' with tcp, udp, sctp or udplite "
                               "in the same rule (without it nft reads those bytes of any protocol)")
        if len(c.iface_in) > 1 or len(c.iface_out) > 1:
            raise _Unsupported("unsupported: two interface matches on the same side in one rule")
        fragment = None
        if c.fragment:
            if len(set(c.fragment)) > 1:
                raise _Unsupported("unsupported: several different fragment matches in one rule")
            fragment = c.fragment[0]
        icmp = None
        if c.icmp_types or c.icmp_codes:
            fam = (c.icmp_types or c.icmp_codes)[0][0]
            if len(c.icmp_types) > 1 or len(c.icmp_codes) > 1:
                raise _Unsupported("unsupported: several ICMP type or code matches in one rule")
            types, neg = (c.icmp_types[0][1], c.icmp_types[0][2]) if c.icmp_types else (frozenset(), False)
            codes = c.icmp_codes[0][1] if c.icmp_codes else (0, 255)
            if neg and c.icmp_codes:
                raise _Unsupported("unsupported: a negated ICMP type together with an ICMP code")
            icmp = IcmpMatch(fam, types, codes, neg)  # type: ignore[arg-type]
        try:
            return Match(
                family=family,  # type: ignore[arg-type]
                proto=proto,
                src=combine_addresses(c.src, family),
                dst=combine_addresses(c.dst, family),
                sport=combine_ports(c.sport), dport=combine_ports(c.dport),
                iface_in=c.iface_in[0] if c.iface_in else None,
                iface_out=c.iface_out[0] if c.iface_out else None,
                state=combine_states(c.state), fragment=fragment,
                tcp_flags=combine_tcp_flags(c.tcp_flags), helper=c.helper,
                limit=c.limit, icmp=icmp,
            )
        except Exception as e:  # the shared combiners raise their own message type
            if type(e).__name__ == "_RuleError":
                raise _Unsupported(str(e)) from None
            raise


def combine_protocols(matches: Sequence[ProtoMatch]) -> ProtoMatch | None:
    if not matches:
        return None
    if len(matches) == 1:
        return matches[0]
    allowed = set(range(256))
    for m in matches:
        allowed &= (set(range(256)) - m.protocols) if m.negated else set(m.protocols)
    # The first written match names the rule's protocol in reports.
    positive = [m for m in matches if not m.negated]
    text = positive[0].text if positive else " & ".join(m.text for m in matches)
    return ProtoMatch(frozenset(allowed), False, text)


def iface_name(text: str) -> str:
    """nft's ``"eth*"`` wildcard is iptables' ``eth+``; ``"eth\\*"`` is a literal star."""
    if text.endswith("\\*"):
        return text[:-2] + "*"
    if text.endswith("*"):
        return text[:-1] + "+"
    return text


def flag_bits(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        bits = 0
        for name in value:
            if name not in TCP_FLAGS_NFT:
                raise _Unsupported(f"unknown TCP flag {name!r}")
            bits |= TCP_FLAGS_NFT[name]
        return bits
    raise _Unsupported(f"unsupported TCP flags value {json.dumps(value)[:40]}")


def ip_frag_match(mask: Any, op: str, right: Any) -> FragmentMatch:
    """``ip frag-off & MASK OP VALUE`` as nft writes iptables' -f and its relatives."""
    if op not in ("==", "!="):
        raise _Unsupported(f"unsupported operator '{op}' on ip frag-off")
    offset, more = 0x1FFF, 0x2000
    if mask == offset and right == 0:
        return FragmentMatch("later", negated=(op == "=="))
    if mask == offset | more and right == 0:
        return FragmentMatch("any", negated=(op == "=="))
    if mask == offset | more and right == more:
        return FragmentMatch("first", negated=(op == "!="))
    raise _Unsupported(f"unsupported match 'ip frag-off & {mask} {op} {right}'")


def mask_prefix(mask: Any, family: int) -> int:
    import ipaddress

    try:
        value = int(ipaddress.ip_address(mask))
    except ValueError:
        raise _Unsupported(f"unsupported mask {mask!r}") from None
    bits = FAMILY_BITS[family]
    prefix = bin(value).count("1")
    if value != ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1):
        raise _Unsupported(f"mask {mask} is not a prefix")
    return prefix


def limit_of(value: dict, name: str) -> LimitMatch:
    if not isinstance(value, dict):
        raise _Unsupported("malformed limit")
    unit = value.get("rate_unit", "packets")
    if unit != "packets":
        raise _Unsupported(f"unsupported: byte rate limit ({unit})")
    rate, per = value.get("rate"), value.get("per", "second")
    if not isinstance(rate, int) or rate <= 0 or per not in RATE_UNITS:
        raise _Unsupported(f"unsupported limit rate {rate!r}/{per!r}")
    burst = value.get("burst", 5)
    if not isinstance(burst, int) or burst < 0:
        raise _Unsupported(f"unsupported limit burst {burst!r}")
    # The kernel takes burst 0 as its default of 5 packets (NFT_LIMIT_PKT_BURST_DEFAULT).
    burst = burst or 5
    above = bool(value.get("inv", False))
    text = f"limit rate {'over ' if above else ''}{rate}/{per} burst {burst} packets"
    return LimitMatch(rate / RATE_UNITS[per], burst, above, name=name, text=text)


# ===================================================================== rendering


def render_expr(expr: Any) -> str:
    """A short nft-like spelling of a JSON expression, for Rule.text and messages."""
    if isinstance(expr, bool):
        return "exists" if expr else "missing"
    if isinstance(expr, (int, float)):
        return str(expr)
    if isinstance(expr, str):
        return expr
    if isinstance(expr, list):
        return ",".join(render_expr(e) for e in expr)
    if isinstance(expr, dict):
        if "payload" in expr:
            p = expr["payload"]
            return f"{p.get('protocol', p.get('base'))} {p.get('field', p.get('offset'))}"
        if "meta" in expr:
            return f"meta {expr['meta'].get('key')}"
        if "ct" in expr:
            return f"ct {expr['ct'].get('key')}"
        if "exthdr" in expr:
            e = expr["exthdr"]
            return f"exthdr {e.get('name')}" + (f" {e['field']}" if e.get("field") else "")
        if "set" in expr:
            items = expr["set"] if isinstance(expr["set"], list) else [expr["set"]]
            return "{ " + ", ".join(render_expr(_value_of(e)) if not isinstance(e, list)
                                    else f"{render_expr(e[0])} : {render_expr(e[1])}" for e in items) + " }"
        if "prefix" in expr:
            return f"{expr['prefix'].get('addr')}/{expr['prefix'].get('len')}"
        if "range" in expr:
            lo, hi = expr["range"]
            return f"{render_expr(lo)}-{render_expr(hi)}"
        if "&" in expr:
            a, b = expr["&"]
            return f"{render_expr(a)} & {render_expr(b)}"
        if "concat" in expr:
            return " . ".join(render_expr(e) for e in expr["concat"])
        if len(expr) == 1:
            ((k, v),) = expr.items()
            if v is None:
                return k
            if isinstance(v, dict) and "target" in v:
                return f"{k} {v['target']}"
            return f"{k} {render_expr(v)}"
    return json.dumps(expr)
