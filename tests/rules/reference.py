"""The iptables and nft reference rulesets under rulesets/iptables/ and rulesets/nft/.

Run as root to regenerate them (network namespaces, the real tools):

    python tests/rules/reference.py

Each is the netfilter form of a native YAML ruleset (psap-edge.yaml and some of
broken/): exported with fwtest.rules.export, loaded into a throw-away network
namespace, and listed back by the real ``iptables-save -c`` /
``ip6tables-save -c`` / ``nft -j list ruleset``, so the files are what the
tools really write. Counters are then given plausible values (a live
firewall's are never zero), and the conntrack timeouts, which iptables cannot
hold, are noted as sysctl comment lines (fwtest reads them).

netfilter cannot parse SIP, so ``netfilter_form`` rewrites the YAML's ``sip:``
rules first (rulesets/iptables/README.md and rulesets/nft/README.md say how);
tests/rules/test_export.py checks each file against that form of its YAML.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from fwtest.rules.export import to_iptables, to_nft  # noqa: E402
from fwtest.rules.ir import Rule, Ruleset, StateMatch, StringMatch  # noqa: E402
from fwtest.rules.native import load_native  # noqa: E402

# Which native rulesets get netfilter versions, and for which tools (string-hits-sos
# has a string match, which nft cannot say).
SOURCES = {
    "psap-edge": ("rulesets/psap-edge.yaml", ("iptables", "nft")),
    "rtp-range-narrowed": ("rulesets/broken/rtp-range-narrowed.yaml", ("iptables", "nft")),
    "ipv6-forgotten": ("rulesets/broken/ipv6-forgotten.yaml", ("iptables", "nft")),
    "udp-timeout-shorter-than-call": ("rulesets/broken/udp-timeout-shorter-than-call.yaml", ("iptables", "nft")),
    "fragments-stateless": ("rulesets/broken/fragments-stateless.yaml", ("iptables", "nft")),
    "callback-closed": ("rulesets/broken/callback-closed.yaml", ("iptables", "nft")),
    "string-hits-sos": ("rulesets/broken/string-hits-sos.yaml", ("iptables",)),
}
_METHODS = re.compile(r"^\^?(?:\(\?:)?([A-Z]+(?:\|[A-Z]+)*)\)?\$?$")
_ALTERNATIVES = re.compile(r"^(?:\(\?i\))?([\w.-]+(?:\|[\w.-]+)*)$")


def netfilter_form(ruleset: Ruleset, backend: str) -> Ruleset:
    """The ruleset with its SIP-message rules said the closest way ``backend`` can.

    iptables: a method becomes a string match on "METHOD " (the request line; a
    CSeq or Allow header has the method followed by CR or a comma); a
    User-Agent alternative becomes a case-insensitive string match each.
    nft has no payload search: an accept keeps its other conditions (it admits
    more), a jump to a guard guards new connections only, a drop by content is
    left out. (Without conntrack the guard sees every packet of its SIP traffic.)
    """
    chains = {}
    for name, chain in ruleset.chains.items():
        rules: list[Rule] = []
        for rule in chain.rules:
            rules += [rule] if rule.match.sip is None else _without_sip(rule, backend,
                                                                          ruleset.conntrack.enabled)
        chains[name] = replace(chain, rules=tuple(rules))
    return replace(ruleset, chains=chains)


def _without_sip(rule: Rule, backend: str, stateful: bool) -> list[Rule]:
    sip, m = rule.match.sip, rule.match
    assert sip is not None
    bare = replace(m, sip=None)
    if sip.method and not (sip.uri or sip.headers or sip.status):
        found = _METHODS.match(sip.method)
        assert found, sip.method
        methods = found.group(1).split("|")
        if backend == "iptables":
            return [replace(rule, id=rule.id if len(methods) == 1 else f"{rule.id}-{meth.lower()}",
                            match=replace(bare, string=(StringMatch(f"{meth} ".encode()),)))
                    for meth in methods]
        if rule.action.kind == "accept":
            return [replace(rule, match=bare)]
        if rule.action.kind == "jump":
            if not stateful:
                return [replace(rule, match=bare)]
            return [replace(rule, match=replace(bare, state=StateMatch(frozenset({"new"}))))]
        return []
    if len(sip.headers) == 1 and sip.headers[0][0].lower() == "user-agent" and not sip.method:
        found = _ALTERNATIVES.match(sip.headers[0][1])
        assert found, sip.headers
        if backend == "nft":
            return []
        return [replace(rule, id=f"{rule.id}-{i}", match=replace(bare, string=(
            StringMatch(word.encode(), icase=True),))) for i, word in enumerate(found.group(1).split("|"), 1)]
    raise ValueError(f"no netfilter form for {rule.id}: {sip}")


def source_ruleset(name: str, backend: str) -> Ruleset:
    path = SOURCES[name][0]
    return netfilter_form(load_native((ROOT / path).read_text(encoding="utf-8"), path), backend)


def _netns(commands: list[tuple[list[str], str | None]]) -> list[str]:
    ns = f"fwt-reference-{random.randrange(1 << 30)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = []
        for argv, stdin in commands:
            done = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, text=True,
                                  capture_output=True, check=False)
            if done.returncode:
                raise RuntimeError(f"{' '.join(argv)}: {done.stderr}")
            out.append(done.stdout)
        return out
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _live_counters(text: str, seed: str) -> str:
    """Counters of a firewall that has run for a while (iptables-save -c prints them)."""
    rnd = random.Random(seed)

    def counter(match: re.Match) -> str:
        packets = rnd.choice((0, 0, rnd.randrange(1, 500), rnd.randrange(1000, 90_000_000)))
        return f"[{packets}:{packets * rnd.randrange(60, 1300)}]"

    return re.sub(r"\[0:0\]", counter, text)


def generate(name: str) -> None:
    _path, backends = SOURCES[name]
    if "iptables" in backends:
        texts = to_iptables(source_ruleset(name, "iptables"))
        for family, text in texts.items():
            tool = "ip6tables" if family == 6 else "iptables"
            saved = _netns([([f"{tool}-restore"], text), ([f"{tool}-save", "-c"], None)])[-1]
            notes = [line for line in text.splitlines() if line.startswith("#   sysctl")]
            head = ["# conntrack timeouts of this firewall (set in /etc/sysctl.d/60-conntrack.conf):",
                    *[line.replace("#   sysctl -w ", "# sysctl -w ") for line in notes]] if notes else []
            body = _live_counters(saved, f"{name}/{family}")
            out = ROOT / "rulesets" / "iptables" / f"{name}.v{family}"
            out.write_text("\n".join(head + [body.rstrip("\n")]) + "\n", encoding="utf-8")
            print("wrote", out.relative_to(ROOT))
    if "nft" in backends:
        script = to_nft(source_ruleset(name, "nft"))
        listed = _netns([(["nft", "-f", "-"], script), (["nft", "-j", "list", "ruleset"], None)])[-1]
        data = json.loads(listed)
        folder = ROOT / "rulesets" / "nft"
        (folder / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        (folder / f"{name}.nft").write_text(script, encoding="utf-8")
        print("wrote", (folder / f"{name}.json").relative_to(ROOT), "and .nft")


if __name__ == "__main__":
    for source in sys.argv[1:] or SOURCES:
        generate(source)
