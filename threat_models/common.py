"""What every threat model shares: the KDE detector on a trained model, sample selection, the adversarial cache."""

from __future__ import annotations

import os
import shutil
import time
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
from pdm_bench.records import atomic_write_text
from pdm_bench.results import ResultRow, ResultsStore, file_lock, now
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
    # Images per stored chunk of an attack's output (not part of the run id: the images do not depend on it).
    chunk_size: int = 200

    @property
    def run_id(self) -> str:
        """Same model, threat, samples, detector and settings -> same id, so a rerun skips finished attacks."""
        return config_key({"model": self.trained.key, "threat": self.threat.value, "samples": self.indices.tolist(),
                           "bandwidth": round(self.kde.bandwidth, 8), "seed": self.seed, **self.settings})

    def row(self, attack: str, metric: str, value: float, n: int) -> ResultRow:
        plan = self.trained.plan
        return ResultRow(self.dataset.name, plan.preset, plan.seed, self.trained.defense.name, self.threat.value,
                         attack, metric, float(value), int(n), self.run_id, now())

    def cached_adversarials(self, attack: str, params: dict[str, Any],
                            make: Callable[[slice], np.ndarray]) -> tuple[np.ndarray, float]:
        """Adversarial examples for the run's images, stored under the results directory, and the seconds spent
        making them (NaN when all came from the store).

        ``make(part)`` attacks the images ``part`` of the run's sample. They are made ``chunk_size`` at a time and
        each finished chunk is kept on disk at once, so a run killed in a long attack resumes at the first
        unfinished chunk (the attacks are per image: chunking does not change the images). Processes running the
        same attack share its chunks: each takes a chunk no other is making (a lock per chunk), then waits for the
        chunks others hold, so N processes on one long attack finish it about N times sooner.
        """
        key = config_key({"run": self.run_id, "attack": attack, **params})
        path = self.results.directory / "adversarial" / f"{self.dataset.name.replace('/', '_')[-40:]}-{attack}-{key}.npy"
        n = len(self.indices)
        expected = (n, *self.dataset.input_shape)
        whole = _load_array(path, expected)
        if whole is not None:
            return whole, float("nan")
        parts_dir = path.with_name(f"{path.stem}.parts")
        parts = [slice(lo, min(lo + self.chunk_size, n)) for lo in range(0, n, self.chunk_size)]
        pieces: dict[int, np.ndarray] = {}
        for wait in (False, True):  # first the chunks nobody else holds, then wait for the others'
            for part in parts:
                if part.start in pieces:
                    continue
                shape = (part.stop - part.start, *expected[1:])
                piece_path = parts_dir / f"{part.start:07d}-{part.stop:07d}.npy"
                piece = _load_array(piece_path, shape)
                if piece is None:
                    with file_lock(piece_path.with_suffix(".lock"), wait=wait) as held:
                        if not held:
                            continue  # another process is making it
                        whole = _load_array(path, expected)
                        if whole is not None:  # another process finished the attack meanwhile
                            shutil.rmtree(parts_dir, ignore_errors=True)
                            return whole, float("nan")
                        piece = _load_array(piece_path, shape)  # it may have been finished while we waited
                        if piece is None:
                            piece = self._make_chunk(attack, make, part, shape, piece_path, n)
                pieces[part.start] = piece
        adversarial = np.concatenate([pieces[part.start] for part in parts])
        seconds = _sum_seconds(parts_dir, parts)
        _save_array(path, adversarial)
        shutil.rmtree(parts_dir, ignore_errors=True)
        return adversarial, seconds

    def _make_chunk(self, attack: str, make: Callable[[slice], np.ndarray], part: slice, shape: tuple[int, ...],
                    piece_path: Path, n: int) -> np.ndarray:
        started = time.perf_counter()
        piece = np.asarray(make(part), dtype=np.float32)
        if piece.shape != shape:
            raise RuntimeError(f"expected adversarial examples of shape {shape}, got {piece.shape}")
        # The time first: a stored piece always has its time.
        atomic_write_text(piece_path.with_suffix(".seconds"), f"{time.perf_counter() - started:.3f}\n")
        _save_array(piece_path, piece)
        if n > self.chunk_size:
            self.log(f"{attack}: images {part.start + 1}-{part.stop} of {n} done and stored")
        return piece


def _sum_seconds(parts_dir: Path, parts: list[slice]) -> float:
    return sum(_read_seconds(parts_dir / f"{part.start:07d}-{part.stop:07d}.seconds") for part in parts)


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The array stored at ``path`` if it is there, readable and of ``shape``; else None (then it is made again)."""
    if not path.exists():
        return None
    try:
        stored = np.load(path)
    except (OSError, ValueError):
        return None  # a torn or foreign file
    return stored if stored.shape == shape else None


def _save_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _read_seconds(path: Path) -> float:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return float("nan")
