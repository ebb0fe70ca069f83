"""A study's steps are data: the same JSON runs in this process, as `pdm-bench step` subprocesses (--jobs) and as
Slurm jobs (tests/test_slurm.py), with the same rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from pdm_bench.cli import run
from pdm_bench.errors import UserError
from pdm_bench.study import Study, run_step_data

TINY = ["paper", "--dataset", "digits", "--epochs", "1", "--defenses", "baseline,pdm", "--train-only", "",
        "--threats", "gray", "--attacks", "fgsm-0.1,cw", "--no-resiliency", "--n-samples", "20", "--no-progress"]
TIMING = {"attack_seconds", "finished"}


def value_rows(results: Path) -> list[tuple[str, ...]]:
    with open(results / "results.csv", encoding="utf-8", newline="") as handle:
        return sorted(tuple(v for k, v in row.items() if k != "time") for row in csv.DictReader(handle)
                      if row["metric"] not in TIMING)


def test_the_study_round_trips_through_its_data(tmp_path: Path) -> None:
    study = Study(dataset="digits", defenses=["baseline"], train_only=[], threats=["gray", "adaptive"],
                  threat_options={"gray": {"attacks": ["fgsm-0.1", "cw"]}, "adaptive": {"iterations": 5}},
                  results_dir=tmp_path / "r", n_samples=10)
    data = json.loads(json.dumps(study.to_data()))
    again = Study.from_data(data)
    assert again.to_data() == study.to_data()
    assert again.threat_models["gray"].params == study.threat_models["gray"].params
    assert again.threat_models["adaptive"].params == study.threat_models["adaptive"].params
    trainings, evaluations = study.steps()
    spec = study._specs[Path(evaluations[0].argv[-1])]
    assert evaluations[0].argv[:2] == ("step", "--spec") and spec["step"]["threat"] == "gray"
    assert spec["study"] == study.to_data() and trainings[0].argv != evaluations[0].argv


def test_in_process_and_two_jobs_give_the_same_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.setenv("PDM_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # weights depend on the thread count: the same one here and in jobs
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run([*TINY, "--results-dir", str(tmp_path / "here")]) == 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("PDM_BENCH_CACHE", str(tmp_path / "cache-jobs"))
    assert run([*TINY, "--results-dir", str(tmp_path / "jobs"), "--jobs", "2"]) == 0, capsys.readouterr().err
    here = [r for r in value_rows(tmp_path / "here")]
    jobs = [r for r in value_rows(tmp_path / "jobs")]
    assert len(here) > 50 and here == jobs


@pytest.mark.parametrize("data", [{}, [], {"format": 1, "study": {}, "step": {"kind": "dance"}}, {"format": 99}])
def test_bad_step_data_is_one_line(data: Any) -> None:
    with pytest.raises(UserError, match="a study step's data must be what pdm-bench wrote"):
        run_step_data(data)


def test_a_missing_or_corrupt_step_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["step", "--spec", str(tmp_path / "none.json")]) == 2
    assert "cannot read the study step" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert run(["step", "--spec", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the study step" in err and "Traceback" not in err
