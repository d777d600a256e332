"""fwtest's pytest plugin: test your own rulesets and rule generators with pytest.

Registered as a ``pytest11`` entry point (``fwtest = "fwtest.pytest_plugin"``),
so installing fwtest makes it available to every pytest run; it costs nothing
until used (nothing is imported before a fixture or the helper is called).

``assert_path_intact(ruleset, profile)``
    Runs ``fwtest check`` (the synthetic flows through the engine) and the
    proof over the profile's whole header space; fails with fwtest's findings
    table (the flow that broke, the packet that died, the rule and its
    file:line) when either finds an emergency packet dropped.
``fwtest_ruleset`` (fixture)
    A loader: ``fwtest_ruleset("rules.yaml")`` or several files, relative to
    the rootdir; each ruleset is loaded once per session.
``fwtest_profile`` (fixture)
    The project's emergency profile: ``--fwtest-profile PATH``, else found
    like the CLI finds it (``[tool.fwtest]`` in pyproject.toml, else
    fwtest.yaml), from the rootdir upwards.

With Hypothesis, load at module level (function-scoped fixtures do not mix
with ``@given``)::

    from hypothesis import given, settings
    from fwtest import load_profile, load_ruleset
    from fwtest.pytest_plugin import assert_path_intact
    from fwtest.strategies import rule_edits

    RULES = load_ruleset("rulesets/psap-edge.yaml")
    PROFILE = load_profile("rulesets/psap-edge.profile.yaml")

    @settings(max_examples=6, deadline=None)
    @given(rule_edits(RULES, rules=["ssh-mgmt", "icmp-v4", "icmp-v6"]))
    def test_no_management_edit_breaks_911(edit):
        assert_path_intact(edit.apply(), PROFILE)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fwtest.api import Report
    from fwtest.profile import EmergencyProfile
    from fwtest.rules.ir import Ruleset

__all__ = ["PathBlocked", "assert_path_intact", "fwtest_profile", "fwtest_ruleset"]

class PathBlocked(AssertionError):
    """The emergency path is not intact; the message is fwtest's findings table.
    ``report`` is the ``fwtest.api.Report`` (replay and proof findings)."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


def assert_path_intact(ruleset: Any, profile: Any, *, proof: bool = True, seed: int = 0) -> Report:
    """Fail (``PathBlocked``, an AssertionError) unless every emergency flow gets through.

    ``ruleset`` and ``profile`` are paths, plain dicts or loaded objects (as for
    ``fwtest.check``). This is ``fwtest check`` without the rule analysis: the replay
    of the profile's synthetic calls and, with ``proof=True`` (the default), the proof
    that every packet of the profile's header space is accepted, whose findings come
    with a witness packet the engine confirms. Returns the report when the path is intact.
    """
    from fwtest.api import check
    from fwtest.profile import EmergencyProfile, load_profile
    from fwtest.report.table import render_table
    from fwtest.rules import load_ruleset

    rs = load_ruleset(ruleset)
    prof = profile if isinstance(profile, EmergencyProfile) else load_profile(profile)
    report = check(rs, prof, seed=seed, proof=proof, analysis=False)
    if report.result != "pass":
        raise PathBlocked("the emergency path is not intact:\n" + render_table(report), report)
    return report


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fwtest", "fwtest: firewall rules against the 911 path")
    group.addoption("--fwtest-profile", metavar="PATH", default=None,
                    help="emergency profile for the fwtest_profile fixture (default: [tool.fwtest] in "
                         "pyproject.toml, else fwtest.yaml, from the rootdir upwards)")


@pytest.fixture(scope="session")
def fwtest_profile(pytestconfig: pytest.Config) -> EmergencyProfile:
    """The emergency profile (``--fwtest-profile``, else discovered from the rootdir)."""
    from fwtest.profile import discover_profile, load_profile

    given = pytestconfig.getoption("fwtest_profile")
    if given:
        path = Path(given)
        return load_profile(path if path.is_absolute() else pytestconfig.rootpath / path)
    return discover_profile(pytestconfig.rootpath)


@pytest.fixture(scope="session")
def fwtest_ruleset(pytestconfig: pytest.Config) -> Callable[..., Ruleset]:
    """A loader of rulesets: ``fwtest_ruleset("rules.yaml")``, ``fwtest_ruleset("a.v4", "a.v6")``,
    paths relative to the rootdir; each distinct set of files is loaded once."""
    from fwtest.rules import load_ruleset

    loaded: dict[tuple[str, ...], Ruleset] = {}

    def load(*paths: str | Path | Sequence[str | Path]) -> Ruleset:
        flat: list[str | Path] = []
        for p in paths:
            flat.extend(p if isinstance(p, (list, tuple)) else [p])
        if not flat:
            raise TypeError("fwtest_ruleset needs at least one ruleset file")
        resolved = tuple(str(p if Path(p).is_absolute() else pytestconfig.rootpath / p) for p in flat)
        if resolved not in loaded:
            loaded[resolved] = load_ruleset(list(resolved))
        return loaded[resolved]

    return load
