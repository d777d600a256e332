"""SIP messages as the hot path reads them: pure Python, no Scapy, bounded work.

``parse_sip`` reads one message (a UDP datagram's payload, or one framed
message of a TCP stream); ``split_sip_stream`` frames a TCP byte stream into
messages by Content-Length (RFC 3261 18.3). Both are tolerant the way SIP
stacks are (folded headers, bare LF line ends, compact header names, a UDP
message without Content-Length) and bounded: hostile input costs at most
linear time in its length and never more than ``MAX_HEADERS`` header lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 3261 7.3.3 compact forms, plus the ones later RFCs registered with IANA
# (the "SIP Header Fields" registry): a=Accept-Contact (RFC 3841),
# b=Referred-By (RFC 3892), d=Request-Disposition, j=Reject-Contact,
# o=Event and u=Allow-Events (RFC 6665), r=Refer-To (RFC 3515),
# x=Session-Expires (RFC 4028), y=Identity (RFC 8224).
COMPACT_FORMS = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via",
    "a": "accept-contact", "b": "referred-by", "d": "request-disposition", "j": "reject-contact",
    "o": "event", "r": "refer-to", "u": "allow-events", "x": "session-expires", "y": "identity",
    "n": "identity-info",
}

MAX_HEADERS = 1024          # header lines read before the rest is ignored
MAX_HEADER_BYTES = 65536    # a header section longer than this is not a SIP message

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VERSION = re.compile(rb"SIP/\d+\.\d+\Z", re.IGNORECASE)


def canonical_name(name: str) -> str:
    """The lower-case long form of a header name (``i`` and ``Call-ID`` -> ``call-id``)."""
    low = name.strip().lower()
    return COMPACT_FORMS.get(low, low)


@dataclass(frozen=True)
class SipMessage:
    """One SIP request or response. ``headers`` keep their order and spelling as written."""

    method: str | None           # request method, None for a response
    uri: str | None              # Request-URI, None for a response
    status: int | None           # status code, None for a request
    reason: str | None           # reason phrase, None for a request
    headers: tuple[tuple[str, str], ...]
    body: bytes
    version: str = "SIP/2.0"

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive, compact forms understood)."""
        want = canonical_name(name)
        for hname, value in self.headers:
            if canonical_name(hname) == want:
                return value
        return None

    def headers_named(self, name: str) -> list[str]:
        """Every value of a header, one per header line, in order."""
        want = canonical_name(name)
        return [value for hname, value in self.headers if canonical_name(hname) == want]

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")

    @property
    def cseq(self) -> tuple[int, str] | None:
        """(sequence number, method) of the CSeq header (RFC 3261 20.16)."""
        value = self.header("cseq")
        if value is None:
            return None
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
            return None
        return int(parts[0]), parts[1]

    @property
    def content_type(self) -> str | None:
        """The body's media type, lower-case and without parameters (``application/sdp``)."""
        value = self.header("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower() or None

    @property
    def start_line(self) -> str:
        if self.method is not None:
            return f"{self.method} {self.uri} {self.version}"
        # RFC 3261 7.2: the SP before the Reason-Phrase is there even when it is empty.
        return f"{self.version} {self.status} {self.reason or ''}"

    def to_bytes(self) -> bytes:
        """The message as sent: start line, headers as they are, blank line, body."""
        lines = [self.start_line] + [f"{name}: {value}" for name, value in self.headers]
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body


def _decode(raw: bytes) -> str:
    # SIP text is UTF-8 (RFC 3261 7.3.1); surrogateescape keeps hostile bytes
    # round-trippable instead of failing or silently changing them.
    return raw.decode("utf-8", "surrogateescape")


def _parse_start_line(line: bytes) -> tuple[str | None, str | None, int | None, str | None, str] | None:
    if line[:4].upper() == b"SIP/":
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not _VERSION.match(parts[0]):
            return None
        code = parts[1]
        if len(code) != 3 or not code.isdigit():
            return None
        reason = _decode(parts[2]).strip() if len(parts) == 3 else ""
        return None, None, int(code), reason, _decode(parts[0])
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1] or not _VERSION.match(parts[2]):
        return None
    return _decode(parts[0]), _decode(parts[1]), None, None, _decode(parts[2])


def _header_end(data: bytes, start: int = 0) -> tuple[int, int]:
    """(end of the header section, start of the body); (-1, -1) when there is no blank line."""
    limit = start + MAX_HEADER_BYTES + 4
    crlf = data.find(b"\r\n\r\n", start, limit)
    lf = data.find(b"\n\n", start, limit)
    if crlf < 0 and lf < 0:
        return -1, -1
    if lf < 0 or (0 <= crlf < lf):
        return crlf, crlf + 4
    return lf, lf + 2


def _parse_head(head: bytes) -> tuple[tuple, tuple[tuple[str, str], ...]] | None:
    lines = head.split(b"\n", MAX_HEADERS + 1)
    first = lines[0].rstrip(b"\r")
    start = _parse_start_line(first)
    if start is None:
        return None
    headers: list[list[str]] = []
    for raw in lines[1:MAX_HEADERS + 1]:
        raw = raw.rstrip(b"\r")
        if not raw:
            continue
        if raw[:1] in (b" ", b"\t"):
            # RFC 3261 7.3.1: a line starting with whitespace continues the
            # previous header; the fold is equivalent to one space.
            if headers:
                headers[-1][1] = f"{headers[-1][1]} {_decode(raw).strip()}".strip()
            continue
        name, colon, value = raw.partition(b":")
        name = name.strip()
        if not colon or not name or not _TOKEN.match(name):
            continue  # not a header line: real stacks skip it, so do we
        headers.append([_decode(name), _decode(value).strip()])
    return start, tuple((n, v) for n, v in headers)


def _content_length(headers: tuple[tuple[str, str], ...]) -> int | None:
    for name, value in headers:
        if canonical_name(name) == "content-length":
            value = value.strip()
            if value.isdigit() and len(value) <= 9:
                return int(value)
            return None
    return None


def parse_sip(data: bytes) -> SipMessage | None:
    """One SIP message from its bytes, or None when they are not SIP.

    Without a blank line the whole datagram is taken as headers (a truncated
    message still shows its method and Call-ID). Without Content-Length the
    body is the rest of the datagram (RFC 3261 18.3 allows that over UDP);
    with one, the body is cut to it.
    """
    if not data:
        return None
    # RFC 3261 7.5: CRLFs before the start line are ignored (keep-alives).
    pos = 0
    while pos < len(data) and data[pos] in (0x0D, 0x0A) and pos < 64:
        pos += 1
    head_end, body_start = _header_end(data, pos)
    if head_end < 0:
        if len(data) - pos > MAX_HEADER_BYTES:
            return None
        head, body = data[pos:], b""
    else:
        head, body = data[pos:head_end], data[body_start:]
    parsed = _parse_head(head)
    if parsed is None:
        return None
    (method, uri, status, reason, version), headers = parsed
    length = _content_length(headers)
    if length is not None:
        body = body[:length]
    return SipMessage(method, uri, status, reason, headers, bytes(body), version)


def split_sip_stream(buf: bytes) -> tuple[list[SipMessage], bytes]:
    """Frame a TCP byte stream into SIP messages (RFC 3261 18.3: Content-Length delimits).

    Returns the complete messages and the unconsumed rest (an incomplete
    message, or bytes that are not SIP: framing stops there, it never guesses).
    A message without Content-Length on a stream is taken to have no body.
    """
    messages: list[SipMessage] = []
    pos = 0
    size = len(buf)
    while pos < size:
        # CRLF keep-alives between messages (RFC 5626 4.4.1) are skipped.
        start = pos
        while start < size and buf[start] in (0x0D, 0x0A):
            start += 1
        if start == size:
            return messages, b""
        head_end, body_start = _header_end(buf, start)
        if head_end < 0:
            break
        parsed = _parse_head(buf[start:head_end])
        if parsed is None:
            break
        (method, uri, status, reason, version), headers = parsed
        length = _content_length(headers) or 0
        if body_start + length > size:
            break
        messages.append(SipMessage(method, uri, status, reason, headers,
                                   bytes(buf[body_start:body_start + length]), version))
        pos = body_start + length
    return messages, bytes(buf[pos:])
