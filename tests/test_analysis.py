"""Embedding geometry: the Eq. 4 terms against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdm_bench.analysis import embedding_margin, jacobian_frobenius, measure_geometry


class Linear(torch.nn.Module):
    """embed(x) = W x (flattened): its Jacobian is W for every input."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.register_buffer("logit_sign", torch.ones(()))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(x)
        return z, z


def test_margin_is_the_smallest_distance_between_classes() -> None:
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [3.0, 4.0], [3.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    smallest, mean = embedding_margin(points, labels, chunk=3)
    distances = [5.0, math.hypot(2.9, 4.0), math.hypot(2.9, 4.0), math.hypot(2.9, 5.0)]  # each point to its nearest
    assert smallest == pytest.approx(math.hypot(2.9, 4.0))
    assert mean == pytest.approx(np.mean(distances))


def test_jacobian_norm_of_a_linear_map_is_its_frobenius_norm() -> None:
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    model = Linear(weight)
    x = torch.rand(5, 1, 2, 2)
    assert jacobian_frobenius(model, x, device=torch.device("cpu"), batch_size=2) == pytest.approx(
        float(weight.norm()), rel=1e-5)


def test_geometry_of_two_separated_classes() -> None:
    model = Linear(torch.eye(4))
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = (rng.normal(0, 0.01, (40, 4)) + y[:, None] * 5.0).astype(np.float32).reshape(40, 1, 2, 2)
    geometry = measure_geometry(model, x, y, device=torch.device("cpu"), points=30, tsne=False)
    assert geometry.n == 30 and geometry.tsne is None
    assert geometry.jacobian_frobenius == pytest.approx(2.0)  # ||I_4||_F
    assert geometry.margin == pytest.approx(10.0, abs=0.2)  # the classes sit 5 * sqrt(4) apart
    assert geometry.bound == pytest.approx(geometry.margin / 2.0)
    assert geometry.davies_bouldin < 0.05
