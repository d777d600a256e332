"""The little netfilter netlink the oracle needs, spoken directly (no ``conntrack`` tool).

* flush the conntrack table and the expectation table of a namespace
  (what ``conntrack -F`` and ``conntrack -F expect`` send: a delete request
  without a tuple, nfnetlink ``IPCTNL_MSG_CT_DELETE`` / ``IPCTNL_MSG_EXP_DELETE``);
* receive NFLOG messages (``nft ... log group N``) with the packets they carry,
  used to see what the input hook accepted when the firewall is the endpoint.

The socket must be created inside the namespace it talks to (``netns.inside``).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4

NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_CTNETLINK_EXP, NFNL_SUBSYS_ULOG = 1, 2, 4
IPCTNL_MSG_CT_DELETE = 2
IPCTNL_MSG_EXP_DELETE = 2
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH = 1, 2, 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD = 9
NLA_TYPE_MASK = 0x3FFF

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")   # family, version, res_id (big endian on the wire, set below)


class NetlinkError(OSError):
    pass


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


class NetfilterSocket:
    """A NETLINK_NETFILTER socket; create it inside the namespace it should talk to."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, subsys: int, msg: int, family: int = socket.AF_UNSPEC, res_id: int = 0,
                attrs: bytes = b"") -> None:
        """Send one request and wait for its acknowledgement; raise on a netlink error."""
        self.seq += 1
        body = _NFGENMSG.pack(family, 0, socket.htons(res_id)) + attrs
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), (subsys << 8) | msg,
                                NLM_F_REQUEST | NLM_F_ACK, self.seq, 0)
        self.sock.send(header + body)
        while True:
            data = self.sock.recv(65536)
            for kind, seq, payload in _messages(data):
                if kind == NLMSG_ERROR and seq == self.seq:
                    code = -struct.unpack_from("=i", payload)[0]
                    # ENOENT: nothing to delete (an empty table), which is what we want.
                    if code not in (0, errno.ENOENT):
                        raise NetlinkError(code, f"nfnetlink request {subsys}/{msg}: {os.strerror(code)}")
                    return

    def flush_conntrack(self) -> None:
        """Forget every connection and expectation in this namespace (IPv4 and IPv6)."""
        self.request(NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_DELETE)
        self.request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE)

    def bind_nflog(self, group: int) -> None:
        """Receive packets logged to NFLOG ``group``, whole, one message per packet."""
        self.request(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, res_id=group,
                     attrs=_attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)))
        self.request(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, res_id=group,
                     attrs=_attr(NFULA_CFG_MODE, struct.pack("!IBx", 0xFFFF, NFULNL_COPY_PACKET)))
        # One message per packet, sent at once (the default batches up to a timer).
        self.request(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, res_id=group,
                     attrs=_attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)))

    def logged_packets(self) -> list[bytes]:
        """Packets logged since the last call (non-blocking): each from its IP header on."""
        packets = []
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return packets
            for kind, _seq, payload in _messages(data):
                if kind >> 8 != NFNL_SUBSYS_ULOG or kind & 0xFF != NFULNL_MSG_PACKET:
                    continue
                for attr_kind, value in _attrs(payload[_NFGENMSG.size:]):
                    if attr_kind == NFULA_PAYLOAD:
                        packets.append(value)


def _messages(data: bytes):
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size:
            break
        yield kind, seq, data[pos + _NLMSGHDR.size:pos + length]
        pos += (length + 3) & ~3


def _attrs(data: bytes):
    pos = 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        yield kind & NLA_TYPE_MASK, data[pos + 4:pos + length]
        pos += (length + 3) & ~3
