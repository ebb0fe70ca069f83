"""Dataset loaders: digits, MNIST IDX, CIFAR-10 pickles, image folders, the decode cache, and input errors."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdm_bench.data import DATASET_NAMES, Dataset, load_dataset, resolve_data_dir
from pdm_bench.errors import UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _need_shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.is_dir():
        pytest.skip(f"shared {sub} files not found at {path}")
    return path


def _timed_load(name: str, **kw: object) -> tuple[Dataset, float]:
    t0 = time.perf_counter()
    ds = load_dataset(name, **kw)  # type: ignore[arg-type]
    return ds, time.perf_counter() - t0


def _assert_same(a: Dataset, b: Dataset) -> None:
    assert a.name == b.name and a.class_names == b.class_names and a.fingerprint == b.fingerprint
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def _write_mnist(root: Path, n_train: int = 12, n_test: int = 7, gz: bool = True) -> np.ndarray:
    """A tiny, valid MNIST in ``root/mnist``; returns the training images."""
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir(parents=True)
    x_train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    arrays = {"train-images-idx3-ubyte": (x_train, 2051), "train-labels-idx1-ubyte": (np.arange(n_train) % 10, 2049),
              "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 2051),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10, 2049)}
    for name, (arr, magic) in arrays.items():
        data = _idx_bytes(np.asarray(arr), magic)
        (root / "mnist" / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return x_train


def _write_cifar(d: Path, n: int = 20, numpy_v1_names: bool = True) -> list[tuple[np.ndarray, list[int]]]:
    """Batches in the official python format (dict, b'data' an (n, 3072) uint8 array, protocol 2)."""
    rng = np.random.default_rng(1)
    d.mkdir(parents=True, exist_ok=True)
    batches = []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()
        raw = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                            b"filenames": [b"x.png"] * n}, protocol=2)
        if numpy_v1_names:  # as written by the numpy of the official release
            raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (d / name).write_bytes(raw)
        batches.append((data, labels))
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": n, b"num_vis": 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def _write_folder(root: Path, classes: dict[str, list[np.ndarray]], split: str = "train") -> None:
    for cls, images in classes.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / split / cls / f"{i:03d}.png")


# ---------------------------------------------------------------- digits


def test_digits_shapes_range_split_and_determinism() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.num_classes == 10 and ds.input_shape == (1, 8, 8) and ds.class_names[3] == "3"
    full = np.bincount(np.concatenate([ds.y_train, ds.y_test]))
    assert np.all(np.abs(np.bincount(ds.y_test) - full * 0.2) <= 1)  # stratified
    _assert_same(ds, load_dataset("digits"))
    assert len(ds.fingerprint) == 16 and int(ds.fingerprint, 16) >= 0


# ---------------------------------------------------------------- shared data


def test_mnist_shared_counts_and_cache(tmp_path: Path) -> None:
    _need_shared("mnist")
    ds = load_dataset("mnist", data_dir=SHARED, cache_dir=tmp_path)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert np.array_equal(np.unique(ds.x_test[:100] * 255).round(3) % 1, np.zeros_like(np.unique(ds.x_test[:100])))
    again, seconds = _timed_load("mnist", data_dir=SHARED, cache_dir=tmp_path)
    assert seconds < 1.0
    _assert_same(ds, again)


@pytest.mark.slow  # decoding 60000 JPEGs measured 16-21 s on a 2-core box
def test_cifar10_jpeg_shared_full_load_and_cache(tmp_path: Path) -> None:
    root = _need_shared("cifar10-jpeg")
    ds = load_dataset("cifar10-jpeg", data_dir=root.parent, cache_dir=tmp_path)
    assert ds.name == "cifar10-jpeg" and list(ds.class_names) == CIFAR_CLASSES
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert np.bincount(ds.y_train).tolist() == [5000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0 and 0.3 < ds.x_test.mean() < 0.7
    with Image.open(root / "test" / "cat" / "0000.jpg") as img:
        first_cat = np.asarray(img.convert("RGB")).transpose(2, 0, 1) / np.float32(255)
    assert np.array_equal(ds.x_test[3000], first_cat)  # cat = class 3, 1000 per class, sorted files
    again, seconds = _timed_load("cifar10-jpeg", data_dir=root.parent, cache_dir=tmp_path)
    # best of two: reading 614 MB of cached arrays took 1.06 s once on a box loaded by 4 jobs
    seconds = min(seconds, _timed_load("cifar10-jpeg", data_dir=root.parent, cache_dir=tmp_path)[1])
    assert seconds < 1.0
    _assert_same(ds, again)


# ---------------------------------------------------------------- formats on tiny files


def test_mnist_raw_files_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x_train = _write_mnist(tmp_path, gz=False)
    monkeypatch.setenv("PDM_BENCH_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path and resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    ds = load_dataset("mnist")
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.y_test.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert np.array_equal(ds.x_train[:, 0] * np.float32(255), x_train.astype(np.float32))


def test_cifar10_pickle_pixel_layout(tmp_path: Path) -> None:
    batches = _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert list(ds.class_names) == CIFAR_CLASSES
    row = batches[1][0][4]  # data_batch_2, image 4 -> training index 24
    assert ds.x_train[24, 1, 5, 7] * 255 == pytest.approx(row[1024 + 5 * 32 + 7])  # green plane, row 5, col 7
    assert np.array_equal(np.rint(ds.x_train[24] * 255).astype(np.uint8), row.reshape(3, 32, 32))
    assert ds.y_train.tolist() == [y for _, labels in batches[:5] for y in labels]
    assert np.array_equal(np.rint(ds.x_test * 255).astype(np.uint8).reshape(20, -1), batches[5][0])
    _assert_same(ds, load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache"))


def test_cifar10_found_directly_in_data_dir(tmp_path: Path) -> None:
    _write_cifar(tmp_path, n=3, numpy_v1_names=False)
    assert load_dataset("cifar10", data_dir=tmp_path).y_test.shape == (3,)


def test_folder_gray_rgb_and_mixed(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    gray = {c: [rng.integers(0, 256, (5, 6), dtype=np.uint8) for _ in range(2)] for c in ("b", "a")}
    for split in ("train", "test"):
        _write_folder(tmp_path / "gray", gray, split)
    ds = load_dataset(f"folder:{tmp_path / 'gray'}")
    assert ds.name == f"folder:{tmp_path / 'gray'}" and ds.class_names == ("a", "b")
    assert ds.x_train.shape == (4, 1, 5, 6) and ds.input_shape == (1, 5, 6) and ds.y_train.tolist() == [0, 0, 1, 1]
    assert np.array_equal(np.rint(ds.x_train[2, 0] * 255).astype(np.uint8), gray["b"][0])

    rgb = {"cat": [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)], "dog": [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)]}
    _write_folder(tmp_path / "rgb", rgb, "train")
    _write_folder(tmp_path / "rgb", {"cat": [np.zeros((4, 4), np.uint8)], "dog": rgb["dog"]}, "test")
    ds = load_dataset(f"folder:{tmp_path / 'rgb'}")
    assert ds.x_train.shape == (2, 3, 4, 4) and ds.x_test.shape == (2, 3, 4, 4)  # the gray test image became RGB
    assert np.array_equal(np.rint(ds.x_train[1] * 255).astype(np.uint8), rgb["dog"][0].transpose(2, 0, 1))
    assert ds.x_test[0].max() == 0.0


def test_cache_rebuilds_on_change_and_on_corruption(tmp_path: Path) -> None:
    img = np.full((3, 3), 10, np.uint8)
    for split in ("train", "test"):
        _write_folder(tmp_path / "f", {"a": [img], "b": [img]}, split)
    name, cache = f"folder:{tmp_path / 'f'}", tmp_path / "cache"
    first = load_dataset(name, cache_dir=cache)
    files = sorted(p.name for p in (cache / "data").iterdir())
    assert len(files) == 2 and {Path(f).suffix for f in files} == {".npy", ".npz"}  # no temp files left

    Image.fromarray(np.full((3, 3), 200, np.uint8)).save(tmp_path / "f" / "train" / "a" / "000.png")
    os.utime(tmp_path / "f" / "train" / "a" / "000.png", ns=(1, 1))  # a changed file re-decodes
    changed = load_dataset(name, cache_dir=cache)
    assert changed.x_train[0].max() * 255 == pytest.approx(200) and changed.fingerprint != first.fingerprint
    assert len(list((cache / "data").iterdir())) == 2  # the stale files went

    for path in (cache / "data").iterdir():  # truncated array and garbage metadata: ignored, rebuilt
        path.write_bytes(path.read_bytes()[: 100 if path.suffix == ".npy" else 10])
    _assert_same(changed, load_dataset(name, cache_dir=cache))
    _assert_same(changed, load_dataset(name, cache_dir=cache))


# ---------------------------------------------------------------- errors


def test_unknown_name_suggests() -> None:
    with pytest.raises(UserError, match=r"Unknown dataset 'mnsit'\. Did you mean: mnist\?") as err:
        load_dataset("mnsit")
    assert all(n in str(err.value) for n in (*DATASET_NAMES, "folder:<path>"))


def test_missing_data_dir_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PDM_BENCH_DATA", raising=False)
    for name in ("mnist", "cifar10", "cifar10-jpeg"):
        with pytest.raises(UserError, match=rf"Dataset '{name}' needs its files: pass --data-dir DIR or set PDM_BENCH_DATA"):
            load_dataset(name)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(UserError) as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / "mnist") in str(err.value) and "train-images-idx3-ubyte[.gz]" in str(err.value)
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(UserError, match=r"cifar10-jpeg.*not found"):
        load_dataset("cifar10-jpeg", data_dir=tmp_path)
    with pytest.raises(UserError, match="needs a path"):
        load_dataset("folder:")


def test_mnist_truncated_gz_names_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(UserError, match=rf"Corrupt MNIST file {path}: cannot decompress"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_truncated_content_and_bad_magic(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-1234]))
    with pytest.raises(UserError, match=rf"Corrupt MNIST file {path}: expected 5488 bytes after the header .*got 4254"):
        load_dataset("mnist", data_dir=tmp_path)
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.zeros(12), 2051)[:-4]))
    with pytest.raises(UserError, match=rf"Corrupt MNIST file {labels}: magic number 2051, expected 2049"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_count_mismatch_and_label_range(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.zeros(11), 2049)))
    with pytest.raises(UserError, match="holds 12 images but .* 11 labels"):
        load_dataset("mnist", data_dir=tmp_path)
    labels.write_bytes(gzip.compress(_idx_bytes(np.full(12, 10), 2049)))
    with pytest.raises(UserError, match="label 10 outside 0-9"):
        load_dataset("mnist", data_dir=tmp_path)


def test_cifar10_truncated_and_unsafe_pickles(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar(d, n=4)
    path = d / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match=rf"Corrupt CIFAR-10 file {path}: cannot unpickle"):
        load_dataset("cifar10", data_dir=tmp_path)
    path.write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}, protocol=2))  # a code reference
    with pytest.raises(UserError, match=rf"Refusing CIFAR-10 file {path}: it references posix.getcwd"):
        load_dataset("cifar10", data_dir=tmp_path)
    (d / "data_batch_5").unlink()
    with pytest.raises(UserError, match="lacks data_batch_5"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_folder_corrupt_jpeg_names_file(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _write_folder(tmp_path, {"a": [np.zeros((8, 8, 3), np.uint8)]}, split)
    bad = tmp_path / "train" / "a" / "001.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad, quality=95)
    full = bad.read_bytes()
    for cut in (600, len(full) // 2):  # inside the headers; inside the scan data
        bad.write_bytes(full[:cut])
        with pytest.raises(UserError, match=rf"Corrupt image file {bad}: (?i:.*truncated)"):
            load_dataset(f"folder:{tmp_path}")
    bad.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=rf"Corrupt image file {bad}"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_class_mismatch_and_size_mismatch(tmp_path: Path) -> None:
    img = np.zeros((4, 4), np.uint8)
    _write_folder(tmp_path, {"a": [img], "b": [img]}, "train")
    _write_folder(tmp_path, {"a": [img], "c": [img]}, "test")
    with pytest.raises(UserError, match=r"same class folders \(only in train: \['b'\]; only in test: \['c'\]\)"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "test" / "c").rename(tmp_path / "test" / "b")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "train" / "b" / "001.png")
    with pytest.raises(UserError, match=rf"Image {tmp_path / 'train' / 'b' / '001.png'} is 4x5, but .* is 4x4"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(UserError, match="not found"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_folder_unreadable_entry_names_it(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _write_folder(tmp_path, {"a": [np.zeros((2, 2), np.uint8)]}, split)
    (tmp_path / "test" / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(UserError, match=rf"cannot read {tmp_path / 'test' / 'a' / 'gone.png'}"):
        load_dataset(f"folder:{tmp_path}")
