"""The profile as packet classes: every packet the emergency path needs, generalised.

The synthesiser writes concrete calls (a few hosts, a few media ports); the
proof needs *every* packet those calls stand for. Each synthesised packet is
read for its role and widened along the dimensions the profile leaves open:

* addresses: the sender's side (every prefix of that family) to the receiver's;
* the port of the side that opens a SIP or MSRP connection: any (1-65535),
  the listening port stays the profile's SIP/MSRP port;
* RTP/RTCP: the whole media range of each side, RTP on even ports and RTCP
  on odd ones (RFC 3550 11: RTCP = RTP + 1);
* the conntrack state the filter sees, from a replay of the flow's timeline
  through a model of connection tracking: NEW for a connection's first
  packet, ESTABLISHED once the other side has answered, RELATED for media the
  SIP helper expects, NEW again when the entry timed out during the call's
  signalling silence (``note`` says so), ``untracked`` without conntrack;
* fragments: without conntrack the rules see each fragment (first: with
  ports; later: without); with conntrack they see the reassembled datagram.

A class keeps its template: the concrete packet (payload included) the
synthesiser built for it. ``string``/``sip`` matches are decided on it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fwtest.engine.packet import later_fragment_ports
from fwtest.profile import EmergencyProfile, Network
from fwtest.rules.ir import PORT_PROTOCOLS, TCP, UDP, Ruleset
from fwtest.space.header import HeaderSpace, ProofError
from fwtest.traffic.callflow import CallFlow, FlowStep
from fwtest.traffic.record import (
    FIRST_FRAGMENT,
    LATER_FRAGMENT,
    NOT_FRAGMENT,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    PacketRecord,
    parse_ip,
)

ANY_PORT = (1, 65535, None)
SIP_TIMEOUT = 3600        # nf_conntrack_sip sip_timeout: the helper refreshes its master entry to this
UDP_STREAM_AFTER = 2.0    # nf_conntrack_proto_udp: "still active after two seconds? Extend timeout"
MEDIA_LABELS = ("RTP", "RTCP")

PortSpec = tuple[int, int, int | None]   # first, last, parity (0 even, 1 odd, None all)


@dataclass(frozen=True)
class PacketClass:
    """One kind of packet a profile flow needs, over all the hosts and ports it may use."""

    flow: str                       # emergency-call, callback, options-keepalive, text
    transport: str                  # udp | tcp | tls (the SIP transport of the flow)
    family: int
    label: str                      # "INVITE", "200 OK (INVITE)", "RTP peer->psap", "SYN"
    direction: str                  # in (peer side -> PSAP side) | out
    phase: str
    path: str                       # forward | input | output: the filtering hook it crosses
    states: tuple[str, ...]         # conntrack states the rules may see it in (each must pass)
    frag: str                       # none | first | later
    proto: int
    src: tuple[Network, ...]
    dst: tuple[Network, ...]
    sport: PortSpec | None          # None: the packet has no ports (a later fragment)
    dport: PortSpec | None
    flags: int | None               # TCP flags (None unless a TCP header is seen)
    iface_in: str | None
    iface_out: str | None
    template: PacketRecord = field(compare=False, repr=False)
    helper: str | None = None       # helper of the master connection that expected this one ("sip"):
                                    # what a `helper` match tests (xt_helper looks at the master)
    note: str = ""                  # why the state is what it is, when it is surprising

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.flow, self.transport, self.family, self.label)

    @property
    def side_label(self) -> str:
        return f"{self.flow}/{self.transport}/IPv{self.family}: {self.label}"

    def region(self, space: HeaderSpace, *, states: Iterable[str] | None = None) -> Any:
        """The class as a set of packet headers."""
        sp = space
        u = sp.family(self.family) & sp.eq("proto", self.proto)
        u &= _nets(sp, "src", self.src, self.family) & _nets(sp, "dst", self.dst, self.family)
        u &= _port(sp, "sport", self.sport) & _port(sp, "dport", self.dport)
        if self.flags is not None:
            u &= sp.eq("flags", self.flags)
        st = sp.false
        for s in (self.states if states is None else states):
            st |= sp.state(s)
        u &= st & sp.eq("frag", {"none": NOT_FRAGMENT, "first": FIRST_FRAGMENT, "later": LATER_FRAGMENT}
                        [self.frag])
        u &= sp.iface("iif", self.iface_in) & sp.iface("oif", self.iface_out)
        return u & sp.domain

    def hints(self) -> dict[str, int]:
        """The template's field values (witnesses prefer them when they lie in a region)."""
        t = self.template
        out = {"src": t.src, "dst": t.dst}
        if t.has_ports:
            out["sport"], out["dport"] = t.sport, t.dport
        elif t.frag == LATER_FRAGMENT and t.proto in PORT_PROTOCOLS:
            out["sport"], out["dport"] = later_fragment_ports(t)
        return out


def _nets(space: HeaderSpace, fld: str, nets: Sequence[Network], family: int) -> Any:
    u = space.false
    for n in nets:
        if n.version == family:
            u |= space.range(fld, int(n.network_address), int(n.broadcast_address))
    return u


def _port(space: HeaderSpace, fld: str, spec: PortSpec | None) -> Any:
    if spec is None:
        return space.eq(fld, 0) & ~space.has_ports()
    lo, hi, parity = spec
    u = space.range(fld, lo, hi)
    if parity is not None:
        u &= space.bdd.var(space.vars[fld][-1]) if parity else ~space.bdd.var(space.vars[fld][-1])
    return u


# ---------------------------------------------------------------- reassembly

def reassemble(fragments: Sequence[PacketRecord]) -> PacketRecord:
    """The datagram conntrack's defragmentation hands to the rules (nf_defrag_ipv4/ipv6)."""
    first = next((f for f in fragments if f.frag == FIRST_FRAGMENT), None)
    if first is None:
        raise ProofError("a fragmented datagram without its first fragment in the synthetic flow")
    parts = sorted(fragments, key=lambda f: f.frag_offset)
    data = b"".join(f.data[f.l4_offset:] for f in parts)
    last = parts[-1]
    if first.family == 4:
        ihl = (first.data[0] & 0x0F) * 4
        header = bytearray(first.data[:ihl])
        struct.pack_into("!H", header, 2, ihl + len(data))
        struct.pack_into("!H", header, 6, 0)          # no MF, offset 0
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, _ip_checksum(bytes(header)))
        whole = bytes(header) + data
    else:
        # The synthesiser's IPv6 fragments carry no other extension header:
        # fixed header (next header = Fragment), Fragment header, data.
        if first.data[6] != 44 or first.l4_offset != 48:
            raise ProofError("IPv6 fragment with extension headers before the Fragment header")
        header = bytearray(first.data[:40])
        header[6] = first.data[40]                     # the Fragment header's next header
        struct.pack_into("!H", header, 4, len(data))
        whole = bytes(header) + data
    return parse_ip(whole, last.ts, first.iface_in, first.iface_out)


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# ---------------------------------------------------------------- conntrack model

@dataclass
class _Conn:
    origin: tuple[int, int, int, int]      # src, sport, dst, dport of the first packet
    proto: int
    created: float
    last: float
    expected: bool                         # created from a SIP helper expectation (RELATED)
    helper: str | None
    seen_reply: bool = False
    established: bool = False              # TCP handshake done
    closing: bool = False
    timeout: float = 0.0
    senders: set = field(default_factory=set)


def _ct_timeout(ruleset: Ruleset, conn: _Conn, record: PacketRecord) -> float:
    """The timeout the kernel sets on ``conn`` after ``record`` (seconds)."""
    ct = ruleset.conntrack
    if conn.proto == UDP:
        if conn.helper == "sip" and record.payload:
            return float(SIP_TIMEOUT)   # sip_help_udp: nf_ct_refresh(ct, skb, sip_timeout * HZ)
        if conn.seen_reply and record.ts > conn.created + UDP_STREAM_AFTER:
            return float(ct.timeout("udp_stream"))
        return float(ct.timeout("udp"))
    if conn.proto == TCP:
        if conn.closing:
            return float(ct.timeout("tcp_fin_wait"))
        if not conn.established:
            return float(ct.timeout("tcp_syn_sent" if not conn.seen_reply else "tcp_syn_recv"))
        if conn.helper == "sip" and record.payload:
            return float(SIP_TIMEOUT)   # sip_help_tcp refreshes established entries carrying data
        return float(ct.timeout("tcp_established"))
    return float(ct.timeout("generic"))


def _conn_key(r: PacketRecord) -> tuple:
    a, b = (r.src, r.sport), (r.dst, r.dport)
    return (r.family, r.proto, min(a, b), max(a, b))


# ---------------------------------------------------------------- classes

@dataclass
class _Unit:
    """What the rules see as one packet: a record, or a reassembled datagram."""

    record: PacketRecord
    step: FlowStep
    frag: str


def reassembled_before_rules(stateful: bool, path: str, family: int) -> bool:
    """Do the filtering rules see a fragmented datagram whole? As the engine's pipeline:
    conntrack reassembles first (nf_defrag); without it, IPv4 to the box itself is
    reassembled before INPUT (ip_local_deliver), and the box's own datagrams are
    fragmented only after POSTROUTING; forwarded fragments go through one by one."""
    if stateful or path == "output":
        return True
    return path == "input" and family == 4


def _units(flow: CallFlow, stateful: bool, hooks: dict[str, str]) -> list[_Unit]:
    out: list[_Unit] = []
    pending: dict[tuple, list[tuple[FlowStep, PacketRecord]]] = {}
    for step in flow.steps:
        r = step.record
        if r.frag == NOT_FRAGMENT:
            out.append(_Unit(r, step, "none"))
            continue
        if not reassembled_before_rules(stateful, hooks[step.direction], r.family):
            out.append(_Unit(r, step, "first" if r.frag == FIRST_FRAGMENT else "later"))
            continue
        key = (r.family, r.src, r.dst, r.proto, r.frag_id)
        pending.setdefault(key, []).append((step, r))
        if not r.more_fragments:
            parts = pending.pop(key)
            first_step = next(s for s, p in parts if p.frag == FIRST_FRAGMENT)
            out.append(_Unit(reassemble([p for _, p in parts]), first_step, "none"))
    if pending:
        raise ProofError(f"{flow.flow}/{flow.transport}: a fragmented datagram never completes")
    return out


def helper_ports(profile: EmergencyProfile, ruleset: Ruleset) -> frozenset[tuple[int, int]]:
    """(protocol, port) pairs the configured SIP helper watches: the cleartext SIP ports."""
    if "sip" not in ruleset.conntrack.helpers or not ruleset.conntrack.enabled:
        return frozenset()
    out = set()
    for transport, port in profile.sip.items():
        if transport == "udp":
            out.add((UDP, port))
        elif transport == "tcp":
            out.add((TCP, port))
    return frozenset(out)


OUT_OF_DIALOG = frozenset({"INVITE", "OPTIONS", "MESSAGE", "REGISTER", "SUBSCRIBE", "NOTIFY"})


@dataclass(frozen=True)
class Timeline:
    """What one call (or the whole surge) brings, in time order, as the rules see it.

    A token bucket runs dry or not depending on when packets come, which no
    set of headers says: the proof judges rate limits on these timelines.
    Each packet is (time, index into ``ProfileClasses.every``, direction,
    sport, dport); the ports are the ones a hashlimit keyed on ports reads.
    """

    flow: str
    transport: str
    family: int
    instance: str
    packets: tuple[tuple[float, int, str, int, int], ...]


@dataclass(frozen=True)
class ProfileClasses:
    """The profile's flows classified: what the proof judges, and when it arrives."""

    classes: list[PacketClass]      # every class of the profile's flows (surge calls are emergency calls)
    every: list[PacketClass]        # those and the surge calls' own classes (flow "surge")
    timelines: list[Timeline]       # each flow instance alone, then the whole surge as one


def profile_classes(profile: EmergencyProfile, ruleset: Ruleset, flows: Sequence[CallFlow], *,
                    helper_of: Callable[[PacketClass], str | None] | None = None) -> list[PacketClass]:
    """The packet classes of every profile flow, as ``ruleset``'s conntrack sees them."""
    return classify_profile(profile, ruleset, flows, helper_of=helper_of).classes


def classify_profile(profile: EmergencyProfile, ruleset: Ruleset, flows: Sequence[CallFlow], *,
                     helper_of: Callable[[PacketClass], str | None] | None = None) -> ProfileClasses:
    """Every packet of ``flows`` (the synthesiser's flows for ``profile``) as a packet class,
    as ``ruleset``'s conntrack sees it, and each flow instance as a timeline of classes.

    ``helper_of``, when given, says which helper ct-helper rules attach to a
    connection opened by a packet of the given class: "sip", None, or
    "maybe" when the rules cover only part of the class.
    """
    stateful = ruleset.conntrack.enabled
    hooks = profile.hooks()
    watched = helper_ports(profile, ruleset)
    memo: dict[tuple, PacketClass] = {}
    index: dict[PacketClass, int] = {}
    by_object: dict[int, int] = {}          # id() of the memo's classes (alive in memo) -> index
    every: list[PacketClass] = []
    timelines: list[Timeline] = []
    surge: list[tuple[float, int, str, int, int]] = []
    surge_flow: CallFlow | None = None
    for flow in flows:
        conns: dict[tuple, _Conn] = {}
        call = {"helper": None, "maybe": False}
        packets = []
        for unit in _units(flow, stateful, hooks):
            cls = _classify(profile, ruleset, flow, unit, conns, call, stateful, watched, helper_of, hooks,
                            memo)
            i = by_object.get(id(cls))      # the memo hands out one object per key: cheap to look up
            if i is None:
                i = index.get(cls)           # equal classes made under other keys are one class
                if i is None:
                    i = index[cls] = len(every)
                    every.append(cls)
                by_object[id(cls)] = i
            r = unit.record
            sport, dport = (later_fragment_ports(r) if unit.frag == "later" and r.proto in PORT_PROTOCOLS
                            else (r.sport, r.dport))
            packets.append((r.ts, i, unit.step.direction, sport, dport))
        if flow.flow == "surge":
            surge.extend(packets)
            surge_flow = flow
        else:
            timelines.append(Timeline(flow.flow, flow.transport, flow.family, flow.instance, tuple(packets)))
    if surge_flow is not None:
        surge.sort(key=lambda packet: packet[0])
        timelines.append(Timeline("surge", surge_flow.transport, surge_flow.family, "every surge call",
                                  tuple(surge)))
    return ProfileClasses([c for c in every if c.flow != "surge"], every, timelines)


def _classify(profile: EmergencyProfile, ruleset: Ruleset, flow: CallFlow, unit: _Unit,
              conns: dict[tuple, _Conn], call: dict, stateful: bool,
              watched: frozenset[tuple[int, int]], helper_of: Any, hooks: dict[str, str],
              memo: dict[tuple, PacketClass]) -> PacketClass:
    r, label = unit.record, unit.step.label
    media = label in MEDIA_LABELS
    datagram = ("fragment", r.family, r.src, r.dst, r.proto, r.frag_id)
    if unit.frag == "later":
        # A later fragment has no ports: it belongs to its first fragment's connection.
        key = conns.get(datagram)  # type: ignore[assignment]
        if key is None:
            raise ProofError(f"{flow.flow}/{flow.transport}: a later fragment before its first fragment")
    else:
        key = _conn_key(r)
        if unit.frag == "first":
            conns[datagram] = key  # type: ignore[assignment]
    conn = conns.get(key)
    note = ""
    if conn is not None and stateful and r.ts - conn.last > conn.timeout:
        note = (f"the conntrack entry expired: {r.ts - conn.last:.0f} s of silence on this connection "
                f"against a timeout of {conn.timeout:.0f} s ({_timeout_name(conn)}), so the rules "
                "see a new connection")
        conn = None
    if conn is not None and r.proto == UDP and label in OUT_OF_DIALOG \
            and (r.src, r.sport) != conn.origin[:2]:
        # SIP over UDP runs 5060 <-> 5060: a request that opens a transaction
        # from the other side may find the entry the first side made, or not
        # (it expired, or this side spoke first): the path must take it as NEW.
        conn = None
    opener = conn is None
    from_origin = opener or (r.src, r.sport) == conn.origin[:2]
    sender = (r.src, r.sport)
    # Symmetric RTP (RFC 4961) shares one 5-tuple both ways: whichever side
    # speaks first opens the entry. The path must not depend on who that is,
    # so the first packet from each side is judged as an opener.
    media_opener = media and conn is not None and sender not in conn.senders

    def made(states: tuple[str, ...], helper: str | None) -> PacketClass:
        # Everything the class depends on. The ports as generalised, not the label: the
        # SYN of a text call's MSRP connection and the SYN of its SIP connection share a
        # label, and once shared a class (the MSRP port went unjudged over TCP and TLS).
        ports = (_generalise_ports(profile, flow.transport, r, unit.step.direction, media, from_origin)
                 if r.has_ports else None)
        mkey = (flow.flow, flow.transport, unit.step.direction, unit.step.phase, label, unit.frag, r.proto,
                r.tcp_flags, r.family, ports, from_origin, states, helper, note,
                # each later fragment's pseudo-ports are its own bytes: one class per value
                later_fragment_ports(r) if unit.frag == "later" and r.proto in PORT_PROTOCOLS else None)
        got = memo.get(mkey)
        if got is None:
            got = _make_class(profile, flow, unit, states, note, helper, hooks, from_origin)
            memo[mkey] = got
        return got

    if not stateful:
        if opener:
            conns[key] = _Conn((r.src, r.sport, r.dst, r.dport), r.proto, r.ts, r.ts, False, None)
        return made(("untracked",), None)
    if opener:
        helper: str | None = None
        maybe = False
        if not media:
            if (r.proto, r.dport) in watched:
                helper = "sip"
            elif helper_of is not None:
                got = helper_of(made(("new",), None))
                maybe = got == "maybe"
                helper = None if maybe else got
            if r.dport != profile.msrp:
                call["helper"] = call["helper"] or helper
                call["maybe"] = call["maybe"] or maybe
        # Media the helper read in SDP arrives as RELATED (nf_conntrack_sip
        # expectations); a helper-less call's media opens NEW connections.
        # TLS hides the SDP from the helper, so TLS calls never get one.
        expected = media and call["helper"] == "sip"
        conn = _Conn((r.src, r.sport, r.dst, r.dport), r.proto, r.ts, r.ts, expected,
                     None if media else helper)
        conns[key] = conn
        if media and call["maybe"] and not expected:
            states: tuple[str, ...] = ("new", "related")
        else:
            states = ("related",) if expected else ("new",)
    elif media_opener:
        conn.seen_reply = True
        if call["maybe"] and not conn.expected:
            states = ("new", "related")
        else:
            states = ("related",) if conn.expected else ("new",)
    else:
        if not from_origin:
            conn.seen_reply = True
        expected_state = "related" if conn.expected else "new"
        states = ("established",) if conn.seen_reply else (expected_state,)
    if r.proto == TCP:
        flags = r.tcp_flags
        if conn.seen_reply and flags & TCP_ACK and not flags & TCP_SYN:
            conn.established = True
        if flags & (TCP_FIN | TCP_RST):
            conn.closing = True
    conn.senders.add(sender)
    conn.last = r.ts
    conn.timeout = _ct_timeout(ruleset, conn, r)
    return made(states, "sip" if conn.expected else None)


def _timeout_name(conn: _Conn) -> str:
    if conn.helper == "sip":
        return "nf_conntrack_sip sip_timeout"
    if conn.proto == UDP:
        return "udp_stream" if conn.seen_reply else "udp"
    if conn.proto == TCP:
        return "tcp_established" if conn.established else "tcp handshake"
    return "generic"


def _make_class(profile: EmergencyProfile, flow: CallFlow, unit: _Unit, states: tuple[str, ...],
                note: str, helper: str | None, hooks: dict[str, str], from_origin: bool) -> PacketClass:
    r, step = unit.record, unit.step
    direction = step.direction
    src_side, dst_side = ("peers", "psap") if direction == "in" else ("psap", "peers")
    src_nets = profile.networks(src_side, r.family)
    dst_nets = profile.networks(dst_side, r.family)
    if not any(ipaddress.ip_address(_addr(r.src, r.family)) in n for n in src_nets) or \
            not any(ipaddress.ip_address(_addr(r.dst, r.family)) in n for n in dst_nets):
        raise ProofError(f"synthetic packet {r.short()} ({step.label}) is not {src_side} -> {dst_side}")
    media = step.label in MEDIA_LABELS
    label = step.label
    if media:
        label = f"{step.label} {'peer->psap' if direction == 'in' else 'psap->peer'}"
    if unit.frag != "none":
        label = f"{label} ({unit.frag} fragment)"
    sport = dport = None
    if r.has_ports:
        sport, dport = _generalise_ports(profile, flow.transport, r, direction, media, from_origin)
    elif r.frag == LATER_FRAGMENT and r.proto in PORT_PROTOCOLS:
        # The bytes nf_tables reads as this fragment's ports come from the
        # message (IPv4) or the IPv6 header: decided on the profile's own
        # packet, like string and sip matches.
        pseudo_sport, pseudo_dport = later_fragment_ports(r)
        sport, dport = (pseudo_sport, pseudo_sport, None), (pseudo_dport, pseudo_dport, None)
    flags = r.tcp_flags if r.proto == TCP and r.frag != LATER_FRAGMENT else None
    return PacketClass(
        flow=flow.flow, transport=flow.transport, family=r.family, label=label, direction=direction,
        phase=step.phase, path=hooks[direction], states=states, frag=unit.frag, proto=r.proto,
        src=src_nets, dst=dst_nets, sport=sport, dport=dport, flags=flags,
        iface_in=r.iface_in, iface_out=r.iface_out, template=r, helper=helper, note=note)


def _addr(value: int, family: int) -> str:
    return str(ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value))


def _generalise_ports(profile: EmergencyProfile, transport: str, r: PacketRecord, direction: str,
                      media: bool, from_origin: bool) -> tuple[PortSpec, PortSpec]:
    src_side = "peers" if direction == "in" else "psap"

    def media_range(side: str, port: int) -> PortSpec:
        lo, hi = profile.rtp_peers if side == "peers" else profile.rtp_psap
        if not lo <= port <= hi:
            raise ProofError(f"media port {port} outside the profile's {side} RTP range {lo}-{hi}")
        return (lo, hi, port & 1)

    if media:
        dst_side = "psap" if src_side == "peers" else "peers"
        return media_range(src_side, r.sport), media_range(dst_side, r.dport)
    services = {profile.sip[transport], profile.msrp}
    # The side that opened the connection talks from any port to the listening
    # service port; the listener answers from that port to any port.
    if from_origin and r.dport in services:
        return ANY_PORT, (r.dport, r.dport, None)
    if not from_origin and r.sport in services:
        return (r.sport, r.sport, None), ANY_PORT
    return (r.sport, r.sport, None), (r.dport, r.dport, None)


