"""What every threat model shares: the KDE detector on a trained model, sample selection, the adversarial cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdm_bench.config import config_key
from pdm_bench.data import Dataset
from pdm_bench.errors import UserError
from pdm_bench.kde import GaussianKDE
from pdm_bench.results import ResultRow, ResultsStore, now
from pdm_bench.training import TrainedModel

Log = Callable[[str], None]


class ThreatModel(str, Enum):
    """The closed set of threat models (Appendix D)."""

    GRAY = "gray"
    WHITE = "white"
    BLACK = "black"


@torch.no_grad()
def embed_and_predict(model: torch.nn.Module, x: np.ndarray | torch.Tensor, *, device: torch.device,
                      batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and predicted classes (from the logits the model predicts with) in one forward pass, on the CPU."""
    model.eval()
    embeddings, predictions = [], []
    for chunk in torch.as_tensor(x).split(batch_size):
        z, raw = model.embed_and_logits(chunk.to(device))
        embeddings.append(z.cpu())
        predictions.append((raw * model.logit_sign).argmax(dim=1).cpu())
    return torch.cat(embeddings), torch.cat(predictions)


def kernel_indices(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """A seeded choice of up to ``per_class`` training indices of each class (the KDE's kernel points)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        chosen.append(members if len(members) <= per_class else rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def fit_detector(trained: TrainedModel, dataset: Dataset, *, device: torch.device, points_per_class: int = 1000,
                 bandwidth: float | None = None, seed: int = 0) -> GaussianKDE:
    """Feinman's KDE on clean training embeddings (true labels); the bandwidth is chosen from them alone."""
    index = kernel_indices(dataset.y_train, dataset.num_classes, points_per_class, seed)
    embeddings, _ = embed_and_predict(trained.model, dataset.x_train[index], device=device)
    return GaussianKDE.fit(embeddings, torch.from_numpy(dataset.y_train[index]), num_classes=dataset.num_classes,
                           points_per_class=points_per_class, bandwidth=bandwidth, seed=seed)


def score(trained: TrainedModel, kde: GaussianKDE, x: np.ndarray, *, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and KDE log-density under it (high = normal) for each input."""
    embeddings, predictions = embed_and_predict(trained.model, x, device=device)
    return predictions.numpy(), kde.log_density(embeddings, predictions).numpy()


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
    threat: ThreatModel
    kde: GaussianKDE
    indices: np.ndarray
    results: ResultsStore
    device: torch.device
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    log: Log = print

    @property
    def run_id(self) -> str:
        """Same model, threat, samples, detector and settings -> same id, so a rerun skips finished attacks."""
        return config_key({"model": self.trained.key, "threat": self.threat.value, "samples": self.indices.tolist(),
                           "bandwidth": round(self.kde.bandwidth, 8), "seed": self.seed, **self.settings})

    def row(self, attack: str, metric: str, value: float, n: int) -> ResultRow:
        plan = self.trained.plan
        return ResultRow(self.dataset.name, plan.preset, plan.seed, self.trained.defense.name, self.threat.value,
                         attack, metric, float(value), int(n), self.run_id, now())

    def cached_adversarials(self, attack: str, params: dict[str, Any], make: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """``make()``'s output, stored under the results directory so a rerun or a resumed run reuses it."""
        key = config_key({"run": self.run_id, "attack": attack, **params})
        path = self.results.directory / "adversarial" / f"{self.dataset.name.replace('/', '_')[-40:]}-{attack}-{key}.npy"
        expected = (len(self.indices), *self.dataset.input_shape)
        if path.exists():
            try:
                cached = np.load(path)
                if cached.shape == expected:
                    return cached, True
            except (OSError, ValueError):
                pass  # a torn or foreign file: regenerate
        adversarial = np.asarray(make(), dtype=np.float32)
        if adversarial.shape != expected:
            raise RuntimeError(f"expected adversarial examples of shape {expected}, got {adversarial.shape}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, adversarial)
        os.replace(tmp, path)
        return adversarial, False
