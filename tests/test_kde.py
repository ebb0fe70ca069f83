"""The per-class Gaussian KDE: exactness against float64 and scipy, gradients, bandwidth rule, subsets, caching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from pdm_bench.errors import UserError
from pdm_bench.kde import BandwidthSearch, GaussianKDE, loo_log_likelihood, select_bandwidth


def exact_log_density(kde: GaussianKDE, z: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """Direct float64 sum over kernel points (differences, not the matmul identity)."""
    h, d = kde.bandwidth, kde.dim
    out = []
    for zi, c in zip(z.double(), classes.tolist()):
        points = kde.kernels[c].double()
        d2 = ((zi - points) ** 2).sum(1)
        out.append(torch.logsumexp(-d2 / (2 * h * h), 0).item() - math.log(len(points)) - 0.5 * d * math.log(2 * math.pi * h * h))
    return np.array(out)


def is_subset(rows: torch.Tensor, pool: torch.Tensor) -> bool:
    return bool((rows[:, None, :] == pool[None]).all(-1).any(1).all()) and len(rows.unique(dim=0)) == len(rows)


def clustered(num_classes: int, per_class: int, dim: int, *, spread: float, norm: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    centres = norm * centres / centres.norm(dim=1, keepdim=True)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("norm", [1.0, 50.0])
def test_log_density_matches_float64_reference_near_and_far(norm: float) -> None:
    emb, labels = clustered(3, 300, 64, spread=0.3 * norm / 10, norm=norm, seed=1)
    kde = GaussianKDE.fit(emb, labels, num_classes=3, points_per_class=200)
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(60, 64, generator=g)
    direction /= direction.norm(dim=1, keepdim=True)
    far = emb[:60] + 10 * kde.bandwidth * direction  # 10 bandwidths from a training point, further from the rest
    near = emb[::50] + 0.01 * torch.randn(emb[::50].shape, generator=g)
    z = torch.cat([near, far, -emb[:5]])  # and some across the origin from everything
    classes = torch.randint(0, 3, (len(z),), generator=g)
    got = kde.log_density(z, classes)
    assert got.dtype == torch.float32 and got.shape == (len(z),)
    assert np.abs(got.double().numpy() - exact_log_density(kde, z, classes)).max() < 1e-3


def test_normalisation_against_scipy_mixture() -> None:
    points = torch.tensor([[0.0, 0.0], [1.0, 0.5], [-0.5, 2.0]])
    other = torch.tensor([[3.0, 3.0], [4.0, 3.0]])
    kde = GaussianKDE([points, other], bandwidth=0.7)
    z = torch.tensor([[0.2, 0.1], [5.0, -1.0], [3.5, 3.1]])
    classes = torch.tensor([0, 0, 1])
    expected = []
    for zi, c in zip(z.numpy(), classes.tolist()):
        pts = kde.kernels[c].numpy()
        density = np.mean([multivariate_normal(mean=p, cov=0.49 * np.eye(2)).pdf(zi) for p in pts])
        expected.append(np.log(density))
    np.testing.assert_allclose(kde.log_density(z, classes).numpy(), expected, atol=1e-5)
    # integrates to one: grid sum of the density over the plane
    axis = torch.linspace(-6, 9, 301)
    grid = torch.cartesian_prod(axis, axis)
    mass = kde.log_density(grid, torch.zeros(len(grid), dtype=torch.long)).exp().sum() * (axis[1] - axis[0]) ** 2
    assert abs(mass.item() - 1) < 1e-3


def test_gradient_matches_finite_differences() -> None:
    emb, labels = clustered(2, 5, 3, spread=1.0, norm=2.0, seed=3)
    kde = GaussianKDE.fit(emb, labels, num_classes=2, bandwidth=0.8)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda q: kde.log_density(q, classes), (z,))
    z32 = z.detach().float().requires_grad_()
    kde.log_density(z32, classes).sum().backward()
    assert z32.grad is not None and torch.allclose(z32.grad.double(), torch.autograd.grad(kde.log_density(z, classes).sum(), z)[0], atol=1e-4)


def test_bandwidth_near_brute_force_optimum_and_scale_equivariant() -> None:
    std = 0.5
    emb, labels = clustered(4, 150, 8, spread=std, norm=20.0, seed=4)
    kernels = [emb[labels == c] for c in range(4)]
    chosen = select_bandwidth(kernels)
    grid = np.geomspace(0.01, 10, 301)
    brute = grid[np.argmax(loo_log_likelihood(kernels, grid))]
    assert brute / 2 < chosen < brute * 2
    assert 0.2 * std < chosen < 2 * std
    scaled = select_bandwidth([10 * k for k in kernels])
    assert scaled == pytest.approx(10 * chosen, rel=0.01)
    assert select_bandwidth(kernels, candidates=[0.001, chosen, 100.0]) == chosen


def test_bandwidth_degenerate_inputs() -> None:
    same = [torch.full((5, 4), 3.0), torch.full((1, 4), 1.0)]
    h = select_bandwidth(same)
    assert math.isfinite(h) and h > 0
    kde = GaussianKDE.fit(torch.cat(same), torch.tensor([0] * 5 + [1]), num_classes=2)
    assert torch.isfinite(kde.log_density(torch.ones(2, 4), torch.tensor([0, 1]))).all()
    # a one-point class is skipped by the leave-one-out rule but still gets a density
    emb, labels = clustered(2, 40, 3, spread=1.0, norm=5.0, seed=5)
    kde = GaussianKDE.fit(torch.cat([emb, torch.zeros(1, 3)]), torch.cat([labels, torch.tensor([2])]), num_classes=3)
    assert kde.bandwidth > 0 and len(kde.kernels[2]) == 1
    with pytest.raises(UserError, match="fewer than 2"):
        select_bandwidth([torch.zeros(1, 3), torch.ones(1, 3)])


def test_fit_subset_and_determinism() -> None:
    emb, labels = clustered(3, 50, 4, spread=1.0, norm=5.0, seed=6)
    keep = labels != 2
    emb, labels = torch.cat([emb[keep], emb[~keep][:7]]), torch.cat([labels[keep], labels[~keep][:7]])
    a = GaussianKDE.fit(emb, labels, num_classes=3, points_per_class=20, seed=1)
    b = GaussianKDE.fit(emb, labels, num_classes=3, points_per_class=20, seed=1)
    c = GaussianKDE.fit(emb, labels, num_classes=3, points_per_class=20, seed=2)
    assert [len(k) for k in a.kernels] == [20, 20, 7]
    assert all(torch.equal(x, y) for x, y in zip(a.kernels, b.kernels)) and a.bandwidth == b.bandwidth
    assert not torch.equal(a.kernels[0], c.kernels[0])
    for cls, points in enumerate(a.kernels):  # kernel points are training embeddings of their own class
        assert is_subset(points, emb[labels == cls])
    small = a.subset(5, seed=3)
    assert [len(k) for k in small.kernels] == [5, 5, 5] and small.bandwidth == a.bandwidth
    assert all(is_subset(s, k) for s, k in zip(small.kernels, a.kernels))
    assert torch.equal(small.kernels[1], a.subset(5, seed=3).kernels[1])


def test_state_dict_round_trip(tmp_path: Path) -> None:
    emb, labels = clustered(2, 30, 4, spread=1.0, norm=5.0, seed=7)
    kde = GaussianKDE.fit(emb, labels, num_classes=2)
    torch.save(kde.state_dict(), tmp_path / "kde.pt")
    back = GaussianKDE.from_state_dict(torch.load(tmp_path / "kde.pt", weights_only=True))
    assert back.bandwidth == kde.bandwidth
    assert all(torch.equal(x, y) for x, y in zip(back.kernels, kde.kernels))
    z, c = torch.randn(6, 4), torch.tensor([0, 1] * 3)
    assert torch.equal(back.log_density(z, c), kde.log_density(z, c))
    assert kde.to("cpu").bandwidth == kde.bandwidth


def test_chunked_scoring_of_many_queries_matches_unchunked() -> None:
    emb, labels = clustered(2, 1000, 16, spread=1.0, norm=10.0, seed=8)
    kde = GaussianKDE.fit(emb, labels, num_classes=2, bandwidth=1.0)
    z = torch.randn(10_000, 16) + emb[:1].repeat(10_000, 1)
    classes = torch.randint(0, 2, (10_000,))
    full = kde.log_density(z, classes)
    parts = torch.cat([kde.log_density(z[i : i + 7], classes[i : i + 7]) for i in range(0, 70, 7)])
    torch.testing.assert_close(full[:70], parts)
    assert kde.log_density(z[:0], classes[:0]).shape == (0,)


def test_input_validation() -> None:
    emb, labels = clustered(2, 10, 4, spread=1.0, norm=5.0, seed=9)
    with pytest.raises(UserError, match=r"^bandwidth must be > 0, got -1\.0$"):
        GaussianKDE.fit(emb, labels, num_classes=2, bandwidth=-1.0)
    with pytest.raises(UserError, match="class 2 has no training embeddings"):
        GaussianKDE.fit(emb, labels, num_classes=3)
    with pytest.raises(ValueError, match=r"expected embeddings of shape \(n, d\), got \(20,\)"):
        GaussianKDE.fit(emb[:, 0], labels, num_classes=2)
    kde = GaussianKDE.fit(emb, labels, num_classes=2, bandwidth=1.0)
    with pytest.raises(ValueError, match=r"expected embeddings of shape \(n, 4\), got \(3, 5\)"):
        kde.log_density(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"classes in \[0, 2\)"):
        kde.log_density(torch.zeros(1, 4), torch.tensor([2]))
    with pytest.raises(ValueError, match="labels in"):
        GaussianKDE.fit(emb, labels + 1, num_classes=2)
    assert BandwidthSearch().num == 41


def test_accuracy_holds_when_float32_matmuls_may_use_reduced_precision() -> None:
    emb, labels = clustered(2, 200, 64, spread=3.0, norm=50.0, seed=10)
    kde = GaussianKDE.fit(emb, labels, num_classes=2, bandwidth=1.5)
    z, classes = emb[::20] + 0.5, torch.tensor([0, 1] * 10)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        got = kde.log_density(z, classes)
    finally:
        torch.set_float32_matmul_precision(before)
    assert got.dtype == torch.float32
    assert np.abs(got.double().numpy() - exact_log_density(kde, z, classes)).max() < 1e-3
