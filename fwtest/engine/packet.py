"""The engine's view of one packet on its way through the hooks.

A ``PacketView`` is made once per packet (or per reassembled datagram) from a
``PacketRecord``: plain attributes the compiled matches read, plus what the
walk learns on the way (the conntrack state, the connection, the interfaces
the current hook knows). The SIP message in the payload is parsed lazily, at
most once, and only if a rule or the SIP helper asks for it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from fwtest.rules.ir import PORT_PROTOCOLS
from fwtest.traffic.record import LATER_FRAGMENT, PacketRecord
from fwtest.traffic.sipmsg import SipMessage, parse_sip

if TYPE_CHECKING:
    from fwtest.engine.conntrack import Connection

# Interfaces a hook knows (netfilter's state->in / state->out): the output
# device is unknown before routing, the input device does not exist for
# locally generated packets.
HOOK_SEES_IN = {"prerouting": True, "input": True, "forward": True, "output": False, "postrouting": False}
HOOK_SEES_OUT = {"prerouting": False, "input": False, "forward": True, "output": True, "postrouting": True}


def later_fragment_ports(record: PacketRecord) -> tuple[int, int]:
    """The "ports" nf_tables reads from a non-first fragment.

    nf_tables (and iptables-nft, which compiles ``-p udp --dport`` to the
    same payload loads) evaluates transport-header matches on non-first
    fragments at the transport offset it computed: for IPv4 just after the
    IP header, i.e. the fragment's first data bytes; for IPv6,
    ipv6_find_hdr() returns early on a non-first fragment and leaves the
    offset at 0, so the "ports" are the first four bytes of the IPv6 header
    (sport 0x6000 | traffic class, dport the low half of the flow label).
    Legacy xt_tcpudp never matches fragments; the kernel here runs
    nf_tables. Found by the kernel oracle: tests/oracle/test_regressions.py.
    """
    offset = record.l4_offset if record.family == 4 else 0
    if len(record.data) < offset + 4:
        return -1, -1
    return struct.unpack_from("!HH", record.data, offset)


class PacketView:
    __slots__ = (
        "record", "ts", "family", "src", "dst", "proto", "sport", "dport", "tcp_flags", "frag",
        "data", "payload_offset", "iface_in", "iface_out", "hook",
        "state", "conn", "reply", "ctinfo", "looked_up", "notrack", "helper_template",
        "_sip", "_sip_parsed",
    )

    def __init__(self, record: PacketRecord, state: str) -> None:
        self.record = record
        self.ts = record.ts
        self.family = record.family
        self.src = record.src
        self.dst = record.dst
        self.proto = record.proto
        self.sport = record.sport
        self.dport = record.dport
        if record.frag == LATER_FRAGMENT and record.proto in PORT_PROTOCOLS:
            self.sport, self.dport = later_fragment_ports(record)
        self.tcp_flags = record.tcp_flags
        self.frag = record.frag
        self.data = record.data
        self.payload_offset = record.payload_offset
        self.iface_in = record.iface_in
        self.iface_out = record.iface_out
        self.hook = ""
        # Before the conntrack lookup a packet has no entry; the kernel's ct
        # match then reports INVALID (xt_conntrack.c, nft_ct.c: no ct and not
        # IP_CT_UNTRACKED). Without conntrack the caller passes "untracked".
        self.state = state
        self.conn: Connection | None = None
        self.reply = False           # the packet travels in the connection's reply direction
        self.ctinfo = ""             # new, established, related (direction in self.reply)
        self.looked_up = False
        self.notrack = False
        self.helper_template: str | None = None
        self._sip: SipMessage | None = None
        self._sip_parsed = False

    def at_hook(self, hook: str) -> None:
        self.hook = hook
        self.iface_in = self.record.iface_in if HOOK_SEES_IN[hook] else None
        self.iface_out = self.record.iface_out if HOOK_SEES_OUT[hook] else None

    @property
    def payload(self) -> bytes:
        return self.data[self.payload_offset:]

    @property
    def sip(self) -> SipMessage | None:
        """The SIP message the transport payload carries, or None.

        Later fragments carry no transport header, so they carry no SIP
        message either (the kernel's matches see fragments alone unless
        conntrack reassembled them).
        """
        if not self._sip_parsed:
            self._sip_parsed = True
            if self.frag != 2 and self.proto in (6, 17, 132, 136):
                payload = self.payload
                self._sip = parse_sip(payload) if payload else None
        return self._sip
