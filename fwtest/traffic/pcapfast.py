"""Captures read a chunk at a time into numpy arrays, for replays at a million packets a second.

``pcap.read_frames`` yields one ``PacketRecord`` per packet: about a
microsecond each, which is the whole budget of a replay that must keep up
with a million packets a second. This reader frames and parses many records
at once with numpy and hands out ``FrameChunk`` objects: per IP packet its
frame number and timestamp, and, for the packets that make up the bulk of
call traffic (plain UDP over IPv4 without options or fragmentation, or over
IPv6 without extension headers), the addresses, ports and first payload
byte as arrays. A record object is built only when one is asked for
(``FrameChunk.record``); it is exactly the record ``read_frames`` yields for
that frame, because every other frame goes through pcap.py's own per-frame
code, and the vectorised classes are the conditions of pcap.py's own fast
paths.

Framing classic pcap is a chain (each record's length says where the next
one starts), which a vector machine cannot follow directly. Here it is
guessed and then proved: every byte position whose fourth byte equals the
top byte of the first record's seconds is a candidate header; candidates
with an impossible fraction or length are dropped; the guess stands when
the remaining candidates form one unbroken chain from the first record to
the end of the chunk. Otherwise (payload bytes that look like a header,
timestamps far apart, a corrupt record) the chunk is framed by a plain loop
with pcap.py's rules, so the result never depends on the guess.

pcapng blocks are 4-byte aligned, so there every word equal to 6 is a
candidate Enhanced Packet Block, kept when its length, its trailing copy of
the length, its captured length and its interface are consistent; unbroken
chains of them are parsed at once, every other block (section and
interface descriptions, simple and obsolete packet blocks, statistics, a
big-endian section) by a transcription of pcap.py's general path.

Supported at speed: little-endian classic pcap (micro- and nanosecond) and
pcapng (little-endian sections, any number of interfaces, each with its
resolution and offset); link types Ethernet, Linux cooked v1/v2 and raw IP
(the others' frames go through pcap.py's parsers one by one). A big-endian
classic pcap is read by ``pcap.read_frames`` and batched into the same
chunks: correct, at that reader's speed. Damage, warnings and ``ReadStats``
are pcap.py's, text for text (including its byte offsets, which for classic
pcap count from the end of the file header).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fwtest.errors import InputError
from fwtest.traffic import pcap as _pcap
from fwtest.traffic.pcap import (
    LINKTYPE_NAMES,
    MAX_RECORD,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAPNG_EPB,
    PCAPNG_IDB,
    PCAPNG_OPB,
    PCAPNG_SHB,
    PCAPNG_SPB,
    OnError,
    ReadStats,
    read_frames,
)
from fwtest.traffic.record import PacketRecord

CHUNK_BYTES = 8 << 20        # bytes framed at a time: the reader's memory bound (plus one record)
RECORD_CHUNK = 32768         # records per chunk when batching another reader's records

# What a row of a chunk is.
KIND_OTHER, KIND_UDP4, KIND_UDP6 = 0, 1, 2

_ARPHRD_NETLINK = 824
_WINDOW = 72                 # bytes of each frame gathered: link header + IPv6 + UDP + one payload byte
_NEW = tuple.__new__

# Link layers with a fixed IP offset, by pcap.py's parser for them: (header length, where a
# 16-bit protocol field is or -1, where a 16-bit ARPHRD type is or -1). pcap.py's inline IPv4
# path reads the same offsets (pcap._FAST_LINKS).
_FIXED_LINKS = {
    _pcap._ethernet: (14, 12, -1),
    _pcap._linux_sll: (16, 14, 2),
    _pcap._linux_sll2: (20, 0, 8),
    _pcap._raw: (0, -1, -1),
}


@dataclass
class FrameChunk:
    """The IP packets of consecutive capture records, as arrays (rows in capture order).

    For rows of kind KIND_UDP4/KIND_UDP6 the address, port and payload
    columns are filled (IPv4 addresses in the ``_lo`` columns); ``ip0`` and
    ``total`` locate the IP packet in ``buf``. Rows of kind KIND_OTHER have
    their record ready in ``others``.
    """

    buf: bytes
    number: np.ndarray          # int64: 1-based frame number
    ts: np.ndarray              # float64: seconds, exactly pcap.py's value
    kind: np.ndarray            # int8
    ip0: np.ndarray             # int64
    total: np.ndarray           # int64
    src_hi: np.ndarray          # uint64 (0 for IPv4)
    src_lo: np.ndarray          # uint64
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray           # int64 (-1 when not a fast row)
    dport: np.ndarray
    first_byte: np.ndarray      # int64: first UDP payload byte, -1 when the payload is empty
    others: dict[int, PacketRecord]
    end_offset: int = 0         # file offset reached (for progress)

    def __len__(self) -> int:
        return len(self.number)

    def record(self, i: int) -> PacketRecord:
        """The record ``read_frames`` yields for row ``i``."""
        kind = self.kind[i]
        if kind == KIND_OTHER:
            return self.others[i]
        ip0 = int(self.ip0[i])
        data = self.buf[ip0:ip0 + int(self.total[i])]
        if kind == KIND_UDP4:
            return _NEW(PacketRecord, (float(self.ts[i]), 4, int(self.src_lo[i]), int(self.dst_lo[i]), 17,
                                       int(self.sport[i]), int(self.dport[i]), 0, 0, 0, 0, False, data, 20, 28,
                                       None, None))
        return _NEW(PacketRecord, (float(self.ts[i]), 6, int(self.src_hi[i]) << 64 | int(self.src_lo[i]),
                                   int(self.dst_hi[i]) << 64 | int(self.dst_lo[i]), 17, int(self.sport[i]),
                                   int(self.dport[i]), 0, 0, 0, 0, False, data, 40, 48, None, None))


def read_chunks(path: str | os.PathLike, *, stats: ReadStats | None = None, on_error: OnError = "warn",
                chunk_bytes: int = CHUNK_BYTES) -> Iterator[FrameChunk]:
    """The IP packets of a capture in chunks; the same packets, numbers, times and
    ``ReadStats`` as ``pcap.read_frames`` gives. Memory: one chunk."""
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error must be 'warn' or 'raise', not {on_error!r}")
    stats = stats if stats is not None else ReadStats()
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        head = b""      # read_frames raises the located error
    if len(head) == 24 and struct.unpack_from("<I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        return _read_pcap_le(str(path), head, stats, on_error, chunk_bytes)
    if len(head) >= 12 and struct.unpack_from("<I", head)[0] == PCAPNG_SHB:
        return _read_pcapng(str(path), stats, on_error, chunk_bytes)
    return chunks_from_frames(read_frames(path, on_error=on_error, stats=stats))


# ----------------------------------------------------------------------------- other readers' records

def chunks_from_frames(frames: Iterator[tuple[int, PacketRecord]],
                       size: int = RECORD_CHUNK) -> Iterator[FrameChunk]:
    """Batch (frame number, record) pairs into chunks (records without interfaces)."""
    batch: list[tuple[int, PacketRecord]] = []
    for item in frames:
        batch.append(item)
        if len(batch) >= size:
            yield _chunk_of_records(batch)
            batch = []
    if batch:
        yield _chunk_of_records(batch)


def _chunk_of_records(batch: list[tuple[int, PacketRecord]]) -> FrameChunk:
    n = len(batch)
    parts: list[bytes] = []
    at = 0
    cols = {name: np.zeros(n, dtype) for name, dtype in (
        ("number", np.int64), ("ts", np.float64), ("kind", np.int8), ("ip0", np.int64), ("total", np.int64),
        ("src_hi", np.uint64), ("src_lo", np.uint64), ("dst_hi", np.uint64), ("dst_lo", np.uint64),
        ("sport", np.int64), ("dport", np.int64), ("first_byte", np.int64))}
    others: dict[int, PacketRecord] = {}
    mask64 = (1 << 64) - 1
    for i, (number, r) in enumerate(batch):
        cols["number"][i] = number
        cols["ts"][i] = r.ts
        l4 = 20 if r.family == 4 else 40
        # Exactly the shape of a fast row: plain UDP right after a header without options.
        if (r.proto == 17 and r.frag == 0 and r.l4_offset == l4 and r.payload_offset == l4 + 8
                and len(r.data) >= l4 + 8 and r.iface_in is None and r.iface_out is None
                and r.tcp_flags == 0 and r.frag_id == 0 and r.frag_offset == 0 and not r.more_fragments):
            cols["kind"][i] = KIND_UDP4 if r.family == 4 else KIND_UDP6
            cols["ip0"][i] = at
            cols["total"][i] = len(r.data)
            cols["src_hi"][i], cols["src_lo"][i] = r.src >> 64, r.src & mask64
            cols["dst_hi"][i], cols["dst_lo"][i] = r.dst >> 64, r.dst & mask64
            cols["sport"][i], cols["dport"][i] = r.sport, r.dport
            cols["first_byte"][i] = r.data[l4 + 8] if len(r.data) > l4 + 8 else -1
            parts.append(r.data)
            at += len(r.data)
        else:
            cols["kind"][i] = KIND_OTHER
            cols["sport"][i] = cols["dport"][i] = cols["first_byte"][i] = -1
            others[i] = r
    return FrameChunk(buf=b"".join(parts), others=others, **cols)


# ----------------------------------------------------------------------------- classic pcap, vectorised

def _read_pcap_le(path: str, head: bytes, stats: ReadStats, on_error: OnError,
                  chunk_bytes: int) -> Iterator[FrameChunk]:
    stats.path = path
    stats.format = "pcap"
    magic, _vmaj, _vmin, _zone, _sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII", head)
    linktype &= 0xFFFF
    divisor = 1_000_000_000 if magic == PCAP_MAGIC_NS else 1_000_000
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except OSError as e:
        raise InputError(path, 0, f"cannot read capture: {e.strerror or e}") from None
    reader = _pcap._Reader(f, path, on_error, stats, b"")
    link = _pcap._LINKS.get(linktype)
    link_name = LINKTYPE_NAMES.get(linktype, f"linktype {linktype}")
    if link is None:
        reader.unknown_linktype(linktype, "in the pcap header")
    limit = max(MAX_RECORD, snaplen)
    with f:
        offset = 24                # file offset of the next record
        number = 0
        want = max(chunk_bytes, 16)
        while True:
            # Read from the next record on (no copying of a partial record into a new buffer).
            f.seek(offset)
            buf = f.read(want)
            if not buf:
                break
            eof = len(buf) < want
            starts, corrupt_at = _frame(buf, divisor, limit)
            k = len(starts)
            end = _record_end(buf, int(starts[-1])) if k else 0
            chunk = _records(reader, buf, starts, number, divisor, link, linktype, link_name)
            number += k
            if chunk is not None:
                chunk.end_offset = offset + end
                yield chunk
            if corrupt_at is not None:
                caplen = struct.unpack_from("<I", buf, corrupt_at + 8)[0]
                raise reader.corrupt(number + 1, f"captured length {caplen} exceeds the snapshot "
                                     f"length {snaplen} (byte offset {offset - 24 + corrupt_at}): the file "
                                     "is corrupt")
            offset += end
            if eof:
                rest = buf[end:]
                if rest:
                    # pcap.py counts byte offsets from the end of the file header.
                    reader.base, reader.pos = offset - 24, 0
                    if len(rest) < 16:
                        reader.truncated(number + 1, len(rest), 16)
                    else:
                        reader.truncated(number + 1, len(rest) - 16, struct.unpack_from("<I", rest, 8)[0])
                break
            # A record longer than the read: read more at once.
            want = max(chunk_bytes, 16) if k else want * 2


class _Rows:
    """Packet blocks of one read, in file order, waiting to be classified together."""

    def __init__(self) -> None:
        self.frame: list[np.ndarray] = []
        self.caplen: list[np.ndarray] = []
        self.ts: list[np.ndarray] = []
        self.numbers: list[np.ndarray] = []
        self.iface: list[np.ndarray] = []
        self.count = 0

    def add(self, frame, caplen, ts, numbers, iface) -> None:
        self.frame.append(np.asarray(frame, np.int64))
        self.caplen.append(np.asarray(caplen, np.int64))
        self.ts.append(np.asarray(ts, np.float64))
        self.numbers.append(np.asarray(numbers, np.int64))
        self.iface.append(np.asarray(iface, np.int64))
        self.count += len(self.frame[-1])

    def classify(self, reader, buf: bytes, ifaces: list) -> FrameChunk | None:
        if not self.count:
            return None
        iface = np.concatenate(self.iface)
        links = []
        for index in np.unique(iface).tolist():
            it = ifaces[index]
            links.append(_Link(np.flatnonzero(iface == index), it.link, it.name))
        out = _classify(reader, buf, np.concatenate(self.frame), np.concatenate(self.caplen),
                        np.concatenate(self.ts), np.concatenate(self.numbers), links)
        self.__init__()
        return out


def _read_pcapng(path: str, stats: ReadStats, on_error: OnError, chunk_bytes: int) -> Iterator[FrameChunk]:
    """pcapng: runs of Enhanced Packet Blocks of little-endian sections vectorised; every other
    block by a transcription of pcap.py's general path (same checks, same messages)."""
    stats.path = path
    stats.format = "pcapng"
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except OSError as e:
        raise InputError(path, 0, f"cannot read capture: {e.strerror or e}") from None
    reader = _pcap._Reader(f, path, on_error, stats, b"")
    interfaces: list = []          # the current section's (pcap.py's _Interface objects)
    endian = "<"
    number = 0
    offset = 0                     # file offset of the next block
    want = max(chunk_bytes, 64)
    try:
        with f:
            done = False
            while not done:
                f.seek(offset)
                buf = f.read(want)
                if not buf:
                    break
                eof = len(buf) < want
                size = len(buf)
                reader.base, reader.pos = offset, 0
                ifaces: list = []          # interfaces the rows of this read refer to
                rows = _Rows()
                pieces: list[FrameChunk] = []
                words = cands = None
                pos = 0
                failure: InputError | None = None
                try:
                    while pos < size:
                        if endian == "<" and interfaces and not pos & 3:
                            if cands is None:
                                words, cands = _epb_candidates(buf, len(interfaces))
                            run = _epb_run(words, cands, pos)
                            if run is not None:
                                number = _epb_rows(run, words, interfaces, ifaces, rows, number, stats)
                                blocks, lengths = run
                                pos = int(blocks[-1]) * 4 + int(lengths[-1])
                                continue
                        # One block, as pcap.py's general path reads it.
                        if pos + 12 > size:
                            if eof:
                                pieces.append(rows.classify(reader, buf, ifaces))
                                reader.pos = pos
                                reader.truncated(number + 1, size - pos, 12)
                                done = True
                            break
                        block_type = struct.unpack_from(endian + "I", buf, pos)[0]
                        if block_type == PCAPNG_SHB:
                            order = buf[pos + 8:pos + 12]
                            if order == b"\x4d\x3c\x2b\x1a":
                                endian = "<"
                            elif order == b"\x1a\x2b\x3c\x4d":
                                endian = ">"
                            else:
                                raise reader.corrupt(number + 1, f"section header at byte offset {offset + pos} "
                                                     "has no valid byte-order magic")
                        block_len = struct.unpack_from(endian + "I", buf, pos + 4)[0]
                        if block_len < 12 or block_len % 4:
                            raise reader.corrupt(number + 1, f"block at byte offset {offset + pos} has an "
                                                 f"impossible length {block_len}: the file is corrupt")
                        if block_len > (1 << 26):
                            raise reader.corrupt(number + 1, f"block at byte offset {offset + pos} claims "
                                                 f"{block_len} bytes: the file is corrupt")
                        if pos + block_len > size:
                            if eof:
                                pieces.append(rows.classify(reader, buf, ifaces))
                                reader.pos = pos
                                reader.truncated(number + 1, size - pos, block_len)
                                done = True
                            break
                        end = pos + block_len
                        if struct.unpack_from(endian + "I", buf, end - 4)[0] != block_len:
                            raise reader.corrupt(number + 1, f"block at byte offset {offset + pos}: trailing "
                                                 "length differs from the leading one: the file is corrupt")
                        start = pos
                        pos = end
                        if block_type in (PCAPNG_EPB, PCAPNG_OPB):
                            number += 1
                            stats.records += 1
                            if block_len < 32:
                                raise reader.corrupt(number, "packet block too short: the file is corrupt")
                            if block_type == PCAPNG_EPB:
                                iface_id, hi, lo, caplen, wirelen = struct.unpack_from(endian + "IIIII", buf, start + 8)
                            else:
                                iface_id, _drops, hi, lo, caplen, wirelen = struct.unpack_from(
                                    endian + "HHIIII", buf, start + 8)
                            if caplen > block_len - 32:
                                raise reader.corrupt(number, f"captured length {caplen} does not fit its block "
                                                     f"of {block_len} bytes: the file is corrupt")
                            if iface_id >= len(interfaces):
                                raise reader.corrupt(number, f"packet on interface {iface_id}, but the section "
                                                     f"describes {len(interfaces)} interface(s)")
                            it = interfaces[iface_id]
                            ts = ((hi << 32) | lo) / it.divisor + it.offset
                            frame = start + 28
                        elif block_type == PCAPNG_SPB:
                            number += 1
                            stats.records += 1
                            if not interfaces:
                                raise reader.corrupt(number, "simple packet block before any interface description")
                            it = interfaces[0]
                            wirelen = struct.unpack_from(endian + "I", buf, start + 8)[0]
                            frame = start + 12
                            # pcapng 4.4: the captured length is the smaller of the original length and the
                            # snapshot length; no timestamp, the interface's previous one stands in.
                            caplen = min(wirelen, block_len - 16)
                            if it.snaplen:
                                caplen = min(caplen, it.snaplen)
                            ts = it.last_ts
                        elif block_type == PCAPNG_IDB:
                            # Its warning (an unknown link type) comes after the packets before it.
                            pieces.append(rows.classify(reader, buf, ifaces))
                            reader.base = offset
                            interfaces.append(reader.interface(buf, start, end, endian, number, len(interfaces)))
                            cands = None
                            continue
                        else:
                            if block_type == PCAPNG_SHB:
                                interfaces = []     # interface ids are per section (pcapng 4.1)
                                cands = None
                            continue
                        it.last_ts = ts
                        it.records += 1
                        if caplen < wirelen:
                            stats.snapped += 1
                        rows.add([frame], [caplen], [ts], [number], [_index(ifaces, it)])
                except InputError as e:
                    failure = e         # the packets before the damage first, as pcap.py yields them
                pieces.append(rows.classify(reader, buf, ifaces))
                chunk = _concat([p for p in pieces if p is not None], buf)
                if chunk is not None:
                    chunk.end_offset = offset + pos
                    yield chunk
                if failure is not None:
                    raise failure
                offset += pos
                if eof and pos >= size:
                    break
                # A block longer than the read: read more at once.
                want = max(chunk_bytes, 64) if pos else want * 2
    finally:
        for it in reader.all_interfaces:
            stats.link_types[it.name] += it.records
            it.records = 0


def _index(ifaces: list, it) -> int:
    for i, known in enumerate(ifaces):
        if known is it:
            return i
    ifaces.append(it)
    return len(ifaces) - 1


def _epb_candidates(buf: bytes, n_interfaces: int) -> tuple[np.ndarray, np.ndarray]:
    """Words of ``buf`` (little-endian) and the word positions where a complete, self-consistent
    Enhanced Packet Block on a described interface may start."""
    words = np.frombuffer(buf, "<u4", count=len(buf) // 4)
    n = len(words)
    cand = np.flatnonzero(words[:max(n - 7, 0)] == PCAPNG_EPB)
    length = words[cand + 1].astype(np.int64)
    ok = (length & 3) == 0
    ok &= length >= 32
    ok &= cand * 4 + length <= len(buf)
    ok &= words[cand + 2] < n_interfaces
    ok &= words[cand + 5].astype(np.int64) + 32 <= length
    cand, length = cand[ok], length[ok]
    trailer = words[cand + length // 4 - 1]
    keep = trailer == length
    return words, np.stack([cand[keep], length[keep]]) if len(cand) else np.zeros((2, 0), np.int64)


def _epb_run(words: np.ndarray, cands: np.ndarray, pos: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The blocks of the chain of candidate EPBs from byte ``pos``, or None."""
    starts, lengths = cands
    j = int(np.searchsorted(starts, pos // 4))
    if j >= len(starts) or starts[j] != pos // 4:
        return None
    follows = starts[j + 1:] == starts[j:-1] + lengths[j:-1] // 4
    broken = np.flatnonzero(~follows)
    end = j + 1 + (int(broken[0]) if len(broken) else len(follows))
    return starts[j:end], lengths[j:end]


def _epb_rows(run: tuple[np.ndarray, np.ndarray], words: np.ndarray, interfaces: list, ifaces: list,
              rows: _Rows, number: int, stats: ReadStats) -> int:
    """Add a run of EPBs to ``rows``; returns the last frame number."""
    blocks, _lengths = run
    n = len(blocks)
    iface_id = words[blocks + 2].astype(np.int64)
    stamp = (words[blocks + 3].astype(np.uint64) << np.uint64(32)) | words[blocks + 4].astype(np.uint64)
    caplen = words[blocks + 5].astype(np.int64)
    wirelen = words[blocks + 6]
    numbers = np.arange(number + 1, number + 1 + n, dtype=np.int64)
    ts = np.empty(n, np.float64)
    local = np.empty(n, np.int64)
    for index in np.unique(iface_id).tolist():
        it = interfaces[index]
        mine = np.flatnonzero(iface_id == index)
        v = stamp[mine]
        if int(v.max()) < (1 << 53) and abs(it.offset) < (1 << 53) and it.divisor < (1 << 53):
            # Exact integers: numpy's division is the correctly rounded one Python's is.
            ts[mine] = v.astype(np.float64) / it.divisor + float(it.offset)
        else:
            ts[mine] = [x / it.divisor + it.offset for x in v.tolist()]
        local[mine] = _index(ifaces, it)
        it.last_ts = float(ts[mine[-1]])
        it.records += len(mine)
    stats.records += n
    stats.snapped += int(np.count_nonzero(caplen < wirelen))
    rows.add(blocks.astype(np.int64) * 4 + 28, caplen, ts, numbers, local)
    return number + n


def _concat(pieces: list[FrameChunk], buf: bytes) -> FrameChunk | None:
    if not pieces:
        return None
    if len(pieces) == 1:
        return pieces[0]
    others: dict[int, PacketRecord] = {}
    at = 0
    for p in pieces:
        others.update({at + i: r for i, r in p.others.items()})
        at += len(p)
    cols = {name: np.concatenate([getattr(p, name) for p in pieces]) for name in (
        "number", "ts", "kind", "ip0", "total", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport",
        "first_byte")}
    return FrameChunk(buf=buf, others=others, **cols)


def _record_end(buf: bytes, start: int) -> int:
    return start + 16 + struct.unpack_from("<I", buf, start + 8)[0]


def _frame(buf: bytes, divisor: int, limit: int) -> tuple[np.ndarray, int | None]:
    """Offsets of the complete records in ``buf`` (which starts with a record), and the
    offset of a record whose length is impossible (None when there is none)."""
    size = len(buf)
    if size < 16:
        return np.zeros(0, np.int64), None
    a = np.frombuffer(buf, np.uint8)
    cand = np.flatnonzero(a[3:size - 12] == buf[3])
    headers = sliding_window_view(a, 16)[cand].view("<u4")
    ok = (headers[:, 1] < divisor) & (headers[:, 2] <= limit)
    starts = cand[ok].astype(np.int64)
    ends = starts + 16 + headers[ok, 2].astype(np.int64)
    if len(starts) and starts[0] == 0 and np.array_equal(starts[1:], ends[:-1]):
        last_end = int(ends[-1])
        if last_end > size:                          # the last record continues in the next read
            return starts[:-1], None
        if last_end > size - 16:                     # what follows is less than a header
            return starts, None
    return _frame_loop(buf, limit)


def _frame_loop(buf: bytes, limit: int) -> tuple[np.ndarray, int | None]:
    """pcap.py's framing, one record at a time."""
    unpack = struct.Struct("<8xI").unpack_from
    size = len(buf)
    pos = 0
    out = []
    corrupt = None
    while pos + 16 <= size:
        (caplen,) = unpack(buf, pos)
        if caplen > limit:
            corrupt = pos
            break
        if pos + 16 + caplen > size:
            break
        out.append(pos)
        pos += 16 + caplen
    return np.array(out, np.int64), corrupt


def _field(w: np.ndarray, at: int, fmt: str) -> np.ndarray:
    """Column ``at`` of every row of the gathered bytes ``w`` read as ``fmt`` (a strided view, no copy)."""
    if not len(w):
        return np.zeros(0, fmt)
    return np.ndarray((len(w),), fmt, w, at, (w.shape[1],))


class _Link(NamedTuple):
    """A link layer and the rows of a chunk captured on it."""

    rows: np.ndarray | None        # None: every row
    link: Callable | None          # pcap.py's parser for it (None: unknown link type)
    name: str


def _records(reader, buf: bytes, starts: np.ndarray, number: int, divisor: int, link, linktype: int,
             link_name: str) -> FrameChunk | None:
    """The complete classic pcap records at ``starts``, parsed; counted in the stats."""
    stats = reader.stats
    k = len(starts)
    if not k:
        return None
    a = np.frombuffer(buf, np.uint8)
    # One gather per record: its pcap header and the first bytes of its frame. The last
    # records of the buffer may be shorter than that: their header is read alone.
    span = 16 + _WINDOW
    inside = starts + span <= len(buf)
    rows = np.arange(k) if inside[-1] else np.flatnonzero(inside)
    w = sliding_window_view(a, span)[starts[rows]] if len(rows) else np.zeros((0, span), np.uint8)
    if len(rows) == k:
        sec, frac = _field(w, 0, "<u4"), _field(w, 4, "<u4")
        caplen, wirelen = _field(w, 8, "<u4").astype(np.int64), _field(w, 12, "<u4")
    else:
        heads = sliding_window_view(a, 16)[starts].view("<u4")
        sec, frac, caplen, wirelen = heads[:, 0], heads[:, 1], heads[:, 2].astype(np.int64), heads[:, 3]
    ts = sec.astype(np.float64) + frac.astype(np.float64) / divisor
    stats.records += k
    stats.snapped += int(np.count_nonzero(caplen < wirelen))
    stats.link_types[link_name] += k
    return _classify(reader, buf, starts + 16, caplen, ts, np.arange(number + 1, number + 1 + k, dtype=np.int64),
                     [_Link(None, link, link_name)], (w, rows, 16))


def _classify(reader, buf: bytes, frame: np.ndarray, caplen: np.ndarray, ts: np.ndarray, numbers: np.ndarray,
              links: list[_Link], gathered: tuple[np.ndarray, np.ndarray, int] | None = None) -> FrameChunk | None:
    """Rows for the frames at ``frame`` (their records' stats already counted): plain UDP parsed
    here, every other frame by pcap.py's per-frame code, non-IP and damaged frames counted."""
    stats = reader.stats
    k = len(frame)
    size = len(buf)
    if gathered is None:
        inside = frame + _WINDOW <= size
        wrows = np.arange(k) if inside.all() else np.flatnonzero(inside)
        w = (sliding_window_view(np.frombuffer(buf, np.uint8), _WINDOW)[frame[wrows]] if len(wrows)
             else np.zeros((0, _WINDOW), np.uint8))
        off = 0
    else:
        w, wrows, off = gathered
    kind = np.zeros(k, np.int8)
    total = np.zeros(k, np.int64)
    src_hi = np.zeros(k, np.uint64)
    src_lo = np.zeros(k, np.uint64)
    dst_hi = np.zeros(k, np.uint64)
    dst_lo = np.zeros(k, np.uint64)
    sport = np.full(k, -1, np.int64)
    dport = np.full(k, -1, np.int64)
    first = np.full(k, -1, np.int64)
    ip0 = frame.copy()
    link_of = np.zeros(k, np.int32)
    inline_tcp: set[int] = set()
    for index, lk in enumerate(links):
        rows = np.arange(k) if lk.rows is None else lk.rows
        if lk.rows is not None:
            link_of[rows] = index
        fixed = _FIXED_LINKS.get(lk.link)
        if fixed is None:
            continue
        ip, proto_at, arphrd_at = fixed
        ip0[rows] += ip
        at = np.searchsorted(wrows, rows)
        found = at < len(wrows)
        found[found] &= wrows[at[found]] == rows[found]
        rows, sub = rows[found], w[at[found]] if len(wrows) != k or lk.rows is not None else w
        if not len(rows):
            continue
        o = off + ip                      # the IP header in the gathered bytes
        cap = caplen[rows]
        b0 = sub[:, o]
        total4 = _field(sub, o + 2, ">u2").astype(np.int64)
        # pcap.py's inline IPv4 fast path: the protocol field says IPv4 (no ARPHRD check), a
        # 20-byte header, no fragmentation, the length within the frame.
        inline = (b0 == 0x45) & (cap >= ip + 28) & ((_field(sub, o + 6, ">u2") & 0x3FFF) == 0)
        inline &= (total4 >= 28) & (total4 <= cap - ip)
        if proto_at >= 0:
            ltype = _field(sub, off + proto_at, ">u2")
            inline &= ltype == 0x0800
        proto = sub[:, o + 9]
        v4 = inline & (proto == 17)
        inline_tcp.update(rows[inline & (proto == 6) & (total4 >= 40)].tolist())
        # pcap.py's link parsers then _fast_ipv6: IPv6 with UDP right after the fixed header.
        plen = _field(sub, o + 4, ">u2").astype(np.int64)
        v6 = ((b0 >> 4) == 6) & (cap >= ip + 48) & (sub[:, o + 6] == 17) & (plen >= 8) & (plen + 40 <= cap - ip)
        if proto_at >= 0:
            v6 &= ltype == 0x86DD
        if arphrd_at >= 0:
            v6 &= _field(sub, off + arphrd_at, ">u2") != _ARPHRD_NETLINK
        fast = v4 | v6
        rows, sub, v6, plen, total4 = rows[fast], sub[fast], v6[fast], plen[fast], total4[fast]
        kind[rows] = np.where(v6, KIND_UDP6, KIND_UDP4)
        # Both readings for every row, then each row takes its own.
        total[rows] = np.where(v6, plen + 40, total4)
        src_hi[rows] = np.where(v6, _field(sub, o + 8, ">u8"), 0)
        src_lo[rows] = np.where(v6, _field(sub, o + 16, ">u8"), _field(sub, o + 12, ">u4"))
        dst_hi[rows] = np.where(v6, _field(sub, o + 24, ">u8"), 0)
        dst_lo[rows] = np.where(v6, _field(sub, o + 32, ">u8"), _field(sub, o + 16, ">u4"))
        sport[rows] = np.where(v6, _field(sub, o + 40, ">u2"), _field(sub, o + 20, ">u2"))
        dport[rows] = np.where(v6, _field(sub, o + 42, ">u2"), _field(sub, o + 22, ">u2"))
        first[rows] = np.where(v6, np.where(plen > 8, sub[:, o + 48], -1), np.where(total4 > 28, sub[:, o + 28], -1))

    others: dict[int, PacketRecord] = {}
    keep = kind != KIND_OTHER
    n_fast = int(np.count_nonzero(keep))
    slow = np.flatnonzero(~keep)
    if len(slow):
        non_ip = stats.non_ip
        for i in slow.tolist():
            lk = links[link_of[i]]
            ts_i = float(ts[i])
            if lk.link is None:
                non_ip[lk.name] += 1
                continue
            if i in inline_tcp:
                # pcap.py's inline IPv4/TCP record, built as it builds it (it skips the link parser).
                at = int(ip0[i])
                length, flags = struct.unpack_from("!H", buf, at + 2)[0], buf[at + 33] & 0x3F
                src, dst, sp, dp = struct.unpack_from("!IIHH", buf, at + 12)
                payload = 20 + (buf[at + 32] >> 4) * 4
                others[i] = _NEW(PacketRecord, (ts_i, 4, src, dst, 6, sp, dp, flags, 0, 0, 0, False,
                                                buf[at:at + length], 20, min(payload, length), None, None))
                keep[i] = True
                continue
            start = int(frame[i])
            rec = reader.link_frame(lk.link, buf, start, start + int(caplen[i]), ts_i, int(numbers[i]))
            if rec is not None:
                others[i] = rec
                keep[i] = True

    stats.ip += n_fast + len(others)
    if n_fast + len(others) == 0:
        return None
    if n_fast + len(others) == k:
        return FrameChunk(buf=buf, number=numbers, ts=ts, kind=kind, ip0=ip0, total=total, src_hi=src_hi,
                          src_lo=src_lo, dst_hi=dst_hi, dst_lo=dst_lo, sport=sport, dport=dport,
                          first_byte=first, others=others)
    rows_kept = np.flatnonzero(keep)
    others = {j: others[i] for j, i in enumerate(rows_kept.tolist()) if i in others}
    return FrameChunk(buf=buf, number=numbers[rows_kept], ts=ts[rows_kept], kind=kind[rows_kept],
                      ip0=ip0[rows_kept], total=total[rows_kept], src_hi=src_hi[rows_kept],
                      src_lo=src_lo[rows_kept], dst_hi=dst_hi[rows_kept], dst_lo=dst_lo[rows_kept],
                      sport=sport[rows_kept], dport=dport[rows_kept], first_byte=first[rows_kept],
                      others=others)
