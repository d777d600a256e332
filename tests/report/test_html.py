"""The HTML report: self-contained, escaped, one ladder diagram per flow row, the first
dead packet red at the firewall with its rule, the baseline beside it in diff mode."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from fwtest.api import Finding, Report
from fwtest.engine.outcome import judge
from fwtest.report.html import MAX_ROWS, X_FW, ladder_arrows, render_html
from fwtest.traffic.callflow import CallFlow, FlowStep

# Every element the renderer writes; anything else in a page came from user text.
OWN_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "header", "div", "h1", "h2", "h3",
            "span", "dl", "dt", "dd", "section", "p", "ul", "li", "strong", "a", "table", "thead", "tbody",
            "tr", "th", "td", "article", "details", "summary", "figure", "figcaption", "svg", "g", "rect",
            "line", "text", "path", "footer"}


class Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's tokenizer sees them."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.texts_in: dict[str, list[str]] = {}
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def by_class(self, cls: str) -> list[dict]:
        return [a for t, a in self.tags if cls in (a.get("class") or "").split()]


def svg_groups(markup: str, cls: str) -> list[str]:
    """The inner markup of each <g> of the ladder diagrams whose class list holds all of ``cls``."""
    out = []
    for svg in re.findall(r'<svg [^>]*class="ladder-svg".*?</svg>', markup, re.S):
        for m in re.finditer(r'<g class="([^"]*)">(.*?)</g>', svg, re.S):
            if set(cls.split()) <= set(m.group(1).split()):
                out.append(m.group(2))
    return out


def test_self_contained(broken_report):
    page = render_html(broken_report)
    assert page.startswith("<!DOCTYPE html>")
    # Nothing that makes a browser fetch: no scripts, links, images, imports or url().
    for needle in ("<script", "<link", "<img", "<iframe", "@import", "url(", "src="):
        assert needle not in page.lower(), needle
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}  # a namespace name


def test_summary_table_and_one_diagram_per_row(broken_report):
    page = render_html(broken_report)
    parsed = Page(page)
    text = " ".join(parsed.text)
    assert "FAIL" in text and "2 of 5 flows blocked" in text
    assert "rules.yaml" in text and "psap-edge" in text
    table = re.search(r'<table class="flows">.*?</table>', page, re.S).group(0)
    assert table.count("<tr") == 1 + len(broken_report.flows)
    svgs = parsed.by_class("ladder-svg")
    assert len(svgs) == len(broken_report.flows)
    assert all(int(a["width"]) > 0 and int(a["height"]) > 0 for a in svgs)
    # Every table row links to its diagram.
    ids = {a["id"] for t, a in parsed.tags if "id" in a}
    assert {h[1:] for h in re.findall(r'href="(#[^"]*)"', page)} <= ids


def test_first_dead_packet_is_red_at_the_firewall_with_its_rule(broken_report):
    page = render_html(broken_report)
    first = svg_groups(page, "arrow first-dead")
    assert len(first) == 2  # one per blocked row: emergency-call UDP/IPv4 and callback UDP/IPv4
    invite = first[0]
    assert ">INVITE</text>" in invite
    assert "\u2715 drop-frag \u00b7 rules.yaml:42" in invite
    # It stops at the firewall: its line ends left of the firewall lane, with a cross, no arrowhead.
    x2 = int(re.search(r'<line x1="\d+" y1="\d+" x2="(\d+)"', invite).group(1))
    assert x2 < X_FW and 'class="x"' in invite and 'class="head"' not in invite
    assert "policy drop \u00b7 rules.yaml:3" in first[1]
    # The CSS paints exactly these red.
    assert re.search(r"\.arrow\.first-dead line\{stroke:var\(--red\)", page)


def test_passing_report_is_green_and_draws_every_flow(passing_report):
    page = render_html(passing_report)
    assert '<header class="verdict pass">' in page and "the emergency path is intact" in page
    assert not svg_groups(page, "first-dead") and not svg_groups(page, "dead")
    assert len(Page(page).by_class("ladder-svg")) == 3


def test_media_runs_are_compressed_with_counts(kit):
    outcome = kit.judged(kit.call(rtp=40))
    arrows = ladder_arrows(outcome)
    labels = [(a.label, a.direction, a.count) for a in arrows]
    assert ("RTP", "in", 40) in labels and ("RTP", "out", 40) in labels and ("RTCP", "in", 8) in labels
    assert len(arrows) == 5 + 3 + 2
    page = render_html(kit.make_report([outcome]))
    assert "RTP \u00d740" in page


def test_later_dead_packets_are_drawn_dead_not_accepted(kit):
    outcome = kit.judged(kit.call("callback"), kit.kill_media_in)
    fates = {(a.label, a.direction): a.fate for a in ladder_arrows(outcome) if a.count > 1 or a.fate != "accept"}
    assert fates[("RTP", "in")] == "dead" and fates[("RTP", "out")] == "accept"


def test_diff_mode_draws_the_baseline_beside(kit, broken_report):
    base = kit.make_report([kit.judged(kit.call()), kit.judged(kit.call(family=6)),
                            kit.judged(kit.call("emergency-call", "tcp", 4)),
                            kit.judged(kit.call("callback"), kit.kill_media_in)], ruleset="base/rules.yaml")
    page = render_html(broken_report, base)
    parsed = Page(page)
    assert len(parsed.by_class("ladder-svg")) == len(broken_report.flows) + 4
    assert page.count("REGRESSED") == 1  # emergency-call UDP/IPv4 passed in the baseline
    assert "not in the baseline report" in page  # callback UDP/IPv6 is new
    text = " ".join(parsed.text)
    assert "1 flow regressed, 0 fixed, 1 not in the baseline" in text
    assert "Baseline:" in text


def test_loose_findings_are_listed(passing_report, loose_findings):
    report = Report(passing_report.ruleset, passing_report.profile, passing_report.flows, loose_findings)
    text = " ".join(Page(render_html(report)).text)
    assert re.search(r"REGRESSION\s+1 flow newly dies at\s+msrp-narrowed \(rules.yaml:77\)", text), text
    assert "MSRP SEND" in text and "newly dropped against the baseline" in text
    assert "tcp 198.51.100.9:40000 > 203.0.113.12:2855" in text
    assert "rate limit leaves 10% headroom" in text and "FAIL" in text


def test_findings_are_grouped_by_the_rule_to_fix(broken_report):
    text = " ".join(Page(render_html(broken_report)).text)
    assert re.search(r"BLOCKED\s+1 flow dies at\s+drop-frag \(rules.yaml:42\)", text), text
    assert re.search(r"BLOCKED\s+1 flow dies at\s+policy \(rules.yaml:3\): policy drop \(FORWARD\)", text)


def test_user_text_is_escaped(broken_report):
    page = render_html(broken_report)
    parsed = Page(page)
    assert {t for t, _ in parsed.tags} <= OWN_TAGS
    assert "drop <script>alert('x')</script> & \"fragments\"" in " ".join(parsed.text)


def test_long_flows_are_elided_but_keep_the_first_dead(kit):
    # Signalling that repeats without merging (alternating labels) past the row budget.
    steps = []
    for i in range(3 * MAX_ROWS):
        label = "OPTIONS" if i % 2 == 0 else "200 OK (OPTIONS)"
        direction = "in" if i % 2 == 0 else "out"
        src, dst = (kit.PEER[4], kit.PSAP[4]) if direction == "in" else (kit.PSAP[4], kit.PEER[4])
        steps.append(FlowStep(kit.packet(4, src, dst, 5060, 5060, i * 0.01), label, "keepalive", direction))
    flow = CallFlow("options-keepalive", "udp", 4, "x", tuple(steps))
    dead_at = 2 * MAX_ROWS
    outcome = judge(flow, [kit.dropped() if i == dead_at else kit.accepted() for i in range(len(steps))])
    arrows = ladder_arrows(outcome)
    assert len(arrows) <= MAX_ROWS + 2 and None in arrows
    assert [a.fate for a in arrows if a is not None].count("first-dead") == 1


fates = st.sampled_from(["accept", "accept", "accept", "drop"])
step_kinds = st.sampled_from([("INVITE", "setup", "in"), ("200 OK (INVITE)", "setup", "out"),
                              ("TCP ACK", "setup", "in"), ("RTP", "media-in", "in"), ("RTP", "media-out", "out"),
                              ("RTCP", "media-out", "out"), ("MSRP SEND", "media-in", "in"),
                              ("TCP ACK", "media-out", "out"), ("BYE", "teardown", "in")])


@settings(max_examples=80)
@given(plan=st.lists(st.tuples(step_kinds, fates), min_size=1, max_size=MAX_ROWS))
def test_ladder_accounts_for_every_packet(kit, plan):
    """Compression loses no packet and no death: counts add up to the packets, dead
    packets stay dead, and exactly the first one in time is drawn as the first dead."""
    steps, verdicts = [], []
    for i, ((label, phase, direction), fate) in enumerate(plan):
        src, dst = (kit.PEER[4], kit.PSAP[4]) if direction == "in" else (kit.PSAP[4], kit.PEER[4])
        steps.append(FlowStep(kit.packet(4, src, dst, 5060, 5060, i * 0.01), label, phase, direction))
        verdicts.append(kit.dropped() if fate == "drop" else kit.accepted())
    outcome = judge(CallFlow("emergency-call", "udp", 4, "x", tuple(steps)), verdicts)
    arrows = ladder_arrows(outcome)
    assert None not in arrows  # no more packets than the row budget: nothing is elided
    assert sum(a.count for a in arrows) == len(steps)
    dead = sum(a.count for a in arrows if a.fate in ("dead", "first-dead"))
    assert dead == sum(f == "drop" for _, f in plan)
    firsts = [a for a in arrows if a.fate == "first-dead"]
    assert len(firsts) == (0 if outcome.passed else 1)
    if firsts:
        assert firsts[0].label == outcome.first_dead.label and firsts[0].count == 1


@settings(max_examples=40)
@given(text=st.text(min_size=1, max_size=40))
def test_any_user_text_stays_text(shared_broken_report, text):
    f = shared_broken_report.findings[0]
    odd = Finding(f.kind, f.flow, text, f.packet, {"id": text, "file": text, "line": 9, "comment": text},
                  f.evidence, f.transport, f.family, text)
    report = Report(text, text, shared_broken_report.flows, [odd] + shared_broken_report.findings[1:])
    parsed = Page(render_html(report))
    assert {t for t, _ in parsed.tags} <= OWN_TAGS


def test_fragments_are_named_in_the_ladder(kit):
    """A stateless filter passes the first fragment (ports visible) and drops the later
    ones: the diagram must say which fragment died, not just "INVITE"."""
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.packet import Raw

    from fwtest.traffic.record import parse_ip

    big = IP(src=kit.PEER[4], dst=kit.PSAP[4]) / UDP(sport=5060, dport=5060) / Raw(b"v" * 3000)
    records = [parse_ip(bytes(f), 0.001 * i) for i, f in enumerate(fragment(big, fragsize=1400))]
    assert len(records) == 3
    steps = tuple(FlowStep(r, "INVITE", "setup", "in") for r in records)
    outcome = judge(CallFlow("emergency-call", "udp", 4, "x", steps),
                    [kit.accepted(), kit.dropped(), kit.dropped()])
    arrows = ladder_arrows(outcome)
    assert [(a.label, a.fate) for a in arrows] == [("INVITE (first fragment)", "accept"),
                                                   ("INVITE (later fragment)", "first-dead"),
                                                   ("INVITE (later fragment)", "dead")]
