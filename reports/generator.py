"""``pdm-bench report``: the paper's tables (CSV, LaTeX, HTML) and figures from a results directory alone.

Everything comes from ``RESULTS_DIR``: ``results.csv`` (the rows), ``embeddings/`` (t-SNE coordinates),
``distortions/`` (per-image white-box distortion) and ``runs/`` (how each run was made). Nothing is re-run.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from pdm_bench.errors import UserError
from pdm_bench.records import git_commit, read_runs, versions
from pdm_bench.registry import threat_model_registry
from pdm_bench.figures import Figure
from pdm_bench.reports.claims import COLUMNS as CLAIM_COLUMNS
from pdm_bench.reports.claims import METHOD as CLAIM_METHOD
from pdm_bench.reports.claims import RULE as CLAIM_RULE
from pdm_bench.reports.claims import all_claims, claims_csv
from pdm_bench.reports.figures import bound_figure, tsne_figure
from pdm_bench.reports.formats import column_name, tables_tex, to_csv
from pdm_bench.reports.paper_values import (PAPER_DEFENSES, PAPER_TABLE1, PAPER_TABLE2, PAPER_TABLE3, PAPER_TABLE4,
                                            paper_dataset)
from pdm_bench.reports.tables import all_tables
from pdm_bench.results import Metric, ResultsStore
from pdm_bench.storage import atomic_write_text
from pdm_bench.tables import COUNT_NOTES, RowIndex, Table, block_name

DATASET_NOTES = {
    "digits": "scikit-learn's 8x8 digits (embedded), fixed stratified split",
    "mnist": "MNIST, standard IDX files",
    "cifar10": "CIFAR-10, official python pickle batches",
    "cifar10-jpeg": "CIFAR-10 as a JPEG copy (lossy: pixels differ slightly from the official release; "
                    "not directly comparable with results on the official files)",
}


@dataclass(frozen=True)
class Section:
    """One dataset block's figures and its Eq. 4 terms."""

    name: str
    figures: list[Figure]
    bound_terms: list[dict[str, Any]]


def write_report(results_dir: Path | Sequence[Path], out: Path) -> list[Path]:
    """Write the tables' CSVs, ``tables.tex`` and ``report.html`` to ``out``; return their paths. Several results
    directories (e.g. one study per data set) make one report: their rows side by side, each data set's figures from
    the directory that holds its rows."""
    directories = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(d) for d in results_dir]
    stores = {directory: ResultsStore(directory).rows() for directory in directories}
    rows = [row for directory_rows in stores.values() for row in directory_rows]
    if not rows:
        raise UserError(f"No results in {' or '.join(str(d / 'results.csv') for d in directories)}: run `pdm-bench run` "
                        "or `pdm-bench paper` with --results-dir first")
    runs = {run_id: record for directory in directories for run_id, record in read_runs(directory).items()}
    index = RowIndex(rows, runs)
    threat_models = report_threat_models(rows)
    tables = all_tables(index, threat_models)
    sections = []
    for dataset, preset in index.blocks:
        home = next(d for d, held in stores.items() if any((r.dataset, r.preset) == (dataset, preset) for r in held))
        bound, terms = bound_figure(index, dataset, preset)
        figures = [tsne_figure(index, home, dataset, preset), bound,
                   *(f for threat in threat_models for f in threat.report_figures(index, home, dataset, preset))]
        sections.append(Section(block_name(dataset, preset), [f for f in figures if f is not None], terms))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        written.append(atomic_write_text(out / f"{table.key}.csv", to_csv(table)))
    written.append(atomic_write_text(out / "tables.tex", tables_tex(tables)))
    checks = checklist(index, threat_models)
    if checks["rows"]:
        written.append(atomic_write_text(out / "checklist.csv", checklist_csv(checks)))
    claims = all_claims(index, directories)
    if claims:
        written.append(atomic_write_text(out / "claims.csv", claims_csv(claims)))
    costs = [(str(d), cost) for d in directories if (cost := study_cost(d)) is not None]
    html = render_html(tables=[html_table(t, index) for t in tables], sections=sections, checklist=checks,
                       claims={"rows": [c.cells() for c in claims], "columns": CLAIM_COLUMNS, "rule": CLAIM_RULE,
                               "method": CLAIM_METHOD},
                       provenance=provenance(index, runs), results_dir=", ".join(str(d) for d in directories),
                       costs=costs)
    written.append(atomic_write_text(out / "report.html", html))
    return written


def report_threat_models(rows: list[Any]) -> list[Any]:
    """The threat models whose tables and figures the report has: the built-ins, then each plugin with rows here, in the
    registry's order (a plugin that fails to load has no table; `pdm-bench list` shows it as BROKEN)."""
    registry = threat_model_registry()
    measured = {r.threat for r in rows}
    chosen = []
    for status in registry.statuses():
        builtin = status.origin == "built-in"
        if status.error is None and (builtin or status.name in measured):
            chosen.append(status.value())  # type: ignore[misc, operator]
    return chosen


def paper_value(table: Table, row: str, column: tuple[str, str], index: RowIndex) -> float | None:
    """The paper's figure for a cell, where the paper has one (MNIST, CIFAR-10)."""
    group, defense = column
    block = group or row
    dataset = next((d for d, p in index.blocks if block_name(d, p) == block), None)
    paper = paper_dataset(dataset) if dataset else None
    number = table.key.split("_")[0]  # table1 ... table4 are the paper's; table2b (fixed FPR) and others are not
    if paper is None or number not in ("table1", "table2", "table3", "table4"):
        return None
    if number == "table1":
        return PAPER_TABLE1[paper].get(defense)
    if defense not in PAPER_DEFENSES:
        return None
    position = PAPER_DEFENSES.index(defense)
    if number == "table2":
        values = PAPER_TABLE2[paper].get(row)
        return values[position] if values else None
    return (PAPER_TABLE3 if number == "table3" else PAPER_TABLE4)[paper][position]


def html_table(table: Table, index: RowIndex) -> dict[str, Any]:
    """What the template needs of a table: header groups, column names, and each cell's texts."""
    groups = []
    for group, _ in table.columns:
        if groups and groups[-1]["name"] == group:
            groups[-1]["span"] += 1
        else:
            groups.append({"name": group, "span": 1})
    body = []
    for row in table.rows:
        cells = []
        for column in table.columns:
            cell = table.cell(row, column)
            paper = paper_value(table, row, column, index)
            interval = (f"[{cell.low * table.scale:.{table.digits}f}, {cell.high * table.scale:.{table.digits}f}]"
                        if cell.low is not None and cell.high is not None and math.isfinite(cell.low) else "")
            if cell.sd is not None:
                interval = f"± {cell.sd * table.scale:.{table.digits}f} (sd over {cell.seeds} seeds)"
            notes = ", ".join(f"{k} {_short(k, v)}" for k, v in cell.notes.items() if k != "criterion met")
            cells.append({"text": table.text(cell), "missing": cell.value is None or not math.isfinite(cell.value),
                          "best": cell.best,
                          "interval": interval, "notes": notes if cell.value is not None else "", "flag": "; ".join(cell.flags()),
                          "seeds": cell.seeds,
                          "paper": "" if paper is None else f"{paper:.{max(table.digits, 2) if paper < 10 else 2}f}"})
        body.append({"label": row, "cells": cells})
    return {"key": table.key, "title": table.title, "row_label": table.row_label,
            "groups": groups if any(g["name"] for g in groups) else [],
            "columns": [d for _, d in table.columns], "rows": body,
            "csv": f"{table.key}.csv", "empty": not table.rows or not table.columns, "threat": table.threat,
            "unmeasured": all(cell.value is None for cell in table.cells.values())}


def _short(name: str, value: float) -> str:
    return f"{value:.0f}" if name in COUNT_NOTES and float(value).is_integer() else f"{value:.3f}"


def checklist(index: RowIndex, threat_models: list[Any]) -> dict[str, Any]:
    """Each threat model's checklist items (rows) per dataset block and defense (columns); a threat model none of
    whose items was run anywhere has no rows."""
    columns = [(block_name(d, p), d, p, defense) for d, p in index.blocks for defense in index.evaluated(d, p)]
    rows = []
    for threat in threat_models:
        per_column = [threat.checklist(index, d, p, defense) for _, d, p, defense in columns]
        items = list(dict.fromkeys(check.item for checks in per_column for check in checks))
        if not any(check.passed is not None for checks in per_column for check in checks):
            continue
        for item in items:
            cells = [next(({"status": c.status, "numbers": c.numbers} for c in checks if c.item == item),
                          {"status": "not run", "numbers": ""}) for checks in per_column]
            rows.append({"label": f"{threat.name}: {item}", "threat": threat.name, "item": item, "cells": cells})
    groups: list[dict[str, Any]] = []
    for block, *_ in columns:
        if groups and groups[-1]["name"] == block:
            groups[-1]["span"] += 1
        else:
            groups.append({"name": block, "span": 1})
    return {"groups": groups, "columns": [c[3] for c in columns], "blocks": [c[0] for c in columns], "rows": rows}


def checklist_csv(checks: dict[str, Any]) -> str:
    """One line per (dataset block, defense, threat model, item): status and numbers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "defense", "threat", "item", "status", "numbers"])
    for row in checks["rows"]:
        for block, defense, cell in zip(checks["blocks"], checks["columns"], row["cells"]):
            writer.writerow([block, defense, row["threat"], row["item"], cell["status"], cell["numbers"]])
    return buffer.getvalue()


def components(record: dict[str, Any]) -> str:
    """The detector's and the threat model's options and the package that supplied each, and the weights' sha256
    with what trained them, from a run's record ('not recorded' for runs recorded before these were)."""
    def options(value: Any) -> str:
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "defaults" if isinstance(value, dict) else "not recorded"

    parts = []
    if "detector_name" in record:
        parts.append(f"detector {record['detector_name']} ({options(record.get('detector_options'))}; "
                     f"{record.get('detector_version', 'package not recorded')})")
    if "threat_options" in record:
        parts.append(f"threat {record.get('threat')} ({options(record['threat_options'])}; "
                     f"{record.get('threat_version', 'package not recorded')})")
    attacks = record.get("attack_packages")
    if isinstance(attacks, dict) and attacks:
        parts.append("plugin attacks " + ", ".join(f"{name} ({package})" for name, package in sorted(attacks.items())))
    if "weights_sha256" in record:
        trained_on = record.get("trained_on")
        how = ", ".join(f"{k} {v}" for k, v in trained_on.items()) if isinstance(trained_on, dict) else str(trained_on)
        parts.append(f"weights sha256 {str(record['weights_sha256'])[:16]} (trained on: {how})")
    return "; ".join(parts) or "not recorded"


def provenance(index: RowIndex, runs: dict[str, Any]) -> dict[str, Any]:
    """Dataset notes, and for each run the tables and figures use: preset, seed, N, bandwidth, versions, device,
    commit; ``runs``: the run records (``runs/<run id>.json``) of the results directories."""
    environments: dict[tuple[str, str, str], int] = {}
    used = []
    for run_id in sorted(index.used_runs, key=lambda r: (index.run_time[r], r)):
        first = next(iter(index.by_run[run_id].values()))
        record = runs.get(run_id, {})
        clean = index.by_run[run_id].get(("clean", Metric.ACCURACY)) or index.by_run[run_id].get(("clean", Metric.TEST_ACCURACY))
        bandwidth = index.value(run_id, "clean", Metric.BANDWIDTH)
        options = record.get("defense_options")
        described = ", ".join(f"{k}={v}" for k, v in options.items()) if isinstance(options, dict) else "not recorded"
        if record.get("defense_version"):
            described += f"; {record['defense_version']}"
        used.append({"run_id": run_id, "dataset": first.dataset, "preset": first.preset, "seed": first.seed,
                     "defense": index.defense_label[run_id], "options": described or "none", "threat": first.threat,
                     "components": components(record),
                     "n": clean.n if clean else "",
                     "bandwidth": f"{bandwidth:.4g}" if bandwidth is not None else "",
                     "date": index.run_time[run_id], "command": record.get("command", "not recorded"),
                     "environment": environments.setdefault(
                         (str(record.get("device", "not recorded")), str(record.get("git_commit", "not recorded")),
                          ", ".join(f"{k} {v}" for k, v in sorted(record.get("versions", {}).items())) or "not recorded"),
                         len(environments) + 1)})
    datasets = sorted({d for d, _ in index.blocks})
    return {"datasets": [{"name": d, "note": DATASET_NOTES.get(d, "image folder or plugin dataset")} for d in datasets],
            "runs": used, "seeds": sorted({r["seed"] for r in used}),
            "environments": [{"number": k, "device": d, "commit": c, "versions": v}
                             for (d, c, v), k in sorted(environments.items(), key=lambda item: item[1])],
            "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "generator_commit": git_commit(), "versions": versions()}


def study_cost(results_dir: Path) -> dict[str, Any] | None:
    """Seconds per step of ``pdm-bench paper`` summed over its calls (``logs/steps.csv``); None when there is none."""
    from pdm_bench.steps import STEP_TIMES, study_log_dir

    path = study_log_dir(results_dir) / STEP_TIMES
    try:
        records = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    steps: dict[str, dict[str, Any]] = {}
    for record in records:
        try:
            seconds = float(record["seconds"])
        except (KeyError, TypeError, ValueError):
            continue  # a torn last line
        step = steps.setdefault(record["step"], {"step": record["step"], "calls": 0, "seconds": 0.0, "status": ""})
        step["calls"] += 1
        step["seconds"] += seconds
        step["status"] = record.get("status") or ""
    if not steps:
        return None
    total = sum(step["seconds"] for step in steps.values())
    return {"steps": [{**step, "seconds": f"{step['seconds']:.0f}"} for step in steps.values()],
            "total": f"{total:.0f}", "hours": f"{total / 3600:.2f}"}


def render_html(**context: Any) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(loader=PackageLoader("pdm_bench.reports", "templates"),
                              autoescape=select_autoescape(["html", "j2"], default_for_string=True, default=True),
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("report.html.j2").render(column_name=column_name, **context)
