"""Hostile inputs: every loader fuzzed with Hypothesis, bounded for CI.

The contract (DESIGN.md, exit codes): unreadable input is an ``InputError`` — through
the CLI, exit 2 with one located line, never a traceback and never exit 3 — no input
hangs, and nothing a loader cannot read is skipped in silence (a false pass).

Loaders and example counts (Hypothesis ``max_examples``; the whole file runs in about
a minute on two cores):

=========================================  ========
native YAML (mutated text, deep nesting,        100
  billion laughs, text and binary noise)
native YAML and dicts with wrong types          100
native YAML through ``fwtest explain``           15
iptables-save (mutated text)                    100
iptables-save: no -A line skipped                40
nft JSON (mutated documents, raw text)          100
profile (mutated text)                          100
profile (dicts with wrong types)                100
profile through ``fwtest explain --profile``     15
pcap / pcapng (mutated bytes, both modes)       100
pcap through ``fwtest replay``                   15
IP packet parser (``parse_ip``)                 200
SIP dissector ``parse_sip`` and stream framing  200
Scapy SIP layer                                  60
catastrophic ``sip`` regexes                  9 fixed
=========================================  ========

Every example runs under a wall-clock guard (``HANG_SECONDS``); the regex cases run
in a subprocess that is killed when it overruns, because Python's ``re`` cannot be
interrupted.
"""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwtest.cli import main
from fwtest.errors import InputError
from fwtest.profile import load_profile, profile_from_dict
from fwtest.rules import parse_ruleset
from fwtest.rules.iptables import load_iptables
from fwtest.rules.nftables import load_nft
from fwtest.strategies import sip_messages
from fwtest.traffic.pcap import read_records
from fwtest.traffic.record import MalformedPacket, parse_ip
from fwtest.traffic.sipmsg import parse_sip, split_sip_stream

ROOT = Path(__file__).resolve().parents[2]
NATIVE = (ROOT / "rulesets" / "psap-edge.yaml").read_text()
IPTABLES = (ROOT / "rulesets" / "iptables" / "psap-edge.v4").read_text()
NFT = json.loads((ROOT / "rulesets" / "nft" / "psap-edge.json").read_text())
PROFILE_TEXT = (ROOT / "rulesets" / "psap-edge.profile.yaml").read_text()
PROFILE = str(ROOT / "rulesets" / "psap-edge.profile.yaml")
HANG_SECONDS = 20


def hostile(examples: int) -> settings:
    """Bounded examples, no deadline (the wall-clock guard is ``no_hang``), no example database."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)

LOCATED = re.compile(r"^\S[^\n]*?(:\d+)?: \S[^\n]*$")


class Hang(Exception):
    pass


@contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    """Fail instead of hanging (pure-Python loops only; see the regex tests for C code)."""
    def expired(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def refused(load, *args) -> None:
    """The loader must refuse the input with a located one-line InputError (accepting it fails)."""
    with no_hang(), pytest.raises(InputError) as e:
        load(*args)
    text = str(e.value)
    assert "\n" not in text and LOCATED.match(text) and e.value.path, repr(text)


def only_input_errors(load, *args):
    """Run a loader: it either returns or raises a located one-line InputError."""
    with no_hang():
        try:
            return load(*args)
        except InputError as e:
            text = str(e)
            assert "\n" not in text and LOCATED.match(text), repr(text)
            assert e.path, repr(text)
            return None


# ------------------------------------------------------------------ text mutations

HOSTILE_SCALARS = ["99999999999999999999999999", "-1", "0", "1e309", ".nan", "-.inf", "0x10", "~", "null", "[]",
                   "{}", "''", '"\\x00"', "!!binary AAAA", "!!python/object:os.system x", '"' + "A" * 5000 + '"',
                   "[[[[[[[[]]]]]]]]", "&a x", "*a", "\"\\ud800\"", "yes", "65536", "1/0", "300.1.2.3/33",
                   "'!198.51.100.0/24'", "-", "'16384-1'", "{jump: nowhere}", "{goto: rules}"]


@st.composite
def mutated_text(draw, text: str) -> str:
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("truncate", "delete", "duplicate", "replace-value", "insert-junk",
                                     "swap", "indent")))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "truncate":
            cut = draw(st.integers(0, len(lines[i])))
            lines = lines[:i] + [lines[i][:cut]]
        elif kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "replace-value":
            line = lines[i]
            if ":" in line:
                key = line.split(":", 1)[0]
                lines[i] = f"{key}: {draw(st.sampled_from(HOSTILE_SCALARS))}"
            elif " " in line.strip():
                words = line.split(" ")
                j = draw(st.integers(0, len(words) - 1))
                words[j] = draw(st.sampled_from(HOSTILE_SCALARS))
                lines[i] = " ".join(words)
        elif kind == "insert-junk":
            lines.insert(i, draw(st.text(max_size=80)))
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] = " " * draw(st.integers(1, 7)) + lines[i]
    return "\n".join(lines) + draw(st.sampled_from(("\n", "", "\r\n", "\x00")))


def deep(n: int, kind: str) -> str:
    if kind == "flow-list":
        return "rules: " + "[" * n + "]" * n + "\n"
    if kind == "flow-map":
        return "rules: " + "{a: " * n + "1" + "}" * n + "\n"
    return "rules:\n" + "".join("  " * (d + 1) + "- \n" for d in range(n))


def billion_laughs(depth: int) -> str:
    out = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for d in range(1, depth):
        out.append(f"a{d}: &a{d} [" + ",".join([f"*a{d - 1}"] * 9) + "]")
    out.append(f"rules: *a{depth - 1}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ native YAML

@hostile(100)
@given(st.one_of(
    mutated_text(NATIVE),
    st.builds(deep, st.integers(30, 3000), st.sampled_from(("flow-list", "flow-map", "block"))),
    st.builds(billion_laughs, st.integers(2, 9)),
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
))
def test_native_yaml_never_crashes(text):
    only_input_errors(parse_ruleset, text, "hostile.yaml")


@st.composite
def hostile_ruleset_dicts(draw):
    leaf = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True), st.text(max_size=20), st.booleans(),
                     st.none(), st.sampled_from(["udp", "tcp", "accept", "drop", "5060", "16384-32767",
                                                 "198.51.100.0/24", "!5060", "(a+)+$", "established"]))
    value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                         max_leaves=12)
    keys = st.sampled_from(["id", "proto", "src", "dst", "sport", "dport", "state", "sip", "string", "limit",
                            "action", "fragment", "in", "out", "tcp_flags", "syn", "helper", "family", "comment",
                            "dprt"])
    rules = st.lists(st.dictionaries(keys, value, max_size=5), max_size=4)
    top = {"name": draw(value), "policy": draw(st.sampled_from(["drop", "accept", "reject", 5, None])),
           "rules": draw(rules)}
    if draw(st.booleans()):
        top["conntrack"] = draw(value)
    if draw(st.booleans()):
        top["chains"] = {"guard": draw(rules)}
    if draw(st.booleans()):
        top["definitions"] = draw(st.dictionaries(st.text(max_size=6), value, max_size=3))
    return top


@hostile(100)
@given(hostile_ruleset_dicts())
def test_native_dicts_with_wrong_types_never_crash(data):
    from fwtest.rules.native import ruleset_from_dict

    only_input_errors(ruleset_from_dict, data, "<dict>")
    only_input_errors(parse_ruleset, yaml.safe_dump(data), "hostile.yaml")


@pytest.mark.parametrize("text", ["\x1f", "policy: drop\x00\n", "rules: []\n\x1b[31m"])
def test_yaml_control_characters_are_a_one_line_error(text):
    """Shrunk by test_native_yaml_never_crashes: PyYAML's ReaderError (a control character)
    is not a MarkedYAMLError; its text spans two lines and the CLI prints both."""
    refused(parse_ruleset, text, "control.yaml")


def test_native_yaml_refuses_what_it_cannot_read():
    """No silent skip: unknown keys, duplicate ids and aliases are errors, not ignored."""
    cases = {
        "policy: drop\nrules:\n  - {id: a, dprt: 5060, action: accept}\n": "dport",
        "policy: drop\nrules:\n  - {id: a, action: accept}\n  - {id: a, action: drop}\n": "a",
        "policy: drop\nx: &x {action: accept}\nrules: [*x]\n": "alias",
    }
    for text, word in cases.items():
        with pytest.raises(InputError, match=word):
            parse_ruleset(text, "r.yaml")


# ------------------------------------------------------------------ iptables-save

IPT_TOKENS = ["--dport 99999999999999999999", "-s 300.1.2.3/33", "-m nosuchmatch", "--limit 0/sec", '"unterminated',
              "-j", "-A", "--comment", "-m string --string", "--hashlimit-above 1/fortnight", "-p 999",
              "-m multiport --dports " + ",".join(["1"] * 40), "-i " + "e" * 40, "! ! -s 1.2.3.4", "\x00",
              "--tcp-flags SYN", "-m conntrack --ctstate BOGUS", "-g nowhere", "COMMIT", "*filter", ":X - [0:0]"]


@st.composite
def mutated_iptables(draw):
    lines = IPTABLES.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(("truncate", "delete", "duplicate", "token", "junk")))
        if kind == "truncate":
            lines = lines[:i] + [lines[i][:draw(st.integers(0, len(lines[i])))]]
        elif kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "token":
            words = lines[i].split(" ")
            j = draw(st.integers(0, len(words)))
            words.insert(j, draw(st.sampled_from(IPT_TOKENS)))
            lines[i] = " ".join(words)
        else:
            lines.insert(i, draw(st.text(max_size=60)))
        if not lines:
            break
    return "\n".join(lines) + "\n"


@hostile(100)
@given(mutated_iptables())
def test_iptables_save_never_crashes(text):
    only_input_errors(load_iptables, text, "hostile.v4")
    only_input_errors(parse_ruleset, text, "hostile.v4")


def test_iptables_counters_without_a_command_are_an_input_error():
    """Shrunk by test_iptables_save_never_crashes: a line holding only packet counters (a
    line cut after them) raises IndexError in the loader instead of a located InputError."""
    refused(load_iptables, "*filter\n:FORWARD DROP [0:0]\n[1:2]\nCOMMIT\n", "cut.v4")


_A_LINE = re.compile(r"^(\[\d+:\d+\]\s+)?-A\s")


@hostile(40)
@given(st.lists(st.integers(0, 40), max_size=6))
def test_iptables_save_skips_no_rule(deleted):
    """Every -A line of the filter table becomes exactly one rule, or the file is refused."""
    lines = [line for i, line in enumerate(IPTABLES.splitlines()) if i not in set(deleted)]
    text = "\n".join(lines) + "\n"
    rs = only_input_errors(load_iptables, text, "hostile.v4")
    if rs is not None:
        assert len(list(rs.rules())) == sum(1 for line in lines if _A_LINE.match(line))


# ------------------------------------------------------------------ nft JSON

HOSTILE_JSON = [None, True, -1, 2 ** 64, 1e308, "", "x" * 1000, [], {}, [[[[[]]]]], {"match": None},
                {"jump": {"target": "nowhere"}}, {"payload": {"protocol": "udp", "field": "dport"}}]


# A small nft document (table, base chain, one rule) so that shrunk examples stay readable.
NFT_SMALL = {"nftables": [
    {"table": {"family": "inet", "name": "fwtest", "handle": 2}},
    {"chain": {"family": "inet", "table": "fwtest", "name": "rules", "handle": 3, "type": "filter",
               "hook": "forward", "prio": 0, "policy": "drop"}},
    {"rule": {"family": "inet", "table": "fwtest", "chain": "rules", "handle": 19, "comment": "sip-udp-in", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "198.51.100.0", "len": 24}}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5060}},
        {"accept": None}]}}]}


def _set_path(doc, path, value):
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _paths(value, prefix=()):
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_nft_small(draw):
    doc = json.loads(json.dumps(NFT_SMALL))
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(list(_paths(doc))))
        _set_path(doc, path, json.loads(json.dumps(draw(st.sampled_from(HOSTILE_JSON)))))
    return json.dumps(doc)


@st.composite
def mutated_nft(draw):
    doc = json.loads(json.dumps(NFT))
    items = doc["nftables"]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(items) - 1))
        kind = draw(st.sampled_from(("delete", "swap-value", "drop-key", "wrap")))
        item = items[i]
        if kind == "delete":
            del items[i]
        elif isinstance(item, dict) and item:
            obj = next(iter(item.values()))
            if kind == "wrap":
                items[i] = [item]
            elif isinstance(obj, dict) and obj:
                key = draw(st.sampled_from(sorted(obj)))
                if kind == "drop-key":
                    del obj[key]
                else:
                    obj[key] = json.loads(json.dumps(draw(st.sampled_from(HOSTILE_JSON))))
        if not items:
            break
    text = json.dumps(doc)
    if draw(st.booleans()):
        text = text[:draw(st.integers(0, len(text)))]
    return text


@hostile(100)
@given(st.one_of(mutated_nft_small(), mutated_nft(),
                 st.builds(lambda n: '{"nftables": ' + "[" * n + "]" * n + "}", st.integers(10, 200))))
def test_nft_json_never_crashes(text):
    only_input_errors(load_nft, text, "hostile.json")
    only_input_errors(parse_ruleset, text, "hostile.json")


# Shrunk by test_nft_json_never_crashes: a wrong type where the loader expects a name or an
# object escapes as TypeError/AttributeError instead of a located InputError.
NFT_WRONG_TYPES = [
    (("nftables", 0, "table", "family"), []),
    (("nftables", 1, "chain", "family"), []),
    (("nftables", 1, "chain", "name"), []),
    (("nftables", 2, "rule", "chain"), []),
    (("nftables", 2, "rule", "expr", 0, "match", "left", "payload"), None),
    (("nftables", 2, "rule", "expr", 0, "match", "right", "prefix"), None),
    (("nftables", 2, "rule", "expr", 1, "match", "left", "payload", "protocol"), []),
]


@pytest.mark.parametrize(("path", "value"), NFT_WRONG_TYPES, ids=lambda v: "/".join(map(str, v))
                         if isinstance(v, tuple) else repr(v))
def test_nft_loader_refuses_wrong_types(path, value):
    text = json.dumps(_set_path(json.loads(json.dumps(NFT_SMALL)), path, value))
    refused(load_nft, text, "wrong.json")


@pytest.mark.parametrize("depth", [5000, 100_000])
def test_deeply_nested_nft_json_is_an_input_error(depth):
    """Found by this file: json.loads raises RecursionError on deep nesting, which
    parse_ruleset (detect_format) and load_nft let through as an internal error."""
    text = '{"nftables": ' + "[" * depth + "]" * depth + "}"
    refused(parse_ruleset, text, "deep.json")
    refused(load_nft, text, "deep.json")


# ------------------------------------------------------------------ profile

@hostile(100)
@given(st.one_of(mutated_text(PROFILE_TEXT), st.builds(billion_laughs, st.integers(2, 8)),
                 st.builds(deep, st.integers(30, 2000), st.sampled_from(("flow-list", "flow-map")))))
def test_profile_text_never_crashes(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("profile") / "profile.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    only_input_errors(load_profile, str(path))


@hostile(100)
@given(st.dictionaries(st.sampled_from(["name", "firewall", "psap", "peers", "sip", "rtp", "msrp", "surge", "flows",
                                        "interfaces", "call_seconds", "bogus"]),
                       st.recursive(st.one_of(st.integers(-2 ** 70, 2 ** 70), st.floats(), st.text(max_size=12),
                                              st.booleans(), st.none(),
                                              st.sampled_from(["203.0.113.0/26", "2001:db8::/200", "udp", "5060",
                                                               "16384-32767", "65536-1", "eth0"])),
                                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                                    max_leaves=8),
                       max_size=10))
def test_profile_dicts_never_crash(data):
    data.setdefault("psap", ["203.0.113.0/26"])
    data.setdefault("peers", ["198.51.100.0/24"])
    only_input_errors(profile_from_dict, data, "<profile>")


# ------------------------------------------------------------------ pcap / pcapng

def _small_capture() -> bytes:
    from fwtest.traffic.synth import synthesize

    flows = synthesize(load_profile(PROFILE))
    records = [s.record for f in flows[:3] for s in f.steps[:12]]
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i, r in enumerate(records):
        frame = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x0800 if r.family == 4 else 0x86DD) + r.data
        out += struct.pack("<IIII", 1718734800 + i, 0, len(frame), len(frame)) + frame
    return bytes(out)


def _pcapng(pcap: bytes) -> bytes:
    """The same packets as pcapng: SHB, one Ethernet IDB, an EPB per packet."""
    def block(kind: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", 1, 0, 65535))
    pos = 24
    while pos + 16 <= len(pcap):
        sec, usec, incl, orig = struct.unpack_from("<IIII", pcap, pos)
        data = pcap[pos + 16:pos + 16 + incl]
        ts = sec * 1_000_000 + usec
        out += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, incl, orig) + data)
        pos += 16 + incl
    return out


CAPTURE = _small_capture()
CAPTURE_NG = _pcapng(CAPTURE)


@st.composite
def mutated_capture(draw):
    data = bytearray(draw(st.sampled_from((CAPTURE, CAPTURE_NG))))
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(("flip", "truncate", "length", "insert", "zero")))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[i:]
        elif kind == "length" and i + 4 <= len(data):
            data[i:i + 4] = struct.pack("<I", draw(st.sampled_from((0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF))))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "zero":
            data[i:i + 16] = bytes(min(16, len(data) - i))
    return bytes(data)


@hostile(100)
@given(mutated_capture(), st.sampled_from(("warn", "raise")))
def test_captures_never_crash(tmp_path_factory, data, on_error):
    path = tmp_path_factory.mktemp("pcap") / "hostile.pcap"
    path.write_bytes(data)
    only_input_errors(lambda: list(read_records(str(path), on_error=on_error)))


def _packets() -> list[bytes]:
    """The IP packets of the small capture (Ethernet header stripped)."""
    out, pos = [], 24
    while pos + 16 <= len(CAPTURE):
        incl = struct.unpack_from("<IIII", CAPTURE, pos)[2]
        out.append(CAPTURE[pos + 16 + 14:pos + 16 + incl])
        pos += 16 + incl
    return out


@st.composite
def mutated_packet(draw):
    data = bytearray(draw(st.sampled_from(_packets())))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if draw(st.booleans()) and data:
            data[i] = draw(st.integers(0, 255))
        else:
            del data[i:]
    return bytes(data)


@hostile(200)
@given(st.one_of(st.binary(max_size=120), mutated_packet(),
                 st.binary(min_size=20, max_size=80).map(lambda b: b"\x45" + b),
                 st.binary(min_size=40, max_size=80).map(lambda b: b"\x60" + b)))
def test_ip_parser_raises_only_malformed_packet(data):
    with no_hang(), suppress(MalformedPacket):
        parse_ip(data)


# ------------------------------------------------------------------ SIP

@hostile(200)
@given(st.one_of(sip_messages(valid=False), st.binary(max_size=400)))
def test_sip_dissector_never_crashes(data):
    with no_hang():
        msg = parse_sip(data)
        if msg is not None:
            msg.to_bytes()
            msg.cseq, msg.content_type, msg.call_id  # noqa: B018 - the accessors must not raise
            msg.headers_named("via")
        messages, rest = split_sip_stream(data + data)
        assert len(rest) <= 2 * len(data)


def test_sip_dissector_is_linear_on_huge_input():
    import time

    header = b"INVITE urn:service:sos SIP/2.0\r\n" + b"Subject: a\r\n" + b" b\r\n" * 200_000
    started = time.perf_counter()
    with no_hang(10):
        parse_sip(header)
        split_sip_stream(header * 2)
    assert time.perf_counter() - started < 5


@hostile(60)
@given(st.one_of(sip_messages(valid=False), st.binary(max_size=300)))
def test_scapy_sip_layer_never_crashes(data):
    from fwtest.traffic.sip import SIP

    with no_hang():
        layer = SIP(data)                # bytes that do not open with a start line dissect as Raw
        layer.summary()
        if isinstance(layer, SIP):
            layer.header("Call-ID")
            with suppress(ValueError):   # documented: not a SIP start line
                layer.message()
            bytes(layer)


# ------------------------------------------------------------------ catastrophic regexes

CATASTROPHIC = [r"(a+)+$", r"(a|a)*b", r"(a|aa)+$", r"((a*)*)*b", r"(.*a){20}", r"(x+x+)+y", r"(\w+\s?)+$",
                r"(a{1,16}){1,16}b", r"(?:a{1,12}){1,12}(?:a{1,12}){1,12}b"]

_REGEX_CASE = r'''
import sys
from fwtest.errors import InputError
from fwtest.engine import replay
from fwtest.rules.native import ruleset_from_dict
from fwtest.traffic.record import parse_ip
from fwtest.traffic._rawip import udp_from_template
import struct

pattern = sys.argv[1]
rules = {"name": "regex", "policy": "accept", "rules": [
    {"id": "scanners", "proto": "udp", "dport": 5060, "sip": {"header": {"User-Agent": pattern}}, "action": "drop"}]}
sip = (b"OPTIONS sip:psap@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7\r\nCall-ID: 1\r\n"
       b"CSeq: 1 OPTIONS\r\nUser-Agent: " + b"a" * 4000 + b"!\r\nContent-Length: 0\r\n\r\n")
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 1, 0, 64, 17, 0, bytes([198, 51, 100, 7]), bytes([203, 0, 113, 10]))
udp = struct.pack("!HHHH", 5060, 5060, 8, 0)
record = parse_ip(udp_from_template(ip + udp, sip))
try:
    verdicts = replay(ruleset_from_dict(rules, "regex.yaml"), [record], "forward")
    print("judged", verdicts[0].verdict)
except InputError as e:
    print("refused", e)
'''


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_sip_regexes_are_refused_or_bounded(pattern):
    """A `sip` header regex on a 4000-character hostile User-Agent: refused with a located
    error, or judged within seconds. Never a hang."""
    try:
        done = subprocess.run([sys.executable, "-c", _REGEX_CASE, pattern], cwd=ROOT, capture_output=True,
                              text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"regex {pattern!r} hangs the engine on a hostile User-Agent (still running after 10 s)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(("refused regex.yaml: ", "judged ")), done.stdout


# ------------------------------------------------------------------ through the CLI

def _cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    with no_hang():
        code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_cli_contract(code: int, err: str) -> None:
    assert code in (0, 1, 2), f"exit {code}: {err}"
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and LOCATED.match(lines[0]), err


@hostile(15)
@given(st.one_of(mutated_text(NATIVE), mutated_iptables(), mutated_nft()))
def test_cli_explain_on_hostile_rulesets(tmp_path_factory, capsys, text):
    path = tmp_path_factory.mktemp("rules") / "rules.txt"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    code, _out, err = _cli(capsys, ["explain", str(path), "udp 198.51.100.7:5060 > 203.0.113.10:5060 sip=INVITE",
                                    "--profile", PROFILE])
    _assert_cli_contract(code, err)


@hostile(15)
@given(mutated_text(PROFILE_TEXT))
def test_cli_with_a_hostile_profile(tmp_path_factory, capsys, text):
    path = tmp_path_factory.mktemp("profile") / "profile.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    code, _out, err = _cli(capsys, ["explain", str(ROOT / "rulesets" / "psap-edge.yaml"),
                                    "udp 198.51.100.7:5060 > 203.0.113.10:5060", "--profile", str(path)])
    _assert_cli_contract(code, err)


@hostile(15)
@given(mutated_capture())
def test_cli_replay_of_a_hostile_capture(tmp_path_factory, capsys, data):
    path = tmp_path_factory.mktemp("pcap") / "hostile.pcap"
    path.write_bytes(data)
    code, _out, err = _cli(capsys, ["replay", str(ROOT / "rulesets" / "psap-edge.yaml"), str(path),
                                    "--profile", PROFILE, "--format", "jsonl"])
    _assert_cli_contract(code, err)


def test_cli_reports_deep_json_as_bad_input(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text('{"nftables": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, _out, err = _cli(capsys, ["explain", str(path), "udp 198.51.100.7:5060 > 203.0.113.10:5060",
                                    "--profile", PROFILE])
    assert code == 2 and str(path) in err, (code, err)
