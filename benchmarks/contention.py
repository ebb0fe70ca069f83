"""Run time on a shared machine: threads x OpenMP wait policy, idle and beside a bounded competing CPU load.

Workloads: a digits training (the quick preset, fresh cache) and a gray box (every attack, ``--n-samples`` images,
on a model trained beforehand). Each runs at 1 and 2 torch threads, with OpenMP's wait policy unset (its own
default), ``ACTIVE`` and ``PASSIVE`` (pdm-bench's default), on an idle machine and beside one busy loop per core
(processes that stop by themselves after ``--cap`` seconds). A run past ``--cap`` seconds is stopped and shown as
">cap". Writes docs/PERFORMANCE.md's ``contention`` block.

    python benchmarks/contention.py [--n-samples 50] [--cap 600]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quick_baseline import write_doc_block

DOC = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"
BUSY = "import time\nend = time.time() + {cap}\nwhile time.time() < end:\n    pass\n"


# OpenMP's own default (no OMP_WAIT_POLICY: GNU OpenMP spins a while, then sleeps), which pdm-bench replaces with
# PASSIVE on import: a placeholder keeps it from doing so, and is removed before torch (and OpenMP) load.
UNSET = ("import os, sys; os.environ['OMP_WAIT_POLICY'] = 'unset'; import pdm_bench; del os.environ['OMP_WAIT_POLICY']; "
         "from pdm_bench.cli import main; sys.argv = ['pdm-bench', *sys.argv[1:]]; main()")


def timed(argv: list[str], env: dict[str, str], cap: float, cwd: Path, policy: str) -> float | None:
    """Seconds ``pdm-bench ARGV`` took under OpenMP wait ``policy`` (unset, ACTIVE, PASSIVE), or None past ``cap``."""
    launcher = ["-c", UNSET] if policy == "unset" else ["-m", "pdm_bench"]
    env = {**env, **({} if policy == "unset" else {"OMP_WAIT_POLICY": policy})}
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, *launcher, *argv], env=env, cwd=cwd, check=True, timeout=cap,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - started


def busy_loops(count: int, cap: float) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(cap=cap)]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--cap", type=float, default=600.0)
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base_env = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                     "OMP_WAIT_POLICY", "PDM_BENCH_THREADS"}}
        model_cache = root / "model-cache"
        subprocess.run([sys.executable, "-m", "pdm_bench", "train", "--dataset", "digits", "--defense", "pdm",
                        "--cache-dir", str(model_cache), "--no-progress"], env=base_env, cwd=root, check=True,
                       stdout=subprocess.DEVNULL)
        workloads = {
            "train (digits pdm)": lambda run: ["train", "--dataset", "digits", "--defense", "pdm", "--no-progress",
                                               "--cache-dir", str(root / f"cache-{run}")],
            f"gray box (N={args.n_samples})": lambda run: [
                "run", "--threat", "gray", "--defense", "pdm", "--n-samples", str(args.n_samples), "--no-progress",
                "--cache-dir", str(model_cache), "--results-dir", str(root / f"results-{run}")],
        }
        lines = [f"| workload | threads | wait policy | idle (s) | beside {cores} busy loops (s) | slowdown |",
                 "|---|---|---|---|---|---|"]
        run = 0
        for name, argv in workloads.items():
            for threads in (1, 2):
                for policy in ("unset", "ACTIVE", "PASSIVE"):
                    env = {**base_env, "OMP_NUM_THREADS": str(threads)}
                    seconds = []
                    for loaded in (False, True):
                        run += 1
                        loops = busy_loops(cores, args.cap + 60) if loaded else []
                        try:
                            seconds.append(timed(argv(run), env, args.cap, root, policy))
                        finally:
                            for loop in loops:
                                loop.kill()
                                loop.wait()
                    idle, busy = seconds
                    shown = [f"{s:.1f}" if s is not None else f">{args.cap:.0f}" for s in seconds]
                    ratio = f"{busy / idle:.1f}x" if idle and busy else (f">{args.cap / idle:.1f}x" if idle else "")
                    lines.append(f"| {name} | {threads} | {policy} | "
                                 f"{shown[0]} | {shown[1]} | {ratio} |")
                    print(lines[-1], flush=True)
                    shutil.rmtree(root / f"cache-{run}", ignore_errors=True)
    write_doc_block(DOC, "contention", " ".join(["python benchmarks/contention.py", *sys.argv[1:]]), lines)


if __name__ == "__main__":
    main()
