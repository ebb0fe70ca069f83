"""The dataset files pdm-bench reads: MNIST (IDX, optionally gzipped), CIFAR-10 (the python pickles, unpickled as data
only) and image folders (``train/<class>/``, ``test/<class>/``). Each ``*_source`` checks the layout and returns the
files' stats (the decode cache's key) and how to decode them; a missing or corrupt file is a one-line ``UserError``."""

from __future__ import annotations

import codecs
import gzip
import io
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import numpy as np
from PIL import Image

from pdm_bench.errors import UserError

DATA_ENV_VAR = "PDM_BENCH_DATA"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
LAYOUTS = {
    "mnist": ", ".join(f"{f}[.gz]" for f in MNIST_FILES) + " in DIR/mnist/ or DIR/",
    "cifar10": "DIR/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) from the official python release",
    "cifar10-jpeg": "DIR/cifar10-jpeg/train/<class>/*.jpg and DIR/cifar10-jpeg/test/<class>/*.jpg",
}
# All a CIFAR-10 pickle may reference (numpy arrays; _codecs.encode is how Python 3 protocol-2 pickles store bytes).
_PICKLE_GLOBALS: dict[tuple[str, str], object] = {
    ("_codecs", "encode"): codecs.encode, ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    **{(mod, fn.__name__): fn for mod in ("numpy.core.multiarray", "numpy._core.multiarray")  # type: ignore[union-attr]
       for fn in (np.zeros(0).__reduce__()[0], np.zeros(1)[0].__reduce__()[0])},  # _reconstruct, scalar
}

# (x_train uint8 NCHW, y_train, x_test uint8 NCHW, y_test, class names)
Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


@dataclass(frozen=True)
class Source:
    """Files a dataset is decoded from (with their stats, for the cache key) and how to decode them."""

    stamps: tuple[tuple[str, int, int], ...]
    decode: Callable[[], Raw]


def _stamp(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    return tuple((str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in paths)


def mnist_source(base: Path) -> Source:
    dirs = [base / "mnist", base / "MNIST" / "raw", base]
    for d in dirs:
        found = [next((p for p in (d / f"{n}.gz", d / n) if p.is_file()), None) for n in MNIST_FILES]
        if all(p is not None for p in found):
            files = [p for p in found if p is not None]
            return Source(_stamp(files), lambda: _decode_mnist(files))
    raise UserError(
        f"Dataset 'mnist' needs its files: none found (looked in: {', '.join(map(str, dirs))}; "
        f"expected {LAYOUTS['mnist']}). Get it with: pdm-bench data download mnist --data-dir DIR, then pass "
        f"--data-dir DIR or set {DATA_ENV_VAR}"
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one (optionally gzipped) IDX file of unsigned bytes, checking magic number and length."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"Corrupt MNIST file {path}: cannot decompress gzip data ({exc})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"Corrupt MNIST file {path}: {len(raw)} bytes is shorter than the {header}-byte IDX header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise UserError(f"Corrupt MNIST file {path}: magic number {got}, expected {magic}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise UserError(f"Corrupt MNIST file {path}: expected {expected} bytes after the header "
                        f"(dims {'x'.join(map(str, dims))}), got {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _decode_mnist(files: Sequence[Path]) -> Raw:
    parts: list[np.ndarray] = []
    for img_path, lbl_path in ((files[0], files[1]), (files[2], files[3])):
        x, y = _read_idx(img_path, 2051), _read_idx(lbl_path, 2049)
        if x.shape[1:] != (28, 28):
            raise UserError(f"Corrupt MNIST file {img_path}: images are {x.shape[1]}x{x.shape[2]}, expected 28x28")
        if y.size and y.max() > 9:
            raise UserError(f"Corrupt MNIST file {lbl_path}: label {int(y.max())} outside 0-9")
        if len(x) != len(y):
            raise UserError(f"MNIST files disagree: {img_path} holds {len(x)} images but {lbl_path} {len(y)} labels")
        parts += [x.reshape(-1, 1, 28, 28), y.astype(np.int64)]
    return parts[0], parts[1], parts[2], parts[3], tuple(str(i) for i in range(10))


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only; any other global is refused (no code runs)."""

    def __init__(self, file: io.BufferedReader, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _PICKLE_GLOBALS:
            return _PICKLE_GLOBALS[module, name]
        raise UserError(f"Refusing CIFAR-10 file {self.path}: it references {module}.{name}; "
                        "only plain data and numpy arrays are allowed")


def _unpickle(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(f, path).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, struct.error) as exc:
        raise UserError(f"Corrupt CIFAR-10 file {path}: cannot unpickle ({type(exc).__name__}: {exc})") from None


def cifar10_source(base: Path) -> Source:
    dirs = [base / "cifar-10-batches-py", base / "cifar10" / "cifar-10-batches-py", base]
    for d in dirs:
        if (d / "data_batch_1").is_file():
            missing = [n for n in CIFAR10_FILES if not (d / n).is_file()]
            if missing:
                raise UserError(f"Dataset 'cifar10': {d} lacks {', '.join(missing)} "
                                f"(expected {LAYOUTS['cifar10']})")
            files = [d / n for n in (*CIFAR10_FILES, "batches.meta") if (d / n).is_file()]
            return Source(_stamp(files), lambda: _decode_cifar10(d))
    raise UserError(
        f"Dataset 'cifar10' needs its files: none found (looked in: {', '.join(map(str, dirs))}; "
        f"expected {LAYOUTS['cifar10']}). Get it with: pdm-bench data download cifar10 --data-dir DIR, then pass "
        f"--data-dir DIR or set {DATA_ENV_VAR}"
    )


def _read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise UserError(f"Corrupt CIFAR-10 file {path}: expected a dict with keys b'data' and b'labels'")
    data = d[b"data"]
    x = np.frombuffer(data, np.uint8).reshape(-1, 3072 if len(data) % 3072 == 0 else 1) \
        if isinstance(data, bytes) else np.asarray(data)
    y = np.asarray(d[b"labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise UserError(f"Corrupt CIFAR-10 file {path}: data is {x.dtype} {x.shape}, expected uint8 (N, 3072)")
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise UserError(f"Corrupt CIFAR-10 file {path}: {y.size} labels ({y.dtype}) for {len(x)} images")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(f"Corrupt CIFAR-10 file {path}: labels outside 0-{num_classes - 1}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _decode_cifar10(d: Path) -> Raw:
    classes = CIFAR10_CLASSES
    if (d / "batches.meta").is_file():
        meta = _unpickle(d / "batches.meta")
        names = meta.get(b"label_names") if isinstance(meta, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, bytes) for n in names):
            raise UserError(f"Corrupt CIFAR-10 file {d / 'batches.meta'}: expected b'label_names', a list of names")
        classes = tuple(n.decode("utf-8", "replace") for n in names)
    train = [_read_cifar_batch(d / n, len(classes)) for n in CIFAR10_FILES[:-1]]
    x_te, y_te = _read_cifar_batch(d / CIFAR10_FILES[-1], len(classes))
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_te, y_te, classes)


def folder_source(name: str, root: Path, hint: str = "") -> Source:
    layout = f"{root}/train/<class>/*.jpg|png and {root}/test/<class>/*"
    if not root.is_dir():
        via = f" ({hint})" if hint else ""
        raise UserError(f"Dataset '{name}': image folder {root}{via} not found; expected {layout}")
    classes: dict[str, list[str]] = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(f"Dataset '{name}': {root / split} not found; expected {layout}")
        with os.scandir(root / split) as it:
            classes[split] = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if classes["train"] != classes["test"]:
        only_tr = sorted(set(classes["train"]) - set(classes["test"]))
        only_te = sorted(set(classes["test"]) - set(classes["train"]))
        raise UserError(f"Image folder {root}: train and test must have the same class folders "
                        f"(only in train: {only_tr or 'none'}; only in test: {only_te or 'none'})")
    class_names = tuple(classes["train"])
    if not class_names:
        raise UserError(f"Image folder {root}: no class folders in {root / 'train'}; expected {layout}")
    stamps: list[tuple[str, int, int]] = []
    labels: dict[str, list[int]] = {"train": [], "test": []}
    exts = tuple(sorted(IMAGE_EXTENSIONS))
    for split in ("train", "test"):
        for label, cls in enumerate(class_names):
            d = f"{root}/{split}/{cls}"  # plain strings and a C-level stat loop: this runs on every cached reload
            try:
                paths = [f"{d}/{n}" for n in sorted(os.listdir(d)) if n.lower().endswith(exts) and n[0] != "."]
                stats = list(map(os.stat, paths))
            except OSError as exc:
                raise UserError(f"Image folder {root}: cannot read {exc.filename}: {exc.strerror}") from None
            found = [(p, st.st_size, st.st_mtime_ns) for p, st in zip(paths, stats) if S_ISREG(st.st_mode)]
            if not found:
                raise UserError(f"Image folder {d} holds no images ({', '.join(exts)})")
            stamps += found
            labels[split] += [label] * len(found)

    def decode() -> Raw:
        x = _decode_images([p for p, _, _ in stamps])
        n = len(labels["train"])
        return x[:n], np.array(labels["train"], np.int64), x[n:], np.array(labels["test"], np.int64), class_names

    return Source(tuple(stamps), decode)


WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grayscale (a 16-bit PNG opens as I;16 or I)


def _decode_image(path: str) -> np.ndarray:
    """HWC (or HW for grayscale) uint8 pixels; 16-bit grayscale is scaled to 8 bits (Pillow's RGB conversion would
    clip it to white). Corrupt or truncated files, and modes with no [0, 255] reading, raise UserError."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in WIDE_GRAY_MODES:
                return _gray16_to_uint8(path, np.asarray(img))
            if img.mode in ("F", "I;32", "I;32B", "I;32L"):
                raise UserError(f"Image {path} has {img.mode} pixels (float or 32-bit): no fixed range to read as "
                                "0-255; save it as 8-bit or 16-bit grayscale, or 8-bit RGB")
            arr = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        msg = " ".join(str(exc).split())
        raise UserError(f"Corrupt image file {path}: {msg}") from None
    return arr


def _gray16_to_uint8(path: str, pixels: np.ndarray) -> np.ndarray:
    """16-bit grayscale (0-65535) to 0-255, rounded."""
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise UserError(f"Image {path} has 32-bit pixels outside 0-65535 ({pixels.min()}..{pixels.max()}); save it "
                        "as 8-bit or 16-bit grayscale")
    return np.rint(pixels.astype(np.float64) * (255 / 65535)).astype(np.uint8)


def _decode_images(paths: Sequence[str]) -> np.ndarray:
    """Decode all images, in sorted order, into one uint8 NCHW array.

    A plain loop: Pillow's per-file overhead is Python-bound, so threads measured no faster (2-core box).
    """
    arrays = [_decode_image(p) for p in paths]
    shape = arrays[0].shape[:2]
    for path, a in zip(paths, arrays):
        if a.shape[:2] != shape:
            raise UserError(f"Image {path} is {a.shape[1]}x{a.shape[0]}, but {paths[0]} is "
                            f"{shape[1]}x{shape[0]}; all images of a folder must share one size")
    rgb = any(a.ndim == 3 for a in arrays)
    x = np.stack([np.repeat(a[:, :, None], 3, axis=2) if rgb and a.ndim == 2 else a for a in arrays])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if rgb else x[:, None]
