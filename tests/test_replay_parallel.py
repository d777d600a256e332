"""Several captures at once (``replay_captures``, --jobs) and the progress bar."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fwtest.errors import InputError
from fwtest.profile import load_profile
from fwtest.replay import ProgressBar, replay_capture, replay_captures

ROOT = Path(__file__).resolve().parent.parent
PROFILE = load_profile(str(ROOT / "rulesets/psap-edge.profile.yaml"))
REFERENCE = str(ROOT / "rulesets/psap-edge.yaml")
BROKEN = str(ROOT / "rulesets/broken/fragments-stateless.yaml")
SIPP = sorted((ROOT / "traces/sipp").glob("*.pcap*"))


def summary(r):
    return (r.pcap, r.packets, r.verdicts, r.outside_profile, r.read, r.reconstruction)


@pytest.mark.parametrize("rules", [REFERENCE, BROKEN])
def test_jobs_give_the_results_of_one_process_in_order(rules):
    alone = [replay_capture(rules, p, PROFILE) for p in SIPP]
    together = replay_captures(rules, SIPP, PROFILE, jobs=2)
    assert [summary(r) for r in together] == [summary(r) for r in alone]
    assert sum(r.exit_code for r in together) == sum(r.exit_code for r in alone)


def test_a_bad_capture_is_the_same_error_with_jobs(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture")
    for jobs in (1, 2):
        with pytest.raises(InputError, match="not a pcap or pcapng file"):
            replay_captures(REFERENCE, [SIPP[0], bad], PROFILE, jobs=jobs)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = Tty()
    replay_captures(REFERENCE, SIPP, PROFILE, stream=stream)
    shown = stream.getvalue()
    assert "packets" in shown and "M pkt/s" in shown and "ETA" in shown and "100%" in shown
    assert "\x1b[32m" in shown and shown.endswith("\r\x1b[K")    # coloured, and cleared at the end


def test_progress_bar_honours_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    stream = Tty()
    replay_captures(REFERENCE, SIPP[:1], PROFILE, stream=stream)
    assert "ETA" in stream.getvalue() and "\x1b[32m" not in stream.getvalue()


def test_no_progress_bar_in_ci_logs_or_pipes():
    stream = io.StringIO()            # not a terminal
    replay_captures(REFERENCE, SIPP, PROFILE, stream=stream)
    assert stream.getvalue() == ""


def test_progress_line():
    bar = ProgressBar(1000, io.StringIO(), enabled=True)
    bar.colour = False
    line = bar.line(250, 1_500_000, 2.0)
    assert line.startswith("[######" + "." * 18 + "]  25%")
    assert "1,500,000 packets  0.75 M pkt/s  ETA 0:00:06" in line
    assert "ETA --:--" in bar.line(0, 0, 0.0)
