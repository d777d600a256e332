"""Rendering reports: one function per format, chosen by name or file extension.

Renderers decide nothing; they show what fwtest.api.check found.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fwtest.api import Report
from fwtest.errors import InputError

FORMATS = ("table", "json", "junit", "sarif", "html")
EXTENSIONS = {".sarif": "sarif", ".sarif.json": "sarif", ".xml": "junit", ".html": "html", ".htm": "html",
              ".json": "json", ".txt": "table"}


def format_for(path: str, default: str | None) -> str:
    """The format a report file's name asks for (``fwtest.sarif`` -> sarif)."""
    name = Path(path).name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return EXTENSIONS[ext]
    if default is not None:
        return default
    raise InputError(path, 0, "cannot tell the report format from the file name: use one of "
                     f"{', '.join(sorted(EXTENSIONS))}")


def render(reports: Sequence[Report], fmt: str, *, colour: bool = False,
           baselines: Sequence[Report | None] = ()) -> str:
    """Render one or several reports (``fwtest check`` with several configured rulesets)."""
    if fmt == "table":
        from fwtest.report.table import render_table
        return "\n".join(render_table(r, colour=colour) for r in reports)
    if fmt == "json":
        if len(reports) == 1:
            return json.dumps(reports[0].to_json(), indent=2) + "\n"
        overall = "fail" if any(r.result == "fail" for r in reports) else "pass"
        return json.dumps({"result": overall, "reports": [r.to_json() for r in reports]}, indent=2) + "\n"
    if fmt == "junit":
        from fwtest.report.junit import render_junit
        return render_junit(list(reports))
    if fmt == "sarif":
        from fwtest.report.sarif import render_sarif
        return render_sarif(list(reports))
    if fmt == "html":
        from fwtest.report.html import render_html
        if len(reports) != 1:
            raise InputError("--format html", 0, "the HTML report shows one ruleset: check them one at a time")
        return render_html(reports[0], baselines[0] if baselines else None)
    raise InputError("--format", 0, f"unknown format '{fmt}' (one of {', '.join(FORMATS)})")
