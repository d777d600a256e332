"""The command line contract: exit codes and one-line errors, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fwtest.cli import main

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = str(ROOT / "rulesets" / "psap-edge.yaml")
PROFILE = str(ROOT / "rulesets" / "psap-edge.profile.yaml")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_check_reference_table(capsys):
    assert main(["check", REFERENCE, "--profile", PROFILE]) == 0
    out = capsys.readouterr().out
    for flow in ("emergency-call", "callback", "options-keepalive", "text"):
        for transport in ("UDP", "TCP", "TLS"):
            assert any(flow in line and transport in line and "PASS" in line for line in out.splitlines())
    assert "IPv6" in out and "the emergency path is intact" in out


def test_malformed_yaml_exits_2(tmp_path, capsys):
    bad = tmp_path / "rules.yaml"
    bad.write_text("policy: drop\nrules:\n  - id: x\n    action: [accept\n")
    assert main(["check", str(bad), "--profile", PROFILE]) == 2
    assert one_line_error(capsys).startswith(f"{bad}:")


def test_unknown_key_exits_2_with_suggestion(tmp_path, capsys):
    bad = tmp_path / "rules.yaml"
    bad.write_text("policy: drop\nrules:\n  - id: sip\n    proto: udp\n    dprt: 5060\n    action: accept\n")
    assert main(["check", str(bad), "--profile", PROFILE]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"{bad}:5:") and "dport" in err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "absent.yaml"), "--profile", PROFILE]) == 2
    assert "absent.yaml" in one_line_error(capsys)


def test_usage_error_exits_2(capsys):
    assert main(["check", REFERENCE, "--format", "yaml"]) == 2
    assert "invalid choice" in one_line_error(capsys)


def test_no_ruleset_and_none_configured(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--profile", PROFILE]) == 2
    assert "no ruleset given and none configured" in one_line_error(capsys)


def test_configured_rulesets_and_outputs(tmp_path, monkeypatch, capsys):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.fwtest]\nprofile = "{PROFILE}"\n'
        f'rulesets = ["{REFERENCE}", {{rules = ["{ROOT / "rulesets/broken/options-dropped.yaml"}"]}}]\n'
        'outputs = ["out.sarif", "out.xml"]\n')
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "PASS: the emergency path is intact" in out and "options-keepalive" in out
    sarif = json.loads((tmp_path / "out.sarif").read_text())
    assert {r["ruleId"].split("/")[1] for r in sarif["runs"][0]["results"]} == {"blocked"}
    assert (tmp_path / "out.xml").read_text().startswith("<?xml")


def test_output_format_from_extension_or_error(tmp_path, capsys):
    assert main(["check", REFERENCE, "--profile", PROFILE, "-o", str(tmp_path / "r.json"),
                 "-o", str(tmp_path / "r.html")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["result"] == "pass"
    assert "<svg" in (tmp_path / "r.html").read_text()
    capsys.readouterr()
    assert main(["check", REFERENCE, "--profile", PROFILE, "-o", str(tmp_path / "a.out"),
                 "-o", str(tmp_path / "b.out")]) == 2
    assert "cannot tell the report format" in one_line_error(capsys)


def test_baseline_turns_blocked_into_regression(capsys):
    broken = str(ROOT / "rulesets/broken/options-dropped.yaml")
    assert main(["check", broken, "--profile", PROFILE, "--baseline", REFERENCE, "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["baseline"] == REFERENCE
    assert {f["kind"] for f in report["findings"] if f["flow"] == "options-keepalive"} == {"regression"}


def test_json_contract_keys(capsys):
    assert main(["check", REFERENCE, "--profile", PROFILE, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"result", "ruleset", "baseline", "profile", "findings", "stats"}
    assert report["profile"] == "psap-edge" and report["baseline"] is None


def test_console_script_runs_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fwtest.cli", "check", str(tmp_path / "nope.yaml"),
                           "--profile", PROFILE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("no such file")


@pytest.mark.parametrize("spec", ["udp 198.51.100.7:5060 > 203.0.113.10:5060 state=new",
                                  "tcp [2001:db8:100::7]:40000 > [2001:db8:911::10]:5061 flags=S"])
def test_explain_walks_the_reference(capsys, spec):
    code = main(["explain", REFERENCE, spec, "--profile", PROFILE])
    out = capsys.readouterr().out
    assert code == 0 and "accept" in out.lower()


def test_version_is_the_installed_one(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"fwtest {version('fwtest')}\n"


def test_a_warm_check_imports_neither_scapy_nor_networkx(tmp_path):
    # Start-up (README, tests/bench/bench_startup.py): with the cache warm,
    # `fwtest check` must not pay for Scapy's import, nor for networkx via dd.
    import os

    env = {**os.environ, "FWTEST_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("FWTEST_CACHE", None)
    code = ("import sys\nfrom fwtest.cli import main\n"
            f"code = main(['check', {REFERENCE!r}, '--profile', {PROFILE!r}, '--format', 'json'])\n"
            "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'scapy', 'networkx'}), file=sys.stderr)\n")
    cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert cold.stderr.split("\n")[-2] == "0 ['scapy']"         # the first run builds the calls with Scapy
    warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert warm.stderr.split("\n")[-2] == "0 []"
    # A failing check too: its witnesses are built and written without Scapy.
    broken = str(ROOT / "rulesets" / "broken" / "msrp-closed.yaml")
    failing = code.replace(repr(REFERENCE), repr(broken)).replace("'--format', 'json'",
                                                                  f"'--witness-dir', {str(tmp_path / 'w')!r}")
    done = subprocess.run([sys.executable, "-c", failing], env=env, capture_output=True, text=True, check=True)
    assert done.stderr.split("\n")[-2] == "1 []" and list((tmp_path / "w").glob("*.pcap"))
