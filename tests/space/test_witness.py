"""Witness packets: built with Scapy from the class template, checksums right, written as pcap."""

from __future__ import annotations

import ipaddress
import struct

from space_helpers import BROKEN, flows, load, profile

from fwtest.space.proof import prove, write_witnesses
from fwtest.space.witness import _incremental


def ones_sum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def header_ok(data: bytes) -> bool:
    return ones_sum(data[:(data[0] & 0x0F) * 4]) == 0xFFFF


def udp_ok(data: bytes) -> bool:
    ihl = (data[0] & 0x0F) * 4
    udp = data[ihl:]
    pseudo = data[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return ones_sum(pseudo + udp) == 0xFFFF


def test_incremental_udp_checksum_is_the_checksum_of_the_rewritten_datagram():
    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw

    payload = bytes(range(256)) * 8
    old = IP(src="198.51.100.1", dst="203.0.113.62") / UDP(sport=5060, dport=5060) / Raw(payload)
    new = IP(src="198.51.100.77", dst="203.0.113.9") / UDP(sport=40000, dport=5060) / Raw(payload)
    old_sum = IP(bytes(old))[UDP].chksum
    new_sum = IP(bytes(new))[UDP].chksum
    before = bytes.fromhex("c6336401cb00713e") + struct.pack("!HH", 5060, 5060)
    after = bytes.fromhex("c633644dcb007109") + struct.pack("!HH", 40000, 5060)
    assert _incremental(old_sum, before, after) == new_sum


def test_fragment_witnesses_keep_a_valid_datagram_checksum_and_write_as_pcap(tmp_path):
    from scapy.utils import rdpcap

    from fwtest.space.classes import reassemble
    from fwtest.space.witness import build_witness

    proof = prove(load(BROKEN[0].parent / "fragments-stateless.yaml"), profile(), flows=flows())
    later = next(f for f in proof.findings if f.label == "INVITE (later fragment)" and f.family == 4)
    w = later.witnesses[0].record
    assert w.frag == 2 and header_ok(w.data)
    # A first fragment moved to another peer host and port: its UDP checksum, updated
    # incrementally, is the checksum of the whole datagram moved the same way.
    first_cls = next(r.cls for r in proof.results if r.cls.label == "INVITE (first fragment)" and r.cls.family == 4)
    t = first_cls.template
    point = {"src": t.src + 76, "dst": t.dst, "sport": 40000, "dport": 5060, "flags": 0}
    moved_first = build_witness(first_cls, point, proof.space)
    rest = [s.record for fl in flows() for s in fl.steps
            if s.record.frag == 2 and s.record.frag_id == t.frag_id and s.record.src == t.src][:4]
    moved_rest = [r._replace(data=r.data[:12] + moved_first.data[12:20] + r.data[20:]) for r in rest]
    whole = reassemble([moved_first, *moved_rest])
    assert header_ok(moved_first.data) and udp_ok(whole.data)
    files = write_witnesses(proof, tmp_path)
    assert len(files) == sum(1 for f in proof.findings if f.witnesses)
    first = rdpcap(str(files[0]))
    assert bytes(first[0]) == proof.findings[0].witnesses[0].record.data
    assert files[0].name.startswith("001-emergency-call-udp-ipv4-") and files[0].name.endswith("-drop-rest.pcap")


def test_witness_headers_are_rewritten_payload_kept():
    proof = prove(load(BROKEN[0].parent / "string-hits-sos.yaml"), profile(), flows=flows())
    f = next(f for f in proof.findings if f.label == "INVITE" and f.family == 4)
    w = f.witnesses[0].record
    cls = next(r.cls for r in proof.results if r.cls.label == "INVITE" and r.cls.family == 4
               and r.cls.flow == "emergency-call" and r.cls.transport == "udp")
    assert header_ok(w.data) and udp_ok(w.data)
    assert w.payload == cls.template.payload and b"urn:service:sos" in w.payload


def scapy_witness(cls, point) -> bytes:
    """The witness as Scapy builds it: the template dissected, fields set, checksums redone
    (a first fragment keeps its datagram checksum, updated for the rewritten words)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    from fwtest.space.witness import _addr_bytes
    from fwtest.traffic.record import FIRST_FRAGMENT, LATER_FRAGMENT

    t = cls.template
    pkt = IP(t.data) if t.family == 4 else IPv6(t.data)
    pkt.src = str(ipaddress.ip_address(point["src"]) if t.family == 4 else ipaddress.IPv6Address(point["src"]))
    pkt.dst = str(ipaddress.ip_address(point["dst"]) if t.family == 4 else ipaddress.IPv6Address(point["dst"]))
    if t.family == 4:
        del pkt.chksum
    layer = None
    if t.frag != LATER_FRAGMENT:
        layer = pkt[UDP] if t.proto == 17 and pkt.haslayer(UDP) else pkt[TCP] if t.proto == 6 and pkt.haslayer(TCP) \
            else None
    if layer is not None:
        old_ports = struct.pack("!HH", layer.sport, layer.dport)
        layer.sport, layer.dport = point["sport"], point["dport"]
        if t.proto == 6:
            layer.flags = point["flags"]
        if t.frag == FIRST_FRAGMENT:
            old = _addr_bytes(t.src, t.family) + _addr_bytes(t.dst, t.family) + old_ports
            new = _addr_bytes(point["src"], t.family) + _addr_bytes(point["dst"], t.family) + struct.pack(
                "!HH", point["sport"], point["dport"])
            if layer.chksum:
                layer.chksum = _incremental(layer.chksum, old, new) or 0xFFFF
        else:
            del layer.chksum
    return bytes(pkt)


def test_witness_bytes_are_what_scapy_builds_for_every_class():
    # build_witness patches bytes (no Scapy import in a failing check); Scapy is the reference.
    import random

    from space_helpers import reference

    from fwtest.space.header import HeaderSpace
    from fwtest.space.proof import classes_for
    from fwtest.space.witness import build_witness

    stateless = load(BROKEN[0].parent / "fragments-stateless.yaml")   # the rules see fragments
    space = HeaderSpace.for_rulesets([reference(), stateless], profile())
    rng = random.Random(7)
    classes = [*classes_for(space, reference(), profile(), flows()),
               *classes_for(space, stateless, profile(), flows())]
    kinds = set()
    for cls in classes:
        point = {"src": int(rng.choice(cls.src).network_address) + 1, "dst": int(rng.choice(cls.dst).network_address) + 2,
                 "sport": rng.randint(1, 65535), "dport": rng.randint(1, 65535), "flags": cls.flags or 0}
        if cls.frag == "later":
            point["sport"], point["dport"] = cls.sport[0], cls.dport[0]
        got = build_witness(cls, point, space)
        assert got.data == scapy_witness(cls, point), cls.side_label
        kinds.add((cls.family, cls.proto, cls.frag))
    assert {(4, 17, "none"), (6, 17, "none"), (4, 6, "none"), (6, 6, "none"),
            (4, 17, "first"), (6, 17, "first"), (4, 17, "later"), (6, 17, "later")} <= kinds
