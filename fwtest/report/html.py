"""``--format html``: one self-contained page that shows which call breaks where.

A summary, the findings, the flow table, and for every flow row a ladder
diagram in inline SVG, drawn the way SIP call flows are drawn: three lanes
(the peer side, the firewall, the PSAP side), each packet an arrow. The first
packet that dies is red, stops at the firewall and is labelled with the rule
(file:line) that killed it. With a baseline, its diagram of the same row is
drawn beside it.

The page fetches nothing (no scripts, fonts, images or styles from anywhere):
it is opened from CI artefacts, mail attachments and air-gapped PSAP
networks. Every piece of text is escaped: rule ids, comments and file names
are user input.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

from fwtest.api import Finding, FlowResult, Report, rule_ref
from fwtest.engine.outcome import FlowOutcome
from fwtest.report._shared import (
    BLOCKING,
    family_name,
    packet_text,
    row_failed,
    row_key,
    row_title,
    split_findings,
    where,
    xml_text,
)
from fwtest.report.table import rule_label
from fwtest.traffic.callflow import FlowStep
from fwtest.traffic.record import FIRST_FRAGMENT

MEDIA_PHASES = frozenset({"media-in", "media-out"})
RTP_LABELS = frozenset({"RTP", "RTCP", "SRTP", "SRTCP"})  # the bulk of a call: drawn once per direction
TRANSPORT_LABELS = frozenset({"SYN", "SYN-ACK", "TCP ACK", "FIN", "RST", "ACK (TCP)"})
MAX_ROWS = 48          # arrows per diagram before the middle of a long flow is elided

# Ladder geometry (SVG user units = CSS px at 100 %).
WIDTH = 820
X_TIME = 8
X_PEER, X_FW, X_PSAP = 196, 466, 736
LANE_BOX_W, LANE_BOX_H = 168, 46
Y_ROWS = 96
ROW_H = 30
FW_BAND = 12


def render_html(report: Report, baseline: Report | None = None) -> str:
    """The HTML report of ``report``; with ``baseline``, each diagram beside the baseline's."""
    by_row, loose = split_findings(report)
    base_rows = {row_key(r): r for r in baseline.flows} if baseline is not None else {}
    base_findings = split_findings(baseline)[0] if baseline is not None else {}
    anchors = {row_key(r): f"flow-{i}" for i, r in enumerate(report.flows)}

    parts = [_head(report), '<body><main>', _summary(report, by_row, baseline),
             _findings(report, by_row, loose, anchors),
             _table(report, by_row, anchors, base_rows, base_findings, baseline),
             _ladders(report, by_row, anchors, base_rows, base_findings, baseline),
             _footer(), "</main></body></html>\n"]
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------- page parts

def _e(text: object) -> str:
    return html.escape(xml_text(text), quote=True)


def _head(report: Report) -> str:
    title = f"fwtest {report.result.upper()}: {report.ruleset} ({report.profile})"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>")


def _summary(report: Report, by_row: dict, baseline: Report | None) -> str:
    failed = sum(row_failed(r, by_row.get(row_key(r), [])) for r in report.flows)
    total = len(report.flows)
    kinds = {k: sum(f.kind == k for f in report.findings) for k in ("blocked", "regression", "warning")}
    if report.result == "pass":
        verdict, sentence = "PASS", "the emergency path is intact"
    else:
        sentence = f"{failed} of {total} flows blocked" if failed else "the emergency path is cut"
        if kinds["regression"]:
            sentence += f", {kinds['regression']} regression{'s' * (kinds['regression'] != 1)} against the baseline"
        verdict = "FAIL"
    stats = report.stats
    facts = [("Ruleset", report.ruleset), ("Profile", report.profile),
             ("Baseline", report.baseline or (baseline.ruleset if baseline else "none")),
             ("Flows", f"{total - failed} passed, {failed} blocked"),
             ("Findings", ", ".join(f"{n} {k}" for k, n in kinds.items() if n) or "none")]
    if baseline is not None:
        facts.append(("Against baseline", _against(report, by_row, baseline)))
    if "calls" in stats or "packets" in stats:
        facts.append(("Traffic", f"{stats.get('calls', 0)} synthetic calls, {stats.get('packets', 0)} packets"))
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    cls = "pass" if report.result == "pass" else "fail"
    return (f'<header class="verdict {cls}"><div class="brand">fwtest &middot; 911 path check</div>'
            f'<h1><span class="big">{verdict}</span> <span class="why">{_e(sentence)}</span></h1>'
            f'<dl class="facts">{rows}</dl></header>')


def _against(report: Report, by_row: dict, baseline: Report) -> str:
    base_by_row = split_findings(baseline)[0]
    base = {row_key(r): row_failed(r, base_by_row.get(row_key(r), [])) for r in baseline.flows}
    regressed = fixed = new = 0
    for r in report.flows:
        key = row_key(r)
        now = row_failed(r, by_row.get(key, []))
        if key not in base:
            new += 1
        elif now and not base[key]:
            regressed += 1
        elif base[key] and not now:
            fixed += 1
    text = f"{regressed} flow{'s' * (regressed != 1)} regressed, {fixed} fixed"
    return text + (f", {new} not in the baseline" if new else "")


def _findings(report: Report, by_row: dict, loose: list[Finding], anchors: dict) -> str:
    """Findings grouped by kind and deciding rule: one edit usually breaks many flows,
    and the rule is what the reader has to go and fix."""
    if not report.findings:
        return ('<section><h2>Findings</h2><p class="none">No findings: every flow of the profile '
                "got through the ruleset.</p></section>")
    groups: dict[tuple, list[Finding]] = {}
    for f in report.findings:
        groups.setdefault((f.kind, _rule_key(f.rule)), []).append(f)
    loose_ids = {id(f) for f in loose}
    items = []
    for (kind, _), members in groups.items():
        rule = members[0].rule
        n = len(members)
        verb = {"blocked": "dies at", "regression": "newly dies at"}.get(kind, "")
        if n != 1:
            verb = verb.replace("dies", "die")
        subject = f"{n} flow{'s' * (n != 1)}" if kind in BLOCKING else f"{n} finding{'s' * (n != 1)}"
        label = rule_label(rule) or "no rule named"
        head = (f'<div class="what"><span class="badge {_e(kind)}">{_e(kind.upper())}</span> '
                f'{_e(subject)} {_e(verb)} '
                f'<strong class="mono" title="{_e(label)}">{_e(label)}</strong></div>')
        if rule and rule.get("comment"):
            head += f'<div class="comment">rule comment: {_e(rule["comment"])}</div>'
        rows = []
        for f in members:
            key = (f.flow, f.transport, f.family)
            title = _e(row_title(f.flow, f.transport, f.family))
            if key in anchors and id(f) not in loose_ids:
                title = f'<a href="#{anchors[key]}">{title}</a>'
            rows.append(f'<tr><td class="who">{title} <span class="evidence">{_e(f.evidence)}</span></td>'
                        f'<td><strong>{_e(f.message)}</strong>'
                        + (f' <span class="detail">{_e(f.detail)}</span>' if f.detail else "")
                        + (f'<div class="mono">{_e(packet_text(f.packet))}</div>' if f.packet else "")
                        + "</td></tr>")
        items.append(f'<li class="finding {_e(kind)}">{head}<table class="hits">{"".join(rows)}</table></li>')
    return f'<section><h2>Findings</h2><ul class="findings">{"".join(items)}</ul></section>'


def _rule_key(rule: dict | None) -> tuple:
    if not rule:
        return ()
    return (rule.get("id"), rule.get("file"), rule.get("line"), rule.get("reason"))


def _table(report: Report, by_row: dict, anchors: dict, base_rows: dict, base_findings: dict,
           baseline: Report | None) -> str:
    head = ["Flow", "Transport", "Family", "Result", "Where it broke", "Packet that died", "Killed by"]
    if baseline is not None:
        head.append("Baseline")
    body = []
    for row in report.flows:
        key = row_key(row)
        findings = by_row.get(key, [])
        failed = row_failed(row, findings)
        bad = row.first_failure
        killer = next((f.rule for f in findings if f.kind in BLOCKING), None)
        if killer is None and bad is not None and bad.verdict is not None:
            killer = rule_ref(bad.verdict)
        cells = [f'<a href="#{anchors[key]}">{_e(row.flow)}</a>', _e(row.transport.upper()),
                 _e(family_name(row.family)), _result_badge(failed),
                 _e(bad.broke if bad else (_first_blocking(findings).detail if failed else "")),
                 f'<span class="mono">{_e(f"{bad.first_dead.label}: {bad.first_dead.record.short()}")}</span>'
                 if bad else "",
                 f'<span class="mono" title="{_e(rule_label(killer))}">{_e(_short_label(killer))}</span>'
                 if failed and killer else ""]
        if baseline is not None:
            base = base_rows.get(key)
            cells.append(_result_badge(row_failed(base, base_findings.get(key, []))) if base
                         else '<span class="muted">not in baseline</span>')
        cls = ' class="failed"' if failed else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<section><h2>Flows</h2><table class="flows"><thead><tr>'
            + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table></section>")


def _short_label(rule: dict) -> str:
    """``rule_label`` with a long path cut to its file name (the full label is the tooltip)."""
    if rule.get("file") and len(str(rule["file"])) > 32:
        rule = dict(rule, file=_base(str(rule["file"])))
    return rule_label(rule)


def _first_blocking(findings: Sequence[Finding]) -> Finding:
    return next(f for f in findings if f.kind in BLOCKING)


def _result_badge(failed: bool) -> str:
    return '<span class="badge blocked">BLOCKED</span>' if failed else '<span class="badge pass">PASS</span>'


def _ladders(report: Report, by_row: dict, anchors: dict, base_rows: dict, base_findings: dict,
             baseline: Report | None) -> str:
    rows = list(report.flows)
    # Red first: the diagrams someone opens this page for come before the green ones.
    order = sorted(range(len(rows)), key=lambda i: not row_failed(rows[i], by_row.get(row_key(rows[i]), [])))
    out = ['<section><h2>Call flows</h2><p class="muted">Each arrow is a packet, in time order: '
           "from the peer side (ESRP, BCF, carrier SBC) through the firewall to the PSAP side, or back. "
           "A packet that dies stops at the firewall, labelled with the rule that killed it. "
           "RTP and RTCP streams are drawn as one arrow per direction with their count.</p>", _legend()]
    for i in order:
        row = rows[i]
        key = row_key(row)
        failed = row_failed(row, by_row.get(key, []))
        figures = [_figure("This ruleset" if baseline is not None else "", report.ruleset, row, failed,
                           f"d{i}")]
        change = ""
        if baseline is not None:
            base = base_rows.get(key)
            if base is None:
                figures.append('<figure class="ladder missing"><figcaption>Baseline</figcaption>'
                               '<p class="muted">This flow is not in the baseline report.</p></figure>')
            else:
                base_failed = row_failed(base, base_findings.get(key, []))
                figures.append(_figure("Baseline", baseline.ruleset, base, base_failed, f"b{i}"))
                if failed and not base_failed:
                    change = ' <span class="badge regression">REGRESSED</span>'
                elif base_failed and not failed:
                    change = ' <span class="badge pass">FIXED</span>'
        title = (f"{_e(row_title(row.flow, row.transport, row.family))} {_result_badge(failed)}{change}")
        pair = f'<div class="pair{" diff" if baseline is not None else ""}">{"".join(figures)}</div>'
        if failed or change:
            out.append(f'<article class="flow" id="{anchors[key]}"><h3>{title}</h3>{pair}</article>')
        else:
            out.append(f'<details class="flow" id="{anchors[key]}"><summary><h3>{title}</h3></summary>'
                       f"{pair}</details>")
    out.append("</section>")
    return "\n".join(out)


def _legend() -> str:
    keys = (("sig", "SIP signalling"), ("media", "media (RTP, RTCP, MSRP)"), ("l4", "TCP handshake and ACKs"),
            ("first-dead sig", "first packet that dies"), ("dead sig", "later packets that die"))
    items = []
    for cls, text in keys:
        dies = "dead" in cls
        end = 30 if dies else 34
        mark = ('<path class="x" d="M28,2 L36,10 M28,10 L36,2"/>' if dies
                else '<path class="head" d="M40,6 L32,2 L32,10 Z"/>')
        items.append(f'<span><svg width="42" height="12" viewBox="0 0 42 12"><g class="arrow {cls}">'
                     f'<line x1="2" y1="6" x2="{end}" y2="6"/>{mark}</g></svg>{_e(text)}</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def _figure(caption: str, ruleset: str, row: FlowResult, failed: bool, uid: str) -> str:
    outcome = row.first_failure or (row.outcomes[0] if row.outcomes else None)
    if outcome is None:
        body = '<p class="muted">No call instance was replayed for this flow.</p>'
        note = ""
    else:
        body = ladder_svg(outcome, ruleset, uid)
        n = len(row.outcomes)
        if outcome.passed:
            note = (f"{_count(n, 'call instance')}, all through end to end; "
                    + ("the first is drawn." if n > 1 else "drawn here."))
            if failed:
                note = "Every call instance got through the replay, but a finding names this flow (see Findings)."
        else:
            note = (f"{outcome.broke}. {len(row.failed)} of {_count(n, 'call instance')} failed; "
                    f"the first is drawn ({outcome.flow.instance}).")
    cap = f'<figcaption>{_e(caption) + ": " if caption else ""}{_e(note)}</figcaption>'
    return f'<figure class="ladder{" failed" if failed else ""}">{cap}{body}</figure>'


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _footer() -> str:
    return ('<footer>Generated by fwtest. This page is self-contained: it loads no scripts, fonts '
            "or images.</footer>")


# --------------------------------------------------------------------------- the ladder

@dataclass
class Arrow:
    """One arrow of a ladder: a packet, or a run of like packets drawn once."""

    label: str
    direction: str          # in: peer side -> PSAP side; out: back
    fate: str               # accept | dead | first-dead | unknown
    count: int
    ts: float
    rule: dict | None       # the deciding rule of a dead packet
    media: bool
    detail: str             # tooltip: the packet(s) in full


def ladder_arrows(outcome: FlowOutcome) -> list[Arrow | None]:
    """The arrows of one call instance; ``None`` marks packets left out of a long flow.

    RTP and RTCP inside a media phase are grouped by label, direction and
    fate (in order of first appearance), so two minutes of audio both ways
    is a few arrows with counts; everything else (SIP, MSRP, TCP segments)
    keeps its order and only consecutive like packets merge.
    """
    steps = outcome.flow.steps
    fates = _fates(outcome)
    rules = [rule_ref(v) if v is not None and not v.accepted else None for v in _verdicts(outcome)]
    t0 = steps[0].record.ts if steps else 0.0
    arrows: list[Arrow] = []
    i = 0
    while i < len(steps):
        if steps[i].phase in MEDIA_PHASES:
            j = i
            while j < len(steps) and steps[j].phase in MEDIA_PHASES:
                j += 1
            groups: dict[tuple, Arrow] = {}
            for k in range(i, j):
                key = (_label(steps[k]), steps[k].direction, fates[k], _rule_id(rules[k]))
                if _is_rtp(steps[k].label):
                    if key in groups:
                        groups[key].count += 1
                    else:
                        groups[key] = _arrow(steps[k], fates[k], rules[k], t0, media=True)
                        arrows.append(groups[key])
                elif arrows and not _is_rtp(arrows[-1].label) and _key(arrows[-1]) == key:
                    arrows[-1].count += 1
                else:  # MSRP and its TCP segments: few, and their order tells the story
                    arrows.append(_arrow(steps[k], fates[k], rules[k], t0, media=True))
            i = j
            continue
        arrow = _arrow(steps[i], fates[i], rules[i], t0, media=False)
        j = i + 1
        while (j < len(steps) and steps[j].phase not in MEDIA_PHASES
               and (_label(steps[j]), steps[j].direction, fates[j], _rule_id(rules[j])) == _key(arrow)):
            arrow.count += 1
            j += 1
        arrows.append(arrow)
        i = j
    return _elide(arrows)


def _verdicts(outcome: FlowOutcome) -> list:
    n = len(outcome.flow.steps)
    return list(outcome.verdicts) if len(outcome.verdicts) == n else [None] * n


def _fates(outcome: FlowOutcome) -> list[str]:
    steps = outcome.flow.steps
    verdicts = _verdicts(outcome)
    first = next((i for i, s in enumerate(steps) if outcome.first_dead is not None and s is outcome.first_dead),
                 None)
    if first is None and outcome.first_dead is not None:
        first = next((i for i, s in enumerate(steps) if s == outcome.first_dead), None)
    fates = []
    for i, v in enumerate(verdicts):
        if i == first:
            fates.append("first-dead")
        elif v is not None:
            fates.append("accept" if v.accepted else "dead")
        elif outcome.passed or first is None or i < first:
            # The judge names the first dead packet in time: the ones before it got through.
            fates.append("accept")
        else:
            fates.append("unknown")  # no per-packet verdicts kept: do not draw these as accepted
    return fates


def _is_rtp(label: str) -> bool:
    return label.split(" ", 1)[0] in RTP_LABELS


def _key(arrow: Arrow) -> tuple:
    return (arrow.label, arrow.direction, arrow.fate, _rule_id(arrow.rule))


def _rule_id(rule: dict | None) -> object:
    return None if rule is None else (rule.get("id"), rule.get("file"), rule.get("line"))


def _label(step: FlowStep) -> str:
    """The step's label, saying which fragment it is: a firewall treats the first
    fragment (ports visible) and the later ones (no ports) very differently."""
    if step.record.frag and "fragment" not in step.label:
        which = "first" if step.record.frag == FIRST_FRAGMENT else "later"
        return f"{step.label} ({which} fragment)"
    return step.label


def _arrow(step: FlowStep, fate: str, rule: dict | None, t0: float, *, media: bool) -> Arrow:
    return Arrow(_label(step), step.direction, fate, 1, step.record.ts - t0, rule, media,
                 step.record.short())


def _elide(arrows: list[Arrow]) -> list[Arrow | None]:
    if len(arrows) <= MAX_ROWS:
        return list(arrows)
    first_dead = next((i for i, a in enumerate(arrows) if a.fate == "first-dead"), None)
    keep = set(range(MAX_ROWS - 12)) | set(range(len(arrows) - 4, len(arrows)))
    if first_dead is not None:
        keep |= set(range(max(0, first_dead - 3), min(len(arrows), first_dead + 4)))
    out: list[Arrow | None] = []
    for i, a in enumerate(arrows):
        if i in keep:
            out.append(a)
        elif out and out[-1] is not None:
            out.append(None)
    return out


def ladder_svg(outcome: FlowOutcome, ruleset: str, uid: str) -> str:
    """The SVG ladder diagram of one call instance."""
    arrows = ladder_arrows(outcome)
    steps = outcome.flow.steps
    first = steps[0] if steps else None
    peer, psap = "", ""
    if first is not None:
        a, b = first.record.addr("src"), first.record.addr("dst")
        peer, psap = (a, b) if first.direction == "in" else (b, a)
    height = Y_ROWS + ROW_H * len(arrows) + 18
    flow = outcome.flow
    desc = f"{row_title(flow.flow, flow.transport, flow.family)}: {len(steps)} packets"
    if not outcome.passed and outcome.first_dead is not None:
        desc += f"; {outcome.first_dead.label} dies at the firewall ({rule_label(rule_ref(outcome.verdict))})" \
            if outcome.verdict is not None else f"; {outcome.first_dead.label} dies at the firewall"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="ladder-svg" id="{_e(uid)}" role="img" '
           f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" aria-label="{_e(desc)}">',
           f"<title>{_e(desc)}</title>"]
    bottom = height - 8
    # Lanes: the two sides' lifelines and the firewall as a band between them.
    out.append(f'<rect class="fw-band" x="{X_FW - FW_BAND // 2}" y="{LANE_BOX_H + 10}" width="{FW_BAND}" '
               f'height="{bottom - LANE_BOX_H - 10}" rx="3"/>')
    for x in (X_PEER, X_PSAP):
        out.append(f'<line class="lifeline" x1="{x}" y1="{LANE_BOX_H + 10}" x2="{x}" y2="{bottom}"/>')
    for x, name, sub, cls in ((X_PEER, "Peer side", peer, "side"), (X_FW, "Firewall", _base(ruleset), "fw"),
                              (X_PSAP, "PSAP side", psap, "side")):
        out.append(f'<g class="lane {cls}"><rect x="{x - LANE_BOX_W // 2}" y="8" width="{LANE_BOX_W}" '
                   f'height="{LANE_BOX_H}" rx="6"/>'
                   f'<text class="lane-name" x="{x}" y="27" text-anchor="middle">{_e(name)}</text>'
                   f'<text class="lane-sub" x="{x}" y="44" text-anchor="middle">{_e(_fit(sub, 26))}</text></g>')
    out.append(f'<text class="time-head" x="{X_TIME}" y="{Y_ROWS - 14}">time</text>')
    for n, arrow in enumerate(arrows):
        y = Y_ROWS + n * ROW_H + 12
        out.append(_ellipsis(y) if arrow is None else _arrow_svg(arrow, y))
    out.append("</svg>")
    return "".join(out)


def _ellipsis(y: int) -> str:
    return (f'<g class="elided"><text x="{X_FW}" y="{y + 4}" text-anchor="middle">'
            "&#8942; packets not drawn (the flow table and JSON report have them all)</text></g>")


def _arrow_svg(a: Arrow, y: int) -> str:
    rightward = a.direction == "in"
    x_from, x_to = (X_PEER, X_PSAP) if rightward else (X_PSAP, X_PEER)
    sign = 1 if rightward else -1
    dies = a.fate in ("dead", "first-dead")
    end = X_FW - sign * (FW_BAND // 2 + 3) if dies else x_to - sign * 2
    kind = "l4" if a.label in TRANSPORT_LABELS else ("media" if a.media else "sig")
    classes = f"arrow {a.fate} {kind}"
    label = a.label + (f" \u00d7{a.count}" if a.count > 1 else "")
    tip = f"{label}: {a.detail}"
    if a.count > 1:
        tip += f" (first of {a.count})"
    tip += {"accept": ", accepted", "unknown": ", not judged"}.get(a.fate, "")
    if dies:
        tip += f", dropped at the firewall by {rule_label(a.rule) or 'an unnamed decision'}"
    parts = [f'<g class="{classes}"><title>{_e(tip)}</title>',
             f'<text class="t" x="{X_TIME}" y="{y + 4}">+{a.ts:.3f}s</text>',
             f'<line x1="{x_from}" y1="{y}" x2="{end}" y2="{y}"/>']
    if dies:
        # The packet stops at the firewall: a cross on the band, not an arrowhead.
        cx = X_FW - sign * (FW_BAND // 2 + 3)
        parts.append(f'<path class="x" d="M{cx - 6},{y - 6} L{cx + 6},{y + 6} M{cx - 6},{y + 6} '
                     f'L{cx + 6},{y - 6}"/>')
        killed = _killed_text(a.rule)
        kx = X_FW + sign * (FW_BAND // 2 + 10)
        anchor = "start" if rightward else "end"
        parts.append(f'<text class="rule" x="{kx}" y="{y + 4}" text-anchor="{anchor}">{_e(killed)}</text>')
    else:
        tip_x = x_to - sign * 2
        parts.append(f'<path class="head" d="M{tip_x},{y} L{tip_x - sign * 9},{y - 4.5} '
                     f'L{tip_x - sign * 9},{y + 4.5} Z"/>')
    lx = (x_from + X_FW) // 2
    parts.append(f'<text class="label" x="{lx}" y="{y - 6}" text-anchor="middle">{_e(_fit(label, 30))}</text>')
    parts.append("</g>")
    return "".join(parts)


def _killed_text(rule: dict | None) -> str:
    """``✕ drop-frag · rules.yaml:42``: short enough for the space between two lanes."""
    if not rule:
        return "\u2715 dropped"
    rid = rule.get("id")
    place = where(rule)
    if place and len(place) > 28:
        line = rule.get("line")
        place = f"{_base(rule['file'])}:{line}" if line else _base(rule["file"])
    if rid is None:
        text = rule.get("reason") or "dropped"
        return "\u2715 " + _fit(text + (f" · {place}" if place else ""), 40)
    name = "policy drop" if rid == "policy" else str(rid)
    return "\u2715 " + _fit(name, 40 - len(place)) + (f" \u00b7 {place}" if place else "")


def _base(path: str) -> str:
    first = path.split(", ")[0]
    name = PurePath(first).name or first
    return name + (" +" if ", " in path else "")


def _fit(text: str, width: int) -> str:
    width = max(width, 8)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


CSS = """
:root{--red:#c81e1e;--red-bg:#fdecec;--green:#15803d;--green-bg:#e8f6ec;--amber:#b45309;--amber-bg:#fff4e0;
--ink:#1b1f24;--muted:#5f6b7a;--line:#d9dee5;--panel:#f6f8fa;--blue:#1d5fd1}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--ink);font:15px/1.45 system-ui,-apple-system,"Segoe UI",
"DejaVu Sans","Liberation Sans",Arial,sans-serif}
main{max-width:1640px;margin:0 auto;padding:0 24px 40px}
.mono,.lane-sub,.t,.rule{font-family:ui-monospace,"DejaVu Sans Mono","Liberation Mono",Menlo,Consolas,monospace}
.verdict{margin:0 -24px 8px;padding:22px 24px 18px;border-bottom:4px solid}
.verdict.fail{background:var(--red-bg);border-color:var(--red)}
.verdict.pass{background:var(--green-bg);border-color:var(--green)}
.brand{font-size:13px;letter-spacing:.06em;text-transform:uppercase;color:var(--muted)}
h1{margin:4px 0 12px;font-size:22px;font-weight:600}
h1 .big{font-size:34px;font-weight:800;letter-spacing:.02em;margin-right:8px}
.fail h1 .big{color:var(--red)}.pass h1 .big{color:var(--green)}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 18px;margin:0}
.facts dt{color:var(--muted)}.facts dd{margin:0;word-break:break-all}
h2{font-size:18px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:16px;margin:0;display:inline}
.muted,.none{color:var(--muted)}
.badge{display:inline-block;white-space:nowrap;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:700;
letter-spacing:.04em;vertical-align:1px}
.badge.blocked{background:var(--red);color:#fff}.badge.regression{background:#7f1d1d;color:#fff}
.badge.warning{background:var(--amber);color:#fff}.badge.pass{background:var(--green);color:#fff}
.findings{list-style:none;padding:0;margin:0}
.finding{border-left:4px solid var(--red);background:var(--panel);padding:8px 12px;margin:0 0 8px;
border-radius:0 6px 6px 0}
.finding.warning{border-color:var(--amber)}.finding.regression{border-color:#7f1d1d}
.finding .comment{color:var(--muted);margin-top:2px;word-break:break-word}
.finding .detail{color:var(--muted)}
.hits{border-collapse:collapse;margin-top:6px;font-size:14px;width:100%}
.hits td{padding:3px 10px 3px 0;vertical-align:top;border-top:1px solid var(--line);word-break:break-word}
.hits td.who{white-space:nowrap;width:1%}
.evidence{font-size:12px;color:var(--muted);border:1px solid var(--line);border-radius:8px;padding:0 6px}
.jump{font-size:13px;margin-left:6px}
table.flows{border-collapse:collapse;width:100%;font-size:14px}
.flows th{text-align:left;background:var(--panel);border-bottom:2px solid var(--line);padding:6px 8px}
.flows td{border-bottom:1px solid var(--line);padding:5px 8px;vertical-align:top;word-break:break-word}
.flows tr.failed td{background:#fff7f7}
.flows td:nth-child(-n+4){white-space:nowrap}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;font-size:13px;color:var(--muted);margin:4px 0 6px}
.legend svg{vertical-align:middle;margin-right:5px}
a{color:var(--blue)}
.flow{margin:14px 0 22px;border:1px solid var(--line);border-radius:8px;padding:12px 14px}
article.flow{border-color:#f0b4b4;box-shadow:0 1px 0 #f0b4b4}
details.flow summary{cursor:pointer}
.pair{display:flex;flex-wrap:wrap;gap:18px;margin-top:10px}
.ladder{margin:0;flex:1 1 640px;min-width:0}
.ladder figcaption{font-size:13px;color:var(--muted);margin-bottom:6px;min-height:2.9em}
.ladder.failed figcaption{color:var(--red)}
.ladder-svg{max-width:100%;height:auto;display:block;background:#fff}
.lane rect{fill:var(--panel);stroke:#aab4c0}.lane.fw rect{fill:#e8eef8;stroke:#7d93b5}
.lane-name{font-size:13px;font-weight:700;fill:var(--ink)}.lane-sub{font-size:11px;fill:var(--muted)}
.lifeline{stroke:#b9c2cc;stroke-dasharray:4 4}
.fw-band{fill:#dbe4f3;stroke:#9fb1cf}
.time-head{font-size:11px;fill:var(--muted)}
.arrow line{stroke-width:1.6}.arrow .head{stroke:none}
.arrow .label{font-size:12.5px}.arrow .t{font-size:10.5px;fill:#8a95a3}
.arrow.sig line{stroke:#27313d}.arrow.sig .head{fill:#27313d}.arrow.sig .label{fill:#1b1f24;font-weight:600}
.arrow.media line{stroke:var(--blue)}.arrow.media .head{fill:var(--blue)}.arrow.media .label{fill:var(--blue)}
.arrow.l4 line{stroke:#a3adb9}.arrow.l4 .head{fill:#a3adb9}.arrow.l4 .label{fill:#7b8694;font-size:11.5px}
.arrow.unknown line{stroke:#a3adb9;stroke-dasharray:3 3}.arrow.unknown .head{fill:#a3adb9}
.arrow.unknown .label{fill:#7b8694}
.arrow.dead line{stroke:#e58a8a;stroke-dasharray:5 3}.arrow.dead .x{stroke:#e58a8a;stroke-width:2}
.arrow.dead .label,.arrow.dead .rule{fill:#d16a6a}.arrow.dead .rule{font-size:11px}
.arrow.first-dead line{stroke:var(--red);stroke-width:3}.arrow.first-dead .x{stroke:var(--red);stroke-width:3}
.arrow.first-dead .label{fill:var(--red);font-weight:800;font-size:13.5px}
.arrow.first-dead .rule{fill:var(--red);font-weight:700;font-size:12.5px}
.elided text{font-size:12px;fill:var(--muted);font-style:italic}
footer{margin-top:30px;font-size:12px;color:var(--muted)}
"""
