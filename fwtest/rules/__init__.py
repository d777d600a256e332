"""Loading rulesets: detect the format from the content, parse, merge several files.

Three formats share one IR (``fwtest.rules.ir``): native YAML, ``iptables-save``
/ ``ip6tables-save`` text and ``nft -j list ruleset`` JSON. Several files make
one ruleset (``fwtest check rules.v4 rules.v6``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fwtest.errors import InputError
from fwtest.rules.ir import DEFAULT_TIMEOUTS, Conntrack, Ruleset

MAX_RULESET_BYTES = 64 * 1024 * 1024


def detect_format(text: str) -> str:
    """``yaml``, ``iptables`` or ``nft``, from the content alone."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except RecursionError:
            return "nft" if '"nftables"' in text[:200] else "yaml"  # the loader reports the nesting
        except ValueError:
            return "yaml"  # YAML flow mappings start with '{' too; the YAML loader will judge
        if isinstance(doc, Mapping) and "nftables" in doc:
            return "nft"
        return "yaml"
    for line in stripped.splitlines():
        line = line.strip()
        if not line or (line.startswith("#") and "tables-save" not in line):
            continue
        if "tables-save" in line or line.startswith(("*filter", "*raw", "*mangle", "*nat", "*security")):
            return "iptables"
        break
    return "yaml"


def read_text(path: str | Path) -> str:
    """A ruleset file's text; missing or unreadable files are InputError."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_RULESET_BYTES:
            raise InputError(str(path), 0, f"file larger than {MAX_RULESET_BYTES // 2**20} MiB")
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(path), 0, "no such file") from None
    except IsADirectoryError:
        raise InputError(str(path), 0, "is a directory, not a ruleset file") from None
    except UnicodeDecodeError as e:
        raise InputError(str(path), 0, f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InputError(str(path), 0, f"cannot read: {e.strerror}") from None


def parse_ruleset(text: str, path: str, nft_source: str | None = None) -> Ruleset:
    """Parse one ruleset text of any supported format."""
    fmt = detect_format(text)
    if fmt == "nft":
        from fwtest.rules.nftables import load_nft
        return load_nft(text, path, nft_source)
    if fmt == "iptables":
        from fwtest.rules.iptables import load_iptables
        return load_iptables(text, path)
    from fwtest.rules.native import load_native
    return load_native(text, path)


def load_ruleset(source: str | Path | Sequence[str | Path] | Mapping[str, Any] | Ruleset) -> Ruleset:
    """A Ruleset from a path, several paths (merged), a plain dict (native format) or a Ruleset."""
    if isinstance(source, Ruleset):
        return source
    if isinstance(source, Mapping):
        from fwtest.rules.native import ruleset_from_dict
        return ruleset_from_dict(source)
    paths = [source] if isinstance(source, (str, Path)) else list(source)
    if not paths:
        raise InputError("<rules>", 0, "no ruleset file given")
    rulesets = []
    for path in paths:
        text = read_text(path)
        nft_source = None
        sibling = Path(path).with_suffix(".nft")
        if detect_format(text) == "nft" and sibling.is_file() and sibling != Path(path):
            nft_source = read_text(sibling)  # the `nft list ruleset` text gives JSON rules their lines
        rulesets.append(parse_ruleset(text, str(path), nft_source))
    return merge(rulesets)


def merge(rulesets: Sequence[Ruleset]) -> Ruleset:
    """Several files as one ruleset (say an iptables-save v4 file and its v6 twin).

    Chain names and rule ids must not collide: loaders qualify them per file.
    Conntrack is on when any part turns it on (the kernel's conntrack is
    per network namespace, not per table); helpers and timeouts combine.
    """
    if len(rulesets) == 1:
        return rulesets[0]
    chains: dict = {}
    ids: dict[str, str] = {}
    for rs in rulesets:
        for name, chain in rs.chains.items():
            if name in chains:
                raise InputError(rs.files[0], chain.source.line,
                                 f"chain '{name}' is also defined in {chains[name].source.file}; "
                                 "files given together must not define the same chain")
            chains[name] = chain
            for rule in chain.rules:
                if rule.id in ids:
                    raise InputError(rule.source.file, rule.source.line,
                                     f"rule id '{rule.id}' is also used in {ids[rule.id]}")
                ids[rule.id] = str(rule.source)
    enabled = [rs.conntrack for rs in rulesets if rs.conntrack.enabled]
    conntrack = Conntrack()
    if enabled:
        timeouts: dict[str, int] = {}
        for ct in enabled:  # a value set in any file wins over the kernel default
            timeouts.update({k: v for k, v in ct.timeouts.items() if DEFAULT_TIMEOUTS.get(k) != v})
        timeouts = {**DEFAULT_TIMEOUTS, **timeouts}
        conntrack = Conntrack(True, frozenset().union(*(ct.helpers for ct in enabled)), timeouts,
                              enabled[0].source)
    formats = sorted({rs.format for rs in rulesets})
    return Ruleset(
        name=" + ".join(rs.name for rs in rulesets),
        files=tuple(f for rs in rulesets for f in rs.files),
        format="+".join(formats),
        chains=chains,
        bases=tuple(b for rs in rulesets for b in rs.bases),
        conntrack=conntrack,
    )
