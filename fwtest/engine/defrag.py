"""IP reassembly before the rules, as nf_defrag_ipv4/ipv6 (and ip_local_deliver) do it.

Fragments are queued per (source, destination, [IPv4: protocol,] identification)
until the datagram is complete; then the whole datagram is filtered once and
every fragment shares its fate. Kernel behaviour kept here
(net/ipv4/ip_fragment.c, net/ipv6/netfilter/nf_conntrack_reasm.c,
net/ipv4/inet_fragment.c):

* a queue lives ``timeout`` seconds from its first fragment (not refreshed);
  fragments of a datagram never completed in time are dropped;
* a fragment lying wholly inside data already queued is a duplicate and is
  dropped alone; one that partly overlaps queued data kills the whole
  datagram (RFC 5722; Linux does the same for IPv4 since 4.19);
* a last fragment that disagrees with the known length, or data beyond it,
  kills the datagram; an IPv6 non-last fragment whose length is not a
  multiple of 8 is dropped (RFC 8200 4.5); IPv4 trims it to a multiple of 8;
* a datagram longer than 65535 bytes is discarded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from fwtest.traffic.record import MalformedPacket, PacketRecord, parse_ip

_IPV6_EXT = frozenset({0, 43, 60, 51, 135, 139, 140})
MAX_DATAGRAM = 65535


@dataclass
class _Fragment:
    offset: int
    end: int
    data: bytes
    member: object


@dataclass
class _Queue:
    first_ts: float
    expires: float
    family: int
    fragments: list[_Fragment] = field(default_factory=list)
    total: int | None = None            # known once the last fragment arrived
    head: bytes = b""                   # IPv4 header / IPv6 unfragmentable part, from offset 0
    nexthdr_pos: int = -1               # IPv6: where the next-header byte before the fragment header is
    nexthdr: int = 0                    # IPv6: next header named by the fragment header
    last: PacketRecord | None = None


@dataclass(frozen=True)
class Held:
    """The fragment waits for the rest of its datagram."""


@dataclass(frozen=True)
class Complete:
    datagram: PacketRecord
    members: tuple[object, ...]         # every fragment's member tag, in arrival order


@dataclass(frozen=True)
class Dropped:
    reason: str
    members: tuple[object, ...]


def _ipv6_fragment_header(data: bytes) -> tuple[int, int] | None:
    """(position of the fragment header, position of the next-header byte naming it)."""
    if len(data) < 40:
        return None
    nh, nh_pos, pos = data[6], 6, 40
    while nh in _IPV6_EXT:
        if len(data) < pos + 8:
            return None
        this = nh
        nh, nh_pos = data[pos], pos
        # AH counts its length in 4-octet units, the others in 8-octet units (RFC 4302 2.2).
        pos += (data[pos + 1] + 2) * 4 if this == 51 else (data[pos + 1] + 1) * 8
    if nh != 44 or len(data) < pos + 8:
        return None
    return pos, nh_pos


def _ipv4_checksum(header: bytes) -> int:
    total = 0
    for (word,) in struct.iter_unpack("!H", header):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Defragmenter:
    def __init__(self, timeout_v4: float, timeout_v6: float) -> None:
        self.timeout = {4: timeout_v4, 6: timeout_v6}
        self.queues: dict[tuple, _Queue] = {}

    def add(self, record: PacketRecord, where: object, member: object) -> Held | Complete | Dropped:
        """Queue one fragment (``where`` separates reassembly points of different paths)."""
        family = record.family
        if family == 4:
            ihl = (record.data[0] & 0x0F) * 4
            payload = record.data[ihl:]
            key = (where, 4, record.src, record.dst, record.proto, record.frag_id)
        else:
            found = _ipv6_fragment_header(record.data)
            if found is None:
                return Dropped("malformed IPv6 fragment header", (member,))
            pos, nh_pos = found
            payload = record.data[pos + 8:]
            key = (where, 6, record.src, record.dst, record.frag_id)
        offset = record.frag_offset
        end = offset + len(payload)
        more = record.more_fragments
        if more and end & 7:
            if family == 6:
                return Dropped("non-last IPv6 fragment length is not a multiple of 8 (RFC 8200 4.5)",
                               (member,))
            end &= ~7
            payload = payload[:end - offset]
        queue = self.queues.get(key)
        if queue is None:
            queue = _Queue(record.ts, record.ts + self.timeout[family], family)
            self.queues[key] = queue

        def kill(reason: str) -> Dropped:
            del self.queues[key]
            return Dropped(reason, tuple(f.member for f in queue.fragments) + (member,))

        if not more:
            if queue.total is not None and end != queue.total:
                return kill("fragments disagree on the datagram's length")
            if any(f.end > end for f in queue.fragments):
                return kill("data beyond the last fragment")
            queue.total = end
        elif queue.total is not None and end > queue.total:
            return kill("data beyond the last fragment")
        if end > MAX_DATAGRAM:
            return kill("reassembled datagram would exceed 65535 bytes")
        overlapping = sorted((f for f in queue.fragments if f.offset < end and offset < f.end),
                             key=lambda f: f.offset)
        if overlapping:
            covered = offset
            for f in overlapping:
                if f.offset > covered:
                    break
                covered = max(covered, f.end)
            if overlapping[0].offset <= offset and covered >= end:
                return Dropped("duplicate fragment (its data is already queued)", (member,))
            return kill("overlapping fragments: the kernel discards the whole datagram (RFC 5722)")
        queue.fragments.append(_Fragment(offset, end, payload, member))
        queue.last = record
        if offset == 0:
            if family == 4:
                queue.head = record.data[:(record.data[0] & 0x0F) * 4]
            else:
                queue.head = record.data[:pos]
                queue.nexthdr_pos = nh_pos
                queue.nexthdr = record.data[pos]
        if queue.total is None or not queue.head:
            return Held()
        pieces = sorted(queue.fragments, key=lambda f: f.offset)
        at = 0
        for f in pieces:
            if f.offset != at:
                return Held()
            at = f.end
        if at != queue.total:
            return Held()
        del self.queues[key]
        data = b"".join(f.data for f in pieces)
        try:
            datagram = self._rebuild(queue, data)
        except MalformedPacket as e:
            return Dropped(f"reassembled datagram is malformed: {e}",
                           tuple(f.member for f in queue.fragments))
        return Complete(datagram, tuple(f.member for f in queue.fragments))

    def _rebuild(self, queue: _Queue, data: bytes) -> PacketRecord:
        last = queue.last
        assert last is not None
        head = bytearray(queue.head)
        if queue.family == 4:
            struct.pack_into("!H", head, 2, len(head) + len(data))
            flags = struct.unpack_from("!H", head, 6)[0] & 0x4000    # keep DF, clear MF and offset
            struct.pack_into("!H", head, 6, flags)
            struct.pack_into("!H", head, 10, 0)
            struct.pack_into("!H", head, 10, _ipv4_checksum(bytes(head)))
        else:
            head[queue.nexthdr_pos] = queue.nexthdr
            struct.pack_into("!H", head, 4, len(head) - 40 + len(data))
        return parse_ip(bytes(head) + data, last.ts, last.iface_in, last.iface_out)

    def expire(self, now: float) -> list[Dropped]:
        """Queues whose time ran out by ``now``: their fragments die."""
        if not self.queues:
            return []
        out = []
        for key, queue in list(self.queues.items()):
            if now >= queue.expires:
                del self.queues[key]
                out.append(self._timed_out(queue))
        return out

    def drain(self) -> list[Dropped]:
        """Every queue still waiting (end of the capture): they never complete."""
        out = [self._timed_out(q) for q in self.queues.values()]
        self.queues.clear()
        return out

    def _timed_out(self, queue: _Queue) -> Dropped:
        have = sum(f.end - f.offset for f in queue.fragments)
        missing = "the first fragment" if not queue.head else (
            "the last fragment" if queue.total is None else "a middle fragment")
        return Dropped(f"fragment never completed within {self.timeout[queue.family]:g} s "
                       f"(reassembly timeout; {len(queue.fragments)} fragment(s), {have} bytes queued, "
                       f"missing {missing})",
                       tuple(f.member for f in queue.fragments))
