"""The detector contract, and the built-in ``kde`` (Feinman et al.'s Gaussian KDE, :mod:`pdm_bench.kde`).

A detector reads the pre-logits embedding. It is a keyword-only dataclass whose fields are its options (like a
defense), and implements two methods: ``fit(embeddings, labels)`` on clean training embeddings (true labels) and
``score(embeddings, predicted) -> higher is normal``. A detector that the white and black box can attack also
implements ``torch_score`` (differentiable in the embeddings; same meaning as ``score``); C&W-wb optimises
against it. Register one through the entry-point group ``pdm_bench.detectors``.

Two optional extensions: a detector that reads more layers than the embedding returns a view of the model from
``view`` (:class:`pdm_bench.features.LayerFeatures`: its "embeddings" are then those features), and one trained on
an attack's examples as well (Ma et al.'s protocol) names the attack in ``head_attack`` and implements ``fit_head``;
the threat model makes the examples (see ``ThreatModel.fit_detector_head``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from pdm_bench.errors import UserError
from pdm_bench.inference import embed_and_predict

if TYPE_CHECKING:
    from pdm_bench.data import Dataset
    from pdm_bench.kde import GaussianKDE

MIN_BANDWIDTH = 1e-150  # a fixed KDE bandwidth's square under- or overflows outside [1e-150, 1e150]
Scored = tuple[torch.Tensor, torch.Tensor]  # (embeddings or a view's features (N, D), predicted class (N,))


@dataclass(kw_only=True)
class Detector(ABC):
    """Base class of every detector (built-in or plugin)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    differentiable: ClassVar[bool] = False  # True: ``torch_score`` is implemented (white and black box can run)
    progress: ClassVar[bool] = False  # set on the instance by fit_detector: a long ``fit`` may show a tqdm bar

    @property
    def reference_points(self) -> int:
        """Clean training embeddings per class that ``fit`` is given (a seeded choice)."""
        return 1000

    @property
    def label(self) -> str:
        """How rows and the report's columns name this detector: its name, with the options that differ from their
        defaults (``maxsoftmax[temperature=1000]``), so two configurations never share a column."""
        from pdm_bench.options import non_default_options, variant_label

        return variant_label(self.name, non_default_options(self))

    @abstractmethod
    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> None:
        """Learn what normal looks like from clean training ``embeddings`` (N, D) with their true ``labels``."""

    @abstractmethod
    def score(self, embeddings: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """(N,) normality of each embedding given the class the model predicted for it: higher is normal."""

    def torch_score(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``score``, differentiable in ``embeddings`` and on their device (for adaptive attacks)."""
        raise UserError(f"Detector '{self.name}' has no differentiable score: the white and black box attack it "
                        "through one (set differentiable = True and implement torch_score)")

    def view(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this detector reads it: ``model`` itself (its embedding), or a view of it.

        The view contract (checked by :func:`check_view` before any training): an ``nn.Module`` with
        ``embed_and_logits(x) -> (features (N, D), raw logits (N, C))`` whose logits are ``model``'s (the same
        predictions), the attribute ``logit_sign`` (+1, or -1 for a model that predicts with the negated logits), and a
        top-level child module named ``embedding`` (ART reads activations by that name): see
        :class:`pdm_bench.features.LayerFeatures`, which wraps a model so."""
        return model

    @property
    def head_attack(self) -> str | None:
        """The gray-box attack whose examples train this detector's second stage (None: it has none)."""
        return None

    @property
    def head_images(self) -> int:
        """Held-out clean training images the threat model attacks to train the second stage."""
        return 0

    def fit_head(self, *, normal: Scored, noisy: Scored, adversarial: Scored) -> str:
        """Train the second stage on (features, predicted class) of clean, noisy and adversarial images; one line
        saying what it learnt."""
        raise NotImplementedError(f"detector '{self.name}' has no second stage to train")

    def run_key(self) -> dict[str, Any]:
        """What identifies the fitted detector in a run's id."""
        return {"detector": self.name, "detector_options": asdict(self)}

    def fitted_values(self) -> dict[str, float]:
        """Numbers the fit chose, recorded with each run's clean rows (e.g. the KDE's bandwidth)."""
        return {}

    def summary(self) -> str:
        """One line for the CLI after fitting."""
        return f"Detector: {self.name}"

    def check_data(self, data: Dataset) -> None:
        """Refuse, before any training, options that do not fit the data set (default: none checked)."""

    def reference_count(self, data: Dataset) -> int:
        """How many reference embeddings ``fit`` gets on ``data`` (``reference_points`` per class at most)."""
        counts = np.bincount(data.y_train, minlength=data.num_classes)
        return int(np.minimum(counts, self.reference_points).sum())


@dataclass(kw_only=True)
class KDEDetector(Detector):
    """Feinman et al.'s per-class Gaussian KDE on the embedding; the score is the log-density under the predicted
    class. ``bandwidth=None``: maximum leave-one-out likelihood on the clean training embeddings."""

    name = "kde"
    description = "Gaussian KDE per class (Feinman et al. 2017; the paper's detector)"
    differentiable = True

    points_per_class: int = 1000
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.points_per_class, bool) or not isinstance(self.points_per_class, int) \
                or self.points_per_class < 1:
            raise ValueError(f"points_per_class must be a positive integer, got {self.points_per_class!r}")
        if self.bandwidth is not None and not (0 < self.bandwidth < float("inf")):
            raise ValueError(f"bandwidth must be a positive finite number, got {self.bandwidth}")
        if self.bandwidth is not None and not (MIN_BANDWIDTH <= self.bandwidth <= 1 / MIN_BANDWIDTH):
            raise ValueError(f"bandwidth must be between {MIN_BANDWIDTH:g} and {1 / MIN_BANDWIDTH:g} (its square "
                             f"must stay a finite positive float), got {self.bandwidth}")
        self.kde: GaussianKDE | None = None

    @property
    def reference_points(self) -> int:
        return self.points_per_class

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> None:
        from pdm_bench.kde import GaussianKDE

        self.kde = GaussianKDE.fit(embeddings, labels, num_classes=num_classes, points_per_class=self.points_per_class,
                                   bandwidth=self.bandwidth, seed=seed, progress=self.progress)

    def fitted(self) -> GaussianKDE:
        if self.kde is None:
            raise RuntimeError("the KDE detector is not fitted yet: call fit() first")
        return self.kde

    def score(self, embeddings: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        return self.fitted().log_density(embeddings, predicted)

    def torch_score(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.fitted().log_density(embeddings, classes)

    def run_key(self) -> dict[str, Any]:
        key: dict[str, Any] = {"bandwidth": round(self.fitted().bandwidth, 8)}  # as before detectors were components
        if self.points_per_class != 1000:  # other kernel points, other scores: another run (the default's id as before)
            key["points_per_class"] = self.points_per_class
        return key if self.name == "kde" else {**key, "detector": self.name}  # a subclass (plugin) is another detector

    def fitted_values(self) -> dict[str, float]:
        return {"bandwidth": self.fitted().bandwidth}

    def summary(self) -> str:
        how = "fixed" if self.bandwidth else "max leave-one-out likelihood on clean training embeddings"
        return (f"Detector: Gaussian KDE, {self.points_per_class} points per class, bandwidth "
                f"{self.fitted().bandwidth:.4g} ({how})")


def check_view(detector: Detector, model: torch.nn.Module, *, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Refuse, in one line, a detector whose :meth:`Detector.view` of ``model`` breaks the view contract (checked on a
    batch of zeros, on a copy of the detector, so nothing of it is changed)."""
    import copy

    from pdm_bench.contract import EMBEDDING_LAYER

    owner = f"Detector '{detector.name}': its view of the model"
    training = model.training  # in eval mode for the check: a forward pass in train mode would move BatchNorm's stats
    try:
        view = copy.deepcopy(detector).view(model)
        device = next(iter(model.parameters())).device
        view.eval()
        model.eval()
        with torch.no_grad():
            features, logits = view.embed_and_logits(torch.zeros(2, *input_shape, device=device))  # type: ignore[operator]
            _, own = model.embed_and_logits(torch.zeros(2, *input_shape, device=device))  # type: ignore[operator]
    except UserError:
        raise
    except Exception as error:  # a plugin's view: any failure is a broken contract
        raise UserError(f"{owner} failed on a batch of zeros: {type(error).__name__}: {error}") from None
    finally:
        model.train(training)
    problems = []
    if not isinstance(view, torch.nn.Module) or not isinstance(getattr(view, EMBEDDING_LAYER, None), torch.nn.Module):
        problems.append(f"must be an nn.Module with a top-level '{EMBEDDING_LAYER}' module")
    if getattr(view, "logit_sign", None) not in (1, -1, 1.0, -1.0):
        problems.append("must have logit_sign +1 or -1")
    if not (isinstance(features, torch.Tensor) and features.ndim == 2 and len(features) == 2):
        problems.append("embed_and_logits must return features of shape (N, D)")
    if not (isinstance(logits, torch.Tensor) and tuple(logits.shape) == (2, num_classes)
            and torch.allclose(logits, own, atol=1e-4)):
        problems.append(f"embed_and_logits must return the model's own logits, shape (N, {num_classes})")
    if problems:
        raise UserError(f"{owner} breaks the view contract (see Detector.view): {'; '.join(problems)}")


def kernel_indices(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """A seeded choice of up to ``per_class`` training indices of each class (a detector's reference points)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        chosen.append(members if len(members) <= per_class else rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def reference_embeddings(model: torch.nn.Module, dataset: Dataset, *, per_class: int, device: torch.device,
                         seed: int = 0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s embeddings of a seeded choice of up to ``per_class`` clean training images per class, and their
    true labels: what a detector is fitted on."""
    index = kernel_indices(dataset.y_train, dataset.num_classes, per_class, seed)
    embeddings, _ = embed_and_predict(model, dataset.x_train[index], device=device,
                                      progress="detector: reference embeddings" if progress else None)
    return embeddings, torch.from_numpy(dataset.y_train[index])


def fit_detector(detector: Detector, model: torch.nn.Module, dataset: Dataset, *, device: torch.device,
                 seed: int = 0, progress: bool = False) -> Detector:
    """Fit ``detector`` on the reference embeddings (see :func:`reference_embeddings`) of ``model`` as the detector
    reads it (:meth:`Detector.view`); ``progress``: bars for the embedding pass and (through ``detector.progress``)
    for a fit that shows one."""
    model = detector.view(model)
    embeddings, labels = reference_embeddings(model, dataset, per_class=detector.reference_points, device=device,
                                              seed=seed, progress=progress)
    object.__setattr__(detector, "progress", progress)  # works on a frozen dataclass too
    detector.fit(embeddings, labels, num_classes=dataset.num_classes, seed=seed)
    return detector
