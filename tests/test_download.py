"""`pdm-bench data download`: tested against a local HTTP server on the loopback address serving small fixture
archives (nothing leaves the machine): checksums, resuming, a corrupted archive, and the data set loading after."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pdm_bench import download as dl
from pdm_bench.cli import run
from pdm_bench.errors import UserError


def _idx(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _mnist_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {"train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (30, 28, 28)), 2051),
            "train-labels-idx1-ubyte.gz": _idx(np.arange(30) % 10, 2049),
            "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (20, 28, 28)), 2051),
            "t10k-labels-idx1-ubyte.gz": _idx(np.arange(20) % 10, 2049)}


def _cifar_archive() -> bytes:
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        def add(name: str, obj: object) -> None:
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            add(name, {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))})
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return buffer.getvalue()


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    cut_once: set[str]  # names whose next GET sends half the bytes, then closes
    ranges: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.server.files:
            self.send_error(404)
            return
        data = self.server.files[name]
        start = 0
        if (given := self.headers.get("Range")) is not None:
            self.server.ranges.append(given)
            start = int(given.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if name in self.server.cut_once:
            self.server.cut_once.discard(name)
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-file
            return
        self.wfile.write(data[start:])


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.files, server.cut_once, server.ranges = {**_mnist_files(), "cifar-10-python.tar.gz": _cifar_archive()}, set(), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(dl.MIRROR_VARIABLE, f"http://127.0.0.1:{server.server_address[1]}/")
    yield server
    server.shutdown()
    server.server_close()


def _sources(server: _Server) -> dict[str, tuple[dl.Remote, ...]]:
    """The real file names with the fixtures' md5s (the real table keeps the published ones)."""
    return {name: tuple(dl.Remote(r.name, hashlib.md5(server.files[r.name]).hexdigest(), r.mirrors) for r in remotes)
            for name, remotes in dl.SOURCES.items()}


def test_mnist_downloads_checks_and_loads(mirror: _Server, tmp_path: Path) -> None:
    from pdm_bench.data import load_dataset

    folder = dl.download("mnist", tmp_path / "data", progress=False, log=lambda _: None, sources=_sources(mirror))
    assert sorted(p.name for p in folder.iterdir()) == sorted(r.name for r in dl.SOURCES["mnist"])
    data = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert data.x_train.shape[0] == 30 and data.x_test.shape[0] == 20
    lines: list[str] = []
    dl.download("mnist", tmp_path / "data", progress=False, log=lines.append, sources=_sources(mirror))
    assert sum("present, checksum matches" in line for line in lines) == 4  # nothing fetched again


def test_cifar10_is_unpacked_where_the_loader_looks(mirror: _Server, tmp_path: Path) -> None:
    from pdm_bench.data import load_dataset

    dl.download("cifar10", tmp_path / "data", progress=False, log=lambda _: None, sources=_sources(mirror))
    data = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert data.x_train.shape == (50, 3, 32, 32) and data.x_test.shape[0] == 10


def test_an_interrupted_download_resumes_with_a_range_request(mirror: _Server, tmp_path: Path) -> None:
    mirror.cut_once.add("train-images-idx3-ubyte.gz")
    with pytest.raises(UserError, match="the next run resumes it"):
        dl.download("mnist", tmp_path, progress=False, log=lambda _: None, sources=_sources(mirror))
    part = tmp_path / "mnist" / "train-images-idx3-ubyte.gz.part"
    kept = part.stat().st_size
    assert 0 < kept < len(mirror.files["train-images-idx3-ubyte.gz"])
    dl.download("mnist", tmp_path, progress=False, log=lambda _: None, sources=_sources(mirror))
    assert mirror.ranges == [f"bytes={kept}-"]  # only the missing bytes were asked for
    assert (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").read_bytes() == mirror.files["train-images-idx3-ubyte.gz"]
    assert not part.exists()


def test_a_corrupted_archive_is_one_line_and_leaves_nothing(mirror: _Server, tmp_path: Path) -> None:
    sources = _sources(mirror)
    mirror.files["t10k-labels-idx1-ubyte.gz"] = b"garbage"
    with pytest.raises(UserError, match=r"^Checksum mismatch for t10k-labels-idx1-ubyte.gz from http://127\.0\.0\.1:\d+/"
                                        r"t10k-labels-idx1-ubyte.gz: expected md5 [0-9a-f]{32}, got [0-9a-f]{32}; the "
                                        r"file was deleted, rerun to download it again$"):
        dl.download("mnist", tmp_path, progress=False, log=lambda _: None, sources=sources)
    assert not list((tmp_path / "mnist").glob("t10k-labels*"))


def test_the_cli_command_and_its_errors(mirror: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["data", "download", "mnsit", "--data-dir", str(tmp_path)]) == 2
    assert "Did you mean: mnist?" in capsys.readouterr().err
    assert run(["data", "download", "cifar10-jpeg", "--data-dir", str(tmp_path)]) == 2
    assert "cannot be downloaded" in capsys.readouterr().err
    assert run(["data", "download", "mnist", "--data-dir", str(tmp_path), "--no-progress"]) == 2  # the real md5s
    err = capsys.readouterr().err
    assert "Checksum mismatch for" in err and "Traceback" not in err


def test_the_published_checksums_are_torchvisions() -> None:
    assert {r.name: r.md5 for r in dl.SOURCES["mnist"]} == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
    assert dl.SOURCES["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"
