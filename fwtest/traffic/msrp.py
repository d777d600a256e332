"""MSRP (RFC 4975) as a Scapy layer: the text-to-911 media over TCP.

    MSRP a786hjs2 SEND
    To-Path: msrp://psap.example.org:2855/kjhd37s2s20w2a;tcp
    From-Path: msrp://bcf.example.net:7654/jshA7weztas;tcp
    Message-ID: 87652491
    Byte-Range: 1-25/25
    Content-Type: text/plain

    Hey, are you there?
    -------a786hjs2$

A request or response is a start line, header fields, an optional body
(after a blank line, only when there is a Content-Type) and the end-line
``-------`` transaction-id continuation-flag (RFC 4975 7.1). The layer is
bound to TCP port 2855 (IANA's msrp port); ``bind_msrp(port)`` adds others.
"""

from __future__ import annotations

from typing import Any

from scapy.config import conf
from scapy.fields import StrField
from scapy.layers.inet import TCP
from scapy.packet import Packet, bind_layers

from fwtest.traffic.sip import HeaderListField, LineField

MSRP_PORT = 2855
END_LINE_DASHES = b"-------"


def _transaction_id(pkt: Packet | None) -> bytes:
    if pkt is None:
        return b""
    line = pkt.getfieldval("start_line")
    line = line if isinstance(line, bytes) else str(line).encode()
    parts = line.split(b" ")
    return parts[1] if len(parts) >= 3 and parts[0] == b"MSRP" else b""


class MsrpBodyField(StrField):
    """The content-stuff: CRLF, data, CRLF before the end-line; absent when empty."""

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, bytes]:
        if s.startswith(END_LINE_DASHES):
            return s, b""
        # The blank line after the headers, then the data: data that itself
        # starts with dashes is still the body (it comes after the blank line).
        if s.startswith(b"\r\n"):
            s = s[2:]
        end = s.find(b"\r\n" + END_LINE_DASHES + _transaction_id(pkt))
        if end < 0:
            return b"", s
        return s[end + 2:], s[:end]

    def addfield(self, pkt: Packet, s: bytes, val: Any) -> bytes:
        data = self.i2m(pkt, val)
        has_type = any(n.lower() == "content-type" for n, _ in pkt.getfieldval("headers") or [])
        if not data and not has_type:
            return s
        return s + b"\r\n" + data + b"\r\n"


class MsrpEndLineField(LineField):
    """``-------`` + transaction id + flag; None builds it with ``$`` (message complete)."""

    def i2m(self, pkt: Packet | None, x: Any) -> bytes:
        if x is None:
            return END_LINE_DASHES + _transaction_id(pkt) + b"$"
        return super().i2m(pkt, x)


class MSRP(Packet):
    """An MSRP request (SEND, REPORT, ...) or response."""

    name = "MSRP"
    fields_desc = [
        LineField("start_line", b"MSRP 0 SEND"),
        HeaderListField("headers", [], stop=(END_LINE_DASHES,)),
        MsrpBodyField("body", b""),
        MsrpEndLineField("end_line", None),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        if _pkt and not _pkt.startswith(b"MSRP "):
            return conf.raw_layer
        return cls

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return MSRP if payload.startswith(b"MSRP ") else conf.raw_layer

    @property
    def transaction_id(self) -> str:
        return _transaction_id(self).decode("utf-8", "replace")

    @property
    def method(self) -> str | None:
        parts = bytes(self.getfieldval("start_line")).split(b" ", 2)
        if len(parts) == 3 and not parts[2][:3].isdigit():
            return parts[2].decode("utf-8", "replace")
        return None

    @property
    def status(self) -> int | None:
        parts = bytes(self.getfieldval("start_line")).split(b" ", 3)
        if len(parts) >= 3 and parts[2].isdigit() and len(parts[2]) == 3:
            return int(parts[2])
        return None

    def header(self, name: str) -> str | None:
        for hname, value in self.getfieldval("headers") or []:
            if hname.lower() == name.lower():
                return value
        return None

    def mysummary(self) -> str:
        line = bytes(self.getfieldval("start_line")).decode("utf-8", "replace")
        return f"MSRP {line.split(' ', 2)[-1]}"


def msrp_send(transaction_id: str, to_path: str, from_path: str, *, message_id: str,
              body: bytes, content_type: str = "text/plain") -> MSRP:
    """A complete SEND of one message in one chunk (Byte-Range 1-N/N, RFC 4975 7.1.1)."""
    headers = [("To-Path", to_path), ("From-Path", from_path), ("Message-ID", message_id),
               ("Byte-Range", f"1-{len(body)}/{len(body)}"), ("Content-Type", content_type)]
    return MSRP(start_line=f"MSRP {transaction_id} SEND".encode(), headers=headers, body=body)


def msrp_response(transaction_id: str, status: int, reason: str, *, to_path: str,
                  from_path: str) -> MSRP:
    """A transaction response: To-Path is the request's From-Path (RFC 4975 7.2)."""
    return MSRP(start_line=f"MSRP {transaction_id} {status} {reason}".encode(),
                headers=[("To-Path", to_path), ("From-Path", from_path)])


def bind_msrp(port: int) -> None:
    bind_layers(TCP, MSRP, sport=port)
    bind_layers(TCP, MSRP, dport=port)


bind_msrp(MSRP_PORT)
