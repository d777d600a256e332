"""Command line: a thin shell over the Python API (DESIGN.md "Contract: command line").

Exit codes: 0 the emergency path is intact, 1 something on it is blocked or
regressed, 2 bad input or usage, printed as one line ``file:line: message``;
3 is fwtest's own bug (an internal error), never a verdict on the rules.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from fwtest.errors import InputError

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors are exit 2 with one line, like bad input
        raise InputError("fwtest", 0, f"{message} (see fwtest {self.prog.split()[-1]} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fwtest", description="Prove that a firewall change cannot cut the 911 call path.")
    parser.add_argument("--version", action="version", version=f"fwtest {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="does the emergency path get through these rules?")
    check.add_argument("rules", nargs="+", metavar="RULES", help="ruleset file(s): YAML, iptables-save, nft -j JSON")
    _profile_arg(check)
    check.add_argument("--format", choices=["table", "json"], default="table")
    check.add_argument("-o", "--output", metavar="FILE", help="write the report here instead of stdout")
    check.add_argument("--seed", type=int, default=0, help="seed of the synthetic traffic (default 0)")

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


def _profile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="P",
                   help="profile YAML (default: [tool.fwtest] in pyproject.toml, else fwtest.yaml)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fwtest")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _profile(path: str | None):
    from fwtest.profile import discover_profile, load_profile
    return load_profile(path) if path else discover_profile()


def _emit(text: str, output: str | None) -> None:
    if output:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise InputError(output, 0, f"cannot write report: {e.strerror}") from None
    else:
        sys.stdout.write(text)


def cmd_check(args: argparse.Namespace) -> int:
    from fwtest.check import check

    report = check(args.rules, _profile(args.profile), seed=args.seed)
    if args.format == "json":
        _emit(json.dumps(report.to_json(), indent=2) + "\n", args.output)
    else:
        from fwtest.report.table import render_table, use_colour
        colour = not args.output and use_colour(sys.stdout)
        _emit(render_table(report, colour=colour), args.output)
    return report.exit_code


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
    sys.stdout.write(render_explanation(explanation, spec.record))
    return EXIT_PASS if explanation.verdict.accepted else EXIT_FAIL


def cmd_replay(args: argparse.Namespace) -> int:
    from fwtest.replay import replay_capture
    from fwtest.report.replay import render_replay

    if len(args.paths) < 2:
        raise InputError("fwtest", 0, "replay needs RULES... and a PCAP (the last argument)")
    *rules, pcap = args.paths
    result = replay_capture(rules, pcap, _profile(args.profile))
    render_replay(result, args.format, sys.stdout)
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


COMMANDS = {"check": cmd_check, "explain": cmd_explain, "replay": cmd_replay, "synth": cmd_synth}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
