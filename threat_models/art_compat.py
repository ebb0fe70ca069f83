"""What our attacks share to behave as ART's: ART's C&W parameter list and checks, labels as ART reads them, and the
bounds ART uses (``clip_values``, else the data's range)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.utils import check_and_transform_label_format

# CarliniL2Method.attack_params of ART 1.20, in its order.
ART_CW_PARAMS = ["confidence", "targeted", "learning_rate", "max_iter", "binary_search_steps", "initial_const",
                 "max_halving", "max_doubling", "batch_size", "verbose"]


def check_cw_params(attack: Any) -> None:
    """ART 1.20's ``CarliniL2Method._check_params``, and ``verbose`` a bool (as ART's newer attacks check it)."""
    for name, lowest in (("binary_search_steps", 0), ("max_iter", 0), ("max_halving", 1), ("max_doubling", 1),
                         ("batch_size", 1)):
        value = getattr(attack, name)
        if not isinstance(value, int) or value < lowest:
            raise ValueError(f"The argument `{name}` must be an integer >= {lowest}, got {value!r}.")
    if not isinstance(attack.verbose, bool):
        raise ValueError(f"The argument `verbose` has to be of type bool, got {attack.verbose!r}.")


Bound = float | np.ndarray


def set_cw_params(attack: EvasionAttack, values: dict[str, Any]) -> None:
    """Store ART's C&W parameters from an ``__init__``'s ``locals()`` (``targeted`` where ART keeps it)."""
    for name in ART_CW_PARAMS:
        setattr(attack, "_targeted" if name == "targeted" else name, values[name])


def data_bounds(estimator: Any, x: np.ndarray) -> tuple[Bound, Bound]:
    """The classifier's ``clip_values`` (scalars, or per-feature arrays), or (as ART's C&W does without them) the
    range of the data attacked."""
    if estimator.clip_values is None:
        return float(np.min(x)), float(np.max(x))
    low, high = (float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=np.float32) for v in estimator.clip_values)
    return low, high


def bounds_on(bounds: tuple[Bound, Bound], device: torch.device) -> tuple[Any, Any]:
    """Scalars stay Python floats; per-feature bounds become tensors on ``device``."""
    return tuple(v if isinstance(v, float) else torch.as_tensor(v, device=device) for v in bounds)  # type: ignore[return-value]


def class_labels(attack: EvasionAttack, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """Class indices: ``y`` (one-hot or indices; targets when targeted), else the classifier's predictions."""
    if y is None:
        if attack.targeted:
            raise ValueError("Target labels `y` need to be provided for a targeted attack.")
        return np.argmax(attack.estimator.predict(x, batch_size=attack.batch_size), axis=1)
    return np.argmax(check_and_transform_label_format(y, nb_classes=attack.estimator.nb_classes), axis=1)
