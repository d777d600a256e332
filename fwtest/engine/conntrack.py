"""Connection tracking as the filter sees it (net/netfilter/nf_conntrack_core.c).

``ConntrackTable.lookup`` runs where the kernel's ``nf_conntrack_in`` runs
(PREROUTING and OUTPUT, priority -200): it finds or creates the packet's
entry, runs the protocol tracker (which may declare the packet INVALID) and
tells the rules the state:

* ``new``: first packet of an entry, and every later packet in the original
  direction until a reply was seen (an RTP stream nobody answers stays NEW);
* ``established``: any reply-direction packet; original-direction packets
  once a reply was seen;
* ``related``: an entry a helper expected (RTP from SDP), until a reply; an
  ICMP error about a tracked flow;
* ``invalid``: the tracker refused the packet (a SYN/ACK without SYN, an
  out-of-window segment, an ICMP error about nothing, a reply-type ICMP);
* ``untracked``: a ``notrack`` rule ran before the lookup, or an IPv6
  neighbour discovery / MLD message.

``ConntrackTable.confirm`` runs where ``nf_confirm`` runs (the last hook of
the path, for packets accepted all along): it runs the connection's helper,
then inserts a new entry. A NEW packet dropped anywhere leaves no entry;
state changes of existing entries (TCP state, seen-reply, timeouts) happen at
the lookup and stay even when the filter then drops the packet, as in the
kernel. Timeouts are the configured sysctls, counted on record timestamps.

Not modelled: SCTP, DCCP and GRE trackers (tracked as the generic protocol:
one entry per address pair and protocol, ``generic`` timeout), zones,
NAT, conntrack table limits, checksum validation.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from fwtest.engine.conntrack_tcp import ORIGINAL, REPEAT, REPLY, TcpTrack, tcp_packet
from fwtest.engine.packet import PacketView
from fwtest.engine.sip_helper import SipHelper
from fwtest.rules.ir import DEFAULT_TIMEOUTS, TCP, UDP, Conntrack
from fwtest.traffic.record import MalformedPacket, parse_ip

ICMP, ICMPV6, SCTP, UDPLITE = 1, 58, 132, 136

# Kernel defaults of timeouts the IR table does not list.
EXTRA_TIMEOUTS = {"icmpv6": 30, "tcp_max_retrans": 300, "frag6": 60}

# icmp_invert_tuple / icmpv6_invert_tuple: request <-> reply types.
ICMP_INVERSE = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}
ICMPV6_INVERSE = {128: 129, 129: 128, 139: 140, 140: 139}
ICMP_VALID_NEW = frozenset({8, 13, 15, 17})       # echo, timestamp, info request, address mask
ICMPV6_VALID_NEW = frozenset({128, 139})          # echo request, node information query
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})        # icmp_is_err()
# nf_conntrack_proto_icmpv6.c noct_valid_new: MLD and neighbour discovery are never tracked.
ICMPV6_UNTRACKED = frozenset({130, 131, 132, 133, 134, 135, 136, 143})

SWEEP_EVERY = 8192


class Expectation:
    """An expected UDP flow (nf_conntrack_expect): from ``saddr`` (any port) to ``daddr:dport``."""

    __slots__ = ("master", "cls", "family", "saddr", "daddr", "dport", "expires")

    def __init__(self, master: Connection, cls: str, saddr: int, daddr: int, dport: int,
                 expires: float) -> None:
        self.master = master
        self.cls = cls
        self.family = master.family
        self.saddr = saddr
        self.daddr = daddr
        self.dport = dport
        self.expires = expires

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.family, self.saddr, self.daddr, self.dport)


class Connection:
    """One conntrack entry. ``key`` is the original tuple, ``reply_key`` the reply tuple:
    (family, proto, src, dst, sport|icmp id, dport|icmp type, 0|icmp code)."""

    __slots__ = ("family", "proto", "key", "reply_key", "confirmed", "dead", "expires", "seen_reply",
                 "assured", "expected", "master", "helper", "tcp", "stream_ts", "invite_cseq",
                 "expectations")

    def __init__(self, key: tuple, reply_key: tuple, now: float) -> None:
        self.family = key[0]
        self.proto = key[1]
        self.key = key
        self.reply_key = reply_key
        self.confirmed = False
        self.dead = False
        self.expires = now
        self.seen_reply = False
        self.assured = False
        self.expected = False
        self.master: Connection | None = None
        self.helper: str | None = None
        self.tcp: TcpTrack | None = TcpTrack() if key[1] == TCP else None
        self.stream_ts = 0.0
        self.invite_cseq = -1
        self.expectations: list[Expectation] = []

    def source(self, reply: bool) -> int:
        """Source address of the given direction (ct->tuplehash[dir].tuple.src.u3)."""
        return self.reply_key[2] if reply else self.key[2]

    def destination(self, reply: bool) -> int:
        return self.reply_key[3] if reply else self.key[3]

    def alive(self, now: float) -> bool:
        return not self.dead and now < self.expires


class ConntrackTable:
    def __init__(self, config: Conntrack, sip_ports: Iterable[int] = (5060,)) -> None:
        self.config = config
        self.entries: dict[tuple, tuple[Connection, bool]] = {}
        self.expectations: dict[tuple[int, int, int, int], Expectation] = {}
        self.sip_ports = frozenset(sip_ports)
        self.auto_sip = "sip" in config.helpers
        self.sip = SipHelper(self)
        self._timeouts: dict[str, float] = {}
        self._lookups = 0

    def timeout(self, name: str) -> float:
        value = self._timeouts.get(name)
        if value is None:
            configured = self.config.timeouts.get(name)
            if configured is None:
                configured = DEFAULT_TIMEOUTS.get(name, EXTRA_TIMEOUTS.get(name))
            if configured is None:
                raise KeyError(f"no conntrack timeout {name!r}")
            value = self._timeouts[name] = float(configured)
        return value

    # ---------------------------------------------------------------- lookup

    def lookup(self, p: PacketView) -> None:
        """nf_conntrack_in: give the packet its entry and state."""
        p.looked_up = True
        if p.notrack:
            p.state = "untracked"
            return
        self._lookups += 1
        if self._lookups % SWEEP_EVERY == 0:
            self.sweep(p.ts)
        key = self._tuple(p)
        if key is None:
            return        # state already set (invalid, related, untracked)
        for _attempt in range(2):
            conn, reply = self._find(key, p.ts)
            new = conn is None
            if conn is None:
                conn = self._new(p, key)
                if conn is None:
                    p.state = "invalid"
                    return
                reply = False
            if reply or conn.seen_reply:
                ctinfo = "established"
            elif conn.expected:
                ctinfo = "related"
            else:
                ctinfo = "new"
            result = self._track(conn, p, reply)
            if result == REPEAT and not new:
                self._destroy(conn)
                continue
            break
        if result != "accept":
            p.state = "invalid"
            p.conn = None
            return
        if reply and not conn.seen_reply:
            conn.seen_reply = True
        if conn.dead and conn.confirmed:
            self._destroy(conn)
        p.conn = conn
        p.reply = reply
        p.ctinfo = ctinfo
        p.state = ctinfo

    def _find(self, key: tuple, now: float) -> tuple[Connection | None, bool]:
        found = self.entries.get(key)
        if found is None:
            return None, False
        conn, reply = found
        if not conn.alive(now):
            self._destroy(conn)
            return None, False
        return conn, reply

    def _tuple(self, p: PacketView) -> tuple | None:
        """The packet's tuple, or None after setting the state of a packet that has none."""
        proto = p.proto
        if proto in (TCP, UDP, UDPLITE, SCTP):
            if p.sport < 0:
                p.state = "invalid"          # truncated transport header
                return None
            return (p.family, proto, p.src, p.dst, p.sport, p.dport, 0)
        if (proto == ICMP and p.family == 4) or (proto == ICMPV6 and p.family == 6):
            l4 = p.record.l4_offset
            if len(p.data) < l4 + 8:
                p.state = "invalid"
                return None
            icmp_type, code, ident = p.data[l4], p.data[l4 + 1], struct.unpack_from("!H", p.data, l4 + 4)[0]
            if (p.family == 4 and icmp_type in ICMP_ERRORS) or (p.family == 6 and icmp_type < 128):
                self._icmp_error(p, l4)
                return None
            if p.family == 6 and icmp_type in ICMPV6_UNTRACKED:
                p.state = "untracked"
                return None
            return (p.family, proto, p.src, p.dst, ident, icmp_type, code)
        return (p.family, proto, p.src, p.dst, 0, 0, 0)

    def _icmp_error(self, p: PacketView, l4: int) -> None:
        # nf_conntrack_inet_error: an ICMP error is RELATED to the flow its
        # quoted packet belongs to, if its destination is that flow's end.
        p.state = "invalid"
        try:
            inner = parse_ip(p.data[l4 + 8:])
        except MalformedPacket:
            return
        if inner.family != p.family:
            return
        if inner.proto in (TCP, UDP, UDPLITE, SCTP):
            if inner.sport < 0:
                return
            key = (inner.family, inner.proto, inner.dst, inner.src, inner.dport, inner.sport, 0)
        elif inner.proto in (ICMP, ICMPV6):
            il4 = inner.l4_offset
            if len(inner.data) < il4 + 8:
                return
            itype, icode = inner.data[il4], inner.data[il4 + 1]
            inverse = (ICMP_INVERSE if inner.family == 4 else ICMPV6_INVERSE).get(itype)
            if inverse is None:
                return
            ident = struct.unpack_from("!H", inner.data, il4 + 4)[0]
            key = (inner.family, inner.proto, inner.dst, inner.src, ident, inverse, icode)
        else:
            key = (inner.family, inner.proto, inner.dst, inner.src, 0, 0, 0)
        conn, reply = self._find(key, p.ts)
        if conn is None or not conn.confirmed:
            return
        if p.dst != conn.destination(reply):
            return
        p.conn = conn
        p.reply = reply
        p.ctinfo = "related-icmp"
        p.state = "related"

    def _new(self, p: PacketView, key: tuple) -> Connection | None:
        """init_conntrack: an unconfirmed entry for a packet nothing knows yet."""
        family, proto, src, dst, a, b, c = key
        if proto in (ICMP, ICMPV6):
            inverse = (ICMP_INVERSE if family == 4 else ICMPV6_INVERSE).get(b)
            if inverse is None:
                return None       # tuple cannot be inverted: no entry, INVALID
            reply_key = (family, proto, dst, src, a, inverse, c)
        else:
            reply_key = (family, proto, dst, src, b, a, c)
        conn = Connection(key, reply_key, p.ts)
        exp = self._take_expectation(p) if proto == UDP else None
        if exp is not None:
            # "Welcome, Mr. Bond. We've been expecting you..."
            conn.expected = True
            conn.master = exp.master
        elif proto in (TCP, UDP):
            if p.helper_template is not None:
                conn.helper = p.helper_template
            elif self.auto_sip and p.dport in self.sip_ports:
                conn.helper = "sip"
        return conn

    def _take_expectation(self, p: PacketView) -> Expectation | None:
        exp = self.expectations.get((p.family, p.src, p.dst, p.dport))
        if exp is None:
            return None
        if p.ts >= exp.expires or not exp.master.confirmed or not exp.master.alive(p.ts):
            self.unexpect(exp)
            return None
        # The expectation is used up now, even if the filter then drops the packet.
        self.unexpect(exp)
        return exp

    def _track(self, conn: Connection, p: PacketView, reply: bool) -> str:
        proto = conn.proto
        now = p.ts
        if proto == TCP:
            return tcp_packet(conn, p, REPLY if reply else ORIGINAL, self.timeout)
        if proto in (UDP, UDPLITE):
            # nf_conntrack_udp_packet: "udp" until both directions were seen,
            # then "udp_stream" for traffic more than 2 s after the first packet.
            if not conn.confirmed:
                conn.stream_ts = now + 2.0
            if conn.seen_reply:
                extra = self.timeout("udp_stream") if now > conn.stream_ts else self.timeout("udp")
                if now > conn.stream_ts:
                    conn.assured = True
                conn.expires = now + extra
            else:
                conn.expires = now + self.timeout("udp")
            return "accept"
        if proto in (ICMP, ICMPV6):
            valid = ICMP_VALID_NEW if conn.family == 4 else ICMPV6_VALID_NEW
            if conn.key[5] not in valid:
                return "invalid"        # can't create a new ICMP "connection" with this type
            conn.expires = now + self.timeout("icmp" if proto == ICMP else "icmpv6")
            return "accept"
        conn.expires = now + self.timeout("generic")
        return "accept"

    # ---------------------------------------------------------------- confirm

    def confirm(self, p: PacketView) -> str:
        """nf_confirm for a packet accepted all along its path: run the helper,
        insert a new entry. Returns why the helper dropped the packet, or ""."""
        conn = p.conn
        if conn is None or p.ctinfo == "related-icmp":
            return ""
        if conn.helper == "sip" and not conn.dead:
            reason = self.sip.help(conn, p)
            if reason:
                return reason
        if not conn.confirmed and not conn.dead:
            conn.confirmed = True
            self.entries[conn.key] = (conn, False)
            self.entries[conn.reply_key] = (conn, True)
        return ""

    # ---------------------------------------------------------------- housekeeping

    def expect(self, exp: Expectation) -> None:
        self.expectations[exp.key] = exp
        exp.master.expectations.append(exp)

    def unexpect(self, exp: Expectation) -> None:
        if self.expectations.get(exp.key) is exp:
            del self.expectations[exp.key]
        if exp in exp.master.expectations:
            exp.master.expectations.remove(exp)

    def _destroy(self, conn: Connection) -> None:
        conn.dead = True
        for key in (conn.key, conn.reply_key):
            found = self.entries.get(key)
            if found is not None and found[0] is conn:
                del self.entries[key]
        # nf_ct_remove_expectations: a dying master takes its expectations along.
        for exp in list(conn.expectations):
            self.unexpect(exp)

    def sweep(self, now: float) -> None:
        """Forget expired entries and expectations (the kernel's gc worker)."""
        dead = {id(c): c for c, _ in self.entries.values() if not c.alive(now)}
        for conn in dead.values():
            self._destroy(conn)
        for exp in [e for e in self.expectations.values() if now >= e.expires]:
            self.unexpect(exp)

    def connections(self) -> list[Connection]:
        seen: dict[int, Connection] = {}
        for conn, _ in self.entries.values():
            seen[id(conn)] = conn
        return list(seen.values())
