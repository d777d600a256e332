"""What the JUnit, SARIF and HTML reports share: which finding belongs to which
flow row, and how a finding, a packet and a rule are named in words.

Renderers decide nothing: a row is failed when the engine says so *or* when a
blocking finding names it (a proof or a baseline diff may know more than the
sampled replay), never the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fwtest.api import Finding, FlowResult, Report
from fwtest.report.table import rule_label

FAMILY = {4: "IPv4", 6: "IPv6"}
BLOCKING = frozenset({"blocked", "regression"})

RowKey = tuple[str, str, int]

# XML 1.0 (section 2.2) forbids most C0 controls, lone surrogates and U+FFFE/FFFF even
# as character references; rule comments and file names are user input and may hold them.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: object) -> str:
    """``text`` as a string that XML 1.0 (and so JUnit consumers and HTML) can carry."""
    return _NOT_XML_CHAR.sub("\ufffd", str(text))


def family_name(family: int | None) -> str:
    return FAMILY.get(family, f"family {family}") if family is not None else ""


def row_title(flow: str, transport: str | None, family: int | None) -> str:
    """``emergency-call UDP IPv4``: the name a flow row goes by in every report."""
    parts = [flow]
    if transport:
        parts.append(transport.upper())
    if family is not None:
        parts.append(family_name(family))
    return " ".join(parts)


def row_key(row: FlowResult) -> RowKey:
    return (row.flow, row.transport, row.family)


def finding_key(finding: Finding) -> RowKey | None:
    if finding.transport is None or finding.family is None:
        return None
    return (finding.flow, finding.transport, finding.family)


def split_findings(report: Report) -> tuple[dict[RowKey, list[Finding]], list[Finding]]:
    """Findings by the flow row they name, and those that name no row.

    A finding belongs to a row only when flow, transport and family all match:
    a proof finding that names only the flow says nothing about which
    transport fails, so it gets its own entry rather than turning every
    transport of that flow red.
    """
    rows = {row_key(r) for r in report.flows}
    by_row: dict[RowKey, list[Finding]] = {}
    loose: list[Finding] = []
    for f in report.findings:
        key = finding_key(f)
        if key in rows:
            by_row.setdefault(key, []).append(f)
        else:
            loose.append(f)
    return by_row, loose


def row_failed(row: FlowResult, findings: Iterable[Finding]) -> bool:
    return not row.passed or any(f.kind in BLOCKING for f in findings)


def where(rule: dict | None) -> str:
    """``rules.yaml:42`` (or just the file, or '') for a rule reference."""
    if not rule or not rule.get("file"):
        return ""
    line = rule.get("line")
    return f"{rule['file']}:{line}" if line else str(rule["file"])


def packet_text(packet: dict | None) -> str:
    """``udp 198.51.100.7:5060 > 203.0.113.10:5060 (first fragment)`` from a JSON packet."""
    if not packet:
        return ""
    src, dst = packet.get("src", "?"), packet.get("dst", "?")
    if "sport" in packet and "dport" in packet:
        fmt = "[{}]:{}" if packet.get("family") == 6 else "{}:{}"
        src, dst = fmt.format(src, packet["sport"]), fmt.format(dst, packet["dport"])
    text = f"{packet.get('proto', '?')} {src} > {dst}"
    if packet.get("fragment"):
        text += f" ({packet['fragment']} fragment)"
    return text


def finding_headline(f: Finding) -> str:
    """One line: what died (or what is wrong), and the rule that decided."""
    verb = {"blocked": "dies at", "regression": "newly dies at"}.get(f.kind)
    label = rule_label(f.rule)
    if verb and label:
        text = f"{f.message} {verb} {label}"
    elif verb:
        text = f"{f.message} dies (no rule named)"
    else:
        text = f"{f.message} ({label})" if label else f.message
    return text


def finding_body(f: Finding) -> str:
    """Several lines for a failure body or a tooltip: the finding in full."""
    lines = [f"{f.kind} [{f.evidence}] {row_title(f.flow, f.transport, f.family)}: {finding_headline(f)}"]
    if f.detail:
        lines.append(f"where it broke: {f.detail}")
    if f.packet:
        lines.append(f"packet: {packet_text(f.packet)}")
        lines.append("packet fields: " + ", ".join(f"{k}={v}" for k, v in f.packet.items()))
    if f.rule:
        lines.append(f"rule: {rule_label(f.rule)}")
        if f.rule.get("comment"):
            lines.append(f"rule comment: {f.rule['comment']}")
    return "\n".join(lines)
