"""Gray-box threat model (Section 4.2): the attacker knows the model, not the detector.

Each attack runs through ART against the defended classifier on N test images; the detector scores every clean and
adversarial input under its predicted class; the AUC uses Pang's pairs (clean correct, adversarial wrong).
Resiliency (Figure 3): accuracy under FGSM and BIM over an eps grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from tqdm.auto import tqdm

from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.checklist import Check, Lookup, falls, fmt, no_higher
from pdm_bench.evaluation import Evaluation
from pdm_bench.figures import Figure
from pdm_bench.metrics import FPR_LEVELS, distortions, kept_pairs, success_rate
from pdm_bench.seeding import attack_seed, seeded_global_rngs
from pdm_bench.results import Metric, ResultRow, Threat, flow_metric, fpr_metric, value_getter
from pdm_bench.tables import FIXED_FPR_TITLE, RowIndex, Table, attack_table, fixed_fpr_table
from pdm_bench.threat import ThreatParams
from pdm_bench.threat_models.detector_head import TrainsDetectorHeads
from pdm_bench.threat_models.attack_specs import (GRAY_ATTACKS, RESILIENCY_EPS, AttackBackend, AttackSpec, attack_targets,
                                                  build_attack, parse_attack)
from pdm_bench.threat_models.figures import flow_figure, resiliency_figure

GRAY_ORDER = tuple(GRAY_ATTACKS)


@dataclass(frozen=True, kw_only=True)
class GrayParams(ThreatParams):
    """``attacks``: comma-separated names ('' or None: all seven); ``backend``: our torch ports of C&W/JSMA or ART's."""

    attacks: str | Sequence[str] | None = None
    backend: str = AttackBackend.TORCH.value
    targeted: bool = False
    resiliency: bool = True
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.attacks is not None and not isinstance(self.attacks, str):  # a list from Python: one spelling
            object.__setattr__(self, "attacks", ",".join(self.attacks))
        names = self.attack_names()  # unknown attacks fail here, before any work
        if not names:
            raise ValueError(f"--attacks names no attack, got '{self.attacks}'")
        if len(set(names)) != len(names):
            raise ValueError(f"--attacks names an attack twice, got '{self.attacks}'")
        if self.backend not in {b.value for b in AttackBackend}:
            raise ValueError(f"backend must be torch or art, got '{self.backend}'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    def attack_names(self) -> list[str]:
        if self.attacks is None:
            return list(GRAY_ATTACKS)
        return [parse_attack(a.strip()).name for a in str(self.attacks).split(",") if a.strip()]


class GrayBox(TrainsDetectorHeads):
    """Gray box: every attack of ``--attacks`` against the model; the detector is not attacked."""

    name = Threat.GRAY.value
    description = "the attacker knows the model, not the detector (FGSM, BIM, C&W, C&W-hc, JSMA)"
    params_type = GrayParams
    heading = "Gray-box"
    cost_rank = 2
    flags: ClassVar[dict[str, str]] = {"--attacks": "attacks", "--attack-backend": "backend", "--targeted": "targeted",
                                       "--resiliency": "resiliency"}
    params: GrayParams

    def settings(self) -> dict[str, object]:
        return {"targeted": self.params.targeted, "backend": self.params.backend}  # the run id as before

    def evaluate(self, evaluation: Evaluation) -> list[ResultRow]:
        return run_gray(evaluation, self.params.attack_names(), backend=AttackBackend(self.params.backend),
                        targeted=self.params.targeted, resiliency=self.params.resiliency,
                        batch_size=self.params.batch_size)

    def summary(self, rows: list[ResultRow]) -> str:
        return gray_table(rows, self.params.attack_names(), resiliency=self.params.resiliency)

    def report_tables(self, index: RowIndex) -> list[Table]:
        return [attack_table(index, key="table2_graybox_auc", title="Table 2: detection AUC under the gray-box threat "
                             "model", threat=self.name, order=GRAY_ORDER),
                *fixed_fpr_table(index, key="table2b_graybox_fpr", title=f"Table 2b: the gray box {FIXED_FPR_TITLE}",
                                 threat=self.name, order=GRAY_ORDER)]

    def report_figures(self, index: RowIndex, directory: Path, dataset: str, preset: str) -> list[Figure]:
        figures = (resiliency_figure(index, dataset, preset), flow_figure(index, dataset, preset))
        return [figure for figure in figures if figure is not None]

    def checklist(self, index: RowIndex, dataset: str, preset: str, defense: str) -> list[Check]:
        """Success rises with eps (accuracy falls over the resiliency grid); iterative BIM beats single-step FGSM."""
        get = Lookup(index, dataset, preset, defense, self.name)
        curves = {family: [(eps, get(f"{family}-{eps:g}", Metric.ACCURACY)) for eps in RESILIENCY_EPS]
                  for family in ("fgsm", "bim")}
        verdicts = [falls(points) for points in curves.values()]
        measured = [v for v in verdicts if v is not None]
        shown = "; ".join(f"{family} accuracy " + " -> ".join(fmt(m.value) for _, m in points if m is not None)
                          for family, points in curves.items() if any(m is not None for _, m in points))
        rises = Check("success rises with eps", all(measured) if measured else None,
                      f"{shown} (eps {RESILIENCY_EPS[0]:g} to {RESILIENCY_EPS[-1]:g})" if measured else "")
        pairs = [(eps, f, b) for (eps, f), (_, b) in zip(curves["fgsm"], curves["bim"]) if f is not None and b is not None]
        ties = bool(pairs) and all(b.value == f.value for _, f, b in pairs)  # equal everywhere: nothing shown either way
        iterative = Check("iterative attacks beat single-step ones",
                          all(no_higher(b, f) for _, f, b in pairs) if pairs and not ties else None,
                          ", ".join(f"eps {eps:g}: BIM {fmt(b.value)} vs FGSM {fmt(f.value)}" for eps, f, b in pairs)
                          + (" (accuracy under attack)" if pairs else "") + (": equal at every eps, not judged" if ties else ""))
        return [rises, iterative]


def run_gray(ev: Evaluation, attack_names: list[str], *, backend: AttackBackend, targeted: bool,
             resiliency: bool = True, batch_size: int = 512) -> list[ResultRow]:
    """Run the attacks not yet stored for this run; return this run's rows (old and new)."""
    specs = [parse_attack(name) for name in attack_names]
    data, model = ev.dataset, ev.trained.model
    x, y = data.x_test[ev.indices], data.y_test[ev.indices]
    classifier = to_art_classifier(model, input_shape=data.input_shape, nb_classes=data.num_classes, device=ev.device)
    clean_pred, clean_score = ev.record_clean(model, x, y)
    targets = attack_targets(y, data.num_classes, ev.seed)

    def params(spec: AttackSpec) -> dict[str, object]:
        return {**spec.params, "family": spec.family, "backend": backend.value if spec.family in ("cw", "jsma") else "art",
                "targeted": targeted or spec.family == "jsma"}

    def adversarials(spec: AttackSpec) -> tuple[np.ndarray, float]:
        is_targeted = bool(params(spec)["targeted"])
        goal = targets if is_targeted else y
        attack = build_attack(spec, classifier, backend=backend, targeted=is_targeted, batch_size=batch_size,
                              verbose=ev.progress, seed=attack_seed(ev.seed, spec.name))
        one_hot = np.eye(data.num_classes)[goal]

        def make(part: slice) -> np.ndarray:  # seeded per chunk: a resumed run makes the same images
            with seeded_global_rngs(attack_seed(ev.seed, spec.name, part.start or 0)):
                images = attack.generate(x[part], y=one_hot[part])
            if hasattr(attack, "closest_lead"):  # our C&W: the largest logit lead an image reached
                lead, counted = leads.get(spec.name, (-np.inf, 0))
                leads[spec.name] = (max(lead, attack.closest_lead), counted + len(images))
            return images

        return ev.cached_adversarials(spec.name, params(spec), make, detector_free=True)  # they ignore the detector

    leads: dict[str, tuple[float, int]] = {}  # attack -> (largest logit lead reached, images it was measured on)

    for spec in specs:
        if ev.results.finished(ev.run_id, spec.name, legacy=(spec.name, Metric.AUC)):
            ev.log(f"{spec.name}: already in {ev.results.path}, skipped")
            stored = ev.stored_adversarials(spec.name, params(spec), detector_free=True)
            add_fixed_fpr_rows(ev, spec.name, stored, y, (clean_pred, clean_score))
            continue
        ev.log(f"{spec.name}: attacking {len(y)} images ...")
        x_adv, seconds = adversarials(spec)
        adv_pred, adv_score = ev.score(model, x_adv)
        keep = kept_pairs(y, clean_pred, adv_pred)
        auc = ev.detection_auc(spec.name, clean_score[keep], adv_score[keep])
        sizes = distortions(x[keep], x_adv[keep])
        n = len(keep)
        ev.results.append([
            ev.row(spec.name, Metric.AUC, auc.value, n), ev.row(spec.name, Metric.AUC_LOW, auc.low, n),
            ev.row(spec.name, Metric.AUC_HIGH, auc.high, n),
            ev.row(spec.name, Metric.SUCCESS_RATE, success_rate(y, clean_pred, adv_pred), int((clean_pred == y).sum())),
            ev.row(spec.name, Metric.PAIRS_KEPT, n, len(y)),
            ev.row(spec.name, Metric.ACCURACY, float((adv_pred == y).mean()), len(y)),
            *(ev.row(spec.name, f"{k}_mean", float(v.mean()) if n else float("nan"), n) for k, v in sizes.items()),
            ev.row(spec.name, Metric.ATTACK_SECONDS, seconds, len(y)),
            *(flow_rows(ev, spec.name, y[keep], adv_pred[keep]) if spec.family == "cw" else []),
            *([ev.row(spec.name, Metric.CLOSEST_LEAD, *leads[spec.name])] if spec.name in leads else []),
            *ev.fixed_fpr_rows(spec.name, y=y, clean=(clean_pred, clean_score), adversarial=(adv_pred, adv_score)),
        ], completes=spec.name, legacy=(spec.name, Metric.AUC))  # another process may have run the same attack
    if resiliency:
        resiliency_curves(ev, adversarials, y, clean_pred)
    return ev.results.run_rows(ev.run_id)


def add_fixed_fpr_rows(ev: Evaluation, attack: str, x_adv: np.ndarray | None, y: np.ndarray,
                       clean: tuple[np.ndarray, np.ndarray]) -> None:
    """Detection at fixed false-positive rates for an attack finished before it was measured, from its stored images
    (when they are gone the attack is not redone: its fixed-FPR cells stay empty)."""
    if x_adv is None or ev.results.finished(ev.run_id, f"{attack}@fpr") or \
            ev.results.has(ev.run_id, attack, fpr_metric("tpr", FPR_LEVELS[0])) or not ev.rejection_thresholds():
        return
    adversarial = ev.score(ev.trained.model, x_adv)
    ev.results.append(ev.fixed_fpr_rows(attack, y=y, clean=clean, adversarial=adversarial), completes=f"{attack}@fpr")
    ev.log(f"{attack}: detection at fixed false-positive rates added from its stored images")


def resiliency_curves(ev: Evaluation, adversarials: Callable[[AttackSpec], tuple[np.ndarray, float]], y: np.ndarray,
                      clean_pred: np.ndarray) -> None:
    """Figure 3's points: accuracy under FGSM and BIM at each eps of ``RESILIENCY_EPS`` (those not yet stored)."""
    specs = [parse_attack(f"{family}-{eps:g}") for family in ("fgsm", "bim") for eps in RESILIENCY_EPS]
    todo = [spec for spec in specs if not ev.results.has(ev.run_id, spec.name, Metric.ACCURACY)]  # here or as an attack
    for spec in tqdm(todo, desc="resiliency", unit="attack", disable=not ev.progress, dynamic_ncols=True):
        ev.log(f"resiliency: {spec.name}")
        x_adv, _ = adversarials(spec)
        adv_pred, _ = ev.score(ev.trained.model, x_adv)
        rows = [ev.row(spec.name, Metric.ACCURACY, float((adv_pred == y).mean()), len(y)),
                ev.row(spec.name, Metric.SUCCESS_RATE, success_rate(y, clean_pred, adv_pred), int((clean_pred == y).sum()))]
        ev.results.append(rows, completes=f"resiliency:{spec.name}", legacy=(spec.name, Metric.ACCURACY))


def flow_rows(ev: Evaluation, attack: str, sources: np.ndarray, landed: np.ndarray) -> list[ResultRow]:
    """Figure 1b's counts: ``flow_S_T`` = kept pairs of true class S whose adversarial is classified T, and
    ``flow_total``."""
    pairs, counts = np.unique(np.stack([sources, landed]), axis=1, return_counts=True)
    return [*(ev.row(attack, flow_metric(s, t), int(c), len(sources)) for (s, t), c in zip(pairs.T.tolist(), counts)),
            ev.row(attack, Metric.FLOW_TOTAL, len(sources), len(sources))]


def no_pairs_note(get: Callable[[str, str], float], name: str) -> str:
    """One line saying why an attack has no pairs to measure the AUC on ('' when it has some)."""
    if get(name, Metric.PAIRS_KEPT) != 0:
        return ""
    lead, confidence = get(name, Metric.CLOSEST_LEAD), GRAY_ATTACKS[name].params.get("confidence") \
        if name in GRAY_ATTACKS else None
    if np.isnan(lead) or not confidence:
        return f"{name}: no pairs, because it fooled none of the correctly classified images"
    return (f"{name}: no pairs, because no image reached the confidence: a logit margin of {confidence:g} for the "
            f"adversarial class (the largest any image reached was {lead:.2f})")


def gray_table(rows: list[ResultRow], attack_names: list[str], *, resiliency: bool = True) -> str:
    """The per-attack table printed after a run: success next to AUC, since a weak attack flatters a detector."""
    get = value_getter(rows)
    lines = [f"{'attack':<10} {'success':>8} {'pairs':>6} {'AUC':>6} {'95% CI':>15} {'acc':>6} {'L2':>7} {'Linf':>6} {'L0':>6} {'sec':>7}"]
    for name in attack_names:
        seconds = get(name, Metric.ATTACK_SECONDS)
        lines.append(
            f"{name:<10} {get(name, Metric.SUCCESS_RATE):>8.3f} {get(name, Metric.PAIRS_KEPT):>6.0f} {get(name, Metric.AUC):>6.3f} "
            f"{'[' + format(get(name, Metric.AUC_LOW), '.3f') + ', ' + format(get(name, Metric.AUC_HIGH), '.3f') + ']':>15} "
            f"{get(name, Metric.ACCURACY):>6.3f} {get(name, Metric.L2_MEAN):>7.3f} {get(name, Metric.LINF_MEAN):>6.3f} "
            f"{get(name, Metric.L0_MEAN):>6.0f} {'' if np.isnan(seconds) else format(seconds, '.1f'):>7}")
    lines.append("success: share of correctly classified images the attack fooled; pairs: Pang's pairs the AUC is on; acc: "
                 "accuracy on the attacked images; L2/Linf/L0: mean distortion of the pairs; sec: attack time (blank: reused)")
    lines += [note for name in attack_names if (note := no_pairs_note(get, name))]
    curve = [(eps, get(f"fgsm-{eps:g}", Metric.ACCURACY), get(f"bim-{eps:g}", Metric.ACCURACY)) for eps in RESILIENCY_EPS]
    if resiliency and any(not np.isnan(f) for _, f, _ in curve):
        lines.append("resiliency (accuracy under attack): eps " + " ".join(f"{e:>5g}" for e, _, _ in curve))
        lines.append("  fgsm                                  " + " ".join(f"{f:>5.3f}" for _, f, _ in curve))
        lines.append("  bim                                   " + " ".join(f"{b:>5.3f}" for _, _, b in curve))
    return "\n".join(lines)
