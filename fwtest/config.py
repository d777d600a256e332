"""Project configuration: ``[tool.fwtest]`` in the nearest pyproject.toml, else fwtest.yaml.

    [tool.fwtest]
    profile = "rulesets/psap-edge.profile.yaml"    # default profile of every ruleset
    baseline = "git:origin/main"                  # optional: compare each ruleset with this
    traces = ["traces/sipp/*.pcap"]               # optional: captures replayed as evidence
    outputs = ["fwtest.sarif", "fwtest.html"]     # optional: reports, format from the extension
    rulesets = [                                  # what `fwtest check` with no argument checks
        "rulesets/psap-edge.yaml",
        {rules = ["fw/rules.v4", "fw/rules.v6"], profile = "fw/edge2.profile.yaml"},
    ]

``fwtest.yaml`` holds the same keys in YAML (or is itself a profile). Paths are
relative to the file that names them. Command-line flags override all of it.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fwtest.errors import InputError, did_you_mean
from fwtest.yamlsrc import load_yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_KEYS = ("profile", "baseline", "traces", "outputs", "rulesets")
ENTRY_KEYS = ("rules", "profile", "baseline", "traces")


@dataclass(frozen=True)
class RulesetEntry:
    rules: tuple[str, ...]
    profile: str | None = None      # path; None: the config's, else discovery
    baseline: str | None = None
    traces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: str                       # the file it came from
    profile: str | None = None
    profile_inline: Mapping[str, Any] | None = None   # [tool.fwtest.profile] written in place
    baseline: str | None = None
    traces: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    rulesets: tuple[RulesetEntry, ...] = field(default_factory=tuple)


def find_config(start: str | Path = ".") -> Config | None:
    """The configuration nearest to ``start`` (upwards), or None."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise InputError(str(pyproject), 0, f"malformed TOML: {e}") from None
            tool = data.get("tool", {}).get("fwtest")
            if isinstance(tool, Mapping):
                return config_from_dict(tool, pyproject, "[tool.fwtest]")
        candidate = folder / "fwtest.yaml"
        if candidate.is_file():
            data = load_yaml(candidate.read_text(encoding="utf-8"), str(candidate))
            if isinstance(data, Mapping) and "psap" in data:
                return Config(path=str(candidate), profile=str(candidate))  # the file is a profile
            return config_from_dict(data or {}, candidate, "")
    return None


def config_from_dict(data: Any, path: Path, section: str) -> Config:
    where = f"{path}{section}"
    if not isinstance(data, Mapping):
        raise InputError(where, 0, "configuration must be a mapping")
    for key in data:
        if key not in CONFIG_KEYS:
            raise InputError(where, _line(data, key), f"unknown configuration key '{key}'"
                             f"{did_you_mean(key, CONFIG_KEYS)}")
    base = path.parent
    profile = data.get("profile")
    if profile is not None and not isinstance(profile, (str, Mapping)):
        raise InputError(where, _line(data, "profile"), "profile is a path (or an inline table)")
    entries = []
    for i, item in enumerate(_list(data.get("rulesets", []), where, "rulesets")):
        if isinstance(item, str):
            item = {"rules": [item]}
        if not isinstance(item, Mapping) or "rules" not in item:
            raise InputError(where, 0, f"rulesets[{i}] must be a path or a table with 'rules'")
        for key in item:
            if key not in ENTRY_KEYS:
                raise InputError(where, 0, f"rulesets[{i}]: unknown key '{key}'{did_you_mean(key, ENTRY_KEYS)}")
        entries.append(RulesetEntry(
            rules=tuple(_path(base, r) for r in _list(item["rules"], where, f"rulesets[{i}].rules")),
            profile=_path(base, item["profile"]) if item.get("profile") else None,
            baseline=item.get("baseline"),
            traces=_traces(base, item.get("traces", []), where)))
    return Config(
        path=where,
        profile=_path(base, profile) if isinstance(profile, str) else None,
        profile_inline=profile if isinstance(profile, Mapping) else None,
        baseline=data.get("baseline"),
        traces=_traces(base, data.get("traces", []), where),
        outputs=tuple(str(o) for o in _list(data.get("outputs", []), where, "outputs")),
        rulesets=tuple(entries))


def _line(data: Any, key: str) -> int:
    return data.line_of(key) if hasattr(data, "line_of") else 0


def _list(value: Any, where: str, what: str) -> list:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InputError(where, 0, f"{what} must be a list")
    return value


def _path(base: Path, value: Any) -> str:
    text = str(value)
    if text.startswith("git:"):
        return text
    p = Path(text)
    return str(p if p.is_absolute() else _relative(base / p))


def _relative(p: Path) -> str:
    """Shorter paths in reports: relative to the current directory when below it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _traces(base: Path, value: Any, where: str) -> tuple[str, ...]:
    found: list[str] = []
    for pattern in _list(value, where, "traces"):
        matches = sorted(glob.glob(str(base / str(pattern)), recursive=True))
        if not matches:
            raise InputError(where, 0, f"traces: nothing matches '{pattern}'")
        found.extend(_relative(Path(m)) for m in matches)
    return tuple(found)
