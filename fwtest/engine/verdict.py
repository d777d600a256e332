"""What the engine says about one packet."""

from __future__ import annotations

from typing import NamedTuple

from fwtest.rules.ir import Rule, Source


class Verdict(NamedTuple):
    verdict: str                 # "accept" | "drop" | "reject"
    rule: Rule | None            # the deciding rule; None when a policy or conntrack decided
    source: Source | None        # where the decision is written: the rule's or the policy's line
    state: str                   # conntrack state the rules saw: new, established, related, invalid, untracked
    trace: tuple[Rule, ...] = ()  # rules that matched on the way, in order (jumps, logs, the decision)
    reason: str = ""             # why, in words, when no rule decided: "policy drop (FORWARD)",
                                 # "fragment never completed", ...

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"
