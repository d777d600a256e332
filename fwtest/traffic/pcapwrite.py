"""Writing packet records as a classic pcap file (Ethernet link type).

Records hold IP packets; pcap readers (tcpdump, tshark, Wireshark, Scapy)
expect link-layer frames, so each packet gets an Ethernet II header with
fixed, locally administered MAC addresses (which end is which follows the
record's direction when it has interfaces, so a capture shows two stations).
Written with ``struct`` (no Scapy): the pcap format is a 24-byte file header
and a 16-byte header per packet.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from fwtest.traffic.callflow import CallFlow
from fwtest.traffic.record import PacketRecord

PCAP_MAGIC = 0xA1B2C3D4          # microsecond timestamps
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101                # the packet starts with its IP header
SNAPLEN = 262144
EPOCH = 1718734800.0              # 2024-06-18 18:20:00 UTC: synthetic timelines start here
PEER_MAC = bytes.fromhex("020000000001")     # locally administered (bit 1 of the first octet)
PSAP_MAC = bytes.fromhex("020000000002")
ETHERTYPE = {4: 0x0800, 6: 0x86DD}
FLOW_GAP = 1.0                    # seconds between flows laid on one timeline


def _frame(record: PacketRecord, peers_iface: str | None) -> bytes:
    towards_psap = record.iface_in is not None and record.iface_in == peers_iface
    src, dst = (PEER_MAC, PSAP_MAC) if towards_psap else (PSAP_MAC, PEER_MAC)
    return dst + src + struct.pack("!H", ETHERTYPE[record.family]) + record.data


def write_pcap(records: Iterable[PacketRecord], path: str | Path, *, epoch: float = EPOCH,
               peers_iface: str | None = "eth0", raw_ip: bool = False) -> int:
    """Write the records (timestamps relative to ``epoch``) to ``path``; returns the packet count.
    Ethernet frames (MACs by direction), or with ``raw_ip`` the IP packets alone."""
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN,
                            LINKTYPE_RAW if raw_ip else LINKTYPE_ETHERNET))
        for record in records:
            frame = record.data if raw_ip else _frame(record, peers_iface)
            stamp = epoch + record.ts
            seconds = int(stamp)
            micros = int(round((stamp - seconds) * 1_000_000))
            if micros >= 1_000_000:
                seconds, micros = seconds + 1, micros - 1_000_000
            captured = frame[:SNAPLEN]
            f.write(struct.pack("<IIII", seconds, micros, len(captured), len(frame)))
            f.write(captured)
            count += 1
    return count


def lay_out(flows: list[CallFlow]) -> list[PacketRecord]:
    """The flows' records on one timeline: each flow after the previous one ends
    (surge flows, which already share a timeline, stay together as one block)."""
    blocks: list[list[CallFlow]] = []
    surge: list[CallFlow] = []
    for flow in flows:
        if flow.flow == "surge":
            if not surge:
                blocks.append(surge)
            surge.append(flow)
        else:
            blocks.append([flow])
    out: list[PacketRecord] = []
    offset = 0.0
    for block in blocks:
        records = sorted((s.record for flow in block for s in flow.steps), key=lambda r: r.ts)
        if not records:
            continue
        out.extend(r._replace(ts=round(offset + r.ts, 6)) for r in records)
        offset = out[-1].ts + FLOW_GAP
    return out


def write_flows(flows: list[CallFlow], path: str | Path, *, peers_iface: str | None = None) -> int:
    """Write synthetic flows one after another to a pcap; returns the packet count.

    ``peers_iface`` (the profile's peer-side interface) orients the MAC
    addresses; by default it is guessed from the first flow's first packet,
    which the peer side sends in every flow but the callback.
    """
    if peers_iface is None:
        for flow in flows:
            if flow.steps:
                step = flow.steps[0]
                peers_iface = step.record.iface_in if step.direction == "in" else step.record.iface_out
                break
    return write_pcap(lay_out(flows), path, peers_iface=peers_iface)
