"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (names, options, data files). Printed without a traceback."""


class WriteError(UserError, OSError):
    """A file could not be written (a full disk, permissions): one line that names the file and the cause. It is an
    :class:`OSError` too (its ``errno`` and ``filename`` are the failed write's), so callers catching that still do."""

    def __init__(self, errno: int | None, message: str, filename: str | None = None) -> None:
        super().__init__(errno, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """``Unknown defense 'pmd'. Did you mean: pdm? Available: baseline, pdm, rce``."""
    available = sorted(choices)
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean: {close[0]}?" if close else ""
    return UserError(f"Unknown {kind} '{name}'.{hint} Available: {', '.join(available)}")


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__
