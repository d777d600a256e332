"""SIP as a Scapy layer (RFC 3261 7): start line, header fields, body.

    >>> pkt = IP(dst="203.0.113.10") / UDP(sport=5060, dport=5060) / SIP(
    ...     start_line="OPTIONS sip:psap.example SIP/2.0",
    ...     headers=[("Via", "SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1"), ("Content-Length", None)])

A header whose value is None is filled at build time: ``Content-Length`` with
the body's length (what every SIP stack does, and what framing over TCP needs,
RFC 3261 18.3). Dissection keeps the header names and order as written,
unfolds folded lines, and cuts the body at Content-Length, so that two
messages in one TCP segment dissect as SIP / SIP.

The layer is bound to UDP and TCP port 5060 (either side); for any other port
use ``bind_sip(port)`` or dissect explicitly with ``SIP(payload_bytes)``.
Only the Scapy modules needed are imported (never ``scapy.all``): start-up
time counts (DESIGN.md).
"""

from __future__ import annotations

from typing import Any

from scapy.config import conf
from scapy.fields import Field, StrField
from scapy.layers.inet import TCP, UDP
from scapy.packet import Packet, bind_layers

from fwtest.traffic.sipmsg import MAX_HEADERS, SipMessage, _parse_start_line, canonical_name, parse_sip

SIP_PORT = 5060


class LineField(StrField):
    """One text line ended by CRLF (a bare LF is accepted when dissecting)."""

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, bytes]:
        end = s.find(b"\n")
        if end < 0:
            return b"", s.rstrip(b"\r")
        return s[end + 1:], s[:end].rstrip(b"\r")

    def addfield(self, pkt: Packet, s: bytes, val: Any) -> bytes:
        return s + self.i2m(pkt, val) + b"\r\n"


class HeaderListField(Field):
    """Header fields ``[(name, value), ...]`` (str), up to and including the blank line
    (with ``stop``: up to the blank line, which belongs to the body that follows).

    Folded lines (RFC 3261 7.3.1) are unfolded into one value. A value of
    None for Content-Length is replaced by the length of the packet's body.
    ``stop`` names line prefixes that end the header section without a blank
    line (MSRP's end-line, RFC 4975 7.1).
    """

    __slots__ = ["stop"]
    islist = 1

    def __init__(self, name: str, default: list | None, stop: tuple[bytes, ...] = ()):
        super().__init__(name, default or [])
        self.stop = stop

    def i2m(self, pkt: Packet | None, x: Any) -> bytes:
        out = []
        for name, value in x or []:
            if value is None and canonical_name(name) == "content-length":
                value = str(len(_body_bytes(pkt)))
            out.append(f"{name}: {'' if value is None else value}\r\n".encode("utf-8", "surrogateescape"))
        return b"".join(out)

    def addfield(self, pkt: Packet, s: bytes, val: Any) -> bytes:
        return s + self.i2m(pkt, val) + (b"" if self.stop else b"\r\n")

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, list[tuple[str, str]]]:
        headers: list[list[str]] = []
        pos = 0
        for _ in range(MAX_HEADERS):
            end = s.find(b"\n", pos)
            if end < 0:
                line, nxt = s[pos:].rstrip(b"\r"), len(s)
            else:
                line, nxt = s[pos:end].rstrip(b"\r"), end + 1
            if self.stop and (line.startswith(self.stop) or not line):
                break  # leave the end-line, or the blank line before a body, for the next field
            pos = nxt
            if not line:
                break
            text = line.decode("utf-8", "surrogateescape")
            if text[:1] in (" ", "\t") and headers:
                headers[-1][1] = f"{headers[-1][1]} {text.strip()}".strip()
                continue
            name, _, value = text.partition(":")
            headers.append([name.strip(), value.strip()])
            if pos >= len(s):
                break
        return s[pos:], [(n, v) for n, v in headers]

    def i2repr(self, pkt: Packet | None, x: Any) -> str:
        return repr(list(x or []))

    def any2i(self, pkt: Packet | None, x: Any) -> list[tuple[str, str | None]]:
        return [(str(n), v if v is None else str(v)) for n, v in (x or [])]


def _body_bytes(pkt: Packet | None) -> bytes:
    if pkt is None:
        return b""
    body = pkt.getfieldval("body")
    if body is None:
        return b""
    return body if isinstance(body, bytes) else str(body).encode()


def _content_length(pkt: Packet) -> int | None:
    for name, value in pkt.getfieldval("headers") or []:
        if canonical_name(name) == "content-length" and value is not None:
            value = value.strip()
            return int(value) if value.isdigit() and len(value) <= 9 else None
    return None


class SipBodyField(StrField):
    """The message body: Content-Length bytes when the header says so, else the rest."""

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, bytes]:
        length = _content_length(pkt)
        if length is None:
            return b"", s
        return s[length:], s[:length]


class SIP(Packet):
    """A SIP request or response."""

    name = "SIP"
    fields_desc = [
        LineField("start_line", b"OPTIONS sip:invalid SIP/2.0"),
        HeaderListField("headers", []),
        SipBodyField("body", b""),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        # A TCP segment on 5060 may continue a message begun in an earlier
        # segment; only bytes that open with a SIP start line are SIP.
        if _pkt:
            line = _pkt[:_pkt.find(b"\n")] if b"\n" in _pkt[:8192] else _pkt[:8192]
            if _parse_start_line(line.rstrip(b"\r")) is None:
                return conf.raw_layer
        return cls

    @classmethod
    def tcp_reassemble(cls, data: bytes, metadata: dict, session: dict) -> Packet | None:
        """For Scapy's TCPSession: a complete message once Content-Length bytes arrived."""
        from fwtest.traffic.sipmsg import split_sip_stream

        messages, rest = split_sip_stream(bytes(data))
        if messages and not rest:
            return cls(bytes(data))
        return None

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        # Bytes after the body are the next message of the stream (or not SIP).
        return SIP if SIP.dispatch_hook(payload) is SIP else conf.raw_layer

    def _start(self) -> tuple | None:
        line = self.getfieldval("start_line")
        return _parse_start_line(line if isinstance(line, bytes) else str(line).encode())

    @property
    def method(self) -> str | None:
        start = self._start()
        return start[0] if start else None

    @property
    def uri(self) -> str | None:
        start = self._start()
        return start[1] if start else None

    @property
    def status(self) -> int | None:
        start = self._start()
        return start[2] if start else None

    @property
    def reason(self) -> str | None:
        start = self._start()
        return start[3] if start else None

    def header(self, name: str) -> str | None:
        want = canonical_name(name)
        for hname, value in self.getfieldval("headers") or []:
            if canonical_name(hname) == want:
                return value
        return None

    def message(self) -> SipMessage:
        """This layer (without what follows it) as the hot path's SipMessage."""
        parsed = parse_sip(self.self_build())
        if parsed is None:
            raise ValueError(f"not a SIP start line: {self.getfieldval('start_line')!r}")
        return parsed

    def mysummary(self) -> str:
        start = self._start()
        if start is None:
            return "SIP (malformed start line)"
        method, uri, status, reason, _ = start
        return f"SIP {method} {uri}" if method else f"SIP {status} {reason}"


def sip_request(method: str, uri: str, headers: list[tuple[str, str | None]],
                body: bytes = b"") -> SIP:
    """A SIP request layer; Content-Length is appended (and computed) when absent."""
    return SIP(start_line=f"{method} {uri} SIP/2.0".encode(), headers=_with_length(headers), body=body)


def sip_response(status: int, reason: str, headers: list[tuple[str, str | None]],
                 body: bytes = b"") -> SIP:
    """A SIP response layer; Content-Length is appended (and computed) when absent."""
    return SIP(start_line=f"SIP/2.0 {status} {reason}".encode(), headers=_with_length(headers), body=body)


def _with_length(headers: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    if any(canonical_name(n) == "content-length" for n, _ in headers):
        return list(headers)
    return [*headers, ("Content-Length", None)]


def bind_sip(port: int) -> None:
    """Dissect UDP and TCP traffic to or from ``port`` as SIP."""
    for transport in (UDP, TCP):
        bind_layers(transport, SIP, sport=port)
        bind_layers(transport, SIP, dport=port)


bind_sip(SIP_PORT)
