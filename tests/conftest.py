"""Shared fixtures: where the shared data lies, a CLI runner that captures one invocation, headless Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pdm_bench.cli import run

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
def chromium(tmp_path: Path) -> list[str]:
    """Debian's headless Chromium as a command line (its flags and a fresh profile), for the tests that render a
    page in it (the report, the documentation site). Without it they skip, or fail where PDM_BENCH_REQUIRE_BROWSER
    is set (.ci/run sets it once it has installed chromium)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("PDM_BENCH_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed, and PDM_BENCH_REQUIRE_BROWSER is set (.ci/run installs it)")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def repository_left_clean() -> Iterator[None]:
    """The suite writes nothing into the repository: no default results or cache folder appears in it."""
    watched = [REPO / "pdm-results", REPO / ".cache"]
    before = {path for path in watched if path.exists()}
    yield
    created = [str(path) for path in watched if path.exists() and path not in before]
    assert not created, f"the tests wrote into the repository: {created}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's sibling ``../shared/data`` (MNIST, cifar10-jpeg)."""
    return SHARED_DATA


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``pdm-bench ARGS`` in-process with a private cache directory, in a private working directory (so a
    default ``pdm-results/`` lands there, not in the repository); returns code and output."""
    monkeypatch.setenv("PDM_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PDM_BENCH_DATA", raising=False)

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


FakeDist = Callable[[Path, str, "dict[str, str | Path]", "dict[str, dict[str, str]]"], None]


def install_fake_dist(site: Path, dist: str, modules: dict[str, str | Path], groups: dict[str, dict[str, str]]) -> None:
    """Write what ``pip install`` would: the modules (a source text or a file to copy) and
    ``<dist>-0.1.0.dist-info`` with METADATA and ``entry_points.txt`` (group -> {name: target})."""
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        if isinstance(source, Path):
            shutil.copy(source, site / name)
        else:
            (site / name).write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in groups.items()))


@pytest.fixture
def fake_dist() -> FakeDist:
    """:func:`install_fake_dist` (test modules cannot import conftest under --import-mode=importlib)."""
    return install_fake_dist


@pytest.fixture(scope="session")
def digits_softmax() -> Any:
    """An ART classifier over a softmax regression on digits (seeded, 300 Adam steps): small enough for ART's C&W to
    run a high-confidence attack in a test, and its logit margins are bounded by the pixel box."""
    import torch

    from pdm_bench.art_adapter import to_art_classifier
    from pdm_bench.data import load_dataset

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    model.embedding = torch.nn.Identity()  # to_art_classifier expects the embedding module
    return to_art_classifier(model, input_shape=data.input_shape, nb_classes=10, device=torch.device("cpu"))
