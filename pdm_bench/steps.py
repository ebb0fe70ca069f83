"""The steps of a study (``pdm_bench.Study``, ``pdm-bench paper``), run one after another in this process, as
parallel subprocesses (phase by phase) or as Slurm jobs.

A step is a function to call in this process and the equivalent ``pdm-bench`` command line. With ``jobs > 1`` each
step runs as ``python -m pdm_bench <argv>`` (so it records its own command line), with ``cpu_count // jobs`` torch
threads, its output in ``RESULTS_DIR/logs/``. Steps in one phase must not depend on each other: ``paper`` trains every model in a first
phase and attacks them in a second. The results file is written under a lock and every cache is keyed, so parallel
steps only ever add to it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pdm_bench.errors import UserError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
STEP_TIMES = "steps.csv"  # in the log folder: one line per step run, so a resumed study's cost adds up
INTERRUPTED = 130  # the exit code of a step stopped by Ctrl-C (cli.EXIT_INTERRUPTED)


@dataclass(frozen=True)
class Step:
    """One step of a study: ``call()`` in this process, or ``pdm-bench ARGV`` as a subprocess."""

    title: str
    argv: tuple[str, ...]
    call: Callable[[], object] = field(compare=False)
    rank: int = 100  # parallel runs start the lowest first (the threat model's cost rank)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def study_log_dir(results_dir: Path) -> Path:
    """Where a study keeps its step logs and ``steps.csv``."""
    return results_dir / "logs"


def record_step(log_dir: Path, step: Step, *, seconds: float, status: str, jobs: int) -> None:
    """Append ``finished_at,step,status,seconds,jobs`` to ``log_dir/steps.csv`` (one short line: an atomic append)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / STEP_TIMES
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')},{step.slug},{status},{seconds:.1f},{jobs}\n"
    with open(path, "a", encoding="utf-8") as handle:
        if handle.tell() == 0:
            handle.write("finished_at,step,status,seconds,jobs\n")
        handle.write(line)


def threads_per_job(jobs: int) -> int:
    """The CPUs this process may use (its affinity, in a container its quota's view), shared among ``jobs``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // jobs)


def visible_gpus() -> list[str]:
    """The GPUs steps may run on: the entries of ``CUDA_VISIBLE_DEVICES`` when set, else every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip() and entry.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_of_slot(slot: int, gpus: Sequence[str]) -> str | None:
    """The GPU a step in parallel slot ``slot`` runs on: round robin over ``gpus`` (None: no GPU)."""
    return gpus[slot % len(gpus)] if gpus else None


class Slots:
    """Parallel slots 0..jobs-1: a starting step takes the lowest free one, so the steps running at once hold
    different slots (and, with as many GPUs as jobs, different GPUs)."""

    def __init__(self, jobs: int) -> None:
        self._free = list(range(jobs))
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._free.sort()
            return self._free.pop(0)

    def give_back(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


def run_parallel(steps: Sequence[Step], *, jobs: int, log_dir: Path, echo: Callable[[str], None],
                 gpus: Sequence[str] = ()) -> list[str]:
    """Run ``steps`` as up to ``jobs`` subprocesses at once; return one line per failed step (empty: all passed).
    With ``gpus``, each step sees one of them only (``CUDA_VISIBLE_DEVICES``), by its slot: round robin."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{name: os.environ.get(name, str(threads_per_job(jobs))) for name in THREAD_VARIABLES}}
    slots = Slots(jobs)

    def run_step(step: Step) -> str | None:
        log = log_dir / f"{step.slug}.log"
        argv = list(step.argv)
        slot = slots.take()
        gpu = gpu_of_slot(slot, gpus)
        started = time.perf_counter()
        echo(f"  started:  {step.title} (log {log}{'' if gpu is None else f', GPU {gpu}'})")
        try:
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"\n$ pdm-bench {' '.join(argv)}\n")
                handle.flush()
                code = subprocess.run([sys.executable, "-m", "pdm_bench", *argv], stdout=handle, stderr=subprocess.STDOUT,
                                      env=env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": gpu},
                                      check=False).returncode
        finally:
            slots.give_back(slot)
        seconds = time.perf_counter() - started
        if code == 0:
            record_step(log_dir, step, seconds=seconds, status="finished", jobs=jobs)
            echo(f"  finished: {step.title} in {seconds:.0f} s")
            return None
        state = "stopped" if code in (INTERRUPTED, -signal.SIGINT) else "FAILED"
        record_step(log_dir, step, seconds=seconds, status=state.lower(), jobs=jobs)
        echo(f"  {state + ':':<10}{step.title} (exit {code} after {seconds:.0f} s; last line: {_last_line(log)})")
        return f"{step.title} (exit {code}, log {log})"

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        outcomes = list(pool.map(run_step, steps))
    except KeyboardInterrupt:
        # Ctrl-C reaches the running steps too (same process group): they save their work and exit; start no more.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return [failure for failure in outcomes if failure is not None]


def costliest_first(steps: Sequence[Step]) -> list[Step]:
    """``steps`` by their threat model's cost rank (black, white, then gray box; stable otherwise): longest-job-first
    for parallel runs."""
    return sorted(steps, key=lambda step: step.rank)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def run_in_turn(steps: Sequence[Step], *, log_dir: Path, log: Callable[[str], None], started: float) -> None:
    """Every step in this process, one after another, each one's time recorded."""
    for number, step in enumerate(steps, start=1):
        log(f"\n=== [{number}/{len(steps)}] {step.title} ({time.perf_counter() - started:.0f} s into the study)")
        step_started = time.perf_counter()
        step.call()
        record_step(log_dir, step, seconds=time.perf_counter() - step_started, status="finished", jobs=1)


def run_phases(trainings: Sequence[Step], evaluations: Sequence[Step], *, run: Callable[[list[Step]], list[str]],
               how: str, noun: str, advice: str, log: Callable[[str], None], started: float) -> None:
    """The trainings, then (once every model is there) the evaluations, costliest first; ``run`` runs one phase's
    steps and returns their failures, which stop the study with one line (``noun``: steps or jobs; ``advice``)."""
    for phase, phase_steps in (("training", list(trainings)), ("attacks", costliest_first(evaluations))):
        log(f"\n=== {phase}: {len(phase_steps)} steps{how} ({time.perf_counter() - started:.0f} s into the study)")
        if failed := run(phase_steps):
            raise UserError(f"{len(failed)} of {len(phase_steps)} {phase} {noun} failed: {'; '.join(failed)}; {advice}")
