"""The report's tables: Table 1 (clean accuracy, from the model rows), then each threat model's own tables (its
``report_tables``), in the registry's order: for the paper's threat models, Tables 2-4."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from itertools import product

from pdm_bench.results import Attack, Metric, Threat, fpr_metric
from pdm_bench.tables import Cell, RowIndex, Table, block_name, defense_order, mark_best, with_detector
from pdm_bench.threat import ThreatModel


def accuracy_table(index: RowIndex) -> Table:
    """Table 1: clean test accuracy (%) on the whole test set, dataset rows x defense columns."""
    defenses = defense_order(index.defense_label[r.run_id] for r in index.rows)
    rows = [block_name(d, p) for d, p in index.blocks]
    cells = {(block_name(d, p), ("", f)): index.cell(d, p, f, "model", "clean", Metric.TEST_ACCURACY)
             for d, p in index.blocks for f in defenses}
    table = Table("table1_accuracy", "Table 1: clean test accuracy (%)", "dataset", rows,
                  [("", f) for f in defenses], cells, digits=2, scale=100.0)
    mark_best(table)
    return table


def detector_summary(index: RowIndex) -> list[Table]:
    """When two or more detectors were measured: per defense and detector, the worst case over every attack of every
    threat model of robust accuracy under detection at 5% false positives (the attack named), with the white box's
    C&W-wb distortion beside it; each defense's best detector is marked."""
    detectors = sorted({r.detector for r in index.rows if r.threat != Threat.MODEL})
    if len(detectors) < 2:
        return []
    metric = fpr_metric("robust_accuracy", 0.05)
    measured: dict[tuple[str, str, str], set[tuple[str, str]]] = defaultdict(set)  # (dataset, preset, column) -> attacks
    for r in index.rows:
        if r.metric == metric:
            measured[(r.dataset, r.preset, index.column(r))].add((r.threat, r.attack))
    defenses = defense_order(index.defense_label[r.run_id] for r in index.rows if r.threat != Threat.MODEL)
    columns = [(block_name(d, p), detector) for d, p in index.blocks for detector in detectors]
    cells = {}
    for (dataset, preset), detector, defense in product(index.blocks, detectors, defenses):
        column = with_detector(defense, detector)
        cell = worst_case(index, dataset, preset, column, sorted(measured[(dataset, preset, column)]), metric)
        if cell is not None:
            cells[(defense, (block_name(dataset, preset), detector))] = cell
    table = Table("table6_detectors", "Table 6: detectors side by side: worst-case robust accuracy under detection at "
                  "5% false positives over every attack measured (the white box's C&W-wb distortion beside it)",
                  "defense", defenses, columns, cells)
    mark_best(table)
    return [table]


def worst_case(index: RowIndex, dataset: str, preset: str, column: str, attacks: list[tuple[str, str]],
               metric: str) -> Cell | None:
    """The lowest ``metric`` over ``attacks`` ((threat, attack) pairs) of one column, the attack named in the flag and
    the white box's distortion in the notes; None when none was measured."""
    found = {key: cell for key in attacks if (cell := index.cell(dataset, preset, column, *key, metric)).value is not None}
    if not found:
        return None
    worst = min(found, key=lambda key: found[key].value)  # type: ignore[arg-type, return-value]
    white = index.cell(dataset, preset, column, Threat.WHITE, Attack.CW_WB, Metric.DISTORTION)
    notes = {"attacks": float(len(found)), **({"white-box d": white.value} if white.value is not None else {})}
    return Cell(found[worst].value, seeds=found[worst].seeds, notes=notes, flag=f"worst: {worst[0]} {worst[1]}")


def all_tables(index: RowIndex, threat_models: Iterable[ThreatModel]) -> list[Table]:
    return [accuracy_table(index), *(table for threat in threat_models for table in threat.report_tables(index)),
            *detector_summary(index)]
