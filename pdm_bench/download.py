"""``pdm-bench data download mnist|cifar10``: the data sets from the sources torchvision uses, checked against their
published md5 checksums, resumable, with a progress bar; laid out where ``pdm_bench.data_files`` looks.

A file is fetched to ``NAME.part`` (an interrupted download resumes from there with an HTTP Range request; a server
that ignores Range starts it again), checked, then renamed into place. A checksum that does not match deletes the
part file and is one line naming the file and both checksums. ``PDM_BENCH_DATA_MIRROR`` (a base URL) replaces every
source, for a local mirror; standard library only (no torchvision).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pdm_bench.errors import UserError, unknown_name_error

MIRROR_VARIABLE = "PDM_BENCH_DATA_MIRROR"
CHUNK = 1 << 16
TIMEOUT_S = 60


@dataclass(frozen=True)
class Remote:
    """One file of a data set: its name, md5 and the base URLs to try in turn."""

    name: str
    md5: str
    mirrors: tuple[str, ...]


MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
# torchvision.datasets.MNIST.resources and torchvision.datasets.CIFAR10 (tgz_md5)
SOURCES: dict[str, tuple[Remote, ...]] = {
    "mnist": (Remote("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", MNIST_MIRRORS),
              Remote("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", MNIST_MIRRORS),
              Remote("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", MNIST_MIRRORS),
              Remote("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", MNIST_MIRRORS)),
    "cifar10": (Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", CIFAR10_MIRRORS),),
}
NOT_DOWNLOADABLE = {"cifar10-jpeg": "it is a JPEG copy of CIFAR-10 made for this project; download cifar10 (the "
                                    "official release) and use --dataset cifar10"}


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name: str, data_dir: Path, *, progress: bool = True, log: Callable[[str], None] = print,
             sources: Mapping[str, tuple[Remote, ...]] = SOURCES) -> Path:
    """Fetch data set ``name`` into ``data_dir`` (files already there and intact are kept); the folder it is in."""
    if name in NOT_DOWNLOADABLE:
        raise UserError(f"Dataset '{name}' cannot be downloaded: {NOT_DOWNLOADABLE[name]}")
    if name not in sources:
        raise unknown_name_error("downloadable dataset", name, [*sources])
    target = Path(os.path.expanduser(str(data_dir))) / name
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--data-dir {data_dir}: cannot create {target} ({error.strerror or error})") from None
    for remote in sources[name]:
        path = target / remote.name
        if path.exists() and md5_of(path) == remote.md5:
            log(f"{path}: present, checksum matches")
            continue
        fetch(remote, path, progress=progress, log=log)
    if name == "cifar10":
        _extract_cifar10(target / sources[name][0].name, target, log)
    log(f"Dataset '{name}' is in {target}: use --data-dir {data_dir}")
    return target


def fetch(remote: Remote, path: Path, *, progress: bool, log: Callable[[str], None]) -> None:
    """Download ``remote`` to ``path`` through ``path.part``, trying each mirror; check its md5."""
    mirror = os.environ.get(MIRROR_VARIABLE)
    bases = (mirror.rstrip("/") + "/",) if mirror else remote.mirrors
    part = path.with_name(path.name + ".part")
    errors, url = [], ""
    for base in bases:
        url = base + remote.name
        try:
            _get(url, part, progress=progress)
            break
        except (urllib.error.URLError, OSError, ValueError) as error:
            errors.append(f"{url}: {getattr(error, 'reason', None) or error}")
            log(f"{url}: {errors[-1].split(': ', 1)[1]}")
    else:
        raise UserError(f"Could not download {remote.name} ({'; '.join(errors)}); a partial file is kept in {part} "
                        "and the next run resumes it")
    got = md5_of(part)
    if got != remote.md5:
        part.unlink()
        raise UserError(f"Checksum mismatch for {remote.name} from {url}: expected md5 {remote.md5}, got {got}; "
                        "the file was deleted, rerun to download it again")
    os.replace(part, path)
    log(f"{path}: downloaded, checksum matches")


def _get(url: str, part: Path, *, progress: bool) -> None:
    """Fetch ``url`` into ``part``, resuming from its current size where the server honours Range."""
    from tqdm.auto import tqdm

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (http/https only)
        resumed = have and response.status == 206
        length = int(response.headers.get("Content-Length") or 0)
        total = (have if resumed else 0) + length or None
        with open(part, "ab" if resumed else "wb") as handle, \
                tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True, desc=part.name[:-5],
                     disable=not progress, dynamic_ncols=True) as bar:
            while block := response.read(CHUNK):
                handle.write(block)
                bar.update(len(block))
        if length and part.stat().st_size != total:
            raise OSError(f"the connection closed after {part.stat().st_size} of {total} bytes")


def _extract_cifar10(archive: Path, target: Path, log: Callable[[str], None]) -> None:
    """Unpack the official archive's ``cifar-10-batches-py/`` next to it (once; members checked to stay inside)."""
    done = target / "cifar-10-batches-py" / "test_batch"
    if done.exists():
        return
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("cifar-10-batches-py/") and m.isfile()
                       and ".." not in Path(m.name).parts]
            staging = target / ".extracting"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                tar.extractall(staging, members=members, filter="data")
            except TypeError:  # Python before 3.10.12 / 3.11.4: no filter (the members were checked above)
                tar.extractall(staging, members=members)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(f"Could not unpack {archive}: {error}; delete it and rerun to download it again") from None
    shutil.rmtree(target / "cifar-10-batches-py", ignore_errors=True)
    os.replace(staging / "cifar-10-batches-py", target / "cifar-10-batches-py")
    shutil.rmtree(staging, ignore_errors=True)
    log(f"{target / 'cifar-10-batches-py'}: unpacked")
