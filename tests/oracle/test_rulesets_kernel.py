"""Every ruleset in rulesets/ gives the same verdict for every synthetic packet under the
engine and under the real kernel (the native YAML exported to nft).

Each synthetic flow (``synthesize(profile)``) is replayed on its own, from empty
conntrack tables, on the compressed timeline the kernel oracle uses (packets a
millisecond apart: nothing times out; see fwtest.oracle.kernel), so the
comparison is about rules, states, fragments and the SIP helper, not time.
A file the export cannot give the kernel (a ``sip:`` message match has no
netfilter equivalent) is skipped, with the export's reason.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fwtest.engine import replay
from fwtest.errors import InputError
from fwtest.oracle import KernelFirewall, compress_timeline, ruleset_scripts
from fwtest.profile import load_profile
from fwtest.rules import load_ruleset
from fwtest.rules.ir import Ruleset
from fwtest.traffic.synth import synthesize

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "rulesets" / "psap-edge.profile.yaml"
FILES = sorted(p for p in [*ROOT.glob("rulesets/*.yaml"), *ROOT.glob("rulesets/*/*.yaml")]
               if not p.name.endswith(".profile.yaml"))


@pytest.fixture(scope="module")
def profile():
    return load_profile(PROFILE)


@pytest.fixture(scope="module")
def flows(profile):
    return synthesize(profile)


@pytest.fixture(scope="module")
def kernel_firewall(profile):
    start = load_ruleset({"name": "start", "policy": "accept", "rules": []})
    with KernelFirewall(start, firewall=profile.firewall, interfaces=profile.interfaces,
                        sip_ports=sip_ports(profile)) as fw:
        yield fw


def sip_ports(profile) -> tuple[int, ...]:
    return tuple(sorted({port for transport, port in profile.sip.items() if transport in ("udp", "tcp")}))


def compare(ruleset: Ruleset, profile, flows, fw: KernelFirewall, counter: dict) -> list[str]:
    """Model and kernel on every flow; lines naming each packet they disagree on."""
    ports = sip_ports(profile)
    try:
        ruleset_scripts(ruleset, "nft", native_hook=profile.firewall, sip_ports=ports)
    except InputError as e:
        pytest.skip(f"the kernel cannot run this ruleset: {e}")
    fw.load(ruleset, backend="nft", sip_ports=ports)
    hooks = profile.hooks()
    rows: list[str] = []
    for flow in flows:
        records = compress_timeline([step.record for step in flow.steps])
        directions = [step.direction for step in flow.steps]
        model = replay(ruleset, records, [hooks[d] for d in directions], native_hook=profile.firewall,
                       sip_ports=ports)
        kernel = fw.replay(records, directions)
        counter["packets"] += len(records)
        for i, (step, m, k) in enumerate(zip(flow.steps, model, kernel, strict=True)):
            if m.verdict != k.verdict and not (m.verdict == "reject" and not fw.rejects_visible):
                rule = m.rule.id if m.rule else (m.reason or "policy")
                rows.append(f"{flow.flow}/{flow.transport}/IPv{flow.family} {flow.instance} #{i} "
                            f"{step.label} {step.record.short()}: model {m.verdict} ({rule}), "
                            f"kernel {k.verdict} ({k.reason})")
    counter["rulesets"] += 1
    return rows


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT / "rulesets")) for p in FILES])
def test_model_and_kernel_agree_on_synthetic_traffic(path, profile, flows, kernel_firewall,
                                                     comparison_counter):
    rows = compare(load_ruleset(str(path)), profile, flows, kernel_firewall, comparison_counter)
    assert not rows, f"{len(rows)} packets disagree:\n" + "\n".join(rows[:40])


def without_sip_matches(ruleset: Ruleset) -> Ruleset:
    """The ruleset with its ``sip:`` message-match rules taken out (no netfilter equivalent)."""
    chains = {name: dataclasses.replace(chain, rules=tuple(r for r in chain.rules if r.match.sip is None))
              for name, chain in ruleset.chains.items()}
    return dataclasses.replace(ruleset, chains=chains)


def test_reference_ruleset_without_sip_matches(profile, flows, kernel_firewall, comparison_counter):
    """The reference ruleset minus its SIP-method guard, which the kernel cannot say: the
    rest (states, addresses, ports, the TLS guard's hashlimit, log) on every synthetic packet."""
    ruleset = without_sip_matches(load_ruleset(str(ROOT / "rulesets" / "psap-edge.yaml")))
    assert sum(1 for _ in ruleset.rules()) > 10
    rows = compare(ruleset, profile, flows, kernel_firewall, comparison_counter)
    assert not rows, f"{len(rows)} packets disagree:\n" + "\n".join(rows[:40])
