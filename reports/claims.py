"""The claims table: each of the paper's claims (Tables 1-4, Fig. 3) and our adaptive one, judged from the rows.

A claim compares PDM with another defense on one data set. Its statistic is a difference (or, for the white box's
d, a ratio) with a 95% interval; the verdict is stated by one rule (:data:`RULE`): *holds* when the whole interval is
on the claim's side, *does not hold* when it is wholly on the other side, *inconclusive* otherwise.

Intervals: AUC differences combine each AUC's own bootstrap interval as independent normals; accuracy and robust-
accuracy differences use the normal interval of two proportions (both conservative for the same images, which are
positively correlated); the white box's d ratio is a paired bootstrap over the same test images, from the per-image
distortions in ``distortions/``. With two or more seeds the statistic is the mean over seeds and the interval the
t-interval of the per-seed differences. Nothing here is typed by hand: every number comes from the rows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdm_bench.results import Metric, fpr_metric
from pdm_bench.tables import RowIndex, block_name

RULE = ("holds: the statistic's 95% interval lies wholly on the claim's side (difference > 0, ratio > 1, accuracy "
        "within 1 point); does not hold: wholly on the other side; inconclusive: the interval straddles or touches "
        "it, or an AUC rests on fewer than 30 pairs")
METHOD = ("Intervals: AUC differences combine the two AUCs' bootstrap intervals as independent normals; accuracy "
          "differences use two proportions' normal interval (conservative on the same images); d's ratio is a paired "
          "bootstrap over the same test images; with several seeds, the t-interval of the per-seed differences.")
Z95 = 1.959964
BOOTSTRAP = 2000
MIN_PAIRS = 30  # an AUC on fewer pairs is flagged in the tables; a claim resting on one is inconclusive
GRAY_ATTACKS = ("fgsm-0.05", "fgsm-0.1", "bim-0.05", "bim-0.1", "cw", "cw-hc", "jsma")
RESILIENCY = ("fgsm-0.05", "fgsm-0.1", "bim-0.05", "bim-0.1")
COLUMNS = ("data set", "claim", "source", "statistic", "value", "95% interval", "seeds", "N", "verdict")


@dataclass(frozen=True)
class Claim:
    """One judged claim: a row of the claims table."""

    block: str
    claim: str
    source: str
    statistic: str
    value: float
    low: float
    high: float
    seeds: int
    n: int
    verdict: str

    def cells(self) -> list[str]:
        interval = "" if math.isnan(self.low) else f"[{self.low:.4f}, {self.high:.4f}]"
        value = "" if math.isnan(self.value) else f"{self.value:.4f}"
        return [self.block, self.claim, self.source, self.statistic, value, interval, str(self.seeds), str(self.n),
                self.verdict]


def verdict(low: float, high: float, threshold: float) -> str:
    """:data:`RULE` for a claim that the statistic exceeds ``threshold``."""
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > threshold:
        return "holds"
    if high < threshold:
        return "does not hold"
    return "inconclusive"


@dataclass(frozen=True)
class _Context:
    index: RowIndex
    dataset: str
    preset: str
    directories: Sequence[Path]

    def runs(self, defense: str, threat: str, attack: str, metric: str) -> list[str]:
        return self.index.chosen_runs(self.dataset, self.preset, defense, threat, attack, metric)

    def values(self, runs: list[str], attack: str, metric: str) -> list[float]:
        return [v for run in runs if (v := self.index.value(run, attack, metric)) is not None and math.isfinite(v)]

    def n(self, runs: list[str], attack: str, metric: str) -> int:
        rows = [self.index.by_run[run].get((attack, metric)) for run in runs]
        return min((r.n for r in rows if r is not None), default=0)


def _seed_interval(differences: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(differences)
    half = statistics.stdev(differences) / math.sqrt(len(differences)) * _t95(len(differences) - 1)
    return mean, mean - half, mean + half


def _t95(df: int) -> float:
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    return table.get(df, Z95)


def _difference(ctx: _Context, threat: str, attack: str, metric: str, ours: str, theirs: str,
                interval: Callable[[float, float, int, int, list[str], list[str]], tuple[float, float]],
                ) -> tuple[float, float, float, int, int] | None:
    a, b = ctx.runs(ours, threat, attack, metric), ctx.runs(theirs, threat, attack, metric)
    va, vb = ctx.values(a, attack, metric), ctx.values(b, attack, metric)
    if not va or not vb:
        return None
    seeds, n = min(len(va), len(vb)), min(ctx.n(a, attack, metric), ctx.n(b, attack, metric))
    if seeds >= 2:
        return (*_seed_interval([x - y for x, y in zip(va, vb)]), seeds, n)
    diff = va[0] - vb[0]
    low, high = interval(va[0], vb[0], ctx.n(a, attack, metric), ctx.n(b, attack, metric), a, b)
    return diff, low, high, 1, n


def _auc_interval(ctx: _Context, attack: str) -> Callable[..., tuple[float, float]]:
    def interval(x: float, y: float, _na: int, _nb: int, a: list[str], b: list[str]) -> tuple[float, float]:
        halves = []
        for run in (a[0], b[0]):
            low, high = ctx.index.value(run, attack, Metric.AUC_LOW), ctx.index.value(run, attack, Metric.AUC_HIGH)
            if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
                return math.nan, math.nan
            halves.append((high - low) / 2)
        half = math.hypot(*halves)
        return x - y - half, x - y + half
    return interval


def _proportion_interval(x: float, y: float, na: int, nb: int, *_: object) -> tuple[float, float]:
    if na < 1 or nb < 1:
        return math.nan, math.nan
    half = Z95 * math.sqrt(x * (1 - x) / na + y * (1 - y) / nb)
    return x - y - half, x - y + half


def _compare(ctx: _Context, claim: str, source: str, threat: str, attack: str, metric: str, ours: str, theirs: str,
             *, kind: str, threshold: float = 0.0) -> Claim | None:
    interval = _auc_interval(ctx, attack) if kind == "auc" else _proportion_interval
    measured = _difference(ctx, threat, attack, metric, ours, theirs, interval)
    if measured is None:
        return None
    value, low, high, seeds, n = measured
    statistic = f"{metric} {ours} - {theirs}" + (f" ({attack})" if attack not in ("clean", "") else "")
    judged = verdict(low, high, threshold) if kind != "auc" or n >= MIN_PAIRS else \
        f"inconclusive (fewer than {MIN_PAIRS} pairs)"
    return Claim(block_name(ctx.dataset, ctx.preset), claim, source, statistic, value, low, high, seeds, n, judged)


def _d_ratio(ctx: _Context, ours: str, theirs: str) -> Claim | None:
    """PDM's mean white-box d over the other defense's, paired on the same images (bootstrap over images)."""
    attack, metric = "cw-wb", Metric.DISTORTION
    a, b = ctx.runs(ours, "white", attack, metric), ctx.runs(theirs, "white", attack, metric)
    if not a or not b:
        return None
    per_image = [_distortions(ctx, run) for run in (a[0], b[0])]
    block = block_name(ctx.dataset, ctx.preset)
    statistic = f"d {ours} / {theirs} (C&W-wb, criterion rung)"
    if per_image[0] is None or per_image[1] is None or len(per_image[0]) != len(per_image[1]):
        va, vb = ctx.values(a, attack, metric), ctx.values(b, attack, metric)
        ratio = va[0] / vb[0] if va and vb and vb[0] else math.nan
        return Claim(block, f"PDM needs more distortion than {theirs}", "Table 3", statistic, ratio, math.nan,
                     math.nan, 1, ctx.n(a, attack, metric), "inconclusive")
    x, y = per_image
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(x), size=(BOOTSTRAP, len(x)))
    ratios = np.nanmean(x[draws], axis=1) / np.nanmean(y[draws], axis=1)
    low, high = (float(q) for q in np.nanquantile(ratios, [0.025, 0.975]))
    value = float(np.nanmean(x) / np.nanmean(y))
    return Claim(block, f"PDM needs more distortion than {theirs}", "Table 3", statistic, value, low, high, 1,
                 int(min(np.isfinite(x).sum(), np.isfinite(y).sum())), verdict(low, high, 1.0))


def _distortions(ctx: _Context, run: str) -> np.ndarray | None:
    name = f"{ctx.dataset.replace('/', '_')[-40:]}-cw-wb-{run}.npy"
    for directory in ctx.directories:
        if (path := directory / "distortions" / name).is_file():
            return np.load(path)
    return None


def _worst_cases(ctx: _Context) -> list[str]:
    """Per budget, the adaptive worst case the text quotes: the union over every doubling (``worst-all@Kx``, the
    largest K) when there, else the most doubled worst case."""
    from pdm_bench.threat_models.adaptive import MAX_LEVELS, budget_tags, worst_all_name, worst_name

    names = {r.attack for r in ctx.index.rows if (r.dataset, r.preset, r.threat) == (ctx.dataset, ctx.preset, "adaptive")}
    chosen = []
    for tag in budget_tags(names):
        ladder = [worst_all_name(tag, k) for k in range(MAX_LEVELS - 1, 0, -1)] + \
            [worst_name(tag, k) for k in range(MAX_LEVELS - 1, -1, -1)]
        chosen += [name for name in ladder if name in names][:1]
    return chosen


def block_claims(ctx: _Context) -> list[Claim]:
    """Every claim the rows of one data set block can judge."""
    claims: list[Claim | None] = [
        _compare(ctx, "PDM keeps the baseline's accuracy (within 1 point)", "Table 1", "model", "clean",
                 Metric.TEST_ACCURACY, "pdm", "baseline", kind="proportion", threshold=-0.01)]
    for other in ("rce", "baseline"):
        claims += [_compare(ctx, f"PDM detects {attack} better than {other}", "Table 2", "gray", attack, Metric.AUC,
                            "pdm", other, kind="auc") for attack in GRAY_ATTACKS]
        claims.append(_d_ratio(ctx, "pdm", other))
        claims.append(_compare(ctx, f"PDM detects transferred C&W-wb better than {other}", "Table 4", "black", "cw-wb",
                               Metric.AUC, "pdm", other, kind="auc"))
        claims += [_compare(ctx, f"PDM is more accurate under {attack} than {other}", "Fig. 3", "gray", attack,
                            Metric.ACCURACY, "pdm", other, kind="proportion") for attack in RESILIENCY]
    claims += [_compare(ctx, "PDM keeps more images under the adaptive attack than baseline (5% FPR)",
                        "ours (Table 5)", "adaptive", worst, fpr_metric("robust_accuracy", 0.05), "pdm", "baseline",
                        kind="proportion") for worst in _worst_cases(ctx)]
    return [c for c in claims if c is not None]


def all_claims(index: RowIndex, directories: Sequence[Path]) -> list[Claim]:
    """The claims of every data set block with rows of PDM."""
    return [claim for dataset, preset in index.blocks
            for claim in block_claims(_Context(index, dataset, preset, directories))]


def claims_csv(claims: list[Claim]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(claim.cells() for claim in claims)
    return buffer.getvalue()


def claims_markdown(claims: list[Claim]) -> str:
    """The claims as a Markdown table (for docs/RESULTS.md's generated block), with the rule under it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in claim.cells()) + " |" for claim in claims]
    return "\n".join([*lines, "", f"Verdicts: {RULE}."])
