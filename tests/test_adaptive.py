"""Adaptive threat model: PGD against model + detector (plain, combined loss, orthogonal, selective) and Square, at
fixed budgets, judged at 5% false positives; its rows, report table, resume and bad input."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pdm_bench import api
from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.config import make_plan
from pdm_bench.data import load_dataset
from pdm_bench.defenses.baseline import Baseline
from pdm_bench.detectors import KDEDetector, fit_detector
from pdm_bench.inference import embed_and_predict
from pdm_bench.metrics import rejection_threshold, valid_images
from pdm_bench.results import ResultsStore
from pdm_bench.tables import RowIndex
from pdm_bench.threat_models.adaptive import Adaptive, AdaptiveParams
from pdm_bench.threat_models.pgd import DetectorPGD, apgd_checkpoints
from pdm_bench.threat_models.square import SquareWithReject
from pdm_bench.training import train_or_load

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = load_dataset("digits")
    plan = make_plan("quick", dataset="digits", input_shape=data.input_shape, num_classes=10, epochs=10)
    trained = train_or_load(dataset=data, defense=Baseline(), plan=plan, cache_dir=tmp_path_factory.mktemp("c"),
                            device=CPU, progress=False, log=lambda _: None)
    detector = fit_detector(KDEDetector(), trained.model, data, device=CPU)
    embeddings, predicted = embed_and_predict(trained.model, data.x_test[100:], device=CPU)
    scores = detector.score(embeddings, predicted).numpy()
    classifier = to_art_classifier(trained.model, input_shape=data.input_shape, nb_classes=10, device=CPU)
    return {"data": data, "trained": trained, "model": trained.model, "detector": detector, "classifier": classifier,
            "threshold": rejection_threshold(scores, 0.05), "scale": float(np.std(scores))}


def evasions(setup: dict[str, Any], x_adv: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    embeddings, predicted = embed_and_predict(setup["model"], x_adv, device=CPU)
    score = setup["detector"].score(embeddings, predicted).numpy()
    clean_right = embed_and_predict(setup["model"], x, device=CPU)[1].numpy() == y
    return clean_right & (predicted.numpy() != y) & (score >= setup["threshold"])


def pgd(setup: dict[str, Any], mode: str, **settings: Any) -> DetectorPGD:
    return DetectorPGD(setup["classifier"], **{"eps": 0.1, "eps_step": 0.025, "max_iter": 30, "num_random_init": 1,
                                               "batch_size": 64, "verbose": False, **settings}, mode=mode,
                       detector=None if mode == "classifier" else setup["detector"].fitted(),
                       threshold=setup["threshold"], score_scale=setup["scale"])


def test_the_combined_loss_evades_the_kde_at_5_percent_fpr_on_more_images_than_plain_pgd(setup: dict[str, Any]) -> None:
    x, y = setup["data"].x_test[:100], setup["data"].y_test[:100]
    evaded = {mode: evasions(setup, pgd(setup, mode).generate(x, y), x, y).sum()
              for mode in ("classifier", "combined", "selective")}
    assert evaded["combined"] > evaded["classifier"] and evaded["selective"] > evaded["classifier"], evaded


def test_apgd_schedule_evades_on_at_least_as_many_images_at_the_same_steps(setup: dict[str, Any]) -> None:
    """On the digits model, 20 steps of one start: APGD's steps (2 eps halving, momentum) against the constant ones."""
    x, y = setup["data"].x_test[:100], setup["data"].y_test[:100]
    evaded = {schedule: evasions(setup, pgd(setup, "combined", eps=0.1, eps_step=0.0125, max_iter=20,
                                            schedule=schedule).generate(x, y), x, y).sum()
              for schedule in ("constant", "apgd")}
    assert evaded["apgd"] >= evaded["constant"] > 0, evaded


def test_apgd_checkpoints_follow_croce_and_hein() -> None:
    """p_0 = 0, p_1 = 0.22, p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06), at ceil(p_j N) below N."""
    assert sorted(apgd_checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert sorted(apgd_checkpoints(10)) == [3, 5, 6, 7, 8, 9] and apgd_checkpoints(1) == set()


@pytest.mark.parametrize(("norm", "eps", "schedule"), [(np.inf, 0.1, "constant"), (2, 0.5, "constant"),
                                                       (np.inf, 0.1, "apgd"), (2, 0.5, "apgd")])
def test_pgd_stays_inside_the_ball_and_the_pixel_range(setup: dict[str, Any], norm: float, eps: float,
                                                       schedule: str) -> None:
    x, y = setup["data"].x_test[:40], setup["data"].y_test[:40]
    for mode in ("combined", "orthogonal"):
        attack = pgd(setup, mode, norm=norm, eps=eps, eps_step=eps / 4, max_iter=10, schedule=schedule)
        delta = (attack.generate(x, y) - x).reshape(40, -1)
        size = np.abs(delta).max(axis=1) if norm == np.inf else np.linalg.norm(delta, axis=1)
        assert size.max() <= eps + 1e-5 and (x.reshape(40, -1) + delta).min() >= 0 and (x.reshape(40, -1) + delta).max() <= 1


def test_square_with_reject_counts_a_rejected_image_as_no_success(setup: dict[str, Any]) -> None:
    """Everything rejected (a threshold above every score): Square cannot succeed, so no image evades."""
    x, y = setup["data"].x_test[:20], setup["data"].y_test[:20]
    square = SquareWithReject(setup["model"], setup["detector"].fitted(), threshold=1e30, scale=1.0,
                              input_shape=x.shape[1:], nb_classes=10, clip_values=(0.0, 1.0), norm=np.inf, eps=0.3,
                              max_iter=20, restarts=1, batch_size=20, verbose=False, seed=0, device=CPU)
    assert not evasions({**setup, "threshold": 1e30}, square.generate(x, y), x, y).any()


@pytest.mark.parametrize("norm", [np.inf, 2])
def test_square_is_reproducible_under_its_seed(setup: dict[str, Any], norm: float) -> None:
    """ART's L2 Square draws from Python's random module as well as numpy's: both are seeded."""
    x, y = setup["data"].x_test[:30], setup["data"].y_test[:30]
    images = [SquareWithReject(setup["model"], setup["detector"].fitted(), threshold=setup["threshold"],
                               scale=setup["scale"], input_shape=x.shape[1:], nb_classes=10, clip_values=(0.0, 1.0),
                               norm=norm, eps=0.3 if norm == np.inf else 2.0, max_iter=60, restarts=1, batch_size=30,
                               verbose=False, seed=0, device=CPU).generate(x, y) for _ in range(2)]
    assert np.array_equal(images[0], images[1]) and not np.array_equal(images[0], x)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"mode": "combined", "detector": None}, "mode 'combined' attacks the detector"), ({"norm": 1}, "norm inf or 2"),
     ({"eps": 0.0}, "positive eps"), ({"mode": "both"}, "mode one of classifier, combined"),
     ({"mode": "combined", "schedule": "cosine"}, "schedule one of constant, apgd"),
     ({"schedule": "apgd"}, "runs ART's constant steps")],
)
def test_bad_pgd_settings_are_refused(setup: dict[str, Any], settings: dict[str, Any], message: str) -> None:
    mode = settings.pop("mode", "classifier")
    detector = settings.pop("detector", setup["detector"].fitted())
    with pytest.raises(ValueError, match=message):
        DetectorPGD(setup["classifier"], mode=mode, detector=detector, **settings)


def test_the_adaptive_run_rows_table_and_resume(tmp_path: Path, cli: Callable[..., Any]) -> None:
    results = tmp_path / "r"
    args = ("run", "--threat", "adaptive", "--defense", "baseline", "--epochs", "3", "--n-samples", "40", "--eps", "0.3",
            "-t", "iterations=10", "-t", "restarts=1", "-t", "square_iterations=30", "-t", "weights=1",
            "-t", "max_doublings=1", "--no-progress", "--results-dir", str(results))
    first = cli(*args)
    assert first.code == 0, first.err
    got = {(r.attack, r.metric): r.value for r in ResultsStore(results).rows()}
    for attack in ("pgd", "combined@1", "orthogonal", "selective", "square", "combined", "worst"):
        assert 0.0 <= got[(f"{attack}-linf-0.3", "robust_accuracy_at_fpr_5")] <= 1.0, attack
    worst = got[("worst-linf-0.3", "robust_accuracy_at_fpr_5")]
    assert worst <= min(got[(f"{a}-linf-0.3", "robust_accuracy_at_fpr_5")] for a in ("pgd", "combined@1", "square"))
    assert got[("pgd-linf-0.3", "linf_max")] <= 0.3 + 1e-6 and "worst-linf-0.3" in first.out
    rows = len(ResultsStore(results).rows())
    again = cli(*args)
    assert again.code == 0 and "skipped" in again.out and len(ResultsStore(results).rows()) == rows
    assert cli("report", "--results-dir", str(results), "--out", str(tmp_path / "report")).code == 0
    with open(tmp_path / "report" / "table5_adaptive_fpr.csv", encoding="utf-8") as handle:
        table = {row["attack"]: row for row in csv.DictReader(handle)}
    assert list(table)[-3:] == ["worst-linf-0.3", "worst@2x-linf-0.3", "worst-all@2x-linf-0.3"]
    assert "combined@1-linf-0.3" not in table
    union = got[("worst-all@2x-linf-0.3", "robust_accuracy_at_fpr_5")]  # per image over both levels: never above either
    assert union <= min(worst, got[("worst@2x-linf-0.3", "robust_accuracy_at_fpr_5")])
    assert float(table["worst-linf-0.3"]["digits (quick) baseline"]) == pytest.approx(worst, abs=6e-4)


def test_doubling_goes_on_while_the_worst_case_moves(tmp_path: Path, cli: Callable[..., Any]) -> None:
    """Two-step attacks are far from converged: the attacks on the detector are doubled again while the last doubling
    moved the worst case by 1 point or more, up to max_doublings; a higher cap resumes the same run."""
    results = tmp_path / "r"

    def run(cap: int) -> dict[int, float]:
        result = cli("run", "--threat", "adaptive", "--defense", "baseline", "--epochs", "3", "--n-samples", "40",
                     "--eps", "0.1", "-t", "iterations=2", "-t", "restarts=1", "-t", "square_iterations=30", "-t",
                     "weights=1", "-t", f"max_doublings={cap}", "--no-progress", "--results-dir", str(results))
        assert result.code == 0, result.err
        rows = ResultsStore(results).rows()
        assert len({r.run_id for r in rows if r.threat == "adaptive"}) == 1
        worst = {r.attack: r.value for r in rows if r.metric == "robust_accuracy_at_fpr_5"}
        return {k: worst[f"worst{f'@{2 ** k}x' if k else ''}-linf-0.1"] for k in range(12)
                if f"worst{f'@{2 ** k}x' if k else ''}-linf-0.1" in worst}

    capped = run(2)
    assert sorted(capped) == [0, 1, 2] and abs(capped[1] - capped[0]) >= 0.01, capped  # 2x moved, so 4x ran: the cap
    chain = run(6)
    assert len(chain) > 3 and all(chain[k] == capped[k] for k in capped), chain
    assert all(abs(chain[k - 1] - chain[k - 2]) >= 0.01 for k in range(2, len(chain))), chain  # each ran for a move
    last = len(chain) - 1
    assert last == 6 or abs(chain[last] - chain[last - 1]) < 0.01, chain  # it stops at the cap or where it converged
    unions = {r.attack: r.value for r in ResultsStore(results).rows() if r.metric == "robust_accuracy_at_fpr_5"
              and r.attack.startswith("worst-all@")}
    assert set(unions) == {"worst-all@4x-linf-0.1", f"worst-all@{2 ** last}x-linf-0.1"}, unions  # one per run's top
    assert unions[f"worst-all@{2 ** last}x-linf-0.1"] <= min(chain.values()) + 1e-12


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--eps", "abc"), "--eps must be comma-separated positive numbers, got 'abc'"),
     (("--eps", "0.1,-1"), "--eps must be comma-separated positive numbers, got '0.1,-1'"),
     (("-t", "restarts=0"), "restarts must be an integer >= 1, got 0"),
     (("-t", "schedule=cosine"), "schedule must be one of constant, apgd, got 'cosine'"),
     (("-t", "max_doublings=0"), "max_doublings must be an integer >= 1, got 0"),
     (("-t", "max_doublings=11"), "max_doublings must be an integer from 1 to 10, got 11"),
     (("--n-samples", "360"), "--n-samples must be below the test set's size 360")],
)
def test_bad_adaptive_input_is_one_line(tmp_path: Path, cli: Callable[..., Any], args: tuple[str, ...], message: str) -> None:
    result = cli("run", "--threat", "adaptive", "--defense", "baseline", "--epochs", "1", *args, "--no-progress",
                 "--results-dir", str(tmp_path / "r"))
    assert result.code == 2 and message in result.err and "Traceback" not in result.err, result.err


def test_the_validator_rejects_images_outside_the_range_or_the_budget() -> None:
    x = np.full((5, 1, 2, 2), 0.5, dtype=np.float32)
    x_adv = x.copy()
    x_adv[1, 0, 0, 0] = 1.2  # outside [0, 1]
    x_adv[2, 0, 0, 0] = 0.5 + 0.11  # beyond L-inf 0.1
    x_adv[3, 0, 0, 0] = np.nan
    x_adv[4, 0, 0, 0] = 0.5 + 0.1  # on the bound: counts
    assert valid_images(x, x_adv, norm="linf", eps=0.1).tolist() == [True, False, False, False, True]
    assert valid_images(x, x_adv, norm="l2", eps=0.1).tolist() == [True, False, False, False, True]
    assert valid_images(x, x_adv).tolist() == [True, False, True, False, True]  # no budget: the range only


@dataclass(kw_only=True)
class RoundedKDE(KDEDetector):
    """The KDE with its score rounded: the same decisions, no gradient (a detector that masks its gradients)."""

    name = "rounded_kde"

    def score(self, embeddings: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        return self.torch_score(embeddings, predicted)

    def torch_score(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return torch.round(super().torch_score(embeddings, classes) / 5.0) * 5.0


def test_a_detector_that_masks_its_gradients_trips_the_checklist(setup: dict[str, Any], tmp_path: Path) -> None:
    """Rounded scores give the gradient attacks nothing to follow: Square (gradient-free) evades more and the flag
    fails; with the plain KDE it passes."""
    trained = api.Trained(setup["data"], setup["trained"], CPU)
    params = AdaptiveParams(eps="0.3", iterations=20, restarts=1, weights="1", square_iterations=300, check_doubling=False)
    status = {}
    for detector in (KDEDetector(), RoundedKDE()):
        results = tmp_path / detector.name
        api.evaluate(trained, threat=Adaptive(params), detector=detector, n_samples=100, results_dir=results,
                     geometry=False, log=lambda _: None)
        index = RowIndex(ResultsStore(results).rows())
        column = index.evaluated("digits", "quick")[0]
        checks = {c.item: c for c in Adaptive(params).checklist(index, "digits", "quick", column)}
        status[detector.name] = checks["the gradient-free attack is not stronger than the gradient ones"]
    assert status["kde"].passed is True and status["rounded_kde"].passed is False, status


def test_pgd_takes_arts_parameters_in_arts_order() -> None:
    import inspect

    from art.attacks.evasion import ProjectedGradientDescent

    theirs = list(inspect.signature(ProjectedGradientDescent.__init__).parameters.values())[1:]
    ours = list(inspect.signature(DetectorPGD.__init__).parameters.values())[1:len(theirs) + 1]
    assert [(p.name, p.default) for p in ours] == [(p.name, p.default) for p in theirs]
    assert DetectorPGD.attack_params[:len(ProjectedGradientDescent.attack_params)] == ProjectedGradientDescent.attack_params
    with pytest.raises(ValueError, match="use ART's ProjectedGradientDescent"):
        DetectorPGD(None, decay=0.9)
