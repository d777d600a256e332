"""The chunked numpy reader gives exactly what pcap.read_frames gives: records, frame numbers, stats.

Captures are written here byte by byte in every link type the vectorised
path knows (and some it hands to pcap.py's per-frame code), with damage,
then read in chunks of many sizes (a record split across reads, records
longer than a read) and compared with ``read_frames``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import ARP
from scapy.packet import Raw

from fwtest.errors import InputError
from fwtest.traffic.pcap import ReadStats, read_frames
from fwtest.traffic.pcapfast import KIND_OTHER, KIND_UDP4, KIND_UDP6, read_chunks

ROOT = Path(__file__).resolve().parents[2]
TRACES = sorted((ROOT / "traces").glob("*/*.pcap*"))

ARP_BODY = bytes(ARP(psrc="198.51.100.7"))


def packets() -> list[bytes]:
    """IP packets of every shape the reader distinguishes."""
    out = [
        bytes(IP(src="198.51.100.7", dst="203.0.113.10", flags="DF") / UDP(sport=20000, dport=30000) / Raw(b"\x80" * 172)),
        bytes(IP(src="203.0.113.10", dst="198.51.100.7") / UDP(sport=30000, dport=20000)),          # empty payload
        bytes(IP(src="198.51.100.7", dst="203.0.113.10") / UDP(sport=5060, dport=5060) / Raw(b"OPTIONS x SIP/2.0\r\n")),
        bytes(IP(src="198.51.100.7", dst="203.0.113.10", options=b"\x01\x01\x01\x00") / UDP(sport=1, dport=2) / b"opt"),
        bytes(IP(src="198.51.100.7", dst="203.0.113.10") / TCP(sport=40000, dport=5060, flags="S")),
        bytes(IP(src="198.51.100.7", dst="203.0.113.10") / TCP(sport=40000, dport=5060, flags="PA") / b"INVITE"),
        bytes(IP(src="198.51.100.7", dst="203.0.113.10") / ICMP()),
        bytes(IPv6(src="2001:db8:100::7", dst="2001:db8:911::10") / UDP(sport=20000, dport=30000) / Raw(b"\x80" * 172)),
        bytes(IPv6(src="2001:db8:911::10", dst="2001:db8:100::7") / UDP(sport=30000, dport=20000)),
        bytes(IPv6(src="2001:db8:100::7", dst="2001:db8:911::10") / IPv6ExtHdrDestOpt() / UDP(sport=1, dport=2) / b"x"),
        bytes(IPv6(src="2001:db8:100::7", dst="2001:db8:911::10") / TCP(sport=1, dport=5060, flags="S")),
    ]
    out += [bytes(f) for f in fragment(IP(src="198.51.100.7", dst="203.0.113.10", id=7) / UDP(sport=5060, dport=5060)
                                       / Raw(b"a" * 2000), fragsize=800)]
    # Damaged: a header that claims more than the packet holds, a UDP header cut short.
    bad = bytearray(out[0])
    struct.pack_into("!H", bad, 2, 4000)
    out.append(bytes(bad))
    out.append(out[0][:24])
    return out


PACKETS = packets()


def frame(linktype: int, ip: bytes | None, *, vlan: bool = False, netlink: bool = False) -> bytes:
    """``ip`` in a frame of the link type; None gives an ARP frame."""
    version = ip[0] >> 4 if ip else 4
    ethertype = 0x0806 if ip is None else (0x0800 if version == 4 else 0x86DD)
    body = ARP_BODY if ip is None else ip
    if linktype == 1:
        tag = struct.pack("!HH", 0x8100, 100) if vlan else b""
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + tag + struct.pack("!H", ethertype) + body
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 824 if netlink else 1, 6, b"\x02" + bytes(7), ethertype) + body
    if linktype == 276:
        return struct.pack("!HHIHBB8s", ethertype, 0, 3, 824 if netlink else 1, 0, 6, b"\x02" + bytes(7)) + body
    if linktype in (101, 228, 229):
        return body if ip is not None else b"\x00" + body
    if linktype == 0:
        return struct.pack("<I", 2 if version == 4 else 30) + body
    if linktype == 147:     # a user link type nobody reads
        return body
    raise AssertionError(linktype)


def write_pcap(path: Path, frames: list[bytes], *, linktype: int = 1, nanos: bool = False, big: bool = False,
               snaplen: int = 262144, cut: int = 0, ts0: float = 1718734800.0) -> None:
    """Classic pcap; ``cut`` bytes are taken off the end of the file (a capture killed mid-write)."""
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, data in enumerate(frames):
        stamp = ts0 + i * 0.02
        sec = int(stamp)
        frac = round((stamp - sec) * (1e9 if nanos else 1e6))
        captured = data[:snaplen]
        out.append(struct.pack(e + "IIII", sec, frac, len(captured), len(data)) + captured)
    blob = b"".join(out)
    path.write_bytes(blob[:len(blob) - cut] if cut else blob)


def read_both(path: Path, chunk_bytes: int, on_error: str = "warn"):
    want_stats = ReadStats()
    want = list(read_frames(path, stats=want_stats, on_error=on_error))
    got_stats = ReadStats()
    got = []
    kinds = []
    for chunk in read_chunks(path, stats=got_stats, on_error=on_error, chunk_bytes=chunk_bytes):
        got.extend((int(chunk.number[i]), chunk.record(i)) for i in range(len(chunk)))
        kinds.extend(chunk.kind.tolist())
    return want, want_stats, got, got_stats, kinds


def assert_same(path: Path, chunk_bytes: int, on_error: str = "warn") -> list[int]:
    want, want_stats, got, got_stats, kinds = read_both(path, chunk_bytes, on_error)
    assert got == want
    assert got_stats == want_stats
    return kinds


@pytest.mark.parametrize("linktype", [1, 113, 276, 101, 228, 0, 147])
@pytest.mark.parametrize("chunk_bytes", [64, 700, 1 << 20])
def test_every_link_type_reads_as_pcap_py_reads_it(tmp_path, linktype, chunk_bytes):
    frames = [frame(linktype, p) for p in PACKETS]
    if linktype in (1, 113, 276):
        frames.append(frame(linktype, None))                          # ARP: not IP, counted
    if linktype == 1:
        frames += [frame(1, PACKETS[0], vlan=True), frame(1, PACKETS[7], vlan=True), b"\x02" * 10]
    if linktype in (113, 276):
        frames += [frame(linktype, PACKETS[0], netlink=True), frame(linktype, PACKETS[7], netlink=True)]
    path = tmp_path / "t.pcap"
    write_pcap(path, frames * 3, linktype=linktype)
    kinds = assert_same(path, chunk_bytes)
    if linktype in (1, 113, 276, 101, 228):
        # The plain UDP packets took the vectorised path.
        assert KIND_UDP4 in kinds and (KIND_UDP6 in kinds or linktype == 228) and KIND_OTHER in kinds


@pytest.mark.parametrize("nanos", [False, True])
def test_timestamps_are_pcap_py_floats(tmp_path, nanos):
    path = tmp_path / "t.pcap"
    write_pcap(path, [frame(1, PACKETS[0])] * 50, nanos=nanos, ts0=1718734800.123456)
    assert_same(path, 1 << 20)


def test_snapped_records(tmp_path):
    path = tmp_path / "t.pcap"
    write_pcap(path, [frame(1, p) for p in PACKETS], snaplen=80)
    assert_same(path, 500)


@pytest.mark.parametrize("cut", [1, 10, 17, 100])
def test_a_file_cut_short(tmp_path, cut):
    path = tmp_path / "t.pcap"
    write_pcap(path, [frame(1, p) for p in PACKETS] * 2, cut=cut)
    assert_same(path, 300)
    with pytest.raises(InputError) as fast:
        assert_same(path, 300, on_error="raise")
    with pytest.raises(InputError) as plain:
        list(read_frames(path, on_error="raise"))
    assert str(fast.value) == str(plain.value)


def test_an_impossible_length_is_the_same_error_after_the_same_records(tmp_path):
    path = tmp_path / "t.pcap"
    frames = [frame(1, p) for p in PACKETS]
    write_pcap(path, frames)
    blob = bytearray(path.read_bytes())
    at = 24 + sum(16 + len(f) for f in frames[:5])
    struct.pack_into("<I", blob, at + 8, 10 ** 7)
    path.write_bytes(bytes(blob))
    seen_fast, seen_plain = [], []
    with pytest.raises(InputError) as fast:
        for chunk in read_chunks(path, chunk_bytes=1 << 20):
            seen_fast.extend(chunk.number.tolist())
    with pytest.raises(InputError) as plain:
        for number, _ in read_frames(path):
            seen_plain.append(number)
    assert str(fast.value) == str(plain.value) and seen_fast == seen_plain == [1, 2, 3, 4, 5]


def test_other_formats_are_read_by_pcap_py(tmp_path):
    path = tmp_path / "t.pcap"
    write_pcap(path, [frame(1, p) for p in PACKETS], big=True)
    assert_same(path, 1 << 20)
    for bad in (b"", b"\xd4\xc3\xb2", b"not a capture at all, no" * 2):
        p = tmp_path / "bad.pcap"
        p.write_bytes(bad)
        with pytest.raises(InputError) as fast:
            list(read_chunks(p))
        with pytest.raises(InputError) as plain:
            list(read_frames(p))
        assert str(fast.value) == str(plain.value)


def test_payload_that_looks_like_record_headers(tmp_path):
    # Payload bytes that mimic a pcap record header (same seconds, a plausible length) make
    # the vectorised framing guess wrong; the chain check must notice and frame by hand.
    sec = 1718734800
    fake = struct.pack("<IIII", sec, 5, 60, 60) * 8
    udp = bytes(IP(src="198.51.100.7", dst="203.0.113.10") / UDP(sport=20000, dport=30000) / Raw(fake))
    path = tmp_path / "t.pcap"
    write_pcap(path, [frame(1, udp), frame(1, PACKETS[0])] * 20, ts0=float(sec))
    assert_same(path, 1 << 20)


@pytest.mark.parametrize("trace", TRACES, ids=lambda p: p.name[:30])
def test_real_captures(trace):
    for chunk_bytes in (1000, 1 << 20):
        assert_same(trace, chunk_bytes)


@settings(max_examples=40, deadline=None)
@given(picks=st.lists(st.integers(0, len(PACKETS)), min_size=0, max_size=30),
       linktype=st.sampled_from([1, 113, 276, 101]), chunk_bytes=st.integers(16, 3000),
       cut=st.integers(0, 40), snaplen=st.sampled_from([60, 262144]))
def test_any_capture(tmp_path_factory, picks, linktype, chunk_bytes, cut, snaplen):
    frames = [frame(linktype, PACKETS[i] if i < len(PACKETS) else None) for i in picks]
    path = tmp_path_factory.mktemp("any") / "t.pcap"
    write_pcap(path, frames, linktype=linktype, cut=min(cut, sum(16 + len(f) for f in frames)), snaplen=snaplen)
    assert_same(path, chunk_bytes)


def test_chunks_bound_the_memory(tmp_path):
    path = tmp_path / "t.pcap"
    write_pcap(path, [frame(1, PACKETS[0])] * 20000)
    sizes = [len(c.buf) for c in read_chunks(path, chunk_bytes=100_000)]
    assert len(sizes) > 30 and max(sizes) <= 100_000
    total = sum(len(c) for c in read_chunks(path, chunk_bytes=100_000))
    assert total == 20000
    assert np.all(np.diff(np.concatenate([c.number for c in read_chunks(path, chunk_bytes=100_000)])) == 1)


# ----------------------------------------------------------------------------- pcapng

def block(kind: int, body: bytes, e: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(e + "II", kind, length) + body + struct.pack(e + "I", length)


def shb(e: str = "<") -> bytes:
    return block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def idb(linktype: int, *, tsresol: int | None = None, tsoffset: int = 0, snaplen: int = 0, e: str = "<") -> bytes:
    options = b""
    if tsresol is not None:
        options += struct.pack(e + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0"
    if tsoffset:
        options += struct.pack(e + "HHq", 14, 8, tsoffset)
    if options:
        options += struct.pack(e + "HH", 0, 0)
    return block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + options, e)


def epb(iface: int, stamp: int, data: bytes, *, wirelen: int | None = None, comment: bool = False,
        e: str = "<") -> bytes:
    body = struct.pack(e + "IIIII", iface, stamp >> 32, stamp & 0xFFFFFFFF, len(data), wirelen or len(data)) + data
    body += b"\0" * (-len(body) % 4)
    if comment:
        body += struct.pack(e + "HH", 1, 5) + b"hello\0\0\0" + struct.pack(e + "HH", 0, 0)
    return block(6, body, e)


def spb(data: bytes, wirelen: int | None = None) -> bytes:
    return block(3, struct.pack("<I", wirelen or len(data)) + data)


def opb(iface: int, stamp: int, data: bytes) -> bytes:
    return block(2, struct.pack("<HHIIII", iface, 0, stamp >> 32, stamp & 0xFFFFFFFF, len(data), len(data)) + data)


ISB = block(5, struct.pack("<III", 0, 0, 0))
NRB = block(4, struct.pack("<HH", 0, 0))


def pcapng_file(path: Path, picks: list[int], *, second_section: str | None = None, cut: int = 0) -> None:
    """Three interfaces (Ethernet in µs, Linux cooked v2 in ns with an offset, raw IP in 2^-10 s),
    packets on each, the odd SPB, OPB, statistics and name blocks; maybe a second section."""
    out = [shb(), idb(1), idb(276, tsresol=9, tsoffset=5), idb(101, tsresol=0x8A, snaplen=90), NRB]
    base = 1718734800
    for n, pick in enumerate(picks):
        data = PACKETS[pick % len(PACKETS)]
        where = pick % 7
        if where < 3:
            out.append(epb(0, (base * 10 ** 6) + n * 20000, frame(1, data), comment=n % 5 == 0))
        elif where == 3:
            out.append(epb(1, (base * 10 ** 9) + n * 20_000_000 + 7, frame(276, data)))
        elif where == 4:
            out.append(epb(2, (base << 10) + n * 20, data[:90], wirelen=len(data)))
        elif where == 5:
            out.append(spb(frame(1, data)))
        else:
            out.append(opb(0, (base * 10 ** 6) + n * 20000, frame(1, data)))
    out.append(ISB)
    if second_section:
        e = second_section
        out += [shb(e), idb(1, e=e)] + [epb(0, (base * 10 ** 6) + n, frame(1, PACKETS[n % len(PACKETS)]), e=e)
                                         for n in range(5)]
    blob = b"".join(out)
    path.write_bytes(blob[:len(blob) - cut] if cut else blob)


@pytest.mark.parametrize("second_section", [None, "<", ">"])
@pytest.mark.parametrize("chunk_bytes", [64, 500, 1 << 20])
def test_pcapng_reads_as_pcap_py_reads_it(tmp_path, second_section, chunk_bytes):
    path = tmp_path / "t.pcapng"
    pcapng_file(path, list(range(60)) * 2, second_section=second_section)
    kinds = assert_same(path, chunk_bytes)
    assert KIND_UDP4 in kinds and KIND_UDP6 in kinds


@pytest.mark.parametrize("cut", [1, 4, 13, 40])
def test_pcapng_cut_short(tmp_path, cut):
    path = tmp_path / "t.pcapng"
    pcapng_file(path, list(range(30)), cut=cut)
    assert_same(path, 256)
    with pytest.raises(InputError) as fast:
        assert_same(path, 256, on_error="raise")
    with pytest.raises(InputError) as plain:
        list(read_frames(path, on_error="raise"))
    assert str(fast.value) == str(plain.value)


@pytest.mark.parametrize("damage", ["trailer", "length", "interface", "caplen"])
def test_pcapng_damage_is_the_same_error_after_the_same_packets(tmp_path, damage):
    path = tmp_path / "t.pcapng"
    pcapng_file(path, [0, 7, 14, 21, 28])           # five EPBs on interface 0
    blob = bytearray(path.read_bytes())
    at = blob.rfind(struct.pack("<I", 6), 0, len(blob) - len(ISB))   # the last EPB
    length = struct.unpack_from("<I", blob, at + 4)[0]
    if damage == "trailer":
        struct.pack_into("<I", blob, at + length - 4, length + 4)
    elif damage == "length":
        struct.pack_into("<I", blob, at + 4, length + 2)
    elif damage == "interface":
        struct.pack_into("<I", blob, at + 8, 9)
    else:
        struct.pack_into("<I", blob, at + 20, length)
    path.write_bytes(bytes(blob))
    seen_fast, seen_plain = [], []
    with pytest.raises(InputError) as fast:
        for chunk in read_chunks(path, chunk_bytes=1 << 20):
            seen_fast.extend(chunk.number.tolist())
    with pytest.raises(InputError) as plain:
        for number, _ in read_frames(path):
            seen_plain.append(number)
    assert str(fast.value) == str(plain.value) and seen_fast == seen_plain


@settings(max_examples=30, deadline=None)
@given(picks=st.lists(st.integers(0, 200), max_size=40), chunk_bytes=st.integers(32, 2000),
       cut=st.integers(0, 30), second=st.sampled_from([None, "<", ">"]))
def test_any_pcapng(tmp_path_factory, picks, chunk_bytes, cut, second):
    path = tmp_path_factory.mktemp("ng") / "t.pcapng"
    pcapng_file(path, picks, second_section=second, cut=cut)
    assert_same(path, chunk_bytes)
