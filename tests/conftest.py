"""Shared test configuration.

Tests marked ``kernel`` drive the real Linux netfilter in throw-away network
namespaces. They need Linux, root and the iptables/nftables/iproute2 tools;
anywhere else they are skipped with the reason. CI runs as root and installs
the tools, so there they always run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile(
    "fwtest", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("fwtest")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from fwtest.oracle import kernel_unavailable  # the oracle's own answer, one definition

    reason = kernel_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"kernel test skipped: {reason}")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
