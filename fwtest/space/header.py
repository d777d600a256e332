"""The header space: every packet a firewall can see, as an assignment to BDD variables.

One ``HeaderSpace`` holds one BDD manager and the variables of every field a
netfilter rule can test:

========  =====  =============================================================
field     bits   values
========  =====  =============================================================
fam       1      0 = IPv4, 1 = IPv6
state     3      conntrack state class of the packet (``STATE_CODES``)
seen      3      the state the rules see where it differs from ``state``:
                 ``invalid`` before the conntrack lookup (raw-table chains),
                 ``untracked`` after a ``notrack`` rule; only used by
                 rulesets that need it
nt        1      a ``notrack`` rule ran before the lookup
frag      2      0 none, 1 first fragment, 2 later fragment
iif/oif   n      index into the interface universe (``ifaces``)
proto     8      transport protocol number
flags     6      TCP flags FIN SYN RST PSH ACK URG (0 unless a TCP header is seen)
src/dst   128    address; an IPv4 address is its 32-bit value with the 96 upper
                 bits zero, told apart from IPv6 ``::a.b.c.d`` by ``fam``
sport     16     ports (0 when the packet has none: other protocols; a later
dport     16     fragment has the bytes nf_tables reads as its ports);
                 an ICMP/ICMPv6 header's type and code live here too (an ICMP
                 packet has no ports, so the two never meet)
========  =====  =============================================================

plus one *atom* variable per match the header cannot decide: a ``string``
or ``sip`` match (decided per packet class against the profile's own
messages), a rate limit (under it for the header sets; the proof then
judges the bucket on the flows' timelines) and a ``ct
helper`` match. Atoms are substituted by constants before a set is read.

Interfaces are finite: the universe holds ``None`` (no interface: the input
hook has no output interface), every name the rulesets and the profile
mention, one representative name per iptables wildcard prefix (``eth+``
gets ``ethfw0``: a name it matches that no exact name equals) and one name
no rule mentions at all. Two interfaces the rules cannot tell apart are the
same point of the space, so this is exact.

Backends: ``dd.cudd`` (CUDD) when it imports, else the pure-Python
``dd.autoref``; both give the same sets, only faster or slower.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from fwtest.rules.ir import (
    PORT_PROTOCOLS,
    TCP,
    AddrMatch,
    AddrRange,
    FragmentMatch,
    IcmpMatch,
    IfaceMatch,
    Match,
    PortMatch,
    Rule,
    Ruleset,
)
from fwtest.traffic.record import FIRST_FRAGMENT, LATER_FRAGMENT, NOT_FRAGMENT

STATE_CODES: Mapping[str, int] = {"new": 0, "established": 1, "related": 2, "invalid": 3, "untracked": 4}
STATE_NAMES = {v: k for k, v in STATE_CODES.items()}
FRAG_CODES = {"none": NOT_FRAGMENT, "first": FIRST_FRAGMENT, "later": LATER_FRAGMENT}
FRAG_NAMES = {v: k for k, v in FRAG_CODES.items()}

ADDR_BITS = 128
ORDERS = ("field", "interleaved", "ports-first")

# Fields whose values together name one packet header (what regions are read over).
REGION_FIELDS = ("fam", "state", "frag", "iif", "oif", "proto", "flags", "src", "dst", "sport", "dport")


MODELLED_FIELDS = frozenset({"family", "proto", "src", "dst", "sport", "dport", "iface_in", "iface_out",
                             "state", "fragment", "tcp_flags", "helper", "sip", "string", "limit", "icmp"})
_EMPTY = Match()


class ProofError(RuntimeError):
    """An internal contradiction in the proof machinery (a bug, never bad input)."""


def load_backend(name: str | None = None) -> Any:
    """The ``dd`` module to use: ``cudd`` when importable (or asked for), else ``autoref``."""
    if name is not None:
        if name not in ("cudd", "autoref"):
            raise ValueError(f"unknown BDD backend {name!r} (cudd or autoref)")
        return _import_dd(f"dd.{name}")
    try:
        return _import_dd("dd.cudd")
    except ImportError:
        return _import_dd("dd.autoref")


def _import_dd(module: str) -> Any:
    # dd imports networkx (about 0.1 s of `fwtest check`'s start-up)
    # for graph exports fwtest never asks for, and dd treats it as optional
    # (dd/_utils.py catches its ImportError). So dd is loaded with networkx
    # hidden; a networkx already imported, or imported later, is not touched.
    if "networkx" in sys.modules or "dd._utils" in sys.modules:
        return importlib.import_module(module)
    sys.modules["networkx"] = None  # type: ignore[assignment]  # `import networkx` raises ImportError
    try:
        return importlib.import_module(module)
    finally:
        if sys.modules.get("networkx", 0) is None:
            del sys.modules["networkx"]


@dataclass(frozen=True)
class Atom:
    """A match the header does not decide. ``key`` identifies it across rulesets."""

    kind: str            # "string" | "sip" | "limit" | "helper"
    key: Any             # StringMatch | SipMatch | (rule id, LimitMatch) | helper name
    var: str             # BDD variable name


def interface_universe(names: Iterable[str]) -> tuple[str | None, ...]:
    """``None``, the exact names, a representative per wildcard prefix, one unmentioned name."""
    exact = sorted({n for n in names if n and not n.endswith("+")})
    prefixes = sorted({n[:-1] for n in names if n and n.endswith("+")})
    taken = set(exact)

    def free(name: str, owner: str | None) -> bool:
        # A representative of prefix ``owner`` must not equal an exact name, nor
        # start with a longer wildcard prefix (it would stand for that one instead).
        if name in taken or len(name) > 15:
            return False
        longest = max((p for p in prefixes if name.startswith(p)), key=len, default=None)
        return longest == owner

    reps = []
    for p in prefixes:
        for suffix in ("fw0", "fw1", "0x", "_", "-fw", "."):
            cand = p + suffix
            if free(cand, p):
                reps.append(cand)
                taken.add(cand)
                break
    other = next(c for c in (f"fwt{i}" for i in range(10 ** 6)) if free(c, None))
    return (None, *exact, *reps, other)


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


class HeaderSpace:
    """The BDD manager, its variables, and encoders from IR matches to sets of packets."""

    def __init__(self, *, interfaces: Iterable[str] = (), atoms: Iterable[tuple[str, Any]] = (),
                 backend: str | None = None, order: str = "field") -> None:
        if order not in ORDERS:
            raise ValueError(f"unknown variable order {order!r} ({', '.join(ORDERS)})")
        self.backend = load_backend(backend)
        self.backend_name = self.backend.__name__.rsplit(".", 1)[-1]
        self.order = order
        self.bdd = self.backend.BDD()
        if self.backend_name == "cudd":
            # Dynamic reordering makes timings erratic and walks order-dependent;
            # the static orders below are measured in tests/bench/bench_space.py.
            self.bdd.configure(reordering=False)
        self.ifaces = interface_universe(interfaces)
        self.iface_index = {name: i for i, name in enumerate(self.ifaces)}
        width = _bits(len(self.ifaces))
        self.widths = {"fam": 1, "state": 3, "seen": 3, "nt": 1, "frag": 2, "iif": width, "oif": width,
                       "proto": 8, "flags": 6, "src": ADDR_BITS, "dst": ADDR_BITS,
                       "sport": 16, "dport": 16}
        self.vars = {f: [f"{f}{i}" for i in range(w)] for f, w in self.widths.items()}
        self.atoms: dict[tuple[str, Any], Atom] = {}
        atom_list = list(dict.fromkeys(atoms))
        atom_vars = [f"atom{i}" for i in range(len(atom_list))]
        for (kind, key), var in zip(atom_list, atom_vars, strict=True):
            self.atoms[(kind, key)] = Atom(kind, key, var)
        self.bdd.declare(*atom_vars, *self._ordered_vars())
        self.true, self.false = self.bdd.true, self.bdd.false
        self.region_vars = [v for f in REGION_FIELDS for v in self.vars[f]]
        self._region_set = frozenset(self.region_vars)
        self._match_cache: dict[tuple[Match, bool, bool, bool], Any] = {}
        self._region_cache: dict[tuple, Any] = {}
        self._cube_cache: dict[tuple[str, int], Any] = {}
        protos = self.false
        for p in PORT_PROTOCOLS:
            protos |= self.eq("proto", p)
        later = self.eq("frag", LATER_FRAGMENT)
        # nf_tables reads "ports" from non-first fragments too (the bytes at the
        # transport offset it computed: fwtest.engine.packet.later_fragment_ports),
        # so a later fragment of a port protocol has port values like any packet.
        self._has_ports = protos
        self._has_tcp_header = self.eq("proto", TCP) & ~later
        self._has_icmp_header = ((self.eq("fam", 0) & self.eq("proto", 1))
                                 | (self.eq("fam", 1) & self.eq("proto", 58))) & ~later
        self.domain = self._domain()

    # ------------------------------------------------------------ construction

    @classmethod
    def for_rulesets(cls, rulesets: Sequence[Ruleset], profile: Any = None, *,
                     backend: str | None = None, order: str = "field") -> HeaderSpace:
        """A space with the interfaces and atoms every given ruleset (and the profile) needs."""
        names: list[str] = []
        atoms: list[tuple[str, Any]] = []
        for rs in rulesets:
            for rule in rs.rules():
                m = rule.match
                for im in (m.iface_in, m.iface_out):
                    if im is not None:
                        names.extend(im.names)
                atoms.extend(rule_atom_keys(rule))
        if profile is not None:
            names.extend(n for n in profile.interfaces.values() if n)
        return cls(interfaces=names, atoms=atoms, backend=backend, order=order)

    def _ordered_vars(self) -> list[str]:
        v = self.vars
        head = [*v["fam"], *v["state"], *v["seen"], *v["nt"], *v["frag"], *v["iif"], *v["oif"], *v["proto"],
                *v["flags"]]
        if self.order == "field":
            return [*head, *v["src"], *v["dst"], *v["sport"], *v["dport"]]
        if self.order == "ports-first":
            return [*head, *v["dport"], *v["sport"], *v["dst"], *v["src"]]
        inter_addr = [x for pair in zip(v["src"], v["dst"], strict=True) for x in pair]
        inter_port = [x for pair in zip(v["sport"], v["dport"], strict=True) for x in pair]
        return [*head, *inter_addr, *inter_port]

    def _domain(self) -> Any:
        """Headers that exist: valid codes, IPv4 addresses in 32 bits, no ports or flags where
        the packet has none (so each real packet is exactly one point)."""
        b = self
        ipv4 = b.eq("fam", 0)
        v4_addr = b.range("src", 0, 2 ** 32 - 1) & b.range("dst", 0, 2 ** 32 - 1)
        dom = (~ipv4 | v4_addr)
        dom &= b.range("state", 0, len(STATE_CODES) - 1) & b.range("seen", 0, len(STATE_CODES) - 1)
        dom &= b.range("frag", 0, 2)
        n = len(self.ifaces) - 1
        dom &= b.range("iif", 0, n) & b.range("oif", 0, n)
        icmp_fields = b.range("sport", 0, 255) & b.range("dport", 0, 255)
        dom &= self.has_ports() | (self._has_icmp_header & icmp_fields) | (b.eq("sport", 0) & b.eq("dport", 0))
        dom &= self.has_tcp_header() | b.eq("flags", 0)
        return dom

    def release(self) -> None:
        """Drop the sets this space caches. ``dd.autoref`` asserts, when its manager is
        collected, that no node is still referenced; a space that is thrown away while
        other objects still hold it (a test fixture at the end of a session) calls this
        first so the manager goes last."""
        self._match_cache.clear()
        self._region_cache.clear()
        self._cube_cache.clear()
        import gc
        gc.collect()

    # ------------------------------------------------------------ encoders

    def eq(self, field: str, value: int) -> Any:
        key = (field, value)
        cube = self._cube_cache.get(key)
        if cube is None:
            names = self.vars[field]
            width = len(names)
            if not 0 <= value < 2 ** width:
                raise ValueError(f"{field}={value} out of range")
            cube = self.bdd.cube({n: bool((value >> (width - 1 - i)) & 1) for i, n in enumerate(names)})
            self._cube_cache[key] = cube
        return cube

    def prefix(self, field: str, value: int, length: int) -> Any:
        """The field's top ``length`` bits equal those of ``value``."""
        key = (field, value >> (len(self.vars[field]) - length) if length else 0, -length - 1)
        cube = self._cube_cache.get(key)
        if cube is None:
            names = self.vars[field]
            width = len(names)
            cube = self.bdd.cube({names[i]: bool((value >> (width - 1 - i)) & 1) for i in range(length)})
            self._cube_cache[key] = cube
        return cube

    def class_region(self, cls: Any, states: tuple[str, ...]) -> Any:
        """A packet class's region (``PacketClass.region``), cached: classes recur across
        compiles, diffs and analyses in one space."""
        key = (cls, states)
        got = self._region_cache.get(key)
        if got is None:
            got = cls.region(self, states=states)
            self._region_cache[key] = got
        return got

    def range(self, field: str, lo: int, hi: int) -> Any:
        """``lo <= field <= hi`` (inclusive), built bottom-up, prefix blocks as cubes."""
        names = self.vars[field]
        width = len(names)
        lo, hi = max(lo, 0), min(hi, 2 ** width - 1)
        if lo > hi:
            return self.false
        size = hi - lo + 1
        if size & (size - 1) == 0 and lo % size == 0:
            return self.prefix(field, lo, width - (size.bit_length() - 1))
        return self._ge(names, lo) & self._le(names, hi)

    def _node(self, var: str, low: Any, high: Any) -> Any:
        """The node ``var ? high : low`` (both below ``var``).

        CUDD keeps the then-edge of every node regular (complemented edges
        live on else-edges and references only); ``dd.cudd``'s
        ``find_or_add`` passes its arguments to ``cuddUniqueInter`` as they
        are, which corrupts the table when ``high`` is complemented. So build
        the complement of the node with a regular then-edge instead:
        ``v ? h : l`` is ``not (v ? not h : not l)``. (dd.cudd 0.6.0; the
        test suite compares both backends node for node.)
        """
        if low == high:
            # cuddUniqueInter does not reduce either: a node with equal children
            # would be a second, non-canonical name for ``low``.
            return low
        if high.negated:
            return ~self.bdd.find_or_add(var, ~low, ~high)
        return self.bdd.find_or_add(var, low, high)

    def _ge(self, names: Sequence[str], lo: int) -> Any:
        width, node = len(names), self.true
        add = self._node
        for i in range(width - 1, -1, -1):
            if (lo >> (width - 1 - i)) & 1:
                node = add(names[i], self.false, node)
            else:
                node = add(names[i], node, self.true)
        return node

    def _le(self, names: Sequence[str], hi: int) -> Any:
        width, node = len(names), self.true
        add = self._node
        for i in range(width - 1, -1, -1):
            if (hi >> (width - 1 - i)) & 1:
                node = add(names[i], self.true, node)
            else:
                node = add(names[i], node, self.false)
        return node

    def family(self, family: int) -> Any:
        return self.eq("fam", 0 if family == 4 else 1)

    def addr_range(self, field: str, r: AddrRange) -> Any:
        return self.family(r.family) & self.range(field, r.first, r.last)

    def has_ports(self) -> Any:
        """The packet carries a transport header with ports (netfilter's port matches need one)."""
        return self._has_ports

    def has_tcp_header(self) -> Any:
        return self._has_tcp_header

    def state(self, name: str, *, seen: bool = False) -> Any:
        return self.eq("seen" if seen else "state", STATE_CODES[name])

    def iface(self, field: str, name: str | None) -> Any:
        return self.eq(field, self.iface_index[name])

    def atom(self, kind: str, key: Any) -> Any:
        atom = self.atoms.get((kind, key))
        if atom is None:
            raise ProofError(f"no atom declared for {kind} {key!r}: the space was built for other rulesets")
        return self.bdd.var(atom.var)

    # ------------------------------------------------------------ matches

    def match(self, match: Match, *, seen_state: bool = False, sees_in: bool = True,
              sees_out: bool = True) -> Any:
        """The packets a rule's match (without its rate limit) matches. Cached by value.

        ``sees_in``/``sees_out`` False: the hook does not know that interface
        (no output device before routing, no input device for local packets),
        so an interface match sees none, whatever the packet's field says.
        """
        key = replace(match, limit=None) if match.limit is not None else match
        cache_key = (key, seen_state, sees_in, sees_out)
        got = self._match_cache.get(cache_key)
        if got is None:
            got = self._match(key, seen_state)
            hidden = {}
            if not sees_in and key.iface_in is not None:
                hidden.update({v: False for v in self.vars["iif"]})   # index 0 is "no interface"
            if not sees_out and key.iface_out is not None:
                hidden.update({v: False for v in self.vars["oif"]})
            if hidden:
                got = self.bdd.let(hidden, got) & self.domain
            self._match_cache[cache_key] = got
        return got

    def rule_match(self, rule: Rule, *, seen_state: bool = False, sees_in: bool = True,
                   sees_out: bool = True) -> Any:
        m = self.match(rule.match, seen_state=seen_state, sees_in=sees_in, sees_out=sees_out)
        if rule.match.limit is not None:
            m &= self.atom("limit", (rule.id, rule.match.limit))
        return m

    def _match(self, m: Match, seen_state: bool) -> Any:
        empty = _EMPTY if type(m) is Match else type(m)()
        unknown = [f.name for f in fields(m)
                   if f.name not in MODELLED_FIELDS and getattr(m, f.name) != getattr(empty, f.name)]
        if unknown:
            # A match the proof skipped would be a false pass: refuse instead.
            raise ProofError(f"match {', '.join(unknown)} is not modelled by the proof")
        u = self.true
        if m.family is not None:
            u &= self.family(m.family)
        if m.proto is not None:
            protos = self.false
            for p in m.proto.protocols:
                protos |= self.eq("proto", p)
            u &= ~protos if m.proto.negated else protos
        for field, am in (("src", m.src), ("dst", m.dst)):
            if am is not None:
                u &= self.addr_match(field, am)
        for field, pm in (("sport", m.sport), ("dport", m.dport)):
            if pm is not None:
                u &= self.port_match(field, pm)
        for field, im in (("iif", m.iface_in), ("oif", m.iface_out)):
            if im is not None:
                u &= self.iface_match(field, im)
        if m.state is not None:
            states = self.false
            for s in m.state.states:
                states |= self.state(s, seen=seen_state)
            u &= ~states if m.state.negated else states
        if m.fragment is not None:
            u &= self.fragment_match(m.fragment)
        if m.tcp_flags is not None:
            tf = m.tcp_flags
            inside = self._flags_equal(tf.mask, tf.comp)
            # Flags are only read from a TCP header: a non-TCP packet or a later
            # fragment never matches, negated or not (like a port match).
            u &= self.has_tcp_header() & (~inside if tf.negated else inside)
        if m.icmp is not None:
            u &= self.icmp_match(m.icmp)
        if m.helper is not None:
            u &= self.atom("helper", m.helper)
        if m.sip is not None:
            u &= self.atom("sip", m.sip)
        for sm in m.string:
            u &= self.atom("string", sm)
        return u & self.domain

    def addr_match(self, field: str, am: AddrMatch) -> Any:
        u = self.false
        for fam in am.families:
            inside = self.false
            for r in am.ranges:
                if r.family == fam:
                    inside |= self.range(field, r.first, r.last)
            u |= self.family(fam) & (~inside if am.negated else inside)
        return u

    def port_match(self, field: str, pm: PortMatch) -> Any:
        inside = self.false
        for lo, hi in pm.ranges:
            inside |= self.range(field, lo, hi)
        return self.has_ports() & (~inside if pm.negated else inside)

    def icmp_match(self, im: IcmpMatch) -> Any:
        """ICMP type (in the ``sport`` field) and code (``dport``) of the family's ICMP."""
        header = self.family(im.family) & self.eq("proto", 1 if im.family == 4 else 58) \
            & ~self.eq("frag", LATER_FRAGMENT)
        inside = self.range("dport", im.codes[0], im.codes[1])
        if im.types:
            types = self.false
            for t in im.types:
                types |= self.eq("sport", t)
            inside &= types
        return header & (~inside if im.negated else inside)

    def iface_match(self, field: str, im: IfaceMatch) -> Any:
        u = self.false
        for i, name in enumerate(self.ifaces):
            if im.matches(name):
                u |= self.eq(field, i)
        return u

    def fragment_match(self, fm: FragmentMatch) -> Any:
        if fm.kind == "later":
            inside = self.eq("frag", LATER_FRAGMENT)
        elif fm.kind == "first":
            inside = self.eq("frag", FIRST_FRAGMENT)
        else:
            inside = ~self.eq("frag", NOT_FRAGMENT)
        return ~inside if fm.negated else inside

    def _flags_equal(self, mask: int, comp: int) -> Any:
        names = self.vars["flags"]
        width = len(names)
        # Bit i of the field (MSB first) is flag 1 << (width - 1 - i): URG..FIN.
        return self.bdd.cube({names[i]: bool((comp >> (width - 1 - i)) & 1)
                              for i in range(width) if (mask >> (width - 1 - i)) & 1})

    # ------------------------------------------------------------ sets

    def let_atoms(self, u: Any, values: Mapping[str, bool]) -> Any:
        """Substitute atoms (by variable name) with constants."""
        if not values:
            return u
        return self.bdd.let({k: bool(v) for k, v in values.items()}, u)

    def exist(self, fields: Iterable[str], u: Any) -> Any:
        names = [v for f in fields for v in self.vars[f]]
        return self.bdd.exist(names, u)

    def forget_seen(self, u: Any) -> Any:
        """After a walk that tracked the seen state: forget it (regions are read over ``state``)."""
        return self.bdd.exist([*self.vars["seen"], *self.vars["nt"]], u)

    def seen_equals_state(self) -> Any:
        u = self.false
        for code in STATE_CODES.values():
            u |= self.eq("state", code) & self.eq("seen", code)
        return u

    def count(self, u: Any) -> int:
        """Number of packet headers in a region (over the region fields only)."""
        other = [v for v in self.bdd.vars if v not in self._region_set]
        u = self.bdd.exist(other, u)
        total = len(self.bdd.vars)
        n = self.bdd.count(u, nvars=total)
        extra = total - len(self.region_vars)
        return int(n) >> extra if isinstance(n, int) else int(round(n / 2 ** extra))

    def dag_size(self, u: Any) -> int:
        return u.dag_size


def rule_atom_keys(rule: Rule) -> list[tuple[str, Any]]:
    """The atoms a rule's match needs."""
    m = rule.match
    keys: list[tuple[str, Any]] = []
    if m.helper is not None:
        keys.append(("helper", m.helper))
    if m.sip is not None:
        keys.append(("sip", m.sip))
    keys.extend(("string", s) for s in m.string)
    if m.limit is not None:
        keys.append(("limit", (rule.id, m.limit)))
    return keys


