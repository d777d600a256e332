"""What fwtest derives from a profile alone, kept on disk between runs.

Two things are worth keeping: the synthesised call flows (Scapy builds tens
of thousands of packets) and the proof's packet classes (a conntrack replay
of those flows). ``fwtest check`` must start faster than Scapy imports, and a
warm cache is read without importing Scapy at all.

An entry's key hashes everything its value depends on: the caller's inputs
(profile fields, seed, conntrack settings), fwtest's own source and the
Scapy installed. Editing fwtest, upgrading Scapy or changing the profile
therefore never reads a stale entry. A missing, truncated or foreign entry
is only a lost shortcut: the caller rebuilds it.

Entries live in ``$FWTEST_CACHE_DIR``, else ``$XDG_CACHE_HOME/fwtest``
(``~/.cache/fwtest``); ``FWTEST_CACHE=0`` reads and writes nothing. A CI job
that keeps this directory between runs (action.yml does) checks warm.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

from fwtest.profile import EmergencyProfile

FORMAT = 2
ENTRIES = 16          # entries kept per kind (a synthesised profile is about 10 MB)
PACKAGE = Path(__file__).resolve().parent


def enabled() -> bool:
    return os.environ.get("FWTEST_CACHE", "1") != "0"


def directory() -> Path:
    explicit = os.environ.get("FWTEST_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fwtest"


def profile_identity(profile: EmergencyProfile) -> tuple:
    """Every profile field a packet or a class depends on (not its name or file)."""
    return (profile.firewall, tuple(str(n) for n in profile.psap), tuple(str(n) for n in profile.peers),
            tuple(sorted(profile.sip.items())), profile.rtp_psap, profile.rtp_peers, profile.msrp,
            profile.flows, (profile.surge.calls, profile.surge.seconds) if profile.surge else None,
            tuple(sorted(profile.interfaces.items())), profile.call_seconds)


def key(*parts: object) -> str:
    """The entry name for ``parts`` (each with a deterministic repr) under this code."""
    h = hashlib.sha256(repr((FORMAT, parts)).encode())
    h.update(code_identity().encode())
    return h.hexdigest()[:32]


@functools.cache
def code_identity() -> str:
    """A hash of fwtest's source, the Python version and the Scapy installed."""
    h = hashlib.sha256(repr(sys.version_info[:2]).encode())
    for source in sorted(PACKAGE.rglob("*.py")):
        h.update(source.relative_to(PACKAGE).as_posix().encode())
        h.update(source.read_bytes())
    h.update(_scapy_identity().encode())
    return h.hexdigest()


def _scapy_identity() -> str:
    # Where Scapy lives and when it was installed, without importing it
    # (importing it is exactly the cost the cache avoids).
    import importlib.util

    spec = importlib.util.find_spec("scapy")
    if spec is None or spec.origin is None:
        return "no-scapy"
    st = os.stat(spec.origin)
    return f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}"


def path(kind: str, entry: str) -> Path:
    return directory() / f"{kind}-{entry}.pickle"


def load(kind: str, entry: str) -> Any | None:
    """The value stored under ``kind``/``entry``, or None (absent, unreadable, or cache off)."""
    if not enabled():
        return None
    try:
        with open(path(kind, entry), "rb") as f:
            return pickle.load(f)
    except Exception:
        # FileNotFoundError, a truncated write, a pickle of classes that no
        # longer exist: all mean "not cached".
        return None


def store(kind: str, entry: str, value: Any) -> None:
    """Keep ``value``; the newest ENTRIES of its kind stay, older ones go."""
    if not enabled():
        return
    target = path(kind, entry)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{kind}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, target)  # atomic: a concurrent reader sees the old file or the new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        entries = sorted(target.parent.glob(f"{kind}-*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[ENTRIES:]:
            old.unlink(missing_ok=True)
    except OSError:
        return  # a read-only or full home only costs the shortcut
