"""Disagreements between the engine and the kernel that the differential tests found,
shrunk, each with the kernel behaviour it pins down.

Each test replays one small case through both and asserts the engine says what
the kernel does. While the engine does not model a case yet, the test is an
xfail with ``strict=True`` naming the gap: when the engine is fixed the xfail
turns into a failure, and the marker (and the matching entry of
``KNOWN_GAPS`` in test_differential.py) must go.
"""

from __future__ import annotations

import pytest
from oracle_cases import Case

from fwtest.engine import replay
from fwtest.oracle import kernel_replay
from fwtest.rules.native import ruleset_from_dict
from fwtest.traffic.builders import udp_datagram

pytestmark = pytest.mark.kernel


def model_and_kernel(case: Case, backend: str) -> tuple[list[str], list[str]]:
    ruleset = ruleset_from_dict(case.rules)
    records = case.records()
    model = replay(ruleset, records, "forward", native_hook="forward", sip_ports=(5060,))
    kernel = kernel_replay(ruleset, records, case.directions, backend=backend)
    return [v.verdict for v in model], [v.verdict for v in kernel]


def later_fragment_case(family: int, rule: dict) -> Case:
    src, dst = ("198.51.100.1", "203.0.113.5") if family == 4 else ("2001:db8:100::1", "2001:db8:911::5")
    frags = udp_datagram(src, 5060, dst, 5060, b"\xc5" * 1600, ident=1)
    assert len(frags) == 2
    return Case({"name": "regression", "policy": "drop", "rules": [rule]}, tuple((f, "in") for f in frags))


@pytest.mark.parametrize("backend", ["nft", "iptables"])
@pytest.mark.parametrize(("family", "rule"), [
    (4, {"id": "not-sip", "proto": "udp", "dport": "!5060", "action": "accept"}),
    (4, {"id": "data-as-port", "proto": "udp", "sport": 50629, "action": "accept"}),      # 0xc5c5
    (6, {"id": "not-sip", "proto": "udp", "dport": "!5060", "action": "accept"}),
    (6, {"id": "rtp-source", "proto": "udp", "sport": "16384-32767", "action": "accept"}),
    (6, {"id": "header-as-port", "proto": "udp", "sport": 24576, "action": "accept"}),    # 0x6000
])
def test_later_fragment_port_match_reads_other_bytes(backend, family, rule):
    """Stateless (no conntrack: fragments meet the rules one by one).

    On this kernel (Linux 6.18, nf_tables, and iptables-nft, which turns
    ``-p udp --dport`` into the same payload loads) ``udp sport``/``udp
    dport`` are evaluated on a non-first fragment: IPv4 reads the first
    bytes of the fragment's data as the ports (here 0xc5c5 = 50629), IPv6
    reads bytes 0-3 of the IPv6 header (its transport offset is 0): sport
    0x6000|traffic class = 24576, dport = the low 16 bits of the flow label
    = 0. So ``dport != 5060`` or ``sport 16384-32767`` match such fragments.
    The engine used to say a later fragment has no ports (as
    ip(6)tables-legacy's xt_tcpudp does) and dropped the fragment by policy
    where the kernel forwards it; it now reads the same bytes
    (fwtest.engine.packet.later_fragment_ports).
    """
    model, kernel = model_and_kernel(later_fragment_case(family, rule), backend)
    assert kernel[1] == "accept"          # the kernel behaviour this test pins
    assert model == kernel


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_sip_helper_reads_sdp_without_content_type(backend):
    """A 200 OK carrying SDP but no Content-Type header (the builder's default).

    The kernel's SIP helper looks for the SDP by its lines (``ct_sip_get_sdp_header``
    scans the body for ``v=``, ``c=``, ``m=``), not by Content-Type, so it
    expects RTP to the answer's media port and that RTP is RELATED: the
    ``state: new`` drop rule misses it. The engine's SIP helper used to read
    only ``application/sdp`` bodies and dropped the RTP as NEW; it now reads a
    body that is SDP as the kernel does.
    """
    import random

    from fwtest.traffic.builders import SipDialog, UdpChannel
    from fwtest.traffic.sdp import build_sdp

    rng = random.Random(1)
    caller, callee = "198.51.100.1", "203.0.113.5"
    dialog = SipDialog("udp", caller, 5060, callee, 5060, "urn:service:sos", rng=rng)
    signalling = UdpChannel(caller, 5060, callee, 5060, rng)
    invite = dialog.invite(build_sdp(caller, rtp_port=16384, session_id=1))
    answer = dialog.response(invite, 200, "OK", body=build_sdp(callee, rtp_port=16384, session_id=2))
    assert "content-type" not in bytes(answer).decode().lower()
    wired = signalling.send(False, answer, "200 OK")
    wired += UdpChannel(caller, 16384, callee, 16384, rng).send(True, b"\x80\0" + b"\0" * 170, "RTP")
    case = Case({"name": "regression", "policy": "accept", "conntrack": {"helpers": ["sip"]},
                 "rules": [{"id": "new-to-psap", "out": "!eth0", "state": "new", "action": "drop"}]},
                tuple((w.data, "in" if w.from_a else "out") for w in wired))
    model, kernel = model_and_kernel(case, backend)
    assert kernel == ["accept", "accept"]    # the 200 OK opens the entry; the RTP is RELATED
    assert model == kernel


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_conntrack_is_on_for_a_family_without_stateful_rules(backend):
    """Found by the differential test: a stateful ruleset whose only stateful rule is
    IPv6 was exported to iptables-restore without any conntrack user, so IPv4 was not
    reassembled and a lone first fragment was forwarded; the model (conntrack on for
    the ruleset) held it. The export now loads conntrack in every family's file."""
    frags = udp_datagram("203.0.113.5", 5060, "198.51.100.1", 5060, b"\xc5" * 1600, ident=7)
    rules = {"name": "regression", "policy": "accept", "conntrack": True,
             "rules": [{"id": "r0", "dst": "2001:db8:100::/56", "state": "new", "action": "accept"}]}
    model, kernel = model_and_kernel(Case(rules, ((frags[0], "out"),)), backend)
    assert kernel == model == ["drop"]
