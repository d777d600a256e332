"""Rulesets read from a git revision: ``--baseline git:REV`` and ``git:REV:path``.

``git:origin/main`` reads, at that revision, the same path as the ruleset
being checked (CI use: compare the pull request's file with main's).
``git:REV:path`` names another path, relative to the current directory.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from fwtest.errors import InputError


@dataclass(frozen=True)
class GitFile:
    rev: str
    path: str          # as the user named it (relative to the current directory)
    text: str | None   # None: the path does not exist at rev (a newly added ruleset)

    @property
    def label(self) -> str:
        return f"git:{self.rev}:{self.path}"


def is_git_spec(spec: str) -> bool:
    return spec.startswith("git:")


def parse_git_spec(spec: str, default_path: str) -> tuple[str, str]:
    """``git:REV`` or ``git:REV:path`` -> (rev, path)."""
    body = spec[len("git:"):]
    if not body:
        raise InputError(spec, 0, "name a revision: git:REV or git:REV:path (e.g. git:origin/main)")
    rev, sep, path = body.partition(":")
    return rev, (path if sep else default_path)


def read_git_file(spec: str, default_path: str) -> GitFile:
    """The text of a ruleset file at a git revision, or ``text=None`` if it is absent there."""
    rev, path = parse_git_spec(spec, default_path)
    absolute = (Path.cwd() / path).resolve()
    here = next((p for p in (absolute.parent, *absolute.parents) if p.is_dir()), Path.cwd())
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd=here, spec=spec).strip()).resolve()
    try:
        relative = absolute.relative_to(top).as_posix()
    except ValueError:
        raise InputError(spec, 0, f"{path} is outside the git repository at {top}") from None
    _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=top, spec=spec,
         failure=f"no such revision '{rev}' in {top}")
    proc = subprocess.run(["git", "cat-file", "-e", f"{rev}:{relative}"], cwd=top,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return GitFile(rev, path, None)
    text = _git(["show", f"{rev}:{relative}"], cwd=top, spec=spec)
    return GitFile(rev, path, text)


def _git(args: list[str], *, cwd: Path | str, spec: str, failure: str | None = None) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise InputError(spec, 0, "git is not installed") from None
    except subprocess.TimeoutExpired:
        raise InputError(spec, 0, f"git {args[0]} took longer than 60 s") from None
    if proc.returncode != 0:
        if failure:
            raise InputError(spec, 0, failure)
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"git {args[0]} failed"
        if "not a git repository" in detail:
            detail = f"{cwd} is not inside a git repository"
        raise InputError(spec, 0, detail)
    return proc.stdout
