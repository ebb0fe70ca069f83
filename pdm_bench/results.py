"""The results store: tidy rows appended atomically to ``RESULTS_DIR/results.csv``.

Every write rewrites the file through a temporary file and ``os.replace`` under a lock, so a killed run leaves
the old or the new file, never half of one. A file that is not ours (other columns) or is malformed is refused,
never overwritten.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from pdm_bench.errors import UserError

RESULTS_FILE = "results.csv"


@dataclass(frozen=True)
class ResultRow:
    """One measured number and what it was measured on."""

    dataset: str
    preset: str
    seed: int
    defense: str
    threat: str
    attack: str
    metric: str
    value: float
    n: int
    run_id: str
    time: str


COLUMNS = tuple(f.name for f in fields(ResultRow))


class ResultsStore:
    """Read and append rows of one results directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RESULTS_FILE

    def rows(self) -> list[ResultRow]:
        """All rows; a foreign or malformed file is a :class:`UserError`."""
        if not self.path.exists():
            return []
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"Cannot read results file {self.path}: {error}") from None
        return list(_parse(text, self.path))

    def has(self, run_id: str, attack: str, metric: str) -> bool:
        """Whether ``metric`` of ``attack`` in run ``run_id`` is already stored (so a rerun skips it)."""
        return any(r.run_id == run_id and r.attack == attack and r.metric == metric for r in self.rows())

    def append(self, rows: Iterable[ResultRow], *, unless_stored: tuple[str, str, str] | None = None) -> bool:
        """Add rows atomically (old content + new rows, then rename over the file); return whether they were added.

        ``unless_stored=(run_id, attack, metric)``: add nothing if that row is already there (checked under the
        lock, so two processes that finished the same attack record it once).
        """
        new = list(rows)
        if not new:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.directory / ".results.lock"):
            existing = self.rows()
            if unless_stored is not None and any((r.run_id, r.attack, r.metric) == unless_stored for r in existing):
                return False
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(astuple(r) for r in [*existing, *new])
            tmp = self.path.with_name(f".{RESULTS_FILE}.{os.getpid()}.tmp")
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
            os.replace(tmp, self.path)
        return True


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _parse(text: str, path: Path) -> Iterator[ResultRow]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return
    if tuple(header) != COLUMNS:
        raise UserError(f"{path} is not a pdm-bench results file (expected columns {','.join(COLUMNS)}, got "
                        f"{','.join(header)[:120]}); use another --results-dir")
    for number, record in enumerate(reader, start=2):
        try:
            if len(record) != len(COLUMNS):
                raise ValueError(f"expected {len(COLUMNS)} fields, got {len(record)}")
            values = dict(zip(COLUMNS, record))
            value = float(values["value"])
            yield ResultRow(**{**values, "seed": int(values["seed"]), "value": value, "n": int(values["n"])})
        except ValueError as error:
            raise UserError(f"Malformed results file {path}, line {number}: {error}; fix or move it, it is never overwritten") from None


@contextmanager
def file_lock(lock_path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``lock_path`` (created if missing): yields False at once when another process holds it
    and ``wait`` is off. The kernel drops a killed process's lock."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
