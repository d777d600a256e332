"""YAML that remembers where everything was written.

Loads a document into ordinary dicts, lists and scalars, where every mapping
and sequence also knows its own line and the line of each key or item, so
loaders can say ``rules.yaml:42: ...`` about any value. Aliases are refused
(no billion-laughs expansion) and nesting depth is bounded.
"""

from __future__ import annotations

from typing import Any

import yaml

from fwtest.errors import InputError

MAX_DEPTH = 64
# libyaml's parser when PyYAML was built with it: ~10x faster on big rulesets,
# and its nodes carry the same marks (lines) as the pure-Python parser's.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlMap(dict):
    """A mapping with ``line`` (its own) and ``key_lines`` (line of each key)."""

    line: int = 0
    key_lines: dict

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class YamlList(list):
    """A sequence with ``line`` (its own) and ``item_lines``."""

    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


def line_of(value: Any, default: int = 0) -> int:
    return getattr(value, "line", default) or default


def load_yaml(text: str, path: str) -> Any:
    """Parse one YAML document with line information; errors become InputError."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise InputError(path, line, f"malformed YAML: {e.problem or e.context}") from None
    except yaml.reader.ReaderError as e:
        # Raised before parsing (a control character, bad encoding): it has a
        # character position, not a mark, and a multi-line message.
        line = text.count("\n", 0, e.position) + 1 if isinstance(e.position, int) else 0
        raise InputError(path, line, f"malformed YAML: character {e.character!r} is not allowed "
                         "(control characters other than tab and newline)") from None
    except yaml.YAMLError as e:
        raise InputError(path, 0, f"malformed YAML: {str(e).splitlines()[0]}") from None
    except (RecursionError, ValueError) as e:
        raise InputError(path, 0, f"malformed YAML: {e}") from None
    if node is None:
        return None
    return _convert(node, path, 0, set())


def _convert(node: yaml.Node, path: str, depth: int, seen: set[int]) -> Any:
    line = node.start_mark.line + 1
    if depth > MAX_DEPTH:
        raise InputError(path, line, f"YAML nested deeper than {MAX_DEPTH} levels")
    # compose() returns an alias as the very node it names: meeting a node twice
    # means an alias, which we refuse rather than expand (billion laughs).
    if id(node) in seen:
        raise InputError(path, line, "YAML aliases (*name) are not supported; write the value out")
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        try:
            return _SCALARS.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError) as e:
            # Explicit tags reach Python constructors (`!!int abc` raises ValueError,
            # `!!timestamp x` AttributeError). PyYAML's own messages run over
            # several lines; the CLI prints one: keep the problem only.
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise InputError(path, line, f"bad value: {problem}") from None
    if isinstance(node, yaml.SequenceNode):
        out = YamlList(_convert(item, path, depth + 1, seen) for item in node.value)
        out.line = line
        out.item_lines = [item.start_mark.line + 1 for item in node.value]
        return out
    if isinstance(node, yaml.MappingNode):
        out = YamlMap()
        out.line = line
        out.key_lines = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise InputError(path, key_node.start_mark.line + 1,
                                 "YAML merge keys (<<) are not supported; write the keys out")
            key = _convert(key_node, path, depth + 1, seen)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise InputError(path, key_node.start_mark.line + 1, "mapping keys must be plain values")
            key = str(key)
            if key in out:
                raise InputError(path, key_node.start_mark.line + 1, f"duplicate key '{key}'")
            out[key] = _convert(value_node, path, depth + 1, seen)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    raise InputError(path, line, "unsupported YAML node")  # pragma: no cover


class _ScalarConstructor(yaml.SafeLoader):
    def __init__(self) -> None:  # no stream: only used to construct scalars
        yaml.constructor.SafeConstructor.__init__(self)


_SCALARS = _ScalarConstructor()
