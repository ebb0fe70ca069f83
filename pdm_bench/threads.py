"""CPU threads: how many torch uses, and how its OpenMP threads wait, set before torch is imported.

On a shared machine (a lab server, a cluster node) OpenMP threads that spin while they wait for work steal the cores
other jobs need, and a run slows 10-80x instead of 2x (docs/PERFORMANCE.md, "Contention"). pdm-bench therefore asks
OpenMP to wait passively (``OMP_WAIT_POLICY=PASSIVE``) unless the environment already says otherwise, and
``--threads N`` (or ``PDM_BENCH_THREADS``) sets torch's thread count for the command and every subprocess it starts
(``--jobs``, Slurm steps inherit the environment). Standard library only: this runs on ``import pdm_bench``.
"""

from __future__ import annotations

import os
import sys

THREADS_VARIABLE = "PDM_BENCH_THREADS"
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"
MAX_THREADS = 1024


def parse_threads(value: object, *, source: str = "--threads") -> int:
    """A thread count from ``value`` (an int or a decimal string), in [1, 1024]; else a one-line ``UserError``."""
    from pdm_bench.errors import UserError

    text = str(value).strip()
    if isinstance(value, bool) or not (isinstance(value, int) or text.isdigit()):
        raise UserError(f"{source} expects a whole number of threads in [1, {MAX_THREADS}], got {value!r}")
    count = int(text)
    if not 1 <= count <= MAX_THREADS:
        raise UserError(f"{source} expects a whole number of threads in [1, {MAX_THREADS}], got {count}")
    return count


def apply_defaults() -> None:
    """Passive OpenMP waiting unless ``OMP_WAIT_POLICY`` is set; ``PDM_BENCH_THREADS`` when set (bad values are
    left for :func:`set_threads` to report when a command reads them). Never raises."""
    os.environ.setdefault(WAIT_POLICY_VARIABLE, DEFAULT_WAIT_POLICY)
    value = os.environ.get(THREADS_VARIABLE)
    if value and value.strip().isdigit() and 1 <= int(value) <= MAX_THREADS:
        _export(int(value))


def set_threads(count: int | str | None, *, source: str = "--threads") -> int | None:
    """Use ``count`` threads here and in every subprocess; ``None``: ``PDM_BENCH_THREADS`` if set, else leave torch's
    default. Returns the count set, or ``None``."""
    if count is None:
        value = os.environ.get(THREADS_VARIABLE)
        if not value:
            return None
        count, source = value, THREADS_VARIABLE
    threads = parse_threads(count, source=source)
    _export(threads)
    return threads


def _export(threads: int) -> None:
    for name in THREAD_COUNT_VARIABLES:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:  # already imported (the Python API): the environment is read only at torch's import
        torch.set_num_threads(threads)
