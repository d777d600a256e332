"""Located YAML: lines for every key and item; aliases and deep nesting refused."""

from __future__ import annotations

import pytest

from fwtest.errors import InputError
from fwtest.yamlsrc import MAX_DEPTH, load_yaml


def test_lines_of_keys_and_items():
    doc = load_yaml("a: 1\nrules:\n  - id: x\n    action: accept\n  - id: y\n", "r.yaml")
    assert doc.line_of("rules") == 2
    assert doc["rules"].item_lines == [3, 5]
    assert doc["rules"][1].line_of("id") == 5


def test_billion_laughs_is_refused_not_expanded():
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    with pytest.raises(InputError, match="aliases"):
        load_yaml(text, "lol.yaml")


def test_depth_is_bounded():
    with pytest.raises(InputError, match="nested deeper"):
        load_yaml("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5), "deep.yaml")


@pytest.mark.parametrize("text, line", [("a: [1, 2\n", 2), ("a: 1\na: 2\n", 2), ("a:\n\tb: 1\n", 2)])
def test_malformed_yaml_is_located(text, line):
    with pytest.raises(InputError) as e:
        load_yaml(text, "bad.yaml")
    assert e.value.line == line
