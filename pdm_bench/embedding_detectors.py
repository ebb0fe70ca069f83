"""Two more built-in detectors, both differentiable (so the white, black and adaptive threat models attack them as
they attack the KDE):

- ``mahalanobis`` (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples and
  adversarial attacks"): class means and one shared covariance of the clean training embeddings;
- ``lid`` (Ma et al. 2018, "Characterizing adversarial subspaces using local intrinsic dimensionality"): the
  maximum-likelihood LID estimate from the distances to the nearest clean reference embeddings.

By default both read the embedding alone. ``layers=stem,stage1,...`` adds the channel means of those layers
(:mod:`pdm_bench.features`), one score per layer; ``head_attack=fgsm-0.1`` (any gray-box attack) trains a logistic
regression on the per-layer scores of that attack's examples against clean and noisy ones, as both papers did
(:mod:`pdm_bench.logistic_head`); without it the per-layer scores are summed. ``input_noise=EPS`` (Mahalanobis) adds
Lee et al.'s input pre-processing.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

import torch

from pdm_bench.detectors import Detector, Scored
from pdm_bench.errors import UserError
from pdm_bench.features import Adjust, LayerFeatures, parse_layers, split_layers
from pdm_bench.logistic_head import LogisticHead

if TYPE_CHECKING:
    from pdm_bench.data import Dataset

# Options added after run ids existed: left out of the id at their defaults, so the embedding-only ids stay the same
_ADDED_OPTIONS = ("layers", "head_attack", "head_images", "input_noise")


@dataclass(kw_only=True)
class LayeredDetector(Detector):
    """A detector with one score per layer it reads (``layers``, then the embedding), combined by their sum or by a
    logistic head trained on ``head_attack``'s examples of ``head_images`` held-out training images. Subclasses
    implement ``fit_layer`` and ``layer_score``."""

    differentiable = True

    layers: str = ""
    head_attack: str = ""  # type: ignore[assignment]  # an option here; the base class's read-only property
    head_images: int = 500  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.layer_names = parse_layers(self.layers)
        if isinstance(self.head_images, bool) or not isinstance(self.head_images, int) or self.head_images < 10:
            raise ValueError(f"head_images must be an integer >= 10, got {self.head_images!r}")
        self.reading: LayerFeatures | None = None
        self.sizes: tuple[int, ...] = ()
        self.head: LogisticHead | None = None

    def view(self, model: torch.nn.Module) -> torch.nn.Module:
        adjust = self.input_adjust()
        if not self.layer_names and adjust is None:
            return model
        if not (isinstance(model, LayerFeatures) and model.layers == self.layer_names and model.adjust == adjust):
            model = LayerFeatures(model, self.layer_names, adjust=adjust)
        self.reading = model
        return model

    def input_adjust(self) -> Adjust | None:
        """How the view changes an input before reading its features (None: it reads the input as it is)."""
        return None

    def unfit(self) -> None:
        """Forget a previous fit (before ``fit_layer`` is called for each layer)."""

    @abstractmethod
    def fit_layer(self, layer: int, features: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> None:
        """Learn layer ``layer``'s normal features (N, D_layer) from clean training images with true ``labels``."""

    @abstractmethod
    def layer_score(self, layer: int, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(N,) normality of layer ``layer``'s features under ``classes`` (higher: normal); differentiable."""

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> None:
        if self.layer_names and (self.reading is None or not self.reading.layer_sizes):
            raise RuntimeError(f"detector '{self.name}' reads layers {self.layers}: fit it through fit_detector")
        self.sizes = self.reading.layer_sizes if self.layer_names and self.reading is not None else ()
        self.unfit()
        self.head = None
        for layer, block in enumerate(split_layers(embeddings.detach(), self.sizes)):
            self.fit_layer(layer, block, labels, num_classes=num_classes)

    def layer_scores(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(N, L) the score of each layer read (the embedding last)."""
        blocks = split_layers(embeddings, self.sizes)
        return torch.stack([self.layer_score(k, block, classes) for k, block in enumerate(blocks)], dim=1)

    def torch_score(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        scores = self.layer_scores(embeddings, classes)
        return -self.head.decision(scores) if self.head is not None else scores.sum(dim=1)

    def score(self, embeddings: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.torch_score(embeddings, predicted)

    def fit_head(self, *, normal: Scored, noisy: Scored, adversarial: Scored) -> str:
        with torch.no_grad():
            scores = [self.layer_scores(features, predicted) for features, predicted in (normal, noisy, adversarial)]
        target = torch.cat([torch.zeros(len(scores[0]) + len(scores[1]), dtype=torch.bool),
                            torch.ones(len(scores[2]), dtype=torch.bool)])
        self.head = LogisticHead.fit(torch.cat(scores), target)
        names = [*self.layer_names, "embedding"]
        weights = ", ".join(f"{n} {w:+.2f}" for n, w in zip(names, self.head.weights.tolist()))
        return f"logistic head on {self.head_attack}: weights (standardised scores; + reads as adversarial) {weights}"

    def run_key(self) -> dict[str, Any]:
        defaults = {f.name: f.default for f in fields(self) if f.name in _ADDED_OPTIONS}
        options = {k: v for k, v in asdict(self).items() if k not in defaults or defaults[k] != v}
        return {"detector": self.name, "detector_options": options}  # unchanged ids for the embedding-only default

    @property
    def label(self) -> str:
        """``lid`` by default; ``lid[stem+stage1; head fgsm-0.1]`` for a multi-layer variant with a head, so both can
        be columns of one report."""
        parts = ["+".join(self.layer_names)] if self.layer_names else []
        parts += [f"head {self.head_attack}"] if self.head_attack else []
        parts += [f"input noise {self.input_noise:g}"] if getattr(self, "input_noise", 0.0) else []  # type: ignore[attr-defined]
        return f"{self.name}[{'; '.join(parts)}]" if parts else self.name

    def describe_layers(self) -> str:
        read = f"layers {', '.join(self.layer_names)} and the embedding" if self.layer_names else "the embedding"
        how = f"a logistic head trained on {self.head_attack}" if self.head_attack else "summed over layers"
        return read if not self.layer_names and not self.head_attack else f"{read}, {how}"


def _positive_int(owner: LayeredDetector, name: str, lowest: int) -> None:
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")


@dataclass(kw_only=True)
class MahalanobisDetector(LayeredDetector):
    """Score: minus the squared Mahalanobis distance of the embedding to the predicted class's mean
    (``classes="predicted"``) or to the closest class mean (``"closest"``: Lee et al.'s confidence score), under the
    covariance shared by all classes (the training embeddings centred on their class means). ``regularization`` adds
    that times the mean variance to the covariance's diagonal (0: none). Per layer with ``layers``."""

    name = "mahalanobis"
    description = "Mahalanobis distance to the class mean, shared covariance (Lee et al. 2018)"

    points_per_class: int = 1000
    classes: str = "predicted"
    regularization: float = 0.0
    input_noise: float = 0.0  # Lee et al.'s input pre-processing: the step size (0: off)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self, "points_per_class", 1)
        if self.classes not in ("predicted", "closest"):
            raise ValueError(f"classes must be predicted or closest, got '{self.classes}'")
        for name in ("regularization", "input_noise"):
            if not (0.0 <= getattr(self, name) < math.inf):
                raise ValueError(f"{name} must be a non-negative number, got {getattr(self, name)}")
        self.gaussians: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: (class means, shared precision)

    def unfit(self) -> None:
        self.gaussians = []

    def input_adjust(self) -> Adjust | None:
        return self.nudge if self.input_noise > 0 else None

    def nudge(self, features_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Lee et al.'s input pre-processing: per layer, the features of ``x - input_noise * sign(grad)``, the
        gradient of that layer's distance to the closest class mean; the sign is constant almost everywhere, so an
        attack's gradient passes through the step unchanged. Before the fit (the Gaussians are fitted on clean
        features as they are) the features of ``x``."""
        if not self.gaussians:
            return features_of(x)
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            blocks = split_layers(features_of(probe), self.sizes)
            closest = [self.squared_distances(block, k).min(dim=1).values.sum() for k, block in enumerate(blocks)]
            steps = [torch.autograd.grad(d, probe, retain_graph=k < len(closest) - 1)[0].sign()
                     for k, d in enumerate(closest)]
        return torch.cat([split_layers(features_of(x - self.input_noise * step), self.sizes)[k]
                          for k, step in enumerate(steps)], dim=1)

    @property
    def reference_points(self) -> int:
        return self.points_per_class

    def fit_layer(self, layer: int, features: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> None:
        x = features.to(torch.float64)
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
            where = f" of layer {self.layer_names[layer]}" if layer < len(self.layer_names) else ""
            raise UserError(f"Detector 'mahalanobis': the covariance{where} of {len(x)} embeddings in {x.shape[1]} "
                            f"dimensions is singular (too few points for the dimensions, or a constant direction); use "
                            f"more points (--detector-option points_per_class=N) or --detector-option regularization=1e-3")
        self.gaussians.append((means.to(features.device, torch.float32),
                               torch.cholesky_inverse(factor).to(features.device, torch.float32)))

    def squared_distances(self, embeddings: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """(N, K) squared Mahalanobis distance of each of ``layer``'s features (default: the embedding) to each
        class mean."""
        if not self.gaussians:
            raise RuntimeError("the Mahalanobis detector is not fitted yet: call fit() first")
        means, precision = (t.to(embeddings.device) for t in self.gaussians[layer])
        diff = embeddings.unsqueeze(1) - means.unsqueeze(0)
        return ((diff @ precision) * diff).sum(dim=2)

    def layer_score(self, layer: int, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        distances = self.squared_distances(features, layer)
        if self.classes == "closest":
            return -distances.min(dim=1).values
        return -distances.gather(1, classes.to(features.device).long().unsqueeze(1)).squeeze(1)

    def summary(self) -> str:
        where = "the predicted class's mean" if self.classes == "predicted" else "the closest class mean"
        nudged = f", input pre-processing {self.input_noise:g}" if self.input_noise else ""
        return (f"Detector: Mahalanobis distance to {where}, shared covariance, {self.points_per_class} points per "
                f"class; reads {self.describe_layers()}{nudged}")


@dataclass(kw_only=True)
class LIDDetector(LayeredDetector):
    """Score: minus the local intrinsic dimensionality of the embedding, Ma et al.'s maximum-likelihood estimate
    LID = -(1/k sum_i log(r_i / r_k))^-1 over the distances r_1 <= ... <= r_k to its ``k`` nearest clean references
    (``points_per_class`` training embeddings of each class; Ma et al. used the rest of a 100-image batch). Higher LID
    reads as adversarial. Differentiable through the distances, the neighbours being the nearest ones at the input.
    Per layer with ``layers``."""

    name = "lid"
    description = "local intrinsic dimensionality from k nearest clean embeddings (Ma et al. 2018)"

    k: int = 20
    points_per_class: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self, "k", 2)
        _positive_int(self, "points_per_class", 1)
        self.references: list[torch.Tensor] = []  # per layer

    def unfit(self) -> None:
        self.references = []

    def check_data(self, data: Dataset) -> None:
        if (count := self.reference_count(data)) <= self.k:
            raise UserError(f"Detector 'lid': k={self.k} neighbours need more than the {count} reference embeddings "
                            f"it gets on {data.name} (points_per_class={self.points_per_class}); lower k "
                            f"(--detector-option k=N) or raise points_per_class")

    @property
    def reference_points(self) -> int:
        return self.points_per_class

    def fit_layer(self, layer: int, features: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> None:
        if len(features) <= self.k:
            raise UserError(f"Detector 'lid': k={self.k} neighbours need more than {len(features)} reference "
                            f"embeddings; lower k (--detector-option k=N) or raise points_per_class")
        self.references.append(features.to(torch.float32))

    def lid(self, embeddings: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """(N,) LID estimate of each of ``layer``'s features (default: the embedding; a reference at distance 0,
        the point itself, is left out)."""
        if not self.references:
            raise RuntimeError("the LID detector is not fitted yet: call fit() first")
        distances = torch.cdist(embeddings, self.references[layer].to(embeddings.device))
        distances = torch.where(distances > 1e-12, distances, torch.full_like(distances, math.inf))
        nearest = torch.topk(distances, self.k, dim=1, largest=False).values  # ascending
        ratios = torch.log(nearest / nearest[:, -1:]).mean(dim=1)
        return -1.0 / ratios.clamp(max=-1e-12)

    def layer_score(self, layer: int, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return -self.lid(features, layer)

    def summary(self) -> str:
        total = 0 if not self.references else len(self.references[0])
        return (f"Detector: LID (maximum likelihood, k={self.k}) against {total} clean reference embeddings; reads "
                f"{self.describe_layers()}")
