"""Detection at a fixed false-positive rate: thresholds on clean calibration images, TPR, robust accuracy under
detection and clean accuracy lost, against hand-computed values; the rows a gray-box run writes and the report's
companion table; a run finished before these rows existed gets them from its stored images."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pdm_bench.evaluation import calibration_indices
from pdm_bench.metrics import operating_point, rejection_threshold
from pdm_bench.results import ResultsStore


@pytest.mark.parametrize(
    ("scores", "fpr", "threshold"),
    [
        (list(range(10)), 0.05, 0.0),  # floor(0.5) = 0 clean images may be rejected: the lowest score is the threshold
        (list(range(10)), 0.10, 1.0),  # one of ten rejected (the score 0)
        (list(range(10)), 0.01, 0.0),
        ([1, 1, 1, 1, 2], 0.2, 1.0),  # ties: rejecting one would reject four, so none is (the rate falls, never rises)
        ([-math.inf, -math.inf, 0.0, 1.0], 0.5, 0.0),  # an underflowing density is the first rejected
        ([3.0, 1.0, 2.0], 1.0, math.inf),  # every clean image rejected: everything is
    ],
)
def test_the_threshold_rejects_at_most_the_rate_of_clean_scores(scores: list[float], fpr: float, threshold: float) -> None:
    assert rejection_threshold(np.array(scores), fpr) == threshold
    assert (np.array(scores) < threshold).mean() <= fpr


def test_a_threshold_needs_clean_scores_and_a_rate() -> None:
    with pytest.raises(ValueError, match="expected clean scores and an fpr in"):
        rejection_threshold(np.array([]), 0.05)
    with pytest.raises(ValueError, match="fpr 1.5"):
        rejection_threshold(np.array([1.0]), 1.5)


Y = np.array([0, 1, 2, 3])
CLEAN_PRED = np.array([0, 1, 2, 0])  # image 3 is misclassified clean: never counted
CLEAN_SCORE = np.array([5.0, 0.5, 5.0, 5.0])


def test_tpr_robust_accuracy_and_clean_loss_by_hand() -> None:
    """Pairs (clean right, attack wrong): images 0 and 2; image 0's adversarial is rejected (0.2 < 1), image 2's is
    not; image 1's attack failed. TPR 1/2; robust 2/3 (0 rejected, 1 not fooled); image 1 is rejected clean: 1/4."""
    point = operating_point(1.0, y=Y, clean_pred=CLEAN_PRED, clean_score=CLEAN_SCORE, adv_pred=np.array([1, 1, 0, 3]),
                            adv_score=np.array([0.2, 9.0, 3.0, 0.0]))
    assert (point.tpr, point.robust_accuracy, point.clean_lost) == (0.5, pytest.approx(2 / 3), 0.25)


def test_no_pairs_and_everything_rejected() -> None:
    failed = operating_point(1.0, y=Y, clean_pred=CLEAN_PRED, clean_score=CLEAN_SCORE, adv_pred=Y, adv_score=np.zeros(4))
    assert math.isnan(failed.tpr) and failed.robust_accuracy == 1.0  # nothing fooled: no TPR to speak of
    rejected = operating_point(math.inf, y=Y, clean_pred=CLEAN_PRED, clean_score=CLEAN_SCORE,
                               adv_pred=np.array([1, 0, 0, 0]), adv_score=np.full(4, 1e9))
    assert (rejected.tpr, rejected.robust_accuracy, rejected.clean_lost) == (1.0, 1.0, 0.75)
    nobody_right = operating_point(0.0, y=Y, clean_pred=Y + 1, clean_score=CLEAN_SCORE, adv_pred=Y, adv_score=CLEAN_SCORE)
    assert math.isnan(nobody_right.robust_accuracy) and nobody_right.clean_lost == 0.0


def test_calibration_images_are_never_attacked_ones() -> None:
    attacked = np.array([0, 5, 7])
    chosen = calibration_indices(10, attacked, seed=0, n=4)
    assert len(chosen) == 4 and not set(chosen) & set(attacked.tolist()) and list(chosen) == sorted(chosen)
    assert list(calibration_indices(10, attacked, seed=0)) == [1, 2, 3, 4, 6, 8, 9]  # fewer left than asked: all
    assert calibration_indices(3, np.arange(3), seed=0).size == 0


def rows_of(results: Path) -> dict[tuple[str, str], tuple[float, int]]:
    return {(r.attack, r.metric): (r.value, r.n) for r in ResultsStore(results).rows()}


def test_a_gray_run_measures_at_fixed_rates_and_an_older_run_gets_them_from_its_images(
        tmp_path: Path, cli: Callable[..., Any]) -> None:
    results = tmp_path / "results"
    args = ("run", "--threat", "gray", "--defense", "baseline", "--epochs", "3", "--attacks", "fgsm-0.3",
            "--no-resiliency", "--n-samples", "40", "--no-progress", "--no-geometry", "--results-dir", str(results))
    assert cli(*args).code == 0
    got = rows_of(results)
    assert got[("calibration", "calibration_images")] == (320.0, 320)  # digits: 360 test images, 40 attacked
    thresholds = [got[("calibration", f"threshold_at_fpr_{p}")][0] for p in (1, 5, 10)]
    assert thresholds == sorted(thresholds)
    tpr = [got[("fgsm-0.3", f"tpr_at_fpr_{p}")][0] for p in (1, 5, 10)]
    assert tpr == sorted(tpr) and 0.0 <= tpr[0] and tpr[2] <= 1.0  # a looser threshold rejects no fewer
    assert got[("fgsm-0.3", "tpr_at_fpr_5")][1] == got[("fgsm-0.3", "pairs_kept")][0]
    assert 0.0 <= got[("fgsm-0.3", "robust_accuracy_at_fpr_5")][0] <= 1.0
    assert cli("report", "--results-dir", str(results), "--out", str(tmp_path / "report")).code == 0
    with open(tmp_path / "report" / "table2b_graybox_fpr.csv", encoding="utf-8") as handle:
        table = next(csv.DictReader(handle))
    assert table["attack"] == "fgsm-0.3"
    assert float(table["digits (quick) baseline"]) == pytest.approx(got[("fgsm-0.3", "robust_accuracy_at_fpr_5")][0], abs=6e-4)
    assert "TPR 5%" in (tmp_path / "report" / "tables.tex").read_text(encoding="utf-8").replace(r"\%", "%")

    # A run made before these rows existed: they are added from its stored images, the attack is not redone.
    store = results / "results.csv"
    lines = store.read_text(encoding="utf-8").splitlines(keepends=True)
    store.write_text("".join(line for line in lines if "_at_fpr_" not in line), encoding="utf-8")
    again = cli(*args)
    assert "added from its stored images" in again.out and "attacking" not in again.out
    assert rows_of(results)[("fgsm-0.3", "tpr_at_fpr_5")] == got[("fgsm-0.3", "tpr_at_fpr_5")]
    # ... and without its images they stay missing (the attack is not redone for them)
    store.write_text("".join(line for line in lines if "_at_fpr_" not in line), encoding="utf-8")
    for stored in (results / "adversarial").glob("*.npy"):
        stored.unlink()
    third = cli(*args)
    assert third.code == 0 and "attacking" not in third.out and ("fgsm-0.3", "tpr_at_fpr_5") not in rows_of(results)
