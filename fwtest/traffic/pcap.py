"""Streaming capture reader: pcap and pcapng files to packet records, fast.

A day of PSAP-edge traffic is on the order of 10^8 packets; Scapy's full
dissection runs at a few thousand a second. This reader never builds a Scapy
packet: it reads the file in large chunks, frames records with ``struct`` on
the bytes, strips the link layer by hand and parses the IP header with a fast
path for the common cases (IPv4 without options or fragmentation, IPv6
without extension headers; UDP or TCP) that yields exactly what
``record.parse_ip`` yields; everything else goes through ``parse_ip``. Memory stays bounded whatever the file size: one read
chunk plus the record being yielded.

Formats: pcap (both byte orders, microsecond and nanosecond timestamps) and
pcapng (SHB/IDB/EPB/SPB and the obsolete Packet Block, several sections,
several interfaces each with its own link type, ``if_tsresol`` and
``if_tsoffset``). Link types: Ethernet (802.1Q, 802.1ad/QinQ 0x88a8 and the
old 0x9100/0x9200 tags), Linux cooked capture v1 (113) and v2 (276), raw IP
(101, the BSD values 12 and 14, and 228/229 for IPv4/IPv6 only), BSD
loopback/null (0, host byte order) and OpenBSD loop (108, network byte order).

How damage is handled (``on_error``):

* The file's framing is what lets the rest be read. A bad magic number, a
  truncated file header, a record or block whose length is impossible (a
  captured length past any snapshot length, a pcapng block length that is not
  a multiple of 4 or whose trailing copy differs, a packet on an interface
  that was never described) is always an ``InputError`` naming the record
  number: after that, nothing further can be trusted.
* A record cut short by the end of the file (a capture killed while writing)
  ends the reading: with ``on_error="warn"`` (the default) it is counted in
  ``ReadStats.truncated`` with a warning; with ``"raise"`` it is an
  ``InputError``.
* A readable frame that is not IP (ARP, LLDP, other ethertypes) is not
  firewall traffic for us: counted in ``ReadStats.non_ip`` by kind, skipped.
* A frame that claims to be IP but is malformed (short link header, bad IP
  header) is counted in ``ReadStats.malformed`` with a warning and skipped
  (``"warn"``), or is an ``InputError`` (``"raise"``).
* A link type this reader does not know is an ``InputError`` with
  ``"raise"``; with ``"warn"`` its frames are counted as non-IP under
  ``"linktype N"`` and a warning says so, so that a replay of such a file
  never passes silently on zero packets.

Record numbers are 1-based and count every packet record of the file, IP or
not, exactly as Wireshark's ``frame.number`` does.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from fwtest.errors import InputError
from fwtest.traffic.record import MalformedPacket, PacketRecord, parse_ip

OnError = Literal["warn", "raise"]

CHUNK = 1 << 20            # bytes read at a time: the reader's memory bound, plus one record
MAX_WARNINGS = 20          # warning texts kept; the counts are always complete
# Wireshark refuses records bigger than this for all the link types we read
# (WTAP_MAX_PACKET_SIZE_STANDARD); a larger length means the framing is corrupt.
MAX_RECORD = 262144

# Link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW was 12 on most BSDs and 14 on OpenBSD before LINKTYPE_RAW existed;
# old files still carry those numbers.
_RAW_BSD = (12, 14)

LINKTYPE_NAMES = {
    LINKTYPE_NULL: "null/loopback", LINKTYPE_ETHERNET: "ethernet", LINKTYPE_RAW: "raw IP",
    12: "raw IP", 14: "raw IP", LINKTYPE_LOOP: "OpenBSD loop", LINKTYPE_LINUX_SLL: "Linux cooked v1",
    LINKTYPE_IPV4: "raw IPv4", LINKTYPE_IPV6: "raw IPv6", LINKTYPE_LINUX_SLL2: "Linux cooked v2",
}

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
# 802.1Q, 802.1ad (QinQ outer tag), and the pre-standard QinQ tags some switches still send.
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_ETHERTYPE_NAMES = {0x0806: "arp", 0x8035: "rarp", 0x88CC: "lldp", 0x8809: "lacp/slow",
                    0x888E: "eapol", 0x8847: "mpls", 0x8848: "mpls", 0x8863: "pppoe-discovery",
                    0x8864: "pppoe-session", 0x88F7: "ptp", 0x8100: "vlan"}
# BSD AF_INET6 differs between systems: 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS), 10 (Linux).
_AF_INET6 = frozenset({10, 24, 28, 30})

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
PCAPNG_IDB, PCAPNG_OPB, PCAPNG_SPB, PCAPNG_EPB = 1, 2, 3, 6


@dataclass
class ReadStats:
    """What a read saw. Filled while the records are consumed; complete once the iterator is."""

    path: str = ""
    format: str = ""                      # "pcap" | "pcapng"
    records: int = 0                      # packet records in the file (Wireshark's frame count)
    ip: int = 0                           # records yielded (IPv4/IPv6 packets)
    non_ip: Counter = field(default_factory=Counter)   # skipped, by kind: "arp", "ethertype 0x88cc", ...
    malformed: int = 0                    # claimed IP but unreadable: skipped with a warning
    truncated: int = 0                    # records cut short by the end of the file
    snapped: int = 0                      # captured shorter than on the wire (snaplen): partial payloads
    link_types: Counter = field(default_factory=Counter)  # records per link type name
    warnings: list[str] = field(default_factory=list)     # the first MAX_WARNINGS texts
    warning_count: int = 0

    def warn(self, text: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)

    def summary(self) -> str:
        """One line for a report: ``4015 records: 3765 IP, 250 non-IP (arp 250)``."""
        parts = [f"{self.records} records: {self.ip} IP"]
        skipped = sum(self.non_ip.values())
        if skipped:
            kinds = ", ".join(f"{k} {n}" for k, n in self.non_ip.most_common())
            parts.append(f"{skipped} non-IP ({kinds})")
        if self.malformed:
            parts.append(f"{self.malformed} malformed")
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        return ", ".join(parts)


def read_records(path: str | os.PathLike, *, on_error: OnError = "warn",
                 stats: ReadStats | None = None) -> Iterator[PacketRecord]:
    """The IP packets of a pcap/pcapng file, in file order, as records.

    Streams: memory does not grow with the file. Pass a ``ReadStats`` to learn
    what was skipped and why (it is complete once the iterator is exhausted).
    """
    return _read(path, on_error, stats, numbered=False)


def read_frames(path: str | os.PathLike, *, on_error: OnError = "warn",
                stats: ReadStats | None = None) -> Iterator[tuple[int, PacketRecord]]:
    """Like ``read_records``, with each record's 1-based frame number (Wireshark's ``frame.number``)."""
    return _read(path, on_error, stats, numbered=True)


def _read(path, on_error: OnError, stats: ReadStats | None, numbered: bool) -> Iterator:
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error must be 'warn' or 'raise', not {on_error!r}")
    stats = stats if stats is not None else ReadStats()
    stats.path = str(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    except OSError as e:
        raise InputError(str(path), 0, f"cannot read capture: {e.strerror or e}") from None
    return _read_open(f, str(path), on_error, stats, numbered)


def _read_open(f: BinaryIO, path: str, on_error: OnError, stats: ReadStats,
               numbered: bool) -> Iterator:
    with f:
        head = f.read(24)
        if len(head) < 4:
            raise InputError(path, 0, "not a capture: empty or shorter than a pcap header")
        magic_le = struct.unpack_from("<I", head)[0]
        if magic_le == PCAPNG_SHB:
            stats.format = "pcapng"
            reader = _Reader(f, path, on_error, stats, head)
            yield from reader.pcapng(numbered)
            return
        for endian in "<>":
            magic = struct.unpack_from(endian + "I", head)[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        else:
            raise InputError(path, 0, f"not a pcap or pcapng file (magic number 0x{magic_le:08x})")
        if len(head) < 24:
            raise InputError(path, 0, "pcap file header truncated")
        stats.format = "pcap"
        _vmaj, _vmin, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(endian + "HHiIII", head, 4)
        # The link type is the low 16 bits; above them sit the FCS length and the F bit
        # (draft-ietf-opsawg-pcap, "LinkType and additional information").
        linktype &= 0xFFFF
        reader = _Reader(f, path, on_error, stats, b"")
        divisor = 1_000_000_000 if magic == PCAP_MAGIC_NS else 1_000_000
        yield from reader.pcap(endian, linktype, snaplen, divisor, numbered)


class _Reader:
    """Chunked framing over one open file; ``buf[pos:]`` is what is read but not yet used."""

    def __init__(self, f: BinaryIO, path: str, on_error: OnError, stats: ReadStats, initial: bytes):
        self.f = f
        self.path = path
        self.on_error = on_error
        self.stats = stats
        self.buf = initial
        self.pos = 0
        self.base = 0          # file offset of buf[0]
        self.all_interfaces: list[_Interface] = []

    # -- buffer -----------------------------------------------------------------
    def refill(self, need: int) -> bool:
        """Make ``need`` bytes available from ``pos``; False at end of file."""
        rest = self.buf[self.pos:]
        self.base += self.pos
        self.pos = 0
        want = max(CHUNK, need - len(rest))
        more = self.f.read(want)
        self.buf = rest + more if rest else more
        while len(self.buf) < need and more:
            more = self.f.read(need - len(self.buf))
            self.buf += more
        return len(self.buf) >= need

    # -- errors -----------------------------------------------------------------
    def corrupt(self, record: int, message: str) -> InputError:
        return InputError(f"{self.path}[record {record}]", 0, message)

    def truncated(self, record: int, have: int, need: int) -> None:
        text = (f"record {record} truncated at the end of the file "
                f"({have} of {need} bytes at byte offset {self.base + self.pos})")
        if self.on_error == "raise":
            raise InputError(f"{self.path}[record {record}]", 0,
                             text.replace(f"record {record} ", "") + ": the capture was cut short")
        self.stats.truncated += 1
        self.stats.warn(text)

    def bad_frame(self, record: int, message: str) -> None:
        if self.on_error == "raise":
            raise InputError(f"{self.path}[record {record}]", 0, message)
        self.stats.malformed += 1
        self.stats.warn(f"record {record}: {message}")

    def unknown_linktype(self, linktype: int, where: str) -> None:
        text = (f"link type {linktype} {where} is not supported (supported: ethernet, Linux cooked "
                "capture v1/v2, raw IP, null/loopback); its frames are skipped")
        if self.on_error == "raise":
            raise InputError(self.path, 0, text.replace("; its frames are skipped", ""))
        self.stats.warn(text)

    # -- classic pcap -------------------------------------------------------------
    def pcap(self, endian: str, linktype: int, snaplen: int, divisor: int, numbered: bool) -> Iterator:
        stats = self.stats
        link = _LINKS.get(linktype)
        link_name = LINKTYPE_NAMES.get(linktype, f"linktype {linktype}")
        if link is None:
            self.unknown_linktype(linktype, "in the pcap header")
        fhdr, ftype, fmin = _fast_params(linktype)
        limit = max(MAX_RECORD, snaplen)
        unpack_header = struct.Struct(endian + "IIII").unpack_from
        unpack_v4 = _unpack_v4
        new = tuple.__new__
        record = PacketRecord
        number = 0
        buf, pos = self.buf, self.pos
        size = len(buf)
        ip = snapped = 0
        try:
            while True:
                if pos + 16 > size:
                    self.pos = pos
                    if not self.refill(16):
                        if len(self.buf):
                            self.truncated(number + 1, len(self.buf), 16)
                        break
                    buf, pos, size = self.buf, 0, len(self.buf)
                sec, frac, caplen, wirelen = unpack_header(buf, pos)
                end = pos + 16 + caplen
                if end > size or caplen > limit:
                    if caplen > limit:
                        raise self.corrupt(number + 1, f"captured length {caplen} exceeds the snapshot "
                                           f"length {snaplen} (byte offset {self.base + pos}): the file "
                                           "is corrupt")
                    self.pos = pos
                    if not self.refill(16 + caplen):
                        self.truncated(number + 1, len(self.buf) - 16, caplen)
                        break
                    buf, pos, size = self.buf, 0, len(self.buf)
                    end = 16 + caplen
                start = pos + 16
                pos = end
                number += 1
                if caplen < wirelen:
                    snapped += 1
                ts = sec + frac / divisor
                # Fast path, inline (a call per packet costs as much as the parse): IPv4 without
                # options or fragmentation, UDP or TCP. It builds exactly what parse_ip builds.
                ip0 = start + fhdr
                if (caplen >= fmin and buf[ip0] == 0x45
                        and (ftype < 0 or (buf[start + ftype] == 8 and buf[start + ftype + 1] == 0))):
                    total, frag_field, proto, src, dst, sport, dport = unpack_v4(buf, ip0)
                    if frag_field & 0x3FFF == 0 and 28 <= total <= end - ip0:
                        if proto == 17:
                            ip += 1
                            rec = new(record, (ts, 4, src, dst, 17, sport, dport, 0, 0, 0, 0, False,
                                               buf[ip0:ip0 + total], 20, 28, None, None))
                            yield (number, rec) if numbered else rec
                            continue
                        if proto == 6 and total >= 40:
                            payload = 20 + (buf[ip0 + 32] >> 4) * 4
                            ip += 1
                            rec = new(record, (ts, 4, src, dst, 6, sport, dport, buf[ip0 + 33] & 0x3F, 0, 0,
                                               0, False, buf[ip0:ip0 + total], 20,
                                               payload if payload < total else total, None, None))
                            yield (number, rec) if numbered else rec
                            continue
                if link is None:
                    stats.non_ip[link_name] += 1
                    continue
                rec = self.link_frame(link, buf, start, end, ts, number)
                if rec is None:
                    continue
                ip += 1
                yield (number, rec) if numbered else rec
        finally:
            stats.records += number
            stats.ip += ip
            stats.snapped += snapped
            stats.link_types[link_name] += number

    def link_frame(self, link, buf: bytes, start: int, end: int, ts: float,
                   number: int) -> PacketRecord | None:
        """Strip one frame's link header; the record, or None (counted) when not IP or malformed."""
        try:
            off = link(buf, start, end)
        except MalformedPacket as e:
            self.bad_frame(number, f"malformed frame: {e}")
            return None
        if off.__class__ is str:
            self.stats.non_ip[off] += 1
            return None
        if end - off >= 48 and buf[off] >> 4 == 6:
            rec = _fast_ipv6(buf, off, end, ts)
            if rec is not None:
                return rec
        try:
            return parse_ip(buf[off:end], ts)
        except MalformedPacket as e:
            self.bad_frame(number, f"malformed IP packet: {e}")
        except (IndexError, struct.error):
            self.bad_frame(number, "malformed IP packet: truncated header")
        return None

    # -- pcapng -----------------------------------------------------------------
    def pcapng(self, numbered: bool) -> Iterator:
        stats = self.stats
        endian = "<"
        interfaces: list[_Interface] = []
        unpack_epb = struct.Struct("<IIIIIII").unpack_from
        unpack_len = struct.Struct("<I").unpack_from
        unpack_v4 = _unpack_v4
        new = tuple.__new__
        record = PacketRecord
        number = 0
        records = ip = snapped = 0
        buf, pos = self.buf, self.pos
        size = len(buf)
        try:
            while True:
                # Fast path: an Enhanced Packet Block wholly in the buffer, on a known interface.
                if pos + 28 <= size:
                    block_type, block_len, iface_id, hi, lo, caplen, wirelen = unpack_epb(buf, pos)
                    end = pos + block_len
                    if (block_type == PCAPNG_EPB and end <= size and 32 + caplen <= block_len
                            and not block_len & 3 and iface_id < len(interfaces)
                            and unpack_len(buf, end - 4)[0] == block_len):
                        start = pos + 28
                        pos = end
                        number += 1
                        records += 1
                        iface = interfaces[iface_id]
                        ts = ((hi << 32) | lo) / iface.divisor + iface.offset
                        iface.last_ts = ts
                        iface.records += 1
                        if caplen < wirelen:
                            snapped += 1
                        ip0 = start + iface.fhdr
                        ftype = iface.ftype
                        if (caplen >= iface.fmin and buf[ip0] == 0x45
                                and (ftype < 0 or (buf[start + ftype] == 8 and buf[start + ftype + 1] == 0))):
                            total, frag_field, proto, src, dst, sport, dport = unpack_v4(buf, ip0)
                            if frag_field & 0x3FFF == 0 and 28 <= total <= caplen - iface.fhdr:
                                if proto == 17:
                                    ip += 1
                                    rec = new(record, (ts, 4, src, dst, 17, sport, dport, 0, 0, 0, 0, False,
                                                       buf[ip0:ip0 + total], 20, 28, None, None))
                                    yield (number, rec) if numbered else rec
                                    continue
                                if proto == 6 and total >= 40:
                                    payload = 20 + (buf[ip0 + 32] >> 4) * 4
                                    ip += 1
                                    rec = new(record, (ts, 4, src, dst, 6, sport, dport, buf[ip0 + 33] & 0x3F,
                                                       0, 0, 0, False, buf[ip0:ip0 + total], 20,
                                                       payload if payload < total else total, None, None))
                                    yield (number, rec) if numbered else rec
                                    continue
                        if iface.link is None:
                            stats.non_ip[iface.name] += 1
                            continue
                        rec = self.link_frame(iface.link, buf, start, start + caplen, ts, number)
                        if rec is not None:
                            ip += 1
                            yield (number, rec) if numbered else rec
                        continue
                # General path: any block, any byte order, refills, damage.
                self.pos = pos
                if pos + 12 > size and not self.refill(12):
                    if len(self.buf) - self.pos:
                        self.truncated(number + 1, len(self.buf) - self.pos, 12)
                    break
                buf, pos = self.buf, self.pos
                block_type = struct.unpack_from(endian + "I", buf, pos)[0]
                if block_type == PCAPNG_SHB:
                    order = buf[pos + 8:pos + 12]
                    if order == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif order == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        raise self.corrupt(number + 1, f"section header at byte offset {self.base + pos} "
                                           "has no valid byte-order magic")
                    # The fast path reads little-endian blocks only; a big-endian section
                    # takes the general path throughout.
                    unpack_epb = struct.Struct(endian + "IIIIIII").unpack_from
                    unpack_len = struct.Struct(endian + "I").unpack_from
                    if endian == ">":
                        unpack_epb = _never_epb
                    interfaces = []   # interface ids are per section (pcapng 4.1)
                block_len = struct.unpack_from(endian + "I", buf, pos + 4)[0]
                if block_len < 12 or block_len % 4:
                    raise self.corrupt(number + 1, f"block at byte offset {self.base + pos} has an "
                                       f"impossible length {block_len}: the file is corrupt")
                if block_len > (1 << 26):
                    raise self.corrupt(number + 1, f"block at byte offset {self.base + pos} claims "
                                       f"{block_len} bytes: the file is corrupt")
                if pos + block_len > len(buf):
                    if not self.refill(block_len):
                        self.truncated(number + 1, len(self.buf) - self.pos, block_len)
                        break
                    buf, pos = self.buf, self.pos
                size = len(buf)
                end = pos + block_len
                if struct.unpack_from(endian + "I", buf, end - 4)[0] != block_len:
                    raise self.corrupt(number + 1, f"block at byte offset {self.base + pos}: trailing "
                                       "length differs from the leading one: the file is corrupt")
                block_start = pos
                pos = end
                if block_type in (PCAPNG_EPB, PCAPNG_OPB):
                    number += 1
                    records += 1
                    if block_len < 32:
                        raise self.corrupt(number, "packet block too short: the file is corrupt")
                    if block_type == PCAPNG_EPB:
                        iface_id, hi, lo, caplen, wirelen = struct.unpack_from(
                            endian + "IIIII", buf, block_start + 8)
                    else:
                        iface_id, _drops, hi, lo, caplen, wirelen = struct.unpack_from(
                            endian + "HHIIII", buf, block_start + 8)
                    start = block_start + 28
                    if caplen > block_len - 32:
                        raise self.corrupt(number, f"captured length {caplen} does not fit its block "
                                           f"of {block_len} bytes: the file is corrupt")
                    if iface_id >= len(interfaces):
                        raise self.corrupt(number, f"packet on interface {iface_id}, but the section "
                                           f"describes {len(interfaces)} interface(s)")
                    iface = interfaces[iface_id]
                    ts = ((hi << 32) | lo) / iface.divisor + iface.offset
                elif block_type == PCAPNG_SPB:
                    number += 1
                    records += 1
                    if not interfaces:
                        raise self.corrupt(number, "simple packet block before any interface description")
                    iface = interfaces[0]
                    wirelen = struct.unpack_from(endian + "I", buf, block_start + 8)[0]
                    start = block_start + 12
                    # pcapng 4.4: the captured length is the smaller of the original length
                    # and the snapshot length; SPBs carry no timestamp, so the previous
                    # packet's time on that interface stands in.
                    caplen = min(wirelen, block_len - 16)
                    if iface.snaplen:
                        caplen = min(caplen, iface.snaplen)
                    ts = iface.last_ts
                elif block_type == PCAPNG_IDB:
                    interfaces.append(self.interface(buf, block_start, end, endian, number,
                                                     len(interfaces)))
                    continue
                else:
                    continue   # NRB, ISB, DSB, custom blocks: not packets
                iface.last_ts = ts
                iface.records += 1
                if caplen < wirelen:
                    snapped += 1
                if iface.link is None:
                    stats.non_ip[iface.name] += 1
                    continue
                rec = self.link_frame(iface.link, buf, start, start + caplen, ts, number)
                if rec is None:
                    continue
                ip += 1
                yield (number, rec) if numbered else rec
        finally:
            stats.records += records
            stats.ip += ip
            stats.snapped += snapped
            for iface in self.all_interfaces:
                stats.link_types[iface.name] += iface.records
                iface.records = 0

    def interface(self, buf: bytes, pos: int, end: int, endian: str, number: int,
                  index: int) -> _Interface:
        if end - pos < 20:
            raise self.corrupt(number + 1, f"interface description block at byte offset "
                               f"{self.base + pos} is too short")
        linktype, _reserved, snaplen = struct.unpack_from(endian + "HHI", buf, pos + 8)
        divisor, offset = 1_000_000, 0
        opt = pos + 16
        while opt + 4 <= end - 4:
            code, length = struct.unpack_from(endian + "HH", buf, opt)
            if code == 0:
                break
            value = buf[opt + 4:opt + 4 + length]
            if code == 9 and length >= 1:
                # if_tsresol: high bit clear = 10^-n, set = 2^-n (pcapng 4.2).
                resol = value[0]
                divisor = 2 ** (resol & 0x7F) if resol & 0x80 else 10 ** resol
            elif code == 14 and length >= 8:
                offset = struct.unpack_from(endian + "q", value)[0]
            opt += 4 + ((length + 3) & ~3)
        link = _LINKS.get(linktype)
        name = LINKTYPE_NAMES.get(linktype, f"linktype {linktype}")
        if link is None:
            self.unknown_linktype(linktype, f"on interface {index}")
        iface = _Interface(link, name, snaplen, divisor, offset, linktype)
        self.all_interfaces.append(iface)
        return iface


class _Interface:
    __slots__ = ("link", "name", "snaplen", "divisor", "offset", "last_ts", "records",
                 "fhdr", "ftype", "fmin")

    def __init__(self, link, name: str, snaplen: int, divisor: int, offset: int, linktype: int) -> None:
        self.link = link
        self.name = name
        self.snaplen = snaplen
        self.divisor = divisor
        self.offset = offset
        self.last_ts = 0.0
        self.records = 0
        self.fhdr, self.ftype, self.fmin = _fast_params(linktype)


def _never_epb(buf: bytes, pos: int) -> tuple[int, ...]:
    return (-1, 0, 0, 0, 0, 0, 0)


# Where the fast path finds an IPv4 header: (link header length, offset of a 0x0800
# protocol field in it or -1 when there is none, shortest frame it takes).
_FAST_LINKS = {
    LINKTYPE_ETHERNET: (14, 12), LINKTYPE_LINUX_SLL: (16, 14), LINKTYPE_LINUX_SLL2: (20, 0),
    LINKTYPE_RAW: (0, -1), 12: (0, -1), 14: (0, -1), LINKTYPE_IPV4: (0, -1), LINKTYPE_IPV6: (0, -1),
}


def _fast_params(linktype: int) -> tuple[int, int, int]:
    if linktype not in _FAST_LINKS:
        return 0, -1, 1 << 62          # no fast path: no frame is that long
    header, type_offset = _FAST_LINKS[linktype]
    # 28 bytes of IPv4 + UDP header must be in the frame before unpacking them.
    return header, type_offset, header + 28


# -- link layers: (buf, start, end) -> offset of the IP header in buf, or the kind of non-IP frame -----

def _short(start: int, end: int, what: str) -> MalformedPacket:
    return MalformedPacket(f"frame of {end - start} bytes is shorter than its {what}")


def _ethertype_result(buf: bytes, off: int, end: int, ethertype: int) -> int | str:
    while ethertype in _VLAN_TPIDS:
        if off + 4 > end:
            raise MalformedPacket("VLAN tag cut short")
        ethertype = buf[off + 2] << 8 | buf[off + 3]
        off += 4
    if ethertype in (ETH_IPV4, ETH_IPV6):
        return off
    if ethertype <= 1500:
        return "802.3/llc"      # a length field, not an ethertype (IEEE 802.3 frame)
    return _ETHERTYPE_NAMES.get(ethertype) or f"ethertype 0x{ethertype:04x}"


def _ethernet(buf: bytes, start: int, end: int) -> int | str:
    if end - start < 14:
        raise _short(start, end, "Ethernet header")
    return _ethertype_result(buf, start + 14, end, buf[start + 12] << 8 | buf[start + 13])


def _linux_sll(buf: bytes, start: int, end: int) -> int | str:
    # 16-byte header: packet type, ARPHRD type, address length, 8 address bytes, protocol.
    if end - start < 16:
        raise _short(start, end, "Linux cooked header")
    arphrd = buf[start + 2] << 8 | buf[start + 3]
    protocol = buf[start + 14] << 8 | buf[start + 15]
    return _cooked(buf, start + 16, end, arphrd, protocol)


def _linux_sll2(buf: bytes, start: int, end: int) -> int | str:
    # 20-byte header: protocol, reserved, interface index, ARPHRD type, packet type, address length, address.
    if end - start < 20:
        raise _short(start, end, "Linux cooked v2 header")
    protocol = buf[start] << 8 | buf[start + 1]
    arphrd = buf[start + 8] << 8 | buf[start + 9]
    return _cooked(buf, start + 20, end, arphrd, protocol)


_ARPHRD_NETLINK = 824


def _cooked(buf: bytes, off: int, end: int, arphrd: int, protocol: int) -> int | str:
    if arphrd == _ARPHRD_NETLINK:
        return "netlink"
    # Protocol values below 1536 are Linux's ETH_P_* pseudo types (802.2 LLC, CAN, ...).
    if protocol < 1536:
        return f"linux protocol 0x{protocol:04x}"
    return _ethertype_result(buf, off, end, protocol)


def _raw(buf: bytes, start: int, end: int) -> int | str:
    if start >= end:
        raise MalformedPacket("empty frame")
    version = buf[start] >> 4
    if version in (4, 6):
        return start
    # Raw IP that is neither IPv4 nor IPv6 is a damaged frame, not another protocol.
    raise MalformedPacket(f"raw IP frame with IP version {version}")


def _null(buf: bytes, start: int, end: int) -> int | str:
    # The family is in the capturing host's byte order, which the file does not record.
    if end - start < 4:
        raise _short(start, end, "loopback header")
    family = buf[start] | buf[start + 1] << 8 | buf[start + 2] << 16 | buf[start + 3] << 24
    if family > 0xFFFF:
        family = buf[start + 3] | buf[start + 2] << 8 | buf[start + 1] << 16 | buf[start] << 24
    return _af_result(start, family)


def _loop(buf: bytes, start: int, end: int) -> int | str:
    if end - start < 4:
        raise _short(start, end, "loopback header")
    return _af_result(start, int.from_bytes(buf[start:start + 4], "big"))


def _af_result(start: int, family: int) -> int | str:
    if family == 2 or family in _AF_INET6:
        return start + 4
    return f"address family {family}"


_LINKS = {
    LINKTYPE_ETHERNET: _ethernet, LINKTYPE_LINUX_SLL: _linux_sll, LINKTYPE_LINUX_SLL2: _linux_sll2,
    LINKTYPE_RAW: _raw, 12: _raw, 14: _raw, LINKTYPE_IPV4: _raw, LINKTYPE_IPV6: _raw,
    LINKTYPE_NULL: _null, LINKTYPE_LOOP: _loop,
}


_unpack_v4 = struct.Struct("!2xH2xHxB2xIIHH").unpack_from
_unpack_v6 = struct.Struct("!4xHB1xQQQQHH").unpack_from
_new = tuple.__new__


def _fast_ipv6(buf: bytes, off: int, end: int, ts: float) -> PacketRecord | None:
    """``parse_ip`` for IPv6 with UDP or TCP right after the fixed header; None for anything else.

    The caller guarantees 48 bytes from ``off``.
    """
    plen, next_header, src_hi, src_lo, dst_hi, dst_lo, sport, dport = _unpack_v6(buf, off)
    total = 40 + plen
    if total > end - off:
        return None
    if next_header == 17 and plen >= 8:
        return _new(PacketRecord, (ts, 6, src_hi << 64 | src_lo, dst_hi << 64 | dst_lo, 17, sport, dport, 0,
                                   0, 0, 0, False, buf[off:off + total], 40, 48, None, None))
    if next_header == 6 and plen >= 20:
        payload = 40 + (buf[off + 52] >> 4) * 4
        return _new(PacketRecord, (ts, 6, src_hi << 64 | src_lo, dst_hi << 64 | dst_lo, 6, sport, dport,
                                   buf[off + 53] & 0x3F, 0, 0, 0, False, buf[off:off + total], 40,
                                   payload if payload < total else total, None, None))
    return None
