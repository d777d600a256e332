"""The HTML report in a real browser: Debian's chromium, headless.

The page must render, its ladder diagrams must take up real space, and the
first packet that dies must be drawn red with its rule label. Screenshots are
kept under tests/artifacts/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import html
import json
import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from fwtest.api import Report
from fwtest.report.html import render_html

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
RED = (200, 30, 30)  # --red in the report's CSS

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")

# Instrumentation for the test only (the report itself has no scripts): measure what
# the browser laid out and painted, and write it where --dump-dom shows it.
PROBE = """<script>
const probe = {svgs: [], firstDead: []};
for (const svg of document.querySelectorAll('svg.ladder-svg')) {
  const r = svg.getBoundingClientRect();
  probe.svgs.push([svg.id, Math.round(r.width), Math.round(r.height)]);
}
for (const g of document.querySelectorAll('svg.ladder-svg g.arrow.first-dead')) {
  const line = g.querySelector('line'), rule = g.querySelector('text.rule'), label = g.querySelector('text.label');
  const lr = line.getBoundingClientRect(), rr = rule.getBoundingClientRect();
  probe.firstDead.push({label: label.textContent, rule: rule.textContent,
    stroke: getComputedStyle(line).stroke, ruleFill: getComputedStyle(rule).fill,
    lineWidth: Math.round(lr.width), ruleWidth: Math.round(rr.width), ruleHeight: Math.round(rr.height)});
}
document.body.setAttribute('data-probe', JSON.stringify(probe));
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--hide-scrollbars"]
    proc = subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def probe(tmp_path: Path, page: str) -> dict:
    instrumented = tmp_path / "probe.html"
    instrumented.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, "--window-size=1400,2000", "--dump-dom", instrumented.as_uri()).stdout
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m, "the page did not render (no probe result in the DOM)"
    return json.loads(html.unescape(m.group(1)))


def screenshot(tmp_path: Path, page: str, name: str, size: str) -> Path:
    source = tmp_path / f"{name}.html"
    source.write_text(page, encoding="utf-8")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / f"{name}.png"
    out.unlink(missing_ok=True)
    chromium(tmp_path, f"--window-size={size}", f"--screenshot={out}", source.as_uri())
    assert out.exists() and out.stat().st_size > 0
    return out


def first_failing_diagram(page: str) -> str:
    """The report's own style and its first red flow, alone on a page small enough to decode."""
    style = re.search(r"<style>.*?</style>", page, re.S).group(0)
    article = re.search(r'<article class="flow".*?</article>', page, re.S).group(0)
    return f'<!DOCTYPE html><html><head><meta charset="utf-8">{style}</head><body><main>{article}</main></body></html>'


def png_rgb(path: Path) -> tuple[int, int, list[bytearray]]:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what chromium writes) into rows."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
    assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # PNG filters (PNG spec 9.2)
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif kind == 4:
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(line if bpp == 3 else bytearray(v for j, v in enumerate(line) if j % 4 != 3))
        prev = line
    return width, height, rows


def red_pixels(path: Path) -> int:
    _, _, rows = png_rgb(path)
    count = 0
    for row in rows:
        for i in range(0, len(row), 3):
            r, g, b = row[i], row[i + 1], row[i + 2]
            count += abs(r - RED[0]) < 40 and g < 90 and b < 90
    return count


def check_in_browser(tmp_path: Path, report: Report, name: str, rule_text: str,
                     baseline: Report | None = None) -> None:
    page = render_html(report, baseline)
    seen = probe(tmp_path, page)
    assert len(seen["svgs"]) == len(report.flows) * (1 if baseline is None else 2)
    # Diagrams of red flows are open: they must take real space. (Green ones sit in closed
    # <details> and measure 0 until opened.)
    laid_out = [s for s in seen["svgs"] if s[1] > 0]
    assert laid_out and all(w > 300 and h > 100 for _, w, h in laid_out), seen["svgs"]
    assert seen["firstDead"], "no first-dead arrow in the page"
    first = seen["firstDead"][0]
    assert first["stroke"] == f"rgb({RED[0]}, {RED[1]}, {RED[2]})" == first["ruleFill"], first
    assert first["lineWidth"] > 50 and first["ruleWidth"] > 50 and first["ruleHeight"] > 5, first
    assert any(rule_text in d["rule"] for d in seen["firstDead"]), seen["firstDead"]

    screenshot(tmp_path, page, name, "1400,2400")
    size = "860,640" if baseline is None else "1700,720"
    clip = screenshot(tmp_path, first_failing_diagram(page), f"{name}-first-diagram", size)
    # The red arrow, its cross and its rule label are painted: hundreds of red pixels.
    assert red_pixels(clip) > 400


def test_hand_made_broken_report_in_chromium(tmp_path, broken_report):
    check_in_browser(tmp_path, broken_report, "report-hand-made", "drop-frag \u00b7 rules.yaml:42")


def test_real_broken_ruleset_in_chromium_beside_its_baseline(tmp_path):
    from fwtest.api import check

    broken = sorted((ROOT / "rulesets" / "broken").glob("*.yaml"))[0]
    expect = re.match(r"#\s*fwtest-expect:\s*rule=(\S+)", broken.read_text().splitlines()[0])
    assert expect, f"{broken.name} has no '# fwtest-expect: rule=...' first line"
    profile = str(ROOT / "rulesets" / "psap-edge.profile.yaml")
    report = check(str(broken), profile)
    baseline = check(str(ROOT / "rulesets" / "psap-edge.yaml"), profile)
    assert report.result == "fail" and baseline.result == "pass"
    rule = expect.group(1)
    check_in_browser(tmp_path, report, f"report-{broken.stem}", "policy drop" if rule == "policy" else rule,
                     baseline)
