"""``fwtest explain``: the packet-tracer walk, as text."""

from __future__ import annotations

from fwtest.engine.explain import Explanation
from fwtest.traffic.record import PacketRecord


def render_explanation(explanation: Explanation, record: PacketRecord) -> str:
    return "\n".join(explanation.lines()) + "\n"
