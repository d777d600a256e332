"""The real Linux netfilter as the oracle: replay packet records through it, per-packet verdicts out.

Topology (``firewall: forward``), three throw-away namespaces::

    peer ns  [fwt0] <--veth--> [eth0] fw ns [eth1] <--veth--> [fwt0]  psap ns
              raw frames in/out   rules loaded here, forwards      raw frames in/out

The outer namespaces hold no address for the traffic (their kernels never
answer); Python injects each record's IP packet as an Ethernet frame on one
side and captures, with AF_PACKET, what leaves the other. The firewall
forwards IPv4 and IPv6 whatever the addresses: policy routing by input
interface sends everything that came in on one side out of the other,
through a gateway whose neighbour entry is static (no ARP, no ND).

After each packet an ARP request goes to the firewall from the same side and
the oracle waits for the answer. ARP is not IP (no iptables/nftables IP hook
sees it) and the backlog of one CPU is first in, first out, so when the
answer is back the packet has been fully handled: forwarded, dropped,
reassembled or refused. Verdicts are therefore per packet and in order, and
the next packet meets exactly the state the previous one left.

Endpoint profiles (``firewall: input|output``): the firewall namespace is
the endpoint. Packets from the peer side are delivered locally (a ``local``
route for everything coming in on that side) and a last-priority nftables
chain on the input hook logs each packet that got past every filter chain to
NFLOG, which the oracle reads: that is "accepted". Packets the endpoint
sends (direction ``out``) are written through a raw socket (IP_HDRINCL,
so they cross the output hook with the record's own addresses) and captured
on the peer side. The endpoint has no route back to the peers, so its own
stack never answers what it receives (no RST, no port unreachable that
conntrack would see); the price is that REJECT's answers cannot leave
either, so on an endpoint a reject shows as a drop (``rejects_visible`` is
False).

Time: the kernel sees the records back to back (about a millisecond apart),
not at their timestamps. Nothing times out inside one replay (conntrack
entries, SIP expectations, fragment queues), and rate limits see a burst.
Compare with the model on the same compressed timeline
(``compress_timeline``); differential tests keep to sequences whose meaning
does not depend on time. Conntrack timeouts the ruleset sets are written to
the firewall namespace's sysctls all the same.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import select
import socket
import struct
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from fwtest.engine.verdict import Verdict
from fwtest.errors import InputError
from fwtest.oracle import netns
from fwtest.oracle.match import Matcher, SentPackets, fragment_of
from fwtest.oracle.netlink import NetfilterSocket
from fwtest.oracle.netns import KernelError
from fwtest.rules.ir import Ruleset
from fwtest.traffic.record import PacketRecord

FIREWALLS = ("forward", "input", "output")
BACKENDS = ("auto", "iptables", "nft")
DIRECTIONS = ("in", "out")
DEFAULT_INTERFACES: Mapping[str, str] = {"peers": "eth0", "psap": "eth1"}

OUTER_IF = "fwt0"
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0003, 0x0800, 0x86DD, 0x0806
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23
MTU = 65535               # records are whatever size they were captured at; the link never cuts them
BARRIER_TIMEOUT = 2.0     # seconds to wait for the ARP answer that closes a step
SETTLE = 0.002            # after the last packet's barrier, anything still in flight

# Per side: the firewall's MAC and ARP address on that link, the outer end's MAC
# and the address the firewall routes through (a static neighbour, never asked).
SIDES = {
    "peers": {"fw_mac": "02:7e:57:00:01:01", "outer_mac": "02:7e:57:00:01:02",
              "fw_ip": "169.254.255.1", "gw_ip": "169.254.255.2", "fw_ip6": "fd5f:7e57::1",
              "table": 101},
    "psap": {"fw_mac": "02:7e:57:00:02:01", "outer_mac": "02:7e:57:00:02:02",
             "fw_ip": "169.254.255.5", "gw_ip": "169.254.255.6", "fw_ip6": "fd5f:7e57::5",
             "table": 102},
}
GW_IP6 = "fe80::2"
ANSWER_TABLE = 103        # routes for what the firewall itself sends back (REJECT's ICMP/RST)
HARNESS_NET4 = ipaddress.ip_network("169.254.255.0/29")
HARNESS_NET6 = ipaddress.ip_network("fd5f:7e57::/64")
OUT_MARK = 0x7E57         # marks the endpoint's injected packets (direction out) for routing
NFLOG_GROUP = 2911
OBSERVER_TABLE = "fwtest_oracle_observer"

# Conntrack timeout names (ir.DEFAULT_TIMEOUTS) -> the sysctls that hold them.
TIMEOUT_SYSCTLS = {
    "udp": ["net.netfilter.nf_conntrack_udp_timeout"],
    "udp_stream": ["net.netfilter.nf_conntrack_udp_timeout_stream"],
    "icmp": ["net.netfilter.nf_conntrack_icmp_timeout", "net.netfilter.nf_conntrack_icmpv6_timeout"],
    "generic": ["net.netfilter.nf_conntrack_generic_timeout"],
    "frag": ["net.ipv4.ipfrag_time", "net.netfilter.nf_conntrack_frag6_timeout"],
    **{f"tcp_{s}": [f"net.netfilter.nf_conntrack_tcp_timeout_{s}"]
       for s in ("syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
                 "time_wait", "close", "unacknowledged")},
}

REQUIRED_TOOLS = ("ip", "nft", "iptables-restore", "ip6tables-restore")


def kernel_unavailable() -> str | None:
    """Why the kernel oracle cannot run here (not Linux, not root, tools missing), else None."""
    import shutil
    import sys

    if not sys.platform.startswith("linux"):
        return "the kernel oracle needs Linux netfilter"
    if os.geteuid() != 0:
        return "the kernel oracle needs root (it creates network namespaces)"
    missing = [t for t in REQUIRED_TOOLS if not shutil.which(t)]
    if missing:
        return f"the kernel oracle needs {', '.join(missing)} (apt-get install iproute2 nftables iptables)"
    if not Path("/proc/self/ns/net").exists():
        return "the kernel has no network namespaces"
    return None


def compress_timeline(records: Sequence[PacketRecord], step: float = 0.001) -> list[PacketRecord]:
    """The records re-stamped ``step`` seconds apart from 0: the timeline the kernel oracle replays."""
    return [r._replace(ts=i * step) for i, r in enumerate(records)]


class KernelFirewall:
    """A real netfilter firewall in throw-away network namespaces (a context manager).

    The namespaces are always removed when the block ends, also on an error,
    on Ctrl-C and on SIGTERM (turned into KeyboardInterrupt meanwhile).
    ``load`` swaps the ruleset without rebuilding the namespaces; each
    ``replay`` starts from empty conntrack tables.
    """

    def __init__(self, ruleset: Ruleset, *, firewall: str = "forward",
                 interfaces: Mapping[str, str] = DEFAULT_INTERFACES,
                 sip_ports: Iterable[int] = (5060,), backend: str = "auto") -> None:
        if firewall not in FIREWALLS:
            raise InputError("<kernel>", 0, f"firewall must be one of {', '.join(FIREWALLS)}, not {firewall!r}")
        if backend not in BACKENDS:
            raise InputError("<kernel>", 0, f"kernel backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        ifaces = {**DEFAULT_INTERFACES, **dict(interfaces)}
        for side, name in ifaces.items():
            if side not in SIDES or not 1 <= len(name) <= 15 or "/" in name or name.strip() != name \
                    or name in ("lo", OUTER_IF):
                raise InputError("<kernel>", 0, f"bad interface name {name!r} for side {side!r}")
        if ifaces["peers"] == ifaces["psap"]:
            raise InputError("<kernel>", 0, "the peers and psap interfaces need different names")
        self.ruleset = ruleset
        self.firewall = firewall
        self.interfaces = ifaces
        self.sip_ports = tuple(sip_ports)
        self.backend = backend
        self.endpoint = firewall != "forward"
        self.native_hook = firewall
        self.tag: str | None = None
        self.namespaces: list[str] = []
        self._sockets: dict[str, socket.socket] = {}
        self._nfnl: NetfilterSocket | None = None
        self._raw: dict[int, socket.socket] = {}
        self._stateful = False
        self._loaded_stateful = False
        self._leftover_fragments: list = []
        self._answer_routes: dict[str, str] = {}

    @property
    def rejects_visible(self) -> bool:
        """Whether a REJECT can be told from a DROP (not on an endpoint: see the module doc)."""
        return not self.endpoint

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> KernelFirewall:
        reason = kernel_unavailable()
        if reason:
            raise KernelError(reason)
        self._signals = netns.cleanup_on_signals()
        self._signals.__enter__()
        try:
            netns.reap_orphans()
            self._build()
            atexit.register(self._destroy)
            self.load(self.ruleset)
        except BaseException:
            self._destroy()
            self._signals.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._destroy()
        finally:
            self._signals.__exit__(None, None, None)

    def _ns(self, role: str) -> str:
        assert self.tag is not None
        return f"{self.tag}-{role}"

    def _build(self) -> None:
        self.tag = netns.new_tag()
        roles = ["fw", "peer"] if self.endpoint else ["fw", "peer", "psap"]
        for role in roles:
            name = self._ns(role)
            self.namespaces.append(name)  # before creating: removed even if creation half fails
            netns.add_netns(name)
        fw = self._ns("fw")
        netns.write_sysctls(fw, {
            "net.ipv4.ip_forward": 0 if self.endpoint else 1,
            "net.ipv6.conf.all.forwarding": 0 if self.endpoint else 1,
            "net.ipv6.conf.default.forwarding": 0 if self.endpoint else 1,
            # Records carry any addresses: no reverse-path check, no redirects.
            "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv4.conf.all.send_redirects": 0, "net.ipv4.conf.default.send_redirects": 0,
            "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv6.conf.default.accept_ra": 0, "net.ipv6.conf.default.router_solicitations": 0,
            # REJECT answers every refused packet: no ICMP rate limit may swallow one.
            "net.ipv4.icmp_ratelimit": 0, "net.ipv6.icmp.ratelimit": 0,
            "net.ipv4.icmp_msgs_per_sec": 1000000, "net.ipv4.icmp_msgs_burst": 1000000,
        })
        outer = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
        sides = ["peers"] if self.endpoint else ["peers", "psap"]
        for side in sides:
            netns.write_sysctls(self._outer(side), outer)
        lines4 = ["link set lo up"]
        lines6 = []
        for side in sides:
            s, ifname = SIDES[side], self.interfaces[side]
            lines4 += [
                f"link add {ifname} address {s['fw_mac']} mtu {MTU} type veth peer name {OUTER_IF} "
                f"address {s['outer_mac']} mtu {MTU} netns {self._outer(side)}",
                f"link set {ifname} up",
                f"address add {s['fw_ip']}/32 dev {ifname}",
                f"address add {s['fw_ip6']}/128 dev {ifname} nodad",
                f"neigh replace {s['gw_ip']} lladdr {s['outer_mac']} dev {ifname} nud permanent",
                f"neigh replace {GW_IP6} lladdr {s['outer_mac']} dev {ifname} nud permanent",
                f"route add default via {s['gw_ip']} dev {ifname} onlink table {s['table']}",
                f"route add ::/0 via {GW_IP6} dev {ifname} table {s['table']}",
            ]
        if self.endpoint:
            peers_if = self.interfaces["peers"]
            lines4 += ["route add local 0.0.0.0/0 dev lo table 102",
                       "route add local ::/0 dev lo table 102",
                       f"rule add iif {peers_if} lookup 102 pref 1002",
                       f"rule add fwmark {OUT_MARK} lookup 101 pref 1001"]
            lines6 += [f"rule add iif {peers_if} lookup 102 pref 1002",
                       f"rule add fwmark {OUT_MARK} lookup 101 pref 1001"]
        else:
            for side, other in (("peers", "psap"), ("psap", "peers")):
                rule = f"rule add iif {self.interfaces[side]} lookup {SIDES[other]['table']} " \
                       f"pref {SIDES[other]['table'] + 900}"
                lines4.append(rule)
                lines6.append(rule)
            lines4.append(f"rule add iif lo lookup {ANSWER_TABLE} pref {ANSWER_TABLE + 900}")
            lines6.append(f"rule add iif lo lookup {ANSWER_TABLE} pref {ANSWER_TABLE + 900}")
        netns.ip_batch(lines4, netns=fw)
        netns.run(["ip", "-6", "-n", fw, "-batch", "-"], stdin="\n".join(lines6) + "\n")
        for side in sides:
            netns.ip_batch([f"link set {OUTER_IF} up"], netns=self._outer(side))
            self._sockets[side] = netns.inside(self._outer(side), _packet_socket)
        self._nfnl = netns.inside(fw, NetfilterSocket)
        if self.endpoint:
            self._nfnl.bind_nflog(NFLOG_GROUP)
            self._raw = netns.inside(fw, _raw_sockets)

    def _outer(self, side: str) -> str:
        return self._ns("peer" if side == "peers" else "psap")

    def _destroy(self) -> None:
        with netns.signals_deferred():
            self._close_and_delete()

    def _close_and_delete(self) -> None:
        for sock in [*self._sockets.values(), *self._raw.values()]:
            sock.close()
        self._sockets, self._raw = {}, {}
        if self._nfnl is not None:
            self._nfnl.close()
            self._nfnl = None
        # Sockets first: a namespace lives on while a socket made in it is open.
        for name in reversed(self.namespaces):
            netns.delete_netns(name)
        self.namespaces = []
        with contextlib.suppress(Exception):
            atexit.unregister(self._destroy)

    # --------------------------------------------------------------- rules

    def load(self, ruleset: Ruleset, *, backend: str | None = None,
             sip_ports: Iterable[int] | None = None) -> None:
        """Replace the firewall's ruleset (and its conntrack timeouts)."""
        if not self.namespaces:
            raise KernelError("the firewall namespaces are not up: use KernelFirewall as a context manager")
        if backend is not None:
            if backend not in BACKENDS:
                raise InputError("<kernel>", 0, f"kernel backend must be one of {', '.join(BACKENDS)}")
            self.backend = backend
        if sip_ports is not None:
            self.sip_ports = tuple(sip_ports)
        self.ruleset = ruleset
        steps = ruleset_scripts(ruleset, self.backend, native_hook=self.native_hook,
                                sip_ports=self.sip_ports)
        self.load_scripts(steps, where=ruleset.files[0] if ruleset.files else "<ruleset>",
                          stateful=uses_conntrack(ruleset))
        self.set_timeouts(ruleset)

    def load_scripts(self, steps: Sequence[tuple[list[str], str, str]], *, where: str = "<ruleset>",
                     stateful: bool) -> None:
        """Load rules given as text: (command, text, what) per step, as ``ruleset_scripts``
        makes them (``(["nft", "-f"], "table inet t {...}", "my script")``).
        ``stateful`` says whether the rules use conntrack (fragments are then
        reassembled before the rules, and matched as datagrams)."""
        fw = self._ns("fw")
        with tempfile.TemporaryDirectory(prefix="fwtest-oracle-") as tmp:
            argvs: list[tuple[list[str], str]] = [(["nft", "flush", "ruleset"], "")]
            for i, (argv, text, what) in enumerate(steps):
                path = Path(tmp) / f"{i}.rules"
                path.write_text(text)
                argvs.append(([*argv, str(path)], what))
            if self.endpoint:
                path = Path(tmp) / "observer.nft"
                path.write_text(_observer_script())
                argvs.append((["nft", "-f", str(path)], ""))
            for argv, what in argvs:
                done = netns.run(argv, netns=fw, check=False)
                if done.returncode != 0:
                    message = _first_error(done.stderr or done.stdout)
                    if what:
                        raise InputError(where, 0, f"the kernel refused the ruleset ({what}): {message}")
                    raise KernelError(f"{' '.join(argv)}: {message}")
        self._stateful = stateful
        if self._loaded_stateful and not self._stateful:
            _wait_for_hooks_released()
        self._loaded_stateful = self._stateful

    def set_timeouts(self, ruleset: Ruleset) -> None:
        """Write the ruleset's conntrack timeouts to the firewall namespace's sysctls."""
        values: dict[str, str | int] = {}
        for name, keys in TIMEOUT_SYSCTLS.items():
            for key in keys:
                values[key] = max(1, int(ruleset.conntrack.timeout(name)))
        netns.write_sysctls(self._ns("fw"), values)

    # -------------------------------------------------------------- replay

    def replay(self, records: Sequence[PacketRecord], directions: Sequence[str]) -> list[Verdict]:
        """Send the records through the firewall in order; one verdict per record.

        ``directions[i]`` is ``in`` (from the peer side towards the PSAP side)
        or ``out``. Conntrack starts empty. A packet is accepted when it (or,
        for a fragment, its datagram) leaves on the other side; rejected when
        an ICMP unreachable or TCP RST for it comes back; else dropped.
        """
        if not self._sockets:
            raise KernelError("the firewall namespaces are not up: use KernelFirewall as a context manager")
        if len(records) != len(directions):
            raise InputError("<kernel>", 0, f"{len(records)} records but {len(directions)} directions")
        for i, d in enumerate(directions):
            if d not in DIRECTIONS:
                raise InputError("<kernel>", 0, f"direction of record {i} is {d!r}, not 'in' or 'out'")
        for i, rec in enumerate(records):
            _check_addresses(i, rec)
        self._reset_state()
        if self.endpoint:
            in_side = ["peers" if d == "in" else "local" for d in directions]
            out_side = ["local" if d == "in" else "peers" for d in directions]
        else:
            in_side = ["peers" if d == "in" else "psap" for d in directions]
            out_side = ["psap" if d == "in" else "peers" for d in directions]
            self._route_answers(records, in_side)
        sent = SentPackets(records, in_side, out_side)
        own = frozenset((4, int(ipaddress.IPv4Address(s["fw_ip"]))) for s in SIDES.values()) | \
            frozenset((6, int(ipaddress.IPv6Address(s["fw_ip6"]))) for s in SIDES.values())
        matcher = Matcher(sent, own)
        self._drain_all()
        with _pinned_to_one_cpu():
            for i, rec in enumerate(records):
                self._send(rec, in_side[i])
                for side, ip in self._step_frames("peers" if in_side[i] == "local" else in_side[i]):
                    matcher.frame(i, side, ip)
            time.sleep(SETTLE)
            for side, ip in self._collect():
                matcher.frame(len(records) - 1, side, ip)
        if self._stateful:
            self._leftover_fragments = [([records[m].data for m in members], in_side[members[0]])
                                        for members in sent.incomplete]
        outcome = matcher.finish()
        if outcome.unexplained:
            sample = outcome.unexplained[0]
            raise KernelError(f"{len(outcome.unexplained)} frame(s) left the firewall that match no packet "
                              f"sent (first: {sample[:48].hex()}...): the oracle cannot vouch for its verdicts")
        verdicts = []
        for i, _rec in enumerate(records):
            if i in outcome.accepted:
                where = "delivered to the endpoint" if out_side[i] == "local" else \
                    f"left by {self._iface_of(out_side[i])}"
                verdicts.append(Verdict("accept", None, None, "unknown", (),
                                        f"kernel: {where}, {outcome.accepted[i]}"))
            elif i in outcome.rejected:
                verdicts.append(Verdict("reject", None, None, "unknown", (),
                                        f"kernel: refused with {outcome.rejected[i]}"))
            else:
                why = "dropped (or rejected: not visible on an endpoint)" if self.endpoint else "dropped"
                verdicts.append(Verdict("drop", None, None, "unknown", (), f"kernel: {why}"))
        return verdicts

    def _iface_of(self, side: str) -> str:
        return self.interfaces.get(side, side)

    def _reset_state(self) -> None:
        """Empty conntrack, and free the fragment queues an earlier replay left half full."""
        assert self._nfnl is not None
        leftovers, self._leftover_fragments = self._leftover_fragments, []
        for fragments, side in leftovers:
            self._complete_datagram(fragments, side)
        self._nfnl.flush_conntrack()
        if self.endpoint:
            self._nfnl.logged_packets()

    def _complete_datagram(self, fragments: list[bytes], side: str) -> None:
        """Free the kernel's queue for a datagram whose fragments never all arrived.

        The kernel keeps such a queue ipfrag_time seconds (30) and would glue a
        later datagram with the same addresses and id onto it. There is no
        command to flush fragment queues, so complete the datagram: send its
        fragments again (the kernel drops what it already holds as duplicates)
        and fill the holes with zeros; whether the queue was still there or not,
        it ends complete and is freed. The reassembled datagram may cross the
        rules; what it leaves in conntrack is flushed right after. Fragments
        that overlapped each other cannot be completed that way: the namespaces
        are rebuilt instead.
        """
        pieces = sorted((f.offset, f.offset + len(f.chunk), f.more, f)
                        for f in (fragment_of(b) for b in fragments) if f is not None)
        cursor, holes, last = 0, [], None
        for start, end, more, _frag in pieces:
            if start < cursor or (more and end % 8) or start % 8:
                self._rebuild()
                return
            if start > cursor:
                holes.append((cursor, start, True))
            cursor = end
            if not more:
                last = end
        if last is None:
            holes.append((cursor, cursor + 8, False))
        key, proto = pieces[0][3].key, pieces[0][3].proto
        packets = list(fragments) + [
            _fragment_packet(key[0], key[1], key[2], key[3], start, b"\0" * (end - start), more, proto)
            for start, end, more in holes]
        for packet in packets:
            if side == "local":
                self._send_local(packet, key[0], key[2])
                self._barrier("peers")
            else:
                self._sockets[side].send(_ethernet(side, packet))
                self._barrier(side)
        self._drain_all()

    def _rebuild(self) -> None:
        """New namespaces with the same ruleset: the only way to forget every kernel state."""
        ruleset = self.ruleset
        self._destroy()
        self._answer_routes = {}
        self._loaded_stateful = False
        self._build()
        atexit.register(self._destroy)
        self.load(ruleset)

    def _route_answers(self, records: Sequence[PacketRecord], in_side: Sequence[str]) -> None:
        """Routes for what the firewall sends itself (REJECT's ICMP error or RST): each
        sender's address goes back out of the side it came from."""
        sides_of: dict[tuple[int, int], set[str]] = {}
        for rec, side in zip(records, in_side, strict=True):
            sides_of.setdefault((rec.family, rec.src), set()).add(side)
        wanted: dict[str, str | None] = {}
        for (family, src), sides in sides_of.items():
            text = str(ipaddress.IPv4Address(src) if family == 4 else ipaddress.IPv6Address(src))
            # Seen on both sides: no answer route (a reject there would look like a drop).
            wanted[text] = sides.pop() if len(sides) == 1 else None
        lines = []
        for addr, side in wanted.items():
            if self._answer_routes.get(addr) == side:
                continue
            prefix = f"{addr}/{32 if ':' not in addr else 128}"
            if side is None:
                if addr in self._answer_routes:
                    lines.append(f"route del {prefix} table {ANSWER_TABLE}")
                    del self._answer_routes[addr]
                continue
            s, ifname = SIDES[side], self.interfaces[side]
            via = f"via {s['gw_ip']} dev {ifname} onlink" if ":" not in addr else f"via {GW_IP6} dev {ifname}"
            lines.append(f"route replace {prefix} {via} table {ANSWER_TABLE}")
            self._answer_routes[addr] = side
        if lines:
            netns.ip_batch(lines, netns=self._ns("fw"))

    # ------------------------------------------------------------- frames

    def _send(self, rec: PacketRecord, side: str) -> None:
        if side == "local":
            self._send_local(rec.data, rec.family, rec.dst)
        else:
            self._sockets[side].send(_ethernet(side, rec.data))

    def _send_local(self, data: bytes, family: int, dst: int) -> None:
        address = str(ipaddress.IPv4Address(dst) if family == 4 else ipaddress.IPv6Address(dst))
        # The output hook dropping it makes sendto(2) fail with EPERM; the capture says the same.
        with contextlib.suppress(PermissionError):
            self._raw[family].sendto(data, (address, 0))

    def _barrier(self, side: str) -> list[tuple[str, bytes]]:
        """Ask the firewall's ARP on ``side`` and wait for the answer; the frames seen meanwhile."""
        sock, s = self._sockets[side], SIDES[side]
        sock.send(_arp_request(s["outer_mac"], s["gw_ip"], s["fw_ip"]))
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + BARRIER_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KernelError(f"the firewall namespace stopped answering ARP on {self._iface_of(side)}")
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            frame = sock.recv(MTU + 64)
            kind = struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else -1
            if kind == ETH_P_ARP:
                if _is_arp_reply_from(frame, s["fw_ip"]):
                    return seen
                continue
            if kind in (ETH_P_IP, ETH_P_IPV6):
                seen.append((side, frame[14:]))

    def _step_frames(self, side: str) -> list[tuple[str, bytes]]:
        frames = self._barrier(side)
        frames += self._collect()
        return frames

    def _collect(self) -> list[tuple[str, bytes]]:
        frames: list[tuple[str, bytes]] = []
        for side, sock in self._sockets.items():
            while True:
                try:
                    frame = sock.recv(MTU + 64, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                kind = struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else -1
                if kind in (ETH_P_IP, ETH_P_IPV6):
                    frames.append((side, frame[14:]))
        if self.endpoint and self._nfnl is not None:
            frames += [("local", ip) for ip in self._nfnl.logged_packets()]
        return frames

    def _drain_all(self) -> None:
        self._collect()


def kernel_replay(ruleset: Ruleset, records: Sequence[PacketRecord], directions: Sequence[str], *,
                  firewall: str = "forward", interfaces: Mapping[str, str] = DEFAULT_INTERFACES,
                  sip_ports: Iterable[int] = (5060,), backend: str = "auto") -> list[Verdict]:
    """One-shot: build the namespaces, load ``ruleset``, replay, remove everything."""
    with KernelFirewall(ruleset, firewall=firewall, interfaces=interfaces, sip_ports=sip_ports,
                        backend=backend) as fw:
        return fw.replay(records, directions)


# ------------------------------------------------------------------ rules

def uses_conntrack(ruleset: Ruleset) -> bool:
    """Whether loading the ruleset turns conntrack (and so defragmentation) on."""
    if ruleset.conntrack.enabled:
        return True
    for rule in ruleset.rules():
        if rule.match.state is not None or rule.match.helper or rule.action.kind in ("ct_helper", "notrack"):
            return True
    return False


def ruleset_scripts(ruleset: Ruleset, backend: str, *, native_hook: str,
                    sip_ports: Sequence[int]) -> list[tuple[list[str], str, str]]:
    """How to load ``ruleset``: (command without the file, file text, what it is) per step.

    ``auto`` loads an imported ruleset from its own files, the artefact the
    user will deploy (iptables-save files with iptables-restore or
    ip6tables-restore, ``nft -j`` JSON with ``nft -j -f``), and exports a
    native YAML ruleset (to nft). An explicit backend other than the
    ruleset's own format exports the IR.
    """
    own = ruleset.format
    files = [f for f in ruleset.files if Path(f).is_file()]
    if backend == "auto":
        backend = own if own in ("iptables", "nft") else "nft"
    if backend == own == "iptables" and files:
        return _iptables_files(files, ruleset)
    if backend == own == "nft" and files:
        return [(["nft", "-j", "-f"], Path(f).read_text(encoding="utf-8"), f"nft -j -f {f}") for f in files]
    from fwtest.rules import export

    if backend == "nft":
        return [(["nft", "-f"], export.to_nft(ruleset, native_hook=native_hook, sip_ports=sip_ports),
                 "nft -f (exported)")]
    texts = export.to_iptables(ruleset, native_hook=native_hook, sip_ports=sip_ports)
    return [(["ip6tables-restore" if fam == 6 else "iptables-restore"], text,
             f"{'ip6tables' if fam == 6 else 'iptables'}-restore (exported)")
            for fam, text in sorted(texts.items())]


def _iptables_files(files: Sequence[str], ruleset: Ruleset) -> list[tuple[list[str], str, str]]:
    """Each iptables-save file into the tool of its family; a file that fits both
    (the loader's family None) into both, as people load one such file."""
    family_of = {b.source.file: b.family for b in ruleset.bases}
    claimed = {family_of.get(f) for f in files} - {None}
    steps = []
    for f in files:
        family = family_of.get(f)
        families = [family] if family else [4, 6]
        for fam in families:
            if family is None and fam in claimed:
                other = next(g for g in files if family_of.get(g) == fam)
                raise InputError(f, 0, f"this file fits both iptables and ip6tables, and {other} is the "
                                       f"IPv{fam} one: the kernel cannot load both into one table; say which "
                                       "family it is for (a '# Generated by iptables-save' header, or name "
                                       "it rules.v4)")
            tool = "ip6tables-restore" if fam == 6 else "iptables-restore"
            steps.append(([tool], Path(f).read_text(encoding="utf-8"), f"{tool} {f}"))
    return steps


def _observer_script() -> str:
    # Runs after every filter chain on the input hook (the highest priority
    # there is): a packet that reaches it was accepted by them all.
    return (f"table inet {OBSERVER_TABLE} {{\n"
            f"  chain accepted {{\n"
            f"    type filter hook input priority 2147483647; policy accept;\n"
            f"    log group {NFLOG_GROUP} queue-threshold 1\n"
            f"  }}\n"
            f"}}\n")


def _first_error(text: str) -> str:
    """The tool's complaint in one line: its first lines, without the usage hint."""
    lines = [ln.strip() for ln in text.strip().splitlines()
             if ln.strip() and not ln.strip().startswith("Try `")]
    return "; ".join(lines[:3]) or "(no message)"


def _wait_for_hooks_released() -> None:
    # nf_tables frees the rules of a flushed ruleset (and with them the
    # conntrack and defragmentation hooks they held) from a work queue, after
    # the command returned. Give it a moment before stateless traffic, whose
    # fragments must not meet a defragmenter.
    time.sleep(0.02)


# ----------------------------------------------------------------- frames

def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


_ETHERNET = {(side, version): _mac(s["fw_mac"]) + _mac(s["outer_mac"])
             + struct.pack("!H", ETH_P_IP if version == 4 else ETH_P_IPV6)
             for side, s in SIDES.items() for version in (4, 6)}


def _ethernet(side: str, ip: bytes) -> bytes:
    """The frame the outer end of ``side`` sends to the firewall."""
    return _ETHERNET[(side, ip[0] >> 4)] + ip


def _arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    sha = _mac(src_mac)
    return (b"\xff" * 6 + sha + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + sha + socket.inet_aton(src_ip)
            + b"\0" * 6 + socket.inet_aton(target_ip))


def _is_arp_reply_from(frame: bytes, ip: str) -> bool:
    return len(frame) >= 42 and struct.unpack_from("!H", frame, 20)[0] == 2 \
        and frame[28:32] == socket.inet_aton(ip)


def _fragment_packet(family: int, src: int, dst: int, ident: int, offset: int, payload: bytes,
                     more: bool, proto: int) -> bytes:
    """A bare fragment with the given key and place (for completing a stale datagram)."""
    if family == 4:
        header = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(payload), ident,
                             (0x2000 if more else 0) | (offset // 8), 64, proto, 0, src, dst)
        return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + payload
    frag = struct.pack("!BBHI", proto, 0, offset | int(more), ident)
    return (struct.pack("!IHBB", 0x60000000, len(frag) + len(payload), 44, 64)
            + src.to_bytes(16, "big") + dst.to_bytes(16, "big") + frag + payload)


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


_RESERVED = {4: (int(HARNESS_NET4.network_address), int(HARNESS_NET4.broadcast_address)),
             6: (int(HARNESS_NET6.network_address), int(HARNESS_NET6.broadcast_address))}


def _check_addresses(index: int, rec: PacketRecord) -> None:
    first, last = _RESERVED[rec.family]
    for which, addr in (("src", rec.src), ("dst", rec.dst)):
        if first <= addr <= last:
            raise InputError("<records>", 0, f"record {index} uses {rec.addr(which)}, which the kernel "
                             f"oracle reserves for itself ({HARNESS_NET4}, {HARNESS_NET6})")
    if rec.frag and fragment_of(rec.data) is None:
        raise InputError("<records>", 0, f"record {index} is marked as a fragment but has no fragment header")


def _packet_socket() -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
    with contextlib.suppress(OSError):  # Linux >= 4.20: do not read back our own frames
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((OUTER_IF, ETH_P_ALL))
    return sock


def _raw_sockets() -> dict[int, socket.socket]:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for sock in (v4, v6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, OUT_MARK)
    return {4: v4, 6: v6}


@contextlib.contextmanager
def _pinned_to_one_cpu():
    """Keep this thread on one CPU while it sends: each CPU's backlog is FIFO, so the
    ARP barrier is answered only after the packet sent before it (see module doc)."""
    try:
        saved = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        yield
        return
    os.sched_setaffinity(0, {min(saved)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)
