"""The claims table: verdicts by the stated rule, from rows (and per-image distortions), and docs blocks kept fresh."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pdm_bench.reports.claims import all_claims, verdict
from pdm_bench.reports.doc_blocks import stale_blocks
from pdm_bench.results import ResultRow
from pdm_bench.tables import RowIndex

REPO = Path(__file__).resolve().parents[1]


def _rows(defense: str, run: str, auc: tuple[float, float, float], pairs: int, accuracy: float) -> list[ResultRow]:
    def row(threat: str, attack: str, metric: str, value: float, n: int) -> ResultRow:
        return ResultRow("mnist", "quick", 0, defense, threat, attack, metric, value, n, run if threat != "model"
                         else f"{run}-model", "2026-12-07T00:00:00", "kde")

    value, low, high = auc
    return [row("model", "clean", "test_accuracy", accuracy, 10000),
            row("gray", "cw", "auc", value, pairs), row("gray", "cw", "auc_low", low, pairs),
            row("gray", "cw", "auc_high", high, pairs),
            row("white", "cw-wb", "distortion", 0.1, 100)]


def _claims(rows: list[ResultRow], directory: Path) -> dict[str, tuple[str, float]]:
    return {c.claim: (c.verdict, c.value) for c in all_claims(RowIndex(rows), [directory])}


def test_the_rule() -> None:
    assert verdict(0.01, 0.2, 0.0) == "holds"
    assert verdict(-0.2, -0.01, 0.0) == "does not hold"
    assert verdict(-0.1, 0.1, 0.0) == verdict(0.0, 0.0, 0.0) == verdict(float("nan"), 1.0, 0.0) == "inconclusive"


def test_claims_from_rows(tmp_path: Path) -> None:
    rows = [*_rows("pdm", "p", (0.95, 0.92, 0.98), 40, 0.990), *_rows("rce", "r", (0.80, 0.75, 0.85), 40, 0.985),
            *_rows("baseline", "b", (0.94, 0.90, 0.98), 20, 0.992)]
    distortions = tmp_path / "distortions"
    distortions.mkdir()
    rng = np.random.default_rng(1)
    base = rng.uniform(0.05, 0.1, 100)
    np.save(distortions / "mnist-cw-wb-p.npy", base * 1.5)  # PDM: 1.5x on every image
    np.save(distortions / "mnist-cw-wb-r.npy", base)
    claims = _claims(rows, tmp_path)
    assert claims["PDM detects cw better than rce"][0] == "holds"
    assert claims["PDM detects cw better than baseline"][0] == "inconclusive (fewer than 30 pairs)"
    assert claims["PDM keeps the baseline's accuracy (within 1 point)"][0] == "holds"
    ratio = claims["PDM needs more distortion than rce"]
    assert ratio[0] == "holds" and abs(ratio[1] - 1.5) < 1e-9
    assert claims["PDM needs more distortion than baseline"][0] == "inconclusive"  # no per-image file: no interval


def test_the_docs_blocks_match_the_committed_rows() -> None:
    assert stale_blocks(REPO) == [], "run: python -m pdm_bench.reports.doc_blocks"
