"""Two more built-in detectors on the pre-logits embedding, both differentiable (so the white, black and adaptive
threat models attack them as they attack the KDE):

- ``mahalanobis`` (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples and
  adversarial attacks"): class means and one shared covariance of the clean training embeddings;
- ``lid`` (Ma et al. 2018, "Characterizing adversarial subspaces using local intrinsic dimensionality"): the
  maximum-likelihood LID estimate from the distances to the nearest clean reference embeddings.

Both read the last layer's embedding only (the papers also combine several layers; not here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch

from pdm_bench.detectors import Detector
from pdm_bench.errors import UserError


@dataclass(kw_only=True)
class MahalanobisDetector(Detector):
    """Score: minus the squared Mahalanobis distance of the embedding to the predicted class's mean
    (``classes="predicted"``) or to the closest class mean (``"closest"``: Lee et al.'s confidence score), under the
    covariance shared by all classes (the training embeddings centred on their class means). ``regularization`` adds
    that times the mean variance to the covariance's diagonal (0: none)."""

    name = "mahalanobis"
    description = "Mahalanobis distance to the class mean, shared covariance (Lee et al. 2018)"
    differentiable = True

    points_per_class: int = 1000
    classes: str = "predicted"
    regularization: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.points_per_class, bool) or not isinstance(self.points_per_class, int) or self.points_per_class < 1:
            raise ValueError(f"points_per_class must be a positive integer, got {self.points_per_class!r}")
        if self.classes not in ("predicted", "closest"):
            raise ValueError(f"classes must be predicted or closest, got '{self.classes}'")
        if not (0.0 <= self.regularization < math.inf):
            raise ValueError(f"regularization must be a non-negative number, got {self.regularization}")
        self.means: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None

    @property
    def reference_points(self) -> int:
        return self.points_per_class

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> None:
        x = embeddings.detach().to(torch.float64)
        counts = torch.bincount(labels, minlength=num_classes)
        if (counts == 0).any():
            missing = ", ".join(str(c) for c in torch.nonzero(counts == 0).flatten().tolist())
            raise UserError(f"Detector 'mahalanobis': no training embedding of class {missing} to take a mean of")
        means = torch.zeros(num_classes, x.shape[1], dtype=torch.float64).index_add_(0, labels, x) / counts.unsqueeze(1)
        centred = x - means[labels]
        covariance = centred.T @ centred / len(x)
        covariance += self.regularization * covariance.diagonal().mean() * torch.eye(x.shape[1], dtype=torch.float64)
        factor, info = torch.linalg.cholesky_ex(covariance)
        if int(info) != 0:
            raise UserError(f"Detector 'mahalanobis': the covariance of {len(x)} embeddings in {x.shape[1]} dimensions "
                            f"is singular (too few points for the dimensions, or a constant direction); use more "
                            f"points (--detector-option points_per_class=N) or --detector-option regularization=1e-3")
        self.means = means.to(embeddings.device, torch.float32)
        self.precision = torch.cholesky_inverse(factor).to(embeddings.device, torch.float32)

    def squared_distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, K) squared Mahalanobis distance of each embedding to each class mean."""
        if self.means is None or self.precision is None:
            raise RuntimeError("the Mahalanobis detector is not fitted yet: call fit() first")
        means, precision = self.means.to(embeddings.device), self.precision.to(embeddings.device)
        diff = embeddings.unsqueeze(1) - means.unsqueeze(0)
        return ((diff @ precision) * diff).sum(dim=2)

    def torch_score(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        distances = self.squared_distances(embeddings)
        if self.classes == "closest":
            return -distances.min(dim=1).values
        return -distances.gather(1, classes.to(embeddings.device).long().unsqueeze(1)).squeeze(1)

    def score(self, embeddings: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.torch_score(embeddings, predicted)

    def summary(self) -> str:
        where = "the predicted class's mean" if self.classes == "predicted" else "the closest class mean"
        return f"Detector: Mahalanobis distance to {where}, shared covariance, {self.points_per_class} points per class"


@dataclass(kw_only=True)
class LIDDetector(Detector):
    """Score: minus the local intrinsic dimensionality of the embedding, Ma et al.'s maximum-likelihood estimate
    LID = -(1/k sum_i log(r_i / r_k))^-1 over the distances r_1 <= ... <= r_k to its ``k`` nearest clean references
    (``points_per_class`` training embeddings of each class; Ma et al. used the rest of a 100-image batch). Higher LID
    reads as adversarial. Differentiable through the distances, the neighbours being the nearest ones at the input."""

    name = "lid"
    description = "local intrinsic dimensionality from k nearest clean embeddings (Ma et al. 2018)"
    differentiable = True

    k: int = 20
    points_per_class: int = 100

    def __post_init__(self) -> None:
        for name, lowest in (("k", 2), ("points_per_class", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
        self.references: torch.Tensor | None = None

    @property
    def reference_points(self) -> int:
        return self.points_per_class

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> None:
        if len(embeddings) <= self.k:
            raise UserError(f"Detector 'lid': k={self.k} neighbours need more than {len(embeddings)} reference "
                            f"embeddings; lower k (--detector-option k=N) or raise points_per_class")
        self.references = embeddings.detach().to(torch.float32)

    def lid(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N,) LID estimate of each embedding (a reference at distance 0, the point itself, is left out)."""
        if self.references is None:
            raise RuntimeError("the LID detector is not fitted yet: call fit() first")
        distances = torch.cdist(embeddings, self.references.to(embeddings.device))
        distances = torch.where(distances > 1e-12, distances, torch.full_like(distances, math.inf))
        nearest = torch.topk(distances, self.k, dim=1, largest=False).values  # ascending
        ratios = torch.log(nearest / nearest[:, -1:]).mean(dim=1)
        return -1.0 / ratios.clamp(max=-1e-12)

    def torch_score(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return -self.lid(embeddings)

    def score(self, embeddings: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.torch_score(embeddings, predicted)

    def summary(self) -> str:
        total = 0 if self.references is None else len(self.references)
        return f"Detector: LID (maximum likelihood, k={self.k}) against {total} clean reference embeddings"
