"""The threat models' figures in the report: the gray box's resiliency curves (Figure 3) and C&W class flow
(Figure 1b), the white box's per-image distortion."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from pdm_bench.figures import Figure, encode, pyplot
from pdm_bench.results import Attack, Metric
from pdm_bench.tables import RowIndex, block_name
from pdm_bench.threat_models.attack_specs import RESILIENCY_EPS

_FLOW = re.compile(r"^flow_(\d+)_(\d+)$")


def resiliency_figure(index: RowIndex, dataset: str, preset: str) -> Figure | None:
    """Accuracy under FGSM and BIM over eps (eps 0: clean accuracy on the same samples), one line per defense."""
    plt = pyplot()
    curves: dict[str, dict[str, list[float]]] = {}
    for defense in index.defenses(dataset, preset, "gray"):
        runs = index.chosen_runs(dataset, preset, defense, "gray", "fgsm-0.01", Metric.ACCURACY)
        if not runs:
            continue
        run = runs[0]
        clean = index.value(run, "clean", Metric.ACCURACY)
        curves[defense] = {family: [clean if clean is not None else math.nan] +
                           [v if (v := index.value(run, f"{family}-{eps:g}", Metric.ACCURACY)) is not None else math.nan
                            for eps in RESILIENCY_EPS] for family in ("fgsm", "bim")}
    if not curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, family in zip(axes, ("fgsm", "bim")):
        for defense, curve in curves.items():
            ax.plot((0.0, *RESILIENCY_EPS), curve[family], marker="o", markersize=3, label=defense)
        ax.set_title(f"{family.upper()} ({block_name(dataset, preset)})")
        ax.set_xlabel("eps (L-inf step size)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy under attack")
    axes[0].legend(fontsize=8)
    return Figure(f"resiliency-{dataset}-{preset}", f"Resiliency (Figure 3), {block_name(dataset, preset)}",
                  "Accuracy of each defended model on the gray-box samples under FGSM and BIM (10 steps) as eps grows; "
                  "eps 0 is clean accuracy on the same samples (seed of the newest run).", encode(fig))


def flow_matrix(index: RowIndex, run: str, attack: str, classes: int) -> np.ndarray | None:
    """Counts of (true class -> adversarial class) over an attack's kept pairs, from its ``flow_S_T`` rows."""
    matrix, found = np.zeros((classes, classes)), False
    for (att, metric), row in index.by_run[run].items():
        match = _FLOW.match(metric)
        if att == attack and match:
            source, target = match.groups()
            if int(source) < classes and int(target) < classes:
                matrix[int(source), int(target)] = row.value
                found = True
    return matrix if found else None


def flow_figure(index: RowIndex, dataset: str, preset: str, attack: str = "cw") -> Figure | None:
    """Figure 1b: where the (untargeted) C&W attack sends each class, per defense."""
    plt = pyplot()
    classes = max((max(map(int, m.groups())) + 1 for r in index.rows if (m := _FLOW.match(r.metric))
                   and (r.dataset, r.preset) == (dataset, preset)), default=0)
    panels = []
    for defense in index.defenses(dataset, preset, "gray"):
        runs = index.chosen_runs(dataset, preset, defense, "gray", attack, Metric.FLOW_TOTAL)
        matrix = flow_matrix(index, runs[0], attack, max(classes, 2)) if runs else None
        if matrix is not None:
            panels.append((defense, matrix))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.3), squeeze=False)
    for ax, (defense, matrix) in zip(axes[0], panels):
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(shares, cmap="Reds", vmin=0, vmax=1)
        ax.set_title(f"{defense} ({int(matrix.sum())} pairs)", fontsize=9)
        ax.set_xlabel("adversarial class")
        ax.set_ylabel("true class")
        ax.set_xticks(range(len(matrix)))
        ax.set_yticks(range(len(matrix)))
        ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share of the source class")
    return Figure(f"flow-{attack}-{dataset}-{preset}", f"C&W source -> adversarial class (Figure 1b), {block_name(dataset, preset)}",
                  f"Untargeted {attack} in the gray-box runs: for each true class (row), the share of its successful "
                  "adversarials that land in each class (column).", encode(fig))


def distortion_figure(index: RowIndex, directory: Path, dataset: str, preset: str) -> Figure | None:
    """Histogram of the per-image C&W-wb distortion d of each defense (white box)."""
    plt = pyplot()
    series = []
    for defense in index.defenses(dataset, preset, "white"):
        runs = index.chosen_runs(dataset, preset, defense, "white", Attack.CW_WB.value, Metric.DISTORTION)
        files = sorted((directory / "distortions").glob(f"*-{Attack.CW_WB.value}-{runs[0]}.npy")) if runs else []
        if files:
            try:
                values = np.load(files[0])
            except (OSError, ValueError):
                continue
            values = values[np.isfinite(values)]
            if len(values):
                series.append((defense, values))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    for defense, values in series:
        ax.hist(values, bins=30, alpha=0.5, label=f"{defense} (mean {values.mean():.4f})")
    ax.set_xlabel("d = ||x - x'||_2 / sqrt(n)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return Figure(f"distortion-{dataset}-{preset}", f"White-box distortion per image, {block_name(dataset, preset)}",
                  "Distribution of the C&W-wb distortion over the successful pairs of the reported budget.", encode(fig))
