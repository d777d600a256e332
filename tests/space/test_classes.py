"""The profile as packet classes: roles, states, ports and fragments as conntrack sees them."""

from __future__ import annotations

from space_helpers import RULESETS, flows, load, profile, reference

from fwtest.engine.packet import later_fragment_ports
from fwtest.space.classes import ANY_PORT, profile_classes, reassemble
from fwtest.traffic.record import FIRST_FRAGMENT, NOT_FRAGMENT


def by_label(classes, flow, transport, family, label):
    return [c for c in classes if (c.flow, c.transport, c.family, c.label) == (flow, transport, family, label)]


def test_new_sip_towards_the_psap_from_any_peer_and_any_source_port():
    classes = profile_classes(profile(), reference(), flows())
    invite, = by_label(classes, "emergency-call", "udp", 4, "INVITE")
    assert invite.states == ("new",) and invite.direction == "in" and invite.frag == "none"
    assert invite.sport == ANY_PORT and invite.dport == (5060, 5060, None)
    assert [str(n) for n in invite.src] == ["198.51.100.0/24"]
    assert [str(n) for n in invite.dst] == ["203.0.113.0/26"]
    # The template is the synthesiser's emergency INVITE, reassembled (conntrack defragments).
    assert b"urn:service:sos" in invite.template.payload and invite.template.frag == NOT_FRAGMENT


def test_replies_are_established_from_the_service_port_to_any_port():
    classes = profile_classes(profile(), reference(), flows())
    ok, = by_label(classes, "emergency-call", "udp", 6, "200 OK (INVITE)")
    assert ok.states == ("established",) and ok.direction == "out"
    assert ok.sport == (5060, 5060, None) and ok.dport == ANY_PORT
    syn_ack, = by_label(classes, "emergency-call", "tls", 4, "SYN-ACK")
    assert syn_ack.states == ("established",) and syn_ack.flags == 0x12


def test_media_both_ways_over_the_whole_ranges_even_and_odd():
    classes = profile_classes(profile(), reference(), flows())
    rtp = by_label(classes, "emergency-call", "udp", 4, "RTP psap->peer")
    # Either side may speak first: the first packet each way is an opener (NEW without helper).
    assert {c.states for c in rtp} == {("new",), ("established",)}
    assert all(c.sport == (16384, 32767, 0) and c.dport == (16384, 32767, 0) for c in rtp)
    rtcp = by_label(classes, "emergency-call", "udp", 4, "RTCP peer->psap")
    assert all(c.sport[2] == 1 and c.dport[2] == 1 for c in rtcp)


def test_with_the_sip_helper_media_is_related_except_over_tls():
    rs = load(RULESETS / "harmless" / "sip-helper-on.yaml")
    classes = profile_classes(profile(), rs, flows())
    udp_rtp = by_label(classes, "callback", "udp", 4, "RTP peer->psap")
    assert ("related",) in {c.states for c in udp_rtp}
    assert all(c.helper == "sip" for c in udp_rtp)
    tls_rtp = by_label(classes, "callback", "tls", 4, "RTP peer->psap")
    assert ("new",) in {c.states for c in tls_rtp} and ("related",) not in {c.states for c in tls_rtp}


def test_without_conntrack_the_rules_see_fragments_and_nothing_is_tracked():
    rs = load(RULESETS / "broken" / "fragments-stateless.yaml")
    classes = profile_classes(profile(), rs, flows())
    assert {s for c in classes for s in c.states} == {"untracked"}
    first, = by_label(classes, "emergency-call", "udp", 4, "INVITE (first fragment)")
    laters = by_label(classes, "emergency-call", "udp", 4, "INVITE (later fragment)")
    assert first.frag == "first" and first.dport == (5060, 5060, None)
    # A later fragment's "ports" are the bytes nf_tables reads there: pinned to the message's own.
    for later in laters:
        sport, dport = later_fragment_ports(later.template)
        assert later.frag == "later" and (later.sport, later.dport) == ((sport, sport, None), (dport, dport, None))
    assert not by_label(classes, "emergency-call", "udp", 4, "INVITE")


def test_an_entry_that_expires_during_the_call_makes_the_bye_new():
    rs = load(RULESETS / "broken" / "udp-timeout-shorter-than-call.yaml")
    classes = profile_classes(profile(), rs, flows())
    byes = by_label(classes, "emergency-call", "udp", 4, "BYE")
    assert {c.states for c in byes} == {("new",)}
    assert all("expired" in c.note and "120 s" in c.note and "udp_stream" in c.note for c in byes)
    # The reference keeps udp_stream at an hour: the BYE rides on the entry.
    ref = by_label(profile_classes(profile(), reference(), flows()), "emergency-call", "udp", 4, "BYE")
    assert {c.states for c in ref} == {("established",)} and not any(c.note for c in ref)


def datagram(flow):
    """The fragments of the flow's first fragmented datagram."""
    first = next(s.record for s in flow.steps if s.record.frag == FIRST_FRAGMENT)
    return [s.record for s in flow.steps if s.record.frag != NOT_FRAGMENT and s.record.frag_id == first.frag_id
            and s.record.src == first.src]


def test_reassembly_gives_the_datagram_the_fragments_carry():
    from scapy.layers.inet import IP, defragment

    flow = next(f for f in flows() if f.flow == "emergency-call" and f.transport == "udp" and f.family == 4)
    frags = datagram(flow)
    assert frags[0].frag == FIRST_FRAGMENT and not frags[-1].more_fragments and len(frags) >= 2
    whole = reassemble(frags)
    scapy_whole = bytes(defragment([IP(f.data) for f in frags])[0])
    assert whole.data[20:] == scapy_whole[20:]
    assert whole.dport == 5060 and b"urn:service:sos" in whole.payload
    # IPv6: the Fragment header is gone, its next header (UDP) takes its place.
    flow6 = next(f for f in flows() if f.flow == "emergency-call" and f.transport == "udp" and f.family == 6)
    whole6 = reassemble(datagram(flow6))
    assert whole6.data[6] == 17 and whole6.dport == 5060 and b"urn:service:sos" in whole6.payload


def test_the_classes_are_cached_with_their_flows_and_never_read_stale(tmp_path, monkeypatch):
    from dataclasses import replace

    from fwtest import cache
    from fwtest.space.classes import classify_profile
    from fwtest.space.proof import _stored_profile_classes
    from fwtest.traffic.synth import SynthesisedFlows

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FWTEST_CACHE", raising=False)
    monkeypatch.delenv("FWTEST_CACHE_DIR", raising=False)
    synthesised = SynthesisedFlows(flows())
    synthesised.key = "test-flows"
    fresh = classify_profile(profile(), reference(), flows())
    assert _stored_profile_classes(profile(), reference(), synthesised) == fresh
    (entry,) = (tmp_path / "fwtest").glob("classes-*.pickle")
    # Read back, not recomputed: a stored value that differs is what comes out.
    other = replace(fresh, classes=fresh.classes[:1])
    cache.store("classes", entry.stem.removeprefix("classes-"), other)
    assert _stored_profile_classes(profile(), reference(), synthesised) == other
    # A corrupt entry, or one of another type, is rebuilt.
    entry.write_bytes(b"\x80\x05not a pickle")
    assert _stored_profile_classes(profile(), reference(), synthesised) == fresh
    cache.store("classes", entry.stem.removeprefix("classes-"), fresh.classes)
    assert _stored_profile_classes(profile(), reference(), synthesised) == fresh
    # Other conntrack timeouts, other flows or another profile: another entry.
    ct = reference().conntrack
    shorter = replace(reference(), conntrack=replace(ct, timeouts={**ct.timeouts, "udp_stream": 60}))
    assert _stored_profile_classes(profile(), shorter, synthesised) == classify_profile(profile(), shorter, flows())
    synthesised.key = "other-flows"
    _stored_profile_classes(profile(), reference(), synthesised)
    _stored_profile_classes(replace(profile(), call_seconds=30), reference(), synthesised)
    assert len(list((tmp_path / "fwtest").glob("classes-*.pickle"))) == 4


def test_timelines_are_every_flow_alone_then_the_surge_together():
    from fwtest.space.classes import classify_profile

    classified = classify_profile(profile(), reference(), flows())
    alone = [t for t in classified.timelines if t.flow != "surge"]
    surge = [t for t in classified.timelines if t.flow == "surge"]
    assert len(alone) == sum(f.flow != "surge" for f in flows()) and len(surge) == 1
    assert classified.timelines[-1] is surge[0]
    surge_flows = [f for f in flows() if f.flow == "surge"]
    # Conntrack reassembles the fragmented INVITEs: the rules (and a bucket) see one packet each.
    later = sum(s.record.frag != NOT_FRAGMENT and s.record.frag != FIRST_FRAGMENT
                for f in surge_flows for s in f.steps)
    assert later and len(surge[0].packets) == sum(len(f.steps) for f in surge_flows) - later
    times = [p[0] for p in surge[0].packets]
    assert times == sorted(times)
    # Indices point into `every`; the proof's classes leave the surge's own out.
    assert {classified.every[p[1]].flow for p in surge[0].packets} == {"surge"}
    assert all(c.flow != "surge" for c in classified.classes)
    assert set(classified.classes) <= set(classified.every)
    for t in alone:
        assert {classified.every[p[1]].flow for p in t.packets} == {t.flow}
