"""The results schema and store: tidy rows in ``RESULTS_DIR/results.csv``, the one file a user reads.

Schema: :class:`ResultRow` (one measured number and what it was measured on), the closed sets as enums
(:class:`Threat`, :class:`Metric`, :class:`Attack`: built-in names; plugins add their own strings), and an explicit
record that an attack of a run is finished (a ``finished`` row, written with its rows in one append).

Store: rows are appended under a lock in one write, a block ending with its ``finished`` row. A write cut short (a
full disk, a kill) leaves a torn last line or a block without its ``finished`` row: neither is read, and both are
cut off before the next append, so a rerun writes the block afresh (once). A failed write is cut back at once and is
a one-line error. A file that is not ours or is malformed is refused, never overwritten. Files written before the
``detector`` column existed load (their detector is ``kde``); see :func:`is_finished` for files older than the
``finished`` record.
"""

from __future__ import annotations

import codecs
import csv
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from pdm_bench.errors import UserError
from pdm_bench.storage import append_bytes, atomic_write_bytes, file_lock

RESULTS_FILE = "results.csv"
DEFAULT_DETECTOR = "kde"
APPENDED = "appended"  # the label of the finished record of a block appended without ``completes``


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
    DISTORTION_CHANGE = "distortion_change"  # white box: (d at twice the Adam steps - d) / d, the doubling check
    DOUBLING_CONVERGED = "doubling_converged"  # 1 where that change is within DOUBLING_TOLERANCE, else 0
    CLOSEST_LEAD = "closest_lead"  # C&W: the largest logit margin (what the confidence is measured against) reached
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
        self._cache: tuple[tuple[int, int, int], _Parsed] | None = None

    def rows(self) -> list[ResultRow]:
        """All rows of finished blocks (re-read only when the file changed); a foreign or malformed file is a
        :class:`UserError`. See :func:`read_results` for what is left out."""
        return self._load().rows

    def _load(self, *, fresh: bool = False) -> _Parsed:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return _Parsed((), [], 0, 0, False)
        except OSError as error:
            raise UserError(f"Cannot read results file {self.path}: {error.strerror or error}") from None
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if fresh or self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, read_results(self._read_bytes(), self.path))
        return self._cache[1]

    def run_rows(self, run_id: str) -> list[ResultRow]:
        return [r for r in self.rows() if r.run_id == run_id]

    def has(self, run_id: str, attack: str, metric: str) -> bool:
        """Whether ``metric`` of ``attack`` in run ``run_id`` is stored."""
        return any(r.run_id == run_id and r.attack == attack and r.metric == metric for r in self.rows())

    def finished(self, run_id: str, label: str, *, legacy: tuple[str, str] | None = None) -> bool:
        """Whether the part ``label`` (an attack, ``clean``, ...) of run ``run_id`` is recorded as finished;
        ``legacy=(attack, metric)``: the row that marked it in files older than the ``finished`` record (see
        :func:`is_finished`)."""
        return is_finished(self._load(), run_id, label, legacy)

    def append(self, rows: Iterable[ResultRow], *, completes: str | None = None,
               legacy: tuple[str, str] | None = None) -> bool:
        """Append ``rows`` as one block in one write under the lock; return whether they were added.

        Every block ends with a ``finished`` row (a block cut short has none, and is left out when read, and cut off
        before the next append). ``completes=LABEL``: the rows finish that part of their run (the finished row is
        for it) and nothing is added if it is already finished (checked under the lock, so two processes that ran
        the same attack record it once); without it the finished row's label is ``appended``. ``legacy`` as in
        :meth:`finished`.
        """
        new = list(rows)
        if not new:
            return False
        first = new[0]
        new.append(ResultRow(first.dataset, first.preset, first.seed, first.defense, first.threat,
                             completes if completes is not None else APPENDED, Metric.FINISHED.value, 1.0, 0,
                             first.run_id, now(), first.detector))
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.directory / ".results.lock"):
            parsed = self._load(fresh=True)  # a malformed file is refused here, before writing
            if completes is not None and is_finished(parsed, first.run_id, completes, legacy):
                return False
            self._write(parsed, new)
        return True

    def _write(self, parsed: _Parsed, new: list[ResultRow]) -> None:
        """Add the block ``new`` (the lock is held). A file with a ``finished`` record gets a true append (its torn
        or unfinished tail cut off first); a new file, an older one (no ``finished`` record yet) or one that needs the
        detector column is replaced whole (atomically), so that no file this writes is ever without a record."""
        header = parsed.header or COLUMNS
        upgrade = header == LEGACY_COLUMNS and any(r.detector != DEFAULT_DETECTOR for r in new)
        if upgrade:
            header = COLUMNS
        block = _csv(new, header)
        if parsed.marked and not upgrade:
            append_bytes(self.path, block, size=parsed.end)
        elif upgrade or not parsed.header:
            atomic_write_bytes(self.path, _csv([], header, header=True) + _csv(parsed.rows, header) + block)
        else:
            atomic_write_bytes(self.path, self._read_bytes()[: parsed.end] + block)

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as error:
            raise UserError(f"Cannot read results file {self.path}: {error.strerror or error}") from None


def _csv(rows: Iterable[ResultRow], columns: tuple[str, ...], *, header: bool = False) -> bytes:
    """``rows`` (and the ``columns`` line first if ``header``) as CSV lines."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows(astuple(r)[: len(columns)] for r in rows)
    return buffer.getvalue().encode("utf-8")


class _Parsed(NamedTuple):
    header: tuple[str, ...]
    rows: list[ResultRow]  # the rows read (see read_results)
    older: int  # how many of them come before the first finished record: written before there were such records
    end: int  # the bytes of the file up to the end of the last row read (past it: a torn line, an unfinished block)
    marked: bool  # whether the file has a finished record


def is_finished(parsed: _Parsed, run_id: str, label: str, legacy: tuple[str, str] | None) -> bool:
    """The one rule of what is finished: part ``label`` of run ``run_id`` is finished when a ``finished`` record says
    so. The legacy rule, ``legacy=(attack, metric)``, a row that marked the part finished before there were such
    records, holds only for the rows older than the file's first ``finished`` record (all rows of a file without
    one); the blocks written since then are finished only by their record (a block cut short is not read at all)."""
    if any(r.run_id == run_id and r.attack == label and r.metric == Metric.FINISHED for r in parsed.rows):
        return True
    return legacy is not None and any(r.run_id == run_id and (r.attack, r.metric) == legacy
                                      for r in parsed.rows[: parsed.older])


def read_results(data: bytes, path: Path) -> _Parsed:
    """The rows of a results file's bytes ``data``. Left out: a last line without its newline (a write cut short:
    torn, even when its fields look whole) and, in a file with ``finished`` records, the rows after the last one (a
    block cut short). A file that is not ours or is malformed is a :class:`UserError`."""
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    whole = data.rfind(b"\n") + 1  # the lines written whole
    try:
        lines = data[bom:whole].decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as error:
        raise UserError(f"Cannot read results file {path}: {error}") from None
    if not lines:
        if any(f"{','.join(c)}\n".encode().startswith(data[bom:]) for c in (COLUMNS, LEGACY_COLUMNS)):
            return _Parsed((), [], 0, 0, False)  # empty, or a header cut short: as if there were no file
        lines = [data[bom:].decode("utf-8", "replace")]
    header = tuple(next(csv.reader(lines[:1]), ()))
    if header not in (COLUMNS, LEGACY_COLUMNS):
        raise UserError(f"{path} is not a pdm-bench results file (expected columns {','.join(COLUMNS)}, got "
                        f"{','.join(header)[:120]}); use another --results-dir")
    rows, ends, end = [], [], bom + len(lines[0].encode("utf-8"))
    for number, line in enumerate(lines[1:], start=2):
        rows.append(_row(next(csv.reader([line]), []), header, path, number))
        end += len(line.encode("utf-8"))
        ends.append(end)
    marks = [i for i, r in enumerate(rows) if r.metric == Metric.FINISHED]
    if not marks:
        return _Parsed(header, rows, len(rows), end, False)
    return _Parsed(header, rows[: marks[-1] + 1], marks[0], ends[marks[-1]], True)


def _row(record: list[str], header: tuple[str, ...], path: Path, number: int) -> ResultRow:
    try:
        if len(record) != len(header):
            raise ValueError(f"expected {len(header)} fields, got {len(record)}")
        values: dict[str, Any] = dict(zip(header, record))
        return ResultRow(**{**values, "seed": int(values["seed"]), "value": float(values["value"]),
                            "n": int(values["n"])})
    except ValueError as error:
        raise UserError(f"Malformed results file {path}, line {number}: {error}; fix or move it, it is never "
                        "overwritten") from None
