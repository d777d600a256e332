"""``fwtest explain``: the packet-tracer walk, as text."""

from __future__ import annotations

from fwtest.engine.explain import Explanation


def render_explanation(explanation: Explanation) -> str:
    return "\n".join(explanation.lines()) + "\n"
