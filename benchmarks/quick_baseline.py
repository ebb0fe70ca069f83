"""What the attack benchmarks share: the quick-preset baseline on a dataset (trained or reused) and its ART wrapper."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier

from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.config import make_plan, resolve_cache_dir
from pdm_bench.data import Dataset, load_dataset
from pdm_bench.kde import GaussianKDE
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


def add_cw_wb_arguments(parser: argparse.ArgumentParser, *, images: int, threads: int | None) -> None:
    """The options the C&W-wb benchmarks share."""
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--search-steps", type=int, default=5)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=threads)


@dataclass(frozen=True)
class CwWbSetup:
    """A quick baseline, its fitted KDE, seeded test images and seeded random targets (as the white box draws them)."""

    data: Dataset
    trained: TrainedModel
    classifier: PyTorchClassifier
    kde: GaussianKDE
    x: np.ndarray
    targets: np.ndarray
    goal: np.ndarray  # one-hot targets


def cw_wb_setup(args: argparse.Namespace, device: torch.device) -> CwWbSetup:
    from pdm_bench.detectors import KDEDetector, fit_detector
    from pdm_bench.threat_models.attack_specs import attack_targets

    data, trained, classifier = quick_baseline(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
                                               device=device)
    kde = fit_detector(KDEDetector(), trained.model, data, device=device).fitted()  # type: ignore[attr-defined]
    index = np.sort(np.random.default_rng(0).choice(len(data.y_test), args.images, replace=False))
    targets = attack_targets(data.y_test[index], data.num_classes, 0)
    goal = np.eye(data.num_classes, dtype=np.float32)[targets]
    return CwWbSetup(data, trained, classifier, kde, data.x_test[index], targets, goal)


def write_doc_block(doc: Path, tag: str, command: str, lines: list[str]) -> None:
    """Print ``lines`` under the ``command`` that made them and put them into ``doc`` between ``<!-- tag -->`` markers
    (replacing what was there, or at the end)."""
    import re

    block = "\n".join([f"<!-- {tag} -->", f"`{command.strip()}`", "", *lines, f"<!-- /{tag} -->"])
    print(block)
    text = doc.read_text() if doc.exists() else "# Performance\n"
    pattern = re.compile(rf"<!-- {re.escape(tag)} -->.*?<!-- /{re.escape(tag)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def machine_line(device: torch.device) -> str:
    """Where a benchmark ran, for its table's heading: device, CPU, torch, threads and the load at the start."""
    import os
    import platform

    return (f"device {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, 1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
            "at the start.")

