"""Multi-layer detectors (Lee et al.'s and Ma et al.'s): the layer view of a model, the logistic head against
scikit-learn's, per-layer scores against single-layer fits, Ma et al.'s protocol through the CLI, and bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pdm_bench.config import ModelSpec
from pdm_bench.embedding_detectors import LIDDetector, MahalanobisDetector
from pdm_bench.errors import UserError
from pdm_bench.features import LayerFeatures
from pdm_bench.logistic_head import LogisticHead
from pdm_bench.models import build_model
from pdm_bench.results import ResultsStore
from pdm_bench.threat_models.estimator_paths import frozen_copy


def small_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(depth=8, width=4, in_channels=1, num_classes=3)).eval()


def test_the_view_gives_each_layers_channel_means_then_the_embedding() -> None:
    model, x = small_resnet(), torch.rand(5, 1, 8, 8)
    view = LayerFeatures(model, ("stem", "stage2"))
    features, raw = view.embed_and_logits(x)
    embedding, raw_alone = model.embed_and_logits(x)
    stem = model.stem(x)
    stage2 = model.stage2(model.stage1(stem))
    expected = torch.cat([stem.mean(dim=(2, 3)), stage2.mean(dim=(2, 3)), embedding], dim=1)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(raw, raw_alone)
    torch.testing.assert_close(view(x), model(x))
    assert view.layer_sizes == (4, 8, 16)
    folded = frozen_copy(view, torch.device("cpu"))  # what attacks' inner loops run: the same features
    torch.testing.assert_close(folded.embed_and_logits(x)[0], features, rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # the caller's model is left as it was
    with pytest.raises(UserError, match=r"no layer 'stag2' \(did you mean 'stage2'\?\).*stem, stage1, stage2, stage3"):
        LayerFeatures(model, ("stag2",))


def test_the_logistic_head_equals_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((200, 3)) * [1.0, 5.0, 0.2] + [0.0, 2.0, -1.0]
    adversarial = scores @ [1.0, -0.3, 4.0] + rng.standard_normal(200) > -4.0
    head = LogisticHead.fit(torch.from_numpy(scores).float(), torch.from_numpy(adversarial), penalty=1e-2)
    z = (scores - scores.mean(0)) / scores.std(0, ddof=1)
    reference = LogisticRegression(C=1.0 / (1e-2 * len(z)), tol=1e-10, max_iter=10_000).fit(z, adversarial)
    np.testing.assert_allclose(head.weights.numpy(), reference.coef_[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(head.decision(torch.from_numpy(scores).float()).numpy(), reference.decision_function(z),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("make", [lambda **o: MahalanobisDetector(**o), lambda **o: LIDDetector(k=5, **o)])
def test_each_layer_scores_as_a_detector_fitted_on_that_layer_alone(make: Callable[..., Any]) -> None:
    model, x = small_resnet(), torch.rand(60, 1, 8, 8)
    labels = torch.arange(60) % 3
    layered = make(layers="stem,stage1")
    view = layered.view(model)
    features, _ = view.embed_and_logits(x)
    layered.fit(features.detach(), labels, num_classes=3, seed=0)
    queries = view.embed_and_logits(torch.rand(4, 1, 8, 8))[0].detach()
    classes = torch.tensor([0, 1, 2, 0])
    per_layer = layered.layer_scores(queries, classes)
    for k, (lo, hi) in enumerate(((0, 4), (4, 8), (8, 24))):
        alone = make()
        alone.fit(features[:, lo:hi].detach(), labels, num_classes=3, seed=0)
        torch.testing.assert_close(per_layer[:, k], alone.score(queries[:, lo:hi], classes), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layered.score(queries, classes), per_layer.sum(dim=1))  # no head: the sum


def test_lid_with_a_head_trained_on_fgsm_through_the_cli(tmp_path: Path, cli: Callable[..., Any]) -> None:
    results = tmp_path / "r"
    common = ("--defense", "baseline", "--epochs", "3", "--detector", "lid", "--detector-option", "layers=stem,stage1",
              "--detector-option", "head_attack=fgsm-0.3", "--detector-option", "head_images=100", "--n-samples", "20",
              "--no-progress", "--no-geometry", "--results-dir", str(results))
    gray = cli("run", "--threat", "gray", "--attacks", "fgsm-0.3,bim-0.3", "--no-resiliency", *common)
    assert gray.code == 0, gray.err
    assert "Detector head: " in gray.out and "fooled by fgsm-0.3" in gray.out and "stem " in gray.out, gray.out
    white = cli("run", "--threat", "white", "--cw-iterations", "20", "--cw-search-steps", "2", *common)
    assert white.code == 0, white.err
    rows = ResultsStore(results).rows()
    assert {r.detector for r in rows if r.threat != "model"} == {"lid[stem+stage1; head fgsm-0.3]"}
    got = {(r.threat, r.attack, r.metric): r.value for r in rows}
    assert 0.0 <= got[("gray", "bim-0.3", "auc")] <= 1.0 and 0.0 <= got[("white", "cw-wb", "success_rate")] <= 1.0
    report = cli("report", "--results-dir", str(results), "--out", str(tmp_path / "report"))
    assert report.code == 0, report.err
    header = (tmp_path / "report" / "table2_graybox_auc.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "baseline (lid[stem+stage1; head fgsm-0.3])" in header, header


@pytest.mark.parametrize(("option", "message"), [
    ("head_attack=fgsn-0.1", "Unknown attack 'fgsn-0.1'"),
    ("layers=stage9", "the model has no layer 'stage9'"),
    ("head_images=3", "head_images must be an integer >= 10, got 3"),
])
def test_bad_layer_and_head_options_are_one_line(option: str, message: str, tmp_path: Path,
                                                 cli: Callable[..., Any]) -> None:
    result = cli("run", "--threat", "gray", "--attacks", "fgsm-0.3", "--no-resiliency", "--defense", "baseline",
                 "--epochs", "1", "--detector", "mahalanobis", "--detector-option", option, "--n-samples", "10",
                 "--no-progress", "--no-geometry", "--results-dir", str(tmp_path / "r"))
    assert result.code == 2 and message in result.err and "Traceback" not in result.err, result.err


def test_lees_input_preprocessing_scores_the_nudged_input_and_passes_gradients() -> None:
    model, x = small_resnet(), torch.rand(60, 1, 8, 8)
    labels = torch.arange(60) % 3
    detector = MahalanobisDetector(layers="stem", classes="closest", input_noise=0.01)
    view = detector.view(model)
    detector.fit(view.embed_and_logits(x)[0].detach(), labels, num_classes=3, seed=0)  # before the fit: not nudged
    plain = MahalanobisDetector(layers="stem", classes="closest")
    plain_view = plain.view(model)
    plain.fit(plain_view.embed_and_logits(x)[0].detach(), labels, num_classes=3, seed=0)
    queries = torch.rand(4, 1, 8, 8)
    expected = []
    for k, (lo, hi) in enumerate(((0, 4), (4, 20))):  # Lee et al.: per layer, a step down that layer's distance
        probe = queries.clone().requires_grad_(True)
        plain.squared_distances(plain_view.embed_and_logits(probe)[0][:, lo:hi], k).min(dim=1).values.sum().backward()
        nudged = queries - 0.01 * probe.grad.sign()
        expected.append(-plain.squared_distances(plain_view.embed_and_logits(nudged)[0][:, lo:hi].detach(), k).min(1).values)
    got = detector.layer_scores(view.embed_and_logits(queries)[0].detach(), torch.zeros(4))
    torch.testing.assert_close(got, torch.stack(expected, dim=1), rtol=1e-4, atol=1e-4)
    attacked = queries.clone().requires_grad_(True)
    detector.torch_score(view.embed_and_logits(attacked)[0], torch.zeros(4)).sum().backward()
    assert attacked.grad is not None and torch.isfinite(attacked.grad).all() and attacked.grad.abs().sum() > 0


def test_the_gray_box_attacks_once_for_every_detector(tmp_path: Path, cli: Callable[..., Any]) -> None:
    results = tmp_path / "r"
    for detector in ("kde", "lid"):
        done = cli("run", "--threat", "gray", "--attacks", "fgsm-0.3", "--no-resiliency", "--defense", "baseline",
                   "--epochs", "1", "--detector", detector, "--n-samples", "20", "--no-progress", "--no-geometry",
                   "--results-dir", str(results))
        assert done.code == 0, done.err
    seconds = {r.detector: r.value for r in ResultsStore(results).rows() if r.metric == "attack_seconds"}
    assert seconds["kde"] >= 0 and np.isnan(seconds["lid"])  # the second detector's run read the stored images
    assert len(list((results / "adversarial").glob("*.npy"))) == 1
