"""Throw-away network namespaces: create, run commands inside, open sockets inside, remove.

Everything the kernel oracle does to the kernel happens inside namespaces made
here, named ``fwt-<pid>-<random>-<role>`` so that they can never clash with
anything on the host and so that namespaces left behind by a process that was
killed outright (SIGKILL gives no chance to clean up) can be recognised and
removed by the next run: their pid is dead.

Code runs inside a namespace in two ways:

* commands (``ip``, ``nft``, ``iptables-restore``) with ``ip netns exec``;
* sockets are opened by a short-lived thread that joins the namespace with
  setns(2) (ctypes: Python 3.11 has no ``os.setns``) and ends. A socket
  belongs to the namespace it was created in for its whole life, so the
  calling thread never leaves the host's namespace; only that helper thread
  did, and it is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

NETNS_RUN_DIR = Path("/run/netns")
PREFIX = "fwt-"
_OWNED = re.compile(r"^fwt-(\d+)-[0-9a-f]+-[a-z]+$")
CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT = 30.0

T = TypeVar("T")


class KernelError(RuntimeError):
    """The kernel harness itself failed (a namespace, link or socket could not be set up).

    Not the user's input: bad rulesets are ``InputError``.
    """


def new_tag() -> str:
    """A unique prefix for one set of namespaces: ``fwt-<pid>-<random>``."""
    return f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def run(argv: Sequence[str], *, netns: str | None = None, stdin: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (inside ``netns`` when given); raise KernelError when it fails and ``check``."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        done = subprocess.run(full, input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise KernelError(f"'{' '.join(full)}' did not finish in {COMMAND_TIMEOUT:.0f}s") from None
    if check and done.returncode != 0:
        raise KernelError(f"'{' '.join(full)}' failed: {(done.stderr or done.stdout).strip()}")
    return done


def ip_batch(lines: Iterable[str], *, netns: str | None = None) -> None:
    """Several ``ip`` commands in one process (``ip -batch -``), inside ``netns`` if given."""
    argv = ["ip", "-n", netns, "-batch", "-"] if netns else ["ip", "-batch", "-"]
    run(argv, stdin="\n".join(lines) + "\n")


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def add_netns(name: str) -> None:
    run(["ip", "netns", "add", name])


def delete_netns(name: str) -> None:
    """Remove a namespace if it exists (its interfaces go with it)."""
    if (NETNS_RUN_DIR / name).exists():
        run(["ip", "netns", "delete", name], check=False)


def reap_orphans() -> list[str]:
    """Remove fwt- namespaces whose creating process is dead (killed with SIGKILL, say)."""
    removed = []
    for name in list_netns():
        m = _OWNED.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        delete_netns(name)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def inside(netns: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a fresh thread that has joined ``netns``; return its result.

    The thread exits afterwards, so no thread of this process stays in the
    namespace; what ``fn`` created (sockets) keeps the namespace it was made in.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(NETNS_RUN_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    worker = threading.Thread(target=body, name=f"setns-{netns}", daemon=True)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


def write_sysctls(netns: str, values: dict[str, str | int]) -> None:
    """Write sysctls (``net.ipv4.ip_forward`` style names) inside ``netns``.

    /proc/sys/net shows the namespace of the task that opens it, so the
    writes happen in a thread inside the namespace.
    """
    def body() -> None:
        for key, value in values.items():
            path = Path("/proc/sys") / key.replace(".", "/")
            try:
                path.write_text(f"{value}\n")
            except OSError as e:
                raise KernelError(f"sysctl {key}={value} in {netns}: {e.strerror}") from None

    inside(netns, body)


@contextlib.contextmanager
def cleanup_on_signals() -> Iterable[None]:
    """Turn SIGTERM (and SIGHUP) into an exception while the block runs, so that
    ``finally`` clauses remove the namespaces; Ctrl-C already raises
    KeyboardInterrupt. Only the main thread may install handlers; elsewhere
    this does nothing."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            saved[sig] = signal.signal(sig, raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterable[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back while namespaces are being removed, so that
    a second Ctrl-C cannot cut the cleanup short; they are delivered after."""
    import signal

    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
