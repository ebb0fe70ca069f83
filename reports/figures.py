"""The report's figures (matplotlib, Agg), each returned as a PNG data URI so report.html is one self-contained file.

Figure 3 (resiliency curves), Figure 2 (t-SNE of test embeddings with the Davies-Bouldin index), Figure 1b (C&W
source -> adversarial class matrix), the Eq. 4 terms per defense, and the white-box per-image distortion histograms.
"""

from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdm_bench.records import read_tsne
from pdm_bench.results import Attack
from pdm_bench.tables import RowIndex, block_name

RESILIENCY_EPS = tuple(round(0.01 * k, 2) for k in range(1, 11))
_FLOW = re.compile(r"^flow_(\d+)_(\d+)$")


@dataclass(frozen=True)
class Figure:
    """One embedded figure: what it shows and the PNG."""

    key: str
    title: str
    caption: str
    data_uri: str


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _encode(fig) -> str:  # type: ignore[no-untyped-def]
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def resiliency_figure(index: RowIndex, dataset: str, preset: str) -> Figure | None:
    """Accuracy under FGSM and BIM over eps (eps 0: clean accuracy on the same samples), one line per defense."""
    plt = _pyplot()
    curves: dict[str, dict[str, list[float]]] = {}
    for defense in index.defenses(dataset, preset, "gray"):
        runs = index.chosen_runs(dataset, preset, defense, "gray", "fgsm-0.01", "accuracy")
        if not runs:
            continue
        run = runs[0]
        clean = index.value(run, "clean", "accuracy")
        curves[defense] = {family: [clean if clean is not None else math.nan] +
                           [v if (v := index.value(run, f"{family}-{eps:g}", "accuracy")) is not None else math.nan
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
                  "eps 0 is clean accuracy on the same samples (seed of the newest run).", _encode(fig))


def tsne_figure(index: RowIndex, directory: Path, dataset: str, preset: str) -> Figure | None:
    """t-SNE of the test embeddings of each defense, titled with its Davies-Bouldin index."""
    plt = _pyplot()
    panels = []
    for defense in index.defenses(dataset, preset, "model"):
        runs = index.chosen_runs(dataset, preset, defense, "model", "embedding", "davies_bouldin")
        points = read_tsne(directory, runs[0]) if runs else None
        if points is not None:
            panels.append((defense, index.value(runs[0], "embedding", "davies_bouldin"), points))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3), squeeze=False)
    for ax, (defense, dbi, (xs, ys, labels)) in zip(axes[0], panels):
        ax.scatter(xs, ys, c=labels, cmap="tab10", s=4, vmin=0, vmax=9)
        ax.set_title(f"{defense}\nDBI {dbi:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return Figure(f"tsne-{dataset}-{preset}", f"t-SNE of test embeddings (Figure 2), {block_name(dataset, preset)}",
                  "2-d t-SNE of the pre-logits embeddings of clean test images, coloured by true class; DBI is the "
                  "Davies-Bouldin index of the embeddings themselves (lower: tighter, better separated clusters).",
                  _encode(fig))


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
    plt = _pyplot()
    classes = max((max(map(int, m.groups())) + 1 for r in index.rows if (m := _FLOW.match(r.metric))
                   and (r.dataset, r.preset) == (dataset, preset)), default=0)
    panels = []
    for defense in index.defenses(dataset, preset, "gray"):
        runs = index.chosen_runs(dataset, preset, defense, "gray", attack, "flow_total")
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
                  "adversarials that land in each class (column).", _encode(fig))


def bound_figure(index: RowIndex, dataset: str, preset: str) -> tuple[Figure | None, list[dict[str, float | str]]]:
    """The Eq. 4 terms per defense (a table's rows) and a bar chart of eta / ||J||_F."""
    plt = _pyplot()
    terms: list[dict[str, float | str]] = []
    for defense in index.defenses(dataset, preset, "model"):
        runs = index.chosen_runs(dataset, preset, defense, "model", "embedding", "margin_bound")
        if not runs:
            continue
        get = lambda metric: index.value(runs[0], "embedding", metric)  # noqa: E731
        terms.append({"defense": defense, "margin": get("embedding_margin"), "margin_mean": get("embedding_margin_mean"),
                      "jacobian": get("jacobian_frobenius"), "bound": get("margin_bound"), "dbi": get("davies_bouldin"),
                      "n": index.by_run[runs[0]][("embedding", "margin_bound")].n})
    if not terms:
        return None, terms
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.9))
    names = [str(t["defense"]) for t in terms]
    for ax, (key, label) in zip(axes, (("margin", "embedding margin eta"), ("jacobian", "mean ||J||_F"),
                                       ("bound", "eta / ||J||_F"))):
        ax.bar(names, [float(t[key]) for t in terms], color="tab:blue")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    return Figure(f"bound-{dataset}-{preset}", f"Terms of the bound (Eq. 4), {block_name(dataset, preset)}",
                  "Embedding margin eta (smallest distance between test embeddings of different classes), the mean "
                  "Frobenius norm of the embedding's Jacobian w.r.t. the input, and their ratio, the right-hand side "
                  "of ||eps|| >~ eta / ||J||.", _encode(fig)), terms


def distortion_figure(index: RowIndex, directory: Path, dataset: str, preset: str) -> Figure | None:
    """Histogram of the per-image C&W-wb distortion d of each defense (white box)."""
    plt = _pyplot()
    series = []
    for defense in index.defenses(dataset, preset, "white"):
        runs = index.chosen_runs(dataset, preset, defense, "white", Attack.CW_WB.value, "distortion")
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
                  "Distribution of the C&W-wb distortion over the successful pairs of the reported budget.", _encode(fig))
