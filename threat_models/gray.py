"""Gray-box threat model (Section 4.2): the attacker knows the model, not the detector.

Each attack runs through ART against the defended classifier on N test images; the KDE scores every clean and
adversarial input under its predicted class; the AUC uses Pang's pairs (clean correct, adversarial wrong).
Resiliency (Figure 3): accuracy under FGSM and BIM over an eps grid.
"""

from __future__ import annotations

import re

import numpy as np

from pdm_bench.art_adapter import AttackBackend, AttackSpec, build_attack, to_art_classifier
from pdm_bench.errors import UserError, unknown_name_error
from pdm_bench.metrics import detection_auc, distortions, kept_pairs, success_rate
from pdm_bench.results import ResultRow
from pdm_bench.threat_models.common import Evaluation, score

GRAY_ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec(name="fgsm-0.05", family="fgsm", params={"eps": 0.05}),
        AttackSpec(name="fgsm-0.1", family="fgsm", params={"eps": 0.1}),
        AttackSpec(name="bim-0.05", family="bim", params={"eps": 0.05, "max_iter": 10}),
        AttackSpec(name="bim-0.1", family="bim", params={"eps": 0.1, "max_iter": 10}),
        AttackSpec(name="cw", family="cw",
                   params={"confidence": 0.0, "binary_search_steps": 9, "max_iter": 10, "solver": "line-search"}),
        AttackSpec(name="cw-hc", family="cw",
                   params={"confidence": 10.0, "binary_search_steps": 9, "max_iter": 1000, "solver": "adam"}),
        AttackSpec(name="jsma", family="jsma", params={"theta": 1.0, "gamma": 0.1}),
    )
}
RESILIENCY_EPS: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 11))
_EPS_ATTACK = re.compile(r"^(fgsm|bim)-(.+)$")


def parse_attack(name: str) -> AttackSpec:
    """A gray-box attack by name: one of ``GRAY_ATTACKS`` or ``fgsm-EPS`` / ``bim-EPS`` with EPS in (0, 1]."""
    if name in GRAY_ATTACKS:
        return GRAY_ATTACKS[name]
    match = _EPS_ATTACK.match(name)
    if match:
        try:
            eps = float(match.group(2))
        except ValueError:
            eps = float("nan")
        if not 0.0 < eps <= 1.0:
            raise UserError(f"Attack '{name}': eps must be in (0, 1] (pixels are in [0, 1]), got {match.group(2)}")
        params = {"eps": eps, "max_iter": 10} if match.group(1) == "bim" else {"eps": eps}
        return AttackSpec(name=f"{match.group(1)}-{eps:g}", family=match.group(1), params=params)
    raise unknown_name_error("attack", name, [*GRAY_ATTACKS, "fgsm-EPS", "bim-EPS"])


def attack_targets(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """A seeded random target class != the true one for each image (Pang's random-target mode, and JSMA's)."""
    offsets = np.random.default_rng(seed).integers(1, num_classes, size=len(labels))
    return (labels + offsets) % num_classes


def run_gray(ev: Evaluation, attack_names: list[str], *, backend: AttackBackend, targeted: bool,
             resiliency: bool = True, batch_size: int = 512) -> list[ResultRow]:
    """Run the attacks not yet stored for this run; return this run's rows (old and new)."""
    specs = [parse_attack(name) for name in attack_names]
    data, model = ev.dataset, ev.trained.model
    x, y = data.x_test[ev.indices], data.y_test[ev.indices]
    classifier = to_art_classifier(model, input_shape=data.input_shape, nb_classes=data.num_classes, device=ev.device)
    clean_pred, clean_score = score(ev.trained, ev.kde, x, device=ev.device)
    targets = attack_targets(y, data.num_classes, ev.seed)
    ev.results.append([ev.row("clean", "accuracy", float((clean_pred == y).mean()), len(y)),
                       ev.row("clean", "bandwidth", ev.kde.bandwidth, len(y))],
                      unless_stored=(ev.run_id, "clean", "accuracy"))

    def adversarials(spec: AttackSpec) -> tuple[np.ndarray, float]:
        is_targeted = targeted or spec.family == "jsma"
        goal = targets if is_targeted else y
        attack = build_attack(spec, classifier, backend=backend, targeted=is_targeted, batch_size=batch_size)
        params = {**spec.params, "family": spec.family, "backend": backend.value if spec.family in ("cw", "jsma") else "art",
                  "targeted": is_targeted}
        one_hot = np.eye(data.num_classes)[goal]
        return ev.cached_adversarials(spec.name, params, lambda part: attack.generate(x[part], y=one_hot[part]))

    for spec in specs:
        if ev.results.has(ev.run_id, spec.name, "auc"):
            ev.log(f"{spec.name}: already in {ev.results.path}, skipped")
            continue
        ev.log(f"{spec.name}: attacking {len(y)} images ...")
        x_adv, seconds = adversarials(spec)
        adv_pred, adv_score = score(ev.trained, ev.kde, x_adv, device=ev.device)
        keep = kept_pairs(y, clean_pred, adv_pred)
        auc = detection_auc(clean_score[keep], adv_score[keep], seed=ev.seed)
        sizes = distortions(x[keep], x_adv[keep])
        n = len(keep)
        ev.results.append([
            ev.row(spec.name, "auc", auc.value, n), ev.row(spec.name, "auc_low", auc.low, n),
            ev.row(spec.name, "auc_high", auc.high, n),
            ev.row(spec.name, "success_rate", success_rate(y, clean_pred, adv_pred), int((clean_pred == y).sum())),
            ev.row(spec.name, "pairs_kept", n, len(y)),
            ev.row(spec.name, "accuracy", float((adv_pred == y).mean()), len(y)),
            *(ev.row(spec.name, f"{k}_mean", float(v.mean()) if n else float("nan"), n) for k, v in sizes.items()),
            ev.row(spec.name, "attack_seconds", seconds, len(y)),
            *(flow_rows(ev, spec.name, y[keep], adv_pred[keep]) if spec.family == "cw" else []),
        ], unless_stored=(ev.run_id, spec.name, "auc"))  # another process may have run the same attack
    if resiliency:
        for family in ("fgsm", "bim"):
            for eps in RESILIENCY_EPS:
                spec = parse_attack(f"{family}-{eps:g}")
                if ev.results.has(ev.run_id, spec.name, "accuracy"):
                    continue
                ev.log(f"resiliency: {spec.name}")
                x_adv, _ = adversarials(spec)
                adv_pred, _ = score(ev.trained, ev.kde, x_adv, device=ev.device)
                rows = [ev.row(spec.name, "accuracy", float((adv_pred == y).mean()), len(y)),
                        ev.row(spec.name, "success_rate", success_rate(y, clean_pred, adv_pred),
                               int((clean_pred == y).sum()))]
                ev.results.append(rows, unless_stored=(ev.run_id, spec.name, "accuracy"))
    return [r for r in ev.results.rows() if r.run_id == ev.run_id]


def flow_rows(ev: Evaluation, attack: str, sources: np.ndarray, landed: np.ndarray) -> list[ResultRow]:
    """Figure 1b's counts: ``flow_S_T`` = kept pairs of true class S whose adversarial is classified T, and
    ``flow_total``."""
    pairs, counts = np.unique(np.stack([sources, landed]), axis=1, return_counts=True)
    return [*(ev.row(attack, f"flow_{s}_{t}", int(c), len(sources)) for (s, t), c in zip(pairs.T.tolist(), counts)),
            ev.row(attack, "flow_total", len(sources), len(sources))]


def gray_table(rows: list[ResultRow], attack_names: list[str]) -> str:
    """The per-attack table printed after a run: success next to AUC, since a weak attack flatters a detector."""
    values = {(r.attack, r.metric): r for r in rows}

    def get(attack: str, metric: str) -> float:
        row = values.get((attack, metric))
        return row.value if row is not None else float("nan")

    lines = [f"{'attack':<10} {'success':>8} {'pairs':>6} {'AUC':>6} {'95% CI':>15} {'acc':>6} {'L2':>7} {'Linf':>6} {'L0':>6} {'sec':>7}"]
    for name in attack_names:
        lines.append(
            f"{name:<10} {get(name, 'success_rate'):>8.3f} {get(name, 'pairs_kept'):>6.0f} {get(name, 'auc'):>6.3f} "
            f"{'[' + format(get(name, 'auc_low'), '.3f') + ', ' + format(get(name, 'auc_high'), '.3f') + ']':>15} "
            f"{get(name, 'accuracy'):>6.3f} {get(name, 'l2_mean'):>7.3f} {get(name, 'linf_mean'):>6.3f} "
            f"{get(name, 'l0_mean'):>6.0f} {get(name, 'attack_seconds'):>7.1f}")
    curve = [(eps, get(f"fgsm-{eps:g}", "accuracy"), get(f"bim-{eps:g}", "accuracy")) for eps in RESILIENCY_EPS]
    if any(not np.isnan(f) for _, f, _ in curve):
        lines.append("resiliency (accuracy under attack): eps " + " ".join(f"{e:>5g}" for e, _, _ in curve))
        lines.append("  fgsm                                  " + " ".join(f"{f:>5.3f}" for _, f, _ in curve))
        lines.append("  bim                                   " + " ".join(f"{b:>5.3f}" for _, _, b in curve))
    return "\n".join(lines)
