"""Regenerate traces/sipp/: real SIPp emergency calls, captured by tcpdump.

    sudo python -m tests.captures.sipp_capture [--out traces/sipp] [--only NAME]

Two network namespaces joined by a veth pair stand for the two sides of a PSAP
edge firewall: a carrier/ESRP host in 198.51.100.0/24 and 2001:db8:100::/56
(the profile's peers) and a PSAP host in 203.0.113.0/26 and 2001:db8:911::/64
(the profile's psap), so the reference ruleset of rulesets/ applies to the
captures as they are. SIPp plays both user agents with the scenarios in this
folder (an INVITE to urn:service:sos with Geolocation, Resource-Priority and a
multipart SDP + PIDF-LO body; RTP one second each way; BYE from either side;
OPTIONS keep-alives); tcpdump records on the PSAP side.

Each capture uses a different format or link type, so that the reader is
tested on real files of the kinds tcpdump writes: Ethernet pcap with
microsecond and with nanosecond timestamps, Linux cooked capture v1 and v2,
and pcapng (converted by Wireshark's editcap). ``--vlan`` puts the addresses
on 802.1ad + 802.1Q (QinQ) sub-interfaces, for kernels with VLAN support (the
one these captures were made on has none, so VLAN tags are covered by the
byte-built files of tests/traffic/test_pcap.py, cross-checked with tshark).

Namespaces and links get unique names and are always deleted, also when a
step fails. Needs root, iproute2, sipp (sip-tester), tcpdump, and editcap
(wireshark-common / tshark) for the pcapng capture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_OUT = ROOT / "traces" / "sipp"

PEER4, PSAP4 = "198.51.100.10", "203.0.113.10"
PEER6, PSAP6 = "2001:db8:100::10", "2001:db8:911::10"
PEER_RTP, PSAP_RTP = 16384, 24576      # low end and middle of the profile's RTP range 16384-32767
AUDIO = "sos-audio.pcmu"               # the name the scenarios' rtp_stream plays
AUDIO_SECONDS = 1                      # 50 packets of 20 ms PCMU


@dataclass(frozen=True)
class Capture:
    name: str             # file written under the output folder
    transport: str        # sipp -t: u1 (UDP) or t1 (TCP)
    family: int
    calls: int
    uac: str              # scenario files in this folder
    uas: str
    link: str             # ethernet | sll | sll2
    nano: bool = False    # nanosecond timestamps
    pcapng: bool = False  # convert to pcapng with editcap
    keepalives: int = 0   # OPTIONS transactions before the calls


CAPTURES = [
    Capture("emergency-udp-v4.pcap", "u1", 4, 2, "uac_sos.xml", "uas_psap.xml", "ethernet",
            keepalives=1),
    Capture("emergency-tcp-v4-ns.pcap", "t1", 4, 2, "uac_sos_psap_bye.xml", "uas_psap_bye.xml", "ethernet",
            nano=True),
    Capture("emergency-udp-v6.pcapng", "u1", 6, 1, "uac_sos_psap_bye.xml", "uas_psap_bye.xml", "sll2",
            pcapng=True),
    Capture("emergency-tcp-v6-sll.pcap", "t1", 6, 1, "uac_sos.xml", "uas_psap.xml", "sll"),
]


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


class Lab:
    """Two namespaces, one veth between them, addresses from the profile. Always torn down."""

    def __init__(self, vlan: str) -> None:
        tag = f"{os.getpid() % 100000}{int(time.time() * 1000) % 1000:03d}"
        self.peer_ns, self.psap_ns = f"fwtcap-{tag}-peer", f"fwtcap-{tag}-psap"
        self.peer_if, self.psap_if = f"fwc{tag}p", f"fwc{tag}s"      # at most 15 characters
        self.vlan = vlan
        self.created: list[str] = []

    def __enter__(self) -> Lab:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def ns(self, namespace: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", namespace, *cmd, check=check)

    def setup(self) -> None:
        for namespace in (self.peer_ns, self.psap_ns):
            run("ip", "netns", "add", namespace)
            self.created.append(namespace)
            # No router solicitations or DAD waits: the captures hold the calls, not IPv6 chatter.
            # (Written to /proc directly: the sysctl tool is not on every minimal system.)
            for key in ("default/accept_ra", "default/router_solicitations", "default/accept_dad",
                        "all/accept_dad"):
                self.ns(namespace, "sh", "-c", f"echo 0 > /proc/sys/net/ipv6/conf/{key}")
            self.ns(namespace, "ip", "link", "set", "lo", "up")
        run("ip", "-n", self.peer_ns, "link", "add", self.peer_if, "type", "veth",
            "peer", "name", self.psap_if, "netns", self.psap_ns)
        for namespace, ifname, addr4, addr6, far4, far6 in (
                (self.peer_ns, self.peer_if, PEER4, PEER6, "203.0.113.0/26", "2001:db8:911::/64"),
                (self.psap_ns, self.psap_if, PSAP4, PSAP6, "198.51.100.0/24", "2001:db8:100::/56")):
            ip = ("ip", "-n", namespace)
            run(*ip, "link", "set", ifname, "up")
            inner = ifname
            if self.vlan == "qinq":
                # Service tag 802.1ad 100 outside, customer tag 802.1Q 911 inside; the veth
                # carries 8 more bytes per frame.
                run(*ip, "link", "set", ifname, "mtu", "1508")
                run(*ip, "link", "add", "link", ifname, "name", f"{ifname}.o", "type", "vlan",
                    "protocol", "802.1ad", "id", "100")
                run(*ip, "link", "set", f"{ifname}.o", "mtu", "1504", "up")
                run(*ip, "link", "add", "link", f"{ifname}.o", "name", f"{ifname}.i", "type", "vlan",
                    "protocol", "802.1Q", "id", "911")
                run(*ip, "link", "set", f"{ifname}.i", "up")
                inner = f"{ifname}.i"
            run(*ip, "addr", "add", f"{addr4}/32", "dev", inner)
            run(*ip, "-6", "addr", "add", f"{addr6}/128", "dev", inner, "nodad")
            # The two sides are in different prefixes, as across a firewall; the link is
            # the whole path, so each far prefix is on-link.
            run(*ip, "route", "add", far4, "dev", inner)
            run(*ip, "-6", "route", "add", far6, "dev", inner)

    def teardown(self) -> None:
        # Deleting a namespace deletes the veth end and VLANs in it (and so the pair).
        for namespace in reversed(self.created):
            run("ip", "netns", "del", namespace, check=False)
        self.created = []


def tcpdump_command(lab: Lab, capture: Capture, path: Path) -> list[str]:
    cmd = ["ip", "netns", "exec", lab.psap_ns, "tcpdump", "--immediate-mode", "-U", "-s", "0",
           "-w", str(path)]
    if capture.link in ("sll", "sll2"):
        cmd += ["-i", "any", "-y", "LINUX_SLL2" if capture.link == "sll2" else "LINUX_SLL"]
        cmd += ["not", "host", "127.0.0.1", "and", "not", "host", "::1"]
    else:
        cmd += ["-i", lab.psap_if]
    if capture.nano:
        cmd += ["--time-stamp-precision=nano"]
    return cmd


def start_tcpdump(cmd: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # tcpdump says "listening on ..." once the socket is open; only then start the calls.
    said = []
    for _ in range(5):
        line = proc.stderr.readline()
        said.append(line.strip())
        if "listening on" in line:
            return proc
        if not line:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"tcpdump did not start: {' / '.join(said)}")


def wait_listening(namespace: str, transport: str, server: subprocess.Popen, timeout: float = 10.0) -> None:
    """Until the PSAP's SIPp has its SIP socket open: a request sent earlier would meet an ICMP
    port unreachable, and SIPp gives the call up."""
    kind = "-t" if transport.startswith("t") else "-u"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the PSAP's sipp exited early: {server.stderr.read()[-2000:]}")
        listening = run("ip", "netns", "exec", namespace, "ss", "-Hln", kind, "sport", "=", ":5060",
                        check=False).stdout
        if listening.strip():
            return
        time.sleep(0.05)
    raise RuntimeError("the PSAP's sipp did not open port 5060")


def sipp_pair(lab: Lab, work: Path, capture: Capture, uac: str, uas: str, calls: int,
              rtp_offset: int | None) -> None:
    local_peer, local_psap = (PEER4, PSAP4) if capture.family == 4 else (PEER6, PSAP6)
    remote = f"{local_psap}:5060" if capture.family == 4 else f"[{local_psap}]:5060"
    common = ["-t", capture.transport, "-m", str(calls), "-nostdin", "-trace_err", "-timeout", "20s",
              "-timeout_error"]
    uas_cmd = ["ip", "netns", "exec", lab.psap_ns, "sipp", "-sf", str(work / uas), "-i", local_psap,
               "-p", "5060", *common]
    uac_cmd = ["ip", "netns", "exec", lab.peer_ns, "sipp", remote, "-sf", str(work / uac), "-i", local_peer,
               "-p", "5060", *common]
    if rtp_offset is not None:
        uas_cmd += ["-mi", local_psap, "-mp", str(PSAP_RTP + rtp_offset), "-rtp_echo"]
        uac_cmd += ["-mi", local_peer, "-mp", str(PEER_RTP + rtp_offset)]
    server = subprocess.Popen(uas_cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(lab.psap_ns, capture.transport, server)
        client = subprocess.run(uac_cmd, cwd=work, capture_output=True, text=True, timeout=60)
        server_rc = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if client.returncode != 0 or server_rc != 0:
        logs = "".join(p.read_text() for p in work.glob("*_errors.log"))
        raise RuntimeError(f"sipp failed (uac {client.returncode}, uas {server_rc}) for {capture.name}:\n"
                           f"{client.stderr[-2000:]}\n{logs[-2000:]}")


def record(capture: Capture, out: Path, vlan: bool = False) -> Path:
    target = out / capture.name
    with tempfile.TemporaryDirectory(prefix="fwtest-sipp-") as tmp:
        work = Path(tmp)
        for scenario in {capture.uac, capture.uas, "uac_options.xml", "uas_options.xml"}:
            shutil.copy(HERE / scenario, work / scenario)
        (work / AUDIO).write_bytes(b"\xff" * 8000 * AUDIO_SECONDS)   # PCMU digital silence
        raw = work / "capture.pcap"
        with Lab("qinq" if vlan and capture.link == "ethernet" else "") as lab:
            tcpdump = start_tcpdump(tcpdump_command(lab, capture, raw))
            try:
                if capture.keepalives:
                    sipp_pair(lab, work, capture, "uac_options.xml", "uas_options.xml",
                              capture.keepalives, None)
                # One SIPp pair per call: SIPp gives all calls of one run the same RTP port
                # (and its echo has one port), which a real user agent never does.
                for call in range(capture.calls):
                    sipp_pair(lab, work, capture, capture.uac, capture.uas, 1, 2 * call)
                # libpcap hands packets over a block at a time; let the last block arrive.
                time.sleep(1.0)
            finally:
                tcpdump.send_signal(signal.SIGINT)     # tcpdump writes out what it has, then exits
                try:
                    tcpdump.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    tcpdump.kill()
                    tcpdump.wait()
                    raise
        out.mkdir(parents=True, exist_ok=True)
        if capture.pcapng:
            run("editcap", "-F", "pcapng", str(raw), str(target))
        else:
            shutil.copy(raw, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", action="append", help="capture name (repeatable)")
    parser.add_argument("--vlan", action="store_true", help="Ethernet captures with QinQ tags")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, tcpdump)", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "sipp", "tcpdump", "editcap") if shutil.which(t) is None]
    if missing:
        print(f"needs {', '.join(missing)} (apt-get install iproute2 sip-tester tcpdump tshark)",
              file=sys.stderr)
        return 2
    for capture in CAPTURES:
        if args.only and capture.name not in args.only:
            continue
        path = record(capture, args.out, args.vlan)
        print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
