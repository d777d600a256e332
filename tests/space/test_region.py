"""Reading regions back: rectangles are exact, points lie inside, text reads like a rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from space_helpers import addr

from fwtest.space.header import HeaderSpace
from fwtest.space.region import point_bdd, rect_bdd, summarise


@pytest.fixture(scope="module")
def space():
    sp = HeaderSpace(interfaces=["eth0", "eth1"])
    yield sp
    sp.release()


def box(space, *, src=None, dport=None, sport=None, proto=17, even=None):
    u = space.domain & space.family(4) & space.eq("proto", proto) & space.eq("frag", 0) \
        & space.state("new") & space.iface("iif", "eth0") & space.iface("oif", "eth1")
    if src is not None:
        u &= space.addr_match("src", addr(src))
    if dport is not None:
        u &= space.range("dport", *dport)
    if sport is not None:
        u &= space.range("sport", *sport)
    if even is not None:
        last = space.bdd.var(space.vars["dport"][-1])
        u &= ~last if even else last
    return u


CIDRS = ["198.51.100.0/24", "198.51.100.77/32", "198.51.100.0/25", "198.51.100.64/26", "10.0.0.0/8"]
RANGES = [(5060, 5060), (16384, 32767), (20000, 20000), (1, 65535), (1024, 2047)]


@settings(max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(CIDRS), st.sampled_from(RANGES), st.booleans(),
                          st.sampled_from([None, True, False])), min_size=1, max_size=5))
def test_rectangles_cover_the_region_exactly(space, parts):
    region = space.false
    for cidr, ports, remove, even in parts:
        b = box(space, src=cidr, dport=ports, even=even)
        region = (region & ~b) if remove else (region | b)
    summary = summarise(space, region, max_rects=1000)
    assert not summary.truncated
    assert len(summary.rects) == summary.total_rects
    back = space.false
    for rect in summary.rects:
        r = rect_bdd(space, rect)
        assert r & ~region == space.false, "a rectangle leaves the region"
        back |= r
        point = rect.point()
        assert point_bdd(space, point) & region != space.false, "a point outside the region"
    assert back == region
    if region != space.false:
        assert summary.count == space.count(region)


def test_a_host_missing_from_a_prefix_reads_as_two_ranges(space):
    region = box(space, src="198.51.100.0/24", dport=(5060, 5060)) & ~box(space, src="198.51.100.77/32")
    summary = summarise(space, region)
    assert summary.total_rects == 1
    text = summary.describe(space)[0]
    assert "198.51.100.0-198.51.100.76, 198.51.100.78-198.51.100.255" in text
    assert "dport 5060" in text and "udp" in text


def test_one_host_reads_as_that_host(space):
    summary = summarise(space, box(space, src="198.51.100.77/32", dport=(5060, 5060), sport=(1, 65535)))
    assert summary.describe(space) == ["IPv4 proto udp src 198.51.100.77 sport 1-65535 dst any dport 5060 "
                                       "state new iif eth0 oif eth1"]


def test_even_ports_read_as_a_range_of_even_ports(space):
    summary = summarise(space, box(space, src="198.51.100.0/24", dport=(16384, 32767), even=True))
    j = summary.rects[0].to_json(space)
    assert j["dport"] == ["16384-32766"] and j["dport_parity"] == "even"
    assert "dport 16384-32766 (even)" in summary.describe(space)[0]


def test_points_prefer_the_hint_when_it_lies_inside(space):
    summary = summarise(space, box(space, src="198.51.100.0/24", dport=(5060, 5060), sport=(1, 65535)))
    rect = summary.rects[0]
    assert rect.point({"sport": 5060})["sport"] == 5060
    assert rect.point({"sport": 0})["sport"] == 1          # outside: the lowest
    assert rect.point()["src"] == 0xC6336400


def test_empty_region(space):
    s = summarise(space, space.false)
    assert s.rects == () and s.count == 0 and s.describe(space) == []


def test_icmp_fields_read_as_type_and_code(space):
    u = space.domain & space.family(4) & space.eq("proto", 1) & space.eq("frag", 0) & space.eq("sport", 3) \
        & space.range("dport", 0, 4) & space.state("new") & space.iface("iif", "eth0") & space.iface("oif", "eth1")
    text = summarise(space, u).describe(space)[0]
    assert "icmp-type 3" in text and "icmp-code 0-4" in text
