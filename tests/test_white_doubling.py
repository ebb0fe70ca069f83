"""The white box's doubling check: C&W-wb again at the reported rung with twice the Adam steps, and how far d moved;
added to a finished run without changing its id or its other rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pdm_bench.results import ResultsStore

ARGS = ("run", "--threat", "white", "--defense", "baseline", "--epochs", "3", "--n-samples", "10", "--cw-iterations",
        "40", "--cw-search-steps", "2", "--cw-learning-rate", "0.05", "--no-progress")


def test_the_doubling_check_adds_rows_to_the_same_run(tmp_path: Path, cli: Callable[..., Any]) -> None:
    results = tmp_path / "r"
    first = cli(*ARGS, "--results-dir", str(results))
    assert first.code == 0, first.err
    before = ResultsStore(results).rows()
    checked = cli(*ARGS, "-t", "check_doubling=true", "--results-dir", str(results))
    assert checked.code == 0, checked.err
    rows = ResultsStore(results).rows()
    assert list(map(repr, rows[:len(before)])) == list(map(repr, before))  # nothing rewritten
    added = {(r.attack, r.metric): r for r in rows[len(before):]}
    white = {r.run_id for r in before if r.threat == "white"}
    assert len(white) == 1 and {r.run_id for r in added.values()} == white  # the same run: its id is unchanged
    d = next(r.value for r in before if (r.attack, r.metric) == ("cw-wb", "distortion"))
    d2 = added[("cw-wb-2x", "distortion")].value
    assert added[("cw-wb-2x", "budget_iterations")].value == 80
    assert abs(added[("cw-wb-2x", "distortion_change")].value - (d2 - d) / d) < 1e-12
    assert added[("cw-wb-2x", "doubling_converged")].value == float(abs(d2 - d) / d <= 0.05)
    assert "doubling check: d" in checked.out
    again = cli(*ARGS, "-t", "check_doubling=true", "--results-dir", str(results))
    assert again.code == 0 and "skipped" in again.out and len(ResultsStore(results).rows()) == len(rows)
