"""One evaluation of one trained model under one threat model: the sampled test images, the fitted detector, where
rows and adversarial examples go. Threat models receive an :class:`Evaluation` and return its rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pdm_bench.config import config_key
from pdm_bench.data import Dataset
from pdm_bench.errors import UserError
from pdm_bench.inference import embed_and_predict
from pdm_bench.metrics import FPR_LEVELS, Interval, detection_auc, kept_pairs, operating_point, rejection_threshold
from pdm_bench.results import Metric, ResultRow, ResultsStore, fpr_metric, now
from pdm_bench.storage import chunked_array, load_array

if TYPE_CHECKING:
    from pdm_bench.detectors import Detector
    from pdm_bench.training import TrainedModel

Log = Callable[[str], None]
CALIBRATION_IMAGES = 1000  # clean test images, none of them attacked, that set the detector's rejection thresholds


def sample_indices(dataset: Dataset, n_samples: int | None, seed: int, *, default: int = 1000) -> np.ndarray:
    """N test images drawn without replacement (all of them, in order, when N is the test set's size).

    ``n_samples=None`` takes ``min(default, test set size)`` (the preset's ``attack_samples``).
    """
    total = len(dataset.y_test)
    n = min(default, total) if n_samples is None else n_samples
    if not 0 < n <= total:
        raise UserError(f"--n-samples must be between 1 and the test set's size {total} ({dataset.name}), got {n}")
    return np.arange(total) if n == total else np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def calibration_indices(total: int, attacked: np.ndarray, seed: int, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to ``n`` test images not among ``attacked``, drawn with ``seed`` (all of the others when fewer are left)."""
    rest = np.setdiff1d(np.arange(total), attacked)
    return rest if rest.size <= n else np.sort(np.random.default_rng(seed).choice(rest, n, replace=False))


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
    chunk_size: int = 50  # images per stored chunk of an attack: Ctrl-C or a kill loses at most one
    progress: bool = False

    _thresholds: dict[float, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.threat = getattr(self.threat, "value", self.threat)  # a Threat member names its value, as a plugin's name
        reading = self.detector.view(self.trained.model)  # the model as the detector reads it (the same predictions)
        if reading is not self.trained.model:
            self.trained = replace(self.trained, model=reading)

    @property
    def run_id(self) -> str:
        """Same model, threat, samples, detector and settings -> same id, so a rerun skips finished attacks."""
        return config_key({"model": self.trained.key, "threat": self.threat, "samples": self.indices.tolist(),
                           **self.detector.run_key(), "seed": self.seed, **self.settings})

    def row(self, attack: str, metric: str, value: float, n: int) -> ResultRow:
        plan = self.trained.plan
        return ResultRow(self.dataset.name, plan.preset, plan.seed, self.trained.defense.name, self.threat,
                         attack, metric, float(value), int(n), self.run_id, now(), self.detector.label)

    def score(self, model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted class and detector score under it (high = normal) for each input, on ``model``."""
        embeddings, predictions = embed_and_predict(model, x, device=self.device)
        return predictions.numpy(), self.detector.score(embeddings, predictions).numpy()

    @property
    def images_id(self) -> str:
        """The run id without the detector: what the images of an attack that ignores the detector depend on."""
        return config_key({"model": self.trained.key, "threat": self.threat, "samples": self.indices.tolist(),
                           "seed": self.seed, **self.settings})

    def cached_adversarials(self, attack: str, params: dict[str, Any], make: Callable[[slice], np.ndarray], *,
                            detector_free: bool = False) -> tuple[np.ndarray, float]:
        """Adversarial examples for the run's images, stored under the results directory ``chunk_size`` at a time (see
        :func:`pdm_bench.storage.chunked_array`), and the seconds spent making them (NaN when all were stored).
        ``detector_free``: the attack ignores the detector, so runs against other detectors share its images."""
        return chunked_array(self._adversarial_path(attack, params, detector_free), self._adversarial_shape(), make,
                             chunk_size=self.chunk_size, label=attack, log=self.log, progress=self.progress)

    def stored_adversarials(self, attack: str, params: dict[str, Any], *, detector_free: bool = False) -> np.ndarray | None:
        """The images :meth:`cached_adversarials` stored for ``attack`` and ``params``, if all of them are there."""
        return load_array(self._adversarial_path(attack, params, detector_free), self._adversarial_shape())

    def _adversarial_path(self, attack: str, params: dict[str, Any], detector_free: bool) -> Path:
        """This run's own file, or for ``detector_free`` attacks the file every detector's run shares (unless this
        run began its own before images were shared)."""
        def path(key: dict[str, Any]) -> Path:
            name = f"{self.dataset.name.replace('/', '_')[-40:]}-{attack}-{config_key({**key, 'attack': attack, **params})}"
            return self.results.directory / "adversarial" / f"{name}.npy"

        own = path({"run": self.run_id})
        begun = own.exists() or own.with_name(f"{own.stem}.parts").exists()
        return path({"images": self.images_id}) if detector_free and not begun else own

    def _adversarial_shape(self) -> tuple[int, ...]:
        return (len(self.indices), *self.dataset.input_shape)

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

    def rejection_thresholds(self) -> dict[float, float]:
        """Per false-positive rate of ``FPR_LEVELS``, the detector score below which the model's input is rejected,
        set on :func:`calibration_indices` (clean, never attacked); written once as the ``calibration`` rows. Empty
        when every test image is attacked."""
        if self._thresholds is None:
            index = calibration_indices(len(self.dataset.y_test), self.indices, self.seed)
            self._thresholds = {}
            if index.size:
                scores = self.score(self.trained.model, self.dataset.x_test[index])[1]
                self._thresholds = {fpr: rejection_threshold(scores, fpr) for fpr in FPR_LEVELS}
            rows = [self.row("calibration", Metric.CALIBRATION_IMAGES, index.size, index.size),
                    *(self.row("calibration", fpr_metric("threshold", fpr), t, index.size)
                      for fpr, t in self._thresholds.items())]
            self.results.append(rows, completes="calibration")
        return self._thresholds

    def fixed_fpr_rows(self, attack: str, *, y: np.ndarray, clean: tuple[np.ndarray, np.ndarray],
                       adversarial: tuple[np.ndarray, np.ndarray]) -> list[ResultRow]:
        """``attack``'s detection at each threshold of :meth:`rejection_thresholds`: TPR on Pang's pairs, robust
        accuracy (of the correctly classified images) and clean accuracy lost; ``clean``/``adversarial``: (predicted
        class, detector score) per image under the target model."""
        (clean_pred, clean_score), (adv_pred, adv_score) = clean, adversarial
        pairs, correct = len(kept_pairs(y, clean_pred, adv_pred)), int((clean_pred == y).sum())
        rows = []
        for fpr, threshold in self.rejection_thresholds().items():
            point = operating_point(threshold, y=y, clean_pred=clean_pred, clean_score=clean_score, adv_pred=adv_pred,
                                    adv_score=adv_score)
            rows += [self.row(attack, fpr_metric("tpr", fpr), point.tpr, pairs),
                     self.row(attack, fpr_metric("robust_accuracy", fpr), point.robust_accuracy, correct),
                     self.row(attack, fpr_metric("clean_lost", fpr), point.clean_lost, len(y))]
        return rows
