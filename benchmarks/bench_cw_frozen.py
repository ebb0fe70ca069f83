"""Time C&W-hc on the attack's frozen copy of the model (BatchNorm folded, channels-last on the CPU: the default)
against a plain copy.

Same images, same trained quick-preset baseline, one process, runs interleaved (layout A, B, A, B, ...) so that a
busy machine slows both alike. Prints seconds per image for each, the speed-up, and how far the two results differ
(success, mean L2, max pixel difference: only float rounding should separate them).

    python benchmarks/bench_cw_frozen.py [--dataset mnist] [--data-dir DIR] [--images 20] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from pdm_bench.threat_models import attacks, estimator_paths

from quick_baseline import quick_baseline


def plain_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data, trained, classifier = quick_baseline(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
                                               device=device)
    index = np.random.default_rng(0).permutation(len(data.y_test))[:args.images]
    x, y = data.x_test[index], data.y_test[index]
    layouts = {"frozen copy": estimator_paths.frozen_copy, "plain copy": plain_copy}
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, make_copy in layouts.items():
            estimator_paths.frozen_copy = make_copy  # type: ignore[assignment]
            attack = attacks.CarliniWagnerL2(classifier, confidence=10.0, binary_search_steps=9, max_iter=1000,
                                             batch_size=128, learning_rate=5e-3, verbose=False)
            started = time.perf_counter()
            outputs[name] = attack.generate(x, np.eye(data.num_classes)[y])
            seconds[name].append(time.perf_counter() - started)
    estimator_paths.frozen_copy = layouts["frozen copy"]  # type: ignore[assignment]
    for name, adv in outputs.items():
        fooled = classifier.predict(adv).argmax(1) != y
        l2 = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)[fooled]
        best = min(seconds[name])
        print(f"{name:>13}: {best / len(x):.3f} s/image (best of {args.repeats}: {best:.1f} s), success "
              f"{fooled.mean():.3f}, mean L2 {l2.mean():.4f}")
    fast, slow = min(seconds["frozen copy"]), min(seconds["plain copy"])
    diff = np.abs(outputs["frozen copy"] - outputs["plain copy"]).max()
    print(f"speed-up {slow / fast:.2f}x; max pixel difference {diff:.1e}; {data.name}, {len(x)} images, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")


if __name__ == "__main__":
    main()
