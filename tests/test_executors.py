"""``--executor slurm``: each study step one job through submitit. Here through submitit's local executor (the same
jobs as local subprocesses); the run on a real single-node Slurm cluster is tests/test_slurm.py."""

from __future__ import annotations

import builtins
import csv
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pdm_bench.errors import UserError
from pdm_bench.executors import SlurmResources, done_marker, import_submitit, run_jobs
from pdm_bench.steps import Step

pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[dev]' brings it)")
CPU_ONLY = SlurmResources(gpus_per_job=0, cpus_per_job=1, mem_gb=2, time_min=10, max_parallel=2)


def test_jobs_run_record_their_time_and_a_rerun_submits_only_what_is_missing(tmp_path: Path) -> None:
    said: list[str] = []
    good = Step("list the components", ("list",), lambda: None)
    bad = Step("train on nothing", ("train", "--dataset", "nosuchdata", "--no-progress"), lambda: None)
    failures = run_jobs([good, bad], resources=CPU_ONLY, log_dir=tmp_path, echo=said.append, cluster="local",
                        poll_seconds=0.2)
    assert len(failures) == 1 and failures[0].startswith("train on nothing (job ") and "log " in failures[0]
    assert done_marker(tmp_path, good).exists() and not done_marker(tmp_path, bad).exists()
    with open(tmp_path / "steps.csv", encoding="utf-8") as handle:
        steps = {row["step"]: row for row in csv.DictReader(handle)}
    assert steps["list-the-components"]["status"] == "finished" and float(steps["list-the-components"]["seconds"]) > 0
    assert steps["train-on-nothing"]["status"] == "failed"
    said.clear()
    again = run_jobs([good, bad], resources=CPU_ONLY, log_dir=tmp_path, echo=said.append, cluster="local", poll_seconds=0.2)
    assert "  done earlier: list the components (not submitted)" in said and len(again) == 1
    assert sum(line.startswith("  submitted:") for line in said) == 1  # only the failed step again


@pytest.mark.parametrize(("settings", "message"), [
    ({"gpus_per_job": -1}, "--slurm-gpus-per-job must be an integer >= 0, got -1"),
    ({"cpus_per_job": 0}, "--slurm-cpus-per-job must be an integer >= 1, got 0"),
    ({"mem_gb": 0.0}, "--slurm-mem must be a positive number of GB, got 0.0"),
    ({"max_parallel": 0}, "--max-parallel must be an integer >= 1, got 0"),
])
def test_bad_resources_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        SlurmResources(**settings)


def test_the_resources_become_submitits_parameters() -> None:
    resources = SlurmResources(partition="gpu", gpus_per_job=2, cpus_per_job=8, mem_gb=32, time_min=90)
    assert resources.parameters("slurm") == {"timeout_min": 90, "mem_gb": 32, "cpus_per_task": 8, "gpus_per_node": 2,
                                             "slurm_partition": "gpu", "slurm_signal_delay_s": 90}
    assert SlurmResources(time_min=1).parameters("slurm")["slurm_signal_delay_s"] == 15  # a requeue before a 1-min limit
    assert "slurm_signal_delay_s" not in resources.parameters("local")
    assert "gpus_per_node" not in CPU_ONLY.parameters("slurm") and "slurm_partition" not in resources.parameters("local")


def test_without_submitit_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_submitit(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "submitit":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(UserError, match=r"pip install 'pdm-bench\[slurm\]'"):
        import_submitit()


@pytest.mark.parametrize(("args", "message"), [
    (("--executor", "slurm", "--slurm-gpus-per-job", "-2"), "--slurm-gpus-per-job must be an integer >= 0, got -2"),
    (("--slurm-mem", "8"), "--slurm-mem applies to --executor slurm only"),
    (("--executor", "slurm", "--jobs", "2"), "with --executor slurm use --max-parallel"),
    (("--executor", "pbs"), "Invalid value for '--executor'"),
])
def test_bad_executor_input_is_one_line(tmp_path: Path, cli: Callable[..., Any], args: tuple[str, ...], message: str) -> None:
    result = cli("paper", "--dataset", "digits", *args, "--results-dir", str(tmp_path / "r"))
    assert result.code == 2 and message in result.err and "Traceback" not in result.err, result.err


def test_no_sbatch_on_path_is_one_line(tmp_path: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("sbatch"):
        pytest.skip("sbatch is on PATH here (a Slurm node)")
    result = cli("paper", "--dataset", "digits", "--epochs", "1", "--threats", "gray", "--executor", "slurm",
                 "--results-dir", str(tmp_path / "r"))
    assert result.code == 2 and "sbatch is not on PATH" in result.err and "Traceback" not in result.err, result.err


def test_sbatch_refusing_a_job_is_one_line(tmp_path: Path) -> None:
    from submitit.core.utils import FailedJobError

    from pdm_bench.executors import submit

    class Refusing:
        def update_parameters(self, **_: Any) -> None:
            pass

        def submit(self, *_: Any) -> None:
            raise FailedJobError("sbatch: error: Invalid account or account/partition combination specified\n"
                                 "sbatch: error: Batch job submission failed")

    with pytest.raises(UserError, match=r"^Slurm refused the job of list: sbatch: error: Invalid account or "
                                        r"account/partition combination specified$"):
        submit(Refusing(), Step("list", ("list",), lambda: None), tmp_path, refusals=(FailedJobError,))
