"""Adaptive threat model: a portfolio of attacks on the classifier and its detector at fixed L-inf or L2 budgets,
judged at a fixed false-positive rate (Tramer et al. 2020; Bryniarski et al. 2022).

At each eps: plain PGD on the classifier alone (cross-entropy, every step, as ART's: what the detector adds), PGD
on the combined loss at each detector weight of the sweep, orthogonal and selective PGD, Square (gradient-free) on
the model with "reject" as a class, and random noise (the baseline every attack must beat). The detector's threshold
rejects 5% of clean calibration images (:meth:`Evaluation.rejection_thresholds`); an attack succeeds on an image
when the model misclassifies it and the detector lets it pass. Rows per attack, and
``worst-<norm>-<eps>``: per image, the worst case over the whole portfolio; ``worst-all@Kx-<norm>-<eps>``: per image,
the worst case over the portfolio and every doubling up to K (the number that counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.checklist import Check, Lookup, Measured, falls, fmt, no_higher
from pdm_bench.config import dataset_family
from pdm_bench.data import Dataset
from pdm_bench.errors import UserError
from pdm_bench.evaluation import Evaluation
from pdm_bench.metrics import FPR_LEVELS, distortions, kept_pairs, success_rate, valid_images
from pdm_bench.results import Metric, ResultRow, fpr_metric, value_getter
from pdm_bench.tables import RowIndex, Table, attack_table
from pdm_bench.threat import ThreatParams
from pdm_bench.threat_models.detector_head import TrainsDetectorHeads
from pdm_bench.threat_models.pgd import SCHEDULES
from pdm_bench.threat_models.portfolio import Portfolio, doubled

# The budgets: MNIST-like data L-inf 0.1 and 0.3, L2 2.0; CIFAR-10 L-inf 8/255, L2 0.5.
DEFAULT_EPS = {("linf", "cifar10"): (8 / 255,), ("l2", "cifar10"): (0.5,), ("linf", ""): (0.1, 0.3), ("l2", ""): (2.0,)}
WORST = "worst"
MAX_LEVELS = 11  # the tables list worst cases up to 1024x
CONVERGED = 0.01  # a doubling that moves the worst case (robust at 5% FPR) by less than this has converged


def worst_all_name(tag: str, top: int) -> str:
    """The per-image worst case at budget ``tag`` over every level up to doubling ``top`` (the portfolio and each
    doubling): an image counts as broken if any attack at any level broke it, so it is never above any one level's
    worst case. A later run with more doublings adds its own row; each row stays true of the levels it names."""
    return f"{WORST}-all{doubled(top)}-{tag}"


def worst_name(tag: str, level: int = 0) -> str:
    """The per-image worst case at budget ``tag`` with the attacks on the detector doubled ``level`` times."""
    return f"{WORST}{doubled(level) if level else ''}-{tag}"


@dataclass(frozen=True, kw_only=True)
class AdaptiveParams(ThreatParams):
    """``eps``: comma-separated budgets (None: the data set's defaults); ``iterations`` PGD steps per start,
    ``restarts`` random starts; ``weights`` the combined loss's detector weights; ``square_iterations`` Square's
    queries per image (0: no Square); ``schedule`` the step sizes of the attacks on the detector (``constant``:
    2.5 eps / iterations; ``apgd``: Croce and Hein's, see :class:`DetectorPGD`); ``check_doubling`` runs the attacks
    on the detector again at twice the iterations and restarts, and again at twice those while the last doubling
    moved the worst case by 1 point or more, ``max_doublings`` times at most."""

    norm: str = "linf"
    eps: str | None = None
    iterations: int = 200
    restarts: int = 4
    weights: str = "0.1,1,10"
    square_iterations: int = 1000
    check_doubling: bool = True
    batch_size: int = 256
    schedule: str = "apgd"
    max_doublings: int = 3

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"--norm must be linf or l2, got '{self.norm}'")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        for text, name in ((self.eps, "--eps"), (self.weights, "weights")):
            if text is not None:
                _positive_list(text, name)
        if self.norm == "linf" and self.eps is not None and max(_positive_list(self.eps, "--eps")) > 1:
            raise ValueError(f"--eps with --norm linf must be at most 1 (pixels are in [0, 1]), got '{self.eps}'")
        for name, lowest in (("iterations", 1), ("restarts", 1), ("square_iterations", 0), ("batch_size", 1),
                             ("max_doublings", 1)):
            if getattr(self, name) < lowest:
                raise ValueError(f"{name} must be an integer >= {lowest}, got {getattr(self, name)}")
        if self.max_doublings >= MAX_LEVELS:
            raise ValueError(f"max_doublings must be an integer from 1 to {MAX_LEVELS - 1}, got {self.max_doublings}")

    def as_dict(self) -> dict[str, Any]:
        """The fields; ``schedule`` only where it is not ``constant`` (run ids from before it existed stay valid);
        not ``max_doublings``, which adds rows to a run and changes none."""
        fields = super().as_dict()
        if fields["schedule"] == "constant":
            del fields["schedule"]
        del fields["max_doublings"]
        return fields

    def detector_weights(self) -> tuple[float, ...]:
        return _positive_list(self.weights, "weights")

    def budgets(self, dataset: str) -> tuple[float, ...]:
        if self.eps is not None:
            return _positive_list(self.eps, "--eps")
        family = dataset_family(dataset)
        return DEFAULT_EPS.get((self.norm, family), DEFAULT_EPS[(self.norm, "")])


def _positive_list(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated positive numbers, got '{text}'") from None
    if not values or not all(v > 0 and math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be comma-separated positive numbers, got '{text}'")
    return values


class Adaptive(TrainsDetectorHeads):
    """Adaptive attacks on the classifier and the detector at fixed budgets, judged at 5% false positives."""

    name = "adaptive"
    description = "PGD (plain, combined loss, orthogonal, selective) and Square on model + detector at fixed eps, 5% FPR"
    params_type = AdaptiveParams
    cost_rank = 3
    attacks_detector = True
    flags: ClassVar[dict[str, str]] = {"--norm": "norm", "--eps": "eps"}
    params: AdaptiveParams

    def evaluate(self, evaluation: Evaluation) -> list[ResultRow]:
        return run_adaptive(evaluation, self.params)

    def check_data(self, data: Dataset) -> None:
        """An l2 budget beyond the distance between an all-black and an all-white image, sqrt(C*H*W), is no bound."""
        largest = math.sqrt(math.prod(data.input_shape))
        if self.params.norm == "l2" and (too := [e for e in self.params.budgets(data.name) if e > largest]):
            raise UserError(f"Bad options for threat model 'adaptive': --eps with --norm l2 must be at most "
                            f"sqrt({'x'.join(map(str, data.input_shape))}) = {largest:.4g} on {data.name} (pixels are "
                            f"in [0, 1]), got {','.join(f'{e:g}' for e in too)}")

    def summary(self, rows: list[ResultRow]) -> str:
        get = value_getter(rows)
        names = adaptive_order(RowIndex(rows))
        lines = [f"{'attack':<22} {'accuracy':>8} {'robust@1%':>9} {'robust@5%':>9} {'robust@10%':>10} {'TPR@5%':>7}"]
        for name in names:
            values = [get(name, Metric.ACCURACY), *(get(name, fpr_metric("robust_accuracy", f)) for f in FPR_LEVELS),
                      get(name, fpr_metric("tpr", 0.05))]
            lines.append(f"{name:<22} " + " ".join(f"{v:>{w}.3f}" for v, w in zip(values, (8, 9, 9, 10, 7))))
        lines.append("accuracy: without the detector; robust@F: the share of correctly classified images the attack did "
                     "not fool or the detector rejected, at the threshold that rejects F of clean calibration images; "
                     "TPR: the share of fooling images rejected (none for combined, the weights' sweep, and worst, per "
                     "image any attack of the budget; worst@2x: the attacks on the detector at twice the iterations and restarts, "
                     "worst@4x at twice those, run only where the doubling before moved the worst case by 1 point or "
                     "more)")
        return "\n".join(lines)

    def checklist(self, index: RowIndex, dataset: str, preset: str, defense: str) -> list[Check]:
        return adaptive_checklist(index, dataset, preset, defense)

    def report_tables(self, index: RowIndex) -> list[Table]:
        metric = fpr_metric("robust_accuracy", 0.05)
        if not any(r.threat == self.name for r in index.rows):
            return []
        return [attack_table(index, key="table5_adaptive_fpr", title="Table 5: adaptive attacks at 5% false positives: "
                             "robust accuracy under detection (without the detector in the notes)", threat=self.name,
                             order=adaptive_order(index), metric=metric, interval=False, others=False,
                             notes=lambda a: (("no detector", a, Metric.ACCURACY.value),
                                              ("TPR 5%", a, fpr_metric("tpr", 0.05))))]


GRADIENT = ("pgd", "combined", "orthogonal", "selective")


def adaptive_checklist(index: RowIndex, dataset: str, preset: str, defense: str) -> list[Check]:
    """At 5% false positives: success rises with eps (the worst case), doubling iterations and restarts moves the
    worst case by under 1 point, Square (gradient-free) is no stronger than the gradient attacks on the same model
    and detector (combined, orthogonal, selective; else their gradients are masked), random noise is weaker than
    every attack, and no attack's image was invalid."""
    get = Lookup(index, dataset, preset, defense, Adaptive.name)
    robust = fpr_metric("robust_accuracy", 0.05)
    tags = budget_tags(adaptive_order(index))
    worst = {t: get(worst_name(t), robust) for t in tags}
    rising = [falls([(float(t.split("-")[1]), worst[t]) for t in tags if t.startswith(norm)]) for norm in ("linf", "l2")]
    rising_known = [r for r in rising if r is not None]
    checks = [Check("success rises with eps", all(rising_known) if rising_known else None,
                    ", ".join(f"{t}: {fmt(m.value)}" for t, m in worst.items() if m is not None) + " (worst case, robust)")]
    chains = {t: _doubling_chain(get, t, robust) for t in tags}
    chains = {t: chain for t, chain in chains.items() if len(chain) > 1}
    checks.append(Check("doubling iterations changes little",
                        all(abs(c[-1].value - c[-2].value) < CONVERGED for c in chains.values()) if chains else None,
                        ", ".join(f"{t}: " + " -> ".join(fmt(m.value) for m in c) for t, c in chains.items())))
    masked, noisy, invalid, numbers = [], [], 0.0, {"square": [], "noise": []}
    for t in tags:
        gradient = [m for k in GRADIENT[1:] if (m := get(f"{k}-{t}", robust)) is not None]  # on model + detector
        square, noise = get(f"square-{t}", robust), get(f"noise-{t}", robust)
        if square is not None and gradient:
            best = min(gradient, key=lambda m: m.value)
            masked.append(no_higher(best, square))
            numbers["square"].append(f"{t}: Square {fmt(square.value)} vs gradient {fmt(best.value)}")
        attacks = [m for k in (*GRADIENT, "square") if (m := get(f"{k}-{t}", robust)) is not None]
        if noise is not None and attacks:
            noisy.append(all(no_higher(m, noise) for m in attacks))
            numbers["noise"].append(f"{t}: noise {fmt(noise.value)} vs attacks {fmt(max(m.value for m in attacks))}-"
                                    f"{fmt(min(m.value for m in attacks))}")
        invalid += sum(m.value for k in (*GRADIENT, "square", "noise") if (m := get(f"{k}-{t}", "invalid_images")))
    checks += [Check("the gradient-free attack is not stronger than the gradient ones", all(masked) if masked else None,
                     "; ".join(numbers["square"]) + (" (robust at 5% FPR)" if masked else "")),
               Check("random noise is weaker than every attack", all(noisy) if noisy else None,
                     "; ".join(numbers["noise"])),
               Check("every adversarial image is valid (range, budget; label and score measured again)",
                     None if not tags else invalid == 0, f"{invalid:.0f} invalid images" if tags else "")]
    return checks


def _doubling_chain(get: Lookup, tag: str, metric: str) -> list[Measured]:
    """The worst case at ``tag`` at its iterations, then at each doubling run (2x, 4x, ...), while present."""
    chain = []
    for level in range(MAX_LEVELS):
        if (measured := get(worst_name(tag, level), metric)) is None:
            break
        chain.append(measured)
    return chain


def budget_tags(names: Iterable[str]) -> list[str]:
    """The budgets (``linf-0.1``, ...) that attack names such as ``pgd-linf-0.1`` or ``worst-all-linf-0.1`` are at."""
    return sorted({"-".join(n.rsplit("-", 2)[-2:]) for n in names if n.count("-") >= 2}, key=_tag_order)


def _tag_order(tag: str) -> tuple[str, float]:
    norm, eps = tag.split("-")
    return norm, float(eps)


def adaptive_order(index: RowIndex) -> list[str]:
    """Budgets in order, and at each the portfolio's attacks with the worst case last."""
    names = {r.attack for r in index.rows if r.threat == Adaptive.name and r.metric == fpr_metric("robust_accuracy", 0.05)}
    tags = budget_tags(names)
    kinds = ("noise", "pgd", "combined", "orthogonal", "selective", "square")
    return [name for t in tags for name in (*(f"{k}-{t}" for k in kinds), *(worst_name(t, k) for k in range(MAX_LEVELS)),
                                            *(worst_all_name(t, k) for k in range(1, MAX_LEVELS))) if name in names]


@dataclass(frozen=True)
class Judged:
    """An attack's images as the target sees them: prediction and detector score per image."""

    pred: np.ndarray
    score: np.ndarray


def run_adaptive(ev: Evaluation, params: AdaptiveParams) -> list[ResultRow]:
    """Every attack of the portfolio at every budget not yet stored, then the worst cases per budget; the run's rows.
    Each image is validated (:func:`valid_images`) before it counts: an invalid one counts as the clean image."""
    data, model = ev.dataset, ev.trained.model
    x, y = data.x_test[ev.indices], data.y_test[ev.indices]
    clean = ev.record_clean(model, x, y)
    thresholds = ev.rejection_thresholds()
    if not thresholds:
        raise UserError(f"Threat model 'adaptive' sets the detector's threshold on test images that are not attacked: "
                        f"--n-samples must be below the test set's size {len(data.y_test)}")
    finite = clean[1][np.isfinite(clean[1])]
    scale = float(np.std(finite)) if finite.size > 1 and np.std(finite) > 0 else 1.0
    classifier = to_art_classifier(model, input_shape=data.input_shape, nb_classes=data.num_classes, device=ev.device)
    for eps in params.budgets(data.name):
        tag = f"{params.norm}-{eps:g}"
        attacks = Portfolio(ev, params, classifier, eps=eps, threshold=thresholds[0.05], scale=scale)
        judge = _Judge(ev, tag, x, y, clean, params.norm, eps)
        ran = not ev.results.finished(ev.run_id, worst_name(tag))
        if ran:
            judged = {name: judge(name, make, settings) for name, make, settings in attacks.at(0)}
            for name, parts in worst_cases(judged, tag):
                if not ev.results.finished(ev.run_id, name):
                    ev.results.append(worst_case_rows(ev, name, y, clean, parts), completes=name)
        for level in range(1, params.max_doublings + 1 if params.check_doubling else 1):
            change = moved(ev, tag, level - 1)
            if level > 1 and change is None:
                break
            if ev.results.finished(ev.run_id, name := worst_name(tag, level)):
                continue
            if change is not None:
                ev.log(f"adaptive at {tag}: the worst case moved by 1 point or more at {doubled(level - 1)} "
                       f"({change[0]:.3f} -> {change[1]:.3f}); the attacks on the detector at {doubled(level)}")
            ran = True
            parts = [judge(n, make, settings) for n, make, settings in (*attacks.at(level), *attacks.kept())]
            ev.results.append(worst_case_rows(ev, name, y, clean, parts), completes=name)
        levels = [k for k in range(MAX_LEVELS) if ev.results.finished(ev.run_id, worst_name(tag, k))]
        if len(levels) > 1 and not ev.results.finished(ev.run_id, name := worst_all_name(tag, levels[-1])):
            ran = True
            parts = [judge(n, make, settings) for k in levels for n, make, settings in attacks.at(k) if n != "noise"]
            ev.results.append(worst_case_rows(ev, name, y, clean, parts), completes=name)
        if not ran:
            ev.log(f"adaptive at {tag}: already in {ev.results.path}, skipped")
    return ev.results.run_rows(ev.run_id)


def moved(ev: Evaluation, tag: str, level: int) -> tuple[float, float] | None:
    """The run's worst case at 5% FPR before and at doubling ``level`` where it moved by 1 point or more (else None,
    also where either is unknown)."""
    get = value_getter(ev.results.run_rows(ev.run_id))
    metric = fpr_metric("robust_accuracy", 0.05)
    before, after = (get(worst_name(tag, k), metric) for k in (level - 1, level))
    if level < 1 or math.isnan(before) or math.isnan(after) or abs(after - before) < CONVERGED:
        return None
    return before, after


class _Judge:
    """An attack's images made (or loaded), validated and judged once per budget; its rows appended where missing."""

    def __init__(self, ev: Evaluation, tag: str, x: np.ndarray, y: np.ndarray, clean: tuple[np.ndarray, np.ndarray],
                 norm: str, eps: float) -> None:
        self.ev, self.tag, self.x, self.y, self.clean, self.norm, self.eps = ev, tag, x, y, clean, norm, eps
        self.judged: dict[str, Judged] = {}

    def __call__(self, name: str, make: Any, settings: dict[str, Any]) -> Judged:
        if name in self.judged:
            return self.judged[name]
        ev, x, label = self.ev, self.x, f"{name}-{self.tag}"
        x_adv, seconds = ev.cached_adversarials(label, settings, lambda part: make(x[part], self.y[part]))
        valid = valid_images(x, x_adv, norm=self.norm, eps=self.eps)
        x_adv = np.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, x)
        self.judged[name] = judged = Judged(*ev.score(ev.trained.model, x_adv))
        if not ev.results.finished(ev.run_id, label):
            rows = attack_rows(ev, label, x, self.y, x_adv, self.clean, judged, seconds)
            ev.results.append([*rows, ev.row(label, "invalid_images", float((~valid).sum()), len(self.y))],
                              completes=label)
        return judged


def worst_cases(judged: dict[str, Judged], tag: str) -> list[tuple[str, list[Judged]]]:
    """The per-image worst cases of the portfolio at its iterations: over the weights' sweep (``combined``) and over
    every attack (``worst``: the number that counts). Random noise is the baseline every attack must beat, not a part."""
    attacks = {n: j for n, j in judged.items() if n != "noise"}
    return [(f"combined-{tag}", [j for n, j in attacks.items() if n.startswith("combined@")]),
            (worst_name(tag), list(attacks.values()))]


def attack_rows(ev: Evaluation, name: str, x: np.ndarray, y: np.ndarray, x_adv: np.ndarray,
                clean: tuple[np.ndarray, np.ndarray], judged: Judged, seconds: float) -> list[ResultRow]:
    """Accuracy without the detector, success, Pang's AUC, the budget used and detection at fixed FPRs."""
    clean_pred, clean_score = clean
    keep = kept_pairs(y, clean_pred, judged.pred)
    auc = ev.detection_auc(name, clean_score[keep], judged.score[keep])
    sizes = distortions(x, x_adv)
    return [ev.row(name, Metric.ACCURACY, float((judged.pred == y).mean()), len(y)),
            ev.row(name, Metric.SUCCESS_RATE, success_rate(y, clean_pred, judged.pred), int((clean_pred == y).sum())),
            ev.row(name, Metric.PAIRS_KEPT, len(keep), len(y)),
            ev.row(name, Metric.AUC, auc.value, len(keep)), ev.row(name, Metric.AUC_LOW, auc.low, len(keep)),
            ev.row(name, Metric.AUC_HIGH, auc.high, len(keep)),
            ev.row(name, "linf_max", float(sizes["linf"].max(initial=0.0)), len(y)),
            ev.row(name, "l2_max", float(sizes["l2"].max(initial=0.0)), len(y)),
            ev.row(name, Metric.ATTACK_SECONDS, seconds, len(y)),
            *ev.fixed_fpr_rows(name, y=y, clean=clean, adversarial=(judged.pred, judged.score))]


def worst_case_rows(ev: Evaluation, name: str, y: np.ndarray, clean: tuple[np.ndarray, np.ndarray],
                    parts: list[Judged]) -> list[ResultRow]:
    """Per image, the worst case over ``parts``: fooled by any; at each FPR, evading the detector in any."""
    clean_pred = clean[0]
    correct = clean_pred == y
    fooled = np.any([j.pred != y for j in parts], axis=0)
    rows = [ev.row(name, Metric.ACCURACY, float((~fooled).mean()), len(y)),
            ev.row(name, Metric.SUCCESS_RATE, float(fooled[correct].mean()) if correct.any() else math.nan,
                   int(correct.sum()))]
    for fpr in FPR_LEVELS:
        threshold = ev.rejection_thresholds()[fpr]
        evades = np.any([(j.pred != y) & (j.score >= threshold) for j in parts], axis=0)
        rows.append(ev.row(name, fpr_metric("robust_accuracy", fpr),
                           float((~evades)[correct].mean()) if correct.any() else math.nan, int(correct.sum())))
    return rows
