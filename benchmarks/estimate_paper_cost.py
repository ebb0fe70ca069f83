"""Estimate what the paper-scale study (ResNet-56, N=1000, the paper preset's epochs) costs, from a quick study's
measured per-step times (``RESULTS_DIR/logs/steps.csv``) and a measured model-cost ratio.

Each step's measured seconds are scaled by how much more work the paper preset gives it: a training by the epoch
ratio, an attack step by N_paper / N_quick; both by the time one training batch (forward and backward, batch 128) takes
with ResNet-56 on ``--device`` over the time it takes with the quick model on this CPU at ``--threads`` (the quick
study's setting). A black-box step's proxy distillation (its seconds from the proxy's cache entry) is a training: it
is scaled by the epoch ratio and the paper proxy's (ResNet-32) batch cost over the quick proxy's, the rest of the
step by N. The cost ratios are measured, the linear scaling is the assumption: fixed costs (the KDE fit) are scaled
too, so the estimate leans high; C&W's rung count at the paper scale may differ.

    python benchmarks/estimate_paper_cost.py --study docs/runs/mnist-quick --dataset mnist [--device cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shlex
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pdm_bench.config import PRESETS, PresetName, make_plan, resolve_device
from pdm_bench.models import build_model
from pdm_bench.threat_models.black import PROXY_DEPTH

from quick_baseline import machine_line, write_doc_block

DOC = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"
SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar10-jpeg": (3, 32, 32)}


def batch_seconds(preset: str, dataset: str, device: torch.device, repeats: int,
                  depth: int | None = None) -> tuple[float, float]:
    """Seconds per training batch (forward, backward, SGD step; batch 128) and forward+backward GFLOPs per image, of
    the preset's model (``depth``: at that depth instead, e.g. the black box's proxy)."""
    plan = make_plan(preset, dataset=dataset, input_shape=SHAPES[dataset], num_classes=10)
    spec = plan.model if depth is None else dataclasses.replace(plan.model, depth=depth)
    model = build_model(spec).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(plan.batch_size, *SHAPES[dataset], device=device)
    y = torch.randint(0, 10, (plan.batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats, counter.get_total_flops() / plan.batch_size / 1e9


def measured_steps(study: Path, cache: Path) -> dict[str, tuple[float, datetime | None]]:
    """Each step's seconds and end: its latest finished run that did real work (over 30 s; a rerun that reused it is
    not); a training's from its model's epoch times instead, where the cache has them (a training resumed in pieces)."""
    found: dict[str, tuple[float, datetime | None]] = {}
    with open(study / "logs" / "steps.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["status"] == "finished" and float(row["seconds"]) > 30:
                found[row["step"]] = (float(row["seconds"]), datetime.fromisoformat(row["finished_at"]))
    for meta in sorted(cache.glob("models/*/meta.json")):
        record = json.loads(meta.read_text())
        config, history = record.get("config", {}), record.get("history", [])
        if config.get("plan", {}).get("preset") == "quick" and history and all("seconds" in e for e in history):
            found[f"train-{config['defense'].replace('_', '-')}"] = (sum(epoch["seconds"] for epoch in history), None)
    if not found:
        sys.exit(f"{study}/logs/steps.csv holds no finished step over 30 s")
    return found


def proxy_seconds(cache: Path) -> dict[str, tuple[float, datetime]]:
    """Per black-box step (``black-box-DEFENSE``), the seconds its quick-preset proxy's distillation took and when it
    ended."""
    defenses = {meta.parent.name.rsplit("-", 1)[-1]: json.loads(meta.read_text()).get("config", {}).get("defense")
                for meta in cache.glob("models/*/meta.json")}
    found = {}
    for meta in sorted(cache.glob("proxies/*/meta.json")):
        record = json.loads(meta.read_text())
        config = record.get("config", {})
        defense = defenses.get(config.get("target"))
        if defense and config.get("plan", {}).get("preset") == "quick" and "seconds" in record:
            found[f"black-box-{defense.replace('_', '-')}"] = (float(record["seconds"]),
                                                               datetime.fromisoformat(record["finished"]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="a quick study's results directory")
    parser.add_argument("--dataset", choices=sorted(SHAPES), required=True)
    parser.add_argument("--cache-dir", type=Path, help="the quick study's cache (default STUDY/cache)")
    parser.add_argument("--quick-n", type=int, default=100, help="the quick study's N")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the quick study's steps")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    quick_s, quick_gflop = batch_seconds("quick", args.dataset, torch.device("cpu"), args.repeats)
    paper_s, paper_gflop = batch_seconds("paper", args.dataset, device, args.repeats)
    ratio = paper_s / quick_s
    proxy_quick_s, _ = batch_seconds("quick", args.dataset, torch.device("cpu"), args.repeats, depth=PROXY_DEPTH["quick"])
    proxy_paper_s, _ = batch_seconds("paper", args.dataset, device, args.repeats, depth=PROXY_DEPTH["paper"])
    proxy_ratio = proxy_paper_s / proxy_quick_s
    epochs = {name: PRESETS[name].epochs_for(args.dataset) for name in (PresetName.QUICK, PresetName.PAPER)}
    epoch_ratio = epochs[PresetName.PAPER] / epochs[PresetName.QUICK]
    n_ratio = PRESETS[PresetName.PAPER].attack_samples / args.quick_n
    lines = [f"Dataset {args.dataset}; quick model {quick_gflop:.3f} GFLOP per image (forward+backward), "
             f"{quick_s * 1000:.1f} ms per batch of 128 on the CPU at {args.threads} threads; ResNet-56 "
             f"{paper_gflop:.3f} GFLOP, {paper_s * 1000:.1f} ms per batch on {machine_line(device)} "
             f"Model-cost ratio {ratio:.2f}; proxy ResNet-{PROXY_DEPTH['paper']} over ResNet-{PROXY_DEPTH['quick']} "
             f"{proxy_ratio:.2f}; epochs {epochs[PresetName.QUICK]} -> {epochs[PresetName.PAPER]}, "
             f"N {args.quick_n} -> {PRESETS[PresetName.PAPER].attack_samples}. A black-box step's factor mixes its "
             "proxy distillation (a training) and its attacks.", "",
             "| step | quick, measured (s) | work x model cost | paper scale, estimated (h) |", "| --- | ---: | ---: | ---: |"]
    total = 0.0
    cache = args.cache_dir or args.study / "cache"
    proxies = proxy_seconds(cache)
    for step, (seconds, ended) in sorted(measured_steps(args.study, cache).items()):
        proxy, proxy_ended = proxies.get(step, (0.0, None))
        inside = ended is not None and proxy_ended is not None and \
            ended - timedelta(seconds=seconds) <= proxy_ended <= ended  # else the step reused a proxy made before
        rest = seconds - proxy if inside else seconds
        scaled = proxy * epoch_ratio * proxy_ratio + rest * (epoch_ratio if step.startswith("train-") else n_ratio) * ratio
        total += scaled
        lines.append(f"| {step} | {seconds:.0f} | {scaled / seconds:.0f} | {scaled / 3600:.1f} |")
    lines.append(f"| **all steps** | | | **{total / 3600:.0f}** |")
    command = "python benchmarks/estimate_paper_cost.py " + shlex.join(sys.argv[1:])
    write_doc_block(DOC, f"estimate_paper_cost:{args.dataset}:{device.type}", command, lines)


if __name__ == "__main__":
    main()
