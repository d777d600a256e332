"""The pytest plugin, as a user meets it: a separate pytest run over a user's test file.

Each test writes a test module and runs pytest on it in a subprocess, with the plugin
loaded the way it is installed (the ``pytest11`` entry point; ``-p fwtest.pytest_plugin``
until the package is reinstalled with it).
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fwtest.pytest_plugin import PathBlocked, assert_path_intact

ROOT = Path(__file__).resolve().parents[2]

# The README's example plugin test, verbatim (tests/fuzz/test_plugin.py keeps README and test in step).
README_EXAMPLE = '''\
# test_911_path.py: no edit of the management rules can cut the 911 path
import pytest
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


@settings(max_examples=1, deadline=None)
@given(rule_edits(RULES, rules=["rtp-in"], kinds=["delete"]))
def test_deleting_rtp_in_breaks_911(edit):
    with pytest.raises(AssertionError, match="drop-rest"):
        assert_path_intact(edit.apply(), PROFILE)
'''


def plugin_args() -> list[str]:
    installed = any(ep.value == "fwtest.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "fwtest.pytest_plugin"]


def run_pytest(test_file: Path, *extra: str, rootdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider", f"--rootdir={rootdir}",
         *plugin_args(), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_readme_example_runs_and_passes(tmp_path):
    test_file = tmp_path / "test_911_path.py"
    test_file.write_text(README_EXAMPLE)
    result = run_pytest(test_file, rootdir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_readme_shows_the_example():
    assert README_EXAMPLE in (ROOT / "README.md").read_text(), \
        "README.md must show tests/fuzz/test_plugin.py's README_EXAMPLE verbatim"


def test_fixtures_load_the_projects_ruleset_and_profile(tmp_path):
    test_file = tmp_path / "test_fixtures.py"
    test_file.write_text('''\
from fwtest.pytest_plugin import assert_path_intact


def test_fixtures(fwtest_ruleset, fwtest_profile):
    rules = fwtest_ruleset("rulesets/psap-edge.yaml")
    assert rules is fwtest_ruleset("rulesets/psap-edge.yaml")     # loaded once
    assert fwtest_profile.name == "psap-edge"                      # [tool.fwtest] in pyproject.toml
    merged = fwtest_ruleset("rulesets/iptables/psap-edge.v4", "rulesets/iptables/psap-edge.v6")
    assert merged.format == "iptables"
    assert assert_path_intact(rules, fwtest_profile).result == "pass"
''')
    result = run_pytest(test_file, rootdir=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_blocked_path_fails_with_the_findings_table(tmp_path):
    test_file = tmp_path / "test_blocked.py"
    test_file.write_text('''\
from fwtest.pytest_plugin import assert_path_intact


def test_rtp_narrowed(fwtest_ruleset, fwtest_profile):
    assert_path_intact(fwtest_ruleset("rulesets/broken/rtp-range-narrowed.yaml"), fwtest_profile)
''')
    result = run_pytest(test_file, "--fwtest-profile", "rulesets/psap-edge.profile.yaml", rootdir=ROOT)
    assert result.returncode == 1
    out = result.stdout
    assert "PathBlocked" in out and "the emergency path is not intact" in out
    assert "Killed by" in out and "drop-rest (" in out and "rtp-range-narrowed.yaml:" in out
    assert "Traceback" not in out.split("PathBlocked")[0]


def test_assert_path_intact_reports_what_only_the_proof_sees():
    """Deleting rtp-out passes check's sampled traffic; the proof finds the PSAP's RTP
    dropped when it is the first packet of its stream, and the assertion fails."""
    from fwtest.rules import load_ruleset
    from fwtest.strategies import single_edits

    rules = load_ruleset(str(ROOT / "rulesets" / "psap-edge.yaml"))
    profile = str(ROOT / "rulesets" / "psap-edge.profile.yaml")
    deleted = next(e for e in single_edits(rules, kinds=["delete"]) if e.rule.id == "rtp-out").apply()
    assert assert_path_intact(deleted, profile, proof=False).result == "pass"
    with pytest.raises(PathBlocked) as failure:
        assert_path_intact(deleted, profile)
    assert {f.evidence for f in failure.value.report.findings} == {"proof"}
    assert "BLOCKED [proof]" in str(failure.value)
