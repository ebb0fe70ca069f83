"""Presets, the resolved training plan, device and directory resolution.

A :class:`TrainPlan` holds everything that changes a model's weights except the data and the defense; its
``key`` (with the dataset fingerprint and the defense options) names the cached model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pdm_bench.errors import UserError, unknown_name_error

if TYPE_CHECKING:
    import torch

CACHE_ENV = "PDM_BENCH_CACHE"
DATA_ENV = "PDM_BENCH_DATA"
MAX_SEED = 2**32 - 1  # what every random generator seeded from it (numpy, torch) accepts
TRAIN_FORMAT_VERSION = 1  # bump when the training loop changes what a given config produces


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything that fixes a network's architecture (models as data)."""

    depth: int = 20
    width: int = 16
    in_channels: int = 1
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"expected a ResNet depth of the form 6n+2 (8, 14, 20, 32, 56, ...), got {self.depth}")
        if self.width < 1:
            raise ValueError(f"expected a positive width, got {self.width}")

    @property
    def embedding_dim(self) -> int:
        return 4 * self.width


class PresetName(str, Enum):
    """The closed set of presets."""

    QUICK = "quick"
    PAPER = "paper"


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Model and optimiser settings; ``epochs`` per dataset family (``default`` for any other), ``depth`` unless
    ``family_depth`` names the family."""

    name: str
    description: str
    depth: int
    width: int
    epochs: dict[str, int]
    family_depth: dict[str, int] = field(default_factory=dict)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.002
    batch_size: int = 128
    milestones: tuple[float, ...] = (0.45, 0.67, 0.89)  # fractions of training where lr *= gamma (Pang)
    gamma: float = 0.1
    attack_samples: int = 1000  # default N test images per threat model (Pang's protocol uses 1000)

    def epochs_for(self, dataset: str) -> int:
        return self.epochs.get(dataset_family(dataset), self.epochs["default"])

    def depth_for(self, dataset: str) -> int:
        return self.family_depth.get(dataset_family(dataset), self.depth)


def dataset_family(dataset: str) -> str:
    """``cifar10`` for either CIFAR-10 copy, else the data set's name (presets and defenses key settings by it)."""
    return "cifar10" if dataset.startswith("cifar10") else dataset


PRESETS: dict[PresetName, Preset] = {
    PresetName.QUICK: Preset(
        name="quick",
        description="ResNet-8 (CIFAR-10: ResNet-14), Adam; digits 50 epochs, MNIST 4, CIFAR-10 10: minutes on a CPU "
                    "(CIFAR-10: ~30 min)",
        depth=8,
        width=16,
        # CIFAR-10: ResNet-8 x 15 epochs reached 72.1% (27 min on one core), ResNet-14 x 10 epochs 77% in about the
        # same time (docs/RESULTS.md, "CIFAR-10 quick preset").
        epochs={"digits": 50, "mnist": 4, "cifar10": 10, "default": 10},
        family_depth={"cifar10": 14},
        # Adam, not SGD: reverse cross-entropy's gradient is ~9x weaker than cross-entropy's, and SGD at lr 0.1
        # left RCE at 92.4% after 3 MNIST epochs; Adam's step is scale-free (docs/RESULTS.md).
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        milestones=(0.67,),
        # C&W-hc (9 x 1000 Adam steps) costs ~0.8 s per digits image on 2 CPU cores: 200 keeps the default
        # gray-box run under 5 minutes. Pass --n-samples 1000 for the paper's N.
        attack_samples=200,
    ),
    PresetName.PAPER: Preset(
        name="paper",
        description="ResNet-56, Appendix B of the paper (SGD lr 0.1, L2 0.002, batch 128); for a GPU",
        depth=56,
        width=16,
        epochs={"digits": 80, "mnist": 80, "cifar10": 400, "default": 80},
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[PresetName(name)]
    except ValueError:
        raise unknown_name_error("preset", name, [p.value for p in PresetName]) from None


@dataclass(frozen=True, kw_only=True)
class TrainPlan:
    """The resolved recipe for one training run (no data, no defense)."""

    preset: str
    model: ModelSpec
    epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    milestones: tuple[int, ...]
    gamma: float
    augment: bool
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def lr_at(self, epoch: int) -> float:
        """Step schedule: ``lr * gamma**k`` after the k-th milestone epoch."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_plan(
    preset_name: str,
    *,
    dataset: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int = 0,
    epochs: int | None = None,
) -> TrainPlan:
    """Resolve a preset for one dataset; ``epochs`` overrides the preset's count (0: the model as built)."""
    preset = get_preset(preset_name)
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    if epochs is not None and epochs < 0:
        raise UserError(f"--epochs must be a non-negative integer, got {epochs}")
    n_epochs = epochs if epochs is not None else preset.epochs_for(dataset)
    channels, height, _ = input_shape
    return TrainPlan(
        preset=preset.name,
        model=ModelSpec(depth=preset.depth_for(dataset), width=preset.width, in_channels=channels, num_classes=num_classes),
        epochs=n_epochs,
        optimizer=preset.optimizer,
        lr=preset.lr,
        momentum=preset.momentum,
        weight_decay=preset.weight_decay,
        batch_size=preset.batch_size,
        milestones=tuple(sorted({max(1, round(f * n_epochs)) for f in preset.milestones if round(f * n_epochs) < n_epochs})),
        gamma=preset.gamma,
        augment=channels == 3 and height >= 32,  # crop + flip for CIFAR-like colour images
        seed=seed,
    )


def config_key(payload: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able config."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """Explicit value, else ``$PDM_BENCH_CACHE``, else ``~/.cache/pdm-bench``."""
    from pdm_bench.arguments import expand_path

    if cache_dir is not None:
        return expand_path(cache_dir, "--cache-dir")
    env = os.environ.get(CACHE_ENV)
    return expand_path(env, CACHE_ENV) if env else expand_path("~/.cache/pdm-bench", "The default cache folder")


DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks ``cuda`` when present; asking for an absent device is a :class:`UserError`."""
    import torch  # here, not at the top: the CLI's --help and list must not wait for torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if name.startswith("cuda:") and not index.isdigit():
            raise UserError(f"Device '{name}' is malformed: expected cuda or cuda:N with N a GPU's number, e.g. cuda:0")
        if not torch.cuda.is_available():
            raise UserError(
                f"Device '{name}' is not available: torch {torch.__version__} sees no CUDA GPU on this machine. "
                "Use --device cpu or --device auto."
            )
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"Device '{name}' does not exist; this machine has cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(name)
    raise UserError(f"Unknown device '{name}'. Available: {', '.join(DEVICE_CHOICES)}")
