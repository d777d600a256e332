"""Reading a set of packets back: a few rectangles a person can check, and points in them.

A region (a BDD) is read as the disjoint cubes of its paths, lowest values
first; each cube is a product of per-field bit patterns, which become
intervals (a prefix pattern is a CIDR block or an aligned port block). Cubes
that differ in one field only are merged, repeatedly, so a /24 minus one host
reads as two address ranges, not as eight blocks. What comes out is exact:
every rectangle lies inside the region and together they cover it (unless
the summary says it was truncated).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fwtest.rules.ir import PROTO_NAMES
from fwtest.space.header import FRAG_NAMES, STATE_NAMES, HeaderSpace

Intervals = tuple[tuple[int, int], ...]
MAX_CUBES = 4096
MAX_FIELD_INTERVALS = 64
# Fields a rectangle is made of, in reading order; "fam" is never merged.
RECT_FIELDS = ("fam", "proto", "src", "dst", "sport", "dport", "flags", "state", "frag", "iif", "oif")
_TCP_FLAG_LETTERS = "UAPRSF"  # bit 5 .. bit 0 of the flags field


def _normalise(intervals: list[tuple[int, int]], step: int = 1) -> Intervals:
    """Sorted, overlapping and adjacent intervals joined (``step`` 2: values of one parity)."""
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + step:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def _pattern_intervals(bits: list[bool | None]) -> tuple[Intervals, int | None] | None:
    """Intervals of the values matching a bit pattern (MSB first, None = free), and the
    parity the last bit fixes when the others leave it apart (RTP on even ports)."""
    parity = None
    if len(bits) > 1 and bits[-1] is not None and any(b is None for b in bits[:-1]):
        parity = int(bits[-1])
        bits = [*bits[:-1], None]
    width = len(bits)
    last_fixed = max((i for i, b in enumerate(bits) if b is not None), default=-1)
    head = bits[:last_fixed + 1]
    free_head = [i for i, b in enumerate(head) if b is None]
    if 2 ** len(free_head) > MAX_FIELD_INTERVALS:
        return None
    block = 2 ** (width - last_fixed - 1)
    out = []
    for combo in range(2 ** len(free_head)):
        value = 0
        k = 0
        for b in head:
            if b is None:
                bit = (combo >> (len(free_head) - 1 - k)) & 1
                k += 1
            else:
                bit = int(b)
            value = (value << 1) | bit
        lo = value * block
        out.append((lo, lo + block - 1))
    return _normalise(out), parity


@dataclass(frozen=True)
class Rect:
    """A product of per-field value sets, inside a region. Each field is a tuple of
    intervals and a parity (0: even values only, 1: odd only, None: all)."""

    fields: tuple[tuple[str, Intervals, int | None], ...]   # in RECT_FIELDS order

    def get(self, name: str) -> Intervals:
        return next(ivs for n, ivs, _ in self.fields if n == name)

    def parity(self, name: str) -> int | None:
        return next(p for n, _, p in self.fields if n == name)

    @property
    def family(self) -> int:
        return 4 if self.get("fam")[0][0] == 0 else 6

    def values(self, name: str) -> tuple[Intervals, int | None]:
        return next((ivs, p) for n, ivs, p in self.fields if n == name)

    def contains(self, name: str, value: int) -> bool:
        ivs, parity = self.values(name)
        return (parity is None or value & 1 == parity) and any(lo <= value <= hi for lo, hi in ivs)

    def lowest(self, name: str) -> int:
        ivs, parity = self.values(name)
        for lo, hi in ivs:
            v = lo if parity is None or lo & 1 == parity else lo + 1
            if v <= hi:
                return v
        raise ValueError(f"empty field {name}")  # pragma: no cover - rects are never empty

    def point(self, hints: Mapping[str, int] | None = None) -> dict[str, int]:
        """One packet of the rectangle: the hinted value of a field when it lies inside,
        else the field's lowest value."""
        out = {}
        for name, _, _ in self.fields:
            hint = None if hints is None else hints.get(name)
            out[name] = hint if hint is not None and self.contains(name, hint) else self.lowest(name)
        return out

    def size(self) -> int:
        n = 1
        for _, ivs, parity in self.fields:
            total = sum(hi - lo + 1 for lo, hi in ivs)
            if parity is not None:
                total = sum(len(range(lo + ((parity - lo) & 1), hi + 1, 2)) for lo, hi in ivs)
            n *= total
        return n

    def to_json(self, space: HeaderSpace) -> dict[str, Any]:
        fam = self.family
        out: dict[str, Any] = {"family": fam}
        for name, ivs, parity in self.fields:
            if name == "fam":
                continue
            if parity is not None:
                # Show the first and last value of the parity: 16384-32766 even.
                ivs = tuple((lo + ((parity - lo) & 1), hi - ((hi - parity) & 1)) for lo, hi in ivs)
            text = _field_text(space, name, ivs, fam, self)
            if text is not None:
                out[name] = text
                if parity is not None and any(lo != hi for lo, hi in ivs):
                    out[f"{name}_parity"] = "odd" if parity else "even"
        return out

    def describe(self, space: HeaderSpace) -> str:
        j = self.to_json(space)
        parts = [f"IPv{j.pop('family')}"]
        icmp = j.get("proto") in ("icmp", "icmpv6")
        names = {"sport": "icmp-type", "dport": "icmp-code"} if icmp else {}
        for key in ("proto", "src", "sport", "dst", "dport", "flags", "state", "frag", "iif", "oif"):
            if key in j:
                value = j[key]
                text = ", ".join(value) if isinstance(value, list) else value
                if f"{key}_parity" in j:
                    text += f" ({j[f'{key}_parity']})"
                parts.append(f"{names.get(key, key)} {text}")
        return " ".join(parts)


def _full(space: HeaderSpace, name: str, ivs: Intervals, fam: int) -> bool:
    width = space.widths[name]
    top = 2 ** width - 1
    if name in ("src", "dst") and fam == 4:
        top = 2 ** 32 - 1
    if name in ("iif", "oif"):
        top = len(space.ifaces) - 1
    if name == "state":
        top = len(STATE_NAMES) - 1
    return ivs == ((0, top),)


def _field_text(space: HeaderSpace, name: str, ivs: Intervals, fam: int, rect: Rect) -> Any:
    """The field as text, or None when it says nothing (any value, or not applicable)."""
    if name in ("src", "dst"):
        if _full(space, name, ivs, fam):
            return ["any"]
        return [_addr_text(lo, hi, fam) for lo, hi in ivs]
    if name in ("sport", "dport"):
        protos = {p for lo, hi in rect.get("proto") for p in range(lo, hi + 1)}
        icmp = 1 if fam == 4 else 58
        if protos == {icmp} and rect.get("frag") != ((2, 2),):
            if ivs == ((0, 255),):
                return None
            return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ivs]
        if not protos & {6, 17, 132, 136} or rect.get("frag") == ((2, 2),):
            return None  # no ports on these packets
        if _full(space, name, ivs, fam):
            return ["any"]
        return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ivs]
    if name == "proto":
        if _full(space, name, ivs, fam):
            return "any"
        return ",".join(PROTO_NAMES.get(p, str(p)) for lo, hi in ivs for p in range(lo, hi + 1))
    if name == "flags":
        if rect.get("proto") != ((6, 6),) or _full(space, name, ivs, fam):
            return None
        return [_flags_text(v) for lo, hi in ivs for v in range(lo, min(hi, lo + 15) + 1)]
    if name == "state":
        if _full(space, name, ivs, fam):
            return None
        return ",".join(STATE_NAMES[v] for lo, hi in ivs for v in range(lo, hi + 1))
    if name == "frag":
        if ivs == ((0, 0),) or _full(space, name, (*ivs, ), fam) or ivs == ((0, 2),):
            return None
        return ",".join(FRAG_NAMES[v] for lo, hi in ivs for v in range(lo, hi + 1))
    if name in ("iif", "oif"):
        if _full(space, name, ivs, fam):
            return None
        return ",".join(str(space.ifaces[v]) if space.ifaces[v] is not None else "(none)"
                        for lo, hi in ivs for v in range(lo, hi + 1))
    return None


def _flags_text(value: int) -> str:
    letters = "".join(ch for i, ch in enumerate(_TCP_FLAG_LETTERS) if value & (1 << (5 - i)))
    # Conventional order: S, A, F, R, P, U as tcpdump prints them.
    order = "SAFRPU"
    return "".join(sorted(letters, key=order.index)) or "none"


def _addr_text(lo: int, hi: int, fam: int) -> str:
    cls = ipaddress.IPv4Address if fam == 4 else ipaddress.IPv6Address
    first, last = cls(lo), cls(hi)
    nets = list(ipaddress.summarize_address_range(first, last))
    if len(nets) == 1:
        net = nets[0]
        return str(net.network_address) if net.num_addresses == 1 else str(net)
    if len(nets) <= 3:
        return ", ".join(str(n) for n in nets)
    return f"{first}-{last}"


@dataclass(frozen=True)
class Summary:
    rects: tuple[Rect, ...]        # up to the asked number, lowest first
    total_rects: int               # rectangles found after merging
    count: int                     # packets in the region
    truncated: bool                # more cubes than read: rects cover only part of the region

    def to_json(self, space: HeaderSpace) -> dict[str, Any]:
        return {"rectangles": [r.to_json(space) for r in self.rects],
                "more": self.total_rects - len(self.rects), "packets": self.count,
                "truncated": self.truncated}

    def describe(self, space: HeaderSpace) -> list[str]:
        lines = [r.describe(space) for r in self.rects]
        rest = self.total_rects - len(self.rects)
        if rest > 0 or self.truncated:
            lines.append(f"... and {rest if rest > 0 else 'more'} more rectangles"
                         f" ({self.count} packets in all)")
        return lines


def cubes(space: HeaderSpace, u: Any, limit: int = MAX_CUBES) -> tuple[list[dict[str, bool]], bool]:
    """Disjoint cubes (partial assignments) whose union is ``u``, lowest values first."""
    true, false = space.true, space.false
    out: list[dict[str, bool]] = []
    truncated = False
    # ``low``/``high`` give a node's stored children; with complemented edges
    # (CUDD) the function below an edge is negated when an odd number of the
    # edges above it are: the walk carries that parity.
    stack: list[tuple[Any, bool, dict[str, bool]]] = [(u, False, {})]
    while stack:
        node, negated, assign = stack.pop()
        if node in (true, false):
            if (node == true) != negated:
                out.append(assign)
                if len(out) >= limit:
                    truncated = bool(stack)
                    break
            continue
        var = node.var
        parity = negated ^ node.negated
        # Push high first so the low (0) branch is read first: lowest values first.
        stack.append((node.high, parity, {**assign, var: True}))
        stack.append((node.low, parity, {**assign, var: False}))
    return out, truncated


def _cube_rect(space: HeaderSpace, cube: Mapping[str, bool]) -> Rect | None:
    fields = []
    for name in RECT_FIELDS:
        got = _pattern_intervals([cube.get(v) for v in space.vars[name]])
        if got is None:
            return None
        fields.append((name, got[0], got[1]))
    return Rect(tuple(fields))


def _split_rect(space: HeaderSpace, cube: Mapping[str, bool]) -> list[Rect]:
    """A cube whose pattern is not a few intervals: fix its free high bits one by one."""
    for name in RECT_FIELDS:
        bits = [cube.get(v) for v in space.vars[name]]
        if _pattern_intervals(bits) is None:
            first_free = next(i for i, b in enumerate(bits) if b is None)
            var = space.vars[name][first_free]
            out = []
            for value in (False, True):
                sub = {**cube, var: value}
                rect = _cube_rect(space, sub)
                out.extend([rect] if rect is not None else _split_rect(space, sub))
                if len(out) > MAX_CUBES:
                    break
            return out
    rect = _cube_rect(space, cube)
    return [rect] if rect is not None else []


def _single(ivs: Intervals) -> int | None:
    return ivs[0][0] if len(ivs) == 1 and ivs[0][0] == ivs[0][1] else None


def _clusters(group: list[Rect], i: int) -> list[tuple[int | None, list[Rect]]]:
    """Members of a merge group that can share one parity: a single value joins the
    cluster of its own parity (20002 joins 20004-32766 even)."""
    clusters: dict[int | None, list[Rect]] = {}
    singles = []
    for r in group:
        _, ivs, parity = r.fields[i]
        if parity is None and _single(ivs) is not None:
            singles.append(r)
        else:
            clusters.setdefault(parity, []).append(r)
    for r in singles:
        value = _single(r.fields[i][1])
        target = value & 1 if value is not None and (value & 1) in clusters else None
        clusters.setdefault(target, []).append(r)
    return list(clusters.items())


def merge_rects(rects: list[Rect]) -> list[Rect]:
    """Merge rectangles equal in every field but one (never across address families,
    nor across parities)."""
    current = list(dict.fromkeys(rects))
    changed = True
    while changed and len(current) > 1:
        changed = False
        for i, name in enumerate(RECT_FIELDS):
            if name == "fam":
                continue
            groups: dict[tuple, list[Rect]] = {}
            for r in current:
                groups.setdefault((r.fields[:i], r.fields[i + 1:]), []).append(r)
            if all(len(g) == 1 for g in groups.values()):
                continue
            merged = []
            for (before, after), group in groups.items():
                for parity, members in _clusters(group, i):
                    if len(members) == 1:
                        merged.append(members[0])
                        continue
                    ivs = _normalise([iv for r in members for iv in r.fields[i][1]],
                                     1 if parity is None else 2)
                    merged.append(Rect((*before, (name, ivs, parity), *after)))
                    changed = True
            current = merged
    return sorted(current, key=lambda r: tuple(ivs[0][0] for _, ivs, _ in r.fields))


def summarise(space: HeaderSpace, u: Any, *, max_rects: int = 4, max_cubes: int = MAX_CUBES) -> Summary:
    """The region as a few rectangles (all of them exact, lowest first)."""
    if u == space.false:
        return Summary((), 0, 0, False)
    found, truncated = cubes(space, u, max_cubes)
    rects: list[Rect] = []
    for cube in found:
        rects.extend(_split_rect(space, cube))
    merged = merge_rects(rects)
    return Summary(tuple(merged[:max_rects]), len(merged), space.count(u), truncated)


def point_bdd(space: HeaderSpace, point: Mapping[str, int]) -> Any:
    """The single packet header ``point`` as a set (to check it lies in a region)."""
    u = space.true
    for name, value in point.items():
        u &= space.eq(name, value)
    return u


def rect_bdd(space: HeaderSpace, rect: Rect) -> Any:
    """A rectangle back as a set (what it says, exactly)."""
    u = space.true
    for name, ivs, parity in rect.fields:
        f = space.false
        for lo, hi in ivs:
            f |= space.range(name, lo, hi)
        if parity is not None:
            last = space.bdd.var(space.vars[name][-1])
            f &= last if parity else ~last
        u &= f
    return u & space.domain
