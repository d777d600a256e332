"""SDP (RFC 8866) as the firewall model needs it: where the media will flow.

Pure Python, no Scapy. ``parse_sdp`` reads the media descriptions with their
connection address and RTP/RTCP ports; ``sdp_of`` finds the SDP in a SIP
message, also inside multipart/mixed bodies (RFC 5621: an emergency INVITE
carries SDP next to a PIDF-LO); ``build_sdp`` writes offers and answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from fwtest.traffic.sipmsg import SipMessage

MAX_MULTIPART_DEPTH = 4     # nested multipart bodies followed before giving up
MAX_SDP_LINES = 4096


@dataclass(frozen=True)
class SdpMedia:
    media: str          # audio, video, message, ...
    port: int           # transport port of the media (0: stream disabled, RFC 3264 6)
    proto: str          # RTP/AVP, RTP/SAVP, TCP/MSRP, ...
    address: str        # connection address (media-level c= else session-level c=), "" if none
    family: int         # 4 or 6 (0 when there is no connection address)
    rtcp_port: int      # a=rtcp (RFC 3605), same port under a=rtcp-mux (RFC 5761), else port + 1;
                        # 0 for a disabled stream and for media that is not RTP (MSRP has no RTCP)


def _connection(value: str) -> tuple[str, int] | None:
    # c=<nettype> <addrtype> <connection-address>; multicast carries /ttl[/count].
    parts = value.split()
    if len(parts) < 3 or parts[0].upper() != "IN":
        return None
    family = {"IP4": 4, "IP6": 6}.get(parts[1].upper())
    if family is None:
        return None
    return parts[2].split("/", 1)[0], family


def parse_sdp(body: bytes) -> list[SdpMedia]:
    """The media descriptions of an SDP body, in order (empty when it has none)."""
    text = body.decode("utf-8", "replace")
    session_conn: tuple[str, int] | None = None
    media: list[dict] = []
    for number, raw in enumerate(text.split("\n")):
        if number >= MAX_SDP_LINES:
            break
        line = raw.rstrip("\r")
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 3:
                media.append({"skip": True})
                continue
            port_text = parts[1].split("/", 1)[0]   # <port>/<number of ports>
            if not port_text.isdigit() or int(port_text) > 65535:
                media.append({"skip": True})
                continue
            media.append({"media": parts[0], "port": int(port_text), "proto": parts[2],
                          "conn": None, "rtcp": None, "mux": False})
        elif kind == "c":
            conn = _connection(value)
            if media:
                media[-1]["conn"] = conn
            else:
                session_conn = conn
        elif kind == "a" and media:
            name, _, arg = value.partition(":")
            if name == "rtcp":
                # RFC 3605: a=rtcp:<port> [<nettype> <addrtype> <address>]
                port_text = arg.split()[0] if arg.split() else ""
                if port_text.isdigit() and int(port_text) <= 65535:
                    media[-1]["rtcp"] = int(port_text)
            elif name == "rtcp-mux":
                media[-1]["mux"] = True
    out = []
    for m in media:
        if m.get("skip"):
            continue
        address, family = m["conn"] or session_conn or ("", 0)
        port = m["port"]
        if port == 0 or not m["proto"].upper().startswith("RTP/"):
            rtcp = 0
        elif m["rtcp"] is not None:
            rtcp = m["rtcp"]
        elif m["mux"]:
            rtcp = port
        else:
            rtcp = port + 1 if port < 65535 else port
        out.append(SdpMedia(m["media"], port, m["proto"], address, family, rtcp))
    return out


def _params(value: str) -> tuple[str, dict[str, str]]:
    """Media type and parameters of a Content-Type value (RFC 2045 5.1), quotes removed."""
    parts = _split_params(value)
    mtype = parts[0].strip().lower()
    params = {}
    for part in parts[1:]:
        key, eq, val = part.partition("=")
        if not eq:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1].replace('\\"', '"')
        params[key.strip().lower()] = val
    return mtype, params


def _split_params(value: str) -> list[str]:
    # Split on ';' outside double quotes: a boundary may contain ';' when quoted.
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def multipart_parts(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body (RFC 2046 5.1.1): (lower-cased headers, content)."""
    delimiter = b"--" + boundary.encode("utf-8", "replace")
    positions = []
    pos = 0
    while True:
        at = body.find(delimiter, pos)
        if at < 0:
            break
        # A delimiter only counts at the start of a line.
        if at == 0 or body[at - 1:at] == b"\n":
            positions.append(at)
        pos = at + len(delimiter)
    parts = []
    for i, at in enumerate(positions):
        after = at + len(delimiter)
        if body[after:after + 2] == b"--":
            break  # close-delimiter
        line_end = body.find(b"\n", after)
        if line_end < 0:
            break
        start = line_end + 1
        end = positions[i + 1] if i + 1 < len(positions) else len(body)
        # The CRLF before the next delimiter belongs to the delimiter.
        content = body[start:end]
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        crlf = content.find(b"\r\n\r\n")
        lf = content.find(b"\n\n")
        if content.startswith(b"\r\n"):
            head, data = b"", content[2:]
        elif content.startswith(b"\n"):
            head, data = b"", content[1:]
        elif crlf >= 0 and (lf < 0 or crlf < lf):
            head, data = content[:crlf], content[crlf + 4:]
        elif lf >= 0:
            head, data = content[:lf], content[lf + 2:]
        else:
            head, data = content, b""
        headers: dict[str, str] = {}
        for hline in head.decode("utf-8", "replace").replace("\r", "").split("\n"):
            if hline[:1] in (" ", "\t") and headers:
                last = next(reversed(headers))
                headers[last] += " " + hline.strip()
                continue
            name, colon, value = hline.partition(":")
            if colon:
                headers.setdefault(name.strip().lower(), value.strip())
        parts.append((headers, data))
    return parts


def _sdp_in(content_type: str | None, body: bytes, depth: int) -> list[SdpMedia]:
    if content_type is None:
        return []
    mtype, params = _params(content_type)
    if mtype == "application/sdp":
        return parse_sdp(body)
    if mtype.startswith("multipart/") and depth < MAX_MULTIPART_DEPTH and params.get("boundary"):
        out: list[SdpMedia] = []
        for headers, content in multipart_parts(body, params["boundary"]):
            # RFC 2046 5.1: a part without Content-Type is text/plain.
            out.extend(_sdp_in(headers.get("content-type", "text/plain"), content, depth + 1))
        return out
    return []


def sdp_of(message: SipMessage) -> list[SdpMedia]:
    """The SDP media of a SIP message: its application/sdp body or the SDP parts of a multipart body."""
    if not message.body:
        return []
    return _sdp_in(message.header("content-type"), message.body, 0)


def build_sdp(address: str, *, rtp_port: int | None = None, rtcp_port: int | None = None,
              msrp_port: int | None = None, msrp_path: str | None = None,
              msrp_setup: str | None = None, session_id: int = 1, session_version: int = 1,
              username: str = "-", session_name: str = "-",
              direction: str = "sendrecv") -> bytes:
    """An SDP offer or answer (RFC 8866, RFC 3264).

    ``rtp_port`` adds ``m=audio`` RTP/AVP with PCMU (payload 0) and
    telephone-event; ``rtcp_port`` writes an a=rtcp line (RFC 3605) when it
    is not RTP + 1. ``msrp_port`` adds ``m=message`` TCP/MSRP with the
    a=path URI (RFC 4975 8.1; default ``msrp://ADDRESS:PORT/s1;tcp``) and,
    when given, ``a=setup`` (RFC 6135: who opens the TCP connection).
    """
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o={username} {session_id} {session_version} IN {family} {address}",
        f"s={session_name}",
        f"c=IN {family} {address}",
        "t=0 0",
    ]
    if rtp_port is not None:
        lines += [
            f"m=audio {rtp_port} RTP/AVP 0 101",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
            "a=ptime:20",
        ]
        if rtcp_port is not None and rtcp_port != rtp_port + 1:
            lines.append(f"a=rtcp:{rtcp_port}")
        lines.append(f"a={direction}")
    if msrp_port is not None:
        host = f"[{address}]" if family == "IP6" else address
        path = msrp_path or f"msrp://{host}:{msrp_port}/s1;tcp"
        lines += [
            f"m=message {msrp_port} TCP/MSRP *",
            "a=accept-types:message/cpim text/plain",
            f"a=path:{path}",
        ]
        if msrp_setup:
            lines.append(f"a=setup:{msrp_setup}")
        lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()
