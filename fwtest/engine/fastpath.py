"""The engine at capture speed: whole runs of a flow's packets decided at once, same verdicts.

What decides a packet's verdict in the engine is its header fields, the
conntrack state the rules see, and whatever payload or token bucket a rule
looks at. Within an established UDP stream (RTP, RTCP: the bulk of call
traffic) the header fields of one direction never change and neither does
the state class, so every packet of that direction gets the verdict of the
first -- unless a rule on its walk reads the payload (``string``, ``sip``),
pays a token (``limit``) or has a side effect (``notrack``, ``ct helper``),
or the connection times out, or the SIP helper runs on it. The packet's only
effect on the engine is then its connection's timeout (and "assured").

``FastEngine.decide`` takes a ``FrameChunk`` and gives every row its verdict:

* Rows of plain UDP (no IP options or extension headers, not fragments) are
  grouped by conversation (both directions of one address/port pair, which
  share one conntrack entry). For each conversation the longest run of rows
  the cache can decide is found with numpy: the connection exists, is
  confirmed, has no helper; each row's direction has a cached verdict for
  the state class it would see (computed once by walking the rules on a
  real packet, refusing any walk that touches payload, buckets or side
  effects); no row is a first reply (it would change the class); and no
  gap between consecutive rows reaches the timeout the engine would have
  set (``t[k] < t[k-1] + timeout(t[k-1])``, the engine's own sums).
* Every other row goes through ``Engine.feed`` in capture order, exactly as
  the plain engine would meet it. Before it, the cached runs are made
  effective on the conntrack entries it can read: its own conversation's, the
  conversations of a fragment's address pair, every one before an ICMP
  error (which quotes any flow). After it, the conversations it touched are
  decided again from the next row on.
* Rows of a conversation without a conntrack entry that the rules drop are
  cached too (a broken ruleset drops whole calls): such a packet's entry is
  never confirmed, so it leaves nothing behind -- unless a SIP helper
  expectation waits for it, which the cache checks after every packet the
  helper may have read.
* The kernel-like garbage collection (``ConntrackTable.sweep``, every
  SWEEP_EVERY lookups) runs at exactly the lookup the plain engine runs it
  at, on entries brought up to date first: cached rows count their lookups.

This relies on timestamps that never go back: a chunk whose timestamps
decrease anywhere, or start before the latest one already seen, is fed to
the engine row by row. (Then an expired entry is the only thing a sweep or an
ICMP error can remove, and no cached run outlives its entry.) With that, the
verdicts are the plain engine's, packet for packet; tests/engine/test_fastpath.py
checks it on generated traffic and on real captures.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from fwtest.engine import conntrack as _conntrack
from fwtest.engine.limits import LimitState
from fwtest.engine.match import Test, compile_match
from fwtest.engine.packet import PacketView
from fwtest.engine.replay import CHAINS, CONFIRM, LOOKUP, Acceptance, Engine, decided
from fwtest.engine.verdict import Verdict
from fwtest.engine.walk import ACCEPT, CT_HELPER, DROP, GOTO, JUMP, LOG, REJECT, RETURN, CompiledBase
from fwtest.rules.ir import Rule
from fwtest.traffic.pcapfast import KIND_OTHER, FrameChunk
from fwtest.traffic.record import NOT_FRAGMENT, PacketRecord

ICMP_ERRORS_V4 = frozenset({3, 4, 5, 11, 12})
_UNCACHEABLE = object()
_MISSING = object()

# Orientation of a record: (the record with its interfaces, the path it takes, whether
# its addresses are outside the profile).
Orient = Callable[[PacketRecord], tuple[PacketRecord, str, bool]]


# ----------------------------------------------------------------------------- walks without effects

class PureWalk:
    """The verdict a packet of a known state class gets, if it depends on nothing else.

    A copy of ``Engine._traverse`` for one non-fragment packet of an existing,
    confirmed connection without helper, that gives up (None) where the
    engine would read the payload, pay a token or change state.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The tests of a rule that also has payload or bucket tests, without those.
        # compile_match orders them last (match.py: L7 late, limit last), so the
        # engine reaches them exactly when all of these pass.
        self.partial: dict[int, tuple[Test, ...]] = {}
        scratch = LimitState()
        for chain in engine.compiled.chains.values():
            for cr in chain.rules:
                m = cr.rule.match
                if m.string or m.sip is not None or m.limit is not None:
                    tests, _ = compile_match(replace(m, string=(), sip=None, limit=None), cr.rule, scratch)
                    extra = len(m.string) + (m.sip is not None) + (m.limit is not None)
                    if len(tests) + extra != len(cr.tests):  # pragma: no cover - guards match.py's layout
                        raise RuntimeError(f"rule {cr.rule.id}: compiled tests do not line up")
                    self.partial[id(cr)] = tests

    def verdict(self, record: PacketRecord, path: str, conn, reply: bool, ctinfo: str) -> Verdict | None:
        engine = self.engine
        p = PacketView(record, engine._initial_state)
        trace: list[Rule] = []
        decision = Acceptance()
        for kind, arg in engine.pipeline(path, record.family):
            if kind == CHAINS:
                hook, bases = arg  # type: ignore[misc]
                p.at_hook(hook)
                for cb in bases:
                    result = self._walk(cb, p, trace)
                    if result is None:
                        return None
                    code, rule = result
                    if code == ACCEPT:
                        decision.accepted(cb, rule, hook)
                        continue
                    return decided(code, rule, cb, p, trace)
            elif kind == LOOKUP:
                # nf_conntrack_in on an existing entry: the state the rules see from here on.
                p.looked_up = True
                p.conn, p.reply, p.ctinfo, p.state = conn, reply, ctinfo, ctinfo
            elif kind == CONFIRM:
                pass          # confirmed entry, no helper: nf_confirm does nothing
            # DEFRAG: the packet is not a fragment
        return Verdict("accept", decision.rule, decision.source, p.state, tuple(trace), decision.reason)

    def _walk(self, cb: CompiledBase, p: PacketView, trace: list[Rule]) -> tuple[int, Rule | None] | None:
        """``walk.walk_base``, or None where its result would depend on more than the class."""
        partial = self.partial
        stack: list[tuple[tuple, int]] = []
        rules = cb.chain.rules
        i = 0
        while True:
            if i >= len(rules):
                if not stack:
                    return (ACCEPT if cb.base.policy == "accept" else DROP), None
                rules, i = stack.pop()
                continue
            cr = rules[i]
            i += 1
            tests = partial.get(id(cr))
            for test in (cr.tests if tests is None else tests):
                if not test(p):
                    break
            else:
                if tests is not None:
                    return None           # the payload or bucket tests would run
                kind = cr.kind
                trace.append(cr.rule)
                if kind <= REJECT:
                    return kind, cr.rule
                if kind == JUMP:
                    stack.append((rules, i))
                    rules, i = cr.target.rules, 0   # type: ignore[union-attr]
                elif kind == GOTO:
                    rules, i = cr.target.rules, 0   # type: ignore[union-attr]
                elif kind == RETURN:
                    if not stack:
                        return (ACCEPT if cb.base.policy == "accept" else DROP), None
                    rules, i = stack.pop()
                elif kind != LOG:
                    return None           # notrack, ct helper: a side effect on the packet or its entry


# ----------------------------------------------------------------------------- per-chunk results

class ChunkVerdicts:
    """The verdicts of one chunk's rows: ``vid[i]`` indexes ``table`` (-1: not decided yet)."""

    def __init__(self, chunk: FrameChunk) -> None:
        n = len(chunk)
        self.chunk = chunk
        self.vid = np.full(n, -1, np.int32)
        self.table: list[Verdict] = []
        self._ids: dict[int, int] = {}
        self.undecided = n
        self.records: dict[int, PacketRecord] = {}      # rows fed to the engine, with interfaces
        self.outside = 0                                 # rows outside the profile's addresses
        self.fast = np.zeros(n, bool)
        # Conversation of each plain UDP row (-1 for the others) and its direction (0: lo -> hi).
        self.conv = np.full(n, -1, np.int32)
        self.dirs = np.zeros(n, np.int8)
        self.convs: list[Conversation] = []
        self.index: dict[tuple, Conversation] | None = None
        self.unanswered: set[Conversation] = set()      # decided without an entry, while expectations may come
        self.monotonic = False

    def vid_of(self, v: Verdict) -> int:
        found = self._ids.get(id(v))
        if found is None:
            found = self._ids[id(v)] = len(self.table)
            self.table.append(v)
        return found

    def set(self, row: int, v: Verdict) -> None:
        if self.vid[row] < 0:
            self.undecided -= 1
        self.table.append(v)
        self.vid[row] = len(self.table) - 1

    def mark(self, rows: np.ndarray, vids: np.ndarray) -> None:
        self.vid[rows] = vids
        self.fast[rows] = True
        self.undecided -= len(rows)

    def unmark(self, rows: np.ndarray) -> None:
        self.vid[rows] = -1
        self.fast[rows] = False
        self.undecided += len(rows)

    def verdict(self, row: int) -> Verdict:
        return self.table[self.vid[row]]

    def record(self, row: int) -> PacketRecord:
        """The row's record with the interfaces it crossed."""
        found = self.records.get(row)
        if found is not None:
            return found
        c = self.conv[row]
        side = self.convs[c].sides[self.dirs[row]]
        return self.chunk.record(row)._replace(iface_in=side.iface_in, iface_out=side.iface_out)


class Side:
    """One direction of a conversation: how it crosses the firewall, and a packet of it."""

    __slots__ = ("record", "path", "outside", "iface_in", "iface_out", "key")

    def __init__(self, record: PacketRecord, path: str, outside: bool) -> None:
        self.record = record
        self.path = path
        self.outside = outside
        self.iface_in = record.iface_in
        self.iface_out = record.iface_out
        self.key = (record.family, 17, record.src, record.dst, record.sport, record.dport, 0)


class Conversation:
    """Both directions of one UDP address/port pair: one conntrack entry at a time."""

    __slots__ = ("key", "sides", "conn", "cache", "unanswered", "rows", "dirs", "ts", "seg_end", "applied")

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.sides: list[Side | None] = [None, None]
        self.conn = None                 # the entry the cached verdicts are for
        self.cache: dict[tuple[int, str], object] = {}
        self.unanswered: dict[int, object] = {}   # per direction: the verdict of a packet without an entry
        self.rows = np.zeros(0, np.int64)
        self.dirs = np.zeros(0, np.int8)
        self.ts = np.zeros(0, np.float64)
        self.seg_end = 0                 # rows[applied:seg_end] are decided by the cache
        self.applied = 0                 # ... and rows before ``applied`` are in the conntrack entry


# ----------------------------------------------------------------------------- the engine at speed

class FastEngine:
    """An ``Engine`` fed a chunk at a time (``decide``), then ``finish``ed at the end of the capture.

    ``orient(record)`` gives a record its interfaces, its path through the
    firewall and whether its addresses are outside the profile (as
    ``fwtest.replay.Orientation.oriented`` does).
    """

    def __init__(self, engine: Engine, orient: Orient) -> None:
        self.engine = engine
        self.orient = orient
        self.ct = engine.conntrack
        self.pure = PureWalk(engine)
        self.convs: dict[tuple, Conversation] = {}
        self.pending: dict[int, tuple[ChunkVerdicts, int]] = {}   # engine index -> row awaiting its verdict
        self.latest = -np.inf            # the latest timestamp seen so far
        self.sync_pos = 0                # rows of the chunk before this one have their lookups counted
        if self.ct is not None:
            self.udp = self.ct.timeout("udp")
            self.udp_stream = self.ct.timeout("udp_stream")
        # Can a helper expectation appear (the SIP helper on its ports, or a ct helper rule)?
        self.expecting = self.ct is not None and (self.ct.auto_sip or any(
            cr.kind == CT_HELPER for chain in engine.compiled.chains.values() for cr in chain.rules))

    # -- feeding the plain engine -------------------------------------------------------------

    def _feed(self, d: ChunkVerdicts, row: int, record: PacketRecord, path: str) -> None:
        index = self.engine._count
        self.pending[index] = (d, row)
        for i, v in self.engine.feed(record, path):
            dd, r = self.pending.pop(i)
            dd.set(r, v)

    def finish(self) -> None:
        """End of the capture: held fragments are dropped."""
        for i, v in self.engine.finish():
            dd, r = self.pending.pop(i)
            dd.set(r, v)

    # -- one chunk -------------------------------------------------------------------------------

    def decide(self, chunk: FrameChunk) -> ChunkVerdicts:
        d = ChunkVerdicts(chunk)
        n = len(chunk)
        if not n:
            return d
        ts = chunk.ts
        d.monotonic = bool(ts[0] >= self.latest and (n == 1 or np.all(ts[1:] >= ts[:-1])))
        self.latest = max(self.latest, float(ts.max()))
        if not d.monotonic:
            for i in range(n):
                self._feed_other(d, i)
            return d
        self._group(d)
        events = self._first_segments(d)
        heapq.heapify(events)
        others = np.flatnonzero(d.conv < 0).tolist()
        self.sync_pos = 0
        k = 0
        while True:
            nxt_other = others[k] if k < len(others) else n
            nxt_conv = events[0] if events else n
            if nxt_other >= n and nxt_conv >= n:
                break
            if nxt_other < nxt_conv:
                k += 1
                self._sync(d, nxt_other)
                self._other_row(d, nxt_other, events)
            else:
                row = heapq.heappop(events)
                c = d.convs[d.conv[row]]
                pos = int(np.searchsorted(c.rows, row))
                if pos != c.seg_end or d.vid[row] >= 0:
                    continue              # stale: the conversation was decided again since
                self._sync(d, row)
                self._conv_row(d, c, pos, events)
        self._sync(d, n)
        self._flush_all(d, n)
        # Conversations not in this chunk keep nothing worth keeping: their entries may
        # be gone, and a cache is cheap to rebuild.
        self.convs = {c.key: c for c in d.convs}
        for c in d.convs:
            c.rows = c.ts = np.zeros(0)
            c.dirs = np.zeros(0, np.int8)
        return d

    def _feed_other(self, d: ChunkVerdicts, row: int) -> None:
        record, path, outside = self.orient(d.chunk.record(row))
        d.records[row] = record
        d.outside += outside
        self._feed(d, row, record, path)

    # -- conversations -----------------------------------------------------------------------

    def _group(self, d: ChunkVerdicts) -> None:
        """Give each plain UDP row its conversation and direction."""
        chunk = d.chunk
        rows = np.flatnonzero(chunk.kind != KIND_OTHER)
        if not len(rows):
            return
        shi, slo, sp = chunk.src_hi[rows], chunk.src_lo[rows], chunk.sport[rows].astype(np.uint64)
        dhi, dlo, dp = chunk.dst_hi[rows], chunk.dst_lo[rows], chunk.dport[rows].astype(np.uint64)
        fwd = (shi < dhi) | ((shi == dhi) & ((slo < dlo) | ((slo == dlo) & (sp <= dp))))
        ahi, alo, ap = np.where(fwd, shi, dhi), np.where(fwd, slo, dlo), np.where(fwd, sp, dp)
        bhi, blo, bp = np.where(fwd, dhi, shi), np.where(fwd, dlo, slo), np.where(fwd, dp, sp)
        kind = chunk.kind[rows].astype(np.uint64)
        with np.errstate(over="ignore"):
            h = kind * np.uint64(0x9E3779B97F4A7C15)
            for col, mult in ((ahi, 0xBF58476D1CE4E5B9), (alo, 0x94D049BB133111EB), (ap, 0xD6E8FEB86659FD93),
                              (bhi, 0xC2B2AE3D27D4EB4F), (blo, 0x165667B19E3779F9), (bp, 0x27D4EB2F165667C5)):
                h = (h ^ (col * np.uint64(mult))) * np.uint64(0xFF51AFD7ED558CCD)
                h ^= h >> np.uint64(29)
        order = np.argsort(h, kind="stable")
        hs = h[order]
        starts = np.flatnonzero(np.concatenate(([True], hs[1:] != hs[:-1])))
        ends = np.append(starts[1:], len(order))
        # A hash collision must not merge two conversations: compare every field with the
        # group's first row, and leave colliding groups to the plain engine.
        first = np.repeat(order[starts], ends - starts)
        same = np.ones(len(order), bool)
        for col in (kind, ahi, alo, ap, bhi, blo, bp):
            same &= col[order] == col[first]
        bad = set(np.repeat(np.arange(len(starts)), ends - starts)[~same].tolist())
        dirs = (~fwd).astype(np.int8)
        d.dirs[rows] = dirs
        ts = d.chunk.ts
        for g, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            if g in bad:
                continue
            members = order[s:e]
            j = int(members[0])
            key = (int(kind[j]), int(ahi[j]), int(alo[j]), int(ap[j]), int(bhi[j]), int(blo[j]), int(bp[j]))
            c = self.convs.get(key)
            if c is None:
                c = Conversation(key)
            c.rows = rows[members]
            c.dirs = dirs[members]
            c.ts = ts[c.rows]
            c.seg_end = c.applied = 0
            d.conv[c.rows] = len(d.convs)
            d.convs.append(c)

    def _side(self, d: ChunkVerdicts, c: Conversation, direction: int) -> Side | None:
        side = c.sides[direction]
        if side is None:
            where = np.flatnonzero(c.dirs == direction)
            if not len(where):
                return None
            record, path, outside = self.orient(d.chunk.record(int(c.rows[where[0]])))
            side = c.sides[direction] = Side(record, path, outside)
        return side

    def _class_verdict(self, d: ChunkVerdicts, c: Conversation, direction: int, conn, reply: bool,
                       ctinfo: str) -> int:
        """The chunk's verdict id for rows of ``direction`` in state ``ctinfo``, or -1."""
        cached = c.cache.get((direction, ctinfo), _MISSING)
        if cached is _MISSING:
            side = self._side(d, c, direction)
            if side is None:
                return -1
            v = self.pure.verdict(side.record, side.path, conn, reply, ctinfo)
            cached = c.cache[(direction, ctinfo)] = _UNCACHEABLE if v is None else v
        return -1 if cached is _UNCACHEABLE else d.vid_of(cached)  # type: ignore[arg-type]

    def _classes(self, d: ChunkVerdicts, c: Conversation, pos: int) -> tuple[int, int, object, bool] | None:
        """How the cache can decide ``c``'s rows from ``pos`` on: the verdict id of each direction's
        rows (-1: not cacheable), the conntrack entry whose timeout bounds the run (None: no
        timeout), and whether the rows have no entry at all; None when nothing can be cached."""
        ct = self.ct
        if ct is None:
            return (self._class_verdict(d, c, 0, None, False, "untracked"),
                    self._class_verdict(d, c, 1, None, False, "untracked"), None, False)
        side = self._side(d, c, int(c.dirs[pos]))
        found = ct.entries.get(side.key)
        if found is None:
            c.conn = None
            return self._unanswered_verdict(d, c, 0), self._unanswered_verdict(d, c, 1), None, True
        conn, reply = found
        if conn.dead or conn.helper is not None or not conn.confirmed:
            return None
        if c.conn is not conn:
            c.conn = conn
            c.cache.clear()
        seen = conn.seen_reply
        vids = [-1, -1]
        first = int(c.dirs[pos])
        for direction in (0, 1):
            r = reply if direction == first else not reply
            if r and not seen:
                continue              # the first reply changes the state: the engine's
            ctinfo = "established" if seen else ("related" if conn.expected else "new")
            vids[direction] = self._class_verdict(d, c, direction, conn, r, ctinfo)
        return vids[0], vids[1], conn, False

    def _unanswered_verdict(self, d: ChunkVerdicts, c: Conversation, direction: int) -> int:
        """Rows of a conversation without a conntrack entry, which the rules drop.

        Such a packet gets a new, unconfirmed entry at the lookup, which is
        forgotten when the packet is dropped: nothing changes but the lookup
        count. Not so when a helper expectation waits for it (it is used up),
        or when the rules accept it (its entry is confirmed).
        """
        side = self._side(d, c, direction)
        if side is None:
            return -1
        r = side.record
        if self.ct.expectations.get((r.family, r.src, r.dst, r.dport)) is not None:
            return -1
        cached = c.unanswered.get(direction, _MISSING)
        if cached is _MISSING:
            key = side.key
            fresh = _conntrack.Connection(key, (key[0], key[1], key[3], key[2], key[5], key[4], key[6]), 0.0)
            v = self.pure.verdict(r, side.path, fresh, False, "new")
            cached = c.unanswered[direction] = _UNCACHEABLE if v is None or v.verdict == "accept" else v
        return -1 if cached is _UNCACHEABLE else d.vid_of(cached)  # type: ignore[arg-type]

    def _segment(self, d: ChunkVerdicts, c: Conversation, pos: int) -> int:
        """Decide ``c``'s rows from ``pos`` on from the cache, as far as it can; returns where it stops."""
        c.seg_end = c.applied = pos
        if pos >= len(c.rows):
            return pos
        classes = self._classes(d, c, pos)
        if classes is None:
            return pos
        v0, v1, conn, unanswered = classes
        vid = np.where(c.dirs[pos:] == 0, v0, v1)
        ok = vid >= 0
        if conn is not None:
            t = c.ts[pos:]
            if conn.seen_reply:
                lim = t + np.where(t > conn.stream_ts, self.udp_stream, self.udp)
            else:
                lim = t + self.udp
            ok[0] &= t[0] < conn.expires
            ok[1:] &= t[1:] < lim[:-1]
        stop = np.flatnonzero(~ok)
        end = pos + (int(stop[0]) if len(stop) else len(vid))
        if end > pos:
            d.mark(c.rows[pos:end], vid[:end - pos])
            if unanswered and self.expecting:
                d.unanswered.add(c)
        c.seg_end = end
        return end

    def _first_segments(self, d: ChunkVerdicts) -> list[int]:
        """``_segment(c, 0)`` for every conversation of the chunk at once; the rows where they stop."""
        convs = d.convs
        if not convs:
            return []
        g = len(convs)
        sizes = np.array([len(c.rows) for c in convs], np.int64)
        offs = np.zeros(g, np.int64)
        np.cumsum(sizes[:-1], out=offs[1:])
        v0 = np.full(g, -1, np.int64)
        v1 = np.full(g, -1, np.int64)
        timed = np.zeros(g, bool)
        expires = np.full(g, np.inf)
        stream_ts = np.full(g, np.inf)
        seen = np.zeros(g, bool)
        unanswered = np.zeros(g, bool)
        for k, c in enumerate(convs):
            c.seg_end = c.applied = 0
            classes = self._classes(d, c, 0)
            if classes is None:
                continue
            v0[k], v1[k], conn, unanswered[k] = classes
            if conn is not None:
                timed[k] = True
                expires[k], stream_ts[k], seen[k] = conn.expires, conn.stream_ts, conn.seen_reply
        rows = np.concatenate([c.rows for c in convs])
        dirs = np.concatenate([c.dirs for c in convs])
        t = np.concatenate([c.ts for c in convs])
        group = np.repeat(np.arange(g), sizes)
        vid = np.where(dirs == 0, v0[group], v1[group])
        ok = vid >= 0
        # The gap check of _segment, every conversation at once: the first row against the
        # entry's timeout, each later one against the timeout its predecessor set.
        prev = np.empty_like(t)
        prev[1:] = t[:-1]
        prev[offs] = 0.0
        lim = prev + np.where(seen[group] & (prev > stream_ts[group]), self.udp_stream if self.ct else 0.0,
                              self.udp if self.ct else 0.0)
        lim[offs] = expires
        ok &= ~timed[group] | (t < lim)
        bad = np.flatnonzero(~ok)
        stop = sizes.copy()
        if len(bad):
            groups, first = np.unique(group[bad], return_index=True)
            stop[groups] = bad[first] - offs[groups]
        fast = (np.arange(len(rows)) - offs[group]) < stop[group]
        d.mark(rows[fast], vid[fast])
        events = []
        for k, c in enumerate(convs):
            end = int(stop[k])
            c.seg_end = end
            if end and unanswered[k] and self.expecting:
                d.unanswered.add(c)
            if end < len(c.rows):
                events.append(int(c.rows[end]))
        return events

    def _expectations_changed(self, d: ChunkVerdicts, row: int, events: list[int]) -> None:
        """After a packet the SIP helper may have read: rows of entry-less conversations that an
        expectation now waits for are decided again."""
        ct = self.ct
        for c in list(d.unanswered):
            pos = int(np.searchsorted(c.rows, row, side="right"))
            if c.conn is not None or pos >= c.seg_end:
                d.unanswered.discard(c)
                continue
            for side in c.sides:
                if side is not None:
                    r = side.record
                    if ct.expectations.get((r.family, r.src, r.dst, r.dport)) is not None:
                        d.unmark(c.rows[pos:c.seg_end])
                        d.unanswered.discard(c)
                        b = self._segment(d, c, pos)
                        if b < len(c.rows):
                            heapq.heappush(events, int(c.rows[b]))
                        break

    def _flush(self, c: Conversation, row: int) -> None:
        """Make the cached rows of ``c`` before ``row`` effective on its conntrack entry."""
        a = c.applied
        if a >= c.seg_end or c.conn is None:
            return
        last = min(int(np.searchsorted(c.rows, row)), c.seg_end) - 1
        if last < a:
            return
        conn = c.conn
        t = float(c.ts[last])
        # nf_conntrack_udp_packet, for the last of them; "assured" once any was a stream packet.
        if conn.seen_reply:
            if float(c.ts[a:last + 1].max()) > conn.stream_ts:
                conn.assured = True
            conn.expires = t + (self.udp_stream if t > conn.stream_ts else self.udp)
        else:
            conn.expires = t + self.udp
        c.applied = last + 1

    def _flush_all(self, d: ChunkVerdicts, row: int) -> None:
        for c in d.convs:
            if c.applied < c.seg_end:
                self._flush(c, row)

    def _sync(self, d: ChunkVerdicts, row: int) -> None:
        """Count the lookups of cached rows before ``row``; sweep where the engine would."""
        ct = self.ct
        if ct is None:
            return
        start = self.sync_pos
        self.sync_pos = row
        if row <= start:
            return
        count = int(np.count_nonzero(d.fast[start:row]))
        if not count:
            return
        every = _conntrack.SWEEP_EVERY
        looked = ct._lookups
        due = (looked // every + 1) * every
        if looked + count >= due:
            fast_rows = np.flatnonzero(d.fast[start:row]) + start
            while looked + count >= due:
                at = int(fast_rows[due - looked - 1])
                now = float(d.chunk.ts[at])
                self._flush_expiring(d, at, now)
                ct.sweep(now)
                due += every
        ct._lookups = looked + count

    def _conv_row(self, d: ChunkVerdicts, c: Conversation, pos: int, events: list[int]) -> None:
        """A row of a conversation the cache cannot decide: through the engine."""
        row = int(c.rows[pos])
        self._flush(c, row)
        self._before_feed(d, row)
        side = self._side(d, c, int(c.dirs[pos]))
        record = d.chunk.record(row)._replace(iface_in=side.iface_in, iface_out=side.iface_out)
        d.records[row] = record
        d.outside += side.outside
        self._feed(d, row, record, side.path)
        if d.unanswered:
            self._expectations_changed(d, row, events)
        b = self._segment(d, c, pos + 1)
        if b < len(c.rows):
            heapq.heappush(events, int(c.rows[b]))

    def _other_row(self, d: ChunkVerdicts, row: int, events: list[int]) -> None:
        record, path, outside = self.orient(d.chunk.record(row))
        d.records[row] = record
        d.outside += outside
        touched = self._touched(d, record)
        if touched is None:
            self._flush_all(d, row)
            touched = []
        else:
            for c in touched:
                self._flush(c, row)
        self._before_feed(d, row)
        self._feed(d, row, record, path)
        if d.unanswered:
            self._expectations_changed(d, row, events)
        for c in touched:
            # Its entry changed: decide the rest again from the next row.
            pos = int(np.searchsorted(c.rows, row, side="right"))
            if pos < c.seg_end:
                d.unmark(c.rows[pos:c.seg_end])
            b = self._segment(d, c, pos)
            if b < len(c.rows):
                heapq.heappush(events, int(c.rows[b]))

    def _flush_expiring(self, d: ChunkVerdicts, row: int, now: float) -> None:
        """Before a sweep at ``now``: make the cached rows before ``row`` effective on the entries
        the sweep could remove.

        Cached rows only push an entry's timeout later when the stream timeout is
        not shorter than the plain UDP one (``t + timeout(t)`` grows with ``t``):
        then an entry still alive at ``now`` with its rows not yet applied is alive
        with them too, and only the others need them.
        """
        if self.udp_stream < self.udp:
            self._flush_all(d, row)
            return
        for c in d.convs:
            if c.applied < c.seg_end and c.conn is not None and c.conn.expires <= now:
                self._flush(c, row)

    def _before_feed(self, d: ChunkVerdicts, row: int) -> None:
        ct = self.ct
        if ct is not None and (ct._lookups + 1) % _conntrack.SWEEP_EVERY == 0:
            # This packet's lookup may sweep.
            self._flush_expiring(d, row, float(d.chunk.ts[row]))

    def _touched(self, d: ChunkVerdicts, r: PacketRecord) -> list[Conversation] | None:
        """Conversations whose entry the engine may read for this record (None: any of them)."""
        if self.ct is None or not d.convs:
            return []
        proto = r.proto
        if proto in (1, 58):
            if r.frag != NOT_FRAGMENT:
                return None
            l4 = r.l4_offset
            if len(r.data) <= l4:
                return []
            kind = r.data[l4]
            if (r.family == 4 and kind in ICMP_ERRORS_V4) or (r.family == 6 and kind < 128):
                return None               # an error quotes some flow's packet
            return []
        if proto != 17:
            return []
        if r.frag != NOT_FRAGMENT:
            pair = {r.src, r.dst}
            return [c for c in d.convs if c.key[0] == (1 if r.family == 4 else 2)
                    and {c.key[1] << 64 | c.key[2], c.key[4] << 64 | c.key[5]} == pair]
        if r.sport < 0:
            return []
        a = (r.src >> 64, r.src & ((1 << 64) - 1), r.sport)
        b = (r.dst >> 64, r.dst & ((1 << 64) - 1), r.dport)
        lo, hi = (a, b) if a <= b else (b, a)
        if d.index is None:
            d.index = {c.key: c for c in d.convs}
        c = d.index.get((1 if r.family == 4 else 2, *lo, *hi))
        return [c] if c is not None else []
