"""The emergency profile: the 911 path that must always work (DESIGN.md contract).

Loaded from a YAML file, from a plain dict (the Python API), or discovered
from ``[tool.fwtest]`` in the nearest ``pyproject.toml``, else ``fwtest.yaml``,
searching upwards from the current directory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwtest.errors import InputError, did_you_mean
from fwtest.yamlsrc import YamlList, YamlMap, line_of, load_yaml

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FLOWS = ("emergency-call", "callback", "options-keepalive", "text")
FIREWALL_POSITIONS = ("forward", "input", "output")
SIP_TRANSPORTS = ("udp", "tcp", "tls")
PROFILE_KEYS = ("name", "firewall", "psap", "peers", "sip", "rtp", "msrp", "surge", "flows",
                "interfaces", "call_seconds")


@dataclass(frozen=True)
class Surge:
    """The path must carry ``calls`` new emergency calls within ``seconds``."""

    calls: int
    seconds: float


@dataclass(frozen=True)
class EmergencyProfile:
    name: str
    firewall: str                                  # forward | input | output
    psap: tuple[Network, ...]
    peers: tuple[Network, ...]
    sip: Mapping[str, int]                         # transport -> port (udp, tcp, tls)
    rtp_psap: tuple[int, int]                      # inclusive media port range on the PSAP side
    rtp_peers: tuple[int, int]
    msrp: int
    flows: tuple[str, ...]
    surge: Surge | None = None
    interfaces: Mapping[str, str] = None           # side -> interface name on the firewall
    call_seconds: int = 180                        # how long synthetic calls last (conntrack timeouts)
    source: str = "<profile>"

    def __post_init__(self) -> None:
        if self.interfaces is None:
            object.__setattr__(self, "interfaces", {"peers": "eth0", "psap": "eth1"})

    @property
    def families(self) -> tuple[int, ...]:
        """Address families present on both sides (a flow needs both ends)."""
        return tuple(f for f in (4, 6)
                     if any(n.version == f for n in self.psap) and any(n.version == f for n in self.peers))

    @property
    def sip_helper_ports(self) -> tuple[int, ...]:
        """Ports the kernel's SIP helper watches: the cleartext SIP ports (it cannot read TLS)."""
        return tuple(sorted({port for transport, port in self.sip.items() if transport != "tls"}))

    def networks(self, side: str, family: int) -> tuple[Network, ...]:
        nets = self.psap if side == "psap" else self.peers
        return tuple(n for n in nets if n.version == family)

    def hooks(self) -> dict[str, str]:
        """Hook crossed by traffic in each direction ('in' = peers -> psap)."""
        if self.firewall == "forward":
            return {"in": "forward", "out": "forward"}
        if self.firewall == "input":
            return {"in": "input", "out": "output"}
        return {"in": "input", "out": "output"}  # output: the box is the peer-facing caller


def load_profile(source: str | Path | Mapping[str, Any]) -> EmergencyProfile:
    """A profile from a YAML file path or a plain dict."""
    if isinstance(source, Mapping):
        return profile_from_dict(source, "<profile>")
    path = str(source)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, 0, "no such profile file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, 0, f"cannot read profile: {e}") from None
    data = load_yaml(text, path)
    if isinstance(data, Mapping) and "profile" in data and "psap" not in data:
        # fwtest.yaml may point at the profile instead of holding it.
        return load_profile(Path(path).parent / str(data["profile"]))
    return profile_from_dict(data, path)


def discover_profile(start: str | Path = ".") -> EmergencyProfile:
    """The profile named by the nearest pyproject.toml ``[tool.fwtest]``, else fwtest.yaml."""
    from fwtest.config import find_config

    config = find_config(start)
    if config is not None and config.profile_inline is not None:
        return profile_from_dict(config.profile_inline, f"{config.path}.profile")
    if config is not None and config.profile is not None:
        return load_profile(config.profile)
    where = config.path if config else str(Path(start).resolve())
    raise InputError(where, 0, "no profile: pass --profile, or set [tool.fwtest] profile in "
                     "pyproject.toml, or write fwtest.yaml")


def profile_from_dict(data: Any, path: str) -> EmergencyProfile:
    if not isinstance(data, Mapping):
        raise InputError(path, line_of(data), "a profile is a mapping (name, psap, peers, ...)")
    line = data.line_of if isinstance(data, YamlMap) else (lambda _k: 0)
    for key in data:
        if key not in PROFILE_KEYS:
            raise InputError(path, line(key), f"unknown profile key '{key}'{did_you_mean(key, PROFILE_KEYS)}")
    for key in ("psap", "peers"):
        if key not in data:
            raise InputError(path, line_of(data), f"profile has no '{key}' (list of CIDRs)")

    name = str(data.get("name", Path(path).stem))
    firewall = data.get("firewall", "forward")
    if firewall not in FIREWALL_POSITIONS:
        raise InputError(path, line("firewall"),
                         f"firewall must be one of {', '.join(FIREWALL_POSITIONS)}, not {firewall!r}")
    psap = _networks(data["psap"], path, line("psap"), "psap")
    peers = _networks(data["peers"], path, line("peers"), "peers")

    sip = {"udp": 5060, "tcp": 5060, "tls": 5061}
    if "sip" in data:
        given = data["sip"]
        if not isinstance(given, Mapping) or not given:
            raise InputError(path, line("sip"), "sip is a mapping of transport to port, e.g. {udp: 5060, tls: 5061}")
        sip = {}
        for transport, port in given.items():
            if transport not in SIP_TRANSPORTS:
                raise InputError(path, line("sip"), f"unknown SIP transport '{transport}'"
                                 f"{did_you_mean(transport, SIP_TRANSPORTS)}")
            sip[transport] = _port(port, path, line("sip"), f"sip {transport} port")

    rtp = data.get("rtp", "16384-32767")
    if isinstance(rtp, Mapping):
        unknown = set(rtp) - {"psap", "peers"}
        if unknown or set(rtp) != {"psap", "peers"}:
            raise InputError(path, line("rtp"), "rtp mapping needs exactly the keys 'psap' and 'peers'")
        rtp_psap = _range(rtp["psap"], path, line("rtp"))
        rtp_peers = _range(rtp["peers"], path, line("rtp"))
    else:
        rtp_psap = rtp_peers = _range(rtp, path, line("rtp"))

    msrp = _port(data.get("msrp", 2855), path, line("msrp"), "msrp port")

    surge = None
    if data.get("surge") is not None:
        s = data["surge"]
        if not isinstance(s, Mapping) or set(s) != {"calls", "seconds"}:
            raise InputError(path, line("surge"), "surge is {calls: N, seconds: S}")
        calls, seconds = s["calls"], s["seconds"]
        if not isinstance(calls, int) or isinstance(calls, bool) or not 1 <= calls <= 100000:
            raise InputError(path, line("surge"), f"surge calls must be an integer 1..100000, not {calls!r}")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds <= 86400:
            raise InputError(path, line("surge"), f"surge seconds must be a positive number, not {seconds!r}")
        surge = Surge(calls, float(seconds))

    flows = data.get("flows", list(FLOWS))
    if not isinstance(flows, list) or not flows:
        raise InputError(path, line("flows"), f"flows is a non-empty list of: {', '.join(FLOWS)}")
    for i, flow in enumerate(flows):
        if flow not in FLOWS:
            where = flows.line_of(i) if isinstance(flows, YamlList) else line("flows")
            raise InputError(path, where, f"unknown flow '{flow}'{did_you_mean(str(flow), FLOWS)}")

    interfaces = {"peers": "eth0", "psap": "eth1"}
    if "interfaces" in data:
        given = data["interfaces"]
        if not isinstance(given, Mapping) or not set(given) <= {"peers", "psap"}:
            raise InputError(path, line("interfaces"), "interfaces is {peers: IFNAME, psap: IFNAME}")
        for side, ifname in given.items():
            if not isinstance(ifname, str) or not 1 <= len(ifname) <= 15 or "/" in ifname or " " in ifname:
                raise InputError(path, line("interfaces"), f"bad interface name {ifname!r}")
            interfaces[side] = ifname

    call_seconds = data.get("call_seconds", 180)
    if not isinstance(call_seconds, int) or isinstance(call_seconds, bool) or not 1 <= call_seconds <= 86400:
        raise InputError(path, line("call_seconds"), "call_seconds must be an integer 1..86400")

    profile = EmergencyProfile(name=name, firewall=firewall, psap=psap, peers=peers, sip=sip,
                               rtp_psap=rtp_psap, rtp_peers=rtp_peers, msrp=msrp,
                               flows=tuple(flows), surge=surge, interfaces=interfaces,
                               call_seconds=call_seconds, source=path)
    if not profile.families:
        raise InputError(path, line_of(data), "psap and peers share no address family: no flow can be built")
    return profile


def _networks(value: Any, path: str, line: int, what: str) -> tuple[Network, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InputError(path, line, f"{what} is an empty list")
    nets = []
    for i, item in enumerate(items):
        where = items.line_of(i) if isinstance(items, YamlList) else line
        try:
            nets.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise InputError(path, where, f"{what}: {item!r} is not a CIDR prefix or address") from None
    return tuple(nets)


def _port(value: Any, path: str, line: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InputError(path, line, f"{what} must be a port number 1..65535, not {value!r}")
    return value


def _range(value: Any, path: str, line: int) -> tuple[int, int]:
    text = str(value)
    lo, _, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise InputError(path, line, f"rtp range must look like 16384-32767, not {text!r}") from None
    if not 1 <= first <= last <= 65535:
        raise InputError(path, line, f"rtp range {text!r} is not within 1..65535 with first <= last")
    return first, last
