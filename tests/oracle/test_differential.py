"""Model == kernel, packet for packet, on generated rulesets and traffic.

Hypothesis draws a small native ruleset (``oracle_cases.native_rulesets``) and
a packet sequence (``oracle_cases.traffic``); the engine replays the records,
the same ruleset is exported (to nft, and to iptables-restore) and loaded
into a real netfilter in network namespaces, the same records are sent
through it, and every packet's verdict must be the same. One set of
namespaces serves every case (rules reloaded, conntrack emptied per case).

How many cases were compared is printed at the end of the run (conftest.py).
A disagreement fails with the ruleset, the exported script and a per-packet
table; once understood, its shrunk case goes to test_regressions.py.
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, reject, settings
from oracle_cases import SIP_PORT, Case, cases

from fwtest.engine import replay
from fwtest.errors import InputError
from fwtest.oracle import KernelFirewall, ruleset_scripts, uses_conntrack
from fwtest.rules.native import ruleset_from_dict

pytestmark = pytest.mark.kernel

# Per backend; both backends together give the "at least 500 generated cases".
EXAMPLES_PER_BACKEND = 300


@pytest.fixture(scope="module")
def kernel_firewall():
    start = ruleset_from_dict({"name": "start", "policy": "accept", "rules": []})
    with KernelFirewall(start, backend="nft", sip_ports=(SIP_PORT,)) as fw:
        yield fw


# Engine gaps found by this test and reported, each pinned by a strict xfail in
# test_regressions.py: a disagreement they explain is counted (and printed at
# the end of the run), not failed. Remove an entry when the engine is fixed.
KNOWN_GAPS: dict = {}


def disagreements(case: Case, fw: KernelFirewall, backend: str, counter: dict) -> tuple[list[str], int]:
    """Compare model and kernel on one case: (lines describing each disagreement, packets compared)."""
    ruleset = ruleset_from_dict(case.rules)
    records = case.records()
    model = replay(ruleset, records, "forward", native_hook="forward", sip_ports=(SIP_PORT,))
    try:
        scripts = ruleset_scripts(ruleset, backend, native_hook="forward", sip_ports=(SIP_PORT,))
    except InputError as e:
        # The export says so when a backend cannot express a rule exactly (iptables
        # has no "first fragment" test, say): nothing to compare. A script the
        # kernel then refuses is a bug, and fails below.
        counter["not exportable"] += 1
        reject()
        raise AssertionError("unreachable") from e
    fw.load_scripts(scripts, stateful=uses_conntrack(ruleset))
    fw.set_timeouts(ruleset)
    kernel = fw.replay(records, case.directions)
    rows = []
    for i, (rec, d, m, k) in enumerate(zip(records, case.directions, model, kernel, strict=True)):
        if m.verdict != k.verdict:
            gap = next((name for name, explains in KNOWN_GAPS.items() if explains(ruleset, rec, m, k)), None)
            if gap is not None:
                counter.setdefault("known gaps", {}).setdefault(gap, 0)
                counter["known gaps"][gap] += 1
                continue
            rule = m.rule.id if m.rule else (m.reason or "policy")
            rows.append(f"  #{i} {d:3} {rec.short()}: model {m.verdict} ({rule}, state {m.state}), "
                        f"kernel {k.verdict} ({k.reason})")
    return rows, len(records)


def explain_failure(case: Case, backend: str, rows: list[str]) -> str:
    ruleset = ruleset_from_dict(case.rules)
    scripts = ruleset_scripts(ruleset, backend, native_hook="forward", sip_ports=(SIP_PORT,))
    text = "\n".join(f"--- {what}\n{script}" for _argv, script, what in scripts)
    return (f"model and kernel ({backend}) disagree on {len(rows)} packet(s):\n" + "\n".join(rows)
            + f"\nruleset:\n{yaml.safe_dump(case.rules, sort_keys=False)}\nloaded as:\n{text}")


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_model_and_kernel_agree(kernel_firewall, comparison_counter, backend):
    @settings(max_examples=EXAMPLES_PER_BACKEND, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases(backend))
    def agree(case: Case) -> None:
        rows, packets = disagreements(case, kernel_firewall, backend, comparison_counter)
        comparison_counter["cases"] += 1
        comparison_counter["packets"] += packets
        assert not rows, explain_failure(case, backend, rows)

    agree()
