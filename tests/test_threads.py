"""--threads / PDM_BENCH_THREADS and the passive OpenMP wait policy, set before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pdm_bench import threads
from pdm_bench.cli import cli
from pdm_bench.errors import UserError

PROBE = "import pdm_bench, os, torch; print(os.environ['OMP_WAIT_POLICY'], os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())"


def _probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"OMP_WAIT_POLICY", "OMP_NUM_THREADS", threads.THREADS_VARIABLE}}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_sets_passive_wait_and_the_thread_count_before_torch() -> None:
    assert _probe(PDM_BENCH_THREADS="1") == ["PASSIVE", "1", "1"]
    assert _probe(OMP_WAIT_POLICY="ACTIVE")[0] == "ACTIVE"  # a user's own setting is kept


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "", "2000", True])
def test_bad_thread_counts_are_one_line(value: object) -> None:
    with pytest.raises(UserError, match=r"expects a whole number of threads in \[1, 1024\]"):
        threads.parse_threads(value)


def test_set_threads_after_torch_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    for name in threads.THREAD_COUNT_VARIABLES:
        monkeypatch.setenv(name, os.environ.get(name, ""))
    try:
        assert threads.set_threads("1") == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_cli_threads_option_errors() -> None:
    result = CliRunner().invoke(cli, ["--threads", "0", "list"])
    assert result.exit_code == 2 and "0 is not in the range 1<=x<=1024" in result.output
    result = CliRunner().invoke(cli, ["list"], env={threads.THREADS_VARIABLE: "many"})
    assert result.exit_code == 2 and "PDM_BENCH_THREADS expects a whole number" in result.output
