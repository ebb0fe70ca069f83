"""The adaptive threat model's attacks at one budget: plain PGD on the classifier, PGD on the combined loss at each
detector weight, orthogonal and selective PGD, Square with "reject" as a class, random noise; and the attacks on the
detector again with their iterations and restarts doubled (:meth:`Portfolio.at`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pdm_bench.evaluation import Evaluation
from pdm_bench.threat_models.cw_wb import DetectorScore
from pdm_bench.threat_models.pgd import DetectorPGD
from pdm_bench.threat_models.square import SquareWithReject

if TYPE_CHECKING:
    from pdm_bench.threat_models.adaptive import AdaptiveParams


def doubled(level: int) -> str:
    """The suffix of an attack (or worst case) with its iterations and restarts doubled ``level`` times."""
    return f"@{2 ** level}x"


class Portfolio:
    """The attacks at one budget: (name, make(x, y) -> images, what the images depend on) per :meth:`at` level."""

    def __init__(self, ev: Evaluation, params: AdaptiveParams, classifier: Any, *, eps: float, threshold: float,
                 scale: float) -> None:
        self.ev, self.params, self.classifier, self.eps, self.threshold, self.scale = \
            ev, params, classifier, eps, threshold, scale
        self.detector = DetectorScore(ev.detector, ev.dataset.num_classes)  # its torch_score, as it judges
        self.common = {"norm": params.norm, "eps": eps, "threshold": round(threshold, 6), "scale": round(scale, 6)}
        self.norm = np.inf if params.norm == "linf" else 2

    def at(self, level: int) -> list[tuple[str, Any, dict[str, Any]]]:
        """Level 0: the whole portfolio and random noise; level k: the attacks on the detector with their iterations
        and restarts doubled k times, named with :func:`doubled`."""
        if level:
            return [(f"{name}{doubled(level)}", *self._pgd(mode, weight, 2 ** level))
                    for name, mode, weight in self._gradient() if mode != "classifier"]
        attacks = [(name, *self._pgd(mode, weight, 1)) for name, mode, weight in self._gradient()]
        if self.params.square_iterations:
            attacks.append(("square", *self._square()))
        noise = lambda xs, ys: random_noise(xs, self.params.norm, self.eps, self.ev.seed)  # noqa: E731
        return [*attacks, ("noise", noise, {**self.common, "noise": 1})]

    def kept(self) -> list[tuple[str, Any, dict[str, Any]]]:
        """The level-0 attacks a doubled worst case keeps: plain PGD (the reference) and Square (no iterations)."""
        return [attack for attack in self.at(0) if attack[0] in ("pgd", "square")]

    def _gradient(self) -> list[tuple[str, str, float]]:
        return [("pgd", "classifier", 1.0), *((f"combined@{w:g}", "combined", w) for w in self.params.detector_weights()),
                ("orthogonal", "orthogonal", 1.0), ("selective", "selective", 1.0)]

    def _pgd(self, mode: str, weight: float, factor: int) -> tuple[Any, dict[str, Any]]:
        params, eps = self.params, self.eps
        iterations, restarts = params.iterations * factor, params.restarts * factor
        loss = "cross_entropy" if mode == "classifier" else "margin"  # plain PGD as ART runs it
        schedule = "constant" if mode == "classifier" else params.schedule
        attack = DetectorPGD(self.classifier, norm=self.norm, eps=eps,
                             eps_step=2.5 * eps / iterations, max_iter=iterations, num_random_init=restarts,
                             batch_size=params.batch_size, verbose=self.ev.progress, mode=mode,  # type: ignore[arg-type]
                             detector=None if mode == "classifier" else self.detector, threshold=self.threshold,
                             detector_weight=weight, score_scale=self.scale, seed=self.ev.seed, loss=loss,
                             schedule=schedule)
        settings = {**self.common, "mode": mode, "iterations": iterations, "restarts": restarts, "loss": loss,
                    **({"weight": weight} if mode == "combined" else {}),
                    **({"schedule": schedule} if schedule != "constant" else {})}
        return (lambda xs, ys: attack.generate(xs, ys)), settings

    def _square(self) -> tuple[Any, dict[str, Any]]:
        ev, params = self.ev, self.params
        square = SquareWithReject(ev.trained.model, self.detector, threshold=self.threshold, scale=self.scale,
                                  input_shape=ev.dataset.input_shape, nb_classes=ev.dataset.num_classes,
                                  clip_values=(0.0, 1.0), norm=self.norm, eps=self.eps,
                                  max_iter=params.square_iterations, restarts=1, batch_size=params.batch_size,
                                  verbose=ev.progress, seed=ev.seed, device=ev.device)
        return square.generate, {**self.common, "square_iterations": params.square_iterations}


def random_noise(x: np.ndarray, norm: str, eps: float, seed: int) -> np.ndarray:
    """Seeded random perturbations at the full budget: the corners of the L-inf ball, or L2 directions of length eps;
    clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    if norm == "linf":
        delta = eps * rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=x.shape)
    else:
        delta = rng.standard_normal(x.shape).astype(np.float32)
        delta *= eps / np.linalg.norm(delta.reshape(len(x), -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.clip(x + delta, 0.0, 1.0).astype(np.float32)
