"""A small digits study through `pdm-bench paper`, its report, and the report rendered in headless Chromium."""

from __future__ import annotations

import csv
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pdm_bench.cli import run
from pdm_bench.results import ResultsStore

# The white/black-box flags are an error for a study that runs none of those threats (--threats gray): the reruns
# below leave them out (they do not enter a gray-box run's identity).
TINY_GRAY_STUDY = ("paper", "--dataset", "digits", "--epochs", "3", "--n-samples", "12", "--attacks", "fgsm-0.1,cw",
                   "--no-progress")
TINY_STUDY = (*TINY_GRAY_STUDY, "--cw-iterations", "60", "--cw-search-steps", "2", "--proxy-epochs", "2")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study's results directory (its report is in ``report/``)."""
    root = tmp_path_factory.mktemp("study")
    os.environ["PDM_BENCH_CACHE"] = str(root / "cache")
    try:
        assert run([*TINY_STUDY, "--results-dir", str(root / "results")]) == 0
    finally:
        os.environ.pop("PDM_BENCH_CACHE", None)
    return root / "results"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_study_report_has_the_four_tables_from_measured_rows(study: Path) -> None:
    report = study / "report"
    table1 = read_csv(report / "table1_accuracy.csv")
    assert [r["dataset"] for r in table1] == ["digits (quick)"]
    assert {"baseline", "rce", "siamese_rvl", "pdm"} <= set(table1[0])
    rows = ResultsStore(study).rows()
    stored = {r.defense: r.value for r in rows if r.threat == "model" and r.metric == "test_accuracy"}
    assert float(table1[0]["pdm"]) == pytest.approx(100 * stored["pdm"], abs=0.006)
    table2 = {r["attack"]: r for r in read_csv(report / "table2_graybox_auc.csv")}
    assert table2["cw-hc"]["digits (quick) pdm"] == ""  # not in --attacks: an empty cell, never a string
    auc = float(table2["cw"]["digits (quick) pdm"])
    assert 0.0 <= auc <= 1.0
    for name in ("table3_whitebox_distortion", "table4_blackbox_auc"):
        record = read_csv(report / f"{name}.csv")[0]
        assert record["pdm"] != "" and "siamese_rvl" not in record  # measured or "not run", never blank
    tex = (report / "tables.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 4 + 3 and r"\toprule" in tex  # and the fixed-FPR companions 2b-4b
    fixed = {r["attack"]: r for r in read_csv(report / "table2b_graybox_fpr.csv")}
    assert 0.0 <= float(fixed["cw"]["digits (quick) pdm"]) <= 1.0 and fixed["cw"]["digits (quick) pdm TPR 5%"] != ""
    checks = {(r["defense"], r["threat"], r["item"]): r for r in read_csv(report / "checklist.csv")}
    assert checks[("pdm", "white", "an unbounded attack reaches 100% success")]["status"] in ("pass", "fail")
    rising = checks[("pdm", "gray", "success rises with eps")]
    assert rising["status"] in ("pass", "fail") and "fgsm accuracy" in rising["numbers"]
    steps = read_csv(study / "logs" / "steps.csv")[:4 + 9]  # the first call's steps: what each cost
    assert [s["step"] for s in steps[:5]] == ["train-baseline", "train-rce", "train-pdm", "train-siamese-rvl",
                                              "gray-box-baseline"]
    assert len(steps) == 4 + 9 and all(s["status"] == "finished" and float(s["seconds"]) > 0 for s in steps)


@pytest.mark.slow
def test_rerunning_the_study_reuses_everything(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(ResultsStore(study).rows())
    records = {path.name: path.read_text() for path in (study / "runs").glob("*.json")}
    os.environ["PDM_BENCH_CACHE"] = str(study.parent / "cache")
    try:
        assert run([*TINY_GRAY_STUDY, "--results-dir", str(study), "--threats", "gray"]) == 0
    finally:
        os.environ.pop("PDM_BENCH_CACHE", None)
    out = capsys.readouterr().out
    assert out.count("Reusing cached model") == 4 + 3 and "already in" in out and "trained in" not in out
    assert len(ResultsStore(study).rows()) == before
    assert records and {path.name: path.read_text() for path in (study / "runs").glob("*.json")} == records  # provenance kept


@pytest.mark.slow
def test_report_renders_in_headless_chromium(study: Path, tmp_path: Path, chromium: list[str]) -> None:
    page = (study / "report" / "report.html").resolve().as_uri()
    dom = subprocess.run([*chromium, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    for key in ("table1_accuracy", "table2_graybox_auc", "table3_whitebox_distortion", "table4_blackbox_auc",
                "table2b_graybox_fpr", "checklist"):
        assert f'id="{key}"' in dom
    figures = set(re.findall(r'<figure id="([a-z0-9-]+?)-digits-quick">', dom))
    assert {"resiliency", "tsne", "flow-cw", "bound"} <= figures
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) >= 4
    assert "http://" not in dom.split("</style>")[0] and "<script" not in dom  # self-contained, nothing to fetch
    shot = tmp_path / "report.png"
    subprocess.run([*chromium, f"--screenshot={shot}", "--window-size=1200,3000", page], capture_output=True,
                   timeout=120, check=False)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (3000, 1200) and pixels.std() > 10  # drawn, not a blank page


@pytest.mark.slow
def test_parallel_jobs_add_the_missing_steps_as_subprocesses(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = ResultsStore(study).rows()
    os.environ["PDM_BENCH_CACHE"] = str(study.parent / "cache")
    try:
        code = run([*TINY_GRAY_STUDY, "--results-dir", str(study), "--threats", "gray", "--attacks", "fgsm-0.1,fgsm-0.05",
                    "--jobs", "2"])
    finally:
        os.environ.pop("PDM_BENCH_CACHE", None)
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("finished:") == 4 + 3 and "FAILED" not in out
    rows = ResultsStore(study).rows()
    assert list(map(repr, rows[:len(before)])) == list(map(repr, before))  # nothing lost or rewritten (NaN-safe)
    new = {(r.defense, r.attack, r.metric) for r in rows[len(before):] if r.threat == "gray"}
    assert {(d, "fgsm-0.05", "auc") for d in ("baseline", "rce", "pdm")} <= new
    assert not {r for r in new if r[1] == "fgsm-0.1"}  # already there: reused
    logs = study / "logs"
    parallel = [s for s in read_csv(logs / "steps.csv") if s["jobs"] == "2"]
    assert len(parallel) == 7 and {s["status"] for s in parallel} == {"finished"}
    assert "Reusing cached model" in (logs / "train-pdm.log").read_text()
    assert "pdm-bench step --spec" in (logs / "gray-box-rce.log").read_text()  # the step ran from its data
    table2 = {r["attack"]: r for r in read_csv(study / "report" / "table2_graybox_auc.csv")}
    assert 0.0 <= float(table2["fgsm-0.05"]["digits (quick) rce"]) <= 1.0
    html = (study / "report" / "report.html").read_text()
    assert 'id="study-cost"' in html and "<td>gray-box-rce</td><td>3</td>" in html  # three calls ran that step


@pytest.mark.slow
def test_a_study_over_seeds_reports_mean_and_sd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ["PDM_BENCH_CACHE"] = str(tmp_path / "cache")
    try:
        code = run(["paper", "--dataset", "digits", "--defenses", "baseline,pdm", "--train-only", "", "--seeds", "0,1",
                    "--threats", "gray", "--attacks", "fgsm-0.1", "--epochs", "2", "--n-samples", "30", "--no-progress",
                    "--results-dir", str(tmp_path / "r")])
    finally:
        os.environ.pop("PDM_BENCH_CACHE", None)
    assert code == 0, capsys.readouterr().err
    rows = ResultsStore(tmp_path / "r").rows()
    assert {r.seed for r in rows if r.threat == "gray"} == {0, 1}
    per_seed = {r.seed: r.value for r in rows if (r.defense, r.attack, r.metric) == ("pdm", "fgsm-0.1", "auc")}
    table2 = {r["attack"]: r for r in read_csv(tmp_path / "r" / "report" / "table2_graybox_auc.csv")}
    cell = table2["fgsm-0.1"]
    assert cell["digits (quick) pdm seeds"] == "2"
    assert float(cell["digits (quick) pdm"]) == pytest.approx(np.mean(list(per_seed.values())), abs=6e-4)
    assert float(cell["digits (quick) pdm sd"]) == pytest.approx(np.std(list(per_seed.values()), ddof=1), abs=6e-5)
    assert "sd over 2 seeds" in (tmp_path / "r" / "report" / "report.html").read_text()


def test_two_configurations_of_one_defense_are_kept_apart(tmp_path: Path, cli: Callable[..., Any]) -> None:
    """A variant of pdm (another rvl_weight, other epochs) in the same results directory is its own column in every
    table, labelled with what differs; the provenance names each one's options and package."""
    results = tmp_path / "results"
    common = ("--threat", "gray", "--attacks", "fgsm-0.1", "--no-resiliency", "--n-samples", "30", "--no-progress",
              "--no-geometry", "--results-dir", str(results))
    assert cli("run", "--defense", "pdm", "--epochs", "3", *common).code == 0
    assert cli("run", "--defense", "pdm", "-o", "rvl_weight=0.5", "--epochs", "2", *common).code == 0
    report = cli("report", "--results-dir", str(results), "--out", str(tmp_path / "report"))
    assert report.code == 0, report.err
    table1 = read_csv(tmp_path / "report" / "table1_accuracy.csv")[0]
    table2 = read_csv(tmp_path / "report" / "table2_graybox_auc.csv")[0]
    first, second = "pdm (rvl_weight=0.1, epochs=3)", "pdm (rvl_weight=0.5, epochs=2)"
    assert {first, second} <= set(table1) and "pdm" not in table1
    assert table1[first] != table1[second]  # two models, two accuracies: never one silently replacing the other
    assert {f"digits (quick) {first}", f"digits (quick) {second}"} <= set(table2)
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "rvl_weight=0.5" in html and "pdm-bench 0.1.0" in html
