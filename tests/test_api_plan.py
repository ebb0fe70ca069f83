"""One path for Python and the CLI: ``plan`` resolves and checks a whole run before any training, ``execute`` runs
it, and ``pdm-bench run`` is those two calls."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pdm_bench as pb
from pdm_bench.errors import UserError
from pdm_bench.results import ResultsStore


def test_plan_checks_everything_before_training(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for bad, message in (({"n_samples": 5000}, "--n-samples"), ({"threat": "gary"}, "Did you mean: gray"),
                         ({"detector": "kdee"}, "Did you mean: kde"), ({"attacks": ["fgsm-2"]}, "eps must be in"),
                         ({"options": {"q": 2}}, "q must be in"), ({"defense": "pmd"}, "Did you mean: pdm")):
        with pytest.raises(UserError, match=message):
            pb.plan(cache_dir=cache, results_dir=tmp_path / "r", **bad)
    assert not (cache / "models").exists()  # nothing was trained


def test_the_cli_and_plan_execute_give_the_same_run(tmp_path: Path, cli: Callable[..., Any]) -> None:
    args = dict(threat="gray", defense="baseline", epochs=2, attacks=["fgsm-0.1"], resiliency=False, n_samples=20)
    done = cli("run", "--threat", "gray", "--defense", "baseline", "--epochs", "2", "--attacks", "fgsm-0.1",
               "--no-resiliency", "--n-samples", "20", "--no-progress", "--cache-dir", str(tmp_path / "c"),
               "--results-dir", str(tmp_path / "cli"))
    assert done.code == 0, done.err
    planned = pb.plan(cache_dir=tmp_path / "c", results_dir=tmp_path / "py", **args)
    rows = pb.execute(planned, log=lambda *_: None)
    from_cli = [(r.attack, r.metric, r.value, r.n, r.run_id) for r in ResultsStore(tmp_path / "cli").rows()
                if r.threat == "gray" and r.metric != "attack_seconds"]
    from_py = [(r.attack, r.metric, r.value, r.n, r.run_id) for r in rows if r.metric != "attack_seconds"]
    assert from_cli and from_cli == from_py
