"""Everything pdm-bench writes to disk goes through here: atomic writes (a reader sees the old file or the new,
never half), file locks, and the chunked store of an attack's images (a killed attack resumes at its first
unfinished chunk; processes running the same attack share its chunks)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

Log = Callable[[str], None]


def _temporary(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary name beside ``path``, private to this process and thread (two writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{suffix}")


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: Path, obj: dict[str, Any]) -> Path:
    """``obj`` as indented JSON, atomically (values JSON cannot hold are written as strings)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``; None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The array stored at ``path`` if it is there, readable and of ``shape``; else None (then it is made again)."""
    if not path.exists():
        return None
    try:
        stored = np.load(path)
    except (OSError, ValueError):
        return None  # a torn or foreign file
    return stored if stored.shape == shape else None


@contextmanager
def file_lock(lock_path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``lock_path`` (created if missing): yields False at once when another process holds it
    and ``wait`` is off. The kernel drops a killed process's lock."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def chunked_array(path: Path, shape: tuple[int, ...], make: Callable[[slice], np.ndarray], *, chunk_size: int,
                  label: str, log: Log = print, progress: bool = False) -> tuple[np.ndarray, float]:
    """The array of ``shape`` stored at ``path``, made ``chunk_size`` rows at a time by ``make(rows)`` if absent,
    and the seconds spent making it (NaN when all came from the store).

    Each finished chunk is kept on disk at once (in ``<path stem>.parts/``), so a killed run resumes at the first
    unfinished chunk. Processes making the same array share its chunks: each takes a chunk no other is making (a
    lock per chunk), then waits for the chunks others hold. ``progress``: a bar over the images (rate, time left).
    """
    n = shape[0]
    whole = load_array(path, shape)
    if whole is not None:
        return whole, float("nan")
    parts_dir = path.with_name(f"{path.stem}.parts")
    parts = [slice(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]
    pieces: dict[int, np.ndarray] = {}
    reused = 0
    with tqdm(total=n, desc=label, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for wait in (False, True):
            reused += _gather(pieces, parts, path, shape, make, wait=wait, bar=bar, chunk_size=chunk_size, label=label,
                              log=log)
            whole = load_array(path, shape) if len(pieces) < len(parts) else None
            if whole is not None:  # another process finished the array meanwhile
                shutil.rmtree(parts_dir, ignore_errors=True)
                return whole, float("nan")
    if reused:
        log(f"{label}: {reused} of {n} images reused from stored chunks (made by an earlier or a parallel run)")
    array = np.concatenate([pieces[part.start] for part in parts])
    seconds = sum(_read_seconds(parts_dir / f"{part.start:07d}-{part.stop:07d}.seconds") for part in parts)
    save_array(path, array)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return array, seconds


def _gather(pieces: dict[int, np.ndarray], parts: list[slice], path: Path, shape: tuple[int, ...],
            make: Callable[[slice], np.ndarray], *, wait: bool, bar: Any, chunk_size: int, label: str, log: Log) -> int:
    """Load or make each chunk not in ``pieces`` (``wait``: also the ones another process holds); the number of
    images that were stored before this call (made by an earlier, killed run)."""
    n, parts_dir, reused = shape[0], path.with_name(f"{path.stem}.parts"), 0
    for part in parts:
        if part.start in pieces:
            continue
        piece_shape = (part.stop - part.start, *shape[1:])
        piece_path = parts_dir / f"{part.start:07d}-{part.stop:07d}.npy"
        piece = load_array(piece_path, piece_shape)
        if piece is not None:
            reused += len(piece)
        else:
            with file_lock(piece_path.with_suffix(".lock"), wait=wait) as held:
                if not held:
                    continue  # another process is making it
                if load_array(path, shape) is not None:
                    return reused  # another process finished the whole array meanwhile
                piece = load_array(piece_path, piece_shape)  # it may have been finished while we waited
                if piece is None:
                    piece = _make_chunk(make, part, piece_shape, piece_path)
                    if n > chunk_size:
                        log(f"{label}: images {part.start + 1}-{part.stop} of {n} done and stored")
        pieces[part.start] = piece
        bar.update(part.stop - part.start)
    return reused


def _make_chunk(make: Callable[[slice], np.ndarray], part: slice, shape: tuple[int, ...], piece_path: Path) -> np.ndarray:
    started = time.perf_counter()
    piece = np.asarray(make(part), dtype=np.float32)
    if piece.shape != shape:
        raise RuntimeError(f"expected adversarial examples of shape {shape}, got {piece.shape}")
    # The time first: a stored piece always has its time.
    atomic_write_text(piece_path.with_suffix(".seconds"), f"{time.perf_counter() - started:.3f}\n")
    save_array(piece_path, piece)
    return piece


def _read_seconds(path: Path) -> float:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return float("nan")


@dataclass(frozen=True)
class ModelEntry:
    """One cached network (a trained model or a distilled proxy): ``<root>/<kind>/<slug>-<key>/`` holding
    ``meta.json`` (its config and, once finished, when and what it measured), ``checkpoint.pt`` while it is being
    made, and ``model.pt`` (``{"weights": state_dict}``) when done. ``key`` hashes the config."""

    run_dir: Path
    key: str
    config: dict[str, Any]

    @classmethod
    def at(cls, root: Path, kind: str, name: str, config: dict[str, Any]) -> ModelEntry:
        from pdm_bench.config import config_key

        config = json.loads(json.dumps(config, default=str))  # as it reads back from meta.json
        key = config_key(config)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[-80:]
        return cls(root / kind / f"{slug}-{key}", key, config)

    @property
    def meta_path(self) -> Path:
        return self.run_dir / "meta.json"

    @property
    def weights_path(self) -> Path:
        return self.run_dir / "model.pt"

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def meta(self) -> dict[str, Any] | None:
        """``meta.json`` (None when absent or unreadable)."""
        return read_json(self.meta_path)

    def finished_meta(self) -> dict[str, Any] | None:
        """The metadata of a finished model of this very config with its weights on disk, else None."""
        meta = self.meta()
        done = meta is not None and meta.get("config") == self.config and meta.get("finished") and self.weights_path.exists()
        return meta if done else None

    def start(self) -> None:
        """Mark the entry as being made (its config, not finished)."""
        write_json(self.meta_path, {"config": self.config, "finished": None})

    def finish(self, weights: dict[str, Any], **measured: Any) -> None:
        """Store the final weights, then the metadata that marks the entry finished (with ``measured``)."""
        atomic_save({"weights": weights}, self.weights_path)
        write_json(self.meta_path, {"config": self.config, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **measured})
