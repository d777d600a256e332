"""Witness packets: built with Scapy from the class template, checksums right, written as pcap."""

from __future__ import annotations

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
