"""Tables from results rows: cells, rows x columns, and the index that picks each cell's runs (the report's layer
below the formats; threat models build their own tables with it).

For each (dataset, preset, defense, threat) and seed the newest run that holds the table's metric is used; several
seeds are averaged (the cell says how many). A cell nobody measured is "not run", never a number.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pdm_bench.metrics import FPR_LEVELS
from pdm_bench.results import DEFAULT_DETECTOR, Metric, ResultRow, Threat, fpr_metric

BUILT_IN_ORDER = ("baseline", "rce", "siamese_rvl", "pdm")

NOT_RUN = "not run"
NO_PAIRS = "no pairs"  # measured, but the attack succeeded on no image (an AUC or distortion of nothing)
COUNT_NOTES = frozenset({"pairs", "budget rung", "criterion met"})  # whole numbers; every other note is a rate
FIXED_FPR_TITLE = ("at 5% false positives on clean images: robust accuracy under detection (the share of correctly "
                   "classified images the attack did not fool or the detector rejected)")
FEW_PAIRS = 30  # an AUC on fewer pairs than this is marked in every format


@dataclass(frozen=True)
class Cell:
    """One table entry: the value (None: not run), its interval, how many seeds, what to read it with."""

    value: float | None
    low: float | None = None
    high: float | None = None
    seeds: int = 0
    notes: dict[str, float] = field(default_factory=dict)
    flag: str = ""  # e.g. "criterion not met"
    best: bool = False
    sd: float | None = None  # standard deviation over seeds (two or more)

    @property
    def few_pairs(self) -> bool:
        """Measured on fewer than ``FEW_PAIRS`` pairs (its interval is wide, its value fragile)."""
        pairs = self.notes.get("pairs")
        return self.value is not None and pairs is not None and pairs < FEW_PAIRS

    def flags(self) -> list[str]:
        """What to read the value with: a failed criterion, no pairs, few pairs."""
        if self.value is None:
            return []
        few = [f"fewer than {FEW_PAIRS} pairs"] if self.few_pairs and math.isfinite(self.value) else []
        return [*([self.flag] if self.flag else []), *(["no pairs"] if not math.isfinite(self.value) else []), *few]


@dataclass
class Table:
    """Rows x columns of cells; ``groups`` names each column's dataset block (Table 2) or is empty."""

    key: str
    title: str
    row_label: str
    rows: list[str]
    columns: list[tuple[str, str]]  # (group, defense)
    cells: dict[tuple[str, tuple[str, str]], Cell]
    digits: int = 3
    scale: float = 1.0
    threat: str = ""  # the threat model whose rows fill it (named by an empty table: the command to run)

    def cell(self, row: str, column: tuple[str, str]) -> Cell:
        return self.cells.get((row, column), Cell(None))

    def text(self, cell: Cell) -> str:
        if cell.value is None:
            return NOT_RUN
        return NO_PAIRS if not math.isfinite(cell.value) else f"{cell.value * self.scale:.{self.digits}f}"


def defense_order(names: Iterable[str]) -> list[str]:
    """The paper's defenses first in its order (each with its variants), then the others by name."""
    def rank(name: str) -> tuple[int, str]:
        base = name.split(" (")[0]
        return (BUILT_IN_ORDER.index(base) if base in BUILT_IN_ORDER else len(BUILT_IN_ORDER), name)

    return sorted(set(names), key=rank)


def with_detector(label: str, detector: str) -> str:
    """A column's label with the detector when it is not the paper's KDE (e.g. ``pdm (mahalanobis)``)."""
    return label if detector == DEFAULT_DETECTOR else f"{label} ({detector})"


def model_labels(rows: Iterable[ResultRow], runs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each run's defense label: its name, or, where one defense name was trained in several configurations on one
    data set and preset (options, epochs, plugin version; seeds are not configurations, they are averaged), the name
    with what sets this one apart, e.g. ``pdm (rvl_weight=0.5, epochs=5)``. The same defense trained differently on
    two data sets (a preset's epochs per data set) is one column. ``runs``: the provenance records
    (``runs/<run id>.json``); a run without one counts as the defense's only configuration."""
    config_of: dict[str, tuple[tuple[str, str, str], str | None]] = {}
    for r in rows:
        key = r.run_id if r.threat == Threat.MODEL else runs.get(r.run_id, {}).get("model")
        record = runs.get(key, {}) if key else {}
        record = record if "defense_options" in record else runs.get(r.run_id, {})
        config = None if "defense_options" not in record else json.dumps(
            {**record["defense_options"], "epochs": record.get("epochs"), "version": record.get("defense_version")},
            default=str)  # the options in their declared order, then epochs and version
        config_of[r.run_id] = ((r.dataset, r.preset, r.defense), config)
    variants: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for group, config in config_of.values():
        if config is not None:
            variants[group].add(config)
    labels = {}
    for run_id, (group, config) in config_of.items():
        defense = group[2]
        if config is None or len(variants[group]) < 2:
            labels[run_id] = defense
            continue
        mine, others = json.loads(config), [json.loads(c) for c in variants[group]]
        differing = [f"{name}={value}" for name, value in mine.items() if any(o.get(name) != value for o in others)]
        labels[run_id] = f"{defense} ({', '.join(differing)})"
    return labels


def block_name(dataset: str, preset: str) -> str:
    return f"{dataset} ({preset})"


class RowIndex:
    """The rows, grouped so each table can pick its runs."""

    def __init__(self, rows: Iterable[ResultRow], runs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.rows = list(rows)
        self.defense_label = model_labels(self.rows, runs or {})
        self.by_run: dict[str, dict[tuple[str, str], ResultRow]] = defaultdict(dict)
        self.run_time: dict[str, str] = {}
        self.runs_of: dict[tuple[str, str, str, str, int], set[str]] = defaultdict(set)
        for r in self.rows:
            self.by_run[r.run_id][(r.attack, r.metric)] = r  # later rows win
            self.run_time[r.run_id] = max(self.run_time.get(r.run_id, ""), r.time)
            self.runs_of[(r.dataset, r.preset, self.column(r), r.threat, r.seed)].add(r.run_id)
        self.blocks = sorted({(r.dataset, r.preset) for r in self.rows})
        self.used_runs: set[str] = set()

    def column(self, row: ResultRow) -> str:
        """The column a row belongs to: its defense (and configuration, when several) and detector."""
        return with_detector(self.defense_label[row.run_id], row.detector)

    def defenses(self, dataset: str, preset: str, threat: str | None = None) -> list[str]:
        return defense_order(self.column(r) for r in self.rows if (r.dataset, r.preset) == (dataset, preset)
                             and (threat is None or r.threat == threat))

    def evaluated(self, dataset: str | None = None, preset: str | None = None) -> list[str]:
        """The columns (defense, and detector when not the KDE) with rows of any threat model, in table order."""
        return defense_order(self.column(r) for r in self.rows if r.threat != Threat.MODEL
                             and (dataset is None or (r.dataset, r.preset) == (dataset, preset)))

    def chosen_runs(self, dataset: str, preset: str, defense: str, threat: str, attack: str, metric: str) -> list[str]:
        """Per seed, the newest run of this (dataset, preset, defense, threat) that holds ``attack``/``metric``."""
        chosen = []
        seeds = sorted({k[4] for k in self.runs_of if k[:4] == (dataset, preset, defense, threat)})
        for seed in seeds:
            runs = [run for run in self.runs_of[(dataset, preset, defense, threat, seed)]
                    if (attack, metric) in self.by_run[run]]
            if runs:
                chosen.append(max(runs, key=lambda run: self.run_time[run]))
        self.used_runs.update(chosen)
        return chosen

    def value(self, run: str, attack: str, metric: str) -> float | None:
        row = self.by_run[run].get((attack, metric))
        return None if row is None else row.value

    def cell(self, dataset: str, preset: str, defense: str, threat: str, attack: str, metric: str, *,
             interval: bool = False, notes: Iterable[tuple[str, str, str]] = ()) -> Cell:
        """Mean over seeds of ``metric``; the interval only for one seed; ``notes`` (label, attack, metric) likewise."""
        runs = self.chosen_runs(dataset, preset, defense, threat, attack, metric)
        if not runs:
            return Cell(None)

        def mean(att: str, met: str) -> float | None:
            values = [v for v in (self.value(run, att, met) for run in runs) if v is not None]
            return sum(values) / len(values) if values else None

        low = high = None
        if interval and len(runs) == 1:
            low, high = self.value(runs[0], attack, f"{metric}_low"), self.value(runs[0], attack, f"{metric}_high")
        noted = {label: v for label, att, met in notes if (v := mean(att, met)) is not None}
        per_seed = [v for v in (self.value(run, attack, metric) for run in runs) if v is not None and math.isfinite(v)]
        sd = statistics.stdev(per_seed) if len(per_seed) >= 2 else None
        return Cell(mean(attack, metric), low, high, len(runs), noted, sd=sd)


def mark_best(table: Table, *, higher_is_better: bool = True) -> None:
    """Flag the best finite value of each row, per column group (ties at the shown precision all count)."""
    for row in table.rows:
        for group in dict.fromkeys(g for g, _ in table.columns):
            cols = [c for c in table.columns if c[0] == group]
            shown = {c: round(table.cell(row, c).value * table.scale, table.digits) for c in cols  # type: ignore[operator]
                     if table.cell(row, c).value is not None and math.isfinite(table.cell(row, c).value)}  # type: ignore[arg-type]
            if len(shown) < 2:
                continue
            target = max(shown.values()) if higher_is_better else min(shown.values())
            for c, v in shown.items():
                if v == target:
                    old = table.cells[(row, c)]
                    table.cells[(row, c)] = replace(old, best=True)


def per_dataset_table(index: RowIndex, *, key: str, title: str, threat: str, attack: str, metric: str, interval: bool,
                       notes: tuple[tuple[str, str, str], ...], flag: str = "criterion not met") -> Table:
    """Dataset rows x defense columns of one metric of ``attack``; cells whose criterion failed are flagged."""
    defenses = index.evaluated()
    blocks = index.blocks
    cells = {}
    for dataset, preset in blocks:
        for defense in defenses:
            cell = index.cell(dataset, preset, defense, threat, attack, metric, interval=interval, notes=notes)
            if cell.value is not None and cell.notes.get("criterion met", 1.0) < 1.0:
                cell = replace(cell, flag=flag)
            cells[(block_name(dataset, preset), ("", defense))] = cell
    table = Table(key, title, "dataset", [block_name(d, p) for d, p in blocks], [("", f) for f in defenses], cells,
                  digits=4 if metric == "distortion" else 3, threat=threat)
    mark_best(table)
    return table


def attack_table(index: RowIndex, *, key: str, title: str, threat: str, order: Iterable[str] = (),
                 metric: str = Metric.AUC.value, interval: bool = True,
                 notes: Callable[[str], tuple[tuple[str, str, str], ...]] | None = None, others: bool = True) -> Table:
    """``metric`` (detection AUC, with interval, success rate and pairs, by default) of each attack of ``threat``
    (rows: ``order``, then, with ``others``, any other measured), per (dataset block, defense) column;
    ``notes(attack)`` the cells' notes."""
    order = tuple(order)
    columns, cells = [], {}
    present = {r.attack for r in index.rows if r.threat == threat and r.metric == metric}
    attacks = [*order, *(sorted(present - set(order)) if others else [])]
    for dataset, preset in index.blocks:
        columns += [(block_name(dataset, preset), defense) for defense in index.evaluated(dataset, preset)]
    noted = notes or (lambda attack: (("success", attack, Metric.SUCCESS_RATE), ("pairs", attack, Metric.PAIRS_KEPT)))
    for block, defense in columns:
        dataset, preset = next((d, p) for d, p in index.blocks if block_name(d, p) == block)
        for attack in attacks:
            cells[(attack, (block, defense))] = index.cell(dataset, preset, defense, threat, attack, metric,
                                                           interval=interval, notes=noted(attack))
    table = Table(key, title, "attack", attacks, columns, cells, threat=threat)
    mark_best(table)
    return table


def fixed_fpr_table(index: RowIndex, *, key: str, title: str, threat: str, order: Iterable[str] = ()) -> list[Table]:
    """The companion of a detection table: per attack and column, robust accuracy under detection at 5% false
    positives, with the TPR at 1/5/10% and the clean accuracy lost to rejection; none when nothing was measured."""
    metric = fpr_metric("robust_accuracy", 0.05)
    present = {r.attack for r in index.rows if r.threat == threat and r.metric == metric}
    if not present:
        return []

    def notes(attack: str) -> tuple[tuple[str, str, str], ...]:
        return (*((f"TPR {round(fpr * 100)}%", attack, fpr_metric("tpr", fpr)) for fpr in FPR_LEVELS),
                ("clean lost", attack, fpr_metric("clean_lost", 0.05)), ("pairs", attack, Metric.PAIRS_KEPT))

    return [attack_table(index, key=key, title=title, threat=threat, order=[a for a in order if a in present],
                         metric=metric, interval=False, notes=notes)]
