"""Call-level outcomes: from per-packet verdicts to what a PSAP would see.

A flow is judged phase by phase, in the words of the people who answer 911:
the call never set up; it set up but there was no audio one way or both (what
some PSAPs saw in June 2024: the call and the number arrived, the voice did
not); the callback or the keep-alive was refused; the call was never torn
down. The packet reported is the first one (in time) that died.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fwtest.engine.verdict import Verdict
from fwtest.traffic.callflow import CallFlow, FlowStep


@dataclass(frozen=True)
class FlowOutcome:
    flow: CallFlow
    passed: bool
    broke: str                         # "" when passed, else where it broke, in words
    first_dead: FlowStep | None
    verdict: Verdict | None            # the verdict of first_dead
    dead: int                          # packets of the flow that died
    verdicts: tuple[Verdict, ...] = ()  # one per step, for ladder diagrams


def judge(flow: CallFlow, verdicts: Sequence[Verdict]) -> FlowOutcome:
    """The outcome of one call flow given one verdict per step."""
    if len(verdicts) != len(flow.steps):
        raise ValueError(f"{len(verdicts)} verdicts for {len(flow.steps)} packets")
    dead = [(step, v) for step, v in zip(flow.steps, verdicts, strict=True) if not v.accepted]
    if not dead:
        return FlowOutcome(flow, True, "", None, None, 0, tuple(verdicts))
    phases = {step.phase for step, _ in dead}
    step, verdict = dead[0]
    return FlowOutcome(flow, False, where_it_broke(flow.flow, phases), step, verdict, len(dead),
                       tuple(verdicts))


def where_it_broke(flow: str, dead_phases: set[str]) -> str:
    """The phase that matters most to the caller, said plainly."""
    media = "text" if flow == "text" else "audio"
    if "setup" in dead_phases:
        if flow == "callback":
            return "callback refused: not set up"
        if flow == "text":
            return "text session not set up"
        return "not set up"
    if "keepalive" in dead_phases:
        return "keep-alive refused: the PSAP would be routed around"
    if "message" in dead_phases:
        return "text message refused"
    far = "callee" if flow == "callback" else "caller"
    if {"media-in", "media-out"} <= dead_phases:
        return f"set up, but no {media} either way"
    if "media-in" in dead_phases:
        return f"set up, but no {media} from the {far} to the PSAP"
    if "media-out" in dead_phases:
        return f"set up, but no {media} from the PSAP to the {far}"
    if "teardown" in dead_phases:
        return "not torn down"
    return "packets dropped"  # pragma: no cover - every phase is named above
