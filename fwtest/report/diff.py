"""``fwtest diff``: what a change does to the emergency path, region by region."""

from __future__ import annotations

import json

from tabulate import tabulate

from fwtest.report.table import rule_label


def render_diff(result, base_label: str, candidate_label: str, fmt: str) -> str:
    """``result`` is a ``fwtest.space.Diff``."""
    if fmt == "json":
        out = {**result.to_json(), "baseline": base_label, "ruleset": candidate_label}
        return json.dumps(out, indent=2) + "\n"
    lines = [f"fwtest diff: {base_label} -> {candidate_label} (profile '{result.profile.name}')", ""]
    rows = []
    for change in result.changes:
        data = change.to_json()
        where = " ".join(x for x in (change.transport or "", f"IPv{change.family}" if change.family else "") if x)
        rows.append([change.kind.upper(), change.flow, where, change.label,
                     "\n".join(change.region_text()), rule_label(data.get("baseline_rule")),
                     rule_label(data.get("rule"))])
    if rows:
        lines.append(tabulate(rows, headers=["Change", "Flow", "Transport", "Packets", "Region",
                                             "Decided before by", "Decided now by"], tablefmt="simple"))
    else:
        lines.append("No emergency packet changes fate.")
    lines.append("")
    regressions, warnings = len(result.regressions), len(result.warnings)
    if regressions:
        lines.append(f"FAIL: {regressions} emergency regions newly dropped, {warnings} newly accepted (warnings)")
    else:
        lines.append(f"PASS: no emergency packet newly dropped; {warnings} regions newly accepted (warnings)")
    return "\n".join(lines) + "\n"
