"""The gray box's checklist item "iterative attacks beat single-step ones" is not passed on exact ties."""

from __future__ import annotations

from pdm_bench.results import ResultRow
from pdm_bench.tables import RowIndex
from pdm_bench.threat_models.attack_specs import RESILIENCY_EPS
from pdm_bench.threat_models.gray import GrayBox


def _check(bim: float, fgsm: float) -> object:
    rows = [ResultRow("digits", "quick", 0, "pdm", "gray", f"{family}-{eps:g}", "accuracy", value, 200, "run",
                      "2026-12-07T00:00:00", "kde")
            for eps in RESILIENCY_EPS for family, value in (("bim", bim), ("fgsm", fgsm))]
    checks = GrayBox().checklist(RowIndex(rows), "digits", "quick", "pdm")
    return next(c for c in checks if c.item.startswith("iterative"))


def test_exact_ties_are_not_judged_and_a_real_gap_passes() -> None:
    tie = _check(0.5, 0.5)
    assert tie.passed is None and "equal at every eps, not judged" in tie.numbers
    assert _check(0.2, 0.6).passed is True
    assert _check(0.9, 0.2).passed is False
