"""Defenses from entry-point plugins: registered through a real dist-info, trained through the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pdm_bench.errors import UserError
from pdm_bench.registry import Registry, defense_registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "label_smoothing_plugin" / "pdm_label_smoothing.py"
CliResult = Any  # conftest.CliResult (conftest is not importable under --import-mode=importlib)


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_dist: Callable[..., None]) -> Path:
    site = tmp_path / "site"
    fake_dist(site, "pdm-label-smoothing", {"pdm_label_smoothing.py": EXAMPLE},
              {"pdm_bench.defenses": {"label_smoothing": "pdm_label_smoothing:LabelSmoothing"}})
    fake_dist(site, "pdm-broken", {"pdm_broken_plugin.py": "import no_such_dependency_xyz\n"},
              {"pdm_bench.defenses": {"broken": "pdm_broken_plugin:Broken", "pdm": "pdm_broken_plugin:Shadow"}})
    monkeypatch.syspath_prepend(str(site))
    return site


def test_plugin_is_listed_and_trains_via_the_cli(plugin_site: Path, cli: Callable[..., CliResult]) -> None:
    listing = cli("list")
    assert listing.code == 0
    assert "label_smoothing" in listing.out and "plugin from pdm-label-smoothing 0.1.0" in listing.out
    assert "smoothing=0.1" in listing.out
    assert "broken" in listing.out and "BROKEN" in listing.out and "no_such_dependency_xyz" in listing.out
    assert "rejected: the name is already taken by built-in" in listing.out

    trained = cli("train", "--defense", "label_smoothing", "-o", "smoothing=0.2", "--epochs", "2", "--no-progress")
    assert trained.code == 0, trained.err
    accuracy = float(trained.out.split("Clean test accuracy: ")[1].split("%")[0])
    assert accuracy > 50.0  # 2 epochs on digits: far above the 10% of chance


def test_broken_plugin_is_reported_by_name_and_others_still_work(plugin_site: Path, cli: Callable[..., CliResult]) -> None:
    broken = cli("train", "--defense", "broken", "--epochs", "1", "--no-progress")
    assert broken.code == 2 and broken.err.count("\n") == 1
    assert "The defense 'broken' (plugin from pdm-broken 0.1.0" in broken.err
    assert "No module named 'no_such_dependency_xyz'" in broken.err
    registry = defense_registry()
    assert registry.get("pdm").__module__ == "pdm_bench.defenses.pdm"  # the shadowing plugin was rejected
    assert registry.get("label_smoothing").name == "label_smoothing"


def test_registry_did_you_mean_and_fresh_instances() -> None:
    registry = defense_registry(plugins=False)
    with pytest.raises(UserError, match=r"^Unknown defense 'pmd'. Did you mean: pdm\? Available: baseline, pdm, rce, siamese_rvl$"):
        registry.get("pmd")
    other: Registry[type] = Registry("defense")
    other.register("x", "pdm_bench.defenses.baseline:Baseline")
    assert "x" in other and "x" not in defense_registry(plugins=False)
    with pytest.raises(ValueError, match="already registered"):
        other.register("x", "pdm_bench.defenses.rce:ReverseCrossEntropy")


def test_plugin_with_a_wrong_class_is_rejected_on_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fake_dist: Callable[..., None]) -> None:
    fake_dist(tmp_path, "pdm-wrong", {"pdm_wrong.py": "class NotADefense:\n    pass\n"},
              {"pdm_bench.defenses": {"wrong": "pdm_wrong:NotADefense"}})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="expected a subclass of pdm_bench.defenses.base.Defense"):
        defense_registry().get("wrong")


def test_a_plugin_joins_the_whole_study_and_its_report(plugin_site: Path, cli: Callable[..., CliResult],
                                                       tmp_path: Path) -> None:
    results = tmp_path / "study"
    study = cli("paper", "--dataset", "digits", "--defenses", "baseline,label_smoothing", "--train-only", "",
                "--threats", "gray", "--attacks", "fgsm-0.1", "--epochs", "2", "--n-samples", "20", "--no-progress",
                "--results-dir", str(results))
    assert study.code == 0, study.err
    assert study.out.count("=== [") == 2 + 2  # two trainings, two gray-box runs: no siamese_rvl, rce or pdm
    header = (results / "report" / "table2_graybox_auc.csv").read_text().splitlines()[0]
    assert "digits (quick) label_smoothing" in header and "digits (quick) pdm" not in header
    table1 = (results / "report" / "table1_accuracy.csv").read_text()
    assert "label_smoothing" in table1.splitlines()[0]
