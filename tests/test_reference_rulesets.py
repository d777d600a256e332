"""The shipped rulesets: the reference passes, each broken edit fails naming its rule
and line, each harmless edit passes. Every broken file says what it expects in its
first line: ``# fwtest-expect: rule=<id or policy> flows=<flow>[,<flow>...]``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fwtest.cli import main

ROOT = Path(__file__).resolve().parent.parent
RULESETS = ROOT / "rulesets"
PROFILE = str(RULESETS / "psap-edge.profile.yaml")
BROKEN = sorted((RULESETS / "broken").glob("*.yaml"))
HARMLESS = sorted((RULESETS / "harmless").glob("*.yaml"))


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["check", *args, "--profile", PROFILE, "--format", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def expectation(path: Path) -> tuple[str, set[str]]:
    first = path.read_text().splitlines()[0]
    m = re.match(r"#\s*fwtest-expect:\s*rule=(\S+)\s+flows=(\S+)", first)
    assert m, f"{path.name}: first line must be '# fwtest-expect: rule=... flows=...'"
    return m.group(1), set(m.group(2).split(","))


def line_of_rule(path: Path, rule: str) -> int:
    pattern = re.compile(r"^\s*policy:" if rule == "policy" else rf"^\s*-?\s*id:\s*['\"]?{re.escape(rule)}['\"]?\s*$")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if pattern.match(line):
            return number
    raise AssertionError(f"{path.name}: no line defines {rule}")


def test_there_are_enough_reference_edits():
    assert len(BROKEN) >= 10 and len(HARMLESS) >= 3


def test_reference_ruleset_passes(capsys):
    code, report = run_json(capsys, str(RULESETS / "psap-edge.yaml"))
    assert (code, report["result"], report["findings"]) == (0, "pass", [])


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_ruleset_fails_naming_the_rule(capsys, path):
    rule, flows = expectation(path)
    code, report = run_json(capsys, str(path))
    assert code == 1 and report["result"] == "fail"
    blocked = [f for f in report["findings"] if f["kind"] == "blocked"]
    assert {f["flow"] for f in blocked} & flows, f"expected a blocked flow among {flows}: {blocked}"
    killers = {(f["rule"]["id"], f["rule"]["file"], f["rule"]["line"]) for f in blocked if f["flow"] in flows}
    assert (rule, str(path), line_of_rule(path, rule)) in killers, killers


@pytest.mark.parametrize("path", HARMLESS, ids=lambda p: p.stem)
def test_harmless_edit_passes(capsys, path):
    code, report = run_json(capsys, str(path))
    assert code == 0, report["findings"]
