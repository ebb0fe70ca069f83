"""Benchmark our PGD (``DetectorPGD``) against ART's ``ProjectedGradientDescent`` on the same quick-preset baseline,
the same images, budget, steps and loss (ART's: cross-entropy), and the adaptive portfolio's PGD modes against the
KDE, with constant and with APGD steps: images per second and the share of images fooled (and, against the detector,
evading it at 5% false positives).

Ours stops computing an image once it succeeds; ART's runs every step of every image. Prints a markdown table and
writes it into ``docs/PERFORMANCE.md`` between markers, with the command.

    python benchmarks/bench_pgd.py [--dataset digits|mnist] [--images 200] [--eps 0.3] [--steps 100]
                                   [--data-dir DIR] [--cache-dir DIR] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from art.attacks.evasion import ProjectedGradientDescent

from pdm_bench.config import resolve_device
from pdm_bench.detectors import KDEDetector, fit_detector
from pdm_bench.evaluation import calibration_indices
from pdm_bench.inference import embed_and_predict
from pdm_bench.metrics import rejection_threshold
from pdm_bench.threat_models.pgd import DetectorPGD

from quick_baseline import machine_line, write_doc_block, quick_baseline

DOC = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, kind, default in (("--dataset", str, "digits"), ("--images", int, 200), ("--eps", float, 0.3),
                                ("--steps", int, 100), ("--data-dir", str, None), ("--cache-dir", str, None),
                                ("--threads", int, None), ("--device", str, "auto")):
        parser.add_argument(name, type=kind, default=default)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data, trained, classifier = quick_baseline(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
                                               device=device)
    detector = fit_detector(KDEDetector(), trained.model, data, device=device)
    index = np.sort(np.random.default_rng(0).choice(len(data.y_test), args.images, replace=False))
    x, y = data.x_test[index], data.y_test[index]
    calibration = data.x_test[calibration_indices(len(data.y_test), index, 0)]
    embeddings, predicted = embed_and_predict(trained.model, calibration, device=device)
    clean_scores = detector.score(embeddings, predicted).numpy()
    threshold, scale = rejection_threshold(clean_scores, 0.05), float(np.std(clean_scores))
    step = 2.5 * args.eps / args.steps
    budget = dict(norm=np.inf, eps=args.eps, eps_step=step, max_iter=args.steps, batch_size=256, verbose=False)
    cases = [("ART ProjectedGradientDescent (cross-entropy)", ProjectedGradientDescent(classifier, **budget)),
             ("ours, mode classifier, cross-entropy", DetectorPGD(classifier, **budget, loss="cross_entropy")),
             ("ours, mode classifier, C&W margin", DetectorPGD(classifier, **budget))]
    cases += [(f"ours, mode {mode} (against the KDE){'' if schedule == 'constant' else ', APGD steps'}",
               DetectorPGD(classifier, **budget, mode=mode, detector=detector.fitted(), threshold=threshold,
                           score_scale=scale, schedule=schedule))
              for schedule in ("constant", "apgd") for mode in ("combined", "orthogonal", "selective")]
    lines = [f"Dataset {data.name}, quick-preset baseline (clean accuracy {100 * trained.test_accuracy:.2f}%), "
             f"{args.images} images, L-inf eps {args.eps:g}, {args.steps} steps of {step:.4g}, no random start, "
             + machine_line(device), "",
             "| attack | seconds | images/s | fooled | evades the KDE at 5% FPR |", "|---|---|---|---|---|"]
    for name, attack in cases:
        print(f"{name}: {args.images} images ...", flush=True)
        started = time.perf_counter()
        adv = attack.generate(x, y)
        seconds = time.perf_counter() - started
        embeddings, predicted = embed_and_predict(trained.model, adv, device=device)
        fooled = predicted.numpy() != y
        evades = fooled & (detector.score(embeddings, predicted).numpy() >= threshold)
        lines.append(f"| {name} | {seconds:.1f} | {args.images / seconds:.1f} | {fooled.mean():.3f} | {evades.mean():.3f} |")
        print(lines[-1], flush=True)
    tag = f"bench_pgd:{data.name}:{device.type}"
    write_doc_block(args.doc, tag, "python benchmarks/bench_pgd.py " + shlex.join(sys.argv[1:]), lines)


if __name__ == "__main__":
    main()
