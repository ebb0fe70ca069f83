"""The results schema and store: tidy rows in ``RESULTS_DIR/results.csv``, the one file a user reads.

Schema: :class:`ResultRow` (one measured number and what it was measured on), the closed sets as enums
(:class:`Threat`, :class:`Metric`, :class:`Attack`: built-in names; plugins add their own strings), and an explicit
record that an attack of a run is finished (a ``finished`` row, written with its rows in one append).

Store: rows are appended under a lock in one write (the file is never rewritten); a torn last line (a write cut
by a full disk) is dropped before the next append. A file that is not ours or is malformed is refused, never
overwritten. Files written before the ``detector`` column existed load (their detector is ``kde``).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from pdm_bench.errors import UserError
from pdm_bench.storage import atomic_write_text, file_lock

RESULTS_FILE = "results.csv"
DEFAULT_DETECTOR = "kde"


class Name(str, Enum):
    """A closed set of names: each member is its string (equal to it, and printed as it in f-strings and files)."""

    def __str__(self) -> str:
        return str(self.value)


class Threat(Name):
    """Built-in values of the ``threat`` column (``model`` rows describe a trained model, not an attack)."""

    MODEL = "model"
    GRAY = "gray"
    WHITE = "white"
    BLACK = "black"


class Attack(Name):
    """Built-in values of the ``attack`` column besides the gray box's attack names."""

    CLEAN = "clean"
    EMBEDDING = "embedding"
    CW = "cw"
    CW_WB = "cw-wb"


class Metric(Name):
    """The built-in metrics, written and read by these names (plugins may write their own strings). Besides these,
    the gray box writes ``flow_S_T`` counts (:func:`flow_metric`) and every detection run measures at fixed
    false-positive rates (:func:`fpr_metric`)."""

    FINISHED = "finished"
    TEST_ACCURACY = "test_accuracy"
    DAVIES_BOULDIN = "davies_bouldin"
    EMBEDDING_MARGIN = "embedding_margin"
    EMBEDDING_MARGIN_MEAN = "embedding_margin_mean"
    JACOBIAN_FROBENIUS = "jacobian_frobenius"
    MARGIN_BOUND = "margin_bound"
    ACCURACY = "accuracy"
    BANDWIDTH = "bandwidth"
    AUC = "auc"
    AUC_LOW = "auc_low"
    AUC_HIGH = "auc_high"
    SUCCESS_RATE = "success_rate"
    PAIRS_KEPT = "pairs_kept"
    L2_MEAN = "l2_mean"
    LINF_MEAN = "linf_mean"
    L0_MEAN = "l0_mean"
    ATTACK_SECONDS = "attack_seconds"
    FLOW_TOTAL = "flow_total"
    DISTORTION = "distortion"
    DISTORTION_MEDIAN = "distortion_median"
    LOG_DENSITY_MEAN = "log_density_mean"
    BUDGET_ITERATIONS = "budget_iterations"
    BUDGET_SEARCH_STEPS = "budget_search_steps"
    BUDGET_INITIAL_CONST = "budget_initial_const"
    BUDGET_LEARNING_RATE = "budget_learning_rate"
    BUDGET_RUNG = "budget_rung"
    KDE_POINTS = "kde_points"
    TAU_QUANTILE = "tau_quantile"
    CRITERION_MET = "criterion_met"
    TARGET_HIT_RATE = "target_hit_rate"
    STAGE1_SUCCESS_RATE = "stage1_success_rate"
    STAGE1_SECONDS = "stage1_seconds"
    PROXY_AGREEMENT = "proxy_agreement"
    PROXY_ACCURACY = "proxy_accuracy"
    PROXY_AUC = "proxy_auc"
    PROXY_SUCCESS_RATE = "proxy_success_rate"
    PROXY_DISTORTION = "proxy_distortion"
    PROXY_SECONDS = "proxy_seconds"
    ATTACKER_BANDWIDTH = "attacker_bandwidth"
    PROXY_DEPTH = "proxy_depth"
    CALIBRATION_IMAGES = "calibration_images"  # clean test images (not attacked) the rejection thresholds are set on


def fpr_metric(kind: str, fpr: float) -> str:
    """A measure at one false-positive rate: ``tpr``, ``robust_accuracy`` or ``clean_lost`` of an attack, or the clean
    run's ``threshold``, e.g. ``tpr_at_fpr_5`` at 5%."""
    return f"{kind}_at_fpr_{round(fpr * 100):d}"


def flow_metric(source: int, target: int) -> str:
    """Kept pairs of true class ``source`` whose adversarial is classified ``target`` (Figure 1b)."""
    return f"flow_{source}_{target}"


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
    detector: str = DEFAULT_DETECTOR

    def __post_init__(self) -> None:
        for name in ("threat", "attack", "metric"):  # an enum member is stored as its value
            value = getattr(self, name)
            if isinstance(value, Enum):
                object.__setattr__(self, name, value.value)


COLUMNS = tuple(f.name for f in fields(ResultRow))
LEGACY_COLUMNS = COLUMNS[:-1]  # before the detector column


def value_getter(rows: Iterable[ResultRow]) -> Callable[[str, str], float]:
    """``get(attack, metric)``: a run's value (the last row wins), NaN when absent; for printed tables."""
    values = {(r.attack, r.metric): r.value for r in rows}
    return lambda attack, metric: values.get((attack, metric), float("nan"))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class ResultsStore:
    """Read and append rows of one results directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RESULTS_FILE
        self._cache: tuple[tuple[int, int], _Parsed] | None = None

    def rows(self) -> list[ResultRow]:
        """All rows (re-read only when the file changed); a foreign or malformed file is a :class:`UserError`."""
        return self._load().rows

    def _load(self) -> _Parsed:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return _Parsed((), [], "")
        except OSError as error:
            raise UserError(f"Cannot read results file {self.path}: {error.strerror or error}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, _parse(self._read_text(), self.path))
        return self._cache[1]

    def run_rows(self, run_id: str) -> list[ResultRow]:
        return [r for r in self.rows() if r.run_id == run_id]

    def has(self, run_id: str, attack: str, metric: str) -> bool:
        """Whether ``metric`` of ``attack`` in run ``run_id`` is stored."""
        return any(r.run_id == run_id and r.attack == attack and r.metric == metric for r in self.rows())

    def finished(self, run_id: str, label: str, *, legacy: tuple[str, str] | None = None) -> bool:
        """Whether the part ``label`` (an attack, ``clean``, ...) of run ``run_id`` is recorded as finished. Files
        written before the ``finished`` record existed marked it by its last row: ``legacy=(attack, metric)``."""
        return any(r.run_id == run_id and ((r.attack, r.metric) == (label, Metric.FINISHED.value)
                                           or (legacy is not None and (r.attack, r.metric) == legacy))
                   for r in self.rows())

    def append(self, rows: Iterable[ResultRow], *, completes: str | None = None,
               legacy: tuple[str, str] | None = None) -> bool:
        """Append ``rows`` in one write under the lock; return whether they were added.

        ``completes=LABEL``: the rows finish that part of their run: a ``finished`` row for it follows them, and
        nothing is added if it is already finished (checked under the lock, so two processes that ran the same
        attack record it once). ``legacy`` as in :meth:`finished`.
        """
        new = list(rows)
        if not new:
            return False
        if completes is not None:
            first = new[0]
            new.append(ResultRow(first.dataset, first.preset, first.seed, first.defense, first.threat, completes,
                                 Metric.FINISHED.value, 1.0, 0, first.run_id, now(), first.detector))
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.directory / ".results.lock"):
            if completes is not None and self.finished(new[0].run_id, completes, legacy=legacy):
                return False
            header = self._prepare(new)
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            if header is None:
                writer.writerow(COLUMNS)
                header = COLUMNS
            writer.writerows(astuple(r)[: len(header)] for r in new)
            with open(self.path, "a", encoding="utf-8", newline="") as handle:
                handle.write(buffer.getvalue())
        return True

    def _prepare(self, new: list[ResultRow]) -> tuple[str, ...] | None:
        """The header of the file rows will be appended to (None: no file yet). Ends an unfinished last line (drops
        a torn one; closes a complete row written without its newline); upgrades a file without the detector column
        (once, atomically) when a row needs it."""
        parsed = self._load()  # a malformed file is refused here, before writing
        if not parsed.header:
            return None
        if parsed.tail == "torn":
            raw = self.path.read_bytes()
            with open(self.path, "r+b") as handle:
                handle.truncate(raw.rfind(b"\n") + 1)
        elif parsed.tail == "open":
            with open(self.path, "ab") as handle:
                handle.write(b"\n")
        if parsed.header == LEGACY_COLUMNS and any(r.detector != DEFAULT_DETECTOR for r in new):
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(astuple(r) for r in parsed.rows)
            atomic_write_text(self.path, buffer.getvalue())
            return COLUMNS
        return parsed.header

    def _read_text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"Cannot read results file {self.path}: {error}") from None


class _Parsed(NamedTuple):
    header: tuple[str, ...]
    rows: list[ResultRow]
    tail: str  # "": the file ends with a newline; "torn": a cut last line (left out); "open": a last row without one


def _parse(text: str, path: Path) -> _Parsed:
    lines = text.splitlines(keepends=True)
    header = tuple(next(csv.reader(lines[:1]), ()))
    if header and header not in (COLUMNS, LEGACY_COLUMNS):
        raise UserError(f"{path} is not a pdm-bench results file (expected columns {','.join(COLUMNS)}, got "
                        f"{','.join(header)[:120]}); use another --results-dir")
    tail = ""
    if len(lines) > 1 and not lines[-1].endswith("\n"):
        tail = "open" if len(next(csv.reader(lines[-1:]), ())) == len(header) else "torn"
        if tail == "torn":
            lines = lines[:-1]  # the write that made it did not finish
    rows = []
    for number, record in enumerate(csv.reader(lines[1:]), start=2):
        try:
            if len(record) != len(header):
                raise ValueError(f"expected {len(header)} fields, got {len(record)}")
            values: dict[str, Any] = dict(zip(header, record))
            rows.append(ResultRow(**{**values, "seed": int(values["seed"]), "value": float(values["value"]),
                                     "n": int(values["n"])}))
        except ValueError as error:
            raise UserError(f"Malformed results file {path}, line {number}: {error}; fix or move it, it is never "
                            "overwritten") from None
    return _Parsed(header, rows, tail)
