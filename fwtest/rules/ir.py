"""The ruleset IR: one set of frozen dataclasses that every loader produces.

Every loader (native YAML, iptables-save, nft JSON) builds these, and every
consumer (replay engine, BDD header space, kernel export, fuzzer) reads only
these. Matches are kept in the normalised form both the concrete engine and
the symbolic compiler want: addresses as integer ranges per family, ports as
inclusive ranges, protocols as numbers. Each match also keeps the text it was
written as, so reports can quote the rule the way the user wrote it.

Semantics are netfilter's: a rule matches when every match it has matches
(a rule with no match matches everything); chains are walked first match
wins; ``log`` and ``continue`` do not end the walk; ``return`` at the end of
a base chain applies the chain's policy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Family = Literal[4, 6]

PROTO_NUMBERS: Mapping[str, int] = MappingProxyType(
    {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
     "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "udplite": 136}
)
PROTO_NAMES: Mapping[int, str] = MappingProxyType(
    {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah",
     58: "icmpv6", 132: "sctp", 136: "udplite"}
)
TCP, UDP = 6, 17
# Protocols whose header starts with 16-bit source and destination ports.
PORT_PROTOCOLS = frozenset({6, 17, 132, 136})

CT_STATES = frozenset({"new", "established", "related", "invalid", "untracked"})
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")

# Kernel defaults (net.netfilter.nf_conntrack_*_timeout, Linux 6.x), seconds.
DEFAULT_TIMEOUTS: Mapping[str, int] = MappingProxyType({
    "udp": 30, "udp_stream": 120, "icmp": 30, "generic": 600,
    "tcp_syn_sent": 120, "tcp_syn_recv": 60, "tcp_established": 432000,
    "tcp_fin_wait": 120, "tcp_close_wait": 60, "tcp_last_ack": 30,
    "tcp_time_wait": 120, "tcp_close": 10, "tcp_unacknowledged": 300,
    "frag": 30,  # net.ipv4.ipfrag_time / net.netfilter.nf_conntrack_frag6_timeout
})


@dataclass(frozen=True)
class Source:
    """Where a rule, chain or policy was written: file and 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


# --------------------------------------------------------------------- matches

@dataclass(frozen=True)
class AddrRange:
    family: Family
    first: int  # inclusive, address as integer
    last: int   # inclusive

    @classmethod
    def from_network(cls, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> AddrRange:
        return cls(net.version, int(net.network_address), int(net.broadcast_address))

    def contains(self, family: int, addr: int) -> bool:
        return family == self.family and self.first <= addr <= self.last


@dataclass(frozen=True)
class AddrMatch:
    """``src``/``dst``: the packet's address lies in any range (or in none if negated).

    An address match only ever matches packets of the families it names: a
    rule ``src: 198.51.100.0/24`` does not match IPv6 packets, as in nftables
    (``ip saddr``) and as iptables/ip6tables do by living in separate tables.
    A negated match ``!198.51.100.0/24`` matches IPv4 packets outside the
    range; it still does not match IPv6 packets.
    """

    ranges: tuple[AddrRange, ...]
    negated: bool = False
    text: str = ""

    @property
    def families(self) -> frozenset[int]:
        return frozenset(r.family for r in self.ranges)

    def matches(self, family: int, addr: int) -> bool:
        if family not in self.families:
            return False
        inside = any(r.first <= addr <= r.last for r in self.ranges if r.family == family)
        return inside != self.negated


@dataclass(frozen=True)
class PortMatch:
    """``sport``/``dport``: inclusive ranges. Never matches a packet without ports
    (other protocols, non-first fragments), negated or not, as in netfilter."""

    ranges: tuple[tuple[int, int], ...]
    negated: bool = False
    text: str = ""

    def matches(self, port: int) -> bool:
        inside = any(lo <= port <= hi for lo, hi in self.ranges)
        return inside != self.negated


@dataclass(frozen=True)
class ProtoMatch:
    protocols: frozenset[int]
    negated: bool = False
    text: str = ""

    def matches(self, proto: int) -> bool:
        return (proto in self.protocols) != self.negated


@dataclass(frozen=True)
class IfaceMatch:
    """``in``/``out``: interface names; a trailing ``+`` is a prefix wildcard (iptables)."""

    names: tuple[str, ...]
    negated: bool = False

    def matches(self, name: str | None) -> bool:
        hit = name is not None and any(
            name.startswith(n[:-1]) if n.endswith("+") else name == n for n in self.names
        )
        return hit != self.negated


@dataclass(frozen=True)
class StateMatch:
    """Conntrack state class as seen by the filter (``-m conntrack --ctstate``)."""

    states: frozenset[str]
    negated: bool = False

    def matches(self, state: str) -> bool:
        return (state in self.states) != self.negated


@dataclass(frozen=True)
class FragmentMatch:
    """``kind``: ``later`` = a non-first fragment (iptables ``-f``), ``first`` = the
    first fragment of a fragmented datagram, ``any`` = any fragment."""

    kind: Literal["later", "first", "any"]
    negated: bool = False


TCP_FLAG_BITS: Mapping[str, int] = MappingProxyType({"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08,
                                                     "ACK": 0x10, "URG": 0x20, "ECE": 0x40, "CWR": 0x80})
# ALL is iptables' six classic flags (libxt_tcp), in every format: ECE and CWR
# are named on their own, so an ECN-capable SYN (SYN|ECE|CWR) still matches "ALL SYN".
ALL_TCP_FLAGS = 0x3F
SYN_MASK = 0x01 | 0x02 | 0x04 | 0x10          # --syn / syn: true: FIN,SYN,RST,ACK SYN


@dataclass(frozen=True)
class TcpFlagsMatch:
    """``--tcp-flags MASK COMP``: (flags & mask) == comp. ``--syn`` is mask SYN|RST|ACK|FIN, comp SYN."""

    mask: int
    comp: int
    negated: bool = False

    def matches(self, flags: int) -> bool:
        return ((flags & self.mask) == self.comp) != self.negated


@dataclass(frozen=True)
class SipMatch:
    """Regexes (Python ``re`` syntax, searched) on a SIP message carried in the packet.

    A packet that carries no parsable SIP message never matches.
    ``headers`` maps a header name (case-insensitive, compact forms
    allowed) to a regex searched in each of its values.
    """

    method: str | None = None
    uri: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    status: str | None = None  # regex on the status code of a response


@dataclass(frozen=True)
class StringMatch:
    """``-m string``: a byte pattern anywhere in the packet from ``offset_from``
    to ``offset_to`` (offsets from the start of the IP header, as the kernel)."""

    pattern: bytes
    algo: Literal["bm", "kmp"] = "bm"
    offset_from: int = 0
    offset_to: int = 65535
    icase: bool = False
    negated: bool = False


@dataclass(frozen=True)
class LimitMatch:
    """Token bucket (``-m limit`` / ``-m hashlimit`` / nft ``limit``).

    ``rate`` is packets per second, ``burst`` the bucket depth. With
    ``above=False`` the match is true while the rate is not exceeded
    (``--limit``, ``--hashlimit-upto``, nft ``limit rate``); with
    ``above=True`` it is true once it is (``--hashlimit-above``, nft
    ``limit rate over``). ``per`` names the hashlimit key fields
    (``src``, ``dst``, ``sport``, ``dport``); empty means one global bucket.
    """

    rate: float
    burst: int
    above: bool = False
    per: tuple[str, ...] = ()
    src_prefix: int | None = None  # hashlimit --hashlimit-srcmask
    dst_prefix: int | None = None
    name: str = ""
    text: str = ""


@dataclass(frozen=True)
class IcmpMatch:
    """ICMP / ICMPv6 type and code (iptables ``--icmp-type 3/4``, ip6tables
    ``--icmpv6-type``, nft ``icmp type``/``icmp code``).

    True when the packet is ICMP of ``family`` (protocol 1 for IPv4, 58 for
    IPv6), carries its ICMP header (not a later fragment), its type is in
    ``types`` (empty: any type) and its code lies in ``codes`` (inclusive);
    ``negated`` inverts that for ICMP packets of the family only: like ports,
    an ICMP match never matches a packet that has no ICMP header to test.
    """

    family: Family
    types: frozenset[int] = frozenset()
    codes: tuple[int, int] = (0, 255)
    negated: bool = False
    text: str = ""

    def matches(self, family: int, proto: int, icmp_type: int, icmp_code: int) -> bool:
        if family != self.family or proto != (1 if family == 4 else 58):
            return False
        inside = ((not self.types or icmp_type in self.types)
                  and self.codes[0] <= icmp_code <= self.codes[1])
        return inside != self.negated


@dataclass(frozen=True)
class Match:
    """All the conditions of one rule (each ``None`` when absent)."""

    family: Family | None = None     # rule only applies to this family (ip6tables file, nft ip/ip6 table)
    proto: ProtoMatch | None = None
    src: AddrMatch | None = None
    dst: AddrMatch | None = None
    sport: PortMatch | None = None
    dport: PortMatch | None = None
    iface_in: IfaceMatch | None = None
    iface_out: IfaceMatch | None = None
    state: StateMatch | None = None
    fragment: FragmentMatch | None = None
    tcp_flags: TcpFlagsMatch | None = None
    helper: str | None = None        # ct helper "sip": the connection has this helper
    sip: SipMatch | None = None
    string: tuple[StringMatch, ...] = ()
    limit: LimitMatch | None = None
    icmp: IcmpMatch | None = None    # ICMP type/code (iptables/nft imports)

    def is_empty(self) -> bool:
        return self == Match()


# --------------------------------------------------------------------- actions

ActionKind = Literal[
    "accept", "drop", "reject", "log", "continue", "return", "jump", "goto",
    "notrack", "ct_helper",
]
TERMINAL = frozenset({"accept", "drop", "reject"})


@dataclass(frozen=True)
class Action:
    """What a matching rule does.

    ``log`` and ``continue`` (an nft rule with only ``counter``) fall through
    to the next rule. ``jump``/``goto`` name the target chain in ``target``;
    ``reject`` may carry the reject type in ``target``; ``ct_helper`` assigns
    the helper named in ``target`` (raw table ``-j CT --helper``, nft
    ``ct helper set``); ``notrack`` exempts the packet from conntrack.
    """

    kind: ActionKind
    target: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind


# ----------------------------------------------------------------- structure

@dataclass(frozen=True)
class Rule:
    id: str                  # unique in the ruleset; findings name it
    source: Source
    match: Match
    action: Action
    comment: str | None = None
    text: str = ""           # the rule as written (one line), for reports

    def __str__(self) -> str:
        return f"{self.id} ({self.source})"


@dataclass(frozen=True)
class Chain:
    name: str                # unique in the ruleset (loaders qualify: "ip4/FORWARD", "inet filter/input")
    rules: tuple[Rule, ...]
    source: Source


@dataclass(frozen=True)
class BaseChain:
    """A chain attached to a netfilter hook.

    ``hook=None`` means "the filtering hook the profile names" (native YAML
    rulesets are written for whichever position the profile's ``firewall``
    gives them). Several base chains on one hook run in ``priority`` order
    (lower first); a drop in any of them ends the packet. ``family=None``
    sees both IPv4 and IPv6 (native YAML, nft ``inet``).
    """

    chain: str
    hook: str | None
    priority: int
    policy: Literal["accept", "drop"]
    family: Family | None
    source: Source           # where the policy is written


@dataclass(frozen=True)
class Conntrack:
    """Connection tracking as configured for the firewall.

    ``enabled=False`` is a stateless filter: fragments reach the rules
    unassembled and every packet's state is ``untracked``. ``helpers`` are
    helpers attached to every matching connection (native ``helpers: [sip]``
    means the SIP helper on the profile's SIP ports over UDP and TCP);
    explicit per-rule assignment is an ``Action('ct_helper')``.
    """

    enabled: bool = False
    helpers: frozenset[str] = frozenset()
    timeouts: Mapping[str, int] = field(default_factory=lambda: DEFAULT_TIMEOUTS)
    source: Source | None = None

    def timeout(self, name: str) -> int:
        return self.timeouts.get(name, DEFAULT_TIMEOUTS[name])


@dataclass(frozen=True)
class Ruleset:
    name: str
    files: tuple[str, ...]
    format: str                        # "yaml", "iptables", "nft" (or "+"-joined when merged)
    chains: Mapping[str, Chain]        # by name; read-only
    bases: tuple[BaseChain, ...]
    conntrack: Conntrack = Conntrack()

    def __post_init__(self) -> None:
        if not isinstance(self.chains, MappingProxyType):
            object.__setattr__(self, "chains", MappingProxyType(dict(self.chains)))

    def base_chains(self, hook: str, family: int, native_hook: str = "forward") -> list[BaseChain]:
        """Base chains a packet of ``family`` crosses at ``hook``, in run order.

        Native chains (``hook=None``) sit on ``native_hook``, the filtering
        hook the profile's ``firewall`` names, and on no other hook.
        """
        found = [b for b in self.bases
                 if (b.hook == hook or (b.hook is None and hook == native_hook))
                 and b.family in (None, family)]
        return sorted(found, key=lambda b: b.priority)

    def rules(self) -> Iterator[Rule]:
        for chain in self.chains.values():
            yield from chain.rules

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules():
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


def addr_match(text: str | list[str], *, negated: bool = False) -> AddrMatch:
    """Build an ``AddrMatch`` from CIDR text (helper for code and tests; loaders
    do their own parsing to report errors at the right line)."""
    items = [text] if isinstance(text, str) else list(text)
    nets = [ipaddress.ip_network(t, strict=False) for t in items]
    return AddrMatch(tuple(AddrRange.from_network(n) for n in nets), negated, ", ".join(items))
