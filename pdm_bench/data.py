"""Datasets: embedded digits, MNIST (IDX), CIFAR-10 (python pickle) and image folders (their files:
``pdm_bench.data_files``), with a decode cache.

Every loader returns float32 NCHW images in [0, 1] and int64 labels. Decoded images are cached as one float32
``.npy`` (memory-mapped copy-on-write on reload, so a reload costs ~nothing) plus a small ``.npz`` (labels, class
names, fingerprint) under ``<cache_dir>/data/``, keyed by the source files' paths, sizes and mtimes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdm_bench.arguments import expand_path
from pdm_bench.data_files import DATA_ENV_VAR, LAYOUTS, Source, cifar10_source, folder_source, mnist_source
from pdm_bench.errors import UserError, unknown_name_error

DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "cifar10", "cifar10-jpeg")
_CACHE_VERSION = "1"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split: float32 NCHW images in [0, 1] and int64 labels."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    class_names: tuple[str, ...]
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The explicit ``data_dir``, else ``$PDM_BENCH_DATA``, else None."""
    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV_VAR) or None
    return None if value is None else Path(os.path.abspath(expand_path(value, f"--data-dir (or {DATA_ENV_VAR})")))


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """First 16 hex chars of the sha256 of the arrays' bytes (in order)."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # type: ignore[arg-type]
    return digest.hexdigest()[:16]


def load_dataset(name: str, *, data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name (see ``DATASET_NAMES``, or ``folder:<path>``), decoding through the cache."""
    if name == "digits":
        return _load_digits()
    if name.startswith("folder:"):
        raw_path = name[len("folder:"):].strip()
        if not raw_path:
            raise UserError("Dataset 'folder:' needs a path: folder:/path/to/images "
                            "(holding train/<class>/ and test/<class>/)")
        root = Path(os.path.abspath(expand_path(raw_path, "Dataset folder:")))
        name = f"folder:{root}"
        source = folder_source(name, root)
    elif name in DATASET_NAMES:
        base = resolve_data_dir(data_dir)
        if base is None:
            raise UserError(
                f"Dataset '{name}' needs its files: pass --data-dir DIR or set {DATA_ENV_VAR} "
                f"(looked in: nowhere, neither is given; expected {LAYOUTS[name]}){_download_hint(name)}"
            )
        if not base.is_dir():
            raise UserError(f"Data directory {base} (from --data-dir or {DATA_ENV_VAR}) does not exist; "
                            f"dataset '{name}' expects {LAYOUTS[name]}{_download_hint(name)}")
        if name == "mnist":
            source = mnist_source(base)
        elif name == "cifar10":
            source = cifar10_source(base)
        else:
            source = folder_source(name, base / "cifar10-jpeg", hint=f"under --data-dir / {DATA_ENV_VAR}")
    else:
        raise unknown_name_error("dataset", name, [*DATASET_NAMES, "folder:<path>"])
    data = _load_cached(name, source, cache_dir)
    if data.num_classes < 2:
        raise UserError(f"Dataset '{name}' has {data.num_classes} class ({', '.join(data.class_names) or 'none'}): a "
                        "classifier needs at least 2 (one folder per class under train/ and test/)")
    return data


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return _make("digits", x_tr, y_tr, x_te, y_te, tuple(str(i) for i in range(10)))


def _make(name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
          classes: tuple[str, ...]) -> Dataset:
    arrays = [np.ascontiguousarray(a) for a in (x_tr, y_tr, x_te, y_te)]
    return Dataset(name, *arrays, class_names=classes, fingerprint=fingerprint_arrays(*arrays))  # type: ignore[arg-type, misc]


def _cache_stem(cache_dir: str | Path, name: str, source: Source) -> tuple[Path, str]:
    """``(<cache_dir>/data/<safe-name>-<key>, safe-name)``; key hashes the source files' paths, sizes, mtimes."""
    digest = hashlib.sha256(f"{_CACHE_VERSION}\0{name}\n".encode())
    digest.update("\n".join(f"{p}\0{size}\0{mtime}" for p, size, mtime in source.stamps).encode())
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")
    if safe != name or len(safe) > 40:
        safe = f"{safe[-40:]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return expand_path(cache_dir, "--cache-dir") / "data" / f"{safe}-{digest.hexdigest()[:16]}", safe


def _load_cached(name: str, source: Source, cache_dir: str | Path | None) -> Dataset:
    """Decode ``source`` unless ``cache_dir`` holds it; the cache keeps float32 pixels, memory-mapped on reload."""
    stem, safe = _cache_stem(cache_dir, name, source) if cache_dir is not None else (None, "")
    if stem is not None and (cached := _read_cache(stem, name)) is not None:
        return cached
    x_tr, y_tr, x_te, y_te, classes = source.decode()
    x_all = np.concatenate([x_tr, x_te]).astype(np.float32)
    x_all /= np.float32(255)
    ds = _make(name, x_all[: len(x_tr)], y_tr.astype(np.int64), x_all[len(x_tr):], y_te.astype(np.int64), classes)
    if stem is not None:
        _write_cache(stem, safe, x_all, y_train=ds.y_train, y_test=ds.y_test, class_names=np.array(classes, dtype=str),
                     fingerprint=np.array(ds.fingerprint), x_shape=np.array(x_all.shape, np.int64))
    return ds


def _read_cache(stem: Path, name: str) -> Dataset | None:
    """The cached dataset, or None when its files are absent, corrupt or inconsistent."""
    try:
        with np.load(f"{stem}.npz", allow_pickle=False) as z:
            meta = {k: z[k] for k in ("y_train", "y_test", "class_names", "fingerprint", "x_shape")}
        x_all = np.load(f"{stem}.npy", mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    y_tr, y_te = meta["y_train"], meta["y_test"]
    classes = tuple(str(c) for c in meta["class_names"].reshape(-1))
    if (x_all.dtype != np.float32 or x_all.shape != tuple(meta["x_shape"]) or x_all.ndim != 4
            or len(x_all) != len(y_tr) + len(y_te) or y_tr.dtype != np.int64 or y_te.dtype != np.int64
            or any(y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= len(classes))) for y in (y_tr, y_te))):
        return None
    return Dataset(name, x_all[: len(y_tr)], y_tr, x_all[len(y_tr):], y_te,
                   class_names=classes, fingerprint=str(meta["fingerprint"]))


def _write_cache(stem: Path, safe: str, x_all: np.ndarray, **meta: np.ndarray) -> None:
    """Write ``<stem>.npy`` then ``<stem>.npz``, each atomically (temp file + rename); failures only warn.

    Other keys' files of the same dataset (stale) and abandoned temp files older than an hour are removed.
    """

    def atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        atomic(Path(f"{stem}.npy"), lambda f: np.save(f, x_all))
        atomic(Path(f"{stem}.npz"), lambda f: np.savez(f, **meta))  # type: ignore[arg-type]
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {stem}.npy/.npz: {exc}", stacklevel=3)
        return
    ours = re.compile(rf"\.?{re.escape(safe)}-[0-9a-f]{{16}}\.np[yz](\..+\.tmp)?")
    for p in stem.parent.iterdir():
        if ours.fullmatch(p.name) and not p.name.startswith(stem.name + ".np"):
            with contextlib.suppress(OSError):
                if not p.name.startswith(".") or time.time() - p.stat().st_mtime > 3600:
                    p.unlink()


def _download_hint(name: str) -> str:
    """How to get a data set that can be downloaded ('' for the others)."""
    return f"; get it with: pdm-bench data download {name} --data-dir DIR" if name in ("mnist", "cifar10") else ""
