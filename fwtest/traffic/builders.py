"""RFC-realistic emergency traffic, built with Scapy.

Three levels, each usable alone:

* SIP messages (``SipDialog``): the emergency INVITE to ``urn:service:sos``
  (RFC 5031) with location by value (RFC 6442: Geolocation with a ``cid:`` URI,
  Geolocation-Routing) in a multipart/mixed body of SDP and PIDF-LO (RFC 4119,
  RFC 5491), Resource-Priority ``esnet`` (RFC 7135), P-Asserted-Identity
  (RFC 3325); the responses, ACK, BYE, OPTIONS and MESSAGE of a dialog, with
  headers copied the way RFC 3261 8.2.6 and 12.2 say.
* Media: RTP (Scapy's RTP layer, PCMU) and RTCP sender reports (RFC 3550),
  MSRP SEND and 200 (RFC 4975, ``fwtest.traffic.msrp``).
* Transport: UDP datagrams, IPv4 and IPv6, fragmented when larger than the
  1500-byte MTU (IPv4 MF/offset; the IPv6 Fragment header, RFC 8200 4.5);
  TCP connections with a real three-way handshake, segments of at most one
  MSS, the peer's ACKs and a FIN close, seq/ack consistent on both sides;
  TLS 1.3 record framing (RFC 8446 5) over such a connection.

Everything returns ``Wired`` tuples: the IP packet bytes, whether the first
endpoint sent it, and the label a SIP ladder diagram would write.

Scapy builds every message layer and one IP/transport header per stream or
connection direction; the packets that only differ from those in a few fields
(the rest of a TCP connection, an RTP stream) are derived by ``_rawip``,
byte for byte what Scapy builds (the tests compare), at a fraction of the cost.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.rtp import RTP
from scapy.packet import Packet, Raw

from fwtest.traffic._rawip import (
    fragment_ipv4,
    fragment_ipv6,
    l4_offset,
    tcp_from_template,
    udp_from_template,
)
from fwtest.traffic.msrp import msrp_response, msrp_send
from fwtest.traffic.sdp import build_sdp
from fwtest.traffic.sip import SIP, sip_request, sip_response

MTU = 1500
PCMU_SILENCE = b"\xff" * 160      # 20 ms of G.711 mu-law silence (RFC 3551 4.5.14)
PEER_DOMAIN = "bcf.example.net"    # RFC 2606 example names: an ESInet border / carrier SBC
PSAP_DOMAIN = "psap.example.org"
USER_AGENT = "fwtest-synth/0.1"


class Wired(NamedTuple):
    data: bytes          # IP packet, from the IP header on
    from_a: bool         # sent by the first endpoint of the channel (see each channel)
    label: str


# ----------------------------------------------------------------------------
# SIP messages


def hostport(address: str, port: int | None = None) -> str:
    """``198.51.100.7:5060`` / ``[2001:db8::7]:5060`` (RFC 3261 25.1 IPv6reference)."""
    host = f"[{address}]" if ":" in address else address
    return host if port is None else f"{host}:{port}"


def _hex(rng: random.Random, nbytes: int) -> str:
    return rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


@dataclass
class SipDialog:
    """One SIP dialog between a caller (UAC) and a callee (UAS), as both ends see it.

    ``transport`` is udp, tcp or tls; it shows in Via (RFC 3261 18.2.1) and in
    the Contact's transport parameter. Identifiers (Call-ID, tags, branches)
    come from ``rng``, so a seeded dialog is the same bytes every time.
    """

    transport: str
    caller: str                 # caller's address
    caller_port: int            # caller's SIP port (Via sent-by, Contact)
    callee: str
    callee_port: int
    request_uri: str            # the INVITE's Request-URI (urn:service:sos for an emergency call)
    caller_user: str = "+15085550100"
    callee_user: str = "psap"
    caller_domain: str = PEER_DOMAIN
    callee_domain: str = PSAP_DOMAIN
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    call_id: str = ""
    from_tag: str = ""
    to_tag: str = ""
    caller_cseq: int = 0
    callee_cseq: int = 0

    def __post_init__(self) -> None:
        if not self.call_id:
            self.call_id = f"{_hex(self.rng, 12)}@{hostport(self.caller)}"
        if not self.from_tag:
            self.from_tag = _hex(self.rng, 4)
        if not self.to_tag:
            self.to_tag = _hex(self.rng, 4)
        self.caller_cseq = self.caller_cseq or self.rng.randint(1, 20000)
        self.callee_cseq = self.callee_cseq or self.rng.randint(1, 20000)

    # -- pieces of headers

    @property
    def via_transport(self) -> str:
        return f"SIP/2.0/{self.transport.upper()}"

    def branch(self) -> str:
        # RFC 3261 8.1.1.7: the magic cookie marks an RFC 3261 branch.
        return f"z9hG4bK{_hex(self.rng, 8)}"

    def contact(self, of_caller: bool) -> str:
        user = self.caller_user if of_caller else self.callee_user
        addr, port = (self.caller, self.caller_port) if of_caller else (self.callee, self.callee_port)
        scheme = "sips" if self.transport == "tls" else "sip"
        return f"<{scheme}:{user}@{hostport(addr, port)};transport={self.transport}>"

    def contact_uri(self, of_caller: bool) -> str:
        return self.contact(of_caller)[1:].split(">", 1)[0]

    @property
    def from_value(self) -> str:
        return f"<sip:{self.caller_user}@{self.caller_domain};user=phone>;tag={self.from_tag}"

    def to_value(self, tagged: bool) -> str:
        uri = self.request_uri if not self.request_uri.startswith(("sip:", "sips:")) \
            else self.request_uri.split(";", 1)[0]
        value = f"<{uri}>"
        return f"{value};tag={self.to_tag}" if tagged else value

    def _via(self, of_caller: bool) -> str:
        addr, port = (self.caller, self.caller_port) if of_caller else (self.callee, self.callee_port)
        return f"{self.via_transport} {hostport(addr, port)};branch={self.branch()}"

    def _request(self, method: str, uri: str, by_caller: bool, cseq: int, extra: list,
                 body: bytes = b"", content_type: str | None = None, tagged: bool = True) -> SIP:
        if by_caller:
            from_v, to_v = self.from_value, self.to_value(tagged)
        else:
            # RFC 3261 12.2.1.1: in the callee's requests From and To are swapped.
            from_v = self.to_value(True)
            to_v = self.from_value
        headers = [
            ("Via", self._via(by_caller)),
            ("Max-Forwards", "70"),
            ("To", to_v),
            ("From", from_v),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
            *extra,
            ("User-Agent", USER_AGENT),
        ]
        if content_type:
            headers.append(("Content-Type", content_type))
        return sip_request(method, uri, headers, body)

    # -- requests

    def emergency_invite(self, sdp: bytes, pidf: bytes, *, priority: str = "esnet.1") -> SIP:
        """The INVITE of an emergency call: location by value next to the SDP offer."""
        target = f"target-{_hex(self.rng, 4)}@{self.caller_domain}"
        boundary = f"boundary-{_hex(self.rng, 6)}"
        body = multipart_mixed(boundary, [
            ("application/sdp", None, sdp),
            # RFC 6442 4.1: the PIDF-LO part is named by Content-ID, the
            # Geolocation header points at it with a cid: URI (RFC 2392).
            ("application/pidf+xml", f"<{target}>", pidf),
        ])
        self.caller_cseq += 1
        nena_id = _hex(self.rng, 10)
        extra = [
            ("Contact", self.contact(True)),
            ("P-Asserted-Identity", f"<sip:{self.caller_user}@{self.caller_domain};user=phone>"),
            ("P-Asserted-Identity", f"<tel:{self.caller_user}>"),
            ("Geolocation", f"<cid:{target}>"),
            ("Geolocation-Routing", "yes"),
            ("Resource-Priority", priority),
            # RFC 4412 4.2: Supported, not Require: a PSAP that does not know
            # the extension must still take the call, not answer 420.
            ("Supported", "resource-priority, timer, 100rel"),
            ("Accept", "application/sdp, application/pidf+xml"),
            ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, UPDATE, INFO"),
            # NENA i3 (STA-010) call and incident identifiers.
            ("Call-Info", f"<urn:nena:uid:callid:{nena_id}:{self.caller_domain}>;purpose=nena-CallId"),
            ("Call-Info", f"<urn:nena:uid:incidentid:{nena_id}:{self.caller_domain}>;purpose=nena-IncidentId"),
        ]
        return self._request("INVITE", self.request_uri, True, self.caller_cseq, extra, body,
                             f"multipart/mixed;boundary={boundary}", tagged=False)

    def invite(self, sdp: bytes) -> SIP:
        """An ordinary INVITE with an SDP offer (callback, text session)."""
        self.caller_cseq += 1
        extra = [
            ("Contact", self.contact(True)),
            ("P-Asserted-Identity", f"<sip:{self.caller_user}@{self.caller_domain}>"),
            ("Supported", "timer, 100rel"),
            ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, UPDATE, INFO"),
        ]
        return self._request("INVITE", self.request_uri, True, self.caller_cseq, extra, sdp,
                             "application/sdp", tagged=False)

    def ack(self) -> SIP:
        """ACK for a 2xx: its own transaction, to the callee's Contact (RFC 3261 13.2.2.4)."""
        return self._request("ACK", self.contact_uri(False), True, self.caller_cseq, [])

    def bye(self, by_caller: bool) -> SIP:
        """BYE from either side, to the other side's Contact (RFC 3261 15.1.1)."""
        if by_caller:
            self.caller_cseq += 1
            cseq = self.caller_cseq
        else:
            self.callee_cseq += 1
            cseq = self.callee_cseq
        return self._request("BYE", self.contact_uri(not by_caller), by_caller, cseq, [])

    def options(self) -> SIP:
        """An out-of-dialog OPTIONS ping (RFC 3261 11), as SBCs send to keep a route alive."""
        self.caller_cseq += 1
        extra = [("Contact", self.contact(True)), ("Accept", "application/sdp")]
        return self._request("OPTIONS", self.request_uri, True, self.caller_cseq, extra, tagged=False)

    def message(self, text: str) -> SIP:
        """A SIP MESSAGE with text/plain (RFC 3428)."""
        self.caller_cseq += 1
        return self._request("MESSAGE", self.request_uri, True, self.caller_cseq,
                             [("P-Asserted-Identity", f"<sip:{self.caller_user}@{self.caller_domain}>")],
                             text.encode(), "text/plain;charset=UTF-8", tagged=False)

    # -- responses

    def response(self, request: SIP, status: int, reason: str, *, body: bytes = b"",
                 content_type: str | None = None) -> SIP:
        """A response to ``request`` (RFC 3261 8.2.6.2: Via, From, Call-ID, CSeq copied;
        To gets the callee's tag except on 100 Trying)."""
        headers: list[tuple[str, str | None]] = []
        is_invite = request.method == "INVITE"
        for name, value in request.getfieldval("headers"):
            low = name.lower()
            if low in ("via", "from", "call-id", "cseq"):
                headers.append((name, value))
            elif low == "to":
                if status != 100 and ";tag=" not in value:
                    value = f"{value};tag={self.to_tag}"
                headers.append((name, value))
        if is_invite and 100 < status < 300:
            # The callee's Contact makes the dialog's remote target (RFC 3261 12.1.1).
            by_caller = not self._sent_by_callee(request)
            headers.append(("Contact", self.contact(not by_caller)))
        if status == 200 and request.method in ("INVITE", "OPTIONS"):
            headers.append(("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, UPDATE, INFO"))
        if status == 200 and request.method == "OPTIONS":
            headers.append(("Accept", "application/sdp"))
        headers.append(("Server" if status != 100 else "User-Agent", USER_AGENT))
        if content_type:
            headers.append(("Content-Type", content_type))
        return sip_response(status, reason, headers, body)

    def _sent_by_callee(self, request: SIP) -> bool:
        via = request.header("via") or ""
        return hostport(self.callee, self.callee_port) in via and \
            hostport(self.caller, self.caller_port) not in via


def multipart_mixed(boundary: str, parts: Sequence[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart/mixed body (RFC 2046 5.1.1, as RFC 5621 uses it in SIP)."""
    out = []
    for content_type, content_id, data in parts:
        head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        if content_id:
            head += f"Content-ID: {content_id}\r\n"
        out.append(head.encode() + b"\r\n" + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def pidf_lo(entity: str, *, latitude: float = 42.360083, longitude: float = -71.05888,
            radius_m: float = 35.0, device_id: str = "mac:00005e005301",
            timestamp: str = "2024-06-18T18:20:05Z") -> bytes:
    """A PIDF-LO (RFC 4119) with a geodetic Circle (RFC 5491 5.2.3, GML) and a civic address (RFC 5139).

    RFC 5491 3.4 asks for one location per ``location-info``: the handset's
    measured position and the subscriber's civic address are two ``device``
    elements, the measured one first (the one to route on).
    """
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
    xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
    xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10"
    xmlns:gbp="urn:ietf:params:xml:ns:pidf:geopriv10:basicPolicy"
    xmlns:ca="urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr"
    xmlns:gml="http://www.opengis.net/gml"
    xmlns:gs="http://www.opengis.net/pidflo/1.0"
    xmlns:con="urn:ietf:params:xml:ns:geopriv:conf"
    entity="{entity}">
  <dm:device id="handset-gnss">
    <gp:geopriv>
      <gp:location-info>
        <gs:Circle srsName="urn:ogc:def:crs:EPSG::4326">
          <gml:pos>{latitude:.6f} {longitude:.6f}</gml:pos>
          <gs:radius uom="urn:ogc:def:uom:EPSG::9001">{radius_m:.1f}</gs:radius>
        </gs:Circle>
        <con:confidence pdf="normal">90</con:confidence>
      </gp:location-info>
      <gp:usage-rules>
        <gbp:retransmission-allowed>true</gbp:retransmission-allowed>
        <gbp:retention-expiry>2024-06-19T18:20:05Z</gbp:retention-expiry>
      </gp:usage-rules>
      <gp:method>GPS</gp:method>
      <gp:provided-by><dm:deviceID>{device_id}</dm:deviceID></gp:provided-by>
    </gp:geopriv>
    <dm:deviceID>{device_id}</dm:deviceID>
    <dm:timestamp>{timestamp}</dm:timestamp>
  </dm:device>
  <dm:device id="subscriber-civic">
    <gp:geopriv>
      <gp:location-info>
        <ca:civicAddress xml:lang="en-US">
          <ca:country>US</ca:country>
          <ca:A1>MA</ca:A1>
          <ca:A2>Suffolk</ca:A2>
          <ca:A3>Boston</ca:A3>
          <ca:RD>Tremont</ca:RD>
          <ca:STS>Street</ca:STS>
          <ca:HNO>1</ca:HNO>
          <ca:FLR>2</ca:FLR>
          <ca:NAM>Government Center</ca:NAM>
          <ca:PC>02108</ca:PC>
          <ca:LOC>Suite 200</ca:LOC>
        </ca:civicAddress>
      </gp:location-info>
      <gp:usage-rules>
        <gbp:retransmission-allowed>true</gbp:retransmission-allowed>
        <gbp:retention-expiry>2024-06-19T18:20:05Z</gbp:retention-expiry>
      </gp:usage-rules>
      <gp:method>Manual</gp:method>
    </gp:geopriv>
    <dm:deviceID>{device_id}</dm:deviceID>
    <dm:timestamp>{timestamp}</dm:timestamp>
  </dm:device>
</presence>
""".encode()


def emergency_sdp(address: str, rtp_port: int, session_id: int) -> bytes:
    return build_sdp(address, rtp_port=rtp_port, session_id=session_id, session_version=session_id)


# ----------------------------------------------------------------------------
# IP and transports


def ip_header(src: str, dst: str) -> Packet:
    """An IPv4 (DF set, as Linux sends TCP and small UDP) or IPv6 header; family from the address."""
    if ":" in src:
        return IPv6(src=src, dst=dst)
    return IP(src=src, dst=dst, flags="DF")


def udp_datagram(src: str, sport: int, dst: str, dport: int, payload: Packet | bytes, *,
                 ident: int, mtu: int = MTU) -> list[bytes]:
    """One UDP datagram as the IP packets that carry it: fragments when it exceeds the MTU.

    A UDP socket sends a datagram larger than the path MTU as IP fragments
    (IPv4: without DF, RFC 791 fragmentation; IPv6: the source fragments,
    RFC 8200 4.5). Large emergency INVITEs travel this way.
    """
    body = payload if isinstance(payload, Packet) else Raw(payload)
    if ":" in src:
        data = bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / body)
        return [data] if len(data) <= mtu else fragment_ipv6(data, mtu, ident)
    # Linux sets DF on datagrams that fit (IP_PMTUDISC_WANT); fragments go without it.
    data = bytes(IP(src=src, dst=dst, id=ident & 0xFFFF, flags="DF") / UDP(sport=sport, dport=dport) / body)
    return [data] if len(data) <= mtu else fragment_ipv4(data, mtu)


class UdpChannel:
    """Datagrams between endpoint a and endpoint b (ports fixed, as SIP over UDP uses 5060 both ways).

    Scapy builds the IP/UDP headers once per direction and datagrams that fit
    the MTU reuse them (``_rawip``); larger ones go out as fragments (``udp_datagram``).
    """

    def __init__(self, a: str, a_port: int, b: str, b_port: int, rng: random.Random):
        self.a, self.a_port, self.b, self.b_port = a, a_port, b, b_port
        self.ident = rng.randint(1, 0xFFFF)

    def send(self, from_a: bool, payload: Packet | bytes, label: str) -> list[Wired]:
        self.ident = (self.ident + 1) & 0xFFFF or 1
        src, sport, dst, dport = (self.a, self.a_port, self.b, self.b_port) if from_a \
            else (self.b, self.b_port, self.a, self.a_port)
        data = bytes(payload)
        if len(data) + 8 + (40 if ":" in src else 20) <= MTU:
            template = udp_template(src, sport, dst, dport)
            return [Wired(udp_from_template(template, data, self.ident), from_a, label)]
        return [Wired(d, from_a, label) for d in udp_datagram(src, sport, dst, dport, payload,
                                                               ident=self.ident)]


# Headers Scapy built once, shared by every packet with the same addresses
# and ports (the instances of different flows reuse the same host pairs).
@functools.lru_cache(maxsize=4096)
def udp_template(src: str, sport: int, dst: str, dport: int) -> bytes:
    """IP/UDP headers (no payload) for ``udp_from_template``."""
    return bytes(ip_header(src, dst) / UDP(sport=sport, dport=dport))


@functools.lru_cache(maxsize=4096)
def tcp_template(src: str, sport: int, dst: str, dport: int) -> bytes:
    """IP/TCP headers without options for ``tcp_from_template``."""
    return bytes(ip_header(src, dst) / TCP(sport=sport, dport=dport, flags="A"))


def mss_for(address: str, mtu: int = MTU) -> int:
    """TCP MSS on an Ethernet path: MTU minus IP and TCP headers (RFC 879, RFC 8200)."""
    return mtu - (60 if ":" in address else 40)


class TcpConnection:
    """A TCP connection from client a to server b with consistent sequence numbers.

    ``open`` is the three-way handshake (SYN with MSS/SACK/window-scale
    options, SYN-ACK, ACK); ``send`` cuts data into MSS-sized segments (PSH
    on the last) and the receiver ACKs them; ``close`` is FIN, FIN, ACK.
    Each side's next sequence number and last acknowledgement are kept, so
    every segment's seq/ack is what the other side expects.
    """

    window = 64240

    def __init__(self, a: str, a_port: int, b: str, b_port: int, rng: random.Random):
        self.a, self.a_port, self.b, self.b_port = a, a_port, b, b_port
        self.mss = mss_for(a)
        self.snd = {True: rng.getrandbits(32), False: rng.getrandbits(32)}  # next seq, keyed by from_a
        self.rcv = {True: 0, False: 0}       # next expected seq of the other side, keyed by from_a
        self.ident = {True: rng.randint(1, 0xFFFF), False: rng.randint(1, 0xFFFF)}

    def _segment(self, from_a: bool, flags: str, payload: bytes = b"", options: bytes = b"",
                 label: str = "") -> Wired:
        src, sport, dst, dport = (self.a, self.a_port, self.b, self.b_port) if from_a \
            else (self.b, self.b_port, self.a, self.a_port)
        self.ident[from_a] = (self.ident[from_a] + 1) & 0xFFFF
        ack = self.rcv[from_a] if "A" in flags else 0
        window = self.window if "S" in flags else self.window >> 7   # scaled after the SYN (RFC 7323 2.2)
        data = tcp_from_template(tcp_template(src, sport, dst, dport), seq=self.snd[from_a], ack=ack,
                                 flags=_tcp_flag_bits(flags), window=window, payload=payload,
                                 ident=self.ident[from_a], options=options)
        consumed = len(payload) + (1 if "S" in flags else 0) + (1 if "F" in flags else 0)
        self.snd[from_a] = (self.snd[from_a] + consumed) & 0xFFFFFFFF
        self.rcv[not from_a] = self.snd[from_a]
        return Wired(data, from_a, label)

    def open(self) -> list[Wired]:
        # MSS, SACK permitted, NOP, window scale 7 (RFC 9293 3.7.1, RFC 2018, RFC 7323).
        opts = struct.pack("!BBH", 2, 4, self.mss) + b"\x04\x02\x01\x03\x03\x07"
        out = [self._segment(True, "S", options=opts, label="SYN"),
               self._segment(False, "SA", options=opts, label="SYN-ACK"),
               self._segment(True, "A", label="TCP ACK")]
        return out

    def send(self, from_a: bool, data: bytes, label: str, *, ack: bool = True) -> list[Wired]:
        """Data from one side in MSS-sized segments, then the receiver's ACK (when ``ack``)."""
        out = []
        for start in range(0, len(data), self.mss):
            chunk = data[start:start + self.mss]
            last = start + self.mss >= len(data)
            out.append(self._segment(from_a, "PA" if last else "A", chunk, label=label))
        if ack:
            out.append(self._segment(not from_a, "A", label="TCP ACK"))
        return out

    def close(self, from_a: bool) -> list[Wired]:
        """Orderly release: FIN from ``from_a``, the other side's FIN, the last ACK (RFC 9293 3.6)."""
        return [self._segment(from_a, "FA", label="FIN"),
                self._segment(not from_a, "FA", label="FIN"),
                self._segment(from_a, "A", label="TCP ACK")]


def _tcp_flag_bits(flags: str) -> int:
    bits = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}
    return sum(bits[f] for f in flags)


# TLS 1.3 record layer (RFC 8446 5.1/5.2): content types and the legacy
# record version every TLS 1.3 record carries.
TLS_CHANGE_CIPHER_SPEC, TLS_HANDSHAKE, TLS_APPLICATION_DATA = 20, 22, 23
TLS_AEAD_OVERHEAD = 1 + 16          # inner content type + AES-GCM tag
TLS_MAX_PLAINTEXT = 2 ** 14


def tls_record(content_type: int, fragment_bytes: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", content_type, version, len(fragment_bytes)) + fragment_bytes


def _handshake(msg_type: int, body: bytes) -> bytes:
    return struct.pack("!B", msg_type) + len(body).to_bytes(3, "big") + body


def _ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def tls_client_hello(rng: random.Random) -> bytes:
    """A TLS 1.3 ClientHello record (x25519, AES-GCM/ChaCha20 suites, no server name:
    SIP peers are addressed by IP on an ESInet)."""
    session_id = rng.randbytes(32)
    suites = struct.pack("!HHHH", 6, 0x1301, 0x1302, 0x1303)
    key_share = struct.pack("!HHH", 36, 0x001D, 32) + rng.randbytes(32)
    extensions = b"".join([
        _ext(0x000A, struct.pack("!HH", 2, 0x001D)),                       # supported_groups
        _ext(0x000D, struct.pack("!HHHH", 6, 0x0403, 0x0804, 0x0401)),     # signature_algorithms
        _ext(0x002B, struct.pack("!BH", 2, 0x0304)),                       # supported_versions
        _ext(0x0033, key_share),                                           # key_share
    ])
    body = (struct.pack("!H", 0x0303) + rng.randbytes(32) + bytes([32]) + session_id + suites
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    # RFC 8446 5.1: the first ClientHello may carry record version 0x0301.
    return tls_record(TLS_HANDSHAKE, _handshake(1, body), version=0x0301)


def tls_server_flight(rng: random.Random, session_id: bytes = b"") -> bytes:
    """ServerHello, the compatibility ChangeCipherSpec, and the encrypted rest of the
    server's flight (EncryptedExtensions, CertificateRequest, Certificate,
    CertificateVerify, Finished) as opaque application_data records."""
    extensions = _ext(0x002B, struct.pack("!H", 0x0304)) + \
        _ext(0x0033, struct.pack("!HH", 0x001D, 32) + rng.randbytes(32))
    body = (struct.pack("!H", 0x0303) + rng.randbytes(32) + bytes([len(session_id)]) + session_id
            + struct.pack("!HB", 0x1301, 0) + struct.pack("!H", len(extensions)) + extensions)
    return (tls_record(TLS_HANDSHAKE, _handshake(2, body))
            + tls_record(TLS_CHANGE_CIPHER_SPEC, b"\x01")
            + tls_application_data(rng, 2400))


def tls_client_finished(rng: random.Random) -> bytes:
    """The client's ChangeCipherSpec and its encrypted Certificate, CertificateVerify and
    Finished (NENA i3 ESInets authenticate both ends, so the client sends a certificate)."""
    return tls_record(TLS_CHANGE_CIPHER_SPEC, b"\x01") + tls_application_data(rng, 1800)


def tls_application_data(rng: random.Random, plaintext_length: int) -> bytes:
    """Opaque application_data records for ``plaintext_length`` bytes (RFC 8446 5.2):
    each record carries at most 2^14 bytes plus the AEAD overhead."""
    out = []
    remaining = plaintext_length
    while True:
        chunk = min(remaining, TLS_MAX_PLAINTEXT)
        out.append(tls_record(TLS_APPLICATION_DATA, rng.randbytes(chunk + TLS_AEAD_OVERHEAD)))
        remaining -= chunk
        if remaining <= 0:
            return b"".join(out)


class TlsConnection(TcpConnection):
    """TLS 1.3 over a TcpConnection: the handshake flights, then application data records
    whose lengths are those of the SIP messages they carry (the bytes are opaque,
    as a firewall sees them)."""

    def __init__(self, a: str, a_port: int, b: str, b_port: int, rng: random.Random):
        super().__init__(a, a_port, b, b_port, rng)
        self.rng = rng

    def open(self) -> list[Wired]:
        out = super().open()
        hello = tls_client_hello(self.rng)
        out += TcpConnection.send(self, True, hello, "TLS ClientHello")
        out += TcpConnection.send(self, False, tls_server_flight(self.rng, hello[44:76]),
                                  "TLS ServerHello")
        out += TcpConnection.send(self, True, tls_client_finished(self.rng), "TLS Finished")
        return out

    def send(self, from_a: bool, data: bytes, label: str, *, ack: bool = True) -> list[Wired]:
        return super().send(from_a, tls_application_data(self.rng, len(data)), label, ack=ack)


def connection(transport: str, a: str, a_port: int, b: str, b_port: int,
               rng: random.Random) -> UdpChannel | TcpConnection:
    """The channel SIP rides on for ``transport`` (udp, tcp, tls); a is the side that opens it."""
    if transport == "udp":
        return UdpChannel(a, a_port, b, b_port, rng)
    if transport == "tcp":
        return TcpConnection(a, a_port, b, b_port, rng)
    if transport == "tls":
        return TlsConnection(a, a_port, b, b_port, rng)
    raise ValueError(f"unknown SIP transport {transport!r} (udp, tcp, tls)")


def send_sip(channel: UdpChannel | TcpConnection, from_a: bool, message: SIP, label: str) -> list[Wired]:
    """A SIP message over the channel: a datagram (maybe fragmented) or stream segments."""
    if isinstance(channel, UdpChannel):
        return channel.send(from_a, message, label)
    return channel.send(from_a, bytes(message), label)


def sip_label(message: SIP) -> str:
    """``INVITE``, ``200 OK (INVITE)``: what a ladder diagram writes on the arrow."""
    if message.method:
        return message.method
    cseq = (message.header("cseq") or "").split()
    return f"{message.status} {message.reason} ({cseq[-1] if cseq else '?'})"


# ----------------------------------------------------------------------------
# Media


@functools.lru_cache(maxsize=4096)
def rtp_template(src: str, sport: int, dst: str, dport: int, ssrc: int = 0, *, marker: bool = False) -> bytes:
    """One 20 ms RTP/PCMU packet (Scapy's RTP layer); ``_rawip.UdpFieldPatcher`` derives
    the rest of a stream from it (marker, sequence number, timestamp, SSRC)."""
    pkt = ip_header(src, dst) / UDP(sport=sport, dport=dport) / RTP(
        version=2, marker=int(marker), payload_type=0, sequence=0, timestamp=0, sourcesync=ssrc) / Raw(PCMU_SILENCE)
    return bytes(pkt)


def rtcp_compound(ssrc: int, *, ntp: int, rtp_ts: int, packets: int, octets: int, cname: str) -> bytes:
    """An RTCP compound packet: sender report + SDES CNAME (RFC 3550 6.1 requires both).

    Layout per RFC 3550 6.4.1 (SR, no reception blocks) and 6.5 (SDES); the
    tests dissect it with Scapy's RTCP layer. The sender info starts at byte 8.
    """
    sr = struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets, octets)
    item = struct.pack("!BB", 1, len(cname)) + cname.encode()
    # A chunk ends with a null item and pads with nulls to a 32-bit boundary.
    chunk = struct.pack("!I", ssrc) + item + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    sdes = struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk
    return sr + sdes


def rtcp_template(rtp_packet: bytes, ssrc: int, cname: str) -> bytes:
    """The RTCP sender report of an RTP stream, sent from and to the RTP ports + 1 (RFC 3550 11)."""
    sport, dport = struct.unpack_from("!HH", rtp_packet, l4_offset(rtp_packet))
    return udp_from_template(rtp_packet, rtcp_compound(ssrc, ntp=0, rtp_ts=0, packets=0, octets=0, cname=cname),
                             sport=sport + 1, dport=dport + 1)


def msrp_exchange(conn: TcpConnection, from_a: bool, *, to_path: str, from_path: str, text: str,
                  rng: random.Random) -> list[Wired]:
    """One MSRP SEND (text/plain) and its 200 OK on an established TCP connection (RFC 4975 7.1)."""
    tid = _hex(rng, 6)
    send = msrp_send(tid, to_path, from_path, message_id=_hex(rng, 8), body=text.encode())
    ok = msrp_response(tid, 200, "OK", to_path=from_path, from_path=to_path)
    return (conn.send(from_a, bytes(send), "MSRP SEND", ack=False)
            + conn.send(not from_a, bytes(ok), "MSRP 200 OK"))


# ----------------------------------------------------------------------------
# One message, for `fwtest explain ... sip=METHOD`


def example_sip_message(method: str, src: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                        dst: ipaddress.IPv4Address | ipaddress.IPv6Address, dport: int) -> bytes:
    """The realistic SIP payload fwtest's synthesiser would send for ``method`` from src to dst
    (an emergency INVITE for INVITE); the payload only, without IP/UDP."""
    rng = random.Random(f"explain:{method}:{src}:{dst}")
    src_s, dst_s = str(src), str(dst)
    dialog = SipDialog("udp", src_s, sport, dst_s, dport, "urn:service:sos", rng=rng)
    method = method.upper()
    if method == "INVITE":
        sdp = emergency_sdp(src_s, 16384, 1)
        message = dialog.emergency_invite(sdp, pidf_lo(f"pres:{dialog.caller_user}@{PEER_DOMAIN}"))
    elif method == "ACK":
        message = dialog.ack()
    elif method == "BYE":
        message = dialog.bye(True)
    elif method == "OPTIONS":
        dialog.request_uri = f"sip:{hostport(dst_s, dport)}"
        message = dialog.options()
    elif method == "MESSAGE":
        message = dialog.message("Help, I cannot speak. Gunshots at 1 Tremont Street.")
    else:
        dialog.caller_cseq += 1
        message = dialog._request(method, f"sip:{hostport(dst_s, dport)}", True, dialog.caller_cseq,
                                  [("Contact", dialog.contact(True))])
    return bytes(message)
