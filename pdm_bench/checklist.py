"""Carlini et al. 2019's evaluation checklist ("On evaluating adversarial robustness"), computed from a study's rows:
each threat model checks the items its rows can show (``ThreatModel.checklist``); the report lists every item per
defense as pass, fail or not run, with the numbers it was judged on."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pdm_bench.tables import RowIndex


@dataclass(frozen=True)
class Check:
    """One checklist item for one defense under one threat model: ``passed`` None when its rows are missing."""

    item: str
    passed: bool | None
    numbers: str = ""

    @property
    def status(self) -> str:
        return "not run" if self.passed is None else "pass" if self.passed else "fail"


@dataclass(frozen=True)
class Measured:
    """A rate and the number of images it is a share of."""

    value: float
    n: int

    def slack(self) -> float:
        """1.96 binomial standard errors plus one image: how far two such rates may differ by chance."""
        if self.n <= 0 or not math.isfinite(self.value):
            return math.inf
        p = min(max(self.value, 0.0), 1.0)
        return 1.96 * math.sqrt(p * (1 - p) / self.n) + 1 / self.n


class Lookup:
    """The newest measured value (first seed) of one (dataset, preset, defense, threat) in a row index."""

    def __init__(self, index: RowIndex, dataset: str, preset: str, defense: str, threat: str) -> None:
        self.index, self.key = index, (dataset, preset, defense, threat)

    def __call__(self, attack: str, metric: str) -> Measured | None:
        runs = self.index.chosen_runs(*self.key, attack, str(metric))
        if not runs:
            return None
        row = self.index.by_run[runs[0]][(attack, str(metric))]
        return Measured(row.value, row.n)


def no_higher(later: Measured, earlier: Measured) -> bool:
    """``later`` is not above ``earlier`` beyond chance."""
    return later.value <= earlier.value + later.slack() + earlier.slack()


def falls(points: Iterable[tuple[float, Measured | None]]) -> bool | None:
    """Whether a rate falls (within chance) as eps grows; None with fewer than two measured points."""
    measured = [m for _, m in sorted(points, key=lambda p: p[0]) if m is not None]
    if len(measured) < 2:
        return None
    return all(no_higher(b, a) for a, b in zip(measured, measured[1:]))


def fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3f}"
