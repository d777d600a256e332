"""The CI ecosystem files: the composite action, the example workflow, the GitLab
snippet and the pre-commit hook agree with each other and with fwtest's exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "fwtest.yml").read_text())
GITLAB = yaml.safe_load((ROOT / "docs" / "gitlab-ci.yml").read_text())
HOOKS = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())


def step(name: str) -> dict:
    return next(s for s in ACTION["runs"]["steps"] if s.get("name") == name)


def run_step(name: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the action's bash steps the way the runner does (bash -e, the step's env)."""
    script = cwd / "step.sh"
    script.write_text(step(name)["run"])
    full = {**os.environ, **env, "GITHUB_OUTPUT": str(cwd / "out.txt"), "GITHUB_STEP_SUMMARY": str(cwd / "sum.md")}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=cwd,
                          env=full, capture_output=True, text=True, timeout=600)


def test_action_inputs_and_outputs():
    assert ACTION["runs"]["using"] == "composite"
    inputs = ACTION["inputs"]
    assert {"rules", "profile", "baseline"} <= set(inputs)
    assert inputs["baseline"]["default"] == "git:origin/${{ github.base_ref }}"
    assert set(ACTION["outputs"]) >= {"exit-code", "result", "sarif-file", "junit-file", "html-file"}
    install = step("Install fwtest")["run"]
    assert "pip install" in install and "ACTION_PATH" in install
    check = step("Check the 911 path")["run"]
    for flag in ("--profile", "--baseline", '-o "$SARIF_FILE"', '-o "$JUNIT_FILE"', '-o "$HTML_FILE"'):
        assert flag in check


@pytest.mark.parametrize(("code", "fail_on_findings", "expected"),
                         [("0", "true", 0), ("1", "true", 1), ("1", "false", 0), ("2", "false", 2), ("3", "true", 3)])
def test_gate_step_follows_the_exit_codes(tmp_path, code, fail_on_findings, expected):
    proc = run_step("Gate on the result", {"CODE": code, "FAIL_ON_FINDINGS": fail_on_findings}, tmp_path)
    assert proc.returncode == expected, proc.stdout + proc.stderr
    if code != "0":
        assert "::error title=fwtest::" in proc.stdout


def test_workflow_uses_the_action_and_uploads_its_sarif():
    steps = WORKFLOW["jobs"]["fwtest"]["steps"]
    assert WORKFLOW["permissions"]["security-events"] == "write"
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    fwtest = next(s for s in steps if s.get("uses") == "./")
    upload = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif@"))
    sarif = ACTION["inputs"]["sarif-file"]["default"]
    assert upload["with"]["sarif_file"] == sarif and sarif in upload["if"]
    assert "!cancelled()" in upload["if"]  # a red gate still uploads its annotations
    assert (ROOT / fwtest["with"]["rules"]).exists() and (ROOT / fwtest["with"]["profile"]).exists()
    trigger = WORKFLOW[True] if True in WORKFLOW else WORKFLOW["on"]  # YAML 1.1 reads `on` as true
    assert "rulesets/**" in trigger["pull_request"]["paths"]


def test_gitlab_snippet_reports_the_junit_file_it_writes():
    job = GITLAB["fwtest"]
    script = "\n".join(job["script"])
    junit = job["artifacts"]["reports"]["junit"]
    assert f"-o {junit}" in script and job["artifacts"]["when"] == "always"
    assert "--baseline git:origin/$target" in script and job["variables"]["GIT_DEPTH"] == "0"


def test_ci_keeps_the_fwtest_cache_it_points_fwtest_at():
    # The synthesised calls are rebuilt on a cold cache (about a second): both CI
    # templates keep the directory fwtest is told to use between runs.
    restore = step("Restore fwtest's cache")
    assert restore["uses"].startswith("actions/cache@") and "inputs.cache" in restore["if"]
    assert step("Check the 911 path")["env"]["FWTEST_CACHE_DIR"] == restore["with"]["path"]
    assert restore["with"]["restore-keys"] and restore["with"]["key"].startswith(restore["with"]["restore-keys"])
    job = GITLAB["fwtest"]
    kept = job["variables"]["FWTEST_CACHE_DIR"].replace("$CI_PROJECT_DIR/", "")
    assert [p.rstrip("/") for p in job["cache"]["paths"]] == [kept]


def test_pre_commit_hook():
    (hook,) = HOOKS
    assert hook["id"] == "fwtest-check" and hook["language"] == "python"
    assert hook["entry"].split() == ["fwtest", "check"] and hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    for path in ("rulesets/psap-edge.yaml", "rulesets/broken/ipv6-forgotten.yaml", "fwtest.yaml", "pyproject.toml"):
        assert files.search(path), path
    for path in ("fwtest/cli.py", "docs/rulesets.md", "tests/rulesets/x.yaml"):
        assert not files.search(path), path


def test_check_step_writes_all_reports_and_records_the_result(tmp_path):
    """The action's own script, run for real on the reference ruleset in a git checkout."""
    assert shutil.which("fwtest"), "the fwtest console script is not installed"
    work = tmp_path / "repo"
    (work / "rulesets").mkdir(parents=True)
    for name in ("psap-edge.yaml", "psap-edge.profile.yaml"):
        shutil.copy(ROOT / "rulesets" / name, work / "rulesets" / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=work, check=True)
    subprocess.run([*git, "add", "."], cwd=work, check=True)
    subprocess.run([*git, "commit", "-qm", "rules"], cwd=work, check=True)
    env = {"RULES": "rulesets/psap-edge.yaml", "PROFILE": "rulesets/psap-edge.profile.yaml",
           "BASELINE": "git:HEAD", "SARIF_FILE": "fwtest.sarif", "JUNIT_FILE": "fwtest-junit.xml",
           "HTML_FILE": "fwtest.html"}
    proc = run_step("Check the 911 path", env, work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = dict(line.split("=", 1) for line in (work / "out.txt").read_text().splitlines())
    assert outputs == {"exit-code": "0", "result": "pass"}
    assert json.loads((work / "fwtest.sarif").read_text())["version"] == "2.1.0"
    assert ET.parse(work / "fwtest-junit.xml").getroot().get("failures") == "0"
    assert (work / "fwtest.html").read_text().startswith("<!DOCTYPE html>")
    assert "### fwtest: 911 path pass" in (work / "sum.md").read_text()
