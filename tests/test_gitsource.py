"""Reading a ruleset at a git revision."""

from __future__ import annotations

import subprocess

import pytest

from fwtest.errors import InputError
from fwtest.gitsource import parse_git_spec, read_git_file


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                   cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw" / "rules.yaml").write_text("policy: accept\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    (tmp_path / "fw" / "rules.yaml").write_text("policy: drop\n")
    git(tmp_path, "commit", "-qam", "two")
    monkeypatch.chdir(tmp_path / "fw")
    return tmp_path


def test_spec_forms():
    assert parse_git_spec("git:origin/main", "r.yaml") == ("origin/main", "r.yaml")
    assert parse_git_spec("git:HEAD~1:other.yaml", "r.yaml") == ("HEAD~1", "other.yaml")


def test_same_path_at_revision(repo):
    assert read_git_file("git:HEAD~1", "rules.yaml").text == "policy: accept\n"
    assert read_git_file("git:HEAD", "rules.yaml").text == "policy: drop\n"


def test_absent_at_revision_is_not_an_error(repo):
    (repo / "fw" / "new.yaml").write_text("policy: drop\n")
    got = read_git_file("git:HEAD", "new.yaml")
    assert got.text is None and got.label == "git:HEAD:new.yaml"


def test_bad_revision(repo):
    with pytest.raises(InputError, match="no such revision 'nope'"):
        read_git_file("git:nope", "rules.yaml")


def test_not_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules.yaml").write_text("policy: drop\n")
    with pytest.raises(InputError, match="not inside a git repository"):
        read_git_file("git:HEAD", "rules.yaml")


def test_breaking_commit_fails_the_gate_with_sarif_on_the_killing_line(tmp_path, monkeypatch, capsys):
    """Issue 6's gate: a scratch repository, the reference ruleset committed, then a
    breaking edit committed; `check --baseline git:HEAD~1 --format sarif` exits 1 with a
    regression result on the line of the rule that kills the packet."""
    import json
    from pathlib import Path

    from fwtest.cli import main

    root = Path(__file__).resolve().parent.parent
    git(tmp_path, "init", "-q")
    rules = tmp_path / "rules.yaml"
    rules.write_text((root / "rulesets/psap-edge.yaml").read_text())
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "reference")
    broken = (root / "rulesets/broken/options-dropped.yaml").read_text()
    rules.write_text(broken)
    git(tmp_path, "commit", "-qam", "drop OPTIONS")
    monkeypatch.chdir(tmp_path)
    profile = str(root / "rulesets/psap-edge.profile.yaml")
    code = main(["check", "rules.yaml", "--profile", profile, "--baseline", "git:HEAD~1", "--format", "sarif"])
    sarif = json.loads(capsys.readouterr().out)
    assert code == 1
    killing_line = next(n for n, line in enumerate(broken.splitlines(), 1) if line.strip() == "- id: drop-options")
    results = sarif["runs"][0]["results"]
    regressions = [r for r in results if "regression" in r["ruleId"]]
    assert regressions
    for r in regressions:
        loc = r["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"].endswith("rules.yaml")
        assert loc["region"]["startLine"] == killing_line
