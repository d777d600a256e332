"""Command line: a thin shell over the Python API (DESIGN.md "Contract: command line").

Exit codes: 0 the emergency path is intact, 1 something on it is blocked or
regressed, 2 bad input or usage, printed as one line ``file:line: message``;
3 is fwtest's own bug (an internal error), never a verdict on the rules.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fwtest.errors import InputError
from fwtest.report import FORMATS

if TYPE_CHECKING:
    from fwtest.profile import EmergencyProfile

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors are exit 2 with one line, like bad input
        raise InputError("fwtest", 0, f"{message} (see fwtest {self.prog.split()[-1]} --help)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="fwtest", description="Prove that a firewall change cannot cut the 911 call path.")
    parser.add_argument("--version", action=_Version, nargs=0, help="print fwtest's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="does the emergency path get through these rules?")
    check.add_argument("rules", nargs="*", metavar="RULES",
                       help="ruleset file(s): YAML, iptables-save, nft -j JSON; several make one ruleset "
                            "(default: the rulesets configured in [tool.fwtest] / fwtest.yaml)")
    _profile_arg(check)
    check.add_argument("--baseline", action="append", default=[], metavar="B",
                       help="the ruleset before the change: file(s), or git:REV[:path]; once per file")
    check.add_argument("--trace", action="append", default=[], metavar="PCAP",
                       help="captured traffic to replay as evidence (repeatable)")
    check.add_argument("--format", choices=FORMATS, default=None,
                       help="report format on stdout (default table)")
    check.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                       help="write a report to FILE, in the format its extension names "
                            "(.sarif .xml .html .json .txt); repeatable")
    check.add_argument("--seed", type=int, default=0, help="seed of the synthetic traffic (default 0)")
    check.add_argument("--jobs", type=int, default=1, metavar="N", help="replay --trace files in N processes")
    _engine_arg(check)
    check.add_argument("--no-proof", action="store_true",
                       help="replay evidence only: skip the symbolic proof and the rule analysis")
    check.add_argument("--witness-dir", metavar="DIR",
                       help="write the proof's witness packets (and the diff's) as pcap files here")

    diff = sub.add_parser("diff", help="what a change does to the emergency path (exact, symbolic)")
    diff.add_argument("base", metavar="BASE", help="the ruleset before the change (file or git:REV:path)")
    diff.add_argument("candidate", metavar="CANDIDATE", help="the ruleset after the change")
    _profile_arg(diff)
    diff.add_argument("--format", choices=["table", "json"], default="table")
    diff.add_argument("--witness-dir", metavar="DIR", help="write witness packets as pcap files here")

    fz = sub.add_parser("fuzz", help="which rule edits would cut the 911 path, and how good the gate is")
    fz.add_argument("rules", nargs="+", metavar="RULES")
    _profile_arg(fz)
    fz.add_argument("--max-examples", type=int, default=40,
                    help="Hypothesis examples per search round (gate mode: candidates)")
    fz.add_argument("--seed", type=int, default=0)
    fz.add_argument("--mode", choices=["default", "scan", "gate"], default="default",
                    help="scan: single edits only; gate: check that every breaking edit fails fwtest check")
    fz.add_argument("--kernel", choices=["auto", "yes", "no"], default="auto",
                    help="gate mode: also judge edits with the real kernel")
    fz.add_argument("--seeds", metavar="DIR", help="incident scenarios to check and apply first, e.g. seeds/")
    fz.add_argument("--kinds", default="insert,delete,move,action,narrow,widen,limit,string")
    fz.add_argument("--format", choices=["table", "json"], default="table")
    fz.add_argument("-o", "--output", metavar="FILE")

    bench = sub.add_parser("bench", help="replay speed and memory: fwtest against the naive Scapy loop")
    if command == "bench":  # its arguments live with its code, which imports numpy: only when asked
        from fwtest import bench as bench_module
        bench_module.add_arguments(bench)

    export = sub.add_parser("export", help="a ruleset as an iptables-restore or nft -f script")
    export.add_argument("rules", nargs="+", metavar="RULES")
    export.add_argument("--to", choices=["iptables", "ip6tables", "nft"], required=True)
    _profile_arg(export)

    explain = sub.add_parser("explain", help="rule-by-rule walk of one packet")
    explain.add_argument("rules", metavar="RULES")
    explain.add_argument("packet", metavar="PACKET",
                         help="e.g. 'udp 198.51.100.7:5060 > 203.0.113.10:5060 sip=INVITE state=new'")
    explain.add_argument("--path", choices=["forward", "input", "output"], default=None,
                         help="netfilter path of the packet (default: the profile's firewall position, else forward)")
    _profile_arg(explain)

    replay = sub.add_parser("replay", help="per-packet verdicts for a capture")
    replay.add_argument("paths", nargs="+", metavar="RULES... PCAP")
    _profile_arg(replay)
    replay.add_argument("--format", choices=["table", "jsonl"], default="table")

    synth = sub.add_parser("synth", help="write the synthetic emergency traffic as pcap")
    _profile_arg(synth)
    synth.add_argument("-o", "--output", metavar="OUT.pcap", required=True)
    synth.add_argument("--seed", type=int, default=0)
    return parser


def _engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["model", "kernel", "both"], default="model",
                   help="model: fwtest's engine; kernel: real netfilter in network namespaces (Linux, root); "
                        "both: run both and fail on any disagreement")


def _profile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="P",
                   help="profile YAML (default: [tool.fwtest] in pyproject.toml, else fwtest.yaml)")


class _Version(argparse.Action):
    # argparse's "version" action wants the string up front; reading the
    # installed metadata costs every command 10 ms, so it is read when asked.
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        sys.stdout.write(f"fwtest {_version()}\n")
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fwtest")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _profile(path: str | None):
    from fwtest.profile import discover_profile, load_profile
    return load_profile(path) if path else discover_profile()


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise InputError(path, 0, f"cannot write report: {e.strerror}") from None


def cmd_check(args: argparse.Namespace) -> int:
    from fwtest.api import check
    from fwtest.config import RulesetEntry, find_config
    from fwtest.report import format_for, render
    from fwtest.report.table import use_colour

    config = find_config()
    if args.rules:
        entries = [RulesetEntry(tuple(args.rules))]
    elif config is not None and config.rulesets:
        entries = list(config.rulesets)
    else:
        raise InputError(config.path if config else "fwtest", 0,
                         "no ruleset given and none configured ([tool.fwtest] rulesets = [...])")
    reports, baselines = [], []
    profiles: dict[str | None, EmergencyProfile] = {}
    for entry in entries:
        where = args.profile or entry.profile
        if where not in profiles:
            profiles[where] = _profile(where)
        profile = profiles[where]
        baseline = args.baseline or ([entry.baseline] if entry.baseline else [])
        if not baseline and config is not None and config.baseline:
            baseline = [config.baseline]
        traces = args.trace or list(entry.traces) or (list(config.traces) if config else [])
        report = check(list(entry.rules), profile, baseline=baseline or None, traces=traces, seed=args.seed,
                       proof=not args.no_proof, analysis=not args.no_proof, engine=args.engine,
                       jobs=args.jobs)
        reports.append(report)
        if args.witness_dir:
            from fwtest.space import write_witnesses
            for found in (report.proof, report.diff):
                if found is not None:
                    write_witnesses(found, args.witness_dir)
        baselines.append(report.baseline_report)

    outputs = args.output or (list(config.outputs) if config and not args.format else [])
    for path in outputs:
        text = render(reports, format_for(path, args.format if len(outputs) == 1 else None),
                      baselines=baselines)
        _write(path, text)
    # The table always goes to the terminal (CI job logs and summaries show it),
    # unless a format for stdout was asked for.
    stdout_format = args.format if (args.format and not outputs) else "table"
    sys.stdout.write(render(reports, stdout_format, colour=use_colour(sys.stdout), baselines=baselines))
    return max(r.exit_code for r in reports)


def cmd_explain(args: argparse.Namespace) -> int:
    from fwtest.engine import explain
    from fwtest.report.explain import render_explanation
    from fwtest.rules import load_ruleset
    from fwtest.traffic.spec import parse_packet_spec

    ruleset = load_ruleset(args.rules)
    profile = None
    if args.profile or args.path is None:
        try:
            profile = _profile(args.profile)
        except InputError:
            if args.profile:
                raise
    path = args.path or (profile.firewall if profile else "forward")
    native_hook = profile.firewall if profile else path
    spec = parse_packet_spec(args.packet)
    explanation = explain(ruleset, spec.record, path=path, state=spec.state or "new", native_hook=native_hook)
    sys.stdout.write(render_explanation(explanation))
    return EXIT_PASS if explanation.verdict.accepted else EXIT_FAIL


def cmd_replay(args: argparse.Namespace) -> int:
    from fwtest.replay import replay_capture
    from fwtest.report.replay import jsonl_line, render_replay_table

    if len(args.paths) < 2:
        raise InputError("fwtest", 0, "replay needs RULES... and a PCAP (the last argument)")
    *rules, pcap = args.paths
    sink = None
    if args.format == "jsonl":
        def sink(index, frame, record, verdict):  # noqa: ANN001 - streamed as decided: bounded memory
            sys.stdout.write(jsonl_line(index, frame, record, verdict) + "\n")
    result = replay_capture(rules, pcap, _profile(args.profile), on_packet=sink)
    if args.format == "table":
        render_replay_table(result, sys.stdout)
    return result.exit_code


def cmd_synth(args: argparse.Namespace) -> int:
    from fwtest.traffic.pcapwrite import write_flows
    from fwtest.traffic.synth import synthesize

    flows = synthesize(_profile(args.profile), seed=args.seed)
    try:
        count = write_flows(flows, args.output)
    except OSError as e:
        raise InputError(args.output, 0, f"cannot write pcap: {e.strerror}") from None
    sys.stderr.write(f"fwtest: wrote {count} packets of {len(flows)} synthetic calls to {args.output}\n")
    return EXIT_PASS


def cmd_diff(args: argparse.Namespace) -> int:
    from fwtest.api import load_baseline
    from fwtest.report.diff import render_diff
    from fwtest.rules import load_ruleset
    from fwtest.space import diff, write_witnesses

    profile = _profile(args.profile)
    base, label, notes = load_baseline([args.base], args.candidate)
    if base is None:
        raise InputError(args.base, 0, "; ".join(notes) or "no baseline")
    candidate = load_ruleset(args.candidate)
    result = diff(base, candidate, profile)
    if args.witness_dir:
        write_witnesses(result, args.witness_dir)
    sys.stdout.write(render_diff(result, label, args.candidate, args.format))
    return 0 if result.passed else 1


def cmd_fuzz(args: argparse.Namespace) -> int:
    from fwtest.fuzz import run_fuzz_command

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    text, code = run_fuzz_command(args.rules, _profile(args.profile), max_examples=args.max_examples,
                                  seed=args.seed, mode=args.mode, kernel=args.kernel, seeds=args.seeds,
                                  output_format=args.format, kinds=kinds)
    if args.output:
        _write(args.output, text)
    else:
        sys.stdout.write(text)
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    from fwtest import bench

    return bench.run(args)


def cmd_export(args: argparse.Namespace) -> int:
    from fwtest.rules import load_ruleset
    from fwtest.rules.export import to_iptables, to_nft

    ruleset = load_ruleset(args.rules)
    profile = None
    try:
        profile = _profile(args.profile)
    except InputError:
        if args.profile:
            raise
    hook = profile.firewall if profile else "forward"
    sip_ports = profile.sip_helper_ports if profile else (5060,)
    if args.to == "nft":
        sys.stdout.write(to_nft(ruleset, native_hook=hook, sip_ports=sip_ports))
        return EXIT_PASS
    scripts = to_iptables(ruleset, native_hook=hook, sip_ports=sip_ports)
    family = 6 if args.to == "ip6tables" else 4
    if family not in scripts:
        raise InputError(args.rules[0], 0, f"the ruleset has no IPv{family} rules for {args.to}")
    sys.stdout.write(scripts[family])
    return EXIT_PASS


COMMANDS = {"check": cmd_check, "diff": cmd_diff, "export": cmd_export, "fuzz": cmd_fuzz, "bench": cmd_bench, "explain": cmd_explain, "replay": cmd_replay, "synth": cmd_synth}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser(argv[0] if argv else None).parse_args(argv)
        return COMMANDS[args.command](args)
    except InputError as e:
        sys.stderr.write(f"{e}\n")
        return EXIT_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("fwtest: interrupted\n")
        return 130
    except BrokenPipeError:  # `fwtest replay ... | head`
        return EXIT_PASS
    except Exception as e:  # never a traceback for users; FWTEST_DEBUG=1 shows it
        if os.environ.get("FWTEST_DEBUG"):
            raise
        sys.stderr.write(f"fwtest: internal error: {type(e).__name__}: {e} "
                         "(a bug in fwtest; rerun with FWTEST_DEBUG=1 for the traceback)\n")
        return EXIT_INTERNAL


def console() -> None:
    """The ``fwtest`` command: ``main`` in a process of its own."""
    # A check holds a few hundred thousand long-lived objects that are no
    # cyclic garbage (packet records of the synthetic calls, BDD references).
    # CPython's cyclic collector walks all of them at every full collection,
    # and once more at exit: that was about 0.15 s of `fwtest check`. So, as
    # mypy does, collect rarely; and freeze what is alive at the end, since
    # the process ends there (atexit handlers still run).
    gc.set_threshold(100_000, 50, 100)
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
