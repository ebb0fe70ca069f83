"""Everything pdm-bench writes to disk goes through here: atomic writes (a reader sees the old file or the new,
never half), file locks, and the chunked store of an attack's images (a killed attack resumes at its first
unfinished chunk; processes running the same attack share its chunks)."""

from __future__ import annotations

import errno
import fcntl
import io
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

from pdm_bench.errors import WriteError

Log = Callable[[str], None]
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _temporary(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary name beside ``path``, private to this process and thread (two writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{suffix}")


def write_error(path: Path, error: OSError, kept: str = "the file is as it was before") -> WriteError:
    """The one-line error for a write to ``path`` that failed: a full disk (or a short write, as numpy reports it:
    ``3840 requested and 3040 written``) says so; ``kept``: what is left of the file."""
    if error.errno in FULL_DISK:
        cause = "the disk is full (no space left on device)"
    elif error.errno is None and "requested and" in str(error):
        cause = f"a short write ({error}): the disk is full"
    else:
        cause = error.strerror or str(error)
    return WriteError(error.errno, f"Cannot write {path}: {cause}; {kept}. Free some space (or fix the cause) and rerun "
                      "the same command", str(path))


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd``; a write that makes no progress (a full disk) is an ``OSError`` (ENOSPC)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, f"{len(data)} bytes requested and {len(data) - len(view)} written")
        view = view[written:]


@contextmanager
def _replacing(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; moved onto ``path`` when the block ends. A failed write
    leaves ``path`` as it was, no temporary file behind, and is a one-line :class:`WriteError`."""
    tmp = _temporary(path, suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        tmp.unlink(missing_ok=True)  # gone once replaced


def _write_new(path: Path, data: bytes | memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` through a temporary file and ``os.replace``."""
    with _replacing(path) as tmp:
        _write_new(tmp, data)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) through a temporary file and ``os.replace``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def append_bytes(path: Path, data: bytes, *, size: int) -> None:
    """Append ``data`` to ``path``, which holds ``size`` bytes (longer: its tail past ``size`` is cut off first). A
    failed write cuts the file back to ``size`` bytes (nothing half written stays) and is a :class:`WriteError`. The
    caller holds the file's lock."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        os.lseek(fd, size, os.SEEK_SET)
        try:
            write_all(fd, data)
        except BaseException as error:
            os.ftruncate(fd, size)
            if isinstance(error, OSError):
                raise write_error(path, error, "nothing of this write was kept") from None
            raise
    finally:
        os.close(fd)


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
    """``torch.save`` through a temporary file and ``os.replace`` (torch's failed write, e.g. on a full disk, is a
    one-line :class:`WriteError`)."""
    import torch

    with _replacing(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as error:
            raise OSError(None, f"torch.save failed ({str(error).splitlines()[0][:200]}): is the disk full?") from None


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and ``os.replace``. The bytes are written here, not by numpy, whose
    write to a full disk can stop short without an error."""
    with _replacing(path, ".tmp.npy") as tmp:
        buffer = io.BytesIO()
        np.save(buffer, array)
        _write_new(tmp, buffer.getbuffer())


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
