"""What the attack benchmarks share: the quick-preset baseline on a dataset (trained or reused) and its ART wrapper."""

from __future__ import annotations

from pathlib import Path

import torch
from art.estimators.classification import PyTorchClassifier

from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.config import make_plan, resolve_cache_dir
from pdm_bench.data import Dataset, load_dataset
from pdm_bench.defenses.baseline import Baseline
from pdm_bench.training import TrainedModel, train_or_load


def quick_baseline(dataset: str, *, data_dir: str | Path | None, cache_dir: str | Path | None,
                   device: torch.device) -> tuple[Dataset, TrainedModel, PyTorchClassifier]:
    """The dataset, its quick-preset baseline (from the cache when there) and the baseline as an ART classifier."""
    data = load_dataset(dataset, data_dir=data_dir)
    plan = make_plan("quick", dataset=data.name, input_shape=data.input_shape, num_classes=data.num_classes)
    trained = train_or_load(dataset=data, defense=Baseline(), plan=plan, cache_dir=resolve_cache_dir(cache_dir),
                            device=device, progress=False, log=lambda _: None)
    classifier = to_art_classifier(trained.model, input_shape=data.input_shape, nb_classes=data.num_classes,
                                   device=device)
    return data, trained, classifier
