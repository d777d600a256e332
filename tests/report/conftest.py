"""Reports built from hand-made call flows judged by the real judge.

A renderer's tests need reports whose every verdict is known: the flows here
are small SIP calls (INVITE .. 200 .. ACK, RTP/RTCP both ways, BYE) whose
packets are real IP bytes parsed by ``parse_ip``, judged by
``fwtest.engine.outcome.judge`` and grouped into findings by ``fwtest.api``
exactly as ``check()`` does after its replay.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from fwtest.api import Finding, Report, group, replay_findings
from fwtest.engine.outcome import judge
from fwtest.engine.verdict import Verdict
from fwtest.rules.ir import Action, Match, Rule, Source
from fwtest.traffic.callflow import CallFlow, FlowStep
from fwtest.traffic.record import parse_ip

PEER = {4: "198.51.100.7", 6: "2001:db8:100::7"}
PSAP = {4: "203.0.113.10", 6: "2001:db8:911::10"}
RULES = "rules.yaml"
EVIL_COMMENT = "drop <script>alert('x')</script> & \"fragments\""

ACCEPT_RULE = Rule("sip-from-peers", Source(RULES, 12), Match(), Action("accept"))
KILLER = Rule("drop-frag", Source(RULES, 42), Match(), Action("drop"), comment=EVIL_COMMENT)


def accepted() -> Verdict:
    return Verdict("accept", ACCEPT_RULE, ACCEPT_RULE.source, "new")


def dropped(rule: Rule = KILLER) -> Verdict:
    return Verdict("drop", rule, rule.source, "new", (rule,))


def policy_drop() -> Verdict:
    return Verdict("drop", None, Source(RULES, 3), "new", (), "policy drop (FORWARD)")


def packet(family: int, src: str, dst: str, sport: int, dport: int, ts: float, proto: str = "udp"):
    ip = IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)
    l4 = UDP(sport=sport, dport=dport) if proto == "udp" else TCP(sport=sport, dport=dport, flags="PA")
    return parse_ip(bytes(ip / l4 / Raw(b"x" * 20)), ts)


def call(flow: str = "emergency-call", transport: str = "udp", family: int = 4, *, rtp: int = 12,
         instance: str = "") -> CallFlow:
    """A SIP call from the peer side to the PSAP (``callback``: the other way round)."""
    peer, psap = PEER[family], PSAP[family]
    caller_in = flow != "callback"
    first, second = ("in", "out") if caller_in else ("out", "in")
    steps: list[tuple[str, str, str, int, int]] = [
        ("INVITE", "setup", first, 5060, 5060), ("100 Trying", "setup", second, 5060, 5060),
        ("180 Ringing", "setup", second, 5060, 5060), ("200 OK (INVITE)", "setup", second, 5060, 5060),
        ("ACK", "setup", first, 5060, 5060)]
    for k in range(rtp):
        steps.append(("RTP", "media-in", "in", 16384, 20000))
        steps.append(("RTP", "media-out", "out", 20000, 16384))
        if k % 5 == 4:
            steps.append(("RTCP", "media-in", "in", 16385, 20001))
    steps += [("BYE", "teardown", first, 5060, 5060), ("200 OK (BYE)", "teardown", second, 5060, 5060)]
    proto = "udp" if transport == "udp" else "tcp"
    out = []
    for i, (label, phase, direction, sport, dport) in enumerate(steps):
        src, dst = (peer, psap) if direction == "in" else (psap, peer)
        out.append(FlowStep(packet(family, src, dst, sport, dport, 0.02 * i, proto), label, phase, direction))
    return CallFlow(flow, transport, family, instance or f"{peer} -> {psap}, rtp 16384/20000", tuple(out))


Killer = Callable[[int, FlowStep], Verdict | None]


def judged(flow: CallFlow, kill: Killer | None = None):
    verdicts = []
    for i, step in enumerate(flow.steps):
        v = kill(i, step) if kill else None
        verdicts.append(v if v is not None else accepted())
    return judge(flow, verdicts)


def kill_invite(i: int, step: FlowStep) -> Verdict | None:
    return dropped() if step.label == "INVITE" else None


def kill_media_in(i: int, step: FlowStep) -> Verdict | None:
    return policy_drop() if step.phase == "media-in" else None


def make_report(outcomes, extra: list[Finding] = (), **kw) -> Report:
    rows = group(outcomes)
    return Report(ruleset=kw.pop("ruleset", RULES), profile=kw.pop("profile", "psap-edge"), flows=rows,
                  findings=replay_findings(rows) + list(extra),
                  stats={"flows": len(rows), "calls": len(outcomes),
                         "packets": sum(len(o.flow.steps) for o in outcomes),
                         "synth_seconds": 0.5, "replay_seconds": 0.25}, **kw)


def broken() -> Report:
    """emergency-call UDP/IPv4 dies at its INVITE (drop-frag, rules.yaml:42); callback
    UDP/IPv4 sets up but its inbound audio hits the policy; the rest passes."""
    outcomes = [
        judged(call(), kill_invite),
        judged(call(instance="second instance"), kill_invite),
        judged(call(family=6)),
        judged(call("emergency-call", "tcp", 4)),
        judged(call("callback"), kill_media_in),
        judged(call("callback", family=6)),
    ]
    return make_report(outcomes)


@pytest.fixture
def broken_report() -> Report:
    return broken()


@pytest.fixture(scope="session")
def shared_broken_report() -> Report:
    """``broken_report`` built once, for Hypothesis tests: read it, never change it."""
    return broken()


@pytest.fixture
def passing_report() -> Report:
    return make_report([judged(call()), judged(call(family=6)), judged(call("callback"))])


@pytest.fixture
def loose_findings() -> list[Finding]:
    """Findings that name no flow row: a proof over a whole flow, a warning."""
    return [
        Finding(kind="regression", flow="text", message="MSRP SEND",
                packet={"family": 4, "proto": "tcp", "src": "198.51.100.9", "sport": 40000,
                        "dst": "203.0.113.12", "dport": 2855},
                rule={"id": "msrp-narrowed", "file": RULES, "line": 77}, evidence="proof",
                detail="newly dropped against the baseline"),
        Finding(kind="warning", flow="surge", message="INVITE", packet=None,
                rule={"id": "sip-burst", "file": RULES, "line": 90}, evidence="replay",
                detail="rate limit leaves 10% headroom at the profile's surge"),
    ]


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The builders above, for tests that make their own flows (test modules cannot
    import this file under pytest's importlib import mode)."""
    return SimpleNamespace(PEER=PEER, PSAP=PSAP, RULES=RULES, KILLER=KILLER, EVIL_COMMENT=EVIL_COMMENT,
                           accepted=accepted, dropped=dropped, policy_drop=policy_drop, packet=packet,
                           call=call, judged=judged, kill_invite=kill_invite, kill_media_in=kill_media_in,
                           make_report=make_report)
