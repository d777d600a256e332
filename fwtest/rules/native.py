"""Native YAML rulesets (DESIGN.md, "Contract: native ruleset YAML").

    load_native(text, path)          the YAML file
    ruleset_from_dict(data, path)    the same structure as plain dicts (Python API; lines are 0)

Both produce the frozen IR of ``fwtest.rules.ir``: one base chain named
``rules`` (hook None: it sits on the filtering hook the profile's
``firewall`` names, and sees IPv4 and IPv6), the user chains of ``chains:``,
and the conntrack configuration. Every rule keeps its ``Source`` (the line of
its ``- id:`` item) and a one-line rendering of what it matches (``text``).

Choices this loader makes, so that nothing is silently guessed:

* ``policy`` defaults to ``drop`` when absent. A tester that assumed
  ``accept`` could pass a path the real firewall drops (a false pass); one
  that assumes ``drop`` can at worst report a block the user then fixes by
  writing ``policy: accept``. The implicit policy is located at the
  ``rules:`` key, since it is what happens after the last rule.
* A rule without ``id`` is named after its position, 0-based, in the chain
  it sits in: ``rules[3]``, ``rate-guard[0]``. Stable while rules above it
  do not move; findings and CI annotations are better served by explicit ids.
* ``!`` negates: ``src: "!PEERS"``, ``dport: "!5060"``. In a list, either every
  item is negated (the list as a whole is excluded: ``[!A, !B]`` is "neither A
  nor B", like nft's ``!= {A, B}``) or none is. YAML reads a bare leading
  ``!`` as a tag, so negations must be quoted; the error says so.
* A rule that can never match (``src`` only IPv4 and ``dst`` only IPv6,
  ports on ICMP, ``state`` without ``conntrack``, later fragments with port
  matches) is an error: such a rule is always a mistake, and a finding that
  names it would be confusing.
* Regexes (``sip``) are Python ``re`` syntax, searched, compiled once here,
  and limited to ``MAX_REGEX_CHARS`` characters. The length limit keeps
  pasted blobs out; it does not make a pattern safe from catastrophic
  backtracking (``(a+)+$``), which is left to the fuzzer to find.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from fwtest.errors import InputError, did_you_mean
from fwtest.rules.ir import (
    ALL_TCP_FLAGS,
    CT_STATES,
    DEFAULT_TIMEOUTS,
    PORT_PROTOCOLS,
    PROTO_NAMES,
    PROTO_NUMBERS,
    SYN_MASK,
    TCP,
    TCP_FLAG_BITS,
    Action,
    AddrMatch,
    AddrRange,
    BaseChain,
    Chain,
    Conntrack,
    FragmentMatch,
    IfaceMatch,
    LimitMatch,
    Match,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    SipMatch,
    Source,
    StateMatch,
    StringMatch,
    TcpFlagsMatch,
)
from fwtest.yamlsrc import load_yaml

BASE_CHAIN = "rules"

TOP_KEYS = ("name", "description", "policy", "conntrack", "definitions", "rules", "chains")
MATCH_KEYS = ("family", "proto", "src", "dst", "sport", "dport", "in", "out", "state", "fragment",
              "tcp_flags", "syn", "helper", "sip", "string", "limit")
RULE_KEYS = ("id", "comment", *MATCH_KEYS, "action")
CONNTRACK_KEYS = ("helpers", "timeouts")
SIP_KEYS = ("method", "uri", "header", "status")
STRING_KEYS = ("pattern", "from", "to", "icase", "algo", "negate")
LIMIT_KEYS = ("rate", "burst", "per", "above", "name", "src_prefix", "dst_prefix")
TCP_FLAGS_KEYS = ("mask", "comp", "negate")

POLICIES = ("accept", "drop")
SIMPLE_ACTIONS = ("accept", "drop", "reject", "log", "return")
TARGET_ACTIONS = ("jump", "goto", "reject")
# REJECT --reject-with of iptables and ip6tables, and nft's family-neutral icmpx names.
REJECT_TYPES = frozenset({
    "tcp-reset",
    "icmp-net-unreachable", "icmp-host-unreachable", "icmp-port-unreachable",
    "icmp-proto-unreachable", "icmp-net-prohibited", "icmp-host-prohibited", "icmp-admin-prohibited",
    "icmp6-no-route", "icmp6-adm-prohibited", "icmp6-addr-unreachable", "icmp6-port-unreachable",
    "port-unreachable", "host-unreachable", "no-route", "admin-prohibited",
})
# Helpers fwtest models. Others (ftp, h323, ...) would change which packets are
# RELATED; accepting their names without modelling them could hide a block.
KNOWN_HELPERS = ("sip",)
FRAGMENT_KINDS = ("later", "first", "any")
LIMIT_PER = ("src", "dst", "sport", "dport")
RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
              "h": 3600, "hour": 3600, "d": 86400, "day": 86400}

MAX_REGEX_CHARS = 256
MAX_STRING_PATTERN = 128     # XT_STRING_MAX_PATTERN_SIZE: the kernel refuses longer -m string patterns
MAX_LIMIT_BURST = 10000      # XT_LIMIT / hashlimit refuse larger bursts
MAX_TIMEOUT = 2**31 - 1      # the sysctls are seconds in a signed int (jiffies overflow beyond)
IFNAMSIZ = 15                # interface names are at most 15 characters (IFNAMSIZ - 1)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")          # a definition name; never an address or port
_CHAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_RULE_ID = re.compile(r"^\S{1,100}$")
_PORT = re.compile(r"^\d+$")
_PORT_RANGE = re.compile(r"^(\d+)-(\d+)$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+?)s?\s*$")
# RFC 3261 section 25.1: a header name is a token.
_SIP_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_YAML_TAG = re.compile(r"could not determine a constructor for the tag '(![^']*)'")


def load_native(text: str, path: str) -> Ruleset:
    """The ruleset in a native YAML document. Every mistake is an ``InputError`` at its line."""
    try:
        data = load_yaml(text, path)
    except InputError as e:
        tag = _YAML_TAG.search(e.message)
        if tag:
            # YAML takes `src: !PEERS` for a tag; the user meant a negation.
            value = tag.group(1).rstrip(",")
            raise InputError(path, e.line, f"YAML reads a leading '!' as a tag: quote the negation, "
                                           f"write \"{value}\"") from None
        raise
    if data is None:
        raise InputError(path, 0, "empty ruleset: expected a mapping with 'policy' and 'rules'")
    return _Loader(path).ruleset(data)


def ruleset_from_dict(data: Mapping[str, Any], path: str = "<dict>") -> Ruleset:
    """The ruleset written as plain dicts and lists, with the same structure as the YAML.

    Errors are ``InputError`` with line 0 (plain dicts carry no lines).
    """
    return _Loader(path).ruleset(data)


# ------------------------------------------------------------------ locations

def _key_line(container: Any, key: str, default: int) -> int:
    line_of = getattr(container, "line_of", None)
    if line_of is None or not isinstance(container, Mapping):
        return default
    return line_of(key) or default


def _item_line(container: Any, index: int, default: int) -> int:
    line_of = getattr(container, "line_of", None)
    if line_of is None or isinstance(container, Mapping):
        return default
    return line_of(index) or default


def _own_line(value: Any, default: int) -> int:
    return getattr(value, "line", 0) or default


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def render_rule(rule: Mapping[str, Any]) -> str:
    """One line: the rule's matches and action in YAML flow style, without id and comment.

    Keys come in a fixed order and nested mappings sorted, so the text does not
    depend on the order they were written in. (yaml.safe_dump would do, at
    half a millisecond a rule.)
    """
    parts = [f"{k}: {_flow(rule[k])}" for k in (*MATCH_KEYS, "action") if k in rule]
    return "{" + ", ".join(parts) + "}"


_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+\-]*")
# Plain scalars YAML 1.1 would read as something other than a string.
_NOT_STRING = re.compile(r"[-+]?[0-9_]+(\.[0-9_]*)?([eE][-+]?[0-9]+)?|0x[0-9a-fA-F_]+|0o?[0-7_]+|"
                         r"(?i:y|n|yes|no|true|false|on|off|null|~)")


def _flow(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_flow(str(k))}: {_flow(value[k])}" for k in sorted(value, key=str)) + "}"
    if _is_seq(value):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and not _NOT_STRING.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)   # a JSON string is a YAML double-quoted scalar


# ------------------------------------------------------------------ definitions

class _Definition:
    """A named set from ``definitions:``, resolved on first use (or at the end, for
    unused ones) to addresses or ports."""

    def __init__(self, name: str, value: Any, line: int) -> None:
        self.name = name
        self.value = value
        self.line = line
        self.kind: str | None = None               # "addresses" | "ports"
        self.addresses: tuple[AddrRange, ...] = ()
        self.ports: tuple[tuple[int, int], ...] = ()


# ------------------------------------------------------------------ the loader

class _Loader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.definitions: dict[str, _Definition] = {}
        self.conntrack = Conntrack()
        self.action_lines: dict[str, int] = {}

    def error(self, line: int, message: str) -> InputError:
        return InputError(self.path, line, message)

    # ------------------------------------------------------------ document

    def ruleset(self, data: Any) -> Ruleset:
        if not isinstance(data, Mapping):
            raise self.error(_own_line(data, 1), "a ruleset is a mapping with 'policy' and 'rules', "
                                                 f"not a {type(data).__name__}")
        if not data:
            raise self.error(_own_line(data, 0), "empty ruleset: expected 'policy' and 'rules'")
        top = _own_line(data, 0)
        for key in data:
            if key not in TOP_KEYS:
                raise self.error(_key_line(data, key, top),
                                 f"unknown top-level key '{key}'{did_you_mean(key, TOP_KEYS)}")
        if "rules" not in data:
            raise self.error(top, "no 'rules:' (the list of rules, first match wins)")

        name = data.get("name", _stem(self.path))
        if not isinstance(name, str) or not name.strip():
            raise self.error(_key_line(data, "name", top), "name must be a non-empty string")
        description = data.get("description")
        if description is not None and not isinstance(description, str):
            raise self.error(_key_line(data, "description", top), "description must be a string")

        rules_line = _key_line(data, "rules", top)
        if "policy" in data:
            policy = data["policy"]
            policy_line = _key_line(data, "policy", top)
            if policy not in POLICIES:
                raise self.error(policy_line, f"policy must be accept or drop, not {policy!r}"
                                 f"{did_you_mean(str(policy), POLICIES)}")
        else:
            policy, policy_line = "drop", rules_line

        if "conntrack" in data:
            self.conntrack = self.parse_conntrack(data["conntrack"], _key_line(data, "conntrack", top))
        if "definitions" in data:
            self.parse_definitions(data["definitions"], _key_line(data, "definitions", top))

        chain_data: dict[str, tuple[Any, int]] = {BASE_CHAIN: (data["rules"], rules_line)}
        if "chains" in data:
            chains_value = data["chains"]
            chains_line = _key_line(data, "chains", top)
            if not isinstance(chains_value, Mapping):
                raise self.error(chains_line, "chains is a mapping of chain name to a list of rules")
            for cname, body in chains_value.items():
                line = _key_line(chains_value, cname, chains_line)
                if cname == BASE_CHAIN:
                    raise self.error(line, f"'{BASE_CHAIN}' is the base chain's name; "
                                           "give the user chain another name")
                if not _CHAIN_NAME.match(str(cname)):
                    raise self.error(line, f"bad chain name {cname!r}: letters, digits, '_', '-', '.', "
                                           "at most 64 characters")
                chain_data[str(cname)] = (body, line)

        chains: dict[str, Chain] = {}
        ids: dict[str, int] = {}
        for cname, (body, line) in chain_data.items():
            chains[cname] = self.parse_chain(cname, body, line, ids)
        self.check_targets(chains)
        # Definitions nobody used are still checked: a typo in one is a typo.
        for definition in self.definitions.values():
            self.resolve(definition, ())

        base = BaseChain(chain=BASE_CHAIN, hook=None, priority=0, policy=policy, family=None,
                         source=Source(self.path, policy_line))
        return Ruleset(name=name, files=(self.path,), format="yaml", chains=chains, bases=(base,),
                       conntrack=self.conntrack)

    # ------------------------------------------------------------ conntrack

    def parse_conntrack(self, value: Any, line: int) -> Conntrack:
        if value is None or value is False:
            return Conntrack()
        source = Source(self.path, line)
        if value is True:
            return Conntrack(enabled=True, source=source)
        if not isinstance(value, Mapping):
            raise self.error(line, "conntrack is true, false, or a mapping {helpers: [...], timeouts: {...}}")
        for key in value:
            if key not in CONNTRACK_KEYS:
                raise self.error(_key_line(value, key, line),
                                 f"unknown conntrack key '{key}'{did_you_mean(key, CONNTRACK_KEYS)}")
        helpers: set[str] = set()
        if value.get("helpers") is not None:
            given = value["helpers"]
            hline = _key_line(value, "helpers", line)
            items = given if _is_seq(given) else [given]
            for i, helper in enumerate(items):
                where = _item_line(given, i, hline)
                if helper not in KNOWN_HELPERS:
                    raise self.error(where, f"unknown conntrack helper {helper!r}"
                                     f"{did_you_mean(str(helper), KNOWN_HELPERS)}: fwtest models "
                                     f"only {', '.join(KNOWN_HELPERS)}")
                helpers.add(helper)
        timeouts = dict(DEFAULT_TIMEOUTS)
        if value.get("timeouts") is not None:
            given = value["timeouts"]
            tline = _key_line(value, "timeouts", line)
            if not isinstance(given, Mapping):
                raise self.error(tline, "timeouts is a mapping of name to seconds, e.g. {udp_stream: 3600}")
            for name, seconds in given.items():
                where = _key_line(given, name, tline)
                if name not in DEFAULT_TIMEOUTS:
                    raise self.error(where, f"unknown conntrack timeout '{name}'"
                                     f"{did_you_mean(name, DEFAULT_TIMEOUTS)}")
                if not _is_int(seconds) or not 1 <= seconds <= MAX_TIMEOUT:
                    raise self.error(where, f"timeout {name} must be a whole number of seconds >= 1, "
                                            f"not {seconds!r}")
                timeouts[name] = seconds
        return Conntrack(enabled=True, helpers=frozenset(helpers),
                         timeouts=MappingProxyType(timeouts), source=source)

    # ------------------------------------------------------------ definitions

    def parse_definitions(self, value: Any, line: int) -> None:
        if not isinstance(value, Mapping):
            raise self.error(line, "definitions is a mapping of NAME to addresses or ports")
        for name, body in value.items():
            where = _key_line(value, name, line)
            if not _NAME.match(str(name)):
                raise self.error(where, f"bad definition name {name!r}: start with a letter, then "
                                        "letters, digits, '_' or '-' (so it never reads as an address)")
            self.definitions[str(name)] = _Definition(str(name), body, where)

    def resolve(self, definition: _Definition, stack: tuple[str, ...]) -> _Definition:
        """Work out what a definition holds, following references to other definitions."""
        if definition.kind is not None:
            return definition
        if definition.name in stack:
            chain = " -> ".join((*stack[stack.index(definition.name):], definition.name))
            raise self.error(definition.line, f"definition '{definition.name}' refers to itself: {chain}")
        stack = (*stack, definition.name)
        body = definition.value
        items = list(body) if _is_seq(body) else [body]
        if not items:
            raise self.error(definition.line, f"definition '{definition.name}' is empty")
        kinds: set[str] = set()
        addresses: list[AddrRange] = []
        ports: list[tuple[int, int]] = []
        for i, item in enumerate(items):
            where = _item_line(body, i, definition.line)
            if isinstance(item, str) and item.strip().startswith("!"):
                raise self.error(where, f"definition '{definition.name}': negate where it is used "
                                        f"(src: \"!{definition.name}\"), not inside it")
            if isinstance(item, str) and _NAME.match(item.strip()):
                ref = self.lookup(item.strip(), where)
                self.resolve(ref, stack)
                kinds.add(ref.kind or "")
                addresses.extend(ref.addresses)
                ports.extend(ref.ports)
                continue
            kind, parsed = self.literal(item, where, f"definition '{definition.name}'")
            kinds.add(kind)
            if kind == "addresses":
                addresses.append(parsed)
            else:
                ports.append(parsed)
            if len(kinds) > 1:
                raise self.error(where, f"definition '{definition.name}' mixes addresses and ports; "
                                        "make two definitions")
        definition.kind = kinds.pop()
        definition.addresses = tuple(addresses)
        definition.ports = tuple(ports)
        return definition

    def lookup(self, name: str, line: int) -> _Definition:
        if name not in self.definitions and name.lower() in ("any", "all"):
            raise self.error(line, f"'{name}' is not a definition: leave the key out to match everything")
        if name not in self.definitions:
            hint = did_you_mean(name, self.definitions)
            if not self.definitions:
                hint = " (there is no 'definitions:' section)"
            raise self.error(line, f"unknown definition '{name}'{hint}")
        return self.definitions[name]

    def literal(self, item: Any, line: int, what: str) -> tuple[str, Any]:
        """An item of a definition: a port, a port range, an address, a prefix or an address range."""
        if isinstance(item, bool) or item is None or not isinstance(item, (int, str)):
            raise self.error(line, f"{what}: {item!r} is neither an address nor a port")
        text = str(item).strip()
        if _is_int(item) or _PORT.match(text) or _PORT_RANGE.match(text):
            return "ports", self.port_range(item, line, what)
        return "addresses", self.address(text, line, what)

    # ------------------------------------------------------------ chains and rules

    def parse_chain(self, name: str, body: Any, line: int, ids: dict[str, int]) -> Chain:
        if not _is_seq(body):
            what = "'rules:'" if name == BASE_CHAIN else f"chain '{name}'"
            raise self.error(_own_line(body, line), f"{what} must be a list of rules (- id: ...), "
                                                    f"not {_describe(body)}")
        rules = []
        for i, item in enumerate(body):
            rule_line = _item_line(body, i, line)
            rules.append(self.parse_rule(item, name, i, rule_line, ids))
        return Chain(name=name, rules=tuple(rules), source=Source(self.path, line))

    def parse_rule(self, data: Any, chain: str, index: int, line: int, ids: dict[str, int]) -> Rule:
        if not isinstance(data, Mapping):
            raise self.error(line, f"a rule is a mapping (- id: ..., action: ...), not {_describe(data)}")
        for key in data:
            if key not in RULE_KEYS:
                raise self.error(_key_line(data, key, line),
                                 f"unknown rule key '{key}'{did_you_mean(key, RULE_KEYS)}")
        rule_id = f"{chain}[{index}]"
        if "id" in data:
            given = data["id"]
            if not isinstance(given, (str, int)) or isinstance(given, bool) or not _RULE_ID.match(str(given)):
                raise self.error(_key_line(data, "id", line),
                                 f"rule id must be a word without spaces (1-100 characters), not {given!r}")
            rule_id = str(given)
        if rule_id in ids:
            where = f" (line {ids[rule_id]})" if ids[rule_id] else ""
            raise self.error(_key_line(data, "id", line), f"duplicate rule id '{rule_id}': already used{where}")
        ids[rule_id] = line
        comment = data.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise self.error(_key_line(data, "comment", line), "comment must be a string")
        if "action" not in data:
            raise self.error(line, f"rule '{rule_id}' has no action (accept, drop, reject, log, return, "
                                   "{jump: CHAIN}, {goto: CHAIN})")
        match = self.parse_match(data, line, rule_id)
        self.action_lines[rule_id] = _key_line(data, "action", line)
        action = self.parse_action(data["action"], self.action_lines[rule_id], match)
        return Rule(id=rule_id, source=Source(self.path, line), match=match, action=action,
                    comment=comment, text=render_rule(data))

    def parse_action(self, value: Any, line: int, match: Match) -> Action:
        if isinstance(value, str):
            if value in SIMPLE_ACTIONS:
                return Action(value)  # type: ignore[arg-type]
            if value in ("jump", "goto"):
                raise self.error(line, f"{value} needs a chain: action: {{{value}: CHAIN}}")
            raise self.error(line, f"unknown action '{value}'"
                                   f"{did_you_mean(value, (*SIMPLE_ACTIONS, 'jump', 'goto'))}")
        if isinstance(value, Mapping) and len(value) == 1:
            ((kind, target),) = value.items()
            if kind not in TARGET_ACTIONS:
                raise self.error(line, f"unknown action '{kind}'{did_you_mean(kind, TARGET_ACTIONS)}: "
                                       "the mapping form is {jump: CHAIN}, {goto: CHAIN} or {reject: TYPE}")
            if not isinstance(target, str) or not target:
                raise self.error(line, f"{kind} needs a name, not {target!r}")
            if kind == "reject":
                if target not in REJECT_TYPES:
                    raise self.error(line, f"unknown reject type '{target}'{did_you_mean(target, REJECT_TYPES)}")
                if target == "tcp-reset" and not _only_tcp(match):
                    raise self.error(line, "reject with tcp-reset needs proto: tcp (a RST answers TCP only)")
            return Action(kind, target)
        raise self.error(line, "action is accept, drop, reject, log, return, or one of "
                               "{jump: CHAIN}, {goto: CHAIN}, {reject: TYPE}")

    def check_targets(self, chains: Mapping[str, Chain]) -> None:
        """Every jump/goto lands on a user chain, and no chain can reach itself."""
        edges: dict[str, list[tuple[str, Rule]]] = {name: [] for name in chains}
        for name, chain in chains.items():
            for rule in chain.rules:
                if rule.action.kind not in ("jump", "goto"):
                    continue
                target = rule.action.target or ""
                where = self.action_lines.get(rule.id, rule.source.line)
                if target == BASE_CHAIN:
                    raise self.error(where, f"rule '{rule.id}' cannot {rule.action.kind} to "
                                            f"'{BASE_CHAIN}', the base chain")
                if target not in chains:
                    users = [c for c in chains if c != BASE_CHAIN]
                    hint = did_you_mean(target, users) or (
                        f" (chains: {', '.join(users)})" if users else " (there is no 'chains:' section)")
                    verb = "jumps" if rule.action.kind == "jump" else "goes"
                    raise self.error(where, f"rule '{rule.id}' {verb} to chain '{target}', "
                                            f"which does not exist{hint}")
                edges[name].append((target, rule))
        # iptables refuses a ruleset with a loop (ELOOP): the kernel would never load it.
        # Depth-first search, iterative so that thousands of chains cannot exhaust the stack.
        done: set[str] = set()
        for start in chains:
            if start in done:
                continue
            path = [start]
            pending = [iter(edges[start])]
            while pending:
                step = next(pending[-1], None)
                if step is None:
                    done.add(path.pop())
                    pending.pop()
                    continue
                target, rule = step
                if target in path:
                    cycle = " -> ".join((*path[path.index(target):], target))
                    raise self.error(self.action_lines.get(rule.id, rule.source.line),
                                     f"jump loop: {cycle} (rule '{rule.id}' closes it)")
                if target not in done:
                    path.append(target)
                    pending.append(iter(edges[target]))

    # ------------------------------------------------------------ matches

    def parse_match(self, data: Mapping[str, Any], line: int, rule_id: str) -> Match:
        def at(key: str) -> int:
            return _key_line(data, key, line)

        fields: dict[str, Any] = {}
        if "family" in data:
            fields["family"] = self.family(data["family"], at("family"))
        if "proto" in data:
            fields["proto"] = self.protocols(data["proto"], at("proto"))
        for key in ("src", "dst"):
            if key in data:
                fields[key] = self.addresses(data[key], at(key), key)
        for key in ("sport", "dport"):
            if key in data:
                fields[key] = self.ports(data[key], at(key), key)
        for key, field_name in (("in", "iface_in"), ("out", "iface_out")):
            if key in data:
                fields[field_name] = self.interfaces(data[key], at(key), key)
        if "state" in data:
            fields["state"] = self.states(data["state"], at("state"))
        if "fragment" in data:
            fields["fragment"] = self.fragment(data["fragment"], at("fragment"))
        if "tcp_flags" in data and "syn" in data:
            raise self.error(at("syn"), "give either syn or tcp_flags, not both")
        if "tcp_flags" in data:
            fields["tcp_flags"] = self.tcp_flags(data["tcp_flags"], at("tcp_flags"))
        if "syn" in data:
            syn = data["syn"]
            if not isinstance(syn, bool):
                raise self.error(at("syn"), f"syn is true (a connection-opening SYN) or false, not {syn!r}")
            # iptables --syn: SYN set, RST/ACK/FIN clear; ! --syn is every other TCP packet.
            fields["tcp_flags"] = TcpFlagsMatch(SYN_MASK, TCP_FLAG_BITS["SYN"], negated=not syn)
        if "helper" in data:
            fields["helper"] = self.helper(data["helper"], at("helper"))
        if "sip" in data:
            fields["sip"] = self.sip(data["sip"], at("sip"))
        if "string" in data:
            fields["string"] = self.strings(data["string"], at("string"))
        if "limit" in data:
            fields["limit"] = self.limit(data["limit"], at("limit"))
        match = Match(**fields)
        self.check_satisfiable(match, data, line, rule_id)
        return match

    def check_satisfiable(self, match: Match, data: Mapping[str, Any], line: int, rule_id: str) -> None:
        """Refuse rules that can never match anything: they are always a mistake."""
        def at(key: str) -> int:
            return _key_line(data, key, line)

        families = {4, 6}
        reasons = []
        if match.family is not None:
            families &= {match.family}
            reasons.append(f"family {match.family}")
        for key in ("src", "dst"):
            addr: AddrMatch | None = getattr(match, key)
            if addr is not None:
                families &= addr.families
                reasons.append(f"{key} is IPv{'/IPv'.join(str(f) for f in sorted(addr.families))}")
        if not families:
            raise self.error(line, f"rule '{rule_id}' can never match: {', '.join(reasons)}")
        proto = match.proto
        if proto is not None and not proto.negated:
            if proto.protocols == {PROTO_NUMBERS["icmp"]} and families == {6}:
                raise self.error(at("proto"), "proto icmp is ICMP for IPv4; IPv6 uses icmpv6")
            if proto.protocols == {PROTO_NUMBERS["icmpv6"]} and families == {4}:
                raise self.error(at("proto"), "proto icmpv6 is ICMP for IPv6; IPv4 uses icmp")
            if (match.sport or match.dport) and not proto.protocols & PORT_PROTOCOLS:
                key = "sport" if match.sport else "dport"
                raise self.error(at(key), f"{key} needs a protocol with ports (tcp, udp, sctp, udplite), "
                                          f"not {proto.text}")
        if match.tcp_flags is not None and not _only_tcp(match):
            key = "syn" if "syn" in data else "tcp_flags"
            raise self.error(at(key), f"{key} needs proto: tcp")
        frag = match.fragment
        if frag is not None and frag.kind == "later" and not frag.negated and (match.sport or match.dport):
            # A non-first fragment carries no transport header: netfilter never matches its ports.
            key = "sport" if match.sport else "dport"
            raise self.error(at(key), "a later fragment has no ports: this rule can never match")
        untracked_only = match.state is not None and match.state.states == {"untracked"} \
            and not match.state.negated
        if match.state is not None and not self.conntrack.enabled and not untracked_only:
            raise self.error(at("state"), "state needs conntrack: without a 'conntrack:' section every "
                                              "packet is untracked; add 'conntrack: true' or drop the state match")
        if match.helper is not None and match.helper not in self.conntrack.helpers:
            raise self.error(at("helper"), f"no connection ever has helper '{match.helper}': add it to "
                                           "conntrack: {helpers: [...]}")

    def family(self, value: Any, line: int) -> int:
        names = {4: 4, 6: 6, "4": 4, "6": 6, "ipv4": 4, "ipv6": 6}
        if isinstance(value, bool) or value not in names:
            raise self.error(line, f"family is 4 or 6 (ipv4, ipv6), not {value!r}")
        return names[value]

    def protocols(self, value: Any, line: int) -> ProtoMatch:
        items, negated = self.negatable(value, line, "proto")
        numbers = set()
        for item, where in items:
            if _is_int(item):
                number = item
            elif isinstance(item, str) and item.strip().isdigit():
                number = int(item.strip())
            elif isinstance(item, str) and item.strip().lower() in PROTO_NUMBERS:
                number = PROTO_NUMBERS[item.strip().lower()]
            else:
                raise self.error(where, f"unknown protocol {item!r}{did_you_mean(str(item), PROTO_NUMBERS)}")
            if not 1 <= number <= 255:
                raise self.error(where, f"protocol number {number} is not 1..255 "
                                        "(omit proto to match every protocol)")
            numbers.add(number)
        text = ", ".join(PROTO_NAMES.get(n, str(n)) for n in sorted(numbers))
        return ProtoMatch(frozenset(numbers), negated, text)

    def addresses(self, value: Any, line: int, key: str) -> AddrMatch:
        items, negated = self.negatable(value, line, key)
        ranges: list[AddrRange] = []
        texts = []
        for item, where in items:
            if not isinstance(item, str):
                raise self.error(where, f"{key}: {item!r} is not an address (write a CIDR prefix, an "
                                        "address, a range a-b, or a definition name)")
            text = item.strip()
            texts.append(text)
            if _NAME.match(text):
                definition = self.resolve(self.lookup(text, where), ())
                if definition.kind != "addresses":
                    raise self.error(where, f"{key}: '{text}' is a set of ports (definition at line "
                                            f"{definition.line}), not addresses")
                ranges.extend(definition.addresses)
            else:
                ranges.append(self.address(text, where, key))
        return AddrMatch(tuple(ranges), negated, ", ".join(texts))

    def address(self, text: str, line: int, what: str) -> AddrRange:
        if "-" in text and "/" not in text:
            first_text, _, last_text = text.partition("-")
            try:
                first = ipaddress.ip_address(first_text.strip())
                last = ipaddress.ip_address(last_text.strip())
            except ValueError:
                raise self.error(line, f"{what}: '{text}' is not an address range (first-last)") from None
            if first.version != last.version:
                raise self.error(line, f"{what}: range '{text}' mixes IPv4 and IPv6")
            if int(first) > int(last):
                raise self.error(line, f"{what}: range '{text}' is reversed (first > last)")
            return AddrRange(first.version, int(first), int(last))
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.error(line, f"{what}: '{text}' is not an address or CIDR prefix"
                                   f"{_why_not_cidr(text)}") from None
        return AddrRange.from_network(net)

    def ports(self, value: Any, line: int, key: str) -> PortMatch:
        items, negated = self.negatable(value, line, key)
        ranges: list[tuple[int, int]] = []
        texts = []
        for item, where in items:
            text = str(item).strip() if not isinstance(item, bool) else ""
            if isinstance(item, str) and _NAME.match(text):
                definition = self.resolve(self.lookup(text, where), ())
                if definition.kind != "ports":
                    raise self.error(where, f"{key}: '{text}' is a set of addresses (definition at line "
                                            f"{definition.line}), not ports")
                ranges.extend(definition.ports)
            else:
                ranges.append(self.port_range(item, where, key))
            texts.append(text)
        return PortMatch(tuple(ranges), negated, ", ".join(texts))

    def port_range(self, item: Any, line: int, what: str) -> tuple[int, int]:
        if _is_int(item):
            first = last = item
        elif isinstance(item, str) and (m := _PORT_RANGE.match(item.strip())):
            first, last = int(m.group(1)), int(m.group(2))
        elif isinstance(item, str) and _PORT.match(item.strip()):
            first = last = int(item.strip())
        else:
            hint = " (write port ranges as first-last)" if isinstance(item, str) and ":" in item else ""
            raise self.error(line, f"{what}: {item!r} is not a port, a range first-last, or a definition "
                                   f"name{hint}")
        for port in (first, last):
            if not 1 <= port <= 65535:
                raise self.error(line, f"{what}: port {port} is not 1..65535")
        if first > last:
            raise self.error(line, f"{what}: range {first}-{last} is reversed (first > last)")
        return first, last

    def interfaces(self, value: Any, line: int, key: str) -> IfaceMatch:
        items, negated = self.negatable(value, line, key)
        names = []
        for item, where in items:
            name = item.strip() if isinstance(item, str) else ""
            ok = (1 <= len(name) <= IFNAMSIZ and "/" not in name and not any(c.isspace() for c in name)
                  and "+" not in name[:-1])
            if not ok:
                raise self.error(where, f"{key}: bad interface name {item!r} (at most {IFNAMSIZ} characters, "
                                        "no '/' or spaces, '+' only at the end as a wildcard)")
            names.append(name)
        return IfaceMatch(tuple(names), negated)

    def states(self, value: Any, line: int) -> StateMatch:
        items, negated = self.negatable(value, line, "state")
        states = set()
        for item, where in items:
            state = item.strip().lower() if isinstance(item, str) else item
            if state not in CT_STATES:
                raise self.error(where, f"unknown conntrack state {item!r}"
                                        f"{did_you_mean(str(item), CT_STATES)}")
            states.add(state)
        return StateMatch(frozenset(states), negated)

    def fragment(self, value: Any, line: int) -> FragmentMatch:
        if value is True:
            return FragmentMatch("later")      # iptables -f
        if value is False:
            return FragmentMatch("later", negated=True)   # iptables ! -f
        text = value.strip() if isinstance(value, str) else ""
        negated = text.startswith("!")
        kind = text.lstrip("!").strip()
        if kind not in FRAGMENT_KINDS:
            raise self.error(line, "fragment is true (a non-first fragment, iptables -f), false, or one of "
                                   f"later, first, any (optionally negated with '!'), not {value!r}")
        return FragmentMatch(kind, negated)  # type: ignore[arg-type]

    def tcp_flags(self, value: Any, line: int) -> TcpFlagsMatch:
        negated = False
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("!"):
                negated, text = True, text[1:].strip()
            parts = text.split()
            if len(parts) != 2:
                raise self.error(line, "tcp_flags is 'MASK COMP' as in iptables (\"SYN,RST,ACK,FIN SYN\") "
                                       "or {mask: [...], comp: [...]}")
            mask_text, comp_text = parts
        elif isinstance(value, Mapping):
            for key in value:
                if key not in TCP_FLAGS_KEYS:
                    raise self.error(_key_line(value, key, line),
                                     f"unknown tcp_flags key '{key}'{did_you_mean(key, TCP_FLAGS_KEYS)}")
            if "mask" not in value or "comp" not in value:
                raise self.error(line, "tcp_flags needs both mask and comp")
            mask_text, comp_text = value["mask"], value["comp"]
            negated = value.get("negate", False)
            if not isinstance(negated, bool):
                raise self.error(_key_line(value, "negate", line), "negate is true or false")
        else:
            raise self.error(line, "tcp_flags is 'MASK COMP' (\"SYN,RST,ACK,FIN SYN\") or {mask: [...], comp: [...]}")
        mask = self.flag_bits(mask_text, line)
        comp = self.flag_bits(comp_text, line)
        if comp & ~mask:
            raise self.error(line, "tcp_flags: comp has flags outside mask, so it can never match")
        return TcpFlagsMatch(mask, comp, negated)

    def flag_bits(self, value: Any, line: int) -> int:
        if isinstance(value, str):
            names = [n for n in value.replace(",", " ").split() if n]
        elif _is_seq(value):
            names = [str(n) for n in value]
        else:
            raise self.error(line, f"tcp flags are names (SYN,ACK,...), not {value!r}")
        bits = 0
        for name in names:
            upper = name.upper()
            if upper == "ALL":
                bits |= ALL_TCP_FLAGS
            elif upper == "NONE":
                continue
            elif upper in TCP_FLAG_BITS:
                bits |= TCP_FLAG_BITS[upper]
            else:
                raise self.error(line, f"unknown TCP flag '{name}'{did_you_mean(upper, TCP_FLAG_BITS)}")
        return bits

    def helper(self, value: Any, line: int) -> str:
        if value not in KNOWN_HELPERS:
            raise self.error(line, f"unknown helper {value!r}{did_you_mean(str(value), KNOWN_HELPERS)}")
        return value

    def sip(self, value: Any, line: int) -> SipMatch:
        if not isinstance(value, Mapping):
            raise self.error(line, "sip is a mapping: {method: ..., uri: ..., header: {Name: regex}, status: ...}")
        for key in value:
            if key not in SIP_KEYS:
                raise self.error(_key_line(value, key, line),
                                 f"unknown sip key '{key}'{did_you_mean(key, SIP_KEYS)}")

        def at(key: str) -> int:
            return _key_line(value, key, line)

        method = uri = status = None
        if "method" in value:
            given = value["method"]
            if _is_seq(given) and given:
                tokens = []
                for i, token in enumerate(given):
                    if not isinstance(token, str) or not _SIP_TOKEN.match(token):
                        raise self.error(_item_line(given, i, at("method")),
                                         f"sip method {token!r} is not a SIP method name")
                    tokens.append(re.escape(token))
                method = f"^(?:{'|'.join(tokens)})$"
            else:
                method = self.regex(given, at("method"), "sip method")
        if "uri" in value:
            uri = self.regex(value["uri"], at("uri"), "sip uri")
        if "status" in value:
            given = value["status"]
            if _is_int(given):
                if not 100 <= given <= 699:
                    raise self.error(at("status"), f"sip status {given} is not a SIP status code 100..699")
                status = f"^{given}$"
            else:
                status = self.regex(given, at("status"), "sip status")
        if method is not None and status is not None:
            raise self.error(at("status"), "a SIP message is a request (method) or a response (status), "
                                           "not both: this can never match")
        headers: list[tuple[str, str]] = []
        if "header" in value:
            given = value["header"]
            if not isinstance(given, Mapping) or not given:
                raise self.error(at("header"), "header is a mapping of header name to regex, "
                                               "e.g. {User-Agent: \"(?i)friendly-scanner\"}")
            for name, pattern in given.items():
                where = _key_line(given, name, at("header"))
                if not _SIP_TOKEN.match(str(name)):
                    raise self.error(where, f"{name!r} is not a SIP header name")
                headers.append((str(name), self.regex(pattern, where, f"sip header {name}")))
            # Every header must match, so their order means nothing: keep one canonical order.
            headers.sort(key=lambda h: h[0].lower())
        return SipMatch(method=method, uri=uri, headers=tuple(headers), status=status)

    def regex(self, value: Any, line: int, what: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(line, f"{what} is a regex (a non-empty string), not {value!r}")
        if len(value) > MAX_REGEX_CHARS:
            raise self.error(line, f"{what}: regex is {len(value)} characters, more than {MAX_REGEX_CHARS}: "
                                   "it runs on every SIP packet; match a distinctive part instead")
        try:
            re.compile(value)
        except re.error as e:
            raise self.error(line, f"{what}: bad regex {value!r}: {e}") from None
        return value

    def strings(self, value: Any, line: int) -> tuple[StringMatch, ...]:
        items = list(value) if _is_seq(value) else [value]
        if not items:
            raise self.error(line, "string is a pattern, a mapping {pattern: ...}, or a list of them")
        return tuple(self.string(item, _item_line(value, i, line) if _is_seq(value) else line)
                     for i, item in enumerate(items))

    def string(self, value: Any, line: int) -> StringMatch:
        if isinstance(value, str):
            value = {"pattern": value}
        if not isinstance(value, Mapping):
            raise self.error(line, "string is a pattern or {pattern, from, to, icase, algo, negate}")
        for key in value:
            if key not in STRING_KEYS:
                raise self.error(_key_line(value, key, line),
                                 f"unknown string key '{key}'{did_you_mean(key, STRING_KEYS)}")

        def at(key: str) -> int:
            return _key_line(value, key, line)

        pattern = value.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise self.error(at("pattern"), "string needs a non-empty pattern")
        raw = pattern.encode("utf-8")
        if len(raw) > MAX_STRING_PATTERN:
            raise self.error(at("pattern"), f"string pattern is {len(raw)} bytes; the kernel's -m string "
                                            f"takes at most {MAX_STRING_PATTERN}")
        offsets = {}
        for key, default in (("from", 0), ("to", 65535)):
            given = value.get(key, default)
            if not _is_int(given) or not 0 <= given <= 65535:
                raise self.error(at(key), f"string {key} is an offset 0..65535, not {given!r}")
            offsets[key] = given
        if offsets["from"] > offsets["to"]:
            raise self.error(at("to"), f"string from {offsets['from']} is after to {offsets['to']}")
        algo = value.get("algo", "bm")
        if algo not in ("bm", "kmp"):
            raise self.error(at("algo"), f"string algo is bm or kmp, not {algo!r}")
        flags = {}
        for key in ("icase", "negate"):
            given = value.get(key, False)
            if not isinstance(given, bool):
                raise self.error(at(key), f"string {key} is true or false, not {given!r}")
            flags[key] = given
        return StringMatch(pattern=raw, algo=algo, offset_from=offsets["from"], offset_to=offsets["to"],
                           icase=flags["icase"], negated=flags["negate"])

    def limit(self, value: Any, line: int) -> LimitMatch:
        if not isinstance(value, Mapping):
            raise self.error(line, "limit is a mapping {rate: 50/s, burst: 100, per: src, above: false}")
        for key in value:
            if key not in LIMIT_KEYS:
                raise self.error(_key_line(value, key, line),
                                 f"unknown limit key '{key}'{did_you_mean(key, LIMIT_KEYS)}")

        def at(key: str) -> int:
            return _key_line(value, key, line)

        if "rate" not in value:
            raise self.error(line, "limit needs a rate, e.g. rate: 50/s")
        rate_text = value["rate"]
        m = _RATE.match(rate_text.lower()) if isinstance(rate_text, str) else None
        unit = m.group(2) if m else ""
        if not m or unit not in RATE_UNITS:
            raise self.error(at("rate"), f"rate is N/unit (unit s, second, min, minute, hour, day), "
                                         f"not {rate_text!r}")
        rate = float(m.group(1)) / RATE_UNITS[unit]
        if rate <= 0:
            raise self.error(at("rate"), "rate must be above zero")
        burst = value.get("burst", 5)   # iptables -m limit / hashlimit default burst
        if not _is_int(burst) or not 1 <= burst <= MAX_LIMIT_BURST:
            raise self.error(at("burst"), f"burst is a whole number 1..{MAX_LIMIT_BURST}, not {burst!r}")
        above = value.get("above", False)
        if not isinstance(above, bool):
            raise self.error(at("above"), f"above is true (match once over the rate) or false, not {above!r}")
        per_value = value.get("per", [])
        per_items = list(per_value) if _is_seq(per_value) else [per_value]
        per: list[str] = []
        for item in per_items:
            if item not in LIMIT_PER:
                raise self.error(at("per"), f"limit per is src, dst, sport or dport (or a list), not {item!r}"
                                            f"{did_you_mean(str(item), LIMIT_PER)}")
            if item in per:
                raise self.error(at("per"), f"limit per lists '{item}' twice")
            per.append(item)
        prefixes: dict[str, int | None] = {}
        for key, side in (("src_prefix", "src"), ("dst_prefix", "dst")):
            given = value.get(key)
            if given is not None:
                if not _is_int(given) or not 0 <= given <= 128:
                    raise self.error(at(key), f"{key} is a prefix length 0..128, not {given!r}")
                if side not in per:
                    raise self.error(at(key), f"{key} groups sources by prefix; it needs '{side}' in per")
            prefixes[key] = given
        name = value.get("name", "")
        if not isinstance(name, str):
            raise self.error(at("name"), "limit name must be a string")
        text = f"{rate_text.strip()} burst {burst}"
        if per:
            text += f" per {','.join(per)}"
        if above:
            text = "over " + text
        return LimitMatch(rate=rate, burst=burst, above=above, per=tuple(per),
                          src_prefix=prefixes["src_prefix"], dst_prefix=prefixes["dst_prefix"],
                          name=name, text=text)

    # ------------------------------------------------------------ negation

    def negatable(self, value: Any, line: int, key: str) -> tuple[list[tuple[Any, int]], bool]:
        """Items of a scalar-or-list value, each with its line, and whether the whole is negated."""
        if isinstance(value, Mapping):
            raise self.error(line, f"{key} is a value or a list of values, not a mapping")
        if value is None:
            raise self.error(line, f"{key} is empty")
        items = list(value) if _is_seq(value) else [value]
        if not items:
            raise self.error(line, f"{key} is an empty list, which would never match")
        out = []
        negations = []
        for i, item in enumerate(items):
            where = _item_line(value, i, line) if _is_seq(value) else line
            if _is_seq(item) or isinstance(item, Mapping):
                raise self.error(where, f"{key}: nested lists are not allowed")
            negated = isinstance(item, str) and item.strip().startswith("!")
            if negated:
                item = item.strip()[1:].strip()
            negations.append(negated)
            out.append((item, where))
        if any(negations) and not all(negations):
            raise self.error(line, f"{key} mixes negated and plain items; negate all of them (none of "
                                   "these) or none")
        return out, all(negations)


# ------------------------------------------------------------------ small helpers

def _only_tcp(match: Match) -> bool:
    return match.proto is not None and not match.proto.negated and match.proto.protocols == {TCP}


def _why_not_cidr(text: str) -> str:
    address, slash, prefix = text.partition("/")
    if not slash:
        return ""
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        return ""
    if not prefix.isdigit():
        return f" (prefix length '{prefix}' is not a number)"
    most = 32 if version == 4 else 128
    if int(prefix) > most:
        return f" (prefix length {prefix} is more than {most})"
    return ""


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _stem(path: str) -> str:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name or "ruleset"
