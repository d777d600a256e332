"""The one error family of fwtest: input a person must fix, located at file:line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(Exception):
    """Bad input or usage. The CLI prints ``str(error)`` as one line and exits 2.

    ``line`` is 1-based; 0 means "the file as a whole" (missing file, empty
    document). ``path`` may also be a pseudo-location such as
    ``rules.json[inet filter/forward handle 7]`` for formats without lines.
    """

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'dport'?)`` when a close match exists, else ``''``."""
    close = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
