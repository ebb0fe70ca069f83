"""Parameter types and checks of the ``pdm-bench`` command line that are not options of one component: folders,
the environment torch reads, the Slurm executor's resources."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click

from pdm_bench.errors import UserError


class Folder(click.Path):
    """A folder option: click's ``Path`` (no files), but an empty value is an error (it would be the current folder)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path; give a folder (an empty one would write into the current folder)", param, ctx)
        return super().convert(value, param, ctx)


FOLDER = Folder(file_okay=False, path_type=Path)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def check_environment() -> None:
    """Environment variables torch reads when it loads, checked before it does (libgomp only warns on a bad one)."""
    for name in THREAD_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip() and not re.fullmatch(r"\s*[1-9][0-9]*(\s*,\s*[1-9][0-9]*)*\s*", value):
            raise UserError(f"Environment variable {name}={value!r} is not a positive thread count, e.g. {name}=4 "
                            f"(or unset it)")


SLURM_FLAGS = {"partition": "--slurm-partition", "gpus_per_job": "--slurm-gpus-per-job", "cpus_per_job": "--slurm-cpus-per-job",
               "mem_gb": "--slurm-mem", "time_min": "--slurm-time", "max_parallel": "--max-parallel"}


def slurm_resources(executor: str, jobs: int, **given: Any) -> Any:
    """The Slurm resources from the ``--slurm-*`` flags given (the others at their defaults); those flags and
    ``--jobs`` belong to one executor each."""
    chosen = {name: value for name, value in given.items() if value is not None}
    if executor != "slurm":
        if chosen:
            raise UserError(f"{', '.join(SLURM_FLAGS[n] for n in chosen)} applies to --executor slurm only")
        return None
    if jobs != 1:
        raise UserError("--jobs runs steps here (--executor local); with --executor slurm use --max-parallel")
    from pdm_bench.executors import SlurmResources

    return SlurmResources(**chosen)
