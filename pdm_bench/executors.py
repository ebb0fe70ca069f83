"""Study steps as batch jobs through submitit (the optional extra ``pdm-bench[slurm]``): each step one job running
``python -m pdm_bench ARGV`` with the step's resources, at most ``max_parallel`` submitted at once.

A job that succeeds leaves a marker under ``RESULTS_DIR/logs/done/`` named after its step and command line, so a
rerun after a cancelled or failed job, or a dead submitting shell, submits only the steps without one (the steps
themselves are resumable besides: a resubmitted one redoes nothing that finished). Each job's time goes to
``logs/steps.csv`` like a local step's; submitit's files (the job's output and error) go to ``logs/slurm/<job id>/``.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pdm_bench.config import config_key
from pdm_bench.errors import UserError
from pdm_bench.steps import Step, record_step


class ExecutorName(str, Enum):
    """Where a study's steps run: here (in turn, or ``--jobs N`` subprocesses) or as Slurm jobs."""

    LOCAL = "local"
    SLURM = "slurm"


@dataclass(frozen=True, kw_only=True)
class SlurmResources:
    """What each step's job asks for (training and attacks alike; the report is written by the submitting process)."""

    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 4
    mem_gb: float = 16.0
    time_min: int = 24 * 60
    max_parallel: int = 16

    def __post_init__(self) -> None:
        for flag, name, lowest in (("--slurm-gpus-per-job", "gpus_per_job", 0), ("--slurm-cpus-per-job", "cpus_per_job", 1),
                                   ("--slurm-time", "time_min", 1), ("--max-parallel", "max_parallel", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise UserError(f"{flag} must be an integer >= {lowest}, got {value!r}")
        if isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float)) or not self.mem_gb > 0:
            raise UserError(f"--slurm-mem must be a positive number of GB, got {self.mem_gb!r}")

    def parameters(self, cluster: str) -> dict[str, Any]:
        """submitit's ``update_parameters`` for these resources."""
        chosen: dict[str, Any] = {"timeout_min": self.time_min, "mem_gb": self.mem_gb, "cpus_per_task": self.cpus_per_job}
        if cluster == "slurm":  # the warning before the time limit, on which the job is requeued (StepJob)
            chosen["slurm_signal_delay_s"] = max(15, min(90, self.time_min * 60 // 4))
        if self.gpus_per_job:
            chosen["gpus_per_node"] = self.gpus_per_job
        if self.partition and cluster == "slurm":
            chosen["slurm_partition"] = self.partition
        return chosen


def run_step_job(argv: list[str], marker: str) -> float:
    """Inside a job: run the step; on success leave ``marker`` and return the seconds it took. The step ignores
    Slurm's warning signal, which is for submitit (:class:`StepJob` requeues the job)."""
    started = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "pdm_bench", *argv], check=False,
                          preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN)).returncode
    if code != 0:
        raise RuntimeError(f"pdm-bench {' '.join(argv)} exited with {code}")
    seconds = time.perf_counter() - started
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {seconds:.1f} s\n", encoding="utf-8")
    return seconds


class StepJob:
    """A step as a Slurm job that submitit requeues when the job nears its time limit or is preempted: the rerun
    resumes from what the step stored (finished epochs, attack chunks of 50 images, rows), so no finished work is
    redone. At most :data:`MAX_REQUEUES` times."""

    def __init__(self, argv: list[str], marker: str) -> None:
        self.argv, self.marker = argv, marker

    def __call__(self) -> float:
        return run_step_job(self.argv, self.marker)

    def checkpoint(self, *_: Any, **__: Any) -> Any:
        """submitit calls this on Slurm's warning signal: the same step again."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(StepJob(self.argv, self.marker))


MAX_REQUEUES = 20


def done_marker(log_dir: Path, step: Step) -> Path:
    """The file a step's successful job leaves: its slug and a key of its exact command line."""
    return log_dir / "done" / f"{step.slug}-{config_key({'argv': list(step.argv)})}"


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit, which is not installed: pip install 'pdm-bench[slurm]'") from None
    return submitit


def run_jobs(steps: Sequence[Step], *, resources: SlurmResources, log_dir: Path, echo: Callable[[str], None],
             cluster: str = "slurm", poll_seconds: float = 5.0) -> list[str]:
    """Submit each step without a done marker as one job, ``resources.max_parallel`` at a time, and wait for them;
    return one line per failed step (its job, state and log). ``cluster="local"``: submitit's local executor (the
    same jobs as subprocesses, for tests). Ctrl-C says which jobs are still queued or running and how to cancel them."""
    submitit = import_submitit()
    logging.getLogger("submitit").setLevel(logging.ERROR)  # its sacct warnings on clusters without accounting
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: sbatch is not on PATH (run the study from a Slurm login node, or use --executor local)")
    if cluster == "slurm" and resources.partition:
        check_partition(resources.partition)
    queue = []
    for step in steps:
        if done_marker(log_dir, step).exists():
            echo(f"  done earlier: {step.title} (not submitted)")
        else:
            queue.append(step)
    executor = submitit.AutoExecutor(folder=log_dir / "slurm" / "%j", cluster=cluster,
                                     slurm_max_num_timeout=MAX_REQUEUES)
    executor.update_parameters(**resources.parameters(cluster))
    running: dict[Any, Step] = {}
    failures: list[str] = []
    warned: set[str] = set()
    refusals = (subprocess.CalledProcessError, submitit.core.utils.FailedJobError)  # sbatch said no
    try:
        while queue or running:
            while queue and len(running) < resources.max_parallel:
                step = queue.pop(0)
                job = submit(executor, step, log_dir, refusals=refusals)
                running[job] = step
                echo(f"  submitted: {step.title} (job {job.job_id})")
            done = {job: job.done() for job in running}
            ended = {job: not done[job] and cluster == "slurm" and watch(job, running[job], warned=warned, echo=echo)
                     for job in running}
            finished = [job for job in running if done[job] or ended[job]]
            for job in finished:
                failure = collect(job, running.pop(job), log_dir=log_dir, jobs=resources.max_parallel, echo=echo,
                                  result=not ended[job])
                failures += [failure] if failure else []
            if not finished:
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        if running:
            ids = " ".join(str(job.job_id) for job in running)
            echo(f"Interrupted: {len(running)} jobs still queued or running ({ids}); they go on unless cancelled: "
                 f"scancel {ids}")
        raise
    return failures


def check_partition(partition: str) -> None:
    """An unknown ``--slurm-partition`` as one line naming the cluster's partitions, before anything is submitted
    (when ``sinfo`` cannot say, sbatch's own refusal is the message)."""
    try:
        shown = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return
    known = [name.strip().rstrip("*") for name in shown.stdout.split()]
    if shown.returncode == 0 and known and partition not in known:
        raise UserError(f"--slurm-partition {partition!r} is not a partition of this cluster; it has: {', '.join(known)}")


def submit(executor: Any, step: Step, log_dir: Path, *, refusals: tuple[type[Exception], ...]) -> Any:
    """One step as one job; Slurm's refusal (an account, QOS or option it does not accept) as one line."""
    executor.update_parameters(name=f"pdm-bench-{step.slug}"[:64])
    try:
        return executor.submit(StepJob(list(step.argv), str(done_marker(log_dir, step))))
    except refusals as error:
        said = getattr(error, "stderr", None) or getattr(error, "output", None) or str(error)
        text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        first = next((line.strip() for line in text.splitlines() if line.strip()), str(error))
        raise UserError(f"Slurm refused the job of {step.title}: {first[:200]}") from None


ENDED = ("CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def slurm_job(job_id: str) -> dict[str, str]:
    """The job's fields as slurmctld has them (``scontrol``: no accounting database needed); empty when unknown."""
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                               timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(field.split("=", 1) for field in shown.split() if "=" in field)


def slurm_state(job_id: str) -> str | None:
    """The job's state (CANCELLED, PENDING, ...); None when it is unknown."""
    return slurm_job(job_id).get("JobState")


# Pending reasons a job keeps until someone changes the job or the cluster: it asks for more than the partition has.
NEVER_STARTS = ("PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit")


def watch(job: Any, step: Step, *, warned: set[str], echo: Callable[[str], None]) -> bool:
    """Whether a job Slurm ended before it could leave a result (cancelled, timed out, ...): submitit reads states
    from the accounting database (``sacct``), which many small clusters run without. A job that cannot start as
    asked is named once (it stays queued: an administrator may still change the partition)."""
    fields = slurm_job(job.job_id)
    reason = fields.get("Reason", "")
    if fields.get("JobState") == "PENDING" and reason in NEVER_STARTS and job.job_id not in warned:
        warned.add(job.job_id)
        echo(f"  cannot start: {step.title} (job {job.job_id}, pending for {reason}: it asks for more than the "
             f"partition gives; see --slurm-cpus-per-job, --slurm-mem, --slurm-time; scancel {job.job_id})")
    return fields.get("JobState") in ENDED


def collect(job: Any, step: Step, *, log_dir: Path, jobs: int, echo: Callable[[str], None],
            result: bool = True) -> str | None:
    """Record a finished job's step (its seconds, or that it failed); the failure's line, or None. ``result=False``:
    the job ended without one (do not wait for it)."""
    try:
        if not result:
            raise RuntimeError("ended without a result")
        seconds = float(job.result())
    except Exception:  # submitit's UncompletedJobError / FailedJobError: the job died or the step failed
        state = slurm_state(job.job_id) or job.state
        record_step(log_dir, step, seconds=0.0, status="failed", jobs=jobs)
        echo(f"  FAILED:   {step.title} (job {job.job_id}, state {state}; log {job.paths.stderr})")
        return f"{step.title} (job {job.job_id}, state {state}, log {job.paths.stderr})"
    record_step(log_dir, step, seconds=seconds, status="finished", jobs=jobs)
    echo(f"  finished: {step.title} in {seconds:.0f} s (job {job.job_id})")
    return None
