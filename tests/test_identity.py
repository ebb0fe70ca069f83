"""One identity per run: a plugin component's options reach the label, the run id, the report's columns and the
provenance, and a plugin attack with randomness is seeded from the run's seed."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CliResult = Any

DETECTOR = '''
from dataclasses import dataclass

import torch

from pdm_bench.detectors import Detector


@dataclass(kw_only=True)
class NormDetector(Detector):
    """-||embedding||**power: a plugin detector with one option."""

    name = "normdet"
    description = "minus the embedding's norm to a power (test plugin)"
    power: float = 1.0

    def fit(self, embeddings, labels, *, num_classes, seed):
        pass

    def score(self, embeddings, predicted):
        return -embeddings.norm(dim=1) ** self.power
'''

ATTACK = '''
from art.attacks.evasion import ProjectedGradientDescent

from pdm_bench.threat_models.attack_specs import AttackSpec


def random_pgd(classifier, *, targeted, batch_size):
    return ProjectedGradientDescent(classifier, eps=0.1, eps_step=0.05, max_iter=2, num_random_init=1,
                                    targeted=targeted, batch_size=batch_size, verbose=False)


RANDOM_PGD = AttackSpec(name="rpgd", family="rpgd", params={"eps": 0.1, "random_start": True}, factory=random_pgd)
'''

GRAY = ("run", "--threat", "gray", "--defense", "baseline", "--epochs", "1", "--n-samples", "20", "--no-resiliency",
        "--no-geometry", "--no-progress")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_dist: Callable[..., None]) -> Path:
    site = tmp_path / "site"
    fake_dist(site, "pdm-normdet", {"pdm_normdet.py": DETECTOR}, {"pdm_bench.detectors": {"normdet": "pdm_normdet:NormDetector"}})
    fake_dist(site, "pdm-rpgd", {"pdm_rpgd.py": ATTACK}, {"pdm_bench.attacks": {"rpgd": "pdm_rpgd:RANDOM_PGD"}})
    monkeypatch.syspath_prepend(str(site))
    return site


def _run_ids(results: Path) -> set[str]:
    with open(results / "results.csv", newline="") as handle:
        return {row["run_id"] for row in csv.DictReader(handle) if row["threat"] == "gray"}


def test_a_detector_option_makes_its_own_label_run_id_column_and_provenance(
        plugins: Path, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    results = tmp_path / "results"
    for power in ("1", "3"):
        done = cli(*GRAY, "--attacks", "fgsm-0.1", "--detector", "normdet", "--detector-option", f"power={power}",
                   "--results-dir", str(results))
        assert done.code == 0, done.err
    with open(results / "results.csv", newline="") as handle:
        labels = {row["detector"] for row in csv.DictReader(handle) if row["threat"] == "gray"}
    assert labels == {"normdet", "normdet[power=3]"}
    ids = _run_ids(results)
    assert len(ids) == 2
    records = [json.loads((results / "runs" / f"{run_id}.json").read_text()) for run_id in ids]
    assert sorted(r["detector_options"]["power"] for r in records) == [1.0, 3.0]
    assert all(r["detector_version"] == "pdm-normdet 0.1.0" for r in records)
    assert all(len(r["weights_sha256"]) == 64 and r["trained_on"]["threads"] >= 1 for r in records)

    out = tmp_path / "report"
    assert cli("report", "--results-dir", str(results), "--out", str(out)).code == 0
    header = (out / "table2_graybox_auc.csv").read_text().splitlines()[0]
    assert "baseline (normdet)" in header and "baseline (normdet[power=3])" in header
    assert "pdm-normdet 0.1.0" in (out / "report.html").read_text()


def test_a_plugin_attack_with_a_random_start_gives_the_same_images_in_any_results_directory(
        plugins: Path, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    arrays, ids = [], set()
    for k in range(3):
        results = tmp_path / f"results{k}"
        done = cli(*GRAY, "--attacks", "rpgd", "--results-dir", str(results))
        assert done.code == 0, done.err
        (stored,) = sorted((results / "adversarial").glob("*rpgd*.npy"))
        arrays.append(np.load(stored))
        ids |= _run_ids(results)
    assert len(ids) == 1
    (run_id,) = ids
    record = json.loads((tmp_path / "results0" / "runs" / f"{run_id}.json").read_text())
    assert record["attack_packages"] == {"rpgd": "pdm-rpgd 0.1.0"}
    out = tmp_path / "report"
    assert cli("report", "--results-dir", str(tmp_path / "results0"), "--out", str(out)).code == 0
    assert "rpgd (pdm-rpgd 0.1.0)" in (out / "report.html").read_text()
    assert not np.array_equal(arrays[0], np.clip(arrays[0], 0, 0))  # images were made
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:])


BAD_VIEW = '''
from dataclasses import dataclass

import torch

from pdm_bench.detectors import Detector


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def embed_and_logits(self, x):
        _, logits = self.model.embed_and_logits(x)
        return logits, logits


@dataclass(kw_only=True)
class BadView(Detector):
    name = "badview"

    def view(self, model):
        return Logits(model)

    def fit(self, embeddings, labels, *, num_classes, seed):
        pass

    def score(self, embeddings, predicted):
        return embeddings.max(dim=1).values
'''


def test_a_view_that_breaks_the_contract_is_one_line_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_dist: Callable[..., None],
        cli: Callable[..., CliResult]) -> None:
    site = tmp_path / "site"
    fake_dist(site, "pdm-badview", {"pdm_badview.py": BAD_VIEW}, {"pdm_bench.detectors": {"badview": "pdm_badview:BadView"}})
    monkeypatch.syspath_prepend(str(site))
    done = cli(*GRAY, "--attacks", "fgsm-0.1", "--detector", "badview", "--results-dir", str(tmp_path / "r"))
    assert done.code == 2 and done.err.count("\n") == 1, done.err
    assert "view contract" in done.err and "'embedding'" in done.err and "logit_sign" in done.err
    assert "Clean test accuracy" not in done.out  # refused before any training
