"""Kill -9 at random moments, rerun, and compare with a clean run: rows and arrays must be identical.

For each command (train, gray, white, black, adaptive, paper on digits, small budgets), a clean run in its own
results and cache folders is timed; then, in fresh folders, the same command is started and killed with SIGKILL at a
random time in (0, clean time) as often as ``--kills`` says, and finally run to its end. The finished folders must
hold the clean run's value rows (every column but the time stamps and the seconds an attack took) and byte-identical
arrays (adversarial examples, distortions, embeddings). Writes its table into docs/FAULTS.md (block ``fault_kill``).

    OMP_NUM_THREADS=1 python benchmarks/fault_kill.py [--kills 4] [--seed 0] [--only gray,white]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from quick_baseline import write_doc_block

DOC = Path(__file__).resolve().parents[1] / "docs" / "FAULTS.md"
SMALL = ["--dataset", "digits", "--defense", "pdm", "--epochs", "3", "--no-progress"]
COMMANDS: dict[str, list[str]] = {
    "train": ["train", "--dataset", "digits", "--defense", "pdm", "--epochs", "12", "--no-progress"],
    "gray": ["run", "--threat", "gray", *SMALL, "--n-samples", "100", "--attacks", "fgsm-0.1,bim-0.1,cw,jsma",
             "--no-resiliency"],
    "white": ["run", "--threat", "white", *SMALL, "--n-samples", "20", "--cw-iterations", "50",
              "--cw-search-steps", "2"],
    "black": ["run", "--threat", "black", *SMALL, "--n-samples", "20", "--cw-iterations", "50",
              "--cw-search-steps", "2", "--proxy-epochs", "2"],
    "adaptive": ["run", "--threat", "adaptive", *SMALL, "--n-samples", "40", "--eps", "0.3", "-t", "iterations=10",
                 "-t", "restarts=1", "-t", "square_iterations=30", "-t", "weights=1", "-t", "max_doublings=1"],
    "paper": ["paper", "--dataset", "digits", "--epochs", "3", "--defenses", "baseline,pdm", "--train-only", "",
              "--threats", "gray", "--attacks", "fgsm-0.1,cw", "--no-resiliency", "--n-samples", "40", "--no-progress"],
}
IGNORED_COLUMNS = {"time"}
TIMING_METRICS = {"attack_seconds", "stage1_seconds", "proxy_seconds", "seconds", "train_seconds"}


def run(command: list[str], folder: Path, *, kill_after: float | None = None) -> tuple[int, float]:
    """Run ``pdm-bench COMMAND`` with its results and cache in ``folder``; SIGKILL it after ``kill_after`` seconds."""
    argv = [sys.executable, "-m", "pdm_bench", *command, "--cache-dir", str(folder / "cache")]
    argv += ["--results-dir", str(folder / "results")]
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        code = process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: --jobs children too
        process.wait()
        code = -9
    return code, time.perf_counter() - started


def value_rows(folder: Path) -> list[tuple[str, ...]]:
    """The results' rows without time stamps and timings, sorted (two runs may finish attacks in another order)."""
    path = folder / "results" / "results.csv"
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        keep = [c for c in reader.fieldnames or [] if c not in IGNORED_COLUMNS]
        rows = [tuple(row[c] for c in keep) for row in reader if row["metric"] not in TIMING_METRICS
                and row["metric"] != "finished"]
    return sorted(rows)


def arrays(folder: Path) -> dict[str, str]:
    """sha256 of every stored array and of every model's weights (tensor bytes: torch's zip names the temporary
    file it was written through), by path relative to the folder."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix == ".npy":
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_file() and path.name == "model.pt":
            digest = hashlib.sha256()
            for name, tensor in sorted(torch.load(path, weights_only=True)["weights"].items()):
                digest.update(name.encode())
                digest.update(tensor.cpu().contiguous().numpy().tobytes())
            found[str(path.relative_to(folder))] = digest.hexdigest()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=4, help="SIGKILLs per command before the run to the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(COMMANDS))
    parser.add_argument("--keep", default=None, help="copy the folders of a command that differs here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    lines = ["| command | clean run (s) | kills (at s) | rows | arrays | identical |", "|---|---|---|---|---|---|"]
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            command = COMMANDS[name]
            clean, faulty = Path(tmp) / f"{name}-clean", Path(tmp) / f"{name}-killed"
            clean.mkdir()
            faulty.mkdir()
            code, seconds = run(command, clean)
            if code != 0:
                raise SystemExit(f"{name}: the clean run failed with exit code {code}")
            moments = sorted(round(rng.uniform(0.05, 0.95) * seconds, 1) for _ in range(args.kills))
            for moment in moments:
                run(command, faulty, kill_after=moment)
            code, _ = run(command, faulty)
            same_rows = code == 0 and value_rows(clean) == value_rows(faulty)
            clean_arrays = arrays(clean)
            same_arrays = clean_arrays == arrays(faulty)
            total += len(moments)
            lines.append(f"| `{name}` | {seconds:.1f} | {len(moments)} ({', '.join(map(str, moments))}) | "
                         f"{len(value_rows(clean))}{'' if same_rows else ' (differ)'} | "
                         f"{len(clean_arrays)}{'' if same_arrays else ' (differ)'} | "
                         f"{'yes' if same_rows and same_arrays else 'NO'} |")
            if not (same_rows and same_arrays) and args.keep:
                shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
            print(lines[-1], flush=True)
            shutil.rmtree(clean / "cache", ignore_errors=True)
    lines.append("")
    lines.append(f"{total} kills in all. Rows compared without time stamps and timings; arrays by sha256 (models, "
                 "adversarial examples, distortions, embeddings).")
    write_doc_block(DOC, "fault_kill", " ".join(["OMP_NUM_THREADS=1 python benchmarks/fault_kill.py", *sys.argv[1:]]),
                    lines)


if __name__ == "__main__":
    main()
