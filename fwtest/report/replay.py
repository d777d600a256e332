"""``fwtest replay``: per-call summary of a capture under the rules, or per-packet JSON lines."""

from __future__ import annotations

import json
from typing import TextIO

from tabulate import tabulate

from fwtest.api import rule_ref
from fwtest.engine.verdict import Verdict
from fwtest.replay import CaptureReplay
from fwtest.report.table import rule_label
from fwtest.traffic.record import PacketRecord


def jsonl_line(index: int, frame: int, record: PacketRecord, verdict: Verdict) -> str:
    """The contract's per-packet object, plus the capture's frame number and the packet."""
    return json.dumps({"index": index, "frame": frame, "verdict": verdict.verdict,
                       "rule": rule_ref(verdict), "packet": record.describe()}, separators=(",", ":"))


def render_replay_table(result: CaptureReplay, stream: TextIO) -> None:
    rec = result.reconstruction
    stream.write(f"fwtest replay: {result.pcap} through {result.ruleset}\n")
    stream.write(f"{result.read.summary()}; verdicts: "
                 + ", ".join(f"{n} {v}" for v, n in sorted(result.verdicts.items())) + "\n")
    if result.outside_profile:
        stream.write(f"note: {result.outside_profile} packets have no address on either side of the profile "
                     "(replayed as if crossing from the peer side)\n")
    rows = []
    for call in rec.calls:
        cap, now = call.captured, call.under_rules
        status = "BROKEN: not " + ", ".join(call.failed_under_rules) if call.failed_under_rules else "ok"
        if not call.failed_under_rules and call.media_dropped:
            status = "ok, but " + "; ".join(call.media_dropped) + " dropped"
        drop = call.first_drop
        rows.append([call.call_id[:28], f"{call.transport.upper()}/IPv{call.family}",
                     f"{call.caller} > {call.callee}", _yes(cap.set_up, now.set_up if now else None),
                     _yes(cap.media_both_ways, now.media_both_ways if now else None),
                     _yes(cap.torn_down, now.torn_down if now else None), status,
                     f"frame {drop.packet} {drop.what}: {rule_label(rule_ref(drop.verdict))}" if drop else ""])
    if rows:
        stream.write("\n" + tabulate(rows, headers=["Call-ID", "Transport", "Caller > callee", "Set up",
                                                    "Media both ways", "Torn down", "Under the rules",
                                                    "First dead packet"]) + "\n")
    other = [t for t in rec.transactions]
    if other:
        trows = [[t.method, f"{t.transport.upper()}/IPv{t.family}", f"{t.client} > {t.server}",
                  t.final_status or "-", "BROKEN" if t in result.broken_transactions else "ok",
                  f"frame {t.first_drop.packet}: {rule_label(rule_ref(t.first_drop.verdict))}"
                  if t.first_drop else ""] for t in other]
        stream.write("\n" + tabulate(trows, headers=["Transaction", "Transport", "Client > server",
                                                     "Captured answer", "Under the rules",
                                                     "First dead packet"]) + "\n")
    if rec.tls_flows:
        dead = sum(1 for f in rec.tls_flows if f.first_drop)
        stream.write(f"\nTLS signalling flows: {len(rec.tls_flows)} ({dead} with dropped packets)\n")
    broken = len(result.broken_calls) + len(result.broken_transactions)
    stream.write(f"\n{'FAIL' if broken else 'PASS'}: {len(rec.calls)} calls, {len(rec.transactions)} other "
                 f"transactions; {broken} would fail under these rules\n")


def _yes(captured: bool, now: bool | None) -> str:
    if now is None:
        return "yes" if captured else "no"
    if captured and not now:
        return "yes -> NO"
    return "yes" if now else "no"
