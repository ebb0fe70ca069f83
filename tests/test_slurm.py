"""``--executor slurm`` on a real single-node Slurm cluster (Debian's slurm-wlm 22.05 and munge; .ci/run installs and
starts it with .ci/slurm_cluster.sh): the tiny digits study as Slurm jobs gives the report ``--executor local``
gives; a job cancelled with scancel mid-study fails the study with its state, and the rerun submits only that step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
STUDY = ("paper", "--dataset", "digits", "--epochs", "2", "--defenses", "baseline,pdm", "--train-only", "",
         "--threats", "gray", "--attacks", "fgsm-0.1,cw", "--no-resiliency", "--n-samples", "12", "--no-progress")
SLURM = ("--executor", "slurm", "--slurm-gpus-per-job", "0", "--slurm-cpus-per-job", "1", "--slurm-mem", "2",
         "--slurm-time", "30")
TABLES = ("table1_accuracy.csv", "table2_graybox_auc.csv", "table2b_graybox_fpr.csv")


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20, check=False)
    return state.returncode == 0 and any(s in state.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm() -> None:
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[dev]' brings it)")
    if not cluster_up():
        if os.environ.get("PDM_BENCH_REQUIRE_SLURM"):
            pytest.fail("no Slurm node is up, and PDM_BENCH_REQUIRE_SLURM is set (.ci/run starts the cluster)")
        pytest.skip("no Slurm cluster here: apt-get install slurm-wlm munge, then bash .ci/slurm_cluster.sh start")


def pdm_bench(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PDM_BENCH_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "pdm_bench", *args], capture_output=True, text=True, env=env,
                          timeout=900, check=False)


def test_the_study_as_slurm_jobs_equals_the_local_one_and_resumes_after_scancel(slurm: None, tmp_path: Path) -> None:
    local = pdm_bench(*STUDY, "--results-dir", str(tmp_path / "local"), cache=tmp_path / "cache-local")
    assert local.returncode == 0, local.stderr
    # A second study: cancel its PDM gray-box job as soon as Slurm has it (max one job at a time: it waits its turn).
    env = {**os.environ, "PDM_BENCH_CACHE": str(tmp_path / "cache-slurm")}
    cluster = [sys.executable, "-m", "pdm_bench", *STUDY, *SLURM, "--max-parallel", "1", "--results-dir",
               str(tmp_path / "slurm")]
    study = subprocess.Popen(cluster, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    cancelled = None
    deadline = time.monotonic() + 600
    while cancelled is None and study.poll() is None and time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=False).stdout
        cancelled = next((line.split()[0] for line in queue.splitlines() if line.endswith("gray-box-pdm")), None)
        time.sleep(0.5)
    assert cancelled is not None, "the PDM gray-box job never reached the queue"
    subprocess.run(["scancel", cancelled], check=True)
    out, err = study.communicate(timeout=600)
    assert study.returncode == 2 and f"job {cancelled}, state CANCELLED" in err and "Traceback" not in err, err
    rerun = pdm_bench(*STUDY, *SLURM, "--results-dir", str(tmp_path / "slurm"), cache=tmp_path / "cache-slurm")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("submitted:") == 1 and "submitted: gray box, pdm" in rerun.stdout, rerun.stdout
    assert rerun.stdout.count("done earlier:") == 3  # two trainings and the baseline's gray box
    for table in TABLES:
        assert (tmp_path / "slurm" / "report" / table).read_text() == (tmp_path / "local" / "report" / table).read_text(), table


TINY = ("paper", "--dataset", "digits", "--epochs", "1", "--defenses", "baseline", "--train-only", "", "--threats",
        "gray", "--attacks", "fgsm-0.1", "--n-samples", "5", "--no-progress", "--executor", "slurm",
        "--slurm-gpus-per-job", "0")


def test_an_unknown_partition_is_one_line_naming_the_clusters_partitions(slurm: None, tmp_path: Path) -> None:
    known = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    refused = pdm_bench(*TINY, "--slurm-partition", "nosuch", "--results-dir", str(tmp_path / "r"), cache=tmp_path / "c")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "'nosuch' is not a partition" in lines[0] and known[0].rstrip("*") in lines[0], lines[0]
    assert not (tmp_path / "r" / "logs" / "slurm").exists() or not any((tmp_path / "r" / "logs" / "slurm").iterdir())


def test_a_job_asking_more_than_the_partition_gives_is_named_and_can_be_cancelled(slurm: None, tmp_path: Path) -> None:
    env = {**os.environ, "PDM_BENCH_CACHE": str(tmp_path / "c")}
    study = subprocess.Popen([sys.executable, "-m", "pdm_bench", *TINY, "--slurm-mem", "100000", "--results-dir",
                              str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert study.stdout is not None
    seen = []
    for line in study.stdout:  # the study waits on its job: read until it names it
        seen.append(line)
        if "cannot start:" in line:
            break
    warning = seen[-1]
    assert "pending for PartitionConfig" in warning and "scancel" in warning, "".join(seen)
    subprocess.run(["scancel", warning.split("scancel ")[1].strip(" )\n")], check=True)
    _, err = study.communicate(timeout=300)
    assert study.returncode == 2 and "state CANCELLED" in err and "Traceback" not in err, err



LONG = ("paper", "--dataset", "digits", "--epochs", "150", "--defenses", "baseline", "--train-only", "", "--threats",
        "gray", "--attacks", "fgsm-0.1", "--no-resiliency", "--n-samples", "50", "--no-progress")


def test_a_step_past_its_time_limit_is_requeued_and_finishes_with_the_local_rows(slurm: None, tmp_path: Path) -> None:
    """A 150-epoch digits training takes longer than a 1-minute job: submitit requeues it at Slurm's warning signal,
    each run resumes after its last finished epoch, and the rows (weights, accuracy, AUCs) equal a local run's."""
    local = pdm_bench(*LONG, "--results-dir", str(tmp_path / "local"), cache=tmp_path / "cache-local")
    assert local.returncode == 0, local.stderr
    short = ("--executor", "slurm", "--slurm-gpus-per-job", "0", "--slurm-cpus-per-job", "1", "--slurm-mem", "2",
             "--slurm-time", "1")
    done = pdm_bench(*LONG, *short, "--results-dir", str(tmp_path / "slurm"), cache=tmp_path / "cache-slurm")
    assert done.returncode == 0, done.stderr + done.stdout
    outputs = "".join(p.read_text(errors="replace") for p in (tmp_path / "slurm" / "logs" / "slurm").rglob("*.out"))
    assert "Resuming" in outputs, outputs[-3000:]  # a requeued run went on after its last finished epoch

    def values(folder: Path) -> list[tuple[str, ...]]:
        import csv

        with open(folder / "results.csv", encoding="utf-8", newline="") as handle:
            return sorted(tuple(v for k, v in r.items() if k != "time") for r in csv.DictReader(handle)
                          if r["metric"] not in ("attack_seconds", "finished"))

    assert values(tmp_path / "slurm") == values(tmp_path / "local")
