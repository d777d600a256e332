"""TCP connection tracking as Linux does it (net/netfilter/nf_conntrack_proto_tcp.c, Linux 6.x).

The state table, the handling of ignored packets (SYN retransmissions,
out-of-sync SYN/ACKs), mid-stream pickup with ``nf_conntrack_tcp_loose=1``
(the kernel default), window tracking (``tcp_in_window``) with
``nf_conntrack_tcp_be_liberal=0`` (the default), RST validation, and the
timeout choice are transcribed from the kernel, so a packet the kernel
marks INVALID is INVALID here. Not modelled: TCP checksum validation at
PREROUTING (``nf_conntrack_checksum``; captures taken on a sending host
carry offloaded, wrong checksums), SYN proxy, and NAT sequence adjustment.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from fwtest.traffic.record import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN

if TYPE_CHECKING:
    from collections.abc import Callable

    from fwtest.engine.conntrack import Connection
    from fwtest.engine.packet import PacketView

# enum tcp_conntrack
sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2, sIV, sIG = range(12)
STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
               "TIME_WAIT", "CLOSE", "SYN_SENT2")
# Timeout sysctl of each state (SYN_SENT2 shares SYN_SENT's two minutes).
STATE_TIMEOUTS = ("tcp_close", "tcp_syn_sent", "tcp_syn_recv", "tcp_established", "tcp_fin_wait",
                  "tcp_close_wait", "tcp_last_ack", "tcp_time_wait", "tcp_close", "tcp_syn_sent")

# enum tcp_bit_set
SYN_SET, SYNACK_SET, FIN_SET, ACK_SET, RST_SET, NONE_SET = range(6)

ORIGINAL, REPLY = 0, 1

# tcp_conntracks[dir][index][old state], columns sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
TCP_CONNTRACKS = (
    (   # ORIGINAL
        (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),   # syn
        (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),   # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),   # fin
        (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),   # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),   # rst
        (sIV,) * 10,                                          # none
    ),
    (   # REPLY
        (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),   # syn
        (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),   # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),   # fin
        (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),   # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),   # rst
        (sIV,) * 10,                                          # none
    ),
)

# ip_ct_tcp_state.flags
F_WINDOW_SCALE, F_SACK_PERM, F_CLOSE_INIT, F_BE_LIBERAL = 0x01, 0x02, 0x04, 0x08
F_DATA_UNACKNOWLEDGED, F_MAXACK_SET, F_EXP_CHALLENGE_ACK, F_SIMULTANEOUS_OPEN = 0x10, 0x20, 0x40, 0x80

TCP_MAX_WSCALE = 14
MAXACKWINCONST = 66000
TCP_MAX_RETRANS = 3     # nf_conntrack_tcp_max_retrans
TCP_LOOSE = True        # nf_conntrack_tcp_loose
TCP_BE_LIBERAL = False  # nf_conntrack_tcp_be_liberal

_URG, _PSH = 0x20, 0x08
# tcp_valid_flags: PSH, ECE and CWR are always allowed on top of these.
_VALID_FLAGS = frozenset({TCP_SYN, TCP_SYN | _URG, TCP_SYN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK,
                          TCP_FIN | TCP_ACK, TCP_FIN | TCP_ACK | _URG, TCP_ACK, TCP_ACK | _URG})

# Results of tcp_packet
ACCEPT, INVALID, REPEAT = "accept", "invalid", "repeat"
_IGNORE = "ignore"

_MASK = 0xFFFFFFFF


def before(seq1: int, seq2: int) -> bool:
    return ((seq1 - seq2) & _MASK) >= 0x80000000


def after(seq2: int, seq1: int) -> bool:
    return before(seq1, seq2)


class TcpSeen:
    """ip_ct_tcp_state: what conntrack knows of one direction's window."""

    __slots__ = ("td_end", "td_maxend", "td_maxwin", "td_maxack", "td_scale", "flags")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.td_end = self.td_maxend = self.td_maxwin = self.td_maxack = self.td_scale = 0
        self.flags = 0


class TcpTrack:
    """ip_ct_tcp: the TCP part of a conntrack entry."""

    __slots__ = ("state", "seen", "last_index", "last_dir", "last_seq", "last_ack", "last_end",
                 "last_win", "last_wscale", "last_flags", "retrans")

    def __init__(self) -> None:
        self.state = sNO
        self.seen = (TcpSeen(), TcpSeen())
        self.last_index = NONE_SET
        self.last_dir = ORIGINAL
        self.last_seq = self.last_ack = self.last_end = self.last_win = 0
        self.last_wscale = self.last_flags = self.retrans = 0

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]


class TcpHeader:
    __slots__ = ("seq", "ack_seq", "doff", "flags", "window", "options", "payload_len", "bad")

    def __init__(self, data: bytes, l4: int) -> None:
        self.bad = ""
        if len(data) < l4 + 20:
            self.bad = "truncated packet"
            self.seq = self.ack_seq = self.doff = self.flags = self.window = self.payload_len = 0
            self.options = b""
            return
        self.seq, self.ack_seq, off, self.flags, self.window = struct.unpack_from("!IIBBH", data, l4 + 4)
        self.doff = (off >> 4) * 4
        tcplen = len(data) - l4
        if self.doff < 20 or tcplen < self.doff:
            self.bad = "truncated packet"
            self.options = b""
            self.payload_len = 0
            return
        self.options = data[l4 + 20:l4 + self.doff]
        self.payload_len = tcplen - self.doff

    @property
    def syn(self) -> bool:
        return bool(self.flags & TCP_SYN)

    @property
    def ack(self) -> bool:
        return bool(self.flags & TCP_ACK)

    @property
    def rst(self) -> bool:
        return bool(self.flags & TCP_RST)

    @property
    def fin(self) -> bool:
        return bool(self.flags & TCP_FIN)

    @property
    def index(self) -> int:
        # get_conntrack_index
        if self.rst:
            return RST_SET
        if self.syn:
            return SYNACK_SET if self.ack else SYN_SET
        if self.fin:
            return FIN_SET
        if self.ack:
            return ACK_SET
        return NONE_SET

    @property
    def end(self) -> int:
        # segment_seq_plus_len
        return (self.seq + self.payload_len + (1 if self.syn else 0) + (1 if self.fin else 0)) & _MASK

    def error(self) -> str:
        """tcp_error: why the kernel refuses to track this segment at all ("" when fine)."""
        if self.bad:
            return self.bad
        if (self.flags & 0x3F & ~_PSH) not in _VALID_FLAGS:
            return "invalid tcp flag combination"
        return ""


def _tcp_options(opts: bytes, state: TcpSeen) -> None:
    # tcp_options(): window scale and SACK-permitted from a SYN's options.
    if not opts:
        return
    state.td_scale = 0
    state.flags = 0
    i, length = 0, len(opts)
    while length > 0:
        opcode = opts[i]
        i += 1
        if opcode == 0:            # EOL
            return
        if opcode == 1:            # NOP
            length -= 1
            continue
        if length < 2:
            return
        opsize = opts[i]
        i += 1
        if opsize < 2 or opsize > length:
            return
        if opcode == 4 and opsize == 2:
            state.flags |= F_SACK_PERM
        elif opcode == 3 and opsize == 3:
            state.td_scale = min(opts[i], TCP_MAX_WSCALE)
            state.flags |= F_WINDOW_SCALE
        i += opsize - 2
        length -= opsize


def _tcp_sack(opts: bytes, sack: int) -> int:
    if not opts:
        return sack
    # Fast path for timestamp-only option (NOP NOP TIMESTAMP 10).
    if len(opts) == 12 and opts[:4] == b"\x01\x01\x08\x0a":
        return sack
    i, length = 0, len(opts)
    while length > 0:
        opcode = opts[i]
        i += 1
        if opcode == 0:
            return sack
        if opcode == 1:
            length -= 1
            continue
        if length < 2:
            return sack
        opsize = opts[i]
        i += 1
        if opsize < 2 or opsize > length:
            return sack
        if opcode == 5 and opsize >= 10 and (opsize - 2) % 8 == 0:
            for j in range(0, opsize - 2, 8):
                if i + j + 8 <= len(opts):
                    right = struct.unpack_from("!I", opts, i + j + 4)[0]
                    if after(right, sack):
                        sack = right
            return sack
        i += opsize - 2
        length -= opsize
    return sack


def _init_sender(sender: TcpSeen, receiver: TcpSeen, h: TcpHeader, end: int, win: int, direction: int) -> None:
    # tcp_init_sender
    sender.td_end = sender.td_maxend = end
    sender.td_maxwin = win if win else 1
    _tcp_options(h.options, sender)
    # RFC 1323: both sides must send Window Scale to enable scaling either way.
    if direction == REPLY and not (sender.flags & F_WINDOW_SCALE and receiver.flags & F_WINDOW_SCALE):
        sender.td_scale = receiver.td_scale = 0


def _log_invalid(sender: TcpSeen, result: str) -> str:
    # nf_tcp_log_invalid: a liberal sender (picked-up connection) is never invalid.
    if sender.flags & F_BE_LIBERAL or TCP_BE_LIBERAL:
        return ACCEPT
    return result


def _maxackwindow(sender: TcpSeen) -> int:
    return sender.td_maxwin if sender.td_maxwin > MAXACKWINCONST else MAXACKWINCONST


def tcp_in_window(t: TcpTrack, direction: int, index: int, h: TcpHeader) -> str:
    sender = t.seen[direction]
    receiver = t.seen[1 - direction]
    seq = h.seq
    ack = sack = h.ack_seq
    win_raw = h.window
    win = win_raw
    end = h.end
    if receiver.flags & F_SACK_PERM:
        sack = _tcp_sack(h.options, sack)

    if sender.td_maxwin == 0:
        if h.syn:
            _init_sender(sender, receiver, h, end, win, direction)
            if not h.ack:
                return ACCEPT          # simultaneous open
        else:
            # Mid-connection: its history is lost for us; use the packet's data.
            sender.td_end = end
            swin = (win << sender.td_scale) & _MASK
            sender.td_maxwin = swin if swin else 1
            sender.td_maxend = (end + sender.td_maxwin) & _MASK
            if receiver.td_maxwin == 0:
                receiver.td_end = receiver.td_maxend = sack
            elif sack == (receiver.td_end + 1) & _MASK:
                receiver.td_end = (receiver.td_end + 1) & _MASK
    elif h.syn and after(end, sender.td_end) and t.state in (sSS, sSR):
        # RFC 793: a reinitialised TCP need only use larger sequence numbers.
        _init_sender(sender, receiver, h, end, win, direction)
        if direction == REPLY and not h.ack:
            return ACCEPT

    if not h.ack:
        ack = sack = receiver.td_end
    elif (h.flags & (TCP_ACK | TCP_RST)) == (TCP_ACK | TCP_RST) and ack == 0:
        ack = sack = receiver.td_end           # broken stacks: RST|ACK with ack 0

    if h.rst and seq == 0 and t.state == sSS:
        seq = end = sender.td_end              # RST answering a SYN

    seq_ok = before(seq, (sender.td_maxend + 1) & _MASK)
    if not seq_ok:
        overshot = (end - sender.td_maxend + 1) & _MASK
        ack_ok = after(sack, (receiver.td_end - _maxackwindow(sender) - 1) & _MASK)
        in_recv_win = bool(receiver.td_maxwin) and \
            after(end, (sender.td_end - receiver.td_maxwin - 1) & _MASK)
        if in_recv_win and ack_ok and overshot <= receiver.td_maxwin and \
                before(sack, (receiver.td_end + 1) & _MASK):
            # Work around TCPs that send more than the receive window allows.
            sender.td_end = end
            sender.flags |= F_DATA_UNACKNOWLEDGED
            return _log_invalid(sender, _IGNORE)
        return _log_invalid(sender, INVALID)

    if not before(sack, (receiver.td_end + 1) & _MASK):
        return _log_invalid(sender, INVALID)       # ACK is over upper bound (ACKed data not seen yet)

    in_recv_win = not receiver.td_maxwin or after(end, (sender.td_end - receiver.td_maxwin - 1) & _MASK)
    if not in_recv_win:
        return _log_invalid(sender, _IGNORE)       # SEQ under lower bound (retransmission)
    if not after(sack, (receiver.td_end - _maxackwindow(sender) - 1) & _MASK):
        return _log_invalid(sender, _IGNORE)       # ACK under lower bound (overly delayed)

    if not h.syn:
        win = (win << sender.td_scale) & _MASK
    swin = (win + (sack - ack)) & _MASK
    if sender.td_maxwin < swin:
        sender.td_maxwin = swin
    if after(end, sender.td_end):
        sender.td_end = end
        sender.flags |= F_DATA_UNACKNOWLEDGED
    if h.ack:
        if not sender.flags & F_MAXACK_SET:
            sender.td_maxack = ack
            sender.flags |= F_MAXACK_SET
        elif after(ack, sender.td_maxack):
            sender.td_maxack = ack
    if receiver.td_maxwin != 0 and after(end, sender.td_maxend):
        receiver.td_maxwin = (receiver.td_maxwin + end - sender.td_maxend) & _MASK
    if after((sack + win) & _MASK, (receiver.td_maxend - 1) & _MASK):
        receiver.td_maxend = (sack + win) & _MASK
        if win == 0:
            receiver.td_maxend = (receiver.td_maxend + 1) & _MASK
    if ack == receiver.td_end:
        receiver.flags &= ~F_DATA_UNACKNOWLEDGED

    if index == ACK_SET:
        if (t.last_dir == direction and t.last_seq == seq and t.last_ack == ack
                and t.last_end == end and t.last_win == win_raw):
            t.retrans += 1
        else:
            t.last_dir, t.last_seq, t.last_ack, t.last_end, t.last_win = direction, seq, ack, end, win_raw
            t.retrans = 0
    return ACCEPT


def tcp_new(t: TcpTrack, h: TcpHeader) -> bool:
    """tcp_new: can this segment start tracking (SYN, or a mid-stream ACK with loose pickup)?"""
    new_state = TCP_CONNTRACKS[ORIGINAL][h.index][sNO]
    if new_state >= sIV:
        return False
    sender, receiver = t.seen
    if new_state == sSS:
        sender.reset()
        receiver.reset()
        sender.td_end = h.end
        sender.td_maxwin = h.window or 1
        sender.td_maxend = sender.td_end
        _tcp_options(h.options, sender)
    elif not TCP_LOOSE:
        return False
    else:
        sender.reset()
        receiver.reset()
        sender.td_end = h.end
        sender.td_maxwin = h.window or 1
        sender.td_maxend = (sender.td_end + sender.td_maxwin) & _MASK
        # We assume SACK and liberal window checking to handle window scaling.
        sender.flags = receiver.flags = F_SACK_PERM | F_BE_LIBERAL
    t.last_index = NONE_SET
    return True


def _handle_invalid(conn: Connection, t: TcpTrack, direction: int, index: int, now: float,
                    timeout: Callable[[str], float]) -> None:
    # nf_tcp_handle_invalid: an out-of-window FIN/RST answering a FIN/RST
    # shortens an assured connection's timeout to the unacknowledged one.
    if not conn.assured or index not in (RST_SET, FIN_SET):
        return
    if t.last_dir != direction and t.last_index in (FIN_SET, RST_SET):
        left = conn.expires - now
        if left < 120:
            return
        unack = timeout("tcp_unacknowledged")
        if left > unack:
            conn.expires = now + unack
    else:
        t.last_index = index
        t.last_dir = direction


def tcp_packet(conn: Connection, p: PacketView, direction: int, timeout: Callable[[str], float]) -> str:
    """nf_conntrack_tcp_packet: ACCEPT (tracked), INVALID, or REPEAT (kill the entry, look up again)."""
    h = TcpHeader(p.data, p.record.l4_offset)
    if h.error():
        return INVALID
    t: TcpTrack = conn.tcp
    if not conn.confirmed and not tcp_new(t, h):
        return INVALID
    now = p.ts
    old_state = t.state
    index = h.index
    new_state = TCP_CONNTRACKS[direction][index][old_state]
    skip_window = False

    if new_state == sSS and old_state >= sTW:
        if ((t.seen[direction].flags | t.seen[1 - direction].flags) & F_CLOSE_INIT
                or (t.last_dir == direction and t.last_index == RST_SET)):
            # Reopening a closed/aborted connection: delete it and look up again.
            return REPEAT
        new_state = sIG
    if new_state == sIG:
        if (index == SYNACK_SET and t.last_index == SYN_SET and t.last_dir != direction
                and h.ack_seq == t.last_end):
            # This SYN/ACK answers a SYN we ignored: client and server are in
            # sync, we are not; resync from what we noted then.
            old_state, new_state = sSS, sSR
            last = t.seen[t.last_dir]
            last.td_end = last.td_maxend = t.last_end
            last.td_maxwin = t.last_win or 1
            last.td_scale = t.last_wscale
            t.last_flags &= ~F_EXP_CHALLENGE_ACK
            last.flags = t.last_flags
            cur = t.seen[direction]
            cur.td_end = cur.td_maxend = cur.td_maxwin = cur.td_maxack = cur.td_scale = 0
            cur.flags &= F_BE_LIBERAL
        else:
            t.last_index = index
            t.last_dir = direction
            t.last_seq = h.seq
            t.last_end = h.end
            t.last_win = h.window
            if index == SYN_SET and direction == ORIGINAL:
                seen = TcpSeen()
                t.last_flags = t.last_wscale = 0
                _tcp_options(h.options, seen)
                if seen.flags & F_WINDOW_SCALE:
                    t.last_flags |= F_WINDOW_SCALE
                    t.last_wscale = seen.td_scale
                if seen.flags & F_SACK_PERM:
                    t.last_flags |= F_SACK_PERM
                if old_state == sLA:
                    t.last_flags |= F_EXP_CHALLENGE_ACK
            if old_state == sSS and index == ACK_SET and direction == REPLY:
                t.last_ack = h.ack_seq
            return ACCEPT           # ignored: let it through, change nothing
    elif new_state == sIV:
        return INVALID
    elif new_state == sTW:
        if (old_state == sLA and index == ACK_SET and t.last_dir != direction
                and t.last_index == SYN_SET and t.last_flags & F_EXP_CHALLENGE_ACK):
            t.last_flags &= ~F_EXP_CHALLENGE_ACK   # RFC 5961 challenge ACK: not the last ACK
            return ACCEPT
    elif new_state == sS2:
        t.last_flags |= F_SIMULTANEOUS_OPEN
    elif new_state == sSR:
        if direction == REPLY and index == ACK_SET and t.last_flags & F_SIMULTANEOUS_OPEN:
            new_state = sES
    elif new_state == sCL and index == RST_SET:
        other = t.seen[1 - direction]
        if old_state in (sFW, sLA, sTW, sCL, sCW):
            skip_window = True          # closing: the tuple may be reused, skip validation
        else:
            established = old_state == sES and conn.assured
            window_check = False        # the kernel's "break" out of the switch
            if other.flags & F_MAXACK_SET and t.last_index != SYN_SET:
                seq = h.seq
                if seq == 0 and not established:
                    window_check = True
                elif before(seq, other.td_maxack):
                    return INVALID      # invalid RST (nf_conntrack_tcp_ignore_invalid_rst=0)
                elif (not established or seq == other.td_maxack
                      or (t.last_index == ACK_SET and t.last_dir == direction and seq == t.last_end)):
                    window_check = True     # incl. an RST closing a train of data in its direction
                else:
                    new_state = old_state   # keep established to allow a challenge ACK
            if not window_check:
                if (((conn.seen_reply and t.last_index == SYN_SET)
                     or (not conn.assured and t.last_index == ACK_SET))
                        and h.ack_seq == t.last_end):
                    skip_window = True  # RST to a SYN or ACK we let through while out of sync
                elif (old_state == sSS and t.last_index == ACK_SET and t.last_dir == REPLY
                      and h.seq == t.last_ack):
                    skip_window = True  # RST answering a challenge ACK

    if not skip_window:
        res = tcp_in_window(t, direction, index, h)
        if res == _IGNORE:
            return ACCEPT
        if res == INVALID:
            _handle_invalid(conn, t, direction, index, now, timeout)
            return INVALID

    t.last_index = index
    t.last_dir = direction
    t.state = new_state
    if old_state != new_state and new_state == sFW:
        t.seen[direction].flags |= F_CLOSE_INIT

    state_timeout = timeout(STATE_TIMEOUTS[new_state])
    retrans = timeout("tcp_max_retrans")
    unack = timeout("tcp_unacknowledged")
    if t.retrans >= TCP_MAX_RETRANS and state_timeout > retrans:
        value = retrans
    elif index == RST_SET:
        value = timeout("tcp_close")
    elif (t.seen[0].flags | t.seen[1].flags) & F_DATA_UNACKNOWLEDGED and state_timeout > unack:
        value = unack
    elif t.last_win == 0 and state_timeout > retrans:
        value = retrans
    else:
        value = state_timeout

    if not conn.seen_reply:
        if h.rst:
            # Only reply is a RST: not a connection; delete it at once.
            conn.dead = True
            return ACCEPT
        if index == SYN_SET and old_state == sSS:
            return ACCEPT               # SYN retransmission does not renew the timeout
        if new_state == sES and value > unack:
            value = unack               # picked up mid-stream: no five-day timeout
    elif not conn.assured and old_state in (sSR, sES) and new_state == sES:
        conn.assured = True
    conn.expires = now + value
    return ACCEPT
