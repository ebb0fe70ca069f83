"""The Mahalanobis and LID detectors against independent computations (scikit-learn, numpy), their errors, and a
run through the CLI (gray and white box)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance

from pdm_bench.embedding_detectors import LIDDetector, MahalanobisDetector
from pdm_bench.errors import UserError
from pdm_bench.results import ResultsStore


def blobs(n: int = 60, dim: int = 5, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return (rng.standard_normal((n, dim)) + 3 * labels[:, None]).astype(np.float32), labels


def test_mahalanobis_equals_scikit_learns_on_the_pooled_covariance() -> None:
    x, labels = blobs()
    detector = MahalanobisDetector()
    detector.fit(torch.from_numpy(x), torch.from_numpy(labels), num_classes=3, seed=0)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(3)]).astype(np.float64)
    reference = EmpiricalCovariance(assume_centered=True).fit(x - means[labels])
    queries = blobs(10, seed=1)[0]
    expected = np.stack([reference.mahalanobis(queries - means[c]) for c in range(3)], axis=1)  # squared distances
    got = detector.squared_distances(torch.from_numpy(queries)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    predicted = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_allclose(detector.score(torch.from_numpy(queries), predicted).numpy(),
                               -expected[np.arange(10), predicted.numpy()], rtol=1e-4, atol=1e-4)
    closest = MahalanobisDetector(classes="closest")
    closest.fit(torch.from_numpy(x), torch.from_numpy(labels), num_classes=3, seed=0)
    np.testing.assert_allclose(closest.score(torch.from_numpy(queries), predicted).numpy(), -expected.min(axis=1),
                               rtol=1e-4, atol=1e-4)


def test_lid_equals_the_estimator_computed_directly() -> None:
    references, labels = blobs(50, dim=4)
    queries = blobs(7, dim=4, seed=2)[0]
    detector = LIDDetector(k=5)
    detector.fit(torch.from_numpy(references), torch.from_numpy(labels), num_classes=3, seed=0)
    expected = []
    for q in queries.astype(np.float64):
        r = np.sort(np.linalg.norm(references - q, axis=1))[:5]
        expected.append(-1.0 / np.mean(np.log(r / r[-1])))
    np.testing.assert_allclose(detector.lid(torch.from_numpy(queries)).numpy(), expected, rtol=1e-4)
    assert np.allclose(detector.score(torch.from_numpy(queries), torch.zeros(7)).numpy(), -np.array(expected), rtol=1e-4)


@pytest.mark.parametrize("detector", [MahalanobisDetector(), LIDDetector(k=5)])
def test_the_scores_have_gradients_for_the_white_box(detector: Any) -> None:
    x, labels = blobs()
    detector.fit(torch.from_numpy(x), torch.from_numpy(labels), num_classes=3, seed=0)
    queries = torch.from_numpy(blobs(4, seed=3)[0]).requires_grad_(True)
    detector.torch_score(queries, torch.tensor([0, 1, 2, 0])).sum().backward()
    assert queries.grad is not None and torch.isfinite(queries.grad).all() and queries.grad.abs().sum() > 0


def test_a_detector_that_cannot_be_fit_says_why_and_what_to_do() -> None:
    x, labels = blobs(n=6, dim=10)  # 6 points in 10 dimensions: a singular covariance
    with pytest.raises(UserError, match=r"covariance of 6 embeddings in 10 dimensions is singular .* regularization=1e-3"):
        MahalanobisDetector().fit(torch.from_numpy(x), torch.from_numpy(labels), num_classes=3, seed=0)
    MahalanobisDetector(regularization=1e-3).fit(torch.from_numpy(x), torch.from_numpy(labels), num_classes=3, seed=0)
    with pytest.raises(UserError, match="no training embedding of class 3"):
        MahalanobisDetector().fit(torch.from_numpy(x), torch.from_numpy(labels), num_classes=4, seed=0)
    with pytest.raises(UserError, match="k=20 neighbours need more than 6 reference embeddings"):
        LIDDetector().fit(torch.from_numpy(x), torch.from_numpy(labels), num_classes=3, seed=0)
    with pytest.raises(ValueError, match="classes must be predicted or closest, got 'nearest'"):
        MahalanobisDetector(classes="nearest")


@pytest.mark.parametrize("name", ["mahalanobis", "lid"])
def test_gray_and_white_box_against_each_detector(name: str, tmp_path: Path, cli: Callable[..., Any]) -> None:
    results = tmp_path / "r"
    common = ("--defense", "baseline", "--epochs", "3", "--detector", name, "--n-samples", "20", "--no-progress",
              "--no-geometry", "--results-dir", str(results))
    gray = cli("run", "--threat", "gray", "--attacks", "fgsm-0.3", "--no-resiliency", *common)
    assert gray.code == 0, gray.err
    white = cli("run", "--threat", "white", "--cw-iterations", "30", "--cw-search-steps", "2", *common)
    assert white.code == 0, white.err
    rows = [r for r in ResultsStore(results).rows() if r.threat in ("gray", "white")]
    assert {r.detector for r in rows} == {name}
    got = {(r.threat, r.attack, r.metric): r.value for r in rows}
    assert 0.0 <= got[("gray", "fgsm-0.3", "auc")] <= 1.0 and 0.0 <= got[("white", "cw-wb", "success_rate")] <= 1.0
    assert ("gray", "fgsm-0.3", "tpr_at_fpr_5") in got


def test_a_study_with_several_detectors_reports_each_pair(tmp_path: Path, cli: Callable[..., Any]) -> None:
    results = tmp_path / "r"
    study = cli("paper", "--dataset", "digits", "--epochs", "2", "--defenses", "baseline,pdm", "--train-only", "",
                "--threats", "gray", "--attacks", "fgsm-0.3", "--no-resiliency", "--n-samples", "20",
                "--detectors", "kde,mahalanobis", "--no-progress", "--results-dir", str(results))
    assert study.code == 0, study.err
    header = (results / "report" / "table2_graybox_auc.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    for column in ("baseline", "pdm", "baseline (mahalanobis)", "pdm (mahalanobis)"):
        assert f"digits (quick) {column}" in header, header


@pytest.mark.parametrize(("args", "message"), [
    (("--detectors", "kde,kde"), "--detectors must name distinct detectors, got 'kde,kde'"),
    (("--detectors", "kde,mahalanobiss"), "Did you mean: mahalanobis?"),
    (("--detector", "lid", "--detectors", "kde,lid"), "--detector lid and --detectors kde,lid both given"),
])
def test_bad_detector_lists_are_one_line(tmp_path: Path, cli: Callable[..., Any], args: tuple[str, ...], message: str) -> None:
    result = cli("paper", "--dataset", "digits", *args, "--results-dir", str(tmp_path / "r"))
    assert result.code == 2 and message in result.err and "Traceback" not in result.err, result.err
