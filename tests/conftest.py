"""Shared fixtures: where the shared data lies, and a CLI runner that captures one invocation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pdm_bench.cli import run

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    """Run ``pdm-bench ARGS`` in-process with a private cache directory; returns code and output."""
    monkeypatch.setenv("PDM_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PDM_BENCH_DATA", raising=False)

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke
