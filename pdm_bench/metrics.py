"""Detection and distortion metrics (numpy): ROC AUC with a bootstrap interval, Pang's pair protocol, L_p sizes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95% bootstrap interval."""

    value: float
    low: float
    high: float


def detection_auc(normal_scores: np.ndarray, adversarial_scores: np.ndarray, *, bootstrap: int = 1000, seed: int = 0) -> Interval:
    """ROC AUC of telling normal (positive, high score) from adversarial inputs, with a paired bootstrap 95% CI.

    Scores are KDE log-densities: high = normal. The pairs are resampled together, since each adversarial
    comes from one normal image.
    """
    normal = np.asarray(normal_scores, dtype=np.float64)
    adversarial = np.asarray(adversarial_scores, dtype=np.float64)
    if normal.shape != adversarial.shape or normal.ndim != 1:
        raise ValueError(f"expected two 1-d score arrays of equal length, got shapes {normal.shape} and {adversarial.shape}")
    if normal.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    value = _auc(normal, adversarial)
    rng = np.random.default_rng(seed)
    n = normal.size
    draws = rng.integers(0, n, size=(bootstrap, n))
    samples = np.array([_auc(normal[d], adversarial[d]) for d in draws])
    low, high = np.nanpercentile(samples, [2.5, 97.5]) if bootstrap else (value, value)
    return Interval(value, float(low), float(high))


def _auc(normal: np.ndarray, adversarial: np.ndarray) -> float:
    labels = np.r_[np.ones(normal.size), np.zeros(adversarial.size)]
    scores = np.r_[normal, adversarial]
    if not np.isfinite(scores).all():  # -inf log-density (far from every kernel) ranks lowest
        scores = np.nan_to_num(scores, nan=-np.inf, neginf=np.finfo(np.float64).min)
    return float(roc_auc_score(labels, scores))


def kept_pairs(y_true: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray) -> np.ndarray:
    """Pang's protocol: indices where the clean image is correct and its adversarial is misclassified."""
    return np.flatnonzero((clean_pred == y_true) & (adv_pred != y_true))


def success_rate(y_true: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray) -> float:
    """Share of correctly classified clean images whose adversarial is misclassified."""
    correct = clean_pred == y_true
    return float((adv_pred[correct] != y_true[correct]).mean()) if correct.any() else float("nan")


def distortions(x: np.ndarray, x_adv: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image L2, Linf and L0 (changed input values) of ``x_adv - x``, on the [0, 1] pixel scale."""
    delta = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), int(np.prod(np.shape(x)[1:])))
    return {
        "l2": np.linalg.norm(delta, axis=1),
        "linf": np.abs(delta).max(axis=1, initial=0.0),
        "l0": (np.abs(delta) > 1e-6).sum(axis=1).astype(np.float64),
    }
