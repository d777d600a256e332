"""The header space: encodings of fields and matches, on both BDD backends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from space_helpers import addr, ports

from fwtest.rules.ir import IfaceMatch, Match
from fwtest.space.header import HeaderSpace, ProofError, interface_universe

BACKENDS = ["cudd", "autoref"]


@pytest.fixture(scope="module", params=BACKENDS)
def space(request):
    sp = HeaderSpace(interfaces=["eth0", "eth1", "eth+"], backend=request.param)
    yield sp
    sp.release()


def member(space: HeaderSpace, u, **fields) -> bool:
    point = space.true
    for name, value in fields.items():
        point &= space.eq(name, value)
    return (point & u) != space.false


@settings(max_examples=150)
@given(lo=st.integers(0, 65535), hi=st.integers(0, 65535), x=st.integers(0, 65535))
def test_range_is_exactly_the_interval(space, lo, hi, x):
    lo, hi = min(lo, hi), max(lo, hi)
    u = space.range("dport", lo, hi)
    for value in {x, lo, hi, max(0, lo - 1), min(65535, hi + 1)}:
        assert member(space, u, dport=value) == (lo <= value <= hi)


@settings(max_examples=60)
@given(first=st.integers(0, 2 ** 128 - 1), size=st.integers(1, 2 ** 20), probe=st.integers(-3, 2 ** 20 + 3))
def test_address_ranges_on_128_bits(space, first, size, probe):
    last = min(first + size - 1, 2 ** 128 - 1)
    u = space.range("src", first, last)
    value = min(max(first + probe, 0), 2 ** 128 - 1)
    assert member(space, u, src=value) == (first <= value <= last)


def test_ipv4_lives_in_the_low_32_bits_and_the_family_bit(space):
    v4 = space.addr_match("src", addr("0.0.0.0/0"))
    v6 = space.addr_match("src", addr("::/0"))
    # An IPv4 packet never has address bits above 32; ::c633:644d is IPv6 all the same.
    assert member(space, space.domain & v4, fam=0, src=0xC633644D)
    assert not member(space, space.domain & v4, fam=0, src=1 << 40)
    assert member(space, space.domain & v6, fam=1, src=0xC633644D)
    assert (v4 & v6) == space.false


def test_negated_address_match_stays_in_its_family(space):
    # !198.51.100.0/24 matches other IPv4 sources, never IPv6 ones (nft "ip saddr !=").
    u = space.match(Match(src=addr("198.51.100.0/24", negated=True)))
    assert member(space, u, fam=0, src=0x0A000001)
    assert not member(space, u, fam=0, src=0xC6336401)
    assert not member(space, u, fam=1, src=0x0A000001)


def test_port_match_never_matches_packets_without_ports(space):
    u = space.match(Match(dport=ports(5060, negated=True)))
    assert member(space, u, proto=17, frag=0, dport=5061)
    # A later fragment's "ports" are the bytes nf_tables reads there (see later_fragment_ports).
    assert member(space, u, proto=17, frag=2, dport=12345)
    assert not member(space, u, proto=17, frag=2, dport=5060)
    assert not member(space, u, proto=47)                  # GRE has none either


def test_interface_wildcards_and_the_unmentioned_interface(space):
    names = space.ifaces
    assert None in names and "eth0" in names and "eth1" in names
    plus = space.iface_match("iif", IfaceMatch(("eth+",)))
    for i, name in enumerate(names):
        assert member(space, plus, iif=i) == (name is not None and name.startswith("eth"))
    # The universe has a name eth+ matches that no exact name equals, and one nothing matches.
    assert any(n not in (None, "eth0", "eth1") and n.startswith("eth") for n in names)
    assert any(n is not None and not n.startswith("eth") for n in names)


def test_interface_universe_representatives_are_distinct():
    names = interface_universe(["eth0", "eth+", "ethfw0", "ethx+", "lo"])
    assert len(set(names)) == len(names)
    reps = [n for n in names if n not in (None, "eth0", "ethfw0", "lo")]
    assert any(n.startswith("ethx") for n in reps)
    assert any(n.startswith("eth") and not n.startswith("ethx") for n in reps)


def test_hook_without_an_input_interface_sees_none(space):
    m = Match(iface_in=IfaceMatch(("eth0",)))
    seen = space.match(m, sees_in=False)
    # On output/postrouting the input device does not exist: `-i eth0` never matches.
    assert seen == space.false
    negated = space.match(Match(iface_in=IfaceMatch(("eth0",), negated=True)), sees_in=False)
    assert negated == space.domain


def test_unknown_atom_is_an_internal_error(space):
    from fwtest.rules.ir import StringMatch
    with pytest.raises(ProofError):
        space.match(Match(string=(StringMatch(b"never declared"),)))


def test_count_counts_headers(space):
    u = space.domain & space.family(4) & space.eq("proto", 17) & space.range("dport", 5060, 5061) \
        & space.addr_match("src", addr("198.51.100.0/30")) & space.addr_match("dst", addr("203.0.113.1/32")) \
        & space.range("sport", 1, 10) & space.eq("frag", 0) & space.state("new") \
        & space.iface("iif", "eth0") & space.iface("oif", "eth1")
    assert space.count(u) == 2 * 4 * 10


def test_dd_loads_without_networkx_and_leaves_it_importable():
    # load_backend hides networkx while dd imports (start-up time); dd must
    # still work, and networkx must stay importable for whoever wants it.
    import subprocess
    import sys

    code = ("import sys\n"
            "from fwtest.space.header import load_backend\n"
            "bdd = load_backend().BDD()\n"
            "bdd.declare('x', 'y')\n"
            "assert bdd.add_expr('x & y') != bdd.false\n"
            "assert 'networkx' not in sys.modules, 'networkx was imported'\n"
            "import networkx\n"
            "assert networkx.DiGraph\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
