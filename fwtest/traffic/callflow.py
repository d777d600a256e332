"""Synthetic call flows: what the synthesiser produces and the judge reads.

A ``CallFlow`` is one instance of a profile flow (say an emergency call over
TCP/IPv6 from one carrier host with given media ports): its packets in time
order, each tagged with the phase of the call it belongs to, so that the
outcome can be told in the words a PSAP uses ("set up, but no audio from the
caller").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from fwtest.traffic.record import PacketRecord

# Phases of a flow, in the order a call goes through them.
Phase = Literal[
    "setup",        # SIP dialog creation: INVITE .. 200 .. ACK, TCP handshakes, TLS records
    "media-in",     # RTP/RTCP or MSRP from the peer side towards the PSAP
    "media-out",    # RTP/RTCP or MSRP from the PSAP towards the peer side
    "teardown",     # BYE and its 200 OK (and TCP FINs)
    "keepalive",    # OPTIONS and its 200 OK
    "message",      # SIP MESSAGE and its 200 OK
]
Direction = Literal["in", "out"]   # in: peer side -> PSAP side; out: PSAP side -> peer side


class FlowStep(NamedTuple):
    # A tuple, not a dataclass: a warm `fwtest check` reads tens of thousands
    # of these from the cache, and tuples are built several times faster.
    record: PacketRecord
    label: str          # what a SIP ladder diagram would write: "INVITE", "200 OK (INVITE)", "RTP", "SYN"
    phase: Phase
    direction: Direction


@dataclass(frozen=True)
class CallFlow:
    flow: str           # profile flow name: emergency-call, callback, options-keepalive, text, surge
    transport: str      # udp | tcp | tls
    family: int         # 4 | 6
    instance: str       # what varies between instances: "198.51.100.1 -> 203.0.113.1, rtp 16384/32766"
    steps: tuple[FlowStep, ...]

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.flow, self.transport, self.family)
