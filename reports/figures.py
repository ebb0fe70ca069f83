"""The report's own figures (matplotlib, Agg): Figure 2 (t-SNE of test embeddings with the Davies-Bouldin index)
and the Eq. 4 terms per defense, from the model rows. Each threat model adds its own (``report_figures``)."""

from __future__ import annotations

from pathlib import Path

from pdm_bench.figures import Figure, encode, pyplot
from pdm_bench.records import read_tsne
from pdm_bench.results import Metric
from pdm_bench.tables import RowIndex, block_name


def tsne_figure(index: RowIndex, directory: Path, dataset: str, preset: str) -> Figure | None:
    """t-SNE of the test embeddings of each defense, titled with its Davies-Bouldin index."""
    plt = pyplot()
    panels = []
    for defense in index.defenses(dataset, preset, "model"):
        runs = index.chosen_runs(dataset, preset, defense, "model", "embedding", Metric.DAVIES_BOULDIN)
        points = read_tsne(directory, runs[0]) if runs else None
        if points is not None:
            panels.append((defense, index.value(runs[0], "embedding", Metric.DAVIES_BOULDIN), points))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3), squeeze=False)
    for ax, (defense, dbi, (xs, ys, labels)) in zip(axes[0], panels):
        points = ax.scatter(xs, ys, c=labels, cmap="tab10", s=4, vmin=0, vmax=9)
        ax.set_title(f"{defense}\nDBI {dbi:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = points.legend_elements(num=sorted(set(panels[-1][2][2])))
    fig.legend(handles, names, title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title_fontsize=8,
               markerscale=0.8)
    return Figure(f"tsne-{dataset}-{preset}", f"t-SNE of test embeddings (Figure 2), {block_name(dataset, preset)}",
                  "2-d t-SNE of the pre-logits embeddings of clean test images, coloured by true class; DBI is the "
                  "Davies-Bouldin index of the embeddings themselves (lower: tighter, better separated clusters).",
                  encode(fig))


def bound_figure(index: RowIndex, dataset: str, preset: str) -> tuple[Figure | None, list[dict[str, float | str]]]:
    """The Eq. 4 terms per defense (a table's rows) and a bar chart of eta / ||J||_F."""
    plt = pyplot()
    terms: list[dict[str, float | str]] = []
    for defense in index.defenses(dataset, preset, "model"):
        runs = index.chosen_runs(dataset, preset, defense, "model", "embedding", Metric.MARGIN_BOUND)
        if not runs:
            continue
        get = lambda metric: index.value(runs[0], "embedding", metric)  # noqa: E731
        terms.append({"defense": defense, "margin": get(Metric.EMBEDDING_MARGIN), "margin_mean": get(Metric.EMBEDDING_MARGIN_MEAN),
                      "jacobian": get(Metric.JACOBIAN_FROBENIUS), "bound": get(Metric.MARGIN_BOUND), "dbi": get(Metric.DAVIES_BOULDIN),
                      "n": index.by_run[runs[0]][("embedding", Metric.MARGIN_BOUND)].n})
    if not terms:
        return None, terms
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.9))
    names = [str(t["defense"]) for t in terms]
    panels = (("margin", "embedding margin eta", "distance in the embedding"),
              ("jacobian", "mean ||J||_F", "embedding units per input unit"),
              ("bound", "eta / ||J||_F", "input distortion (L2)"))
    for ax, (key, label, unit) in zip(axes, panels):
        ax.bar(names, [float(t[key]) for t in terms], color="tab:blue")
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=8, rotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    fig.tight_layout()
    return Figure(f"bound-{dataset}-{preset}", f"Terms of the bound (Eq. 4), {block_name(dataset, preset)}",
                  "Embedding margin eta (smallest distance between test embeddings of different classes), the mean "
                  "Frobenius norm of the embedding's Jacobian w.r.t. the input, and their ratio, the right-hand side "
                  "of ||eps|| >~ eta / ||J||.", encode(fig)), terms
