"""Benchmark the Mahalanobis and LID detectors' fit and score against straightforward scikit-learn / numpy versions
on the same embeddings (a quick-preset baseline's, or Gaussian blobs), and check that they agree. Prints a markdown
table and writes it into ``docs/PERFORMANCE.md`` between markers, with the command.

    python benchmarks/bench_detectors.py [--dataset digits|mnist] [--queries 2000] [--data-dir DIR]
                                         [--threads N]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from pdm_bench.config import resolve_device
from pdm_bench.detectors import reference_embeddings
from pdm_bench.embedding_detectors import LIDDetector, MahalanobisDetector
from pdm_bench.inference import embed_and_predict

from quick_baseline import machine_line, write_doc_block, quick_baseline

DOC = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"


def timed(function: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def sklearn_mahalanobis(x: np.ndarray, labels: np.ndarray, queries: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    covariance = EmpiricalCovariance(assume_centered=True).fit(x - means[labels])
    scores = np.empty(len(queries))
    for c in classes:  # vectorised per predicted class
        rows = predicted == c
        scores[rows] = -covariance.mahalanobis(queries[rows] - means[c])
    return scores


def numpy_lid(references: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    distances, _ = NearestNeighbors(n_neighbors=k).fit(references).kneighbors(queries)
    return 1.0 / np.mean(np.log(distances / distances[:, -1:]), axis=1)  # minus LID, as the score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, kind, default in (("--dataset", str, "digits"), ("--queries", int, 2000), ("--data-dir", str, None),
                                ("--cache-dir", str, None), ("--threads", int, None)):
        parser.add_argument(name, type=kind, default=default)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("cpu")
    data, trained, _ = quick_baseline(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir, device=device)
    queries_t, predicted_t = embed_and_predict(trained.model, data.x_test[: args.queries], device=device)
    queries, predicted = queries_t.numpy(), predicted_t.numpy()
    lines = [f"Dataset {data.name}, quick-preset baseline's embeddings ({queries.shape[1]} dimensions), "
             f"{args.queries} test images scored, " + machine_line(device), "",
             "| detector | reference points | ours: fit s | ours: score s | scikit-learn/numpy: fit+score s | "
             "largest difference |", "|---|---|---|---|---|---|"]
    for detector, reference in ((MahalanobisDetector(), "sklearn EmpiricalCovariance"),
                                (LIDDetector(), "sklearn NearestNeighbors + numpy")):
        x_t, labels_t = reference_embeddings(trained.model, data, per_class=detector.reference_points, device=device)
        x, labels = x_t.numpy(), labels_t.numpy()
        _, fit_seconds = timed(lambda: detector.fit(x_t, labels_t, num_classes=data.num_classes, seed=0))
        ours, score_seconds = timed(lambda: detector.score(queries_t, predicted_t).numpy())
        if isinstance(detector, MahalanobisDetector):
            theirs, their_seconds = timed(lambda: sklearn_mahalanobis(x, labels, queries, predicted))
        else:
            theirs, their_seconds = timed(lambda: numpy_lid(x, queries, detector.k))
        gap = float(np.max(np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))))
        lines.append(f"| {detector.name} ({reference}) | {len(x)} | {fit_seconds:.3f} | {score_seconds:.3f} | "
                     f"{their_seconds:.3f} | {gap:.1e} (relative) |")
        print(lines[-1], flush=True)
    tag = f"bench_detectors:{data.name}"
    write_doc_block(args.doc, tag, "python benchmarks/bench_detectors.py " + shlex.join(sys.argv[1:]), lines)


if __name__ == "__main__":
    main()
