"""--engine both on the iptables and nft reference files: the model and the real
kernel must agree on every synthetic packet (each file loaded as it is, by
iptables-restore or nft -f, in throw-away network namespaces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwtest.api import check

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "rulesets/psap-edge.profile.yaml"
IPTABLES = sorted({p.with_suffix("") for p in (ROOT / "rulesets/iptables").glob("*.v4")})
NFT = sorted((ROOT / "rulesets/nft").glob("*.json"))
CASES = [[f"{p}.v4", f"{p}.v6"] for p in IPTABLES] + [[str(p)] for p in NFT]


@pytest.mark.kernel
@pytest.mark.parametrize("files", CASES, ids=lambda fs: Path(fs[0]).name)
def test_model_and_kernel_agree_on_every_packet(files):
    report = check(files, str(PROFILE), engine="both", proof=False, analysis=False)
    disagreements = [f for f in report.findings if "disagree" in f.detail]
    assert disagreements == []
    expect_pass = Path(files[0]).stem == "psap-edge"
    # Timeouts cannot be judged on the kernel's back-to-back timeline: that class is the proof's and replay's.
    if "timeout" not in files[0]:
        assert (report.result == "pass") == expect_pass, [f.detail for f in report.findings][:3]
