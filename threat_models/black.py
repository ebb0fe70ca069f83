"""Black-box threat model (Section 4.4): a distilled proxy, C&W-wb on it, transferred to the defended model.

The attacker has the training inputs and the defended model's probabilities on them. It distils a proxy (quick
preset: ResNet-8, paper preset: ResNet-32, as Pang et al.) through ART's ``CopycatCNN`` with ``use_probability=True``
(``pdm_bench.art_adapter.ScheduledCopycatCNN``: ART's, plus the target's learning-rate schedule, ``drop_last`` and
seeds, which ART's ``extract`` cannot pass), fits its own KDE on the proxy's embeddings, runs C&W-wb on the proxy
(raising the budget until its own KDE is breached, as in the white box), and the adversarials are scored by the
*target's* KDE under the target's predictions.

The proxy trains with the target's optimiser and schedule (its ``TrainPlan`` with the proxy's depth), without
crop/flip augmentation (the soft labels are the victim's answers on those exact inputs), and is cached like a trained
model under ``<cache>/proxies/`` keyed by the target's key and the proxy's plan. A distillation killed halfway
resumes after its last finished epoch. The target's detector can be any: it only judges the transferred images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from pdm_bench.art_adapter import build_copycat
from pdm_bench.config import TrainPlan, make_plan
from pdm_bench.data import Dataset
from pdm_bench.detectors import KDEDetector, fit_detector
from pdm_bench.errors import UserError
from pdm_bench.evaluation import Evaluation
from pdm_bench.inference import embed_and_predict, predict_logits
from pdm_bench.models import ModelSpec, ResNet, build_model
from pdm_bench.results import Metric, ResultRow, value_getter
from pdm_bench.storage import ModelEntry
from pdm_bench.tables import FIXED_FPR_TITLE, RowIndex, Table, fixed_fpr_table, per_dataset_table
from pdm_bench.threat_models.detector_head import TrainsDetectorHeads
from pdm_bench.threat_models.attack_specs import attack_targets
from pdm_bench.threat_models.cw_kde import THRESHOLDS, Threshold
from pdm_bench.threat_models.cw_wb import (CW, DEFAULT_SCHEDULE, WB, WHITE_FLAGS, WhiteAttack, WhiteBudget, WhiteParams,
                                           budget_rows, check_schedule, judge_images, mean_or_nan, require_embedding,
                                           scored_rows, start_run, speedup_settings)
from pdm_bench.threat_models.cw_wb_search import search_budget
from pdm_bench.training import make_optimizer

PROXY_FORMAT_VERSION = 1
PROXY_DEPTH: dict[str, int] = {"quick": 8, "paper": 32}  # Pang et al. and the paper: a ResNet-32 proxy


@dataclass(frozen=True)
class Proxy:
    """A distilled (or reused) proxy of a target model, and how closely it follows the target."""

    model: ResNet
    plan: TrainPlan
    key: str
    run_dir: Path
    agreement: float  # share of test images where proxy and target predict the same class
    accuracy: float  # the proxy's clean test accuracy
    from_cache: bool
    seconds: float


def proxy_plan(ev: Evaluation, *, depth: int | None = None, epochs: int | None = None) -> TrainPlan:
    """The target's preset and seed resolved for the proxy: its depth (default ``PROXY_DEPTH``) and epochs."""
    plan = ev.trained.plan
    for name, value in (("proxy depth", depth), ("proxy epochs", epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise UserError(f"expected a positive integer {name}, got {value!r}")
    data = ev.dataset
    base = make_plan(plan.preset, dataset=data.name, input_shape=data.input_shape, num_classes=data.num_classes,
                     seed=plan.seed + 1000, epochs=epochs if epochs is not None else plan.epochs)
    try:
        spec = ModelSpec(depth=depth or PROXY_DEPTH.get(plan.preset, 32), width=plan.model.width,
                         in_channels=plan.model.in_channels, num_classes=plan.model.num_classes)
    except ValueError as error:
        raise UserError(f"Bad proxy: {error}") from None
    return replace(base, model=spec, augment=False)  # the copycat fits on the queried inputs as they are


def distil_proxy(ev: Evaluation, *, cache_dir: Path, depth: int | None = None, epochs: int | None = None,
                 progress: bool = False) -> Proxy:
    """Reuse the cached proxy of this target and plan, or distil it from the target's softmax on the training inputs."""
    data, target = ev.dataset, ev.trained
    plan = proxy_plan(ev, depth=depth, epochs=epochs)
    entry = ModelEntry.at(cache_dir, "proxies", f"{data.name}-{target.defense.name}-{plan.preset}-r{plan.model.depth}",
                          {"format": PROXY_FORMAT_VERSION, "target": target.key, "plan": plan.as_dict(),
                           "queries": "all training inputs", "outputs": "softmax"})
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(plan.seed)
        model = build_model(plan.model).to(ev.device)
    started = time.perf_counter()
    from_cache = entry.finished_meta() is not None
    if from_cache:
        try:
            model.load_state_dict(torch.load(entry.weights_path, map_location=ev.device, weights_only=True)["weights"])
        except (RuntimeError, KeyError, EOFError, OSError, ValueError):
            from_cache = False  # a torn or foreign file: distil again
            ev.log(f"proxy: cached weights in {entry.run_dir} unreadable, distilling again")
    if from_cache:
        ev.log(f"proxy: reusing {entry.run_dir.name}")
    else:
        ev.log(f"proxy: distilling ResNet-{plan.model.depth} from the target's probabilities on {len(data.x_train)} "
               f"training inputs ({plan.epochs} epochs"
               f"{'; resuming after its last finished epoch' if entry.checkpoint_path.exists() else ''}) ...")
        entry.start()
        copycat, thieved = build_copycat(
            target.model, model, optimizer=make_optimizer(model, plan), input_shape=data.input_shape,
            nb_classes=data.num_classes, device=ev.device, epochs=plan.epochs, batch_size=plan.batch_size,
            milestones=plan.milestones, gamma=plan.gamma, seed=plan.seed, nb_stolen=len(data.x_train), verbose=progress)
        copycat.extract(data.x_train, thieved_classifier=thieved, checkpoint=entry.checkpoint_path)
    model.eval()
    seconds = float("nan") if from_cache else time.perf_counter() - started
    proxy_pred = predict_logits(model, data.x_test, device=ev.device).argmax(1).numpy()
    target_pred = predict_logits(target.model, data.x_test, device=ev.device).argmax(1).numpy()
    agreement, accuracy = float((proxy_pred == target_pred).mean()), float((proxy_pred == data.y_test).mean())
    if not from_cache:
        entry.finish(model.state_dict(), agreement=agreement, test_accuracy=accuracy, seconds=round(seconds, 2))
    ev.log(f"proxy: agreement with the target {100 * agreement:.2f}%, test accuracy {100 * accuracy:.2f}% (test set)")
    return Proxy(model, plan, entry.key, entry.run_dir, agreement, accuracy, from_cache, seconds)


def attacker_kde(proxy: Proxy, data: Dataset, *, device: torch.device, points_per_class: int, seed: int,
                 progress: bool = False) -> KDEDetector:
    """The attacker's own detector copy: Feinman's KDE on the proxy's embeddings of training inputs (true labels)."""
    return fit_detector(KDEDetector(points_per_class=points_per_class), proxy.model, data, device=device, seed=seed,  # type: ignore[return-value]
                        progress=progress)


def run_black(ev: Evaluation, *, cache_dir: Path | None = None, proxy_depth: int | None = None,
              proxy_epochs: int | None = None, schedule: Sequence[WhiteBudget] = DEFAULT_SCHEDULE,
              kde_points: int = 100, attacker_kde_points: int = 1000, threshold: Threshold = "median",
              confidence: float = 5.0, wb_confidence: float = 0.0, stage1_search_steps: int = 3,
              batch_size: int = 256, progress: bool = False, warm_start: bool = True,
              carry_rungs: bool = False) -> list[ResultRow]:
    """Distil (or reuse) the proxy, attack it with C&W-wb, score the transfer with the target's KDE; return the rows.

    Rows: ``cw-wb`` (and ``cw``, plain C&W from the same proxy) with auc (+ auc_low/high: the target's detector),
    success_rate (transfer: misclassified by the target), target_hit_rate, pairs_kept, distortion; ``cw-wb`` adds
    proxy_agreement, proxy_accuracy, proxy_auc and proxy_success_rate (on the proxy, its own KDE), the budget used
    and attacker_bandwidth. ``cache_dir`` defaults to the one the target model is cached in.
    """
    require_embedding(ev.trained.model, threat="black")
    budgets = check_schedule(schedule)
    if threshold not in THRESHOLDS:
        raise UserError(f"C&W-wb threshold: expected 'median' or 'clean', got {threshold!r}")
    for name, value in (("kde_points", kde_points), ("attacker_kde_points", attacker_kde_points)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"C&W-wb: expected a positive integer {name}, got {value!r}")
    cache_dir = cache_dir if cache_dir is not None else ev.trained.run_dir.parent.parent
    data = ev.dataset
    plan = proxy_plan(ev, depth=proxy_depth, epochs=proxy_epochs)
    settings = {"proxy": plan.as_dict(), "kde_points": kde_points, "attacker_kde_points": attacker_kde_points,
                "threshold": threshold, "confidence": confidence, "wb_confidence": wb_confidence,
                "stage1_search_steps": stage1_search_steps, **speedup_settings(warm_start, carry_rungs)}
    images_ev, ev, (x, y), (clean_pred, clean_score) = start_run(ev, "black", settings, budgets)
    if ev.results.finished(ev.run_id, WB, legacy=(WB, Metric.AUC)):
        ev.log(f"{WB}: already in {ev.results.path}, skipped")
        return ev.results.run_rows(ev.run_id)
    proxy = distil_proxy(ev, cache_dir=cache_dir, depth=proxy_depth, epochs=proxy_epochs, progress=progress)
    own = attacker_kde(proxy, data, device=ev.device, points_per_class=attacker_kde_points, seed=ev.seed, progress=progress)
    own_kde = own.fitted()
    attack = WhiteAttack(model=proxy.model, detector=own, kde_points=kde_points, seed=ev.seed, threshold=threshold,
                         confidence=confidence, wb_confidence=wb_confidence, stage1_search_steps=stage1_search_steps,
                         batch_size=batch_size, warm_start=warm_start, carry_rungs=carry_rungs)
    embeddings, proxy_pred = embed_and_predict(proxy.model, x, device=ev.device)
    proxy_clean = (proxy_pred.numpy(), own_kde.log_density(embeddings, proxy_pred).numpy())
    targets = attack_targets(y, data.num_classes, ev.seed)
    ev.log(f"{WB}: attacking the proxy on {len(y)} images (own KDE bandwidth {own_kde.bandwidth:.4g}) ...")
    search = search_budget(images_ev, attack, schedule=budgets, x=x, y=y, targets=targets, judge=(proxy.model, own),
                           clean=proxy_clean, name=f"proxy-{WB}", cache={"proxy": proxy.key})
    final = search.final
    on_target = {name: judge_images(ev, (ev.trained.model, ev.detector), x, y, s.x_adv, clean_pred, clean_score, s.seconds)
                 for name, s in ((CW, search.plain), (WB, final.wb))}
    n = len(on_target[WB].keep)
    clean = (clean_pred, clean_score)
    main = scored_rows(ev, WB, on_target[WB], y, clean)
    extra = [ev.row(WB, Metric.TARGET_HIT_RATE, float((on_target[WB].pred == targets).mean()), len(y)),
             ev.row(CW, Metric.TARGET_HIT_RATE, float((on_target[CW].pred == targets).mean()), len(y)),
             ev.row(WB, Metric.PROXY_AGREEMENT, proxy.agreement, len(data.y_test)),
             ev.row(WB, Metric.PROXY_ACCURACY, proxy.accuracy, len(data.y_test)),
             ev.row(WB, Metric.PROXY_AUC, final.wb.auc.value, len(final.wb.keep)),
             ev.row(WB, Metric.PROXY_SUCCESS_RATE, final.wb.success, int((proxy_clean[0] == y).sum())),
             ev.row(WB, Metric.PROXY_DISTORTION, mean_or_nan(final.wb.distortion), len(final.wb.keep)),
             ev.row(WB, Metric.PROXY_SECONDS, proxy.seconds, len(data.x_train)),
             ev.row(WB, Metric.ATTACKER_BANDWIDTH, own_kde.bandwidth, len(y)),
             ev.row(WB, Metric.PROXY_DEPTH, proxy.plan.model.depth, n)]
    ev.results.append([*scored_rows(ev, CW, on_target[CW], y, clean), *budget_rows(ev, WB, final, n, kde_points=kde_points), *extra,
                       *main],
                      completes=WB, legacy=(WB, Metric.AUC))
    return ev.results.run_rows(ev.run_id)


def black_table(rows: list[ResultRow]) -> str:
    """The table printed after a run: transfer to the target next to the proxy's fidelity."""
    get = value_getter(rows)
    lines = [f"{'attack':<10} {'transfer':>8} {'to t':>6} {'pairs':>6} {'AUC':>6} {'95% CI':>15} {'d':>7} {'log KDE':>9}"]
    for name in (CW, WB):
        ci = f"[{get(name, 'auc_low'):.3f}, {get(name, 'auc_high'):.3f}]"
        lines.append(f"{name:<10} {get(name, 'success_rate'):>8.3f} {get(name, 'target_hit_rate'):>6.3f} "
                     f"{get(name, 'pairs_kept'):>6.0f} {get(name, 'auc'):>6.3f} {ci:>15} {get(name, 'distortion'):>7.4f} "
                     f"{get(name, 'log_density_mean'):>9.2f}")
    lines.append(f"proxy ResNet-{get(WB, 'proxy_depth'):.0f}: agreement with the target {get(WB, 'proxy_agreement'):.3f}, "
                 f"accuracy {get(WB, 'proxy_accuracy'):.3f}; on the proxy C&W-wb success "
                 f"{get(WB, 'proxy_success_rate'):.3f}, "
                 f"own-KDE AUC {get(WB, 'proxy_auc'):.3f} (budget rung {get(WB, 'budget_rung'):.0f}, criterion "
                 f"{'met' if get(WB, 'criterion_met') == 1 else 'NOT met'})")
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class BlackParams(WhiteParams):
    """C&W-wb's budget (as the white box), and the proxy: ResNet depth 6n+2 (None: quick 8, paper 32) and epochs
    (None: the target's)."""

    proxy_depth: int | None = None
    proxy_epochs: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for flag, value in (("--proxy-depth", self.proxy_depth), ("--proxy-epochs", self.proxy_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if self.proxy_depth is not None and (self.proxy_depth < 8 or (self.proxy_depth - 2) % 6):
            raise ValueError(f"--proxy-depth must be of the form 6n+2 (8, 14, 20, 32, ...), got {self.proxy_depth}")


class BlackBox(TrainsDetectorHeads):
    """Black box: C&W-wb on a proxy distilled from the model's probabilities, transferred to the model."""

    name = "black"
    description = "the attacker queries the model's probabilities: a distilled proxy, C&W-wb on it, transferred"
    params_type = BlackParams
    heading = "Black-box"
    cost_rank = 0
    flags: ClassVar[dict[str, str]] = {**WHITE_FLAGS, "--proxy-depth": "proxy_depth", "--proxy-epochs": "proxy_epochs"}
    params: BlackParams

    def settings(self) -> dict[str, Any]:
        return {}  # the proxy, C&W-wb's settings and schedule enter the run id inside run_black

    def evaluate(self, evaluation: Evaluation) -> list[ResultRow]:
        p = self.params
        return run_black(evaluation, proxy_depth=p.proxy_depth, proxy_epochs=p.proxy_epochs, schedule=p.schedule(),
                         kde_points=p.kde_points, threshold=p.threshold, progress=evaluation.progress,  # type: ignore[arg-type]
                         confidence=p.confidence, wb_confidence=p.wb_confidence,
                         warm_start=p.warm_start, carry_rungs=p.carry_rungs)

    def summary(self, rows: list[ResultRow]) -> str:
        return black_table(rows)

    def report_tables(self, index: RowIndex) -> list[Table]:
        return [per_dataset_table(
            index, key="table4_blackbox_auc", title="Table 4: detection AUC under the black-box threat model",
            threat=self.name, attack=WB, metric=Metric.AUC, interval=True, flag="criterion not met on the proxy",
            notes=(("transfer success", WB, Metric.SUCCESS_RATE), ("pairs", WB, Metric.PAIRS_KEPT),
                   ("proxy agreement", WB, Metric.PROXY_AGREEMENT), ("criterion met", WB, Metric.CRITERION_MET),
                   ("budget rung", WB, Metric.BUDGET_RUNG))),
                *fixed_fpr_table(index, key="table4b_blackbox_fpr", threat=self.name, order=(WB, CW),
                                 title=f"Table 4b: the black box (transferred) {FIXED_FPR_TITLE}")]
