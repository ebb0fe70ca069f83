"""The report's tables: Table 1 (clean accuracy, from the model rows), then each threat model's own tables (its
``report_tables``), in the registry's order: for the paper's threat models, Tables 2-4."""

from __future__ import annotations

from collections.abc import Iterable

from pdm_bench.results import Metric
from pdm_bench.tables import RowIndex, Table, block_name, defense_order, mark_best
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


def all_tables(index: RowIndex, threat_models: Iterable[ThreatModel]) -> list[Table]:
    return [accuracy_table(index), *(table for threat in threat_models for table in threat.report_tables(index))]
