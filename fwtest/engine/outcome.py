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
    step, verdict = dead[0]
    return FlowOutcome(flow, False, where_it_broke(flow, verdicts), step, verdict, len(dead),
                       tuple(verdicts))


def where_it_broke(flow: CallFlow, verdicts: Sequence[Verdict]) -> str:
    """The phase that matters most to the caller, said plainly."""
    sent: dict[str, int] = {}
    lost: dict[str, int] = {}
    for step, v in zip(flow.steps, verdicts, strict=True):
        sent[step.phase] = sent.get(step.phase, 0) + 1
        if not v.accepted:
            lost[step.phase] = lost.get(step.phase, 0) + 1
    name = flow.flow
    media = "text" if name == "text" else "audio"
    if "setup" in lost:
        if name == "callback":
            return "callback refused: not set up"
        if name == "text":
            return "text session not set up"
        return "not set up"
    if "keepalive" in lost:
        return "keep-alive refused: the PSAP would be routed around"
    if "message" in lost:
        return "text message refused"
    far = "callee" if name == "callback" else "caller"
    directions = {"media-in": f"from the {far} to the PSAP", "media-out": f"from the PSAP to the {far}"}
    silent = [phase for phase in directions if lost.get(phase, 0) == sent.get(phase, 0) and phase in lost]
    if len(silent) == 2:
        return f"set up, but no {media} either way"
    if silent:
        return f"set up, but no {media} {directions[silent[0]]}"
    # Some media died, some got through: typically the first packets of one
    # direction, until the other side's media opened the way back as replies.
    # The caller's first words are lost; a PSAP that stays silent (hold, queue)
    # would hear nothing at all.
    partial = [phase for phase in directions if phase in lost]
    if partial:
        phase = partial[0]
        return (f"set up, but {media} {directions[phase]} partly dropped "
                f"({lost[phase]} of {sent[phase]} packets)")
    if "teardown" in lost:
        return "not torn down"
    return "packets dropped"  # pragma: no cover - every phase is named above


# How bad an outcome is, for choosing the instance a report row shows.
SEVERITY = ("not set up", "callback refused", "text session", "keep-alive", "text message",
            "set up, but no", "set up, but", "not torn down")


def severity(outcome: FlowOutcome) -> int:
    """0 for the worst outcome; passed flows rank last."""
    if outcome.passed:
        return len(SEVERITY)
    return next((i for i, words in enumerate(SEVERITY) if outcome.broke.startswith(words)), len(SEVERITY) - 1)
