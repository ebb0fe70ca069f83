"""Run pdm-bench on ~40 bad inputs and write docs/BAD_INPUT.md: command, exit code, the message (one line each).

Every case must fail before any training (a fresh cache is used and must hold no model afterwards). Run by hand:
    python benchmarks/bad_input_table.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUT.md"

CASES: list[str] = [
    "train --defense pmd",
    "train --dataset mnsit",
    "train --dataset mnist",
    "train --dataset mnist --data-dir /nonexistent",
    "train --dataset folder:",
    "train --dataset folder:/nonexistent",
    "train --dataset folder:{one_class}",
    "train --preset fast",
    "train --epochs 0",
    "train --seed -1",
    "train --seed 99999999999999999999",
    "train --device cuda:abc",
    "train --device tpu",
    "train -o q=2",
    "train -o q=abc",
    "train -o nosuch=1",
    "train -o q",
    "train -o q=0.3 -o q=0.7",
    "train -o partners=everyone",
    "train --defense baseline -o q=0.5",
    "train --results-dir {file}/results",
    "run --threat gary",
    "run --threat gray --attacks fgsm-2",
    "run --threat gray --attacks cw,cw",
    "run --threat gray --attacks ,,,",
    "run --threat gray --attacks ''",
    "run --threat gray --attacks pgd",
    "run --threat gray --n-samples 5000",
    "run --threat gray --n-samples 0",
    "run --threat gray --bandwidth inf",
    "run --threat gray --bandwidth -1",
    "run --threat gray --detector kdee",
    "run --threat gray --detector-option points=5",
    "run --threat gray --detector lid --detector-option head_attack=fgsn-0.1",
    "run --threat gray --detector lid --detector-option head_images=3",
    "run --threat gray --detector mahalanobis --detector-option input_noise=-1",
    "run --threat white --attacks cw",
    "run --threat white --cw-iterations 0",
    "run --threat white --cw-learning-rate nan",
    "run --threat black --wb-confidence -1",
    "run --threat adaptive -t schedule=cosine",
    "run --threat adaptive -t max_doublings=0",
    "run --threat black --proxy-depth 7",
    "run --threat black --proxy-epochs -3",
    "run --threat gray -t nosuch=1",
    "run --threat gray --results-dir {garbage}",
    "report --results-dir /nonexistent",
    "report --results-dir {empty}",
    "paper --threats gray,nois",
    "paper --seeds 1,1",
    "paper --seed 3 --seeds 0,1",
    "paper --defenses ''",
    "paper --defenses pdm --train-only pdm",
    "paper --threats white --attacks cw",
    "paper --executor pbs",
    "paper --executor slurm --jobs 2",
    "paper --executor slurm --slurm-gpus-per-job -2",
    "paper --executor slurm --slurm-mem 0",
    "paper --executor slurm --slurm-partition nosuch",
    "paper --slurm-mem 8",
]


def prepare(root: Path) -> dict[str, str]:
    """Files some cases point at: a regular file, a one-class image folder, a foreign CSV, an empty folder."""
    from PIL import Image

    (root / "file").write_text("not a folder")
    for split in ("train", "test"):
        folder = root / "one" / split / "a"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), color=i * 100).save(folder / f"{i}.png")
    (root / "garbage").mkdir()
    (root / "garbage" / "results.csv").write_text("name,score\nx,1\n")
    (root / "empty").mkdir()
    return {"file": str(root / "file"), "one_class": str(root / "one"), "garbage": str(root / "garbage"),
            "empty": str(root / "empty")}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = prepare(root)
        env = {**os.environ, "PDM_BENCH_CACHE": str(root / "cache")}
        env.pop("PDM_BENCH_DATA", None)
        lines = ["# Bad input: one line each, no traceback", "",
                 "Made by `python benchmarks/bad_input_table.py` (each command run as `pdm-bench ...` in an empty folder with a",
                 "fresh cache; no case trains a model). Exit code 2: a usage error. The Slurm cases ran beside the single-node",
                 "cluster of `.ci/slurm_cluster.sh` (one partition, `debug`) with submitit installed.", "",
                 "| command | exit | message |", "| --- | --- | --- |"]
        failures = []
        for case in CASES:
            command = case.format(**paths)
            done = subprocess.run(f"{sys.executable} -m pdm_bench {command} --no-progress" if not command.startswith("report")
                                  else f"{sys.executable} -m pdm_bench {command}", shell=True, cwd=root, env=env,
                                  capture_output=True, text=True, timeout=300)
            message = done.stderr.strip().replace(tmp, "TMP").replace("|", "\\|")
            ok = done.returncode != 0 and len(message.splitlines()) == 1 and "Traceback" not in message
            if not ok:
                failures.append(command)
            shown = case.replace("{", "").replace("}", "").replace("|", "\\|")
            lines.append(f"| `pdm-bench {shown}` | {done.returncode} | {message if ok else 'NOT ONE LINE: ' + message[-200:]} |")
        trained = list((root / "cache" / "models").glob("*")) if (root / "cache" / "models").exists() else []
        lines += ["", f"{len(CASES)} cases; {len(failures)} not a one-line error; models trained: {len(trained)}."]
    DOC.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[-1:]), f"-> {DOC}")
    return 1 if failures or trained else 0


if __name__ == "__main__":
    sys.exit(main())
