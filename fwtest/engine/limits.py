"""Token buckets for ``limit`` / ``hashlimit`` matches, driven by packet timestamps.

The kernel's xt_limit and xt_hashlimit keep "credits": a bucket that holds at
most ``burst`` packets, starts full, refills at ``rate`` packets per second,
and pays one packet per match that is under the limit (xt_limit.c
``limit_mt``; xt_hashlimit.c ``hashlimit_mt_common``, which also pays when
the result is then inverted for ``--hashlimit-above``). The kernel counts in
jiffies; here time is continuous, which differs by at most one jiffy of refill.

A hashlimit entry the kernel expired (idle longer than --hashlimit-htable-expire)
comes back full; a bucket idle that long here has refilled anyway unless the
expiry is shorter than ``burst / rate``.
"""

from __future__ import annotations

from fwtest.rules.ir import LimitMatch


class TokenBucket:
    __slots__ = ("tokens", "last", "rate", "burst")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        """Refill up to ``now`` and pay one packet. True while under the limit."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _masked(addr: int, family: int, prefix: int | None) -> int:
    if prefix is None:
        return addr
    bits = 32 if family == 4 else 128
    prefix = min(prefix, bits)
    return addr >> (bits - prefix) if prefix else 0


class LimitState:
    """All buckets of one engine run. Rules share a table when they share a
    hashlimit name (as ``--hashlimit-name`` does), else each rule has its own."""

    def __init__(self) -> None:
        self._tables: dict[object, dict[tuple, TokenBucket]] = {}

    def table(self, owner: object) -> dict[tuple, TokenBucket]:
        return self._tables.setdefault(owner, {})

    def reset(self) -> None:
        """Full buckets again. Emptied in place: compiled rules hold these tables."""
        for table in self._tables.values():
            table.clear()


def bucket_key(limit: LimitMatch, family: int, src: int, dst: int, sport: int, dport: int) -> tuple:
    """The hashlimit key of a packet: the ``per`` fields, addresses cut to their prefix."""
    if not limit.per:
        return ()   # one bucket for the rule, whatever the family (xt_limit, nft limit)
    key: list[int] = [family]
    for field in limit.per:
        if field == "src":
            key.append(_masked(src, family, limit.src_prefix))
        elif field == "dst":
            key.append(_masked(dst, family, limit.dst_prefix))
        elif field == "sport":
            key.append(sport)
        elif field == "dport":
            key.append(dport)
    return tuple(key)
