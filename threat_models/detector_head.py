"""Ma et al.'s protocol for a detector's second stage, shared by the built-in threat models: attack held-out clean
training images with one gray-box attack (the detector's ``head_attack``), make a noisy copy of each with Gaussian
noise of the same L2 size, and train the detector's logistic head on the three (see
:class:`pdm_bench.embedding_detectors.LayeredDetector`). The images are training images that the detector's
references do not use, so no test image is seen; the gray box's table over every attack then reads as the head's
transfer from its training attack to the others (Ma et al.'s ``-a``/``-t``)."""

from __future__ import annotations

import numpy as np
import torch

from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.detectors import Detector, kernel_indices
from pdm_bench.errors import UserError
from pdm_bench.evaluation import Evaluation
from pdm_bench.inference import embed_and_predict
from pdm_bench.threat import ThreatModel
from pdm_bench.threat_models.attack_specs import AttackBackend, attack_targets, build_attack, parse_attack


def held_out_training_images(ev: Evaluation, n: int) -> np.ndarray:
    """``n`` training images (seeded) that are none of the detector's reference points."""
    data, detector = ev.dataset, ev.detector
    used = kernel_indices(data.y_train, data.num_classes, detector.reference_points, ev.seed)
    rest = np.setdiff1d(np.arange(len(data.y_train)), used)
    return np.sort(np.random.default_rng(ev.seed + 1).choice(rest, min(n, rest.size), replace=False))


def same_size_noise(x: np.ndarray, x_adv: np.ndarray, seed: int) -> np.ndarray:
    """``x`` plus Gaussian noise scaled, per image, to the L2 size of ``x_adv - x``, clipped to [0, 1]."""
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    size = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    noise *= (size / np.maximum(np.linalg.norm(noise.reshape(len(x), -1), axis=1), 1e-12)).reshape(-1, *[1] * (x.ndim - 1))
    return np.clip(x + noise, 0.0, 1.0)


def train_head(ev: Evaluation) -> None:
    """Train ``ev.detector``'s head on its ``head_attack`` (see the module docstring); one line to the log."""
    detector, data, model = ev.detector, ev.dataset, ev.trained.model
    spec = parse_attack(str(detector.head_attack))  # an unknown name: one line with the valid ones
    index = held_out_training_images(ev, detector.head_images)
    x, y = data.x_train[index], data.y_train[index]
    classifier = to_art_classifier(model, input_shape=data.input_shape, nb_classes=data.num_classes, device=ev.device)
    targeted = spec.family == "jsma"
    goal = attack_targets(y, data.num_classes, ev.seed) if targeted else y
    attack = build_attack(spec, classifier, backend=AttackBackend.TORCH, targeted=targeted, batch_size=256)
    x_adv = attack.generate(x, y=np.eye(data.num_classes)[goal]).astype(np.float32)
    clean = embed_and_predict(model, x, device=ev.device)
    adversarial = embed_and_predict(model, x_adv, device=ev.device)
    fooled = (clean[1].numpy() == y) & (adversarial[1].numpy() != y)
    if fooled.sum() < 2:
        raise UserError(f"Detector '{detector.name}': head_attack={detector.head_attack} fooled {fooled.sum()} of "
                        f"{len(y)} held-out training images, too few to train its head on; choose a stronger attack "
                        "(e.g. bim-0.1) or more head_images")
    keep = torch.from_numpy(fooled)
    noisy = embed_and_predict(model, same_size_noise(x[fooled], x_adv[fooled], ev.seed), device=ev.device)
    said = detector.fit_head(normal=(clean[0][keep], clean[1][keep]), noisy=noisy,
                             adversarial=(adversarial[0][keep], adversarial[1][keep]))
    ev.log(f"Detector head: {fooled.sum()} of {len(y)} held-out training images fooled by {spec.name}, each with "
           f"a clean and a noisy copy; {said}")


class TrainsDetectorHeads(ThreatModel):
    """A threat model that trains a detector's second stage with :func:`train_head` (every built-in one)."""

    def check_detector(self, detector: Detector) -> None:
        if detector.head_attack:
            parse_attack(str(detector.head_attack))  # an unknown name: one line, before any training

    def fit_detector_head(self, evaluation: Evaluation) -> None:
        train_head(evaluation)
