"""White-box threat model: the C&W-wb penalty, its effect against plain C&W, rows, resume, and bad input."""

from __future__ import annotations

import copy
import importlib
from types import SimpleNamespace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pdm_bench.api import make_threat
from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.config import make_plan
from pdm_bench.data import load_dataset
from pdm_bench.defenses.baseline import Baseline
from pdm_bench.detectors import KDEDetector, fit_detector
from pdm_bench.errors import UserError
from pdm_bench.evaluation import Evaluation, sample_indices
from pdm_bench.kde import GaussianKDE
from pdm_bench.metrics import Interval
from pdm_bench.results import ResultsStore, Threat
from pdm_bench.threat_models.attack_specs import build_cw_attack
from pdm_bench.threat_models.estimator_paths import estimator_path
from pdm_bench.threat_models.cw_kde import class_log_thresholds
from pdm_bench.threat_models.cw_wb import Scored, WhiteParams, speedup_settings
from pdm_bench.threat_models.cw_wb_search import carried_start
from pdm_bench.threat_models.white import WhiteBudget, run_white, white_table
from pdm_bench.training import train_or_load

CPU = torch.device("cpu")
# Step size 5e-2: at these few steps cleverhans's 5e-3 cannot move digits' saturated pixels.
TINY = (WhiteBudget(max_iter=100, binary_search_steps=3, initial_const=1.0, learning_rate=5e-2),)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    data = load_dataset("digits")
    plan = make_plan("quick", dataset="digits", input_shape=data.input_shape, num_classes=10, epochs=10)
    trained = train_or_load(dataset=data, defense=Baseline(), plan=plan, cache_dir=tmp_path_factory.mktemp("c"),
                            device=CPU, progress=False, log=lambda _: None)
    return data, trained, fit_detector(KDEDetector(), trained.model, data, device=CPU)


def evaluation(parts: tuple[Any, Any, Any], directory: Path, n: int = 16, model: Any = None) -> Evaluation:
    data, trained, detector = parts
    if model is not None:
        trained = copy.copy(trained)
        object.__setattr__(trained, "model", model)
    return Evaluation(data, trained, Threat.WHITE.value, detector, sample_indices(data, n, 0), ResultsStore(directory), CPU, 0,
                      log=lambda _: None, chunk_size=10)  # 16 images: two chunks, so every stage is sliced


def test_penalty_is_zero_exactly_when_the_density_reaches_tau(parts: tuple[Any, Any, Any]) -> None:
    data, trained, detector = parts
    kde = detector.fitted()
    model = copy.deepcopy(trained.model)
    model.logit_sign.fill_(-1.0)  # an RCE model predicts with -z: the attack must see those logits
    x = torch.as_tensor(data.x_test[:20])
    labels = torch.as_tensor(data.y_test[:20])
    attack_kde = kde.subset(100, seed=0)
    with torch.no_grad():
        z, _ = model.embed_and_logits(x)
        density = attack_kde.log_density(z, labels)
    log_tau = torch.full((10,), float(density.median()))
    attack = build_cw_attack(to_art_classifier(model, input_shape=data.input_shape, nb_classes=10, device=CPU),
                             kde=attack_kde, log_tau=log_tau)
    attack._path = estimator_path(attack.estimator)
    attack._model = attack._path.module
    with torch.no_grad():
        logits, extra = attack.penalty(x, labels)
    assert torch.allclose(logits, model(x))
    assert torch.equal(extra == 0, density >= log_tau[labels])
    assert torch.allclose(extra[density < log_tau[labels]], (log_tau[labels] - density)[density < log_tau[labels]])
    # the thresholds: median density of each class's training points, own kernel points left out
    taus = class_log_thresholds(attack_kde, kde)
    assert taus.shape == (10,) and torch.isfinite(taus).all()
    assert torch.all(class_log_thresholds(attack_kde, kde, quantile=0.75) >= taus)  # a later rung demands more
    # Carlini's threshold, the clean image's own density: per image, so early abort is off
    clean = build_cw_attack(attack.estimator, kde=attack_kde, threshold="clean", max_iter=5, binary_search_steps=1)
    assert clean.abort_early is False
    assert clean.generate(x[:4].numpy(), y=np.eye(10)[(data.y_test[:4] + 1) % 10]).shape == (4, *data.input_shape)


def test_an_unreachable_density_returns_the_best_try_not_the_clean_image(parts: tuple[Any, Any, Any]) -> None:
    data, trained, detector = parts
    kde = detector.fitted()
    classifier = to_art_classifier(trained.model, input_shape=data.input_shape, nb_classes=10, device=CPU)
    x, y = data.x_test[:6], data.y_test[:6]
    targets = (y + 1) % 10
    goal = np.eye(10)[targets]
    start = build_cw_attack(classifier, max_iter=100, binary_search_steps=3, initial_const=1.0,
                            learning_rate=5e-2).generate(x, y=goal)  # stage 1: in the target class
    with torch.no_grad():
        started_in_target = trained.model(torch.as_tensor(start)).argmax(1).numpy() == targets
    assert started_in_target.all()
    impossible = torch.full((10,), 1e6)  # no image can be this dense: the attack never fully succeeds
    outputs = {}
    for keep in (True, False):
        attack = build_cw_attack(classifier, kde=kde.subset(50, seed=0), log_tau=impossible, keep_best_try=keep,
                                 max_iter=30, binary_search_steps=1, initial_const=1.0, learning_rate=5e-2)
        outputs[keep] = attack.generate(x, y=goal, x_init=start)
    assert np.array_equal(outputs[False], x)  # Carlini's all-or-nothing output: unchanged
    with torch.no_grad():
        predicted = trained.model(torch.as_tensor(outputs[True])).argmax(1).numpy()
    assert (predicted == targets).all() and not np.array_equal(outputs[True], x)
    # a margin out of reach too (--wb-confidence): the best try falls back to the target class at margin 0
    attack = build_cw_attack(classifier, kde=kde.subset(50, seed=0), log_tau=impossible, confidence=1e4,
                             max_iter=30, binary_search_steps=1, initial_const=1.0, learning_rate=5e-2)
    unreachable = attack.generate(x, y=goal, x_init=start)
    with torch.no_grad():
        predicted = trained.model(torch.as_tensor(unreachable)).argmax(1).numpy()
    assert (predicted == targets).all()


@pytest.mark.slow  # ART / many Adam steps: ~1 minute on 2 cores
def test_white_rows_adaptivity_and_a_rerun_redoes_nothing(parts: tuple[Any, Any, Any], tmp_path: Path) -> None:
    ev = evaluation(parts, tmp_path)
    rows = run_white(ev, schedule=TINY)
    got = {(r.attack, r.metric): r.value for r in rows}
    assert got[("cw-wb", "success_rate")] > 0.5 and got[("cw-wb", "pairs_kept")] > 5
    assert 0.0 <= got[("cw-wb", "auc_low")] <= got[("cw-wb", "auc")] <= got[("cw-wb", "auc_high")] <= 1.0
    assert got[("cw-wb", "budget_iterations")] == 100 and got[("cw-wb", "budget_search_steps")] == 3
    assert got[("cw-wb", "distortion")] > 0 and ("cw-wb@1", "auc") in got
    # adaptive in fact: the density term lifts the adversarials' log-density and plain C&W is the one detected
    assert got[("cw-wb", "log_density_mean")] > got[("cw", "log_density_mean")]
    assert got[("cw", "auc")] > got[("cw-wb", "auc")] and got[("cw", "auc")] > 0.7
    assert "adaptivity check" in white_table(rows)
    per_image = np.load(next((tmp_path / "distortions").iterdir()))
    assert per_image.shape == (16,) and np.nanmean(per_image) == pytest.approx(got[("cw-wb", "distortion")])
    files = sorted((tmp_path / "adversarial").iterdir())
    assert len(files) == 3  # stage 1, C&W-wb, plain C&W
    mtimes, before = [f.stat().st_mtime_ns for f in files], len(ev.results.rows())
    assert len(run_white(ev, schedule=TINY)) == len(rows) and len(ev.results.rows()) == before
    # results lost, images kept (a kill between the two writes): the images are reused, the numbers are the same
    (tmp_path / "results.csv").unlink()
    again = {(r.attack, r.metric): r.value for r in run_white(ev, schedule=TINY)}
    assert [f.stat().st_mtime_ns for f in files] == mtimes and again[("cw-wb", "auc")] == got[("cw-wb", "auc")]


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"max_iter": 0}, "C&W-wb budget: expected a positive integer max_iter, got 0"),
        ({"binary_search_steps": -2}, "C&W-wb budget: expected a positive integer binary_search_steps, got -2"),
        ({"initial_const": 0.0}, "C&W-wb budget: expected a positive initial_const, got 0.0"),
        ({"learning_rate": float("nan")}, "C&W-wb budget: expected a positive learning_rate, got nan"),
        ({"kde_points": 0}, "C&W-wb budget: expected a positive integer kde_points, got 0"),
        ({"tau_quantile": 1.5}, "C&W-wb budget: expected tau_quantile in [0, 1], got 1.5"),
    ],
)
def test_a_budget_that_is_not_positive_is_a_one_line_error(budget: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as error:
        WhiteBudget(**budget)
    assert str(error.value) == message


def test_bad_schedule_and_no_embedding_are_one_line_errors(parts: tuple[Any, Any, Any], tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^C&W-wb budget: expected a non-empty sequence of WhiteBudget, got \(\)$"):
        run_white(evaluation(parts, tmp_path), schedule=())
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(UserError) as error:
        run_white(evaluation(parts, tmp_path, model=plain), schedule=TINY)
    assert str(error.value).startswith("Threat model 'white' runs the KDE detector on the model's embedding: expected")
    assert str(error.value).endswith("got Sequential") and "\n" not in str(error.value)
    assert not (tmp_path / "results.csv").exists()


def test_thresholds_use_leave_one_out_densities_of_the_training_points() -> None:
    generator = torch.Generator().manual_seed(0)
    points, labels = torch.randn(90, 4, generator=generator), torch.arange(90) % 3
    kde = GaussianKDE([points[labels == c] for c in range(3)], 0.7)
    expected = []
    for c in range(3):
        kernels = kde.kernels[c]
        own_left_out = [float(GaussianKDE([torch.cat([kernels[:i], kernels[i + 1:]])] * 3, 0.7)
                              .log_density(kernels[i:i + 1], torch.tensor([c]))) for i in range(len(kernels))]
        expected.append(float(torch.tensor(own_left_out).median()))
    # all points as kernels: a point's own kernel is left out (counting it set tau out of reach)
    assert class_log_thresholds(kde, kde).tolist() == pytest.approx(expected, abs=1e-4)


def test_the_next_rung_starts_from_the_last_rungs_hits_and_stage_one_elsewhere() -> None:
    x_stage1 = np.zeros((3, 1, 2, 2), dtype=np.float32)
    previous = Scored(x_adv=np.ones_like(x_stage1), pred=np.array([4, 1, 7]), score=np.zeros(3), keep=np.ones(3, bool),
                      auc=Interval(0.5, 0.4, 0.6), success=1.0, distortion=np.zeros(3), seconds=0.0)
    start = carried_start(previous, x_stage1, targets=np.array([4, 2, 7]))
    assert start.dtype == np.float32 and start[[0, 2]].min() == 1.0 and start[1].max() == 0.0


def test_the_rung_carry_is_a_checked_setting_that_enters_the_run_id_only_when_on() -> None:
    assert speedup_settings(True, True) == {"warm_start": True, "carry_rungs": True}
    assert speedup_settings(False) == {}  # runs made before either existed keep their ids
    assert WhiteParams().carry_rungs is False  # off: on the MNIST baseline it raised d beyond the interval
    with pytest.raises(ValueError, match="carry_rungs must be true or false, got 'yes'"):
        WhiteParams(carry_rungs="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("threat, runner", [("white", "run_white"), ("black", "run_black")])
def test_the_stage_confidences_are_checked_options_passed_to_the_attack(threat: str, runner: str, monkeypatch) -> None:
    with pytest.raises(UserError, match="--wb-confidence must be a number >= 0, got -1"):
        make_threat(threat, {"wb_confidence": -1})
    module = importlib.import_module(f"pdm_bench.threat_models.{threat}")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(module, runner, lambda ev, **kw: seen.update(kw) or [])
    make_threat(threat, {"wb_confidence": 20}).evaluate(SimpleNamespace(progress=None))  # type: ignore[arg-type]
    assert (seen["wb_confidence"], seen["confidence"]) == (20.0, 5.0)  # both reach the attack's settings (the run id)
    assert isinstance(seen["wb_confidence"], float)  # 20 from Python and 20.0 from the CLI: one run id
