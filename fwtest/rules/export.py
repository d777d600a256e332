"""Export any ruleset as a script the kernel loads: iptables-restore or ``nft -f``.

    to_iptables(ruleset, *, native_hook="forward", sip_ports=(5060,))  -> {4: text, 6: text}
    to_nft(ruleset, *, native_hook="forward", sip_ports=(5060,))       -> nft -f script
    timeout_sysctls(conntrack)                                         -> {sysctl: seconds}

The scripts say what the IR says, packet for packet; whatever cannot be said
exactly is an ``InputError`` at the rule's file and line naming what is
missing (a SIP header match, a string match in nft, ...), never an
approximation.

Layout
------
* Native chains (``hook=None``) sit on ``native_hook``, the filtering hook of
  the profile's ``firewall`` position.
* iptables: a base chain goes to the table of its priority (``<= -200`` raw,
  below 0 mangle, 0 filter, above 0 security: the order of tables on a hook
  is the order of priorities, and raw stays before conntrack); a base chain
  that assigns helpers or ``notrack`` goes to raw, where ``-j CT`` lives. Its
  rules become the built-in chain's rules and its policy the chain's policy;
  user chains it reaches are declared in the same table. ``to_iptables``
  returns one text per address family the ruleset has base chains for.
* nft: one table ``fwtest`` per family the base chains need (``inet`` for
  native chains, ``ip``/``ip6`` for family-bound ones), each base chain at its
  hook and priority, user chains copied into every table that reaches them.
* Rule ids travel as comments (``-m comment --comment "ID"``, ``comment
  "ID"``), followed by the rule's own comment.

Conntrack
---------
``Conntrack.helpers`` with ``sip`` (and no explicit ``ct_helper`` rules, which
then say where helpers go) assigns the SIP helper to new connections to
``sip_ports`` over UDP and TCP: raw-table ``-j CT --helper sip`` rules, or
``ct helper`` objects and ``ct helper set`` in chains at priority -150
(after conntrack, -200, has created the entry). A ruleset with conntrack on
whose rules do not otherwise load it gets a no-op rule that does (the kernel
registers conntrack only for rules that need it); one with conntrack off
whose rules match states cannot be exported.

Timeouts: iptables cannot set conntrack timeouts; they are per-network-
namespace sysctls (``timeout_sysctls``), written into the iptables text as
comments for the operator (the kernel oracle sets them itself). nft sets UDP
and TCP timeouts with ``ct timeout`` objects, which this kernel applies (nft
1.0.6 lists only the values that differ from its defaults; the importer
reads absent ones as the defaults); ICMP, generic and fragment timeouts are
sysctl comments there too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from fwtest.errors import InputError
from fwtest.rules.iptables import (
    FAMILY_BITS,
    ICMP,
    ICMPV6,
    IPTABLES_ALL_FLAGS,
    MAX_CHAIN_NAME,
    MAX_PORTS_MULTIPORT,
    SYSCTLS,
    TCP_FLAG_BITS,
    Ranges,
    addr_ranges,
    addr_text,
    cidr_text,
    merge_ranges,
    port_ranges,
    range_to_cidrs,
)
from fwtest.rules.ir import (
    DEFAULT_TIMEOUTS,
    PORT_PROTOCOLS,
    TCP,
    UDP,
    Action,
    AddrMatch,
    BaseChain,
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
    StateMatch,
    StringMatch,
    TcpFlagsMatch,
)
from fwtest.rules.nftables import TCP_FLAGS_NFT

CONNTRACK_PRIORITY = -200        # NF_IP_PRI_CONNTRACK: chains below it see packets before conntrack
HELPER_PRIORITY = -150           # after conntrack created the entry, before it is confirmed
BUILTIN_TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "REJECT", "LOG", "NFLOG", "CT", "NOTRACK",
                             "TCPMSS", "QUEUE", "MARK", "INPUT", "FORWARD", "OUTPUT", "PREROUTING",
                             "POSTROUTING"})
IPT_TABLE_HOOKS = {
    "raw": {"prerouting": "PREROUTING", "output": "OUTPUT"},
    "mangle": {"prerouting": "PREROUTING", "input": "INPUT", "forward": "FORWARD", "output": "OUTPUT",
               "postrouting": "POSTROUTING"},
    "filter": {"input": "INPUT", "forward": "FORWARD", "output": "OUTPUT"},
    "security": {"input": "INPUT", "forward": "FORWARD", "output": "OUTPUT"},
}
IPT_TABLE_ORDER = ("raw", "mangle", "filter", "security")
IPT_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite",
                   50: "esp", 51: "ah"}
NFT_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite",
                   50: "esp", 51: "ah"}
PORT_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}
RATE_UNITS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400))

# Words nft's scanner takes as keywords (src/scanner.l): a chain or object with such a
# name cannot be written, so the exporter appends "_" (no keyword has one). Words only
# some scanner states know and nft 1.0.6 accepts as chain names (rules, input, forward,
# filter, state, helper, sport, ...) are left out: a common chain name keeps its spelling.
_NFT_KEYWORD_TEXT = """
 eq ne le lt ge gt lshift rshift xor and or not vmap include define redefine undefine describe
 chains sets tables trace hook device devices table chain rule set element map flowtable
 handle ruleset socket transparent wildcard cgroupv2 level tproxy accept drop continue jump goto
 return inet netdev add replace update create insert delete get list reset flush rename import
 export monitor destroy position index comment constant interval dynamic auto-merge timeout
 gc-interval elements expires policy size performance memory flow offload meter meters flowtables
 limits maps secmarks synproxys tunnel tunnels hooks counter name packets bytes last never counters
 quotas log prefix snaplen queue-threshold group queue num bypass fanout limit rate burst second
 minute week over quota until used hour day reject with icmpx snat dnat masquerade redirect random
 fully-random persistent port ll nh th bridge ether type typeof vlan id cfi dei pcp arp
 htype ptype hlen plen operation ip version hdrlength dscp ecn length frag-off ttl protocol checksum
 lsrr rr ssrr ra ptr value option options ackseq doff window urgptr echo eol maxseg mss nop noop
 sack sack0 sack1 sack2 sack3 sack-permitted sack-perm timestamp fastopen mptcp md5sig left right
 count tsval tsecr subtype time icmp icmpv6 gateway code param-problem max-delay mtu taddr sequence
 igmp mrt ip6 priority flowlabel hoplimit nexthdr ah reserved spi esp comp cpi flags udp udplite
 csumcov vxlan vni geneve gre gretap tcp dccp sctp chunk vtag data init init-ack
 heartbeat heartbeat-ack abort shutdown shutdown-ack error cookie-echo cookie-ack ecne cwr
 shutdown-complete asconf-ack forward-tsn asconf tsn stream ssn ppid init-tag a-rwnd rt rt0 rt2 srh
 addr hbh frag reserved2 more-fragments dst mh meta mark iif iifname iiftype oif oifname oiftype
 skuid skgid nftrace rtclassid ibriport ibrname obriport obrname pkttype cpu iifgroup oifgroup cgroup
 nexthop seg-left last-entry tag sid classid ct avgpkt l3proto proto-src proto-dst zone original
 reply direction event expectation expiration helpers label status numgen inc jhash
 symhash seed mod offset dup fwd fib check osf wscale notrack all xml json vm exists missing exthdr
 ipsec reqid spnum in out secmark xt nat route raw mangle security srcnat dstnat ingress
 egress ipv4 ipv6 ipv6-icmp
"""
NFT_KEYWORDS = frozenset(_NFT_KEYWORD_TEXT.split())

# Reject types: every name fwtest knows -> (iptables IPv4, ip6tables, nft icmpx or None).
REJECT = {
    "tcp-reset": ("tcp-reset", "tcp-reset", None),
    "port-unreachable": ("icmp-port-unreachable", "icmp6-port-unreachable", "port-unreachable"),
    "admin-prohibited": ("icmp-admin-prohibited", "icmp6-adm-prohibited", "admin-prohibited"),
    "no-route": ("icmp-net-unreachable", "icmp6-no-route", "no-route"),
    "host-unreachable": ("icmp-host-unreachable", "icmp6-addr-unreachable", "host-unreachable"),
    "icmp-net-unreachable": ("icmp-net-unreachable", "icmp6-no-route", "no-route"),
    "icmp-host-unreachable": ("icmp-host-unreachable", "icmp6-addr-unreachable", "host-unreachable"),
    "icmp-proto-unreachable": ("icmp-proto-unreachable", "icmp6-port-unreachable", "port-unreachable"),
    "icmp-port-unreachable": ("icmp-port-unreachable", "icmp6-port-unreachable", "port-unreachable"),
    "icmp-net-prohibited": ("icmp-net-prohibited", "icmp6-adm-prohibited", "admin-prohibited"),
    "icmp-host-prohibited": ("icmp-host-prohibited", "icmp6-adm-prohibited", "admin-prohibited"),
    "icmp-admin-prohibited": ("icmp-admin-prohibited", "icmp6-adm-prohibited", "admin-prohibited"),
    "icmp6-no-route": ("icmp-net-unreachable", "icmp6-no-route", "no-route"),
    "icmp6-adm-prohibited": ("icmp-admin-prohibited", "icmp6-adm-prohibited", "admin-prohibited"),
    "icmp6-addr-unreachable": ("icmp-host-unreachable", "icmp6-addr-unreachable", "host-unreachable"),
    "icmp6-port-unreachable": ("icmp-port-unreachable", "icmp6-port-unreachable", "port-unreachable"),
    "icmp6-policy-fail": ("icmp-admin-prohibited", "icmp6-policy-fail", "admin-prohibited"),
    "icmp6-reject-route": ("icmp-admin-prohibited", "icmp6-reject-route", "admin-prohibited"),
}
# iptables REJECT names -> nft's "reject with icmp type X" / "icmpv6 type X" codes.
NFT_ICMP_REJECT = {"icmp-net-unreachable": "net-unreachable", "icmp-host-unreachable": "host-unreachable",
                   "icmp-proto-unreachable": "prot-unreachable", "icmp-port-unreachable": "port-unreachable",
                   "icmp-net-prohibited": "net-prohibited", "icmp-host-prohibited": "host-prohibited",
                   "icmp-admin-prohibited": "admin-prohibited"}
NFT_ICMPV6_REJECT = {"icmp6-no-route": "no-route", "icmp6-adm-prohibited": "admin-prohibited",
                     "icmp6-addr-unreachable": "addr-unreachable", "icmp6-port-unreachable": "port-unreachable",
                     "icmp6-policy-fail": "policy-fail", "icmp6-reject-route": "reject-route"}

# nft ct timeout policy keys, per protocol object.
NFT_TIMEOUT_KEYS = {
    "udp": {"udp": "unreplied", "udp_stream": "replied"},
    "tcp": {"tcp_syn_sent": "syn_sent", "tcp_syn_recv": "syn_recv", "tcp_established": "established",
            "tcp_fin_wait": "fin_wait", "tcp_close_wait": "close_wait", "tcp_last_ack": "last_ack",
            "tcp_time_wait": "time_wait", "tcp_close": "close", "tcp_unacknowledged": "unack"},
}


def timeout_sysctls(conntrack: Conntrack) -> dict[str, int]:
    """The net.netfilter sysctls that give the kernel this ruleset's conntrack timeouts
    (only those that differ from the kernel defaults). They are per network namespace."""
    out: dict[str, int] = {}
    for name, seconds in sorted(conntrack.timeouts.items()):
        if DEFAULT_TIMEOUTS.get(name) == seconds:
            continue
        for sysctl in SYSCTLS.get(name, []):
            out[sysctl] = int(seconds)
    return out


# ===================================================================== common


def _fail(rule: Rule | None, ruleset: Ruleset, message: str) -> InputError:
    if rule is None:
        return InputError(ruleset.files[0] if ruleset.files else ruleset.name, 0, message)
    return InputError(rule.source.file, rule.source.line, f"rule '{rule.id}': {message}")


@dataclass(frozen=True)
class _Atom:
    """One alternative of one condition: the text it adds, and the family it needs."""

    family: int | None
    parts: tuple[str, ...]
    copies: int = 1          # kernel rules this text becomes (iptables-restore expands '-s a,b')


ANY = [_Atom(None, ())]


def _product(fields: Sequence[list[_Atom]]) -> list[_Atom]:
    out = [_Atom(None, ())]
    for alternatives in fields:
        nxt = []
        for a in out:
            for b in alternatives:
                if a.family is not None and b.family is not None and a.family != b.family:
                    continue
                nxt.append(_Atom(a.family if a.family is not None else b.family, a.parts + b.parts,
                                 a.copies * b.copies))
        out = nxt
    return out


def _reachable(ruleset: Ruleset, start: str) -> list[str]:
    """User chains reachable from chain ``start`` by jump/goto, in first-seen order."""
    seen: list[str] = []
    pending = [start]
    while pending:
        name = pending.pop()
        chain = ruleset.chains.get(name)
        if chain is None:
            continue
        for rule in chain.rules:
            target = rule.action.target
            if rule.action.kind in ("jump", "goto") and target and target not in seen and target != start:
                seen.append(target)
                pending.append(target)
    return seen


def _chain_kinds(ruleset: Ruleset, names: Iterable[str]) -> set[str]:
    return {r.action.kind for n in names for r in ruleset.chains[n].rules} if names else set()


def _is_noop(ruleset: Ruleset, base: BaseChain) -> bool:
    chain = ruleset.chains.get(base.chain)
    return base.policy == "accept" and (chain is None or not chain.rules)


def _rate(limit: LimitMatch, rule: Rule, ruleset: Ruleset, units: Sequence[tuple[str, int]]) -> tuple[int, str]:
    for unit, seconds in units:
        count = limit.rate * seconds
        if count >= 1 and math.isclose(count, round(count), rel_tol=1e-9, abs_tol=1e-9):
            return round(count), unit
    raise _fail(rule, ruleset, f"rate {limit.rate}/s is not a whole number per second, minute, hour or day")


def _sanitize(name: str, taken: set[str], *, limit: int, reserved: Iterable[str] = ()) -> str:
    """A chain name the tools accept: the IR name's last part, in [A-Za-z0-9_.-]."""
    tail = name.rsplit("/", 1)[-1]
    clean = "".join(c if c.isalnum() or c in "_.-" else "_" for c in tail) or "chain"
    if not clean[0].isalpha():
        clean = "c" + clean
    clean = clean[:limit - 1]
    reserved = set(reserved)
    if clean in reserved:
        clean += "_"
    candidate, n = clean, 2
    while candidate in taken or candidate in reserved:
        suffix = f"_{n}"
        candidate = clean[:limit - len(suffix)] + suffix
        n += 1
    taken.add(candidate)
    return candidate


def _comment(rule: Rule) -> str:
    text = rule.id if not rule.comment else f"{rule.id}: {rule.comment}"
    return " ".join(text.split())


def _check_conntrack(ruleset: Ruleset) -> None:
    if ruleset.conntrack.enabled:
        return
    for rule in ruleset.rules():
        if rule.match.state is not None or rule.match.helper is not None or rule.action.kind == "ct_helper":
            raise _fail(rule, ruleset, "uses conntrack (a state or helper), but the ruleset has conntrack "
                                       "off: the kernel would track connections for this rule")


def _explicit_helpers(ruleset: Ruleset) -> bool:
    return any(r.action.kind == "ct_helper" for r in ruleset.rules())


def _cidrs(family: int, ranges: Ranges) -> list[str]:
    return [cidr_text(family, net, plen) for lo, hi in ranges for net, plen in range_to_cidrs(family, lo, hi)]


def _is_cidr(family: int, lo: int, hi: int) -> bool:
    return len(range_to_cidrs(family, lo, hi)) == 1


def _bases(ruleset: Ruleset, native_hook: str) -> list[tuple[BaseChain, str]]:
    """Base chains that do something, with the hook they sit on."""
    out = []
    for base in ruleset.bases:
        if _is_noop(ruleset, base):
            continue
        out.append((base, base.hook or native_hook))
    return out


def _quote_ipt(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_nft(text: str) -> str:
    # nft strings cannot hold a double quote, even escaped.
    return '"' + text.replace('"', "'") + '"'


# ===================================================================== iptables


def to_iptables(ruleset: Ruleset, *, native_hook: str = "forward",
                sip_ports: Iterable[int] = (5060,)) -> dict[int, str]:
    """iptables-restore text (key 4) and ip6tables-restore text (key 6) for the ruleset.

    Only families the ruleset has base chains for appear.
    """
    _check_conntrack(ruleset)
    ports = sorted(set(sip_ports))
    bases = _bases(ruleset, native_hook)
    families = sorted({f for b in ruleset.bases for f in ((4, 6) if b.family is None else (b.family,))})
    return {f: _IptablesWriter(ruleset, f, bases, ports).text() for f in families or (4, 6)}


class _IptablesWriter:
    def __init__(self, ruleset: Ruleset, family: int, bases: list[tuple[BaseChain, str]],
                 sip_ports: list[int]) -> None:
        self.ruleset = ruleset
        self.family = family
        self.bases = [(b, hook) for b, hook in bases if b.family in (None, family)]
        self.sip_ports = sip_ports
        self.hashlimit_names: dict[str, str] = {}

    # ---- layout
    def table_of(self, base: BaseChain, hook: str) -> str:
        reach = [base.chain, *_reachable(self.ruleset, base.chain)]
        kinds = _chain_kinds(self.ruleset, reach)
        if kinds & {"notrack", "ct_helper"} or base.priority <= CONNTRACK_PRIORITY:
            table = "raw"
        elif base.priority < 0:
            table = "mangle"
        elif base.priority == 0:
            table = "filter"
        else:
            table = "security"
        if hook not in IPT_TABLE_HOOKS[table]:
            raise _fail(None, self.ruleset, f"base chain '{base.chain}' (hook {hook}, priority "
                                            f"{base.priority}) has no iptables equivalent: table {table} "
                                            f"has no {hook} chain")
        if "reject" in kinds and table != "filter":
            rule = next(r for n in reach for r in self.ruleset.chains[n].rules if r.action.kind == "reject")
            raise _fail(rule, self.ruleset, f"REJECT is only valid in the filter table, and this rule's "
                                            f"chain goes to table {table} (priority {base.priority})")
        return table

    def text(self) -> str:
        ruleset, fam = self.ruleset, self.family
        tool = "ip6tables-restore" if fam == 6 else "iptables-restore"
        layout: dict[str, dict[str, BaseChain]] = {}
        for base, hook in self.bases:
            table = self.table_of(base, hook)
            builtin = IPT_TABLE_HOOKS[table][hook]
            if builtin in layout.setdefault(table, {}):
                other = layout[table][builtin]
                raise _fail(None, ruleset, f"base chains '{other.chain}' and '{base.chain}' both map to "
                                           f"iptables {table}/{builtin}: iptables has one chain per hook "
                                           "and table")
            layout[table][builtin] = base
        layout.setdefault("filter", {})
        helpers_needed = ("sip" in ruleset.conntrack.helpers and not _explicit_helpers(ruleset)
                          and self.sip_ports)
        if helpers_needed:
            layout.setdefault("raw", {})
        lines = [f"# Generated by fwtest for {tool}: ruleset {ruleset.name} "
                 f"({', '.join(ruleset.files) or 'no file'})"]
        sysctls = timeout_sysctls(ruleset.conntrack)
        if sysctls:
            lines.append("# iptables cannot set conntrack timeouts; they are sysctls of the network namespace:")
            lines += [f"#   sysctl -w {name}={value}" for name, value in sysctls.items()]
        body: dict[str, list[str]] = {}
        # Whether the conntrack no-op below is needed is known once every rule is written.
        for table in IPT_TABLE_ORDER:
            if table not in layout:
                continue
            body[table] = self.table_text(table, layout[table], bool(helpers_needed) and table == "raw")
        # Decided on what was written, for this family's file alone (a rule of the
        # other family is left out of it).
        written = "\n".join(line for lines in body.values() for line in lines)
        loads = any(word in written for word in ("-m conntrack", "-m state", "-j CT", "-j NOTRACK", "-m helper"))
        if ruleset.conntrack.enabled and not loads:
            # The kernel tracks connections only for rules that need it; this one changes
            # nothing else (no target) and makes the kernel reassemble and track as the model does.
            if "raw" not in body:
                body["raw"] = self.table_text("raw", {}, False)
            body["raw"].insert(-1, "-A PREROUTING -m conntrack --ctstate "
                                   "INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED "
                                   '-m comment --comment "fwtest: load conntrack"')
            body["raw"].insert(-1, "-A OUTPUT -m conntrack --ctstate "
                                   "INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED "
                                   '-m comment --comment "fwtest: load conntrack"')
        for table in IPT_TABLE_ORDER:
            if table in body:
                lines += body[table]
        return "\n".join(lines) + "\n"

    def table_text(self, table: str, bases: Mapping[str, BaseChain], helpers: bool) -> list[str]:
        ruleset = self.ruleset
        out = [f"*{table}"]
        taken: set[str] = set(IPT_TABLE_HOOKS[table].values())
        names: dict[str, str] = {}
        order: list[str] = []
        for builtin, base in bases.items():
            names[base.chain] = builtin
            for user in _reachable(ruleset, base.chain):
                if user not in names:
                    names[user] = _sanitize(user, taken, limit=MAX_CHAIN_NAME, reserved=BUILTIN_TARGETS)
                    order.append(user)
        if table == "filter":
            # Chains no base chain (of any family) reaches still belong to the ruleset; keep
            # them, unused.
            used = {b.chain for b in ruleset.bases}
            used |= {u for b in ruleset.bases for u in _reachable(ruleset, b.chain)}
            for name in ruleset.chains:
                if name not in names and name not in used:
                    names[name] = _sanitize(name, taken, limit=MAX_CHAIN_NAME, reserved=BUILTIN_TARGETS)
                    order.append(name)
        for builtin in IPT_TABLE_HOOKS[table].values():
            base = bases.get(builtin)
            out.append(f":{builtin} {(base.policy if base else 'accept').upper()} [0:0]")
        for user in order:
            out.append(f":{names[user]} - [0:0]")
        if helpers:
            for builtin in ("PREROUTING", "OUTPUT"):
                for proto in ("udp", "tcp"):
                    for port in self.sip_ports:
                        out.append(f"-A {builtin} -p {proto} -m {proto} --dport {port} "
                                   f'-m comment --comment "fwtest: SIP helper" -j CT --helper sip')
        for builtin, base in bases.items():
            out += self.chain_lines(builtin, base.chain, names, table)
        for user in order:
            out += self.chain_lines(names[user], user, names, table)
        out.append("COMMIT")
        return out

    def chain_lines(self, written: str, name: str, names: Mapping[str, str], table: str) -> list[str]:
        out = []
        for rule in self.ruleset.chains[name].rules:
            for args in self.rule_args(rule, names, table):
                out.append(f"-A {written} {args}")
        return out

    # ---- rules
    def rule_args(self, rule: Rule, names: Mapping[str, str], table: str) -> list[str]:
        m, action, fam = rule.match, rule.action, self.family
        ruleset = self.ruleset
        if m.family not in (None, fam):
            return []
        if m.sip is not None:
            raise _fail(rule, ruleset, "a SIP message match has no iptables equivalent (netfilter does not "
                                       "parse SIP headers)")
        if action.kind in ("notrack", "ct_helper") and table != "raw":
            raise _fail(rule, ruleset, f"{action.kind} needs the raw table (-j CT), but its chain is in {table}")
        if action.kind == "reject" and table != "filter":
            raise _fail(rule, ruleset, f"REJECT is only valid in the filter table, not {table}")
        src = self.addresses(m.src, "-s", "--src-range", rule)
        dst = self.addresses(m.dst, "-d", "--dst-range", rule)
        # iptables refuses '!' on either address when the other is a list: then one rule
        # per address of the list.
        if any("!" in a.parts for a in src + dst):
            src, dst = _one_address_each(src), _one_address_each(dst)
        fields = [
            src,
            dst,
            self.interface(m.iface_in, "-i", rule, action),
            self.interface(m.iface_out, "-o", rule, action),
            self.protocol_and_ports(m, rule, action),
            self.fragment(m.fragment, rule),
            self.state(m.state),
            [_Atom(None, ("-m", "helper", "--helper", m.helper))] if m.helper else ANY,
            self.strings(m.string),
        ]
        atoms = _product(fields)
        if not atoms:
            return []
        limit = self.limit(m.limit, rule, sum(a.copies for a in atoms) > 1)
        target = self.target(action, rule, names)
        comment = ("-m", "comment", "--comment", _quote_ipt(_comment(rule)[:255]))
        return [" ".join((*a.parts, *limit, *comment, *target)) for a in atoms]

    def addresses(self, match: AddrMatch | None, flag: str, range_flag: str, rule: Rule) -> list[_Atom]:
        if match is None:
            return ANY
        fam = self.family
        if fam not in match.families:
            return []
        inside = merge_ranges((r.first, r.last) for r in match.ranges if r.family == fam)
        if match.negated and len(inside) == 1:
            lo, hi = inside[0]
            if _is_cidr(fam, lo, hi):
                return [_Atom(None, ("!", flag, _cidrs(fam, inside)[0]))]
            return [_Atom(None, ("-m", "iprange", "!", range_flag,
                                 f"{addr_text(fam, lo)}-{addr_text(fam, hi)}"))]
        ranges = addr_ranges(match, fam)
        if not ranges:
            return []
        if len(ranges) == 1 and not _is_cidr(fam, *ranges[0]):
            lo, hi = ranges[0]
            return [_Atom(None, ("-m", "iprange", range_flag, f"{addr_text(fam, lo)}-{addr_text(fam, hi)}"))]
        # iptables-restore makes one kernel rule per address of the list; the blocks are
        # disjoint, so a packet meets at most one of them.
        cidrs = _cidrs(fam, ranges)
        return [_Atom(None, (flag, ",".join(cidrs)), len(cidrs))]

    def interface(self, match: IfaceMatch | None, flag: str, rule: Rule, action: Action) -> list[_Atom]:
        if match is None:
            return ANY
        if match.negated:
            if len(match.names) != 1:
                raise _fail(rule, self.ruleset, f"'! {flag}' takes one interface in iptables")
            return [_Atom(None, ("!", flag, match.names[0]))]
        if len(match.names) > 1 and action.kind == "jump" and _ifaces_overlap(match.names):
            raise _fail(rule, self.ruleset, "overlapping interface names in a jump rule cannot be split "
                                            "into iptables rules without running the chain twice")
        return [_Atom(None, (flag, name)) for name in match.names]

    def protocol_and_ports(self, m: Match, rule: Rule, action: Action) -> list[_Atom]:
        fam = self.family
        needs_ports = m.sport is not None or m.dport is not None
        icmp_proto = ICMP if fam == 4 else ICMPV6
        wanted: set[int] | None = None           # protocols the rule's other matches need
        if needs_ports:
            wanted = set(PORT_PROTOCOLS)
        if m.tcp_flags is not None:
            wanted = {TCP} if wanted is None else wanted & {TCP}
        if m.icmp is not None:
            if m.icmp.family != fam:
                return []
            wanted = {icmp_proto} if wanted is None else wanted & {icmp_proto}
        if action.kind == "ct_helper":
            wanted = {TCP, UDP} if wanted is None else wanted & {TCP, UDP}
        proto = m.proto
        if proto is None:
            protocols = sorted(wanted) if wanted is not None else None
        elif proto.negated:
            if wanted is None:
                if len(proto.protocols) != 1:
                    raise _fail(rule, self.ruleset, "'! -p' takes one protocol in iptables")
                (number,) = proto.protocols
                return [_Atom(None, ("!", "-p", self.proto_name(number, rule)))]
            protocols = sorted(wanted - proto.protocols)
        else:
            protocols = sorted(proto.protocols if wanted is None else proto.protocols & wanted)
        if protocols is None:
            return ANY
        out: list[_Atom] = []
        for number in protocols:
            base = ("-p", self.proto_name(number, rule))
            for extra in self.transport(number, m, rule):
                out.append(_Atom(None, base + extra))
        return out

    def proto_name(self, number: int, rule: Rule) -> str:
        if number == 0:
            raise _fail(rule, self.ruleset, "protocol 0 cannot be written for iptables ('-p 0' means all)")
        return IPT_PROTO_NAMES.get(number, str(number))

    def transport(self, number: int, m: Match, rule: Rule) -> list[tuple[str, ...]]:
        """The port, flag and ICMP options for one protocol: alternatives."""
        if number in PORT_PROTO_NAMES and (m.sport or m.dport or m.tcp_flags):
            single: list[str] = []
            multi: list[list[tuple[str, ...]]] = []
            for which, match in (("sport", m.sport), ("dport", m.dport)):
                if match is None:
                    continue
                ranges = merge_ranges(match.ranges)
                if not ranges:
                    if not match.negated:
                        return []
                    # "not in nothing": any port, but the packet must have ports.
                    ranges, match = ((0, 65535),), PortMatch(((0, 65535),))
                if len(ranges) == 1 and number in (TCP, UDP, 132):
                    lo, hi = ranges[0]
                    single += ["!"] * match.negated + [f"--{which}", f"{lo}" if lo == hi else f"{lo}:{hi}"]
                else:
                    multi.append(self.multiport(which, match, rule))
            if m.tcp_flags is not None:
                if number != TCP:
                    return []
                single += self.tcp_flags(m.tcp_flags, rule)
            head: tuple[str, ...] = ("-m", PORT_PROTO_NAMES[number], *single) if single else ()
            alternatives = [head]
            for options in multi:
                alternatives = [a + o for a in alternatives for o in options]
            return alternatives
        if number in (ICMP, ICMPV6) and m.icmp is not None:
            return self.icmp(m.icmp, rule)
        return [()]

    def multiport(self, which: str, match: PortMatch, rule: Rule) -> list[tuple[str, ...]]:
        option = "--sports" if which == "sport" else "--dports"
        ranges = merge_ranges(match.ranges)

        def slots(rs: Ranges) -> int:
            return sum(1 if lo == hi else 2 for lo, hi in rs)

        def spell(rs: Ranges) -> str:
            return ",".join(f"{lo}" if lo == hi else f"{lo}:{hi}" for lo, hi in rs)

        if match.negated and slots(ranges) <= MAX_PORTS_MULTIPORT:
            return [("-m", "multiport", "!", option, spell(ranges))]
        positive = port_ranges(match)
        if not positive:
            return []
        # More than 15 ports: several rules, each with a disjoint share of them.
        chunks: list[list[tuple[int, int]]] = [[]]
        for r in positive:
            if slots(tuple(chunks[-1])) + (1 if r[0] == r[1] else 2) > MAX_PORTS_MULTIPORT:
                chunks.append([])
            chunks[-1].append(r)
        return [("-m", "multiport", option, spell(tuple(c))) for c in chunks]

    def tcp_flags(self, flags: TcpFlagsMatch, rule: Rule) -> list[str]:
        if (flags.mask | flags.comp) & ~IPTABLES_ALL_FLAGS:
            raise _fail(rule, self.ruleset, "iptables --tcp-flags cannot test ECE or CWR")

        def names(bits: int) -> str:
            return ",".join(n for n, b in TCP_FLAG_BITS.items() if bits & b) or "NONE"

        return ["!"] * flags.negated + ["--tcp-flags", names(flags.mask), names(flags.comp)]

    def icmp(self, icmp: IcmpMatch, rule: Rule) -> list[tuple[str, ...]]:
        module, option = ("icmp", "--icmp-type") if self.family == 4 else ("icmp6", "--icmpv6-type")
        lo, hi = icmp.codes
        full = (lo, hi) == (0, 255)
        if not icmp.types:
            if not full:
                raise _fail(rule, self.ruleset, "an ICMP code without a type has no iptables equivalent")
            return [] if icmp.negated else [()]
        if not full and lo != hi:
            raise _fail(rule, self.ruleset, "iptables matches one ICMP code or all of them, not a range")
        if icmp.negated and len(icmp.types) > 1:
            raise _fail(rule, self.ruleset, "iptables negates one ICMP type only")
        out = []
        for typ in sorted(icmp.types):
            value = f"{typ}" if full else f"{typ}/{lo}"
            out.append(("-m", module, *(["!"] * icmp.negated), option, value))
        return out

    def fragment(self, frag: FragmentMatch | None, rule: Rule) -> list[_Atom]:
        if frag is None:
            return ANY
        if self.family == 4:
            if frag.kind != "later":
                raise _fail(rule, self.ruleset, f"iptables cannot match '{frag.kind}' fragments of IPv4 "
                                                "(only '-f', non-first fragments)")
            return [_Atom(None, ("!", "-f") if frag.negated else ("-f",))]
        no_header = ("-m", "ipv6header", "!", "--header", "ipv6-frag", "--soft")
        if frag.kind == "any":
            return [_Atom(None, no_header if frag.negated else ("-m", "frag"))]
        if frag.kind == "first" and not frag.negated:
            return [_Atom(None, ("-m", "frag", "--fragfirst"))]
        raise _fail(rule, self.ruleset, f"ip6tables cannot match {'all but ' if frag.negated else ''}"
                                        f"'{frag.kind}' fragments ('-m frag --fragfirst' cannot be negated)")

    def state(self, state: StateMatch | None) -> list[_Atom]:
        if state is None:
            return ANY
        order = ("invalid", "new", "related", "established", "untracked")
        states = ",".join(s.upper() for s in order if s in state.states)
        if not states:
            return ANY if state.negated else []
        return [_Atom(None, ("-m", "conntrack", *(["!"] * state.negated), "--ctstate", states))]

    def strings(self, strings: Sequence[StringMatch]) -> list[_Atom]:
        parts: list[str] = []
        for s in strings:
            printable = all(0x20 <= b < 0x7F for b in s.pattern)
            parts += ["-m", "string"]
            if printable:
                parts += ["!"] * s.negated + ["--string", _quote_ipt(s.pattern.decode("ascii"))]
            else:
                parts += ["!"] * s.negated + ["--hex-string", '"|' + s.pattern.hex() + '|"']
            parts += ["--algo", s.algo]
            if s.offset_from:
                parts += ["--from", str(s.offset_from)]
            if s.offset_to != 65535:
                parts += ["--to", str(s.offset_to)]
            if s.icase:
                parts.append("--icase")
        return [_Atom(None, tuple(parts))]

    def limit(self, limit: LimitMatch | None, rule: Rule, split: bool) -> tuple[str, ...]:
        if limit is None:
            return ()
        count, unit = _rate(limit, rule, self.ruleset, RATE_UNITS)
        plain = not limit.above and not limit.per and not limit.name and not split \
            and limit.src_prefix is None and limit.dst_prefix is None
        if plain:
            return ("-m", "limit", "--limit", f"{count}/{unit}", "--limit-burst", str(limit.burst))
        # hashlimit: several rules that share a name share the buckets, which is what one
        # IR rule split over several iptables rules needs.
        key = limit.name or f"rule:{rule.id}"
        name = self.hashlimit_names.get(key)
        if name is None:
            name = f"fw{len(self.hashlimit_names) + 1}"
            self.hashlimit_names[key] = name
        modes = {"src": "srcip", "dst": "dstip", "sport": "srcport", "dport": "dstport"}
        out = ["-m", "hashlimit", "--hashlimit-above" if limit.above else "--hashlimit-upto",
               f"{count}/{unit}", "--hashlimit-burst", str(limit.burst)]
        if limit.per:
            out += ["--hashlimit-mode", ",".join(modes[p] for p in limit.per)]
        if limit.src_prefix is not None:
            out += ["--hashlimit-srcmask", str(limit.src_prefix)]
        if limit.dst_prefix is not None:
            out += ["--hashlimit-dstmask", str(limit.dst_prefix)]
        out += ["--hashlimit-name", name]
        return tuple(out)

    def target(self, action: Action, rule: Rule, names: Mapping[str, str]) -> tuple[str, ...]:
        kind = action.kind
        if kind in ("accept", "drop"):
            return ("-j", kind.upper())
        if kind == "return":
            return ("-j", "RETURN")
        if kind == "continue":
            return ()
        if kind == "log":
            prefix = (action.target or "")[:29]
            return ("-j", "LOG", "--log-prefix", _quote_ipt(prefix)) if prefix else ("-j", "LOG")
        if kind == "reject":
            target = action.target or "port-unreachable"
            if target not in REJECT:
                raise _fail(rule, self.ruleset, f"unknown reject type '{target}'")
            return ("-j", "REJECT", "--reject-with", REJECT[target][0 if self.family == 4 else 1])
        if kind in ("jump", "goto"):
            target = names.get(action.target or "")
            if target is None:
                raise _fail(rule, self.ruleset, f"{kind} to unknown chain '{action.target}'")
            return ("-j" if kind == "jump" else "-g", target)
        if kind == "notrack":
            return ("-j", "CT", "--notrack")
        if kind == "ct_helper":
            if action.target != "sip":
                raise _fail(rule, self.ruleset, f"unsupported helper '{action.target}'")
            return ("-j", "CT", "--helper", "sip")
        raise _fail(rule, self.ruleset, f"unsupported action '{kind}'")


def _one_address_each(atoms: list[_Atom]) -> list[_Atom]:
    out = []
    for atom in atoms:
        if atom.copies > 1:
            flag, listed = atom.parts
            out += [_Atom(atom.family, (flag, cidr)) for cidr in listed.split(",")]
        else:
            out.append(atom)
    return out


def _ifaces_overlap(names: Sequence[str]) -> bool:
    for a in names:
        for b in names:
            if a != b and a.endswith("+") and b.startswith(a[:-1]):
                return True
    return False


# ===================================================================== nft


def to_nft(ruleset: Ruleset, *, native_hook: str = "forward", sip_ports: Iterable[int] = (5060,)) -> str:
    """An ``nft -f`` script that loads the ruleset into tables named ``fwtest``."""
    _check_conntrack(ruleset)
    return _NftWriter(ruleset, native_hook, sorted(set(sip_ports))).script()


NFT_FAMILY = {None: "inet", 4: "ip", 6: "ip6"}


class _NftTable:
    def __init__(self, family: int | None) -> None:
        self.family = family
        self.objects: list[str] = []
        self.chains: list[list[str]] = []
        self.names: dict[str, str] = {}
        self.taken: set[str] = set()
        self.limit_objects: dict[str, str] = {}
        self.dynamic_sets: dict[tuple[str, int | None], str] = {}
        self.helper_objects: dict[str, str] = {}


class _NftWriter:
    def __init__(self, ruleset: Ruleset, native_hook: str, sip_ports: list[int]) -> None:
        self.ruleset = ruleset
        self.native_hook = native_hook
        self.sip_ports = sip_ports
        self.tables: dict[int | None, _NftTable] = {}
        self.loads_conntrack = False

    def table(self, family: int | None) -> _NftTable:
        if family not in self.tables:
            self.tables[family] = _NftTable(family)
        return self.tables[family]

    def script(self) -> str:
        ruleset = self.ruleset
        bases = _bases(ruleset, self.native_hook)
        moved_helpers: list[tuple[BaseChain, str, list[Rule]]] = []
        for base, hook in bases:
            table = self.table(base.family)
            self.check_hook(base, hook)
            priority = base.priority
            rules = list(ruleset.chains[base.chain].rules)
            reach = _reachable(ruleset, base.chain)
            if priority <= CONNTRACK_PRIORITY and any(r.action.kind == "ct_helper" for r in rules):
                rules, moved = self.split_helpers(base, rules, reach)
                moved_helpers.append((base, hook, moved))
            name = _sanitize(base.chain, table.taken, limit=60, reserved=NFT_KEYWORDS)
            table.names[base.chain] = name
            for user in reach:
                if user not in table.names:
                    table.names[user] = _sanitize(user, table.taken, limit=60, reserved=NFT_KEYWORDS)
            head = [f"\tchain {name} {{",
                    f"\t\ttype filter hook {hook} priority {priority}; policy {base.policy};"]
            table.chains.append(head + self.rule_lines(rules, table) + ["\t}"])
            for user in reach:
                self.user_chain(table, user)
        # Chains no base chain reaches belong to the ruleset too; keep them, unused.
        used = {b.chain for b in ruleset.bases}
        home = self.table(next(iter(self.tables), None))
        for name in ruleset.chains:
            if name in used or any(name in t.names for t in self.tables.values()):
                continue
            for chain in (name, *_reachable(ruleset, name)):
                if chain not in home.names:
                    home.names[chain] = _sanitize(chain, home.taken, limit=60, reserved=NFT_KEYWORDS)
            for chain in (name, *_reachable(ruleset, name)):
                self.user_chain(home, chain)
        self.conntrack_chains(moved_helpers)
        lines = [f"# Generated by fwtest for nft -f: ruleset {ruleset.name} "
                 f"({', '.join(ruleset.files) or 'no file'})"]
        by_object = {name for keys in NFT_TIMEOUT_KEYS.values() for name in keys}
        rest = Conntrack(ruleset.conntrack.enabled, timeouts={
            k: v for k, v in ruleset.conntrack.timeouts.items() if k not in by_object})
        sysctls = timeout_sysctls(rest)
        if sysctls:
            lines.append("# conntrack timeouts nft cannot set here; sysctls of the network namespace:")
            lines += [f"#   sysctl -w {name}={value}" for name, value in sysctls.items()]
        for family in sorted(self.tables, key=lambda f: (f is not None, f or 0)):
            table = self.tables[family]
            fam = NFT_FAMILY[family]
            lines += [f"table {fam} fwtest", f"delete table {fam} fwtest", f"table {fam} fwtest {{"]
            for key, obj in sorted(table.helper_objects.items()):
                helper, proto = key.split("/")
                lines += [f"\tct helper {obj} {{", f'\t\ttype "{helper}" protocol {PORT_PROTO_NAMES[int(proto)]}',
                          f"\t\tl3proto {fam}", "\t}"]
            lines += table.objects
            for chain in table.chains:
                lines += chain
            lines.append("}")
        return "\n".join(lines) + "\n"

    def check_hook(self, base: BaseChain, hook: str) -> None:
        if hook not in ("prerouting", "input", "forward", "output", "postrouting"):
            raise _fail(None, self.ruleset, f"base chain '{base.chain}' has unknown hook '{hook}'")

    def user_chain(self, table: _NftTable, name: str) -> None:
        if any(chain[0] == f"\tchain {table.names[name]} {{" for chain in table.chains):
            return
        rules = self.ruleset.chains[name].rules
        table.chains.append([f"\tchain {table.names[name]} {{", *self.rule_lines(rules, table), "\t}"])

    def split_helpers(self, base: BaseChain, rules: list[Rule], reach: list[str]) -> tuple[list[Rule], list[Rule]]:
        """Helper assignments of a chain that runs before conntrack (iptables' raw table) move to
        the fwtest helper chain after conntrack: nft's ct helper set needs the new entry."""
        kept, moved = [], []
        for rule in rules:
            if rule.action.kind == "ct_helper":
                if any(r.action.kind not in ("continue", "log", "notrack", "ct_helper") for r in kept):
                    raise _fail(rule, self.ruleset, "this helper assignment follows rules that can end the "
                                                    "chain; nft assigns helpers after conntrack, in another "
                                                    "chain, and could not keep that order")
                moved.append(rule)
            else:
                kept.append(rule)
        if any(r.action.kind == "ct_helper" for u in reach for r in self.ruleset.chains[u].rules):
            raise _fail(None, self.ruleset, f"chain '{base.chain}' reaches helper assignments in user "
                                            "chains before conntrack; nft cannot assign helpers there")
        return kept, moved

    def conntrack_chains(self, moved: list[tuple[BaseChain, str, list[Rule]]]) -> None:
        ruleset = self.ruleset
        ct = ruleset.conntrack
        helpers = "sip" in ct.helpers and not _explicit_helpers(ruleset) and self.sip_ports
        timeouts = {proto: {key: ct.timeouts[name] for name, key in keys.items()
                            if name in ct.timeouts and ct.timeouts[name] != DEFAULT_TIMEOUTS[name]}
                    for proto, keys in NFT_TIMEOUT_KEYS.items()}
        timeouts = {p: v for p, v in timeouts.items() if v}
        need_load = ct.enabled and not self.loads_conntrack and not helpers and not timeouts and not moved
        if not (helpers or timeouts or moved or need_load):
            return
        table = self.tables.get(None) or self.table(None)
        pre: dict[str, list[str]] = {"prerouting": [], "output": []}
        if helpers:
            for proto in (UDP, TCP):
                table.helper_objects[f"sip/{proto}"] = f"fwtest-sip-{PORT_PROTO_NAMES[proto]}"
            ports = ", ".join(str(p) for p in self.sip_ports)
            for hook in pre:
                for proto in ("udp", "tcp"):
                    pre[hook].append(f"\t\t{proto} dport {{ {ports} }} ct helper set "
                                     f'"fwtest-sip-{proto}" comment "fwtest: SIP helper"')
        for _base, hook, rules in moved:
            pre.setdefault(hook, [])
            pre[hook] += self.rule_lines(rules, table)
        for proto, policy in timeouts.items():
            obj = f"fwtest-{proto}"
            spelled = ", ".join(f"{k} : {v}" for k, v in policy.items())
            table.objects += [f"\tct timeout {obj} {{", f"\t\tprotocol {proto}", "\t\tl3proto inet",
                              f"\t\tpolicy = {{ {spelled} }}", "\t}"]
            for hook in ("prerouting", "output"):
                pre[hook].append(f'\t\tct timeout set "{obj}" comment "fwtest: conntrack timeouts"')
        if need_load:
            for hook in ("prerouting", "output"):
                # No-op: makes the kernel track connections (and reassemble) as the model does.
                pre[hook].append('\t\tct state invalid counter comment "fwtest: load conntrack"')
        for hook, lines in pre.items():
            if not lines:
                continue
            name = _sanitize(f"fwtest-conntrack-{hook}", table.taken, limit=60, reserved=NFT_KEYWORDS)
            table.chains.insert(0, [f"\tchain {name} {{",
                                    f"\t\ttype filter hook {hook} priority {HELPER_PRIORITY}; policy accept;",
                                    *lines, "\t}"])

    # ---- rules
    def rule_lines(self, rules: Sequence[Rule], table: _NftTable) -> list[str]:
        out = []
        for rule in rules:
            for text in self.rule_texts(rule, table):
                out.append(f"\t\t{text}")
        return out

    def rule_texts(self, rule: Rule, table: _NftTable) -> list[str]:
        m, action = rule.match, rule.action
        ruleset = self.ruleset
        fam = table.family
        if action.kind == "ct_helper":
            protocols = {TCP, UDP} if m.proto is None else (
                {TCP, UDP} - m.proto.protocols if m.proto.negated else m.proto.protocols & {TCP, UDP})
            if len(protocols) > 1:
                # A ct helper object serves one protocol: one rule per protocol.
                return [text for p in sorted(protocols) for text in self.rule_texts(
                    replace(rule, match=replace(m, proto=ProtoMatch(frozenset({p}), False,
                                                                    PORT_PROTO_NAMES[p]))), table)]
        if m.family is not None and fam is not None and m.family != fam:
            return []
        if m.sip is not None:
            raise _fail(rule, ruleset, "a SIP message match has no nft equivalent (netfilter does not parse "
                                       "SIP headers)")
        if m.string:
            raise _fail(rule, ruleset, "a string match has no nft equivalent (nft has no payload search; "
                                       "export this ruleset to iptables instead)")
        if m.state is not None or m.helper is not None or action.kind == "ct_helper":
            self.loads_conntrack = True
        family_atoms = [_Atom(m.family, ())] if m.family is not None else ANY
        fields = [
            family_atoms,
            self.addresses(m.src, "saddr", fam),
            self.addresses(m.dst, "daddr", fam),
            self.interface(m.iface_in, "iifname"),
            self.interface(m.iface_out, "oifname"),
            self.protocol_and_ports(m, rule, action, fam),
            self.fragment(m.fragment, fam),
            self.state(m.state),
            [_Atom(None, (f"ct helper {_quote_nft(m.helper)}",))] if m.helper else ANY,
        ]
        atoms = _product(fields)
        if fam is not None:
            atoms = [a for a in atoms if a.family in (None, fam)]
        if m.limit is not None and fam is None and any(p in ("src", "dst") for p in m.limit.per):
            # Buckets per address: one set per family (its key type), so one rule per family.
            atoms = [_Atom(f, a.parts) for a in atoms for f in ((4, 6) if a.family is None else (a.family,))]
        out = []
        for atom in atoms:
            parts = list(atom.parts)
            if atom.family is not None and fam is None and not self.implies_family(parts):
                # Spelled "not the other family": nft's listing drops "meta nfproto ipv6" where
                # it deems it implied (before "meta l4proto ipv6-icmp", before "reject"), and
                # the JSON read back would lose the family. An inet chain sees IPv4 and IPv6 only.
                parts.append(f"meta nfproto != {'ipv6' if atom.family == 4 else 'ipv4'}")
            if m.limit is not None:
                parts.append(self.limit(m.limit, rule, table, len(atoms) > 1, atom.family))
            parts += self.action(action, rule, table, atom.family if atom.family is not None else fam, m)
            parts.append(f"comment {_quote_nft(_comment(rule)[:120])}")
            out.append(" ".join(p for p in parts if p))
        return out

    @staticmethod
    def implies_family(parts: Sequence[str]) -> bool:
        return any(p.startswith(("ip ", "ip6 ", "icmp ", "icmpv6 ", "exthdr frag", "frag ")) for p in parts)

    def addresses(self, match: AddrMatch | None, which: str, table_family: int | None) -> list[_Atom]:
        if match is None:
            return ANY
        out = []
        for fam in (4, 6):
            if fam not in match.families or table_family not in (None, fam):
                continue
            inside = merge_ranges((r.first, r.last) for r in match.ranges if r.family == fam)
            keyword = "ip" if fam == 4 else "ip6"
            op = "!= " if match.negated else ""
            out.append(_Atom(fam, (f"{keyword} {which} {op}{_nft_set(_addr_elements(fam, inside))}",)))
        return out

    def interface(self, match: IfaceMatch | None, keyword: str) -> list[_Atom]:
        if match is None:
            return ANY
        names = [_quote_nft(n[:-1] + "*" if n.endswith("+") else n) for n in match.names]
        return [_Atom(None, (f"{keyword} {'!= ' if match.negated else ''}{_nft_set(names)}",))]

    def protocol_and_ports(self, m: Match, rule: Rule, action: Action, fam: int | None) -> list[_Atom]:
        needs_ports = m.sport is not None or m.dport is not None
        wanted: set[int] | None = set(PORT_PROTOCOLS) if needs_ports else None
        if m.tcp_flags is not None:
            wanted = {TCP} if wanted is None else wanted & {TCP}
        if m.icmp is not None:
            if fam is not None and m.icmp.family != fam:
                return []
            icmp_proto = ICMP if m.icmp.family == 4 else ICMPV6
            wanted = {icmp_proto} if wanted is None else wanted & {icmp_proto}
        if action.kind == "ct_helper":
            wanted = {TCP, UDP} if wanted is None else wanted & {TCP, UDP}
        proto = m.proto
        if proto is None:
            protocols = wanted
        elif proto.negated:
            if wanted is None:
                names = [NFT_PROTO_NAMES.get(p, str(p)) for p in sorted(proto.protocols)]
                return [_Atom(None, (f"meta l4proto != {_nft_set(names)}",))]
            protocols = wanted - proto.protocols
        else:
            protocols = set(proto.protocols) if wanted is None else set(proto.protocols) & wanted
        if protocols is None:
            return ANY
        if not protocols:
            return []
        names = [NFT_PROTO_NAMES.get(p, str(p)) for p in sorted(protocols)]
        single = next(iter(protocols)) if len(protocols) == 1 else None
        parts: list[str] = []
        if needs_ports:
            keyword = PORT_PROTO_NAMES.get(single) if single is not None else None
            if keyword is None:
                # th ports read whatever transport header follows: name the protocols.
                parts.append(f"meta l4proto {_nft_set(names)}")
                keyword = "th"
            for which, match in (("sport", m.sport), ("dport", m.dport)):
                if match is None:
                    continue
                ranges = merge_ranges(match.ranges)
                if not ranges:
                    if not match.negated:
                        return []
                    parts.append(f"{keyword} {which} 0-65535")
                    continue
                op = "!= " if match.negated else ""
                parts.append(f"{keyword} {which} {op}{_nft_set(_port_elements(ranges))}")
        if m.tcp_flags is not None:
            parts.append(self.tcp_flags(m.tcp_flags))
        if m.icmp is not None:
            return [_Atom(m.icmp.family, tuple(parts) + alternative) for alternative in self.icmp(m.icmp)]
        if not parts:
            parts.append(f"meta l4proto {_nft_set(names)}")
        return [_Atom(None, tuple(parts))]

    def tcp_flags(self, flags: TcpFlagsMatch) -> str:
        def names(bits: int) -> str:
            spelled = [n for n, b in TCP_FLAGS_NFT.items() if bits & b]
            return "|".join(spelled) if spelled else "0x0"

        op = "!=" if flags.negated else "=="
        if flags.mask == 0xFF:
            return f"tcp flags {op} {names(flags.comp)}"
        return f"tcp flags & ({names(flags.mask)}) {op} {names(flags.comp) if flags.comp else '0x0'}"

    def icmp(self, icmp: IcmpMatch) -> list[tuple[str, ...]]:
        """Alternatives for an ICMP type/code test (none: it can never match)."""
        keyword = "icmp" if icmp.family == 4 else "icmpv6"
        lo, hi = icmp.codes
        full = (lo, hi) == (0, 255)
        types = _nft_set([str(t) for t in sorted(icmp.types)]) if icmp.types else None
        codes = f"{lo}" if lo == hi else f"{lo}-{hi}"
        any_icmp = f"meta l4proto {'icmp' if icmp.family == 4 else 'ipv6-icmp'}"
        if not icmp.negated:
            parts = [f"{keyword} type {types}" if types else any_icmp]
            if not full:
                parts.append(f"{keyword} code {codes}")
            return [tuple(parts)]
        if types is None and full:
            return []
        if types is None:
            return [(any_icmp, f"{keyword} code != {codes}")]
        if full:
            return [(f"{keyword} type != {types}",)]
        # Not (type and code): another type, or the type with another code.
        return [(f"{keyword} type != {types}",), (f"{keyword} type {types}", f"{keyword} code != {codes}")]

    def fragment(self, frag: FragmentMatch | None, table_family: int | None) -> list[_Atom]:
        if frag is None:
            return ANY
        out: list[_Atom] = []
        if table_family in (None, 4):
            mask, value, op = {
                "later": ("0x1fff", "0", "!="), "any": ("0x3fff", "0", "!="), "first": ("0x3fff", "0x2000", "=="),
            }[frag.kind]
            if frag.negated:
                op = "==" if op == "!=" else "!="
            out.append(_Atom(4, (f"ip frag-off & {mask} {op} {value}",)))
        if table_family in (None, 6):
            v6 = {
                ("any", False): [("exthdr frag exists",)],
                ("any", True): [("exthdr frag missing",)],
                ("later", False): [("frag frag-off != 0",)],
                ("later", True): [("exthdr frag missing",), ("frag frag-off 0",)],
                ("first", False): [("frag frag-off 0", "frag more-fragments 1")],
                ("first", True): [("exthdr frag missing",), ("frag frag-off != 0",)],
            }[(frag.kind, frag.negated)]
            out += [_Atom(6, parts) for parts in v6]
        return out

    def state(self, state: StateMatch | None) -> list[_Atom]:
        if state is None:
            return ANY
        order = ("invalid", "new", "established", "related", "untracked")
        states = [s for s in order if s in state.states]
        if not states:
            return ANY if state.negated else []
        return [_Atom(None, (f"ct state {'!= ' if state.negated else ''}{_nft_set(states)}",))]

    def limit(self, limit: LimitMatch, rule: Rule, table: _NftTable, split: bool, family: int | None) -> str:
        units = (*RATE_UNITS, ("week", 604800))
        count, unit = _rate(limit, rule, self.ruleset, units)
        spelled = f"limit rate {'over ' if limit.above else ''}{count}/{unit} burst {limit.burst} packets"
        if not limit.per and limit.src_prefix is None and limit.dst_prefix is None:
            if not split and not limit.name:
                return spelled
            key = limit.name or f"rule:{rule.id}"
            obj = table.limit_objects.get(key)
            if obj is None:
                obj = f"fwtest-limit-{len(table.limit_objects) + 1}"
                table.limit_objects[key] = obj
                table.objects += [f"\tlimit {obj} {{", f"\t\trate {'over ' if limit.above else ''}"
                                  f"{count}/{unit} burst {limit.burst} packets", "\t}"]
            return f'limit name "{obj}"'
        # One bucket per key value: a dynamic set whose elements carry the limit.
        key_types, key_exprs = [], []
        for part in limit.per:
            if part in ("src", "dst"):
                keyword = "ip" if family == 4 else "ip6"
                expr = f"{keyword} {'saddr' if part == 'src' else 'daddr'}"
                prefix = limit.src_prefix if part == "src" else limit.dst_prefix
                if prefix is not None:
                    mask = (((1 << prefix) - 1) << (FAMILY_BITS[family] - prefix))
                    expr += f" & {addr_text(family, mask)}"
                key_exprs.append(expr)
                key_types.append("ipv4_addr" if family == 4 else "ipv6_addr")
            else:
                protos = rule.match.proto
                if protos is None or protos.negated or len(protos.protocols) != 1 \
                        or next(iter(protos.protocols)) not in PORT_PROTO_NAMES:
                    raise _fail(rule, self.ruleset, "a per-port limit needs the rule to match one protocol "
                                                    "with ports (tcp, udp, ...)")
                keyword = PORT_PROTO_NAMES[next(iter(protos.protocols))]
                key_exprs.append(f"{keyword} {part}")
                key_types.append("inet_service")
        set_key = (limit.name or f"rule:{rule.id}", family)
        name = table.dynamic_sets.get(set_key)
        if name is None:
            name = f"fwtest-meter-{len(table.dynamic_sets) + 1}"
            table.dynamic_sets[set_key] = name
            table.objects += [f"\tset {name} {{", f"\t\ttype {' . '.join(key_types)}", "\t\tflags dynamic",
                              "\t}"]
        return f"update @{name} {{ {' . '.join(key_exprs)} {spelled} }}"

    def action(self, action: Action, rule: Rule, table: _NftTable, family: int | None, m: Match) -> list[str]:
        kind = action.kind
        if kind in ("accept", "drop", "return"):
            return [kind]
        if kind == "continue":
            return ["counter"]
        if kind == "log":
            return [f"log prefix {_quote_nft(action.target[:127])}" if action.target else "log"]
        if kind == "reject":
            target = action.target or "port-unreachable"
            if target not in REJECT:
                raise _fail(rule, self.ruleset, f"unknown reject type '{target}'")
            if target == "tcp-reset":
                return ["reject with tcp reset"]
            v4, v6, icmpx = REJECT[target]
            # A family-bound rule can name its ICMP type; one for both families uses icmpx
            # (nft would otherwise restrict the rule to the type's family).
            if family == 4:
                return [f"reject with icmp type {NFT_ICMP_REJECT[v4]}"]
            if family == 6:
                return [f"reject with icmpv6 type {NFT_ICMPV6_REJECT[v6]}"]
            return [f"reject with icmpx type {icmpx}"]
        if kind in ("jump", "goto"):
            target = table.names.get(action.target or "")
            if target is None:
                raise _fail(rule, self.ruleset, f"{kind} to unknown chain '{action.target}'")
            return [f"{kind} {target}"]
        if kind == "notrack":
            return ["notrack"]
        if kind == "ct_helper":
            if action.target != "sip":
                raise _fail(rule, self.ruleset, f"unsupported helper '{action.target}'")
            # rule_texts made this copy of the rule for exactly one protocol.
            (proto,) = m.proto.protocols & {TCP, UDP}
            table.helper_objects.setdefault(f"sip/{proto}", f"fwtest-sip-{PORT_PROTO_NAMES[proto]}")
            return [f'ct helper set "fwtest-sip-{PORT_PROTO_NAMES[proto]}"']
        raise _fail(rule, self.ruleset, f"unsupported action '{kind}'")


def _addr_elements(family: int, ranges: Ranges) -> list[str]:
    out = []
    for lo, hi in ranges:
        cidrs = range_to_cidrs(family, lo, hi)
        if len(cidrs) == 1:
            out.append(cidr_text(family, *cidrs[0]))
        else:
            out.append(f"{addr_text(family, lo)}-{addr_text(family, hi)}")
    return out


def _port_elements(ranges: Ranges) -> list[str]:
    return [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]


def _nft_set(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return "{ " + ", ".join(items) + " }"

