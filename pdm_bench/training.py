"""The training loop (pure torch): cached by config key, checkpointed every epoch, resumable.

A model lives in ``<cache>/models/<dataset>-<defense>-<preset>-s<seed>-<key>/``: ``meta.json`` (the full
config and, when done, the history and clean test accuracy), ``checkpoint.pt`` while training (the last
finished epoch) and ``model.pt`` when done. Every file is written atomically; all load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pdm_bench.config import TRAIN_FORMAT_VERSION, TrainPlan
from pdm_bench.contract import check_classifier
from pdm_bench.data import Dataset
from pdm_bench.defense import Defense, TrainContext, terms_total
from pdm_bench.errors import UserError
from pdm_bench.inference import evaluate_accuracy
from pdm_bench.models import ResNet
from pdm_bench.storage import ModelEntry, atomic_save, file_lock

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainedModel:
    """A trained (or reused) defended model and where it is stored."""

    model: nn.Module  # our ResNet, or the network the defense built
    defense: Defense
    plan: TrainPlan
    key: str
    run_dir: Path
    test_accuracy: float
    from_cache: bool
    history: list[dict[str, Any]]


def model_config(dataset: Dataset, defense: Defense, plan: TrainPlan) -> dict[str, Any]:
    """Everything that changes the weights (the cache key is its hash)."""
    return {
        "format": TRAIN_FORMAT_VERSION,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "defense": defense.name,
        "defense_class": f"{type(defense).__module__}.{type(defense).__qualname__}",
        "defense_options": defense.options(),
        "plan": plan.as_dict(),
    }


def model_entry(cache_dir: Path, dataset: Dataset, defense: Defense, plan: TrainPlan) -> ModelEntry:
    """Where the model of this config is cached."""
    name = f"{dataset.name}-{defense.name}-{plan.preset}-s{plan.seed}"
    return ModelEntry.at(cache_dir, "models", name, model_config(dataset, defense, plan))


def model_dir(cache_dir: Path, dataset: Dataset, defense: Defense, plan: TrainPlan) -> tuple[Path, str, dict[str, Any]]:
    """The cached model's folder, key and config."""
    entry = model_entry(cache_dir, dataset, defense, plan)
    return entry.run_dir, entry.key, entry.config


def train_or_load(
    *,
    dataset: Dataset,
    defense: Defense,
    plan: TrainPlan,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
    log: Log = print,
    on_epoch_end: Callable[[int], None] | None = None,
) -> TrainedModel:
    """Reuse the cached model of this exact config, resume its checkpoint, or train it from scratch. One process at a
    time trains a given model: another that asks for it meanwhile waits, then reuses it."""
    entry = model_entry(cache_dir, dataset, defense, plan)
    lock = entry.run_dir.with_name(f".{entry.run_dir.name}.lock")
    with file_lock(lock, wait=False) as free:
        if free:
            return _train_or_load(entry, dataset=dataset, defense=defense, plan=plan, device=device, progress=progress,
                                  log=log, on_epoch_end=on_epoch_end)
    log(f"Another process is training {entry.run_dir.name}; waiting for it to finish")
    with file_lock(lock):
        return _train_or_load(entry, dataset=dataset, defense=defense, plan=plan, device=device, progress=progress,
                              log=log, on_epoch_end=on_epoch_end)


def _train_or_load(entry: ModelEntry, *, dataset: Dataset, defense: Defense, plan: TrainPlan, device: torch.device,
                   progress: bool, log: Log, on_epoch_end: Callable[[int], None] | None) -> TrainedModel:
    run_dir, key = entry.run_dir, entry.key
    meta = _read_meta(entry)
    if meta is not None and meta.get("config") != entry.config:
        raise UserError(f"Checkpoint directory {run_dir} holds a model of another config; remove it or use another --cache-dir")
    model = _new_model(defense, plan, dataset, device)
    if meta is not None and meta.get("finished") and entry.weights_path.exists():
        _load_reused(model, entry, meta, dataset, device)
        log(f"Reusing cached model {run_dir.name} (trained {meta['finished']})")
        return TrainedModel(model, defense, plan, key, run_dir, meta["test_accuracy"], True, meta["history"])

    entry.start()
    optimizer = make_optimizer(model, plan)
    start_epoch, history = 0, []
    checkpoint_path = entry.checkpoint_path
    if checkpoint_path.exists():
        try:
            checkpoint = _load_state(model, checkpoint_path, "model", device)
        except CorruptFile as error:
            log(f"Checkpoint {error}: training {run_dir.name} from the first epoch")  # nothing was loaded from it
            checkpoint_path.unlink()
        else:
            optimizer.load_state_dict(checkpoint["optimizer"])
            start_epoch, history = checkpoint["epoch"] + 1, checkpoint["history"]
            log(f"Resuming {run_dir.name} after epoch {start_epoch}/{plan.epochs}")

    train_x, train_y = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    test_x, test_y = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    if device.type == "cuda":  # the whole set fits; no per-batch host->device copies
        train_x, train_y = train_x.to(device), train_y.to(device)
    for epoch in range(start_epoch, plan.epochs):
        started = time.perf_counter()
        terms = _train_epoch(model, optimizer, defense, plan, epoch, train_x, train_y, dataset.num_classes, device, progress)
        accuracy = evaluate_accuracy(model, test_x, test_y, device=device)
        history.append({"epoch": epoch + 1, "lr": plan.lr_at(epoch), **terms, "test_accuracy": accuracy,
                        "seconds": round(time.perf_counter() - started, 2)})
        log(f"epoch {epoch + 1}/{plan.epochs}  " + "  ".join(f"{k} {v:.4f}" for k, v in terms.items())
            + f"  test acc {100 * accuracy:.2f}%  ({history[-1]['seconds']:.1f} s)")
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history},
                     checkpoint_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    accuracy = history[-1]["test_accuracy"] if history else evaluate_accuracy(model, test_x, test_y, device=device)
    entry.finish(model.state_dict(), test_accuracy=accuracy, history=history, trained_on=compute_environment(device))
    checkpoint_path.unlink(missing_ok=True)
    return TrainedModel(model, defense, plan, key, run_dir, accuracy, False, history)


def compute_environment(device: torch.device) -> dict[str, Any]:
    """What else decides a model's weights besides its config: the CPU's vector capability, torch's thread count and
    version, the device (the same config trains other weights on another CPU or thread count)."""
    return {"device": str(device), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def make_optimizer(model: nn.Module, plan: TrainPlan) -> torch.optim.Optimizer:
    if plan.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=plan.lr, momentum=plan.momentum, weight_decay=plan.weight_decay)


def _new_model(defense: Defense, plan: TrainPlan, dataset: Dataset, device: torch.device) -> nn.Module:
    """The defense's network (our ResNet unless it builds its own), seeded, checked against the model contract."""
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(plan.seed)
        model = defense.build_model(plan.model).to(device)
    if not isinstance(model, ResNet):
        check_classifier(model, input_shape=dataset.input_shape, num_classes=dataset.num_classes, device=device)
    return model


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    defense: Defense,
    plan: TrainPlan,
    epoch: int,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    device: torch.device,
    progress: bool,
) -> dict[str, float]:
    """One pass over the training set in a seeded order (so a resumed run sees the same batches)."""
    generator = torch.Generator().manual_seed(plan.seed * 100_003 + epoch)
    context = TrainContext(num_classes, train_x, train_y, generator)
    for group in optimizer.param_groups:
        group["lr"] = plan.lr_at(epoch)
    order = torch.randperm(train_x.shape[0], generator=generator).to(train_x.device)
    batches = [b for b in order.split(plan.batch_size) if b.numel() > 1]  # BatchNorm needs 2+ samples
    model.train()
    sums: dict[str, float] = {}
    bar = tqdm(batches, desc=f"{defense.name} epoch {epoch + 1}/{plan.epochs}", leave=False, disable=not progress,
               unit="batch", dynamic_ncols=True)
    for index in bar:
        x = train_x[index].to(device, non_blocking=True)
        y = train_y[index].to(device, non_blocking=True)
        if plan.augment:
            x = _crop_and_flip(x, generator)
        try:
            total, terms = terms_total(defense.loss(model, x, y, context))
        except ValueError as error:
            raise UserError(f"The loss of defense '{defense.name}' ({type(defense).__module__}): {error}") from None
        if not torch.isfinite(total):
            raise UserError(f"Training of '{defense.name}' diverged at epoch {epoch + 1} (loss {float(total)}); "
                            "lower the learning rate or the loss weights")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value
        bar.set_postfix({name: f"{value:.3f}" for name, value in terms.items()}, refresh=False)
    return {name: value / len(batches) for name, value in sums.items()}


def _crop_and_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation: random crop from a zero-padded image and a random horizontal flip."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    crops = [padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips)])


class CorruptFile(Exception):
    """A file that cannot be read back (torn by a kill or a full disk, or not a torch file)."""


def _reason(error: BaseException) -> str:
    """The error's first sentence (torch's can run to a paragraph on one line)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0].rstrip(".")


def _load_state(model: nn.Module, path: Path, field: str, device: torch.device) -> dict[str, Any]:
    """The state stored at ``path``, its ``field`` loaded into ``model``. A file torch cannot read raises
    :class:`CorruptFile`; one that reads but holds another network is a one-line :class:`UserError`."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise CorruptFile(f"{path} is corrupt ({_reason(error)})") from None
    try:
        model.load_state_dict(state[field])
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise UserError(f"Checkpoint {path} does not fit this config ({_reason(error)}); remove it to retrain") from None
    return state


FINISHED_KEYS = {"finished": str, "test_accuracy": float, "history": list}  # what a reused model's meta.json holds
PROBE_IMAGES = 256  # test images a reused model is checked on
PROBE_TOLERANCE = 0.25  # how far their accuracy may lie from the recorded one (sampling noise is ~0.03)


def _read_meta(entry: ModelEntry) -> dict[str, Any] | None:
    if not entry.meta_path.exists():
        return None
    meta = entry.meta()
    if not isinstance(meta, dict):
        raise UserError(f"Corrupt model metadata {entry.meta_path}; remove {entry.run_dir} to retrain")
    if meta.get("finished"):
        for key, kind in FINISHED_KEYS.items():
            value = meta.get(key)
            if not isinstance(value, (int, float) if kind is float else kind) or isinstance(value, bool):
                raise UserError(f"Corrupt model metadata {entry.meta_path}: '{key}' is missing or not a "
                                f"{kind.__name__}; remove {entry.run_dir} to retrain")
    return meta


def _load_reused(model: nn.Module, entry: ModelEntry, meta: dict[str, Any], dataset: Dataset,
                 device: torch.device) -> None:
    """The finished model's weights loaded into ``model`` and checked (:func:`check_reused`)."""
    try:
        _load_state(model, entry.weights_path, "weights", device)
    except CorruptFile as error:
        raise UserError(f"Trained model {error}: remove {entry.run_dir} and rerun the same command to train it "
                        "again") from None
    check_reused(model, entry, meta, dataset, device)


def check_reused(model: nn.Module, entry: ModelEntry, meta: dict[str, Any], dataset: Dataset,
                 device: torch.device) -> None:
    """A cached model is reused only with finite weights and an accuracy on a fixed probe of test images that agrees
    with the one recorded in its meta.json (else its files were damaged or swapped): one line naming the file."""
    advice = f"delete {entry.run_dir} and rerun the same command to train it again"
    bad = [name for name, tensor in model.state_dict().items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        raise UserError(f"Cached model {entry.weights_path} has non-finite weights ({bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): {advice}")
    recorded = float(meta["test_accuracy"])
    if not 0.0 <= recorded <= 1.0:
        raise UserError(f"Corrupt model metadata {entry.meta_path}: test_accuracy {recorded} is not in [0, 1]; {advice}")
    step = max(1, len(dataset.y_test) // PROBE_IMAGES)
    x, y = dataset.x_test[::step][:PROBE_IMAGES], dataset.y_test[::step][:PROBE_IMAGES]
    training = model.training
    probe = evaluate_accuracy(model, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), device=device)
    model.train(training)  # returned as it was loaded
    if abs(probe - recorded) > PROBE_TOLERANCE:
        raise UserError(f"Cached model {entry.weights_path} scores {100 * probe:.1f}% on {len(y)} probe test images but "
                        f"its meta.json records {100 * recorded:.2f}%: the files do not belong together; {advice}")
