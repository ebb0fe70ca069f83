"""Benchmark our torch C&W and JSMA against ART's originals, in one run, on a trained quick-preset baseline
(the fast path: an ART PyTorchClassifier) and on a scikit-learn logistic regression (the general path, through the
estimator's own predict and class_gradient).

For each attack: images per second for ours and ART's on the same images, the speed ratio, the success rate and
median L2 of each, and whether the images agree (the ports of ART's algorithms should give ART's images).
Prints a markdown table and writes it into ``docs/PERFORMANCE.md`` (between markers, with the command).

    python benchmarks/bench_attacks.py [--dataset digits|mnist] [--cw-images 200] [--hc-images 10]
                                        [--jsma-images 200] [--sklearn-images 200] [--cache-dir DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from art.attacks.evasion import CarliniL2Method, SaliencyMapMethod

from pdm_bench.threat_models.attacks import CarliniWagnerL2, CarliniWagnerL2LineSearch
from pdm_bench.threat_models.jsma import SaliencyMapTorch

from quick_baseline import quick_baseline

DOC = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"
Attack = Callable[[np.ndarray, np.ndarray], np.ndarray]


def measure(classifier: object, x: np.ndarray, y: np.ndarray, goal: np.ndarray, attack: Attack,
            targeted: bool) -> dict[str, float]:
    x = x.reshape(len(x), *classifier.input_shape)  # type: ignore[attr-defined]
    started = time.perf_counter()
    adv = attack(x, np.eye(10)[goal])
    seconds = time.perf_counter() - started
    clean = classifier.predict(x).argmax(1) == y  # type: ignore[attr-defined]
    pred = classifier.predict(adv).argmax(1)  # type: ignore[attr-defined]
    fooled = clean & ((pred == goal) if targeted else (pred != y))
    l2 = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)[fooled]
    return {"seconds": seconds, "rate": len(x) / seconds, "success": fooled.sum() / max(clean.sum(), 1),
            "median_l2": float(np.median(l2)) if len(l2) else float("nan"), "adv": adv}  # type: ignore[dict-item]


def sklearn_classifier(data: object) -> object:
    """A logistic regression on the flattened training images, behind ART's SklearnClassifier (no torch model)."""
    from art.estimators.classification import SklearnClassifier
    from sklearn.linear_model import LogisticRegression

    x = data.x_train.reshape(len(data.x_train), -1)  # type: ignore[attr-defined]
    model = LogisticRegression(max_iter=1000).fit(x, data.y_train)  # type: ignore[attr-defined]
    return SklearnClassifier(model, clip_values=(0.0, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--cw-images", type=int, default=200)
    parser.add_argument("--hc-images", type=int, default=10)
    parser.add_argument("--jsma-images", type=int, default=200)
    parser.add_argument("--sklearn-images", type=int, default=200)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data, trained, classifier = quick_baseline(args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir,
                                               device=device)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.y_test))
    cw = dict(confidence=0.0, binary_search_steps=9, max_iter=10, batch_size=128)
    hc = dict(confidence=10.0, binary_search_steps=9, max_iter=1000, batch_size=128)
    quiet = dict(verbose=False)  # and cw-hc's learning rate (cleverhans's), as the gray box runs it
    cases = [
        ("C&W (conf 0, 9 bss, 10 it), line search", args.cw_images, False,
         lambda x, g: CarliniWagnerL2LineSearch(classifier, **cw, **quiet).generate(x, g),
         lambda x, g: CarliniL2Method(classifier, verbose=False, **cw).generate(x, g)),
        ("C&W-hc (conf 10, 9 bss, 1000 it), Adam", args.hc_images, False,
         lambda x, g: CarliniWagnerL2(classifier, learning_rate=5e-3, **hc, **quiet).generate(x, g),
         lambda x, g: CarliniL2Method(classifier, verbose=False, **hc).generate(x, g)),
        ("JSMA (theta 1, gamma 0.1), random targets", args.jsma_images, True,
         lambda x, g: SaliencyMapTorch(classifier, theta=1.0, gamma=0.1, batch_size=128, **quiet).generate(x, g),
         lambda x, g: SaliencyMapMethod(classifier, theta=1.0, gamma=0.1, batch_size=128, verbose=False).generate(x, g)),
    ]
    sklearn = sklearn_classifier(data)
    cw_sk = dict(cw, initial_const=1.0)  # probabilities, not logits: a larger constant so that both flip images
    cases += [
        ("scikit-learn: C&W line search (general path)", args.sklearn_images, False,
         lambda x, g: CarliniWagnerL2LineSearch(sklearn, **cw_sk, **quiet).generate(x, g),
         lambda x, g: CarliniL2Method(sklearn, verbose=False, **cw_sk).generate(x, g), sklearn),
        ("scikit-learn: JSMA (general path)", args.sklearn_images, True,
         lambda x, g: SaliencyMapTorch(sklearn, theta=1.0, gamma=0.1, batch_size=128, **quiet).generate(x, g),
         lambda x, g: SaliencyMapMethod(sklearn, theta=1.0, gamma=0.1, batch_size=128, verbose=False).generate(x, g),
         sklearn),
    ]
    lines = [f"Dataset {data.name}, quick-preset baseline (clean accuracy {100 * trained.test_accuracy:.2f}%), "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads.", "",
             "| attack | images | ours img/s | ART img/s | speed-up | ours success | ART success "
             "| ours median L2 | ART median L2 | identical images | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, n, targeted, ours, arts, *on in cases:
        index = order[:n]
        x, y = data.x_test[index], data.y_test[index]
        goal = (y + rng.integers(1, data.num_classes, size=n)) % data.num_classes if targeted else y
        print(f"{name}: {n} images ...", flush=True)
        target = on[0] if on else classifier
        a = measure(target, x, y, goal, ours, targeted)
        b = measure(target, x, y, goal, arts, targeted)
        diff = np.abs(a["adv"] - b["adv"]).reshape(n, -1).max(axis=1)  # type: ignore[operator]
        lines.append(f"| {name} | {n} | {a['rate']:.2f} | {b['rate']:.2f} | {a['rate'] / b['rate']:.1f}x "
                     f"| {a['success']:.3f} | {b['success']:.3f} | {a['median_l2']:.3f} | {b['median_l2']:.3f} "
                     f"| {np.mean(diff == 0):.2f} | {diff.max():.1e} |")
        print(lines[-1], flush=True)
    command = "python benchmarks/bench_attacks.py " + shlex.join(sys.argv[1:])
    block = "\n".join([f"<!-- bench_attacks:{data.name} -->", f"`{command.strip()}`", "", *lines,
                       f"<!-- /bench_attacks:{data.name} -->"])
    print(block)
    text = args.doc.read_text() if args.doc.exists() else "# Performance\n"
    pattern = re.compile(rf"<!-- bench_attacks:{re.escape(data.name)} -->.*?<!-- /bench_attacks:{re.escape(data.name)} -->",
                         re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text)


if __name__ == "__main__":
    main()
