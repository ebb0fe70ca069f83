"""One evaluation of one trained model under one threat model: the sampled test images, the fitted detector, where
rows and adversarial examples go. Threat models receive an :class:`Evaluation` and return its rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pdm_bench.config import config_key
from pdm_bench.data import Dataset
from pdm_bench.errors import UserError
from pdm_bench.inference import embed_and_predict
from pdm_bench.metrics import Interval, detection_auc
from pdm_bench.results import Metric, ResultRow, ResultsStore, now
from pdm_bench.storage import chunked_array

if TYPE_CHECKING:
    from pdm_bench.detectors import Detector
    from pdm_bench.training import TrainedModel

Log = Callable[[str], None]


def sample_indices(dataset: Dataset, n_samples: int | None, seed: int, *, default: int = 1000) -> np.ndarray:
    """N test images drawn without replacement (all of them, in order, when N is the test set's size).

    ``n_samples=None`` takes ``min(default, test set size)`` (the preset's ``attack_samples``).
    """
    total = len(dataset.y_test)
    n = min(default, total) if n_samples is None else n_samples
    if not 0 < n <= total:
        raise UserError(f"--n-samples must be between 1 and the test set's size {total} ({dataset.name}), got {n}")
    return np.arange(total) if n == total else np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


@dataclass
class Evaluation:
    """One threat-model run of one trained model: where its rows and adversarial examples go."""

    dataset: Dataset
    trained: TrainedModel
    threat: str
    detector: Detector
    indices: np.ndarray
    results: ResultsStore
    device: torch.device
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    log: Log = print
    # Images per stored chunk of an attack's output (not part of the run id: the images do not depend on it).
    chunk_size: int = 200
    progress: bool = False

    def __post_init__(self) -> None:
        self.threat = getattr(self.threat, "value", self.threat)  # a Threat member names its value, as a plugin's name

    @property
    def run_id(self) -> str:
        """Same model, threat, samples, detector and settings -> same id, so a rerun skips finished attacks."""
        return config_key({"model": self.trained.key, "threat": self.threat, "samples": self.indices.tolist(),
                           **self.detector.run_key(), "seed": self.seed, **self.settings})

    def row(self, attack: str, metric: str, value: float, n: int) -> ResultRow:
        plan = self.trained.plan
        return ResultRow(self.dataset.name, plan.preset, plan.seed, self.trained.defense.name, self.threat,
                         attack, metric, float(value), int(n), self.run_id, now(), self.detector.name)

    def score(self, model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted class and detector score under it (high = normal) for each input, on ``model``."""
        embeddings, predictions = embed_and_predict(model, x, device=self.device)
        return predictions.numpy(), self.detector.score(embeddings, predictions).numpy()

    def cached_adversarials(self, attack: str, params: dict[str, Any],
                            make: Callable[[slice], np.ndarray]) -> tuple[np.ndarray, float]:
        """Adversarial examples for the run's images, stored under the results directory 200 at a time (see
        :func:`pdm_bench.storage.chunked_array`), and the seconds spent making them (NaN when all were stored)."""
        key = config_key({"run": self.run_id, "attack": attack, **params})
        path = self.results.directory / "adversarial" / f"{self.dataset.name.replace('/', '_')[-40:]}-{attack}-{key}.npy"
        shape = (len(self.indices), *self.dataset.input_shape)
        return chunked_array(path, shape, make, chunk_size=self.chunk_size, label=attack, log=self.log,
                             progress=self.progress)

    def detection_auc(self, label: str, normal: np.ndarray, adversarial: np.ndarray) -> Interval:
        """Pang's AUC with its bootstrap interval; a warning when every score ties (the AUC is 0.5 by construction:
        e.g. a fixed bandwidth so small that every density underflows)."""
        scores = np.concatenate([normal, adversarial])
        if len(scores) > 1 and np.unique(scores).size == 1:
            self.log(f"warning: {label}: all {len(scores)} detector scores are equal ({scores[0]:.4g}), so the AUC is "
                     f"0.5 by construction; check the detector's settings ({self.detector.summary()})")
        return detection_auc(normal, adversarial, seed=self.seed)

    def record_clean(self, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The clean images' predictions and scores; their accuracy and the detector's fitted values as rows (once)."""
        clean_pred, clean_score = self.score(model, x)
        rows = [self.row("clean", Metric.ACCURACY, float((clean_pred == y).mean()), len(y)),
                *(self.row("clean", metric, value, len(y)) for metric, value in self.detector.fitted_values().items())]
        self.results.append(rows, completes="clean", legacy=("clean", Metric.ACCURACY))
        return clean_pred, clean_score
