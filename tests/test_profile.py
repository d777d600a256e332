"""The emergency profile: every key, discovery, and located errors."""

from __future__ import annotations

import ipaddress

import pytest

from fwtest.errors import InputError
from fwtest.profile import discover_profile, load_profile, profile_from_dict

DESIGN_PROFILE = """\
name: psap-edge
firewall: forward
psap:
  - 203.0.113.0/26
  - 2001:db8:911::/64
peers:
  - 198.51.100.0/24
  - 2001:db8:100::/56
sip: {udp: 5060, tcp: 5060, tls: 5061}
rtp: 16384-32767
msrp: 2855
surge: {calls: 50, seconds: 5}
flows:
  - emergency-call
  - callback
  - options-keepalive
  - text
"""


def test_design_profile_loads_every_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(DESIGN_PROFILE)
    p = load_profile(path)
    assert p.name == "psap-edge" and p.firewall == "forward"
    assert p.psap == (ipaddress.ip_network("203.0.113.0/26"), ipaddress.ip_network("2001:db8:911::/64"))
    assert p.sip == {"udp": 5060, "tcp": 5060, "tls": 5061}
    assert p.rtp_psap == p.rtp_peers == (16384, 32767)
    assert p.msrp == 2855 and p.surge.calls == 50 and p.surge.seconds == 5.0
    assert p.flows == ("emergency-call", "callback", "options-keepalive", "text")
    assert p.families == (4, 6)
    assert p.hooks() == {"in": "forward", "out": "forward"}


def test_rtp_per_side_and_input_position():
    p = profile_from_dict({"psap": ["10.0.0.0/24"], "peers": ["192.0.2.0/24"], "firewall": "input",
                           "rtp": {"psap": "20000-20999", "peers": "30000-30999"}}, "<t>")
    assert (p.rtp_psap, p.rtp_peers) == ((20000, 20999), (30000, 30999))
    assert p.families == (4,)
    assert p.hooks() == {"in": "input", "out": "output"}


@pytest.mark.parametrize("text, line, words", [
    ("psap: [10.0.0.0/8]\npeers: [192.0.2.0/24]\nflws: [text]\n", 3, "did you mean 'flows'"),
    ("psap: [10.0.0.0/33]\npeers: [192.0.2.0/24]\n", 1, "not a CIDR"),
    ("psap: [10.0.0.0/8]\npeers:\n  - 192.0.2.0/24\n  - nonsense\n", 4, "not a CIDR"),
    ("psap: [10.0.0.0/8]\npeers: [192.0.2.0/24]\nrtp: 30000-20000\n", 3, "first <= last"),
    ("psap: [10.0.0.0/8]\npeers: [192.0.2.0/24]\nflows: [emergency-cal]\n", 3, "did you mean 'emergency-call'"),
    ("psap: [10.0.0.0/8]\npeers: [192.0.2.0/24]\nfirewall: bridge\n", 3, "firewall must be"),
    ("psap: [10.0.0.0/8]\npeers: [2001:db8::/32]\n", 1, "share no address family"),
    ("psap: [10.0.0.0/8]\npeers: [192.0.2.0/24]\nsip: {udp: 70000}\n", 3, "port number"),
    ("psap: [10.0.0.0/8]\npeers: [192.0.2.0/24]\nsurge: {calls: 0, seconds: 5}\n", 3, "surge calls"),
    ("peers: [192.0.2.0/24]\n", 1, "no 'psap'"),
])
def test_bad_profiles_are_located(tmp_path, text, line, words):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_profile(path)
    assert e.value.line == line
    assert words in e.value.message
    assert str(e.value).startswith(f"{path}:{line}: ")


def test_missing_profile_file(tmp_path):
    with pytest.raises(InputError, match="no such profile file"):
        load_profile(tmp_path / "absent.yaml")


def test_discovery_prefers_nearest_pyproject(tmp_path):
    (tmp_path / "fwtest.yaml").write_text(DESIGN_PROFILE.replace("psap-edge", "outer"))
    inner = tmp_path / "repo"
    (inner / "sub").mkdir(parents=True)
    (inner / "edge.yaml").write_text(DESIGN_PROFILE.replace("psap-edge", "inner"))
    (inner / "pyproject.toml").write_text('[tool.fwtest]\nprofile = "edge.yaml"\n')
    assert discover_profile(inner / "sub").name == "inner"
    # Without [tool.fwtest] in a pyproject.toml, the search goes on upwards to fwtest.yaml.
    (inner / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert discover_profile(inner / "sub").name == "outer"


def test_discovery_inline_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.fwtest.profile]\nname = "inline"\npsap = ["10.1.0.0/24"]\npeers = ["192.0.2.0/24"]\n')
    assert discover_profile(tmp_path).name == "inline"


def test_discovery_fails_clearly(tmp_path):
    with pytest.raises(InputError, match="no profile"):
        discover_profile(tmp_path)
