"""Benchmark C&W-wb (``CarliniWagnerKDE``): images per second at the white box's first budget, on this machine.

For a quick-preset baseline: plain C&W (``CarliniWagnerL2``, the same budget, no density term) and C&W-wb with the
attacker's KDE at 100 and 1000 kernel points per class, each from the clean images to seeded random targets, each
as cleverhans runs it (every binary-search step restarts from the start image) and with ``warm_start`` (each step
starts from the image's best so far), on the same images. Reports images/s, the density term's cost relative to
plain C&W, the success rate (target hit; C&W-wb: and density >= tau under the attacker's KDE) and the mean
distortion d = ||x - x'||_2 / sqrt(pixels) of the successful images with its 95% interval. Prints a markdown table
and writes it into ``docs/PERFORMANCE.md`` between markers, with the command.

    python benchmarks/bench_cw_wb.py [--dataset digits|mnist] [--images 100] [--max-iter 1000] [--search-steps 5]
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


from pdm_bench.config import resolve_device
from pdm_bench.inference import embed_and_predict
from pdm_bench.threat_models.cw_kde import class_log_thresholds
from pdm_bench.threat_models.attack_specs import build_cw_attack

from quick_baseline import machine_line, write_doc_block, add_cw_wb_arguments, cw_wb_setup

DOC = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cw_wb_arguments(parser, images=100, threads=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    setup = cw_wb_setup(args, device)
    data, trained, classifier, kde = setup.data, setup.trained, setup.classifier, setup.kde
    x, targets, goal = setup.x, setup.targets, setup.goal
    budget = dict(max_iter=args.max_iter, binary_search_steps=args.search_steps, initial_const=1.0, learning_rate=5e-2,
                  batch_size=256)
    cases: list[tuple[str, object, object]] = [("plain C&W (no density term)", None, None)]
    for points in (100, 1000):
        subset = kde.subset(points, seed=0).to(device)
        cases.append((f"C&W-wb, {points} kernel points/class", subset, class_log_thresholds(subset, kde)))
    cases = [(f"{name}{', warm start' if warm else ''}", subset, log_tau, warm)  # type: ignore[misc]
             for name, subset, log_tau in cases for warm in (False, True)]
    lines = [f"Dataset {data.name}, quick-preset baseline (clean accuracy {100 * trained.test_accuracy:.2f}%), "
             f"{args.images} images, {args.max_iter} Adam steps x {args.search_steps} binary-search steps, "
             + machine_line(device), "",
             "| attack | seconds | images/s | time vs plain C&W | success | mean d (95% interval) |",
             "|---|---|---|---|---|---|"]
    plain_seconds = float("nan")
    for name, subset, log_tau, warm in cases:  # type: ignore[misc]
        attack = build_cw_attack(classifier, confidence=0.0, warm_start=warm, **budget) if subset is None else \
            build_cw_attack(classifier, kde=subset, log_tau=log_tau, confidence=0.0, warm_start=warm,  # type: ignore[arg-type]
                            **budget)
        print(f"{name}: {args.images} images ...", flush=True)
        started = time.perf_counter()
        adv = attack.generate(x, y=goal)
        seconds = time.perf_counter() - started
        plain_seconds = seconds if subset is None and not warm else plain_seconds
        embeddings, predicted = embed_and_predict(trained.model, adv, device=device)
        success = predicted.numpy() == targets
        if subset is not None:
            density = subset.log_density(embeddings.to(device), torch.as_tensor(targets, device=device))  # type: ignore[attr-defined]
            success &= (density >= log_tau[torch.as_tensor(targets)]).cpu().numpy()  # type: ignore[index]
        d = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)[success] / np.sqrt(x[0].size)
        half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        lines.append(f"| {name} | {seconds:.1f} | {args.images / seconds:.2f} | {seconds / plain_seconds:.2f}x "
                     f"| {success.mean():.3f} | {d.mean():.4f} ({d.mean() - half:.4f}-{d.mean() + half:.4f}) |")
        print(lines[-1], flush=True)
    tag = f"bench_cw_wb:{data.name}:{device.type}"
    write_doc_block(args.doc, tag, "python benchmarks/bench_cw_wb.py " + shlex.join(sys.argv[1:]), lines)


if __name__ == "__main__":
    main()
