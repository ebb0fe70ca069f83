"""Report tables from hand-made rows: 'not run' cells, best-of-row marks, seed averaging, escaping in LaTeX and HTML."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from pdm_bench.reports.formats import latex_escape, tables_tex, to_csv
from pdm_bench.reports.generator import html_table, write_report
from pdm_bench.reports.tables import accuracy_table
from pdm_bench.results import ResultRow, ResultsStore
from pdm_bench.tables import NOT_RUN, RowIndex, Table, model_labels
from pdm_bench.threat_models.black import BlackBox
from pdm_bench.threat_models.gray import GrayBox
from pdm_bench.threat_models.white import WhiteBox


# Tables 2-4 are now each threat model's own report table.
def graybox_table(index: RowIndex) -> Table:
    return GrayBox().report_tables(index)[0]


def whitebox_table(index: RowIndex) -> Table:
    return WhiteBox().report_tables(index)[0]


def blackbox_table(index: RowIndex) -> Table:
    return BlackBox().report_tables(index)[0]


def row(defense: str, threat: str, attack: str, metric: str, value: float, *, seed: int = 0, run: str | None = None,
        time: str = "2026-11-25T10:00:00", dataset: str = "mnist", n: int = 100) -> ResultRow:
    return ResultRow(dataset, "quick", seed, defense, threat, attack, metric, value, n, run or f"{defense}-{threat}-{seed}", time)


def study_rows() -> list[ResultRow]:
    rows = [row(d, "model", "clean", "test_accuracy", acc, n=10000)
            for d, acc in (("baseline", 0.9911), ("rce", 0.9858), ("siamese_rvl", 0.9917), ("pdm", 0.9886))]
    for d, auc in (("baseline", 0.95), ("rce", 0.90), ("pdm", 0.97)):
        rows += [row(d, "gray", "cw", "auc", auc), row(d, "gray", "cw", "auc_low", auc - 0.01),
                 row(d, "gray", "cw", "auc_high", auc + 0.01), row(d, "gray", "cw", "success_rate", 0.5),
                 row(d, "gray", "cw", "pairs_kept", 50)]
    rows += [row("baseline", "white", "cw-wb", "distortion", 0.06), row("baseline", "white", "cw-wb", "criterion_met", 1.0),
             row("rce", "white", "cw-wb", "distortion", 0.11), row("rce", "white", "cw-wb", "criterion_met", 0.0)]
    return rows


def test_missing_cells_say_not_run_and_the_best_value_is_marked() -> None:
    index = RowIndex(study_rows())
    gray = graybox_table(index)
    column = ("mnist (quick)", "pdm")
    assert gray.cell("cw", column).best and not gray.cell("cw", ("mnist (quick)", "rce")).best
    assert gray.text(gray.cell("cw-hc", column)) == NOT_RUN  # the paper's attack list, measured or not
    assert gray.cell("cw", column).low == pytest.approx(0.96)
    assert ("mnist (quick)", "siamese_rvl") not in gray.columns  # trained only: no threat-model column
    accuracy = accuracy_table(index)
    assert accuracy.text(accuracy.cell("mnist (quick)", ("", "siamese_rvl"))) == "99.17"
    assert accuracy.cell("mnist (quick)", ("", "siamese_rvl")).best
    white = whitebox_table(index)
    assert white.cell("mnist (quick)", ("", "rce")).flag == "criterion not met"
    assert white.text(white.cell("mnist (quick)", ("", "pdm"))) == NOT_RUN
    black = blackbox_table(index)
    assert all(black.text(black.cell("mnist (quick)", c)) == NOT_RUN for c in black.columns)
    proxy_short = RowIndex([row("pdm", "black", "cw-wb", "auc", 0.95), row("pdm", "black", "cw-wb", "criterion_met", 0.0)])
    assert blackbox_table(proxy_short).cell("mnist (quick)", ("", "pdm")).flag == "criterion not met on the proxy"


def test_newest_run_per_seed_is_used_and_seeds_are_averaged() -> None:
    rows = [row("pdm", "gray", "cw", "auc", 0.5, run="old", time="2026-11-24T00:00:00"),
            row("pdm", "gray", "cw", "auc", 0.9, run="new", time="2026-11-25T00:00:00"),
            row("pdm", "gray", "cw", "auc", 0.7, seed=1, run="seed1")]
    cell = graybox_table(RowIndex(rows)).cell("cw", ("mnist (quick)", "pdm"))
    assert cell.value == pytest.approx(0.8) and cell.seeds == 2
    assert cell.low is None  # no single-run interval for a mean over seeds: their spread instead
    assert cell.sd == pytest.approx(0.1414, abs=1e-4)
    table = graybox_table(RowIndex(rows))
    records = list(csv.reader(io.StringIO(to_csv(table))))
    cw = next(r for r in records if r[0] == "cw")
    assert cw[records[0].index("mnist (quick) pdm sd")] == "0.1414" and cw[records[0].index("mnist (quick) pdm seeds")] == "2"
    assert r"0.800 {\scriptsize$\pm$0.141}" in tables_tex([table])
    single = list(csv.reader(io.StringIO(to_csv(graybox_table(RowIndex(rows[:2]))))))[0]
    assert not any(name.endswith(" sd") for name in single)  # one seed: no sd column


def test_csv_and_latex_carry_values_intervals_and_not_run() -> None:
    index = RowIndex(study_rows())
    records = list(csv.reader(io.StringIO(to_csv(graybox_table(index)))))
    header, cw = records[0], next(r for r in records if r[0] == "cw")
    assert cw[header.index("mnist (quick) pdm")] == "0.970"
    assert cw[header.index("mnist (quick) pdm ci_low")] == "0.9600"
    assert cw[header.index("mnist (quick) pdm success")] == "0.5000" and cw[header.index("mnist (quick) pdm pairs")] == "50"
    cw_hc = next(r for r in records if r[0] == "cw-hc")
    assert cw_hc[header.index("mnist (quick) pdm")] == "" and cw_hc[header.index("mnist (quick) pdm seeds")] == ""
    certain = [row("pdm", "gray", "cw", "auc", 1.0), row("pdm", "gray", "cw", "success_rate", 1.0),
               row("pdm", "gray", "cw", "pairs_kept", 100)]
    records = list(csv.reader(io.StringIO(to_csv(graybox_table(RowIndex(certain))))))
    cw = next(r for r in records if r[0] == "cw")
    assert cw[records[0].index("mnist (quick) pdm success")] == "1.0000"  # a rate stays a rate, a count a count
    assert cw[records[0].index("mnist (quick) pdm pairs")] == "100"
    tex = tables_tex([accuracy_table(index), graybox_table(index), whitebox_table(index)])
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf{0.970}" in tex
    assert r"siamese\_rvl" in tex and " & -- " in tex and "--: not run." in tex and r"$^\dagger$" in tex
    assert r"\caption{clean test accuracy (\%).}" in tex  # LaTeX numbers the tables itself: no "Table 1:" in captions


def test_latex_escape() -> None:
    assert latex_escape("a_b & 50% #1 {x}") == r"a\_b \& 50\% \#1 \{x\}"


def test_html_escapes_user_supplied_names(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    ResultsStore(tmp_path).append([*study_rows(), row(evil, "gray", "cw", "auc", 0.6)])
    write_report(tmp_path, tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "paper 0.994" in html  # MNIST cells show the paper's value beside ours


def test_report_of_an_empty_directory_is_a_one_line_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("report", "--results-dir", str(tmp_path))
    assert result.code == 2 and "No results in" in result.err and "Traceback" not in result.err
    result = cli("report", "--results-dir", str(tmp_path / "absent"))
    assert result.code == 2 and "does not exist" in result.err


@pytest.mark.parametrize("args, expected", [
    (("--threats", "gray,grey"), "Unknown threat model 'grey'. Did you mean: gray?"),
    (("--n-samples", "0"), "--n-samples must be a positive number of test images, got 0"),
    (("--attacks", "fgsm-0.1,cwx"), "Unknown attack 'cwx'. Did you mean: cw?"),
    (("--cw-iterations", "-3"), "--cw-iterations must be a positive integer, got -3"),
    (("--dataset", "mnistt"), "Unknown dataset 'mnistt'. Did you mean: mnist?"),
])
def test_paper_refuses_bad_input_before_any_work(cli, tmp_path: Path, args: tuple[str, ...], expected: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("paper", "--dataset", "digits", "--results-dir", str(tmp_path / "r"), *args)
    assert result.code == 2 and expected in result.err and len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err and not (tmp_path / "r" / "results.csv").exists()


def test_provenance_marks_the_jpeg_copy_and_unrecorded_runs(tmp_path: Path) -> None:
    ResultsStore(tmp_path).append([row("pdm", "gray", "cw", "auc", 0.9, dataset="cifar10-jpeg"),
                                   row("pdm", "gray", "clean", "bandwidth", 0.25, dataset="cifar10-jpeg")])
    write_report(tmp_path, tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "CIFAR-10 as a JPEG copy" in html and "not recorded" in html  # no runs/<id>.json: said, not invented
    assert "<td>0.25</td>" in html and "paper 0.933" in html  # its bandwidth; compared with the paper's CIFAR-10


def test_study_cost_sums_each_steps_calls_and_skips_a_torn_line(tmp_path: Path) -> None:
    from pdm_bench.reports.generator import study_cost

    assert study_cost(tmp_path) is None  # no study here: no cost block
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "steps.csv").write_text(
        "finished_at,step,status,seconds,jobs\n2026-11-25T10:00:00,train-pdm,stopped,100.0,1\n"
        "2026-11-25T11:00:00,train-pdm,finished,50.5,1\n2026-11-25T11:10:00,gray-box-pdm,finished,3600.0,2\n"
        "2026-11-25T11:11:00,white-box-pdm,fini")
    cost = study_cost(tmp_path)
    assert cost is not None and cost["total"] == "3750" and cost["hours"] == "1.04"
    assert cost["steps"][0] == {"step": "train-pdm", "calls": 2, "seconds": "150", "status": "finished"}
    assert len(cost["steps"]) == 2


def test_few_pairs_are_marked_in_every_format_and_unmeasured_rows_left_out_of_latex() -> None:
    rows = [row("pdm", "gray", "cw", "auc", 0.9), row("pdm", "gray", "cw", "success_rate", 0.2),
            row("pdm", "gray", "cw", "pairs_kept", 12), row("pdm", "gray", "jsma", "auc", 0.99),
            row("pdm", "gray", "jsma", "success_rate", 0.9), row("pdm", "gray", "jsma", "pairs_kept", 90)]
    table = graybox_table(RowIndex(rows))
    records = list(csv.reader(io.StringIO(to_csv(table))))
    flag = records[0].index("mnist (quick) pdm flag")
    by_attack = {r[0]: r for r in records[1:]}
    assert by_attack["cw"][flag] == "fewer than 30 pairs" and by_attack["jsma"][flag] == ""
    tex = tables_tex([table])
    assert r"0.900 {\scriptsize(0.20; 12)}$^\ast$" in tex and "fewer than 30 pairs." in tex
    assert "fgsm-0.05 &" not in tex and "cw &" in tex and "jsma &" in tex  # rows nobody measured are left out
    html = html_table(table, RowIndex(rows))
    cw = next(r for r in html["rows"] if r["label"] == "cw")["cells"][0]
    assert cw["flag"] == "fewer than 30 pairs"


def test_tables_tex_compiles_with_pdflatex(tmp_path: Path) -> None:
    """tables.tex as a paper includes it (booktabs), every table of a report with a flag, a not-run cell, few pairs."""
    import os
    import shutil
    import subprocess

    if shutil.which("pdflatex") is None:
        if os.environ.get("PDM_BENCH_REQUIRE_LATEX"):
            pytest.fail("pdflatex is not installed, and PDM_BENCH_REQUIRE_LATEX is set (.ci/run installs it)")
        pytest.skip("pdflatex is not installed (Debian's texlive-latex-base and -recommended; .ci/run installs them)")
    index = RowIndex([*study_rows(), row("rce", "gray", "cw", "auc", 0.8), row("rce", "gray", "cw", "pairs_kept", 9)])
    tables = [accuracy_table(index), *(t for threat in (GrayBox(), WhiteBox(), BlackBox()) for t in threat.report_tables(index))]
    (tmp_path / "tables.tex").write_text(tables_tex(tables), encoding="utf-8")
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                        "\\input{tables.tex}\n\\end{document}\n", encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000


def test_one_defense_trained_per_data_set_is_one_column_and_two_configurations_on_one_are_two() -> None:
    """A preset trains pdm 4 epochs on MNIST and 10 on CIFAR-10: one ``pdm`` column over both data sets; a second
    configuration on MNIST (another rvl_weight) is its own labelled column there only."""
    options = {"rvl_weight": 0.1}
    runs = {"m": {"defense_options": options, "epochs": 4}, "c": {"defense_options": options, "epochs": 10},
            "m2": {"defense_options": {"rvl_weight": 0.5}, "epochs": 4}}
    rows = [row("pdm", "model", "clean", "test_accuracy", 0.99, run="m"),
            row("pdm", "model", "clean", "test_accuracy", 0.70, run="c", dataset="cifar10-jpeg")]
    assert model_labels(rows, runs) == {"m": "pdm", "c": "pdm"}
    rows.append(row("pdm", "model", "clean", "test_accuracy", 0.98, run="m2"))
    assert model_labels(rows, runs) == {"m": "pdm (rvl_weight=0.1)", "m2": "pdm (rvl_weight=0.5)", "c": "pdm"}


def test_two_studies_make_one_report_side_by_side(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """An MNIST and a CIFAR-10 results directory: one Table 1 with both data sets, both studies' costs."""
    mnist, cifar = tmp_path / "mnist", tmp_path / "cifar"
    ResultsStore(mnist).append(study_rows())
    ResultsStore(cifar).append([row("pdm", "model", "clean", "test_accuracy", 0.75, dataset="cifar10-jpeg", run="c"),
                                row("pdm", "gray", "cw", "auc", 0.9, dataset="cifar10-jpeg", run="cg")])
    for directory, seconds in ((mnist, "60.0"), (cifar, "7200.0")):
        (directory / "logs").mkdir()
        (directory / "logs" / "steps.csv").write_text(f"finished_at,step,status,seconds,jobs\nt,train-pdm,finished,{seconds},1\n")
    result = cli("report", "--results-dir", str(mnist), "--results-dir", str(cifar), "--out", str(tmp_path / "out"))
    assert result.code == 0, result.err
    with open(tmp_path / "out" / "table1_accuracy.csv", encoding="utf-8") as handle:
        table1 = {r["dataset"]: r for r in csv.DictReader(handle)}
    assert table1["cifar10-jpeg (quick)"]["pdm"] == "75.00" and table1["mnist (quick)"]["pdm"] == "98.86"
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert f"Study cost: <code>{cifar}</code>" in html and "7200 s (2.00 h)" in html and "60 s" in html


def test_the_detector_summary_takes_the_worst_attack_per_defense_and_detector() -> None:
    from dataclasses import replace

    from pdm_bench.reports.tables import detector_summary

    ra5 = "robust_accuracy_at_fpr_5"
    rows = [row(d, "model", "clean", "test_accuracy", 0.99, n=10000, run=d) for d in ("baseline", "pdm")]
    assert detector_summary(RowIndex(rows)) == []  # one detector (or none): no summary
    for detector, shift in (("kde", 0.0), ("lid", 0.2)):
        for defense, base in (("baseline", 0.1), ("pdm", 0.3)):
            made = [row(defense, "gray", "cw", ra5, base + 0.4 + shift, run=f"{defense}-g-{detector}"),
                    row(defense, "gray", "fgsm-0.1", ra5, base + 0.5 + shift, run=f"{defense}-g-{detector}"),
                    row(defense, "white", "cw-wb", ra5, base + shift, run=f"{defense}-w-{detector}"),
                    row(defense, "white", "cw-wb", "distortion", 0.08 + shift, run=f"{defense}-w-{detector}")]
            rows += [replace(r, detector=detector) for r in made]
    [table] = detector_summary(RowIndex(rows))
    assert table.rows == ["baseline", "pdm"] and table.columns == [("mnist (quick)", "kde"), ("mnist (quick)", "lid")]
    cell = table.cell("pdm", ("mnist (quick)", "lid"))
    assert cell.value == pytest.approx(0.5) and cell.flag == "worst: white cw-wb"
    assert cell.notes == {"attacks": 3.0, "white-box d": pytest.approx(0.28)}
    assert cell.best and not table.cell("pdm", ("mnist (quick)", "kde")).best  # per defense, its best detector
    text = to_csv(table)
    assert "mnist (quick) kde white-box d" in text.splitlines()[0] and "worst: white cw-wb" in text
