"""The streaming capture reader: every format and link type, damage, memory, and real captures.

Files are written here byte by byte (the formats are simple and public), read
back, and each record must equal ``parse_ip`` of the IP packet that went in;
tshark, where installed, reads the same files as an independent check.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from fwtest.errors import InputError
from fwtest.traffic.pcap import ReadStats, read_frames, read_records
from fwtest.traffic.record import MalformedPacket, parse_ip

ROOT = Path(__file__).resolve().parents[2]
NG911 = ROOT / "traces" / "ng911-lab"
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="needs tshark (apt-get install tshark)")

# -- writing captures, byte by byte -----------------------------------------------------------

ARP_FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="198.51.100.7"))


def link_frame(linktype: int, ip: bytes | None, *, vlans: tuple[int, ...] = (), arp: bool = False,
               null_family6: int = 30) -> bytes:
    """One frame of the link type around an IP packet (or an ARP message when ``arp``)."""
    version = ip[0] >> 4 if ip else 4
    ethertype = 0x0806 if arp else (0x0800 if version == 4 else 0x86DD)
    payload = ARP_FRAME[14:] if arp else ip
    if linktype == 1:
        tags = b"".join(struct.pack("!HH", tpid, 100 + i) for i, tpid in enumerate(vlans))
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + tags + struct.pack("!H", ethertype) + payload
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", ethertype) + payload
    if linktype == 276:
        return struct.pack("!HHIHBB8s", ethertype, 0, 3, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + payload
    if linktype in (101, 228, 229):
        return ip
    if linktype == 0:        # host byte order (little-endian here); macOS's AF_INET6
        return struct.pack("<I", 2 if version == 4 else null_family6) + ip
    if linktype == 108:      # network byte order; OpenBSD's AF_INET6
        return struct.pack(">I", 2 if version == 4 else 24) + ip
    raise AssertionError(linktype)


def pcap_bytes(frames: list[tuple[float, bytes]], linktype: int, *, endian: str = "<", nano: bool = False,
               snaplen: int = 65535, wirelen_extra: int = 0) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    scale = 10**9 if nano else 10**6
    for ts, frame in frames:
        ticks = round(ts * scale)
        out.append(struct.pack(endian + "IIII", ticks // scale, ticks % scale, len(frame),
                               len(frame) + wirelen_extra) + frame)
    return b"".join(out)


def _block(endian: str, block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(endian + "II", block_type, length) + body + struct.pack(endian + "I", length)


def _options(endian: str, options: list[tuple[int, bytes]]) -> bytes:
    out = b""
    for code, value in options:
        out += struct.pack(endian + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)
    return out + struct.pack(endian + "HH", 0, 0) if options else b""


def shb(endian: str = "<") -> bytes:
    return _block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(linktype: int, endian: str = "<", *, tsresol: int | None = None, tsoffset: int | None = None,
        snaplen: int = 0, name: str | None = None) -> bytes:
    options = []
    if name is not None:
        options.append((2, name.encode()))
    if tsresol is not None:
        options.append((9, bytes([tsresol])))
    if tsoffset is not None:
        options.append((14, struct.pack(endian + "q", tsoffset)))
    return _block(endian, 1, struct.pack(endian + "HHI", linktype, 0, snaplen) + _options(endian, options))


def resolution_divisor(tsresol: int | None) -> int:
    if tsresol is None:
        return 10**6
    return 2 ** (tsresol & 0x7F) if tsresol & 0x80 else 10**tsresol


def epb(iface: int, ticks: int, frame: bytes, endian: str = "<", wirelen: int | None = None) -> bytes:
    body = struct.pack(endian + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame),
                       len(frame) if wirelen is None else wirelen)
    return _block(endian, 6, body + frame + b"\0" * (-len(frame) % 4))


def spb(frame: bytes, endian: str = "<") -> bytes:
    return _block(endian, 3, struct.pack(endian + "I", len(frame)) + frame)


def opb(iface: int, ticks: int, frame: bytes, endian: str = "<") -> bytes:
    body = struct.pack(endian + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
    return _block(endian, 2, body + frame)


# -- packets ------------------------------------------------------------------------------------

PEER4, PSAP4 = "198.51.100.7", "203.0.113.10"
PEER6, PSAP6 = "2001:db8:100::7", "2001:db8:911::10"


def sample_packets() -> list[bytes]:
    """IP packets of every shape the reader has a path for."""
    big = IP(src=PEER4, dst=PSAP4, id=7) / UDP(sport=5060, dport=5060) / Raw(b"I" * 2000)
    big6 = IPv6(src=PEER6, dst=PSAP6) / IPv6ExtHdrFragment(id=9) / UDP(sport=5060, dport=5060) / Raw(b"J" * 2000)
    return [
        bytes(IP(src=PEER4, dst=PSAP4) / UDP(sport=16384, dport=20000) / Raw(b"\x80" + b"\0" * 171)),
        bytes(IP(src=PEER4, dst=PSAP4) / TCP(sport=40000, dport=5060, flags="PA") / Raw(b"INVITE sip:x")),
        bytes(IP(src=PEER4, dst=PSAP4) / TCP(sport=40000, dport=5060, flags="S", options=[("MSS", 1460)])),
        bytes(IP(src=PEER4, dst=PSAP4, options=[b"\x94\x04\x00\x00"]) / UDP(sport=1, dport=2) / Raw(b"opt")),
        bytes(IP(src=PEER4, dst=PSAP4) / ICMP()),
        bytes(IP(src=PEER4, dst=PSAP4) / UDP(sport=5060, dport=5060)),      # no payload: 28 bytes
        *[bytes(f) for f in fragment(big, fragsize=1480)],
        bytes(IPv6(src=PEER6, dst=PSAP6) / UDP(sport=5060, dport=5060) / Raw(b"OPTIONS")),
        bytes(IPv6(src=PEER6, dst=PSAP6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(dport=5061)),
        *[bytes(f) for f in fragment6(big6, 1280)],
        bytes(Ether() / IP(src=PEER4, dst=PSAP4) / UDP(sport=9, dport=9) / Raw(b"pad"))[14:] + b"\0" * 6,
    ]


SAMPLES = sample_packets()
LINKTYPES = [1, 113, 276, 101, 0, 108]


def expected(ip: bytes, ts: float):
    try:
        return parse_ip(ip, ts)
    except MalformedPacket:
        return None


def same_record(got, want) -> bool:
    return got._replace(ts=0.0) == want._replace(ts=0.0) and abs(got.ts - want.ts) < 1e-6


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- every format and link type -----------------------------------------------------------------

@pytest.mark.parametrize("linktype", LINKTYPES)
@pytest.mark.parametrize("variant", ["le-us", "be-us", "le-ns", "be-ns"])
def test_pcap_every_link_type_and_variant(tmp_path, linktype, variant):
    endian = "<" if variant.startswith("le") else ">"
    frames = [(1700000000.25 + i * 0.02, link_frame(linktype, ip)) for i, ip in enumerate(SAMPLES)]
    path = write(tmp_path, "x.pcap", pcap_bytes(frames, linktype, endian=endian, nano=variant.endswith("ns")))
    stats = ReadStats()
    got = list(read_frames(path, stats=stats, on_error="raise"))
    assert [n for n, _ in got] == list(range(1, len(SAMPLES) + 1))
    for (_, rec), (ts, _), ip in zip(got, frames, SAMPLES, strict=True):
        assert same_record(rec, parse_ip(ip, ts))
    assert (stats.format, stats.records, stats.ip, stats.malformed) == ("pcap", len(SAMPLES), len(SAMPLES), 0)


def test_raw_ipv4_and_ipv6_link_types(tmp_path):
    v4 = [ip for ip in SAMPLES if ip[0] >> 4 == 4]
    v6 = [ip for ip in SAMPLES if ip[0] >> 4 == 6]
    for linktype, ips in ((228, v4), (229, v6)):
        path = write(tmp_path, f"{linktype}.pcap", pcap_bytes([(1.0, ip) for ip in ips], linktype))
        assert [r.data for r in read_records(path, on_error="raise")] == [parse_ip(ip).data for ip in ips]


def test_nanosecond_timestamps_keep_their_precision(tmp_path):
    frames = [(1700000000.123456789, link_frame(1, SAMPLES[0]))]
    rec = next(read_records(write(tmp_path, "ns.pcap", pcap_bytes(frames, 1, nano=True))))
    assert rec.ts == pytest.approx(1700000000.123456789, abs=5e-7)


@pytest.mark.parametrize("tags", [(0x8100,), (0x88A8, 0x8100), (0x9100, 0x8100), (0x88A8, 0x8100, 0x8100)])
def test_vlan_and_qinq_tags_are_stripped(tmp_path, tags):
    frames = [(float(i), link_frame(1, ip, vlans=tags)) for i, ip in enumerate(SAMPLES)]
    got = list(read_records(write(tmp_path, "vlan.pcap", pcap_bytes(frames, 1)), on_error="raise"))
    assert [r.data for r in got] == [parse_ip(ip).data for ip in SAMPLES]


def test_vlan_tag_on_cooked_capture(tmp_path):
    frame = link_frame(113, SAMPLES[0])
    frame = frame[:14] + b"\x81\x00" + b"\x00\x64\x08\x00" + frame[16:]
    rec = next(read_records(write(tmp_path, "sllvlan.pcap", pcap_bytes([(1.0, frame)], 113)), on_error="raise"))
    assert rec.data == SAMPLES[0]


def test_null_link_type_knows_every_bsd_ipv6_family(tmp_path):
    v6 = [ip for ip in SAMPLES if ip[0] >> 4 == 6]
    for family in (10, 24, 28, 30):
        frames = [(1.0, link_frame(0, ip, null_family6=family)) for ip in v6]
        path = write(tmp_path, f"null{family}.pcap", pcap_bytes(frames, 0))
        assert len(list(read_records(path, on_error="raise"))) == len(v6)
    # written by a big-endian host: the family reads as 2 << 24 in little-endian
    frame = struct.pack(">I", 2) + SAMPLES[0]
    assert next(read_records(write(tmp_path, "nullbe.pcap", pcap_bytes([(1.0, frame)], 0)))).data == SAMPLES[0]


def test_fcs_bits_in_the_link_type_field_are_ignored(tmp_path):
    frames = [(1.0, link_frame(1, SAMPLES[0]))]
    path = write(tmp_path, "fcs.pcap", pcap_bytes(frames, 1 | 0x04000000 | 0x40000000))   # F bit, FCS len 4
    assert next(read_records(path, on_error="raise")).data == SAMPLES[0]


def test_non_ip_frames_are_counted_and_skipped(tmp_path):
    frames = [
        (1.0, ARP_FRAME),
        (2.0, link_frame(1, SAMPLES[0])),
        (3.0, b"\x01\x80\xc2\x00\x00\x0e" + b"\x02" * 6 + b"\x88\xcc" + b"\0" * 40),   # LLDP
        (4.0, b"\x01" * 12 + b"\x00\x26" + b"\xaa" * 38),                                # 802.3 + LLC
        (5.0, link_frame(1, SAMPLES[0], vlans=(0x8100,), arp=True)),
    ]
    stats = ReadStats()
    got = list(read_frames(write(tmp_path, "mixed.pcap", pcap_bytes(frames, 1)), stats=stats))
    assert [n for n, _ in got] == [2]
    assert stats.non_ip == Counter({"arp": 2, "lldp": 1, "802.3/llc": 1})
    assert (stats.records, stats.ip, stats.malformed) == (5, 1, 0)
    assert "4 non-IP (arp 2" in stats.summary()


def test_snapped_frames_are_read_and_counted(tmp_path):
    short = link_frame(1, SAMPLES[1])[:54]
    stats = ReadStats()
    path = write(tmp_path, "snap.pcap", pcap_bytes([(1.0, short)], 1, snaplen=54, wirelen_extra=20))
    rec = next(read_records(path, stats=stats))
    assert (rec.sport, rec.dport, stats.snapped) == (40000, 5060, 1)


# -- pcapng -------------------------------------------------------------------------------------

@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces_with_their_own_link_types_and_resolutions(tmp_path, endian):
    # interface 0: Ethernet, microseconds; 1: cooked v2, nanoseconds, offset; 2: null, 2^-20 s.
    ifaces = [(1, None, None), (276, 9, 100), (0, 0x80 | 20, None)]
    data = shb(endian) + b"".join(idb(lt, endian, tsresol=r, tsoffset=o, name=f"if{i}")
                                  for i, (lt, r, o) in enumerate(ifaces))
    expect = []
    for i, ip in enumerate(SAMPLES):
        iface = i % 3
        linktype, resol, offset = ifaces[iface]
        ts = 1700000000 + i * 0.5
        divisor = resolution_divisor(resol)
        ticks = round((ts - (offset or 0)) * divisor)
        data += epb(iface, ticks, link_frame(linktype, ip), endian)
        expect.append(parse_ip(ip, ticks / divisor + (offset or 0)))
    stats = ReadStats()
    got = list(read_records(write(tmp_path, "multi.pcapng", data), stats=stats, on_error="raise"))
    assert len(got) == len(expect)
    for g, e in zip(got, expect, strict=True):
        assert same_record(g, e)
    assert stats.format == "pcapng"
    assert set(stats.link_types) == {"ethernet", "Linux cooked v2", "null/loopback"}


def test_pcapng_simple_and_obsolete_packet_blocks_and_skipped_blocks(tmp_path):
    frame = link_frame(1, SAMPLES[0])
    name_resolution = _block("<", 4, struct.pack("<HH", 0, 0))
    stats_block = _block("<", 5, struct.pack("<III", 0, 0, 0))
    data = (shb() + idb(1) + epb(0, 5_000_000, frame) + spb(link_frame(1, SAMPLES[1]))
            + name_resolution + opb(0, 7_000_000, link_frame(1, SAMPLES[7])) + stats_block)
    stats = ReadStats()
    got = list(read_frames(write(tmp_path, "blocks.pcapng", data), stats=stats, on_error="raise"))
    assert [n for n, _ in got] == [1, 2, 3]
    assert [r.data for _, r in got] == [SAMPLES[0], SAMPLES[1], SAMPLES[7]]
    # a simple packet block has no timestamp: the previous packet's stands in
    assert [r.ts for _, r in got] == [5.0, 5.0, 7.0]


def test_simple_packet_block_is_cut_to_the_snapshot_length(tmp_path):
    data = shb() + idb(101, snaplen=40) + spb(SAMPLES[1])
    rec = next(read_records(write(tmp_path, "spb.pcapng", data), on_error="raise"))
    assert rec.data == SAMPLES[1][:40] and rec.dport == 5060


def test_pcapng_sections_restart_interfaces_and_byte_order(tmp_path):
    data = (shb("<") + idb(1, "<") + epb(0, 1, link_frame(1, SAMPLES[0]), "<")
            + shb(">") + idb(101, ">") + epb(0, 2, SAMPLES[7], ">"))
    got = list(read_records(write(tmp_path, "sections.pcapng", data), on_error="raise"))
    assert [r.data for r in got] == [SAMPLES[0], SAMPLES[7]]


# -- property: whatever goes in comes out as parse_ip says ---------------------------------------

formats = st.sampled_from(["pcap-le", "pcap-be-ns", "pcapng-le", "pcapng-be"])


@st.composite
def ipv4_headers(draw) -> bytes:
    """An IPv4 header with fields near the fast path's edges, then arbitrary transport bytes."""
    # a full TCP-sized transport header most of the time, so the fast path is taken
    rest = draw(st.binary(min_size=20, max_size=20)) + draw(st.binary(max_size=40))
    rest = rest[:draw(st.sampled_from([len(rest), len(rest), 8, 3]))]
    ihl = draw(st.sampled_from([5, 5, 5, 6, 15, 4]))
    header_len = max(ihl * 4, 20)
    size = header_len + len(rest)
    total = draw(st.one_of(st.just(size), st.integers(18, 44), st.integers(0, size + 8)))
    frag = draw(st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x6001]))
    proto = draw(st.sampled_from([6, 17, 6, 17, 1, 132]))
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                         bytes([198, 51, 100, 7]), bytes([203, 0, 113, 10]))
    return (header + b"\0" * (header_len - 20) + rest) if header_len >= 20 else header + rest


@st.composite
def ipv6_headers(draw) -> bytes:
    """An IPv6 header with payload lengths and next headers near the fast path's edges."""
    rest = draw(st.binary(min_size=20, max_size=20)) + draw(st.binary(max_size=40))
    rest = rest[:draw(st.sampled_from([len(rest), len(rest), 8, 3]))]
    plen = draw(st.one_of(st.just(len(rest)), st.integers(0, 30), st.integers(0, len(rest) + 8)))
    next_header = draw(st.sampled_from([6, 17, 6, 17, 0, 44, 58, 59]))
    header = struct.pack("!IHBB16s16s", 6 << 28, plen, next_header, 64,
                         bytes.fromhex("20010db8010000000000000000000007"),
                         bytes.fromhex("20010db8091100000000000000000010"))
    return header + rest


ip_packets = st.one_of(
    st.sampled_from(SAMPLES),
    ipv4_headers(),
    ipv6_headers(),
    # arbitrary bytes behind a plausible first byte: the fast path must agree with parse_ip
    # on every one of them, and damaged ones must be counted, never yielded half-read
    st.builds(lambda first, rest: bytes([first]) + rest,
              st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x40]), st.binary(min_size=0, max_size=80)),
)


@settings(max_examples=150)
@given(fmt=formats, linktype=st.sampled_from([1, 113, 276, 101]),
       packets=st.lists(st.tuples(ip_packets, st.booleans()), min_size=1, max_size=8))
def test_property_records_equal_parse_ip(tmp_path_factory, fmt, linktype, packets):
    frames = []
    for i, (ip, arp) in enumerate(packets):
        arp = arp and linktype != 101
        frames.append((1000.0 + i, link_frame(linktype, ip, arp=arp), None if arp else ip))
    if fmt.startswith("pcapng"):
        endian = "<" if fmt.endswith("le") else ">"
        data = shb(endian) + idb(linktype, endian) + b"".join(
            epb(0, int(ts * 10**6), frame, endian) for ts, frame, _ in frames)
    else:
        data = pcap_bytes([(ts, frame) for ts, frame, _ in frames], linktype,
                          endian="<" if "le" in fmt else ">", nano=fmt.endswith("ns"))
    path = tmp_path_factory.mktemp("prop") / "p.cap"
    path.write_bytes(data)
    stats = ReadStats()
    got = dict(read_frames(path, stats=stats))
    malformed = non_ip = 0
    for number, (ts, _, ip) in enumerate(frames, 1):
        want = None if ip is None else expected(ip, ts)
        if ip is None:
            non_ip += 1
        elif want is None:
            malformed += 1
        if want is None:
            assert number not in got
        else:
            assert same_record(got[number], want)
    assert (stats.records, stats.malformed, sum(stats.non_ip.values())) == (len(frames), malformed, non_ip)
    if malformed:
        with pytest.raises(InputError, match=r"\[record \d+\]: malformed"):
            list(read_records(path, on_error="raise"))


def ipv4_edge(proto: int, total: int, transport: bytes, frag: int = 0, ihl: int = 5) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                         bytes([198, 51, 100, 7]), bytes([203, 0, 113, 10]))
    return header + b"\0" * (ihl * 4 - 20) + transport


# Known edges: a UDP length shorter than its header, a TCP data offset past the packet,
# a first fragment, options, a total length longer than the frame.
EDGES = [ipv4_edge(17, 24, bytes(30)), ipv4_edge(17, 28, bytes(8)), ipv4_edge(6, 40, bytes(12) + b"\xf0" + bytes(7)),
         ipv4_edge(6, 44, bytes(12) + b"\x60" + bytes(11)), ipv4_edge(17, 60, bytes(40), frag=0x2000),
         ipv4_edge(6, 64, bytes(40), ihl=6), ipv4_edge(17, 90, bytes(40)), ipv4_edge(6, 39, bytes(30))]


def ipv6_edge(next_header: int, plen: int, transport: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, plen, next_header, 64, bytes(15) + b"\x07",
                       bytes(15) + b"\x10") + transport


EDGES6 = [ipv6_edge(17, 8, bytes(8)), ipv6_edge(17, 4, bytes(10)), ipv6_edge(6, 20, bytes(12) + b"\xf0" + bytes(7)),
          ipv6_edge(6, 19, bytes(30)), ipv6_edge(17, 60, bytes(20)), ipv6_edge(0, 16, bytes(16)),
          ipv6_edge(6, 32, bytes(12) + b"\x80" + bytes(19))]


@settings(max_examples=200)
@example(fmt="pcap", linktype=1, packets=EDGES + EDGES6)
@example(fmt="pcapng", linktype=101, packets=EDGES + EDGES6)
@given(fmt=st.sampled_from(["pcap", "pcapng"]), linktype=st.sampled_from([1, 101, 113, 276]),
       packets=st.lists(st.one_of(ipv4_headers(), ipv6_headers()), min_size=1, max_size=20))
def test_property_fast_path_equals_parse_ip(tmp_path_factory, fmt, linktype, packets):
    """IPv4 and IPv6 headers at the fast paths' edges (lengths, options, fragment bits, data offsets)."""
    frames = [link_frame(linktype, ip) for ip in packets]
    if fmt == "pcap":
        data = pcap_bytes([(1.0, f) for f in frames], linktype)
    else:
        data = shb() + idb(linktype) + b"".join(epb(0, 10**6, f) for f in frames)
    path = tmp_path_factory.mktemp("fast") / f"f.{fmt}"
    path.write_bytes(data)
    got = dict(read_frames(path))
    for number, ip in enumerate(packets, 1):
        want = expected(ip, 1.0)
        assert got.get(number) == want


# -- damage ---------------------------------------------------------------------------------------

def three_record_pcap() -> bytes:
    return pcap_bytes([(float(i), link_frame(1, SAMPLES[i])) for i in range(3)], 1)


def test_truncated_last_record_is_a_counted_warning(tmp_path):
    data = three_record_pcap()
    for cut in (5, 20, len(link_frame(1, SAMPLES[2])) + 10):
        path = write(tmp_path, "cut.pcap", data[:-cut])
        stats = ReadStats()
        assert len(list(read_records(path, stats=stats))) == 2
        assert stats.truncated == 1 and stats.records == 2
        assert "record 3 truncated" in stats.warnings[0]
        with pytest.raises(InputError, match=r"cut\.pcap\[record 3\]: .*cut short"):
            list(read_records(path, on_error="raise"))


def test_truncated_pcapng_block_is_a_counted_warning(tmp_path):
    data = shb() + idb(1) + epb(0, 1, link_frame(1, SAMPLES[0])) + epb(0, 2, link_frame(1, SAMPLES[1]))
    path = write(tmp_path, "cut.pcapng", data[:-9])
    stats = ReadStats()
    assert len(list(read_records(path, stats=stats))) == 1
    assert stats.truncated == 1
    with pytest.raises(InputError, match=r"\[record 2\]"):
        list(read_records(path, on_error="raise"))


def test_corrupt_record_length_is_an_input_error_with_the_record_number(tmp_path):
    data = bytearray(three_record_pcap())
    second = 24 + 16 + len(link_frame(1, SAMPLES[0]))
    struct.pack_into("<I", data, second + 8, 0x7FFFFFFF)
    path = write(tmp_path, "bad.pcap", bytes(data))
    for on_error in ("warn", "raise"):
        with pytest.raises(InputError, match=r"bad\.pcap\[record 2\]: captured length 2147483647"):
            list(read_records(path, on_error=on_error))


@pytest.mark.parametrize("damage", ["length", "trailer", "interface", "no-idb"])
def test_corrupt_pcapng_blocks_are_input_errors(tmp_path, damage):
    good = epb(0, 1, link_frame(1, SAMPLES[0]))
    bad = bytearray(epb(0, 2, link_frame(1, SAMPLES[1])))
    header = shb() + idb(1)
    if damage == "length":
        struct.pack_into("<I", bad, 4, 30)
    elif damage == "trailer":
        struct.pack_into("<I", bad, len(bad) - 4, 4)
    elif damage == "interface":
        struct.pack_into("<I", bad, 8, 3)
    else:
        header = shb()
    path = write(tmp_path, "bad.pcapng", header + (good if damage != "no-idb" else b"") + bytes(bad))
    record = 1 if damage == "no-idb" else 2
    with pytest.raises(InputError, match=rf"bad\.pcapng\[record {record}\]: "):
        list(read_records(path))


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"GIF89a, not a capture", "not a pcap or pcapng file"),
    (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "header truncated"),
])
def test_not_a_capture(tmp_path, content, message):
    with pytest.raises(InputError, match=message):
        list(read_records(write(tmp_path, "x.pcap", content)))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read capture"):
        read_records(tmp_path / "absent.pcap")


def test_unknown_link_type_is_an_error_or_a_loud_skip(tmp_path):
    path = write(tmp_path, "wifi.pcap", pcap_bytes([(1.0, b"\x08\x00" + b"\0" * 40)], 105))
    with pytest.raises(InputError, match="link type 105 .* not supported"):
        list(read_records(path, on_error="raise"))
    stats = ReadStats()
    assert list(read_records(path, stats=stats)) == []
    assert stats.non_ip == Counter({"linktype 105": 1}) and "not supported" in stats.warnings[0]


def test_short_link_header_is_malformed(tmp_path):
    stats = ReadStats()
    path = write(tmp_path, "short.pcap", pcap_bytes([(1.0, b"\x01\x02\x03"), (2.0, link_frame(1, SAMPLES[0]))], 1))
    assert len(list(read_records(path, stats=stats))) == 1
    assert stats.malformed == 1 and "shorter than its Ethernet header" in stats.warnings[0]


# -- streaming ------------------------------------------------------------------------------------

def test_memory_is_bounded_by_the_chunk_not_the_file(tmp_path, monkeypatch):
    import fwtest.traffic.pcap as pcap

    monkeypatch.setattr(pcap, "CHUNK", 1 << 16)     # a 64 KiB read size makes the bound visible
    frame = link_frame(1, SAMPLES[0])
    one = struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame
    peaks = {}
    for count in (2_000, 20_000):                 # ~0.5 MB and ~4.6 MB of capture
        path = tmp_path / f"big{count}.pcap"
        with path.open("wb") as f:
            f.write(pcap_bytes([], 1))
            f.write(one * count)
        tracemalloc.start()
        try:
            seen = sum(1 for _ in read_records(path))
            _, peaks[count] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert seen == count
    assert peaks[20_000] < 4 * (1 << 16) + 65536, peaks
    assert peaks[20_000] < peaks[2_000] * 1.5, peaks


def test_records_spanning_chunk_boundaries(tmp_path, monkeypatch):
    import fwtest.traffic.pcap as pcap

    monkeypatch.setattr(pcap, "CHUNK", 97)      # every record straddles a refill
    frames = [(float(i), link_frame(1, ip)) for i, ip in enumerate(SAMPLES * 3)]
    for name, data in (("a.pcap", pcap_bytes(frames, 1)),
                       ("a.pcapng", shb() + idb(1) + b"".join(epb(0, i, f) for i, (_, f) in enumerate(frames)))):
        got = list(read_records(write(tmp_path, name, data), on_error="raise"))
        assert [r.data for r in got] == [parse_ip(ip).data for ip in SAMPLES * 3]


# -- against tshark -------------------------------------------------------------------------------

def tshark_fields(path: Path, *fields: str, display_filter: str | None = None) -> list[list[str]]:
    cmd = [TSHARK, "-r", str(path), "-T", "fields", "-E", "separator=|"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


@needs_tshark
@pytest.mark.parametrize("linktype", LINKTYPES)
def test_tshark_reads_our_test_files_the_same_way(tmp_path, linktype):
    frames = [(1.0 + i, link_frame(linktype, ip, vlans=(0x88A8, 0x8100) if linktype == 1 else ()))
              for i, ip in enumerate(SAMPLES)]
    path = write(tmp_path, "x.pcap", pcap_bytes(frames, linktype))
    rows = tshark_fields(path, "frame.number", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst",
                         display_filter="ip or ipv6")
    got = list(read_frames(path, on_error="raise"))
    assert [int(r[0]) for r in rows] == [n for n, _ in got]
    for row, (_, rec) in zip(rows, got, strict=True):
        src = row[1] or row[2]
        dst = row[3] or row[4]
        assert (rec.addr("src"), rec.addr("dst")) == (src.split(",")[0], dst.split(",")[0])


# -- the real NG911 lab captures -----------------------------------------------------------------

# (records, IP records, non-IP kinds) as read here; tshark agrees (test below).
NG911_EXPECTED = {
    "BCF_001_artem.success.pcap": (4015, 3765, {"arp": 250}),
    "BCF_005_bcf_005_pass.pcap": (217, 215, {"arp": 2}),
    "BCF_006_BYE_ACK_BCF_006_pass.pcap": (142, 124, {"arp": 18}),
    "BCF_010_BCF_010_tls_sip.pcap": (42, 42, {}),
    "CHFE_009_CHFE_9_pass_all_fields.pcap": (119, 119, {}),
    "CHFE_011_CHFE_011_pass.pcap": (193, 193, {}),
    "CHFE_014_Variation_1_04_sip_invite_failed_from_ESRP_no_closing_boundary.pcap": (25, 25, {}),
    "CHFE_014_Variation_2_01_sip_invite_success_from_ESRP_complex_multipart_mixed_fixed.pcap": (21, 21, {}),
    "ECRF_LVF_001_TC_ECRF_LVF_001_pass.pcap": (253, 237, {"arp": 16}),
    "ESRP_002_TC_ESRP_002_SIP_INVITE_EMERGENCY_SINGLE_pass.pcap": (57, 53, {"arp": 4}),
    "ESRP_009_MESSAGE_ESRP_009_pass.pcap": (699, 618, {"arp": 81}),
}


def test_every_ng911_capture_is_in_traces():
    assert sorted(p.name for p in NG911.glob("*.pcap")) == sorted(NG911_EXPECTED)
    assert (NG911 / "LICENSE").is_file() and "Texas A&M" in (NG911 / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(NG911_EXPECTED))
def test_ng911_captures_read_without_error(name):
    stats = ReadStats()
    records = list(read_records(NG911 / name, stats=stats, on_error="raise"))
    total, ip, non_ip = NG911_EXPECTED[name]
    assert (stats.records, len(records), dict(stats.non_ip)) == (total, ip, non_ip)
    assert stats.warning_count == 0 and stats.malformed == 0 and stats.truncated == 0


def test_ng911_multi_interface_pcapng():
    stats = ReadStats()
    list(read_records(NG911 / "ESRP_009_MESSAGE_ESRP_009_pass.pcap", stats=stats))
    assert stats.format == "pcapng"
    assert stats.link_types == Counter({"ethernet": 468, "null/loopback": 204, "Linux cooked v2": 27})


@needs_tshark
@pytest.mark.parametrize("name", sorted(NG911_EXPECTED))
def test_ng911_frames_agree_with_tshark(name):
    path = NG911 / name
    assert len(tshark_fields(path, "frame.number")) == NG911_EXPECTED[name][0]
    rows = tshark_fields(path, "frame.number", "ip.proto", "ipv6.nxt", "tcp.srcport", "udp.srcport",
                         "tcp.dstport", "udp.dstport", "frame.time_epoch", display_filter="ip or ipv6")
    got = list(read_frames(path, on_error="raise"))
    assert [int(r[0]) for r in rows] == [n for n, _ in got]
    for row, (_, rec) in zip(rows, got, strict=True):
        assert rec.ts == pytest.approx(float(row[7]), abs=1e-6)
        # the outermost header's values come first (ICMP errors quote an inner packet)
        proto = int((row[1] or row[2]).split(",")[0])
        if proto in (6, 17) and not rec.frag:
            sport = int((row[3] or row[4]).split(",")[0])
            dport = int((row[5] or row[6]).split(",")[0])
            assert (rec.sport, rec.dport) == (sport, dport)
        if proto != 0:      # IPv6 hop-by-hop: tshark names the first next header, we the transport
            assert rec.proto == proto or rec.family == 6
