"""The ruleset compiled once into per-chain lists, and the chain walk.

``compile_ruleset`` turns the IR into ``CompiledChain`` objects whose rules
carry their tests (fwtest.engine.match), an integer action and, for jumps,
the target chain object itself: the per-packet loop never looks a name up.

The walk is netfilter's (nf_tables_core.c ``nft_do_chain``, ip_tables.c
``ipt_do_table``): first match wins; ``jump`` pushes a return point,
``goto`` does not (so a ``return`` in a goto'd chain, or its end, resumes
the chain that *jumped* into the chain that did the goto); the end of a user
chain returns; ``return`` or the end of the base chain applies the base
chain's policy; ``log`` and ``continue`` fall through; ``accept`` ends this
base chain only (the caller runs the next base chain on the hook); ``drop``
and ``reject`` end the packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from fwtest.engine.limits import LimitState
from fwtest.engine.match import Test, WhyNot, compile_match
from fwtest.engine.packet import PacketView
from fwtest.errors import InputError
from fwtest.rules.ir import TCP, UDP, BaseChain, Rule, Ruleset
from fwtest.traffic.record import FIRST_FRAGMENT, LATER_FRAGMENT, TCP_RST

ACCEPT, DROP, REJECT, LOG, RETURN, JUMP, GOTO, NOTRACK, CT_HELPER = range(9)
_KINDS = {"accept": ACCEPT, "drop": DROP, "reject": REJECT, "log": LOG, "continue": LOG,
          "return": RETURN, "jump": JUMP, "goto": GOTO, "notrack": NOTRACK, "ct_helper": CT_HELPER}
VERDICT_NAMES = {ACCEPT: "accept", DROP: "drop", REJECT: "reject"}

SUPPORTED_HELPERS = frozenset({"sip"})


class CompiledRule:
    __slots__ = ("rule", "tests", "whys", "kind", "target", "helper")

    def __init__(self, rule: Rule, tests: tuple[Test, ...], whys: tuple[WhyNot, ...], kind: int) -> None:
        self.rule = rule
        self.tests = tests
        self.whys = whys
        self.kind = kind
        self.target: CompiledChain | None = None
        self.helper: str | None = None


class CompiledChain:
    __slots__ = ("name", "rules")

    def __init__(self, name: str) -> None:
        self.name = name
        self.rules: tuple[CompiledRule, ...] = ()


@dataclass(frozen=True)
class CompiledBase:
    base: BaseChain
    chain: CompiledChain


@dataclass(frozen=True)
class Step:
    """One thing ``explain`` saw: a rule looked at, or a chain-level event."""

    hook: str
    chain: str
    rule: Rule | None        # None for a policy
    matched: bool
    why_not: str             # why the rule did not match ("" when it did)
    action: str              # what happened: "accept", "jump rate-guard", "return", "policy drop", "-"
    depth: int               # 0 in the base chain, +1 per jump or goto


class CompiledRuleset:
    def __init__(self, ruleset: Ruleset, limits: LimitState, native_hook: str) -> None:
        self.ruleset = ruleset
        self.native_hook = native_hook
        self.chains: dict[str, CompiledChain] = {name: CompiledChain(name) for name in ruleset.chains}
        for name, chain in ruleset.chains.items():
            compiled = []
            for rule in chain.rules:
                kind = _KINDS.get(rule.action.kind)
                if kind is None:
                    raise InputError(rule.source.file, rule.source.line,
                                     f"rule {rule.id}: action {rule.action.kind!r} is not modelled")
                tests, whys = compile_match(rule.match, rule, limits)
                cr = CompiledRule(rule, tests, whys, kind)
                if kind in (JUMP, GOTO):
                    target = self.chains.get(rule.action.target or "")
                    if target is None:
                        raise InputError(rule.source.file, rule.source.line,
                                         f"rule {rule.id}: {rule.action.kind} to missing chain "
                                         f"{rule.action.target!r}")
                    cr.target = target
                elif kind == CT_HELPER:
                    if rule.action.target not in SUPPORTED_HELPERS:
                        raise InputError(rule.source.file, rule.source.line,
                                         f"rule {rule.id}: conntrack helper {rule.action.target!r} is not "
                                         f"modelled (fwtest models {', '.join(sorted(SUPPORTED_HELPERS))})")
                    cr.helper = rule.action.target
                compiled.append(cr)
            self.chains[name].rules = tuple(compiled)
        self._check_loops()
        self._bases: dict[tuple[str, int], list[CompiledBase]] = {}
        for base in ruleset.bases:
            if base.chain not in self.chains:
                raise InputError(base.source.file, base.source.line,
                                 f"base chain {base.chain!r} has no chain of that name")

    def bases(self, hook: str, family: int) -> list[CompiledBase]:
        key = (hook, family)
        found = self._bases.get(key)
        if found is None:
            found = [CompiledBase(b, self.chains[b.chain])
                     for b in self.ruleset.base_chains(hook, family, self.native_hook)]
            self._bases[key] = found
        return found

    def _check_loops(self) -> None:
        # A jump/goto cycle would walk forever (the kernel refuses to load one: ELOOP).
        state: dict[str, int] = {}

        def visit(name: str) -> None:
            state[name] = 1
            for cr in self.chains[name].rules:
                if cr.target is None:
                    continue
                nxt = cr.target.name
                if state.get(nxt) == 1:
                    rule = cr.rule
                    raise InputError(rule.source.file, rule.source.line,
                                     f"rule {rule.id}: {rule.action.kind} to {nxt} closes a loop of chains")
                if nxt not in state:
                    visit(nxt)
            state[name] = 2

        for name in self.chains:
            if name not in state:
                visit(name)


def silent_reject(p: PacketView, rule: Rule) -> str:
    """Why the kernel cannot answer a packet this reject rule refuses ("" when it answers).

    nf_reject_ipv4/ipv6 send no ICMP error or RST for a non-first fragment,
    nor for a first fragment whose transport checksum cannot be verified on
    the fragment alone (all but UDP without checksum); icmp_send never
    answers an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4); no RST answers an
    RST. Then the reject is a silent drop. (Checksums of whole packets are
    assumed valid: the model does not verify them.)
    """
    if p.frag == LATER_FRAGMENT:
        return "reject cannot answer a later fragment: silently dropped"
    l4 = p.record.l4_offset
    if p.frag == FIRST_FRAGMENT:
        udp_without_checksum = p.proto == UDP and len(p.data) >= l4 + 8 and p.data[l4 + 6:l4 + 8] == b"\0\0"
        if not udp_without_checksum:
            return "reject cannot verify a fragment's checksum, so it sends no answer: silently dropped"
    if (rule.action.target or "") == "tcp-reset":
        if p.proto == TCP and p.tcp_flags & TCP_RST:
            return "reject with tcp-reset does not answer an RST: silently dropped"
        return ""
    if len(p.data) > l4 and ((p.proto == 1 and p.family == 4 and p.data[l4] in (3, 4, 5, 11, 12))
                             or (p.proto == 58 and p.family == 6 and p.data[l4] < 128)):
        return "reject never answers an ICMP error with another: silently dropped"
    return ""


def _side_effect(cr: CompiledRule, p: PacketView) -> None:
    if cr.kind == NOTRACK:
        # nft_notrack_eval / xt_CT --notrack: only a packet without a conntrack
        # entry can be made untracked (in the raw table, before the lookup).
        if p.conn is None:
            p.notrack = True
            if p.looked_up:
                p.state = "untracked"
    elif cr.kind == CT_HELPER:
        if not p.looked_up:
            p.helper_template = cr.helper      # raw table -j CT --helper: a template for new entries
        elif p.conn is not None and not p.conn.confirmed and p.conn.proto in (6, 17):
            p.conn.helper = cr.helper          # nft "ct helper set": unconfirmed entries only


def walk_base(cb: CompiledBase, p: PacketView, trace: list[Rule]) -> tuple[int, Rule | None]:
    """Run one base chain. Returns (ACCEPT|DROP|REJECT, deciding rule or None for the policy)."""
    stack: list[tuple[tuple[CompiledRule, ...], int]] = []
    rules = cb.chain.rules
    i = 0
    while True:
        if i >= len(rules):
            if not stack:
                return (ACCEPT if cb.base.policy == "accept" else DROP), None
            rules, i = stack.pop()
            continue
        cr = rules[i]
        i += 1
        for test in cr.tests:
            if not test(p):
                break
        else:
            kind = cr.kind
            trace.append(cr.rule)
            if kind <= REJECT:
                return kind, cr.rule
            if kind == JUMP:
                stack.append((rules, i))
                rules, i = cr.target.rules, 0   # type: ignore[union-attr]
            elif kind == GOTO:
                rules, i = cr.target.rules, 0   # type: ignore[union-attr]
            elif kind == RETURN:
                if not stack:
                    return (ACCEPT if cb.base.policy == "accept" else DROP), None
                rules, i = stack.pop()
            elif kind != LOG:
                _side_effect(cr, p)


def walk_base_explained(cb: CompiledBase, p: PacketView, trace: list[Rule], steps: list[Step]
                        ) -> tuple[int, Rule | None]:
    """``walk_base`` that also records every rule looked at and why it did not match."""
    hook = p.hook
    stack: list[tuple[CompiledChain, int]] = []
    chain = cb.chain
    i = 0
    policy = ACCEPT if cb.base.policy == "accept" else DROP

    def at_policy(why: str) -> tuple[int, None]:
        steps.append(Step(hook, cb.chain.name, None, True, "", f"policy {cb.base.policy}{why}", 0))
        return policy, None

    while True:
        depth = len(stack)
        if i >= len(chain.rules):
            if not stack:
                return at_policy(" (end of chain)")
            steps.append(Step(hook, chain.name, None, True, "", "end of chain: return", depth))
            chain, i = stack.pop()
            continue
        cr = chain.rules[i]
        i += 1
        why = ""
        for test, whynot in zip(cr.tests, cr.whys, strict=True):
            if not test(p):
                why = whynot(p)
                break
        if why:
            steps.append(Step(hook, chain.name, cr.rule, False, why, "-", depth))
            continue
        kind = cr.kind
        trace.append(cr.rule)
        steps.append(Step(hook, chain.name, cr.rule, True, "", str(cr.rule.action), depth))
        if kind <= REJECT:
            return kind, cr.rule
        if kind == JUMP:
            stack.append((chain, i))
            chain, i = cr.target, 0             # type: ignore[assignment]
        elif kind == GOTO:
            chain, i = cr.target, 0             # type: ignore[assignment]
        elif kind == RETURN:
            if not stack:
                return at_policy(" (return from the base chain)")
            chain, i = stack.pop()
        elif kind != LOG:
            _side_effect(cr, p)
