"""The kernel's SIP conntrack helper (net/netfilter/nf_conntrack_sip.c), for media pinholes.

What it does, as the kernel does it (default module parameters
``sip_direct_media=1``, ``sip_timeout=3600``, no NAT):

* It runs at confirmation (the last hook) on every packet with payload of a
  connection that has the helper, and refreshes that connection's timeout to
  ``sip_timeout`` (one hour), whatever the UDP/TCP timeouts say.
* UDP: the datagram is one message. TCP: only ESTABLISHED segments, each
  segment alone (no stream reassembly): the complete messages it starts with,
  framed by Content-Length (a message without one ends the scan).
* Requests INVITE (after flushing the connection's media expectations),
  UPDATE, ACK, PRACK, and 1xx/2xx responses to INVITE, UPDATE, PRACK carry
  SDP the helper reads; BYE and failed INVITEs flush the expectations.
* Per SDP, up to three ``m=audio|video|image`` lines with a non-zero port
  (MSRP's ``m=message`` is ignored) each expect two UDP flows: to the SDP
  address, ports ``port & ~1`` (RTP) and that + 1 (RTCP; the kernel ignores
  ``a=rtcp``), from the *other* party's signalling address, any source port
  -- and only when the SDP address is the sending party's own signalling
  address (``sip_direct_media``), else nothing is expected.
* Expectations live 180 s, at most 4 audio / 4 video / 2 image per master
  (the oldest is evicted); the first packet that fits one is RELATED.
* The helper *drops* a message whose SDP names a media port below 1024, or
  has a media line without a usable connection address, or a request or
  response without a parsable CSeq ("cannot parse cseq").

SDP is read with fwtest.traffic.sdp (application/sdp bodies, multipart parts,
and a body that is SDP without a Content-Type, as the kernel scans for the
lines); REGISTER signalling expectations are not modelled.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from fwtest.rules.ir import TCP, UDP
from fwtest.traffic.sdp import parse_sdp, sdp_of
from fwtest.traffic.sipmsg import SipMessage, parse_sip, split_sip_stream

if TYPE_CHECKING:
    from fwtest.engine.conntrack import Connection, ConntrackTable
    from fwtest.engine.packet import PacketView

SIP_TIMEOUT = 3600                 # module parameter sip_timeout
EXPECT_TIMEOUT = 180               # sip_exp_policy[*].timeout
MAX_EXPECTED = {"audio": 4, "video": 4, "image": 2}   # 2 * IP_CT_DIR_MAX, IP_CT_DIR_MAX
MEDIA_TYPES = ("audio", "video", "image")
MIN_MESSAGE = len("SIP/2.0 200")


def _cseq_number(msg: SipMessage) -> tuple[int, str] | None:
    """Leading digits of CSeq and the rest, as ct_sip_get_header + simple_strtoul read them."""
    value = msg.header("cseq")
    if value is None:
        return None
    value = value.strip()
    digits = 0
    while digits < len(value) and value[digits].isdigit():
        digits += 1
    if not digits:
        return None
    return int(value[:digits]), value[digits:].strip()


class SipHelper:
    def __init__(self, table: ConntrackTable) -> None:
        self.table = table

    def help(self, conn: Connection, p: PacketView) -> str:
        """Run the helper on one packet of ``conn``. Returns a drop reason, or ""."""
        payload = p.payload
        if not payload:
            return ""
        if conn.proto == TCP and p.ctinfo != "established":
            return ""
        conn.expires = p.ts + SIP_TIMEOUT
        if len(payload) < MIN_MESSAGE or payload[0] in (0x0D, 0x0A):
            # The kernel compares the first bytes with method names and "SIP/2.0 ":
            # a payload that starts with a CRLF keep-alive is never read.
            return ""
        if conn.proto == UDP:
            msg = parse_sip(payload)
            return self._message(conn, p, msg) if msg is not None else ""
        messages, _rest = split_sip_stream(payload)
        for msg in messages:
            if msg.header("content-length") is None:
                break
            reason = self._message(conn, p, msg)
            if reason:
                return reason
        return ""

    # ------------------------------------------------------------------ messages

    def _message(self, conn: Connection, p: PacketView, msg: SipMessage) -> str:
        if msg.is_request:
            method = (msg.method or "").upper()
            if method not in ("INVITE", "UPDATE", "ACK", "PRACK", "BYE", "REGISTER"):
                return ""
            cseq = _cseq_number(msg)
            if cseq is None:
                return f"SIP helper drops the {method}: cannot parse CSeq (nf_conntrack_sip)"
            if method == "INVITE":
                self.flush(conn)
                reason = self._sdp(conn, p, msg)
                if not reason:
                    conn.invite_cseq = cseq[0]
                return reason
            if method in ("UPDATE", "ACK", "PRACK"):
                return self._sdp(conn, p, msg)
            if method == "BYE":
                self.flush(conn)
            return ""
        code = msg.status or 0
        if not code:
            return "SIP helper drops the response: cannot get the status code (nf_conntrack_sip)"
        cseq = _cseq_number(msg)
        if cseq is None:
            return f"SIP helper drops the {code} response: cannot parse CSeq (nf_conntrack_sip)"
        number, method = cseq
        method = method.upper()
        if method.startswith(("INVITE", "UPDATE", "PRACK")):
            if 100 <= code <= 299:
                return self._sdp(conn, p, msg)
            if conn.invite_cseq == number:
                self.flush(conn)
        return ""

    def _sdp(self, conn: Connection, p: PacketView, msg: SipMessage) -> str:
        handled = 0
        found = sdp_of(msg)
        if not found and msg.body.lstrip().startswith(b"v=0"):
            # The kernel finds SDP by its lines (ct_sip_get_sdp_header), not by
            # Content-Type: a body that is SDP counts even when no header says so.
            found = parse_sdp(msg.body)
        for media in found:
            if handled >= len(MEDIA_TYPES):
                break
            if media.media not in MEDIA_TYPES or media.port == 0:
                continue
            if media.port < 1024:
                return (f"SIP helper drops the message: SDP media port {media.port} is below 1024 "
                        "(nf_conntrack_sip: wrong port)")
            addr = None
            if media.address and media.family == conn.family:
                try:
                    addr = int(ipaddress.ip_address(media.address))
                except ValueError:
                    addr = None
            if addr is None:
                return (f"SIP helper drops the message: m={media.media} has no IPv{conn.family} "
                        "connection address it can parse (nf_conntrack_sip: cannot parse SDP message)")
            self._expect_rtp_rtcp(conn, p, addr, media.port, media.media)
            handled += 1
        return ""

    # ------------------------------------------------------------------ expectations

    def _expect_rtp_rtcp(self, conn: Connection, p: PacketView, daddr: int, port: int, cls: str) -> None:
        # set_expected_rtp_rtcp with sip_direct_media=1: media only between
        # the signalling endpoints, and only to the sender's own address.
        if daddr != conn.source(p.reply):
            return
        saddr = conn.source(not p.reply)
        table = self.table
        now = p.ts
        existing = table.expectations.get((conn.family, saddr, daddr, port))
        if (existing is not None and now < existing.expires and existing.master is not conn
                and existing.master.helper == conn.helper and existing.cls == cls):
            return   # another call already expects this media (forked call)
        base = port & ~1
        self._expect_related(conn, cls, saddr, daddr, base, now)
        self._expect_related(conn, cls, saddr, daddr, base + 1, now)

    def _expect_related(self, conn: Connection, cls: str, saddr: int, daddr: int, dport: int,
                        now: float) -> None:
        from fwtest.engine.conntrack import Expectation

        table = self.table
        key = (conn.family, saddr, daddr, dport)
        old = table.expectations.get(key)
        if old is not None and now < old.expires:
            if old.cls != cls or old.master is not conn:
                return   # -EALREADY: the helper pretends it was set up
            table.unexpect(old)
        elif old is not None:
            table.unexpect(old)
        mine = [e for e in conn.expectations if e.cls == cls and now < e.expires]
        if len(mine) >= MAX_EXPECTED[cls]:
            table.unexpect(mine[0])   # evict_oldest_expect
        table.expect(Expectation(conn, cls, saddr, daddr, dport, now + EXPECT_TIMEOUT))

    def flush(self, conn: Connection) -> None:
        """flush_expectations(ct, media=true)."""
        for exp in list(conn.expectations):
            self.table.unexpect(exp)
