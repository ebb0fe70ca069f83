"""Where C&W-wb's time goes (issue 17), on a quick-preset baseline, stage 1 (targeted C&W) then C&W-wb from it.

Per Adam step: the model's forward pass, the density term (the attacker's KDE), the backward pass and the rest
(bookkeeping: Adam, the success test, early abort). Per binary-search step: image-steps computed, the share spent
on images that had already succeeded earlier in that search step (refining the distortion only), Adam steps in
which every image still running had already succeeded, and images stopped by early abort. Prints markdown.

    python benchmarks/profile_cw_wb.py [--dataset digits|mnist] [--images 50] [--max-iter 1000]
                                       [--search-steps 5] [--data-dir DIR] [--cache-dir DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from pdm_bench.inference import predict_logits
from pdm_bench.threat_models.attack_specs import CW_ADAM_DEFAULTS
from pdm_bench.threat_models.attacks import CarliniWagnerL2
from pdm_bench.threat_models.cw_kde import CarliniWagnerKDE, class_log_thresholds

from quick_baseline import add_cw_wb_arguments, cw_wb_setup

SECONDS: dict[str, float] = defaultdict(float)


@contextmanager
def clock(key: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        SECONDS[key] += time.perf_counter() - started


def timed(key: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with clock(key):
            return function(*args, **kwargs)
    return wrapper


class Counts:
    """What ``observe`` sees, per binary-search step."""

    def __init__(self) -> None:
        self.image_steps: dict[int, int] = defaultdict(int)
        self.after_success: dict[int, int] = defaultdict(int)
        self.all_done_steps: dict[int, int] = defaultdict(int)
        self.steps: dict[int, int] = defaultdict(int)
        self.aborted: dict[int, int] = defaultdict(int)

    def observe(self, search_step: int, running: torch.Tensor, going_on: torch.Tensor, succeeded: torch.Tensor) -> None:
        self.steps[search_step] += 1
        self.image_steps[search_step] += len(running)
        done = int(succeeded.sum())
        self.after_success[search_step] += done
        self.all_done_steps[search_step] += int(done == len(running))
        self.aborted[search_step] += int((~going_on).sum())


def profiled(base: type) -> type:
    class Profiled(base):  # type: ignore[valid-type, misc]
        counts = Counts()

        def penalty(self, x_adv: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with clock("forward (model, density term included)"):
                return super().penalty(x_adv, labels)

        def observe(self, *args: Any) -> None:
            self.counts.observe(*args)

    return Profiled


def run(name: str, attack: Any, x: np.ndarray, goal: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, list[str]]:
    SECONDS.clear()
    grad = torch.autograd.grad
    torch.autograd.grad = timed("backward", grad)
    try:
        started = time.perf_counter()
        adv = attack.generate(x, y=goal, **kwargs)
        total = time.perf_counter() - started
    finally:
        torch.autograd.grad = grad
    forward = SECONDS["forward (model, density term included)"]
    density = SECONDS["density term"]
    parts = {"model forward": forward - density, "density term (forward)": density, "backward": SECONDS["backward"]}
    parts["bookkeeping (Adam, success, abort)"] = total - sum(parts.values())
    lines = [f"**{name}**: {total:.1f} s for {len(x)} images", "", "| part | seconds | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {100 * v / total:.0f}% |" for k, v in parts.items()]
    c = attack.counts
    lines += ["", "| search step | Adam steps | image-steps | after that image's success | steps with all done "
              "| early aborts |", "|---|---|---|---|---|---|"]
    for step in sorted(c.steps):
        lines.append(f"| {step + 1} | {c.steps[step]} | {c.image_steps[step]} "
                     f"| {100 * c.after_success[step] / max(c.image_steps[step], 1):.0f}% | {c.all_done_steps[step]} "
                     f"| {c.aborted[step]} |")
    return adv, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cw_wb_arguments(parser, images=50, threads=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    setup = cw_wb_setup(args, device)
    data, trained, classifier, kde = setup.data, setup.trained, setup.classifier, setup.kde
    x, targets, goal = setup.x, setup.targets, setup.goal
    budget = {**CW_ADAM_DEFAULTS, "max_iter": args.max_iter, "initial_const": 1.0, "learning_rate": 5e-2,
              "batch_size": 256}  # the white box's first rung
    stage1 = profiled(CarliniWagnerL2)(classifier, confidence=5.0, targeted=True,
                                       **{**budget, "binary_search_steps": min(3, args.search_steps)})
    start, lines = run("stage 1: targeted C&W, confidence 5", stage1, x, goal)
    subset = kde.subset(100, seed=0).to(device)
    wb = profiled(CarliniWagnerKDE)(classifier, kde=subset, log_tau=class_log_thresholds(subset, kde),
                                     confidence=0.0, **{**budget, "binary_search_steps": args.search_steps})
    wb.kde.log_density = timed("density term", wb.kde.log_density)  # the attack's own copy of the KDE
    adv, more = run("stage 2: C&W-wb, 100 kernel points per class", wb, x, goal, x_init=start)
    hit = predict_logits(trained.model, adv, device=device).argmax(1).numpy() == targets
    print(f"Dataset {data.name}, quick baseline, {args.images} images, {args.max_iter} Adam steps x "
          f"{args.search_steps} search steps (stage 1: {min(3, args.search_steps)}), {args.threads} thread(s), "
          f"torch {torch.__version__}; C&W-wb target hit {hit.mean():.3f}\n")
    print("\n".join(lines + [""] + more))


if __name__ == "__main__":
    main()
