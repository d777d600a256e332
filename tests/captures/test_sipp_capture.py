"""The capture script itself: it must still produce, here, captures that reconstruct as committed.

Runs one capture (UDP/IPv4: an OPTIONS keep-alive and two emergency calls with
fragmented INVITEs) between fresh network namespaces. Needs root, sipp and
tcpdump (CI installs sip-tester and tcpdump).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fwtest.traffic.calls import reconstruct
from fwtest.traffic.pcap import ReadStats, read_frames

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("sipp_capture", HERE / "sipp_capture.py")
sipp_capture = importlib.util.module_from_spec(_spec)
sys.modules["sipp_capture"] = sipp_capture       # its dataclasses look their module up
_spec.loader.exec_module(sipp_capture)

missing = [t for t in ("sipp", "tcpdump", "ip") if shutil.which(t) is None]


@pytest.mark.kernel
@pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (apt-get install sip-tester tcpdump)")
def test_capture_script_records_real_calls(tmp_path):
    capture = next(c for c in sipp_capture.CAPTURES if c.name == "emergency-udp-v4.pcap")
    path = sipp_capture.record(capture, tmp_path)
    stats = ReadStats()
    result = reconstruct(read_frames(path, stats=stats, on_error="raise"), numbered=True)
    assert stats.format == "pcap" and set(stats.link_types) == {"ethernet"}
    assert len(result.calls) == capture.calls
    for call in result.calls:
        assert call.request_uri == "urn:service:sos"
        assert (call.captured.set_up, call.captured.media_both_ways, call.captured.torn_down) == (True, True, True)
    assert [(t.method, t.completed) for t in result.transactions] == [("OPTIONS", True)]
    assert result.stats.datagrams_reassembled == capture.calls      # every INVITE was fragmented
    # nothing of the lab is left behind
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "fwtcap-" not in namespaces


def test_scenarios_are_emergency_calls():
    for name in ("uac_sos.xml", "uac_sos_psap_bye.xml"):
        text = (HERE / name).read_text()
        for needle in ("INVITE urn:service:sos SIP/2.0", "Geolocation: <cid:", "Resource-Priority: esnet.1",
                       "multipart/mixed", "application/pidf+xml", "urn:ietf:params:xml:ns:pidf:geopriv10",
                       "rtp_stream="):
            assert needle in text, (name, needle)
