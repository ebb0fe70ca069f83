"""White-box threat model (Section 4.3): C&W-wb (:mod:`pdm_bench.threat_models.cw_wb`), Carlini and Wagner's attack
on the model and the detector itself.

KDE_t uses a seeded subset of the detector's kernel points (100 per class by default); tau_t is the median density
of class t's training (kernel) points, or, as Carlini did, the clean image's own density. The paper's protocol:
raise the budget until every attack succeeds and the detection AUC is <= 0.5, then report the mean distortion
d = mean ||x - x'||_2 / sqrt(n), beside plain C&W at the same budget (the adaptivity check).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pdm_bench.checklist import Check, Lookup, fmt
from pdm_bench.detectors import KDEDetector, reference_embeddings
from pdm_bench.errors import UserError
from pdm_bench.evaluation import Evaluation
from pdm_bench.figures import Figure
from pdm_bench.results import Metric, ResultRow, value_getter
from pdm_bench.storage import save_array
from pdm_bench.tables import FIXED_FPR_TITLE, RowIndex, Table, fixed_fpr_table, per_dataset_table
from pdm_bench.threat_models.detector_head import TrainsDetectorHeads
from pdm_bench.threat_models.attack_specs import attack_targets
from pdm_bench.threat_models.cw_kde import THRESHOLDS, Threshold
from pdm_bench.threat_models.figures import distortion_figure
from pdm_bench.threat_models.cw_wb import (CW, DEFAULT_SCHEDULE, DOUBLING_TOLERANCE, WB, WB_DOUBLED, WHITE_FLAGS, Rung,
                                           Scored, WhiteAttack, WhiteBudget,
                                           WhiteParams, budget_rows, check_schedule, mean_or_nan, require_embedding,
                                           scored_rows, seconds_spent, start_run, speedup_settings)
from pdm_bench.threat_models.cw_wb_search import search_budget


def save_distortions(ev: Evaluation, name: str, s: Scored) -> np.ndarray:
    """Per-image d for the N sampled images (NaN where the pair is not kept), as .npy under RESULTS_DIR/distortions/."""
    per_image = np.full(len(ev.indices), np.nan)
    per_image[s.keep] = s.distortion
    save_array(ev.results.directory / "distortions" / f"{ev.dataset.name.replace('/', '_')[-40:]}-{name}-{ev.run_id}.npy",
               per_image)
    return per_image


def run_white(ev: Evaluation, *, schedule: Sequence[WhiteBudget] = DEFAULT_SCHEDULE, kde_points: int = 100,
              threshold: Threshold = "median", confidence: float = 5.0, wb_confidence: float = 0.0,
              stage1_search_steps: int = 3, batch_size: int = 256, warm_start: bool = True,
              carry_rungs: bool = False, check_doubling: bool = False) -> list[ResultRow]:
    """C&W-wb and plain C&W (same seeded targets) on the N sampled test images; return this run's rows.

    Rows: ``cw-wb`` and ``cw`` with auc (+ auc_low/high), success_rate, pairs_kept, distortion (mean d), ...;
    ``cw-wb`` adds the budget used (budget_*), criterion_met and ``cw-wb@K`` rows for each budget tried.
    Per-image d goes to RESULTS_DIR/distortions/. A finished run is not redone.
    """
    require_embedding(ev.trained.model, threat="white")
    budgets = check_schedule(schedule)
    if threshold not in THRESHOLDS:
        raise UserError(f"C&W-wb threshold: expected 'median' or 'clean', got {threshold!r}")
    if isinstance(kde_points, bool) or not isinstance(kde_points, int) or kde_points <= 0:
        raise UserError(f"C&W-wb: expected a positive integer kde_points, got {kde_points!r}")
    settings = {"kde_points": kde_points, "threshold": threshold, "confidence": confidence, "wb_confidence": wb_confidence,
                "stage1_search_steps": stage1_search_steps, **speedup_settings(warm_start, carry_rungs)}
    images_ev, ev, (x, y), (clean_pred, clean_score) = start_run(ev, "white", settings, budgets)
    data = ev.dataset
    done = ev.results.finished(ev.run_id, WB, legacy=(WB, Metric.DISTORTION))
    if done and (not check_doubling or ev.results.finished(ev.run_id, WB_DOUBLED)):
        ev.log(f"{WB}: already in {ev.results.path}, skipped")
        return ev.results.run_rows(ev.run_id)
    reference = None if isinstance(ev.detector, KDEDetector) else reference_embeddings(
        ev.trained.model, data, per_class=ev.detector.reference_points, device=ev.device, seed=ev.seed)
    attack = WhiteAttack(model=ev.trained.model, detector=ev.detector, reference=reference, kde_points=kde_points,
                         seed=ev.seed, threshold=threshold, confidence=confidence, wb_confidence=wb_confidence,
                         stage1_search_steps=stage1_search_steps, batch_size=batch_size, warm_start=warm_start, carry_rungs=carry_rungs)
    targets = attack_targets(y, data.num_classes, ev.seed)
    copy = f"KDE subset {kde_points}/class" if reference is None else f"detector {ev.detector.name}'s score"
    ev.log(f"{WB}: attacking {len(y)} images ({copy}, threshold {threshold}) ...")
    search = search_budget(images_ev, attack, schedule=budgets, x=x, y=y, targets=targets,
                           judge=(ev.trained.model, ev.detector), clean=(clean_pred, clean_score),
                           double_final=check_doubling)
    if search.doubled is not None and not ev.results.finished(ev.run_id, WB_DOUBLED):
        ev.results.append(doubling_rows(ev, search.final, search.doubled, y, (clean_pred, clean_score)),
                          completes=WB_DOUBLED)
    if done:  # only the doubling check was missing
        return ev.results.run_rows(ev.run_id)
    final = search.final
    if not final.met:
        ev.log(f"{WB}: the largest budget left success {final.wb.success:.3f} and AUC {final.wb.auc.value:.3f} "
               "(criterion not met; reported as is)")
    save_distortions(ev, WB, final.wb)
    n, correct = len(final.wb.keep), int((clean_pred == y).sum())
    trials = [row for r in search.rungs for row in (
        ev.row(f"{WB}@{r.index + 1}", Metric.AUC, r.wb.auc.value, len(r.wb.keep)),
        ev.row(f"{WB}@{r.index + 1}", Metric.SUCCESS_RATE, r.wb.success, correct),
        ev.row(f"{WB}@{r.index + 1}", Metric.DISTORTION, mean_or_nan(r.wb.distortion), len(r.wb.keep)),
        ev.row(f"{WB}@{r.index + 1}", Metric.STAGE1_SUCCESS_RATE, r.stage1.success, correct),
        ev.row(f"{WB}@{r.index + 1}", Metric.ATTACK_SECONDS, seconds_spent(r.stage1.seconds, r.wb.seconds), len(y)))]
    clean = (clean_pred, clean_score)
    ev.results.append([*scored_rows(ev, CW, search.plain, y, clean), *trials, *budget_rows(ev, WB, final, n, kde_points=kde_points),
                       ev.row(WB, Metric.TARGET_HIT_RATE, float((final.wb.pred == targets).mean()), len(y)),
                       ev.row(WB, Metric.STAGE1_SUCCESS_RATE, final.stage1.success, correct),
                       ev.row(WB, Metric.STAGE1_SECONDS, final.stage1.seconds, len(y)),
                       *scored_rows(ev, WB, final.wb, y, clean)],
                      completes=WB, legacy=(WB, Metric.DISTORTION))
    return ev.results.run_rows(ev.run_id)


def doubling_rows(ev: Evaluation, final: Rung, doubled: Rung, y: np.ndarray,
                  clean: tuple[np.ndarray, np.ndarray]) -> list[ResultRow]:
    """The doubling check: C&W-wb at the reported rung with twice the Adam steps, and how much d moved."""
    d, d2 = mean_or_nan(final.wb.distortion), mean_or_nan(doubled.wb.distortion)
    change = (d2 - d) / d if d and math.isfinite(d) and math.isfinite(d2) else math.nan
    n = len(final.wb.keep)
    return [*scored_rows(ev, WB_DOUBLED, doubled.wb, y, clean),
            ev.row(WB_DOUBLED, Metric.BUDGET_ITERATIONS, doubled.budget.max_iter, len(y)),
            ev.row(WB_DOUBLED, Metric.DISTORTION_CHANGE, change, n),
            ev.row(WB_DOUBLED, Metric.DOUBLING_CONVERGED,
                   math.nan if math.isnan(change) else float(abs(change) <= DOUBLING_TOLERANCE), n)]


def white_table(rows: list[ResultRow]) -> str:
    """The table printed after a run: each budget tried, then C&W-wb against plain C&W (the adaptivity check)."""
    get = value_getter(rows)
    lines = [f"{'attack':<10} {'success':>8} {'pairs':>6} {'AUC':>6} {'95% CI':>15} {'d':>7} {'d med':>7} "
             f"{'log KDE':>9} {'sec':>7}"]
    tried = sorted({r.attack for r in rows if r.attack.startswith(f"{WB}@")}, key=lambda a: int(a.rpartition("@")[2]))
    for name in tried:
        lines.append(f"{name:<10} {get(name, 'success_rate'):>8.3f} {'':>6} {get(name, 'auc'):>6.3f} {'':>15} "
                     f"{get(name, 'distortion'):>7.4f} {'':>7} {'':>9} {get(name, 'attack_seconds'):>7.1f}")
    for name in (CW, WB):
        ci = f"[{get(name, 'auc_low'):.3f}, {get(name, 'auc_high'):.3f}]"
        lines.append(f"{name:<10} {get(name, 'success_rate'):>8.3f} {get(name, 'pairs_kept'):>6.0f} "
                     f"{get(name, 'auc'):>6.3f} {ci:>15} {get(name, 'distortion'):>7.4f} "
                     f"{get(name, 'distortion_median'):>7.4f} {get(name, 'log_density_mean'):>9.2f} "
                     f"{get(name, 'attack_seconds'):>7.1f}")
    lines.append(f"budget: {get(WB, 'budget_iterations'):.0f} steps x {get(WB, 'budget_search_steps'):.0f} searches, "
                 f"c0 {get(WB, 'budget_initial_const'):g}, lr {get(WB, 'budget_learning_rate'):g}, "
                 f"{get(WB, 'kde_points'):.0f} KDE points, tau quantile {get(WB, 'tau_quantile'):g} (rung "
                 f"{get(WB, 'budget_rung'):.0f}); criterion (all succeed, AUC <= 0.5) "
                 f"{'met' if get(WB, 'criterion_met') == 1 else 'NOT met'}")
    if not math.isnan(change := get(WB_DOUBLED, Metric.DISTORTION_CHANGE)):
        converged = get(WB_DOUBLED, Metric.DOUBLING_CONVERGED) == 1
        lines.append(f"doubling check: d {get(WB, 'distortion'):.4f} -> {get(WB_DOUBLED, 'distortion'):.4f} at "
                     f"{get(WB_DOUBLED, 'budget_iterations'):.0f} Adam steps ({100 * change:+.1f}%: "
                     f"{'converged' if converged else 'NOT converged'}, tolerance {100 * DOUBLING_TOLERANCE:g}%)")
    adaptive = get(CW, "auc") > 0.5 >= get(WB, "auc")
    lines.append(f"adaptivity check: plain C&W AUC {get(CW, 'auc'):.3f} vs C&W-wb {get(WB, 'auc'):.3f} "
                 f"({'passed' if adaptive else 'FAILED: plain C&W is not detected, or C&W-wb is'})")
    return "\n".join(lines)


class WhiteBox(TrainsDetectorHeads):
    """White box: C&W-wb against the model and the detector, its budget raised until the detector is beaten."""

    name = "white"
    description = "the attacker knows the model and the detector: C&W-wb, budget raised until AUC <= 0.5"
    params_type = WhiteParams
    heading = "White-box"
    cost_rank = 1
    attacks_detector = True
    flags: ClassVar[dict[str, str]] = WHITE_FLAGS
    params: WhiteParams

    def settings(self) -> dict[str, Any]:
        return {}  # C&W-wb's settings and schedule enter the run id inside run_white

    def evaluate(self, evaluation: Evaluation) -> list[ResultRow]:
        p = self.params
        return run_white(evaluation, schedule=p.schedule(), kde_points=p.kde_points, threshold=p.threshold,  # type: ignore[arg-type]
                         confidence=p.confidence, wb_confidence=p.wb_confidence,
                         warm_start=p.warm_start, carry_rungs=p.carry_rungs, check_doubling=p.check_doubling)

    def summary(self, rows: list[ResultRow]) -> str:
        return white_table(rows)

    def report_tables(self, index: RowIndex) -> list[Table]:
        return [per_dataset_table(
            index, key="table3_whitebox_distortion", title="Table 3: distortion d under the white-box threat model "
            "(C&W-wb)", threat=self.name, attack=WB, metric=Metric.DISTORTION, interval=False,
            notes=(("AUC", WB, Metric.AUC), ("success", WB, Metric.SUCCESS_RATE), ("criterion met", WB, Metric.CRITERION_MET),
                   ("budget rung", WB, Metric.BUDGET_RUNG), ("plain C&W AUC", CW, Metric.AUC))),
                *fixed_fpr_table(index, key="table3b_whitebox_fpr", title=f"Table 3b: the white box {FIXED_FPR_TITLE}", threat=self.name,
                                 order=(WB, CW))]

    def report_figures(self, index: RowIndex, directory: Path, dataset: str, preset: str) -> list[Figure]:
        figure = distortion_figure(index, directory, dataset, preset)
        return [figure] if figure is not None else []

    def checklist(self, index: RowIndex, dataset: str, preset: str, defense: str) -> list[Check]:
        """Plain C&W (unbounded) reaches 100% success; the adaptive attack beats the detector where plain C&W does not."""
        get = Lookup(index, dataset, preset, defense, self.name)
        plain, wb = get(CW, Metric.SUCCESS_RATE), get(WB, Metric.SUCCESS_RATE)
        plain_auc, wb_auc = get(CW, Metric.AUC), get(WB, Metric.AUC)
        unbounded = Check("an unbounded attack reaches 100% success",
                          None if plain is None or wb is None else plain.value == 1.0 and wb.value == 1.0,
                          "" if plain is None or wb is None else f"plain C&W {fmt(plain.value)}, C&W-wb {fmt(wb.value)}")
        adaptive = Check("the adaptive attack evades where the plain one is detected",
                         None if plain_auc is None or wb_auc is None else wb_auc.value < plain_auc.value,
                         "" if plain_auc is None or wb_auc is None else
                         f"AUC C&W-wb {fmt(wb_auc.value)} vs plain C&W {fmt(plain_auc.value)}")
        return [unbounded, adaptive]
