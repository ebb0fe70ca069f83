"""Time C&W-hc with the attack's model in channels-last layout (the default on the CPU) against the plain layout.

Same images, same trained quick-preset baseline, one process, runs interleaved (layout A, B, A, B, ...) so that a
busy machine slows both alike. Prints seconds per image for each, the speed-up, and how far the two results differ
(success, mean L2, max pixel difference: only float rounding should separate them).

    python benchmarks/bench_cw_layout.py [--dataset mnist] [--data-dir DIR] [--images 20] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.config import make_plan, resolve_cache_dir
from pdm_bench.data import load_dataset
from pdm_bench.defenses.baseline import Baseline
from pdm_bench.threat_models import attacks
from pdm_bench.training import train_or_load


def plain_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return attacks.copy.deepcopy(model).eval().requires_grad_(False)


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
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    plan = make_plan("quick", dataset=data.name, input_shape=data.input_shape, num_classes=data.num_classes)
    trained = train_or_load(dataset=data, defense=Baseline(), plan=plan, cache_dir=resolve_cache_dir(args.cache_dir),
                            device=device, progress=False, log=lambda _: None)
    classifier = to_art_classifier(trained.model, input_shape=data.input_shape, nb_classes=data.num_classes,
                                   device=device)
    index = np.random.default_rng(0).permutation(len(data.y_test))[:args.images]
    x, y = data.x_test[index], data.y_test[index]
    layouts = {"channels-last": attacks.frozen_copy, "plain": plain_copy}
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, make_copy in layouts.items():
            attacks.frozen_copy = make_copy  # type: ignore[assignment]
            attack = attacks.CarliniWagnerL2(classifier, confidence=10.0, binary_search_steps=9, max_iter=1000,
                                             batch_size=128)
            started = time.perf_counter()
            outputs[name] = attack.generate(x, np.eye(data.num_classes)[y])
            seconds[name].append(time.perf_counter() - started)
    attacks.frozen_copy = layouts["channels-last"]  # type: ignore[assignment]
    for name, adv in outputs.items():
        fooled = classifier.predict(adv).argmax(1) != y
        l2 = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)[fooled]
        best = min(seconds[name])
        print(f"{name:>13}: {best / len(x):.3f} s/image (best of {args.repeats}: {best:.1f} s), success "
              f"{fooled.mean():.3f}, mean L2 {l2.mean():.4f}")
    fast, slow = min(seconds["channels-last"]), min(seconds["plain"])
    diff = np.abs(outputs["channels-last"] - outputs["plain"]).max()
    print(f"speed-up {slow / fast:.2f}x; max pixel difference {diff:.1e}; {data.name}, {len(x)} images, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")


if __name__ == "__main__":
    main()
