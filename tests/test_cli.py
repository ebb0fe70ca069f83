"""The CLI: train on digits, reuse the cache, list, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

CliResult = Any  # conftest.CliResult


def test_train_prints_accuracy_then_reuses_the_cached_model(cli: Callable[..., CliResult]) -> None:
    first = cli("train", "--defense", "baseline", "--epochs", "2", "--no-progress")
    assert first.code == 0, first.err
    assert "Dataset digits: 1437 train / 360 test images, 1x8x8, 10 classes" in first.out
    assert "epoch 2/2" in first.out and "trained in" in first.out
    accuracy = first.out.split("Clean test accuracy: ")[1].split("%")[0]
    second = cli("train", "--defense", "baseline", "--epochs", "2", "--no-progress")
    assert second.code == 0 and "Reusing cached model" in second.out and "reused" in second.out
    assert f"Clean test accuracy: {accuracy}%" in second.out


def test_list_shows_defenses_datasets_presets(cli: Callable[..., CliResult]) -> None:
    listing = cli("list")
    assert listing.code == 0
    for word in ("baseline", "rce", "siamese_rvl", "pdm", "rvl_weight=0.1", "digits", "mnist", "cifar10-jpeg", "folder:PATH", "quick", "paper"):
        assert word in listing.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--defense", "pmd"], "Error: Unknown defense 'pmd'. Did you mean: pdm? Available: baseline, pdm, rce, siamese_rvl"),
        (["train", "--dataset", "mnsit"], "Error: Unknown dataset 'mnsit'. Did you mean: mnist?"),
        (["train", "--epochs", "0"], "Error: Invalid value for '--epochs': 0 is not in the range x>=1."),
        (["train", "--epochs", "-3"], "Error: Invalid value for '--epochs': -3 is not in the range x>=1."),
        (["train", "--preset", "fast"], "Error: Invalid value for '--preset': 'fast' is not one of 'quick', 'paper'."),
        (["train", "--device", "tpu"], "Error: Unknown device 'tpu'. Available: auto, cpu, cuda, cuda:N"),
        (["train", "-o", "q"], "Error: --defense-option expects NAME=VALUE, got 'q'"),
        (["train", "-o", "q=2"], "Error: Bad options for defense 'pdm': q must be in [0, 1], got 2.0"),
        (["train", "--dataset", "mnist"], "Error: Dataset 'mnist' needs its files"),
        (["paper", "--dataset", "digits", "--defenses", "baseline,pmd"], "Error: Unknown defense 'pmd'. Did you mean: pdm?"),
        (["paper", "--dataset", "digits", "--train-only", "pdm"], "Error: --train-only repeats pdm from --defenses"),
        (["paper", "--dataset", "digits", "--defenses", ","], "Error: a study needs at least one defense to evaluate (--defenses), got none"),
        (["paper", "--dataset", "digits", "--seeds", "0,x"], "Error: --seeds expects comma-separated non-negative integers"),
        (["paper", "--dataset", "digits", "--seeds", "1,1"], "Error: --seeds expects distinct non-negative integers"),
        (["paper", "--dataset", "digits", "--jobs", "0"], "Error: Invalid value for '--jobs' / '-j': 0 is not in the range x>=1."),
    ],
)
def test_bad_input_is_one_line_without_traceback(cli: Callable[..., CliResult], args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.code != 0
    assert result.err.startswith(message), result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so --device cuda is valid here")
def test_unavailable_cuda_is_a_one_line_error(cli: Callable[..., CliResult]) -> None:
    result = cli("train", "--device", "cuda")
    assert result.code == 2
    assert result.err.startswith("Error: Device 'cuda' is not available") and "--device cpu" in result.err


def test_missing_data_dir_says_where_it_looked(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    result = cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"))
    assert result.code == 2 and str(tmp_path / "nowhere") in result.err and result.err.count("\n") == 1


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    """The installed entry point: exit code and a traceback-free error from a real process."""
    done = subprocess.run([sys.executable, "-m", "pdm_bench", "train", "--defense", "pmd"], capture_output=True, text=True,
                          env={"PATH": "", "PDM_BENCH_CACHE": str(tmp_path)}, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        "Error: Unknown defense 'pmd'. Did you mean: pdm? Available: baseline, pdm, rce, siamese_rvl")


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    import gzip
    import struct

    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as handle:
        handle.write(header + payload)


def test_truncated_mnist_file_is_named_in_one_line(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 2051, (n, 28, 28), bytes(n * 784))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049, (n,), bytes(range(10)) * (n // 10))
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", 2051, (10, 28, 28), bytes(5 * 784))  # half the images missing
    result = cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert result.code == 2 and result.err.count("\n") == 1
    assert "t10k-images-idx3-ubyte.gz" in result.err and "Traceback" not in result.err


def test_study_steps_are_data_that_give_the_same_parameters(tmp_path: Path) -> None:
    from pdm_bench.study import Study
    from pdm_bench.steps import Step

    # A study's steps are data (``pdm-bench step --spec FILE``): the study rebuilt from a step's data has the same
    # threat options, N, seed and results folder.
    white = {"max_iter": 60, "threshold": "clean"}  # the old wb_max_iter / wb_threshold, now white-box options
    study = Study(dataset="digits", defenses=["rce"], train_only=[], threats=["white"], seeds=[3], n_samples=12,
                  threat_options={"white": white}, results_dir=tmp_path, progress=False)
    _, (step,) = study.steps()
    assert step.argv[:2] == ("step", "--spec")
    data = study._specs[Path(step.argv[2])]
    assert data["step"] == {"kind": "evaluate", "threat": "white", "defense": "rce", "seed": 3, "detector": "kde"}
    again = Study.from_data(data["study"])
    assert again.threat_models["white"].params == study.threat_models["white"].params
    assert (again.threat_models["white"].params.max_iter, again.threat_models["white"].params.threshold) == (60, "clean")
    assert (again.n_samples, Path(again.results_dir), again.progress) == (12, tmp_path, False)
    assert not (tmp_path / "logs").exists()  # steps() writes nothing; run() writes the step files
    assert Step("gray box, pdm", ("run",), lambda: None).slug == "gray-box-pdm"


def test_parallel_studies_start_the_costliest_threat_first() -> None:
    from pdm_bench.study import Study
    from pdm_bench.steps import costliest_first

    trainings, runs = Study(defenses=["baseline", "pdm"], train_only=[], threats=["gray", "white", "black"],
                            seeds=[0]).steps()
    assert [step.title for step in costliest_first(runs)] == [
        "black box, baseline", "black box, pdm", "white box, baseline", "white box, pdm", "gray box, baseline",
        "gray box, pdm"]
    assert costliest_first(trainings) == trainings  # no threat: order kept
