"""Every ruleset in rulesets/ gives the same verdict for every synthetic packet under the
engine and under the real kernel (the native YAML exported to nft).

Each synthetic flow (``synthesize(profile)``) is replayed on its own, from empty
conntrack tables, on the compressed timeline the kernel oracle uses (packets a
millisecond apart: nothing times out; see fwtest.oracle.kernel), so the
comparison is about rules, states, fragments and the SIP helper, not time.
A ``sip:`` message match has no netfilter equivalent: the export refuses it,
naming the rule (asserted), and the file is compared with those rules taken
out, so every other rule of every file still meets the kernel.
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
    return profile.sip_helper_ports


def compare(ruleset: Ruleset, profile, flows, fw: KernelFirewall, counter: dict) -> list[str]:
    """Model and kernel on every flow; lines naming each packet they disagree on."""
    ports = sip_ports(profile)
    # nft has no payload search: a ruleset with a string match goes in as iptables-restore.
    backend = "iptables" if any(r.match.string for r in ruleset.rules()) else "nft"
    fw.load(ruleset, backend=backend, sip_ports=ports)
    hooks = profile.hooks()
    rows: list[str] = []
    limited = any(r.match.limit is not None for r in ruleset.rules())
    for flow in flows:
        if limited:
            # Token buckets live in the kernel's rules, not in conntrack: reload them so
            # each flow starts with full buckets, as the model's fresh engine does.
            fw.load(ruleset, backend=backend, sip_ports=ports)
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
    ruleset = load_ruleset(str(path))
    if any(r.match.sip is not None for r in ruleset.rules()):
        with pytest.raises(InputError, match="SIP message match has no nft equivalent"):
            ruleset_scripts(ruleset, "nft", native_hook=profile.firewall, sip_ports=sip_ports(profile))
        ruleset = without_sip_matches(ruleset)
    rows = compare(ruleset, profile, flows, kernel_firewall, comparison_counter)
    assert not rows, f"{len(rows)} packets disagree:\n" + "\n".join(rows[:40])


def without_sip_matches(ruleset: Ruleset) -> Ruleset:
    """The ruleset with its ``sip:`` message-match rules taken out (no netfilter equivalent)."""
    chains = {name: dataclasses.replace(chain, rules=tuple(r for r in chain.rules if r.match.sip is None))
              for name, chain in ruleset.chains.items()}
    return dataclasses.replace(ruleset, chains=chains)
