"""fwtest: prove that a firewall change cannot cut the 911 call path.

The Python API mirrors the files: rulesets and profiles may be paths, plain
dicts with the structure of the YAML formats, or loaded objects::

    import fwtest
    report = fwtest.check("rules.yaml", "psap-edge.profile.yaml")
    assert report.result == "pass", report.findings
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fwtest.errors import InputError

if TYPE_CHECKING:
    from fwtest.api import Report, check
    from fwtest.profile import EmergencyProfile, load_profile
    from fwtest.rules import load_ruleset
    from fwtest.rules.ir import Ruleset

__all__ = ["InputError", "check", "load_ruleset", "load_profile", "Report", "Ruleset", "EmergencyProfile"]

# Imported on first use: `fwtest check` must start faster than `import scapy.all`.
_LAZY = {
    "check": "fwtest.api", "Report": "fwtest.api",
    "load_profile": "fwtest.profile", "EmergencyProfile": "fwtest.profile",
    "load_ruleset": "fwtest.rules", "Ruleset": "fwtest.rules.ir",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fwtest' has no attribute {name!r}")
