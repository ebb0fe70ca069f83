"""C&W-wb as the white and black box run it: the budget schedule, the two stages, scoring and the rows, and the
options both threat models take (:class:`WhiteParams`); raising the budget until the detector is beaten is in
:mod:`cw_wb_search`.

Stage 1 is a targeted C&W (confidence 5) to seeded random targets; stage 2 starts from the stage-1 image and adds
``c * max(0, log tau_t - log KDE_t(embedding(x')))`` to the C&W objective, so an image only counts as adversarial
once its density under the target class reaches tau_t. Plain C&W (stage 2 without the density term: same targets,
start, confidence and budget) is scored too: it must be detected where C&W-wb is not, or the attack is not
adaptive in fact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from pdm_bench.detectors import Detector, KDEDetector
from pdm_bench.errors import UserError
from pdm_bench.evaluation import Evaluation
from pdm_bench.inference import embed_and_predict
from pdm_bench.metrics import Interval, distortions, kept_pairs, success_rate
from pdm_bench.results import Attack, Metric, ResultRow
from pdm_bench.threat import ThreatParams
from pdm_bench.threat_models.cw_kde import THRESHOLDS, DensityScore, Threshold, class_log_thresholds

WB, CW = Attack.CW_WB.value, Attack.CW.value
WB_DOUBLED = f"{WB}-2x"  # C&W-wb again at the reported rung with twice the Adam steps: the doubling check
DOUBLING_TOLERANCE = 0.05  # d has converged when doubling the steps moves it by at most this share


@dataclass(frozen=True, kw_only=True)
class WhiteBudget:
    """One rung of the budget schedule: Adam steps per binary-search step, search steps, first constant, step size,
    and how much of the detector the attacker copies and how dense it must get.

    Stage 2 (C&W-wb) runs with all of it; stage 1 (plain C&W) with the same steps, constant and step size and
    ``stage1_search_steps`` search steps. ``kde_points`` (None: the run's ``kde_points``, Pang's 100 by default) is
    the kernel subset per class of the attacker's KDE; ``tau_quantile`` the quantile of class t's training-point
    densities that tau_t is (0.5: Pang's median; ignored with the ``clean`` threshold). The step size is cleverhans's
    5e-3 by default; on images with many
    saturated pixels (digits: 57% are 0 or 1) Adam in tanh space needs ~1000 such steps to move them, and 5e-2 does
    in 300 what 5e-3 does in 1000 (measured on digits: 100% vs 95% of targets hit, d 0.200 vs 0.205).
    """

    max_iter: int = 1000
    binary_search_steps: int = 5
    initial_const: float = 1e-2
    learning_rate: float = 5e-3
    kde_points: int | None = None
    tau_quantile: float = 0.5

    def __post_init__(self) -> None:
        if self.kde_points is not None and (isinstance(self.kde_points, bool) or not isinstance(self.kde_points, int)
                                            or self.kde_points <= 0):
            raise UserError(f"C&W-wb budget: expected a positive integer kde_points, got {self.kde_points!r}")
        if isinstance(self.tau_quantile, bool) or not isinstance(self.tau_quantile, (int, float)) or \
                not 0 <= self.tau_quantile <= 1:
            raise UserError(f"C&W-wb budget: expected tau_quantile in [0, 1], got {self.tau_quantile!r}")
        for name in ("max_iter", "binary_search_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"C&W-wb budget: expected a positive integer {name}, got {value!r}")
        for name in ("initial_const", "learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise UserError(f"C&W-wb budget: expected a positive {name}, got {value!r}")


# Raised in this order until the criterion holds. Step size 5e-2, ten times cleverhans's (see WhiteBudget): on
# digits (quick preset, 30 images) 1000 x 5 steps from c0 1 at 5e-2 broke RCE on 100% and PDM on 93% of images,
# from c0 0.1 at 1e-2 on 83% and 77%. More steps alone cannot lower the AUC once every image reaches tau: the attack
# stops at the threshold. On MNIST (baseline, 20 images) Pang's 100-point median reached 100% success but AUC 0.939
# under the detector's 1000 points, so the later rungs copy the whole detector and then demand a higher density.
DEFAULT_SCHEDULE: tuple[WhiteBudget, ...] = (
    WhiteBudget(max_iter=1000, binary_search_steps=5, initial_const=1.0, learning_rate=5e-2),
    WhiteBudget(max_iter=1000, binary_search_steps=5, initial_const=1.0, learning_rate=5e-2, kde_points=1000),
    WhiteBudget(max_iter=1000, binary_search_steps=5, initial_const=1.0, learning_rate=5e-2, kde_points=1000,
                tau_quantile=0.75),
    WhiteBudget(max_iter=2000, binary_search_steps=7, initial_const=1.0, learning_rate=5e-2, kde_points=1000,
                tau_quantile=0.9),
)


def speedup_settings(warm_start: bool, carry_rungs: bool = False) -> dict[str, bool]:
    """``warm_start`` and ``carry_rungs`` as they enter run ids and image caches: each only when on, so runs made
    before it existed keep theirs."""
    return {**({"warm_start": True} if warm_start else {}), **({"carry_rungs": True} if carry_rungs else {})}


def check_schedule(schedule: Sequence[WhiteBudget]) -> tuple[WhiteBudget, ...]:
    budgets = tuple(schedule)
    if not budgets or not all(isinstance(b, WhiteBudget) for b in budgets):
        raise UserError(f"C&W-wb budget: expected a non-empty sequence of WhiteBudget, got {schedule!r}")
    return budgets


def require_embedding(model: torch.nn.Module, *, threat: str) -> None:
    """A one-line ``UserError`` unless ``model`` has what the KDE detector reads (``embedding``, ``embed_and_logits``)."""
    has_embedding = isinstance(getattr(model, "embedding", None), torch.nn.Module)
    if not has_embedding or not callable(getattr(model, "embed_and_logits", None)):
        raise UserError(f"Threat model '{threat}' runs the KDE detector on the model's embedding: expected a model with a "
                        f"top-level 'embedding' module and embed_and_logits(), got {type(model).__name__}")


@dataclass(frozen=True)
class Scored:
    """An attack's images on the N sampled inputs, as the detector sees them."""

    x_adv: np.ndarray
    pred: np.ndarray
    score: np.ndarray
    keep: np.ndarray
    auc: Interval
    success: float
    distortion: np.ndarray  # ||x - x'||_2 / sqrt(n) per kept pair
    seconds: float


@dataclass(frozen=True)
class Rung:
    """One budget tried: stage 1 (targeted C&W) and C&W-wb at that budget, and whether it broke the detector."""

    index: int
    budget: WhiteBudget
    stage1: Scored
    wb: Scored

    @property
    def met(self) -> bool:
        return self.wb.success == 1.0 and self.wb.auc.value <= 0.5


@dataclass(frozen=True)
class DetectorScore:
    """A differentiable detector (not the KDE) as C&W-wb's density term: its ``torch_score`` in place of the KDE's
    log-density."""

    detector: Detector
    num_classes: int

    def log_density(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.detector.torch_score(embeddings, classes)

    def to(self, device: torch.device | str) -> DetectorScore:
        return self  # torch_score runs where the embeddings are


@dataclass(frozen=True, kw_only=True)
class WhiteAttack:
    """What the attacker runs, besides the budget: the model, the detector it attacks, the stage settings.

    The KDE is copied as Pang did: a seeded subset of its kernel points (``kde_points``, or the budget's), thresholds
    from the leave-one-out densities of all of them. Any other detector is attacked through its differentiable
    score as it is; tau_t is the budget's quantile of its scores on class t's ``reference`` embeddings (the ones it
    was fitted on; in-sample, so no higher than a held-out quantile would be)."""

    model: torch.nn.Module
    detector: Detector
    reference: tuple[torch.Tensor, torch.Tensor] | None = None  # (embeddings, labels); needed unless the KDE
    kde_points: int = 100
    seed: int = 0
    threshold: Threshold = "median"
    confidence: float = 5.0
    wb_confidence: float = 0.0
    stage1_search_steps: int = 3
    batch_size: int = 256
    warm_start: bool = True  # each binary-search step from the image's best so far (CarliniWagnerL2.warm_start)
    carry_rungs: bool = False  # each rung's C&W-wb from the last rung's images where they hit the target

    def params(self) -> dict[str, Any]:
        return {"kde_points": self.kde_points, "threshold": self.threshold, "confidence": self.confidence,
                "wb_confidence": self.wb_confidence, "stage1_search_steps": self.stage1_search_steps,
                **speedup_settings(self.warm_start)}

    def surrogate(self, budget: WhiteBudget, device: torch.device) -> tuple[DensityScore, torch.Tensor | None]:
        """The density term at this budget and its log tau per class (None: the 'clean' threshold)."""
        if isinstance(self.detector, KDEDetector):
            kde = self.detector.fitted()
            subset = kde.subset(budget.kde_points or self.kde_points, seed=self.seed).to(device)
            if self.threshold != "median":
                return subset, None
            return subset, class_log_thresholds(subset, kde, quantile=budget.tau_quantile)
        if self.reference is None:
            raise ValueError(f"expected the reference embeddings of detector '{self.detector.name}', got None")
        embeddings, labels = self.reference
        score = DetectorScore(self.detector, int(labels.max()) + 1)
        if self.threshold != "median":
            return score, None
        with torch.no_grad():
            taus = [torch.quantile(score.log_density(embeddings[labels == c], labels[labels == c]).double(),
                                   budget.tau_quantile) for c in range(score.num_classes)]
        return score, torch.stack(taus).float().to(device)


def judge_images(ev: Evaluation, judge: tuple[torch.nn.Module, Detector], x: np.ndarray, y: np.ndarray,
                 x_adv: np.ndarray, clean_pred: np.ndarray, clean_score: np.ndarray, seconds: float) -> Scored:
    """Score ``x_adv`` with the judge's detector under the judge's predictions; Pang's pairs, AUC, success, distortion."""
    model, detector = judge
    embeddings, pred_t = embed_and_predict(model, x_adv, device=ev.device)
    pred, adv_score = pred_t.numpy(), detector.score(embeddings, pred_t).numpy()
    keep = kept_pairs(y, clean_pred, pred)
    auc = ev.detection_auc("C&W-wb", clean_score[keep], adv_score[keep])
    per_image = distortions(x[keep], x_adv[keep])["l2"] / math.sqrt(int(np.prod(x.shape[1:])))
    return Scored(x_adv, pred, adv_score, keep, auc, success_rate(y, clean_pred, pred), per_image, seconds)


def seconds_spent(*parts: float) -> float:
    """Time spent on the parts that ran (NaN marks one reused from the cache); NaN when none ran."""
    spent = [p for p in parts if not math.isnan(p)]
    return float(sum(spent)) if spent else float("nan")


def mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def scored_rows(ev: Evaluation, name: str, s: Scored, y: np.ndarray, clean: tuple[np.ndarray, np.ndarray]
                ) -> list[ResultRow]:
    """auc (+ interval), success rate, pairs kept, distortion d (mean, median), mean adversarial log-density and
    detection at fixed false-positive rates; ``clean``: the target's predictions and scores on the clean images."""
    n, clean_pred = len(s.keep), clean[0]
    return [ev.row(name, Metric.AUC, s.auc.value, n), ev.row(name, Metric.AUC_LOW, s.auc.low, n),
            ev.row(name, Metric.AUC_HIGH, s.auc.high, n),
            ev.row(name, Metric.SUCCESS_RATE, s.success, int((clean_pred == y).sum())), ev.row(name, Metric.PAIRS_KEPT, n, len(y)),
            ev.row(name, Metric.DISTORTION, mean_or_nan(s.distortion), n),
            ev.row(name, Metric.DISTORTION_MEDIAN, float(np.median(s.distortion)) if n else float("nan"), n),
            ev.row(name, Metric.LOG_DENSITY_MEAN, mean_or_nan(s.score[s.keep]), n),
            ev.row(name, Metric.ATTACK_SECONDS, s.seconds, len(y)),
            *ev.fixed_fpr_rows(name, y=y, clean=clean, adversarial=(s.pred, s.score))]


def budget_rows(ev: Evaluation, name: str, rung: Rung, n: int, *, kde_points: int) -> list[ResultRow]:
    """The budget ``rung`` used; ``kde_points`` is the run's (a rung may override it)."""
    b = rung.budget
    return [ev.row(name, Metric.BUDGET_ITERATIONS, b.max_iter, n), ev.row(name, Metric.BUDGET_SEARCH_STEPS, b.binary_search_steps, n),
            ev.row(name, Metric.BUDGET_INITIAL_CONST, b.initial_const, n),
            ev.row(name, Metric.BUDGET_LEARNING_RATE, b.learning_rate, n),
            ev.row(name, Metric.BUDGET_RUNG, rung.index + 1, n), ev.row(name, Metric.KDE_POINTS, b.kde_points or kde_points, n),
            ev.row(name, Metric.TAU_QUANTILE, b.tau_quantile, n),
            ev.row(name, Metric.CRITERION_MET, float(rung.met), n)]


def start_run(ev: Evaluation, threat: str, settings: dict[str, Any], budgets: Sequence[WhiteBudget]
              ) -> tuple[Evaluation, Evaluation, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The evaluation images are cached under (the attack's ``settings``) and the one rows go under (those and the
    schedule: a longer schedule is a new run that reuses the images of the budgets it shares with the old), the N
    sampled inputs, and the target's clean predictions and scores on them (clean rows written once)."""
    images_ev = replace(ev, threat=threat, settings={**ev.settings, threat: settings})
    ev = replace(images_ev, settings={**images_ev.settings, "schedule": [asdict(b) for b in budgets]})
    x, y = ev.dataset.x_test[ev.indices], ev.dataset.y_test[ev.indices]
    return images_ev, ev, (x, y), ev.record_clean(ev.trained.model, x, y)


@dataclass(frozen=True, kw_only=True)
class WhiteParams(ThreatParams):
    """C&W-wb's budget: unset, the schedule of ``DEFAULT_SCHEDULE``; any of the first four set, one fixed budget
    (the others from the schedule's first rung). ``kde_points``: the attacker's kernel points per class;
    ``confidence``: stage 1's margin over the target; ``wb_confidence``: stage 2's (Carlini's kappa; a higher one
    trades distortion for transfer to another model)."""

    max_iter: int | None = None
    binary_search_steps: int | None = None
    initial_const: float | None = None
    learning_rate: float | None = None
    kde_points: int = 100
    threshold: str = "median"
    confidence: float = 5.0
    wb_confidence: float = 0.0
    warm_start: bool = True
    carry_rungs: bool = False
    check_doubling: bool = False

    def __post_init__(self) -> None:
        for name in ("warm_start", "carry_rungs", "check_doubling"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("max_iter", "binary_search_steps", "kde_points"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{FLAG_OF.get(name, name)} must be a positive integer, got {value}")
        for name in ("initial_const", "learning_rate"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{FLAG_OF[name]} must be a positive number, got {value}")
        for name in ("confidence", "wb_confidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{FLAG_OF.get(name, name)} must be a number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))  # 20 and 20.0 are one setting (one run id)
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"--wb-threshold must be median or clean, got '{self.threshold}'")

    def schedule(self) -> tuple[WhiteBudget, ...]:
        given = {name: getattr(self, name) for name in ("max_iter", "binary_search_steps", "initial_const",
                                                         "learning_rate") if getattr(self, name) is not None}
        return (replace(DEFAULT_SCHEDULE[0], **given),) if given else DEFAULT_SCHEDULE


WHITE_FLAGS = {"--cw-iterations": "max_iter", "--cw-search-steps": "binary_search_steps",
               "--cw-initial-const": "initial_const", "--cw-learning-rate": "learning_rate",
               "--wb-kde-points": "kde_points", "--wb-threshold": "threshold", "--wb-confidence": "wb_confidence"}
FLAG_OF = {field_name: flag for flag, field_name in WHITE_FLAGS.items()}
