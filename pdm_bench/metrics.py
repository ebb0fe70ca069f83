"""Detection and distortion metrics (numpy): ROC AUC with a bootstrap interval, Pang's pair protocol, L_p sizes."""

from __future__ import annotations

import math
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


FPR_LEVELS = (0.01, 0.05, 0.10)  # the false-positive rates detection is reported at (Tramer et al. 2020 use 5%)


def rejection_threshold(clean_scores: np.ndarray, fpr: float) -> float:
    """The detector score below which an input is rejected, set on clean inputs so that at most ``fpr`` of them are:
    the (floor(fpr * n) + 1)-th lowest clean score (ties make the rate lower, never higher); +inf rejects all."""
    scores = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if scores.size == 0 or not 0.0 <= fpr <= 1.0:
        raise ValueError(f"expected clean scores and an fpr in [0, 1], got {scores.size} scores and fpr {fpr}")
    k = int(np.floor(fpr * scores.size + 1e-9))
    return float(scores[k]) if k < scores.size else math.inf


@dataclass(frozen=True)
class OperatingPoint:
    """Detection at one threshold: ``tpr`` the share of Pang's pairs whose adversarial is rejected; ``robust_accuracy``
    the share of correctly classified images whose attack failed to fool the model or was rejected; ``clean_lost`` the
    share of all attacked images that were correct and are rejected clean (accuracy lost to the detector)."""

    tpr: float
    robust_accuracy: float
    clean_lost: float


def operating_point(threshold: float, *, y: np.ndarray, clean_pred: np.ndarray, clean_score: np.ndarray,
                    adv_pred: np.ndarray, adv_score: np.ndarray) -> OperatingPoint:
    """Detection of one attack's images at ``threshold`` (reject a score below it); NaN where nothing is counted."""
    correct = clean_pred == y
    rejected = np.asarray(adv_score, dtype=np.float64) < threshold
    keep = kept_pairs(y, clean_pred, adv_pred)
    tpr = float(rejected[keep].mean()) if keep.size else float("nan")
    robust = float(((adv_pred == y) | rejected)[correct].mean()) if correct.any() else float("nan")
    clean_lost = float((correct & (np.asarray(clean_score, dtype=np.float64) < threshold)).mean()) if y.size else float("nan")
    return OperatingPoint(tpr, robust, clean_lost)


def valid_images(x: np.ndarray, x_adv: np.ndarray, *, norm: str | None = None, eps: float | None = None,
                 low: float = 0.0, high: float = 1.0, tolerance: float = 1e-5) -> np.ndarray:
    """Per image, whether ``x_adv`` may count: finite, inside [low, high] and, with a budget, within ``eps`` of ``x``
    in ``norm`` (``linf`` or ``l2``), up to float ``tolerance``. The model's label and the detector's score are
    always measured again on the image, never taken from the attack."""
    flat = np.asarray(x_adv, dtype=np.float64).reshape(len(x_adv), -1)
    ok = np.isfinite(flat).all(axis=1) & (flat.min(axis=1, initial=low) >= low - tolerance) & \
        (flat.max(axis=1, initial=high) <= high + tolerance)
    if eps is not None:
        size = distortions(x, x_adv)["linf" if norm == "linf" else "l2"]
        ok &= size <= eps * (1 + tolerance) + tolerance
    return ok
