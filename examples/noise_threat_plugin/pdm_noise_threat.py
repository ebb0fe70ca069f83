"""An example threat-model plugin: uniform noise at the attack budget, the sanity floor of detection.

Random noise of the size of an attack's perturbation is not adversarial: a detector that flags it as readily as
real attacks measures "changed" rather than "adversarial". The rows: the share of images the noise flips, and the
detection AUC of clean images against their noisy copies (all N images; Pang's pairs need a flipped prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdm_bench.evaluation import Evaluation
from pdm_bench.results import Metric, ResultRow, value_getter
from pdm_bench.tables import RowIndex, Table, attack_table
from pdm_bench.threat import ThreatModel, ThreatParams


@dataclass(frozen=True, kw_only=True)
class NoiseParams(ThreatParams):
    """``eps``: the L-infinity size of the noise (pixels in [0, 1])."""

    eps: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")


class UniformNoise(ThreatModel):
    """Each test image plus seeded uniform noise in [-eps, eps], clipped to [0, 1]."""

    name = "noise"
    description = "uniform noise at the attack budget (example plugin): the detector's sanity floor"
    params_type = NoiseParams
    cost_rank = 3  # cheap: started last in a parallel study
    params: NoiseParams

    def evaluate(self, evaluation: Evaluation) -> list[ResultRow]:
        ev, label = evaluation, f"noise-{self.params.eps:g}"
        if ev.results.finished(ev.run_id, label):
            ev.log(f"{label}: already in {ev.results.path}, skipped")
            return ev.results.run_rows(ev.run_id)
        model = ev.trained.model
        x, y = ev.dataset.x_test[ev.indices], ev.dataset.y_test[ev.indices]
        clean_pred, clean_score = ev.record_clean(model, x, y)
        rng = np.random.default_rng(ev.seed)
        noisy = np.clip(x + rng.uniform(-self.params.eps, self.params.eps, size=x.shape), 0.0, 1.0).astype(np.float32)
        noisy_pred, noisy_score = ev.score(model, noisy)
        auc = ev.detection_auc(label, clean_score, noisy_score)
        correct = clean_pred == y
        flipped = float((noisy_pred[correct] != y[correct]).mean()) if correct.any() else float("nan")
        n = len(y)
        ev.results.append([ev.row(label, Metric.AUC, auc.value, n), ev.row(label, Metric.AUC_LOW, auc.low, n),
                           ev.row(label, Metric.AUC_HIGH, auc.high, n),
                           ev.row(label, Metric.SUCCESS_RATE, flipped, int(correct.sum())),
                           ev.row(label, Metric.PAIRS_KEPT, n, n),
                           ev.row(label, Metric.ACCURACY, float((noisy_pred == y).mean()), n)],
                          completes=label)
        return ev.results.run_rows(ev.run_id)

    def summary(self, rows: list[ResultRow]) -> str:
        get, label = value_getter(rows), f"noise-{self.params.eps:g}"
        return (f"{label}: flipped {get(label, Metric.SUCCESS_RATE):.3f} of correct images; detection AUC clean vs "
                f"noisy {get(label, Metric.AUC):.3f} [{get(label, Metric.AUC_LOW):.3f}, {get(label, Metric.AUC_HIGH):.3f}]"
                " (near 0.5: the detector does not flag mere noise)")

    def report_tables(self, index: RowIndex) -> list[Table]:
        return [attack_table(index, key="noise_auc", title="Sanity floor: detection AUC of uniform noise at the budget",
                             threat=self.name)]
