"""Run pdm-bench on every bad input of benchmarks/bad_input_cases.py and write docs/BAD_INPUT.md: the case, exit code
(or exception), GOOD or BAD, and the message.

GOOD: a CLI case exits non-zero with one line on stderr and no traceback; a Python case raises ``UserError`` with a
one-line message; and no case trains a model (a fresh cache is used and must hold no model afterwards). Run by hand:
    python benchmarks/bad_input_table.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_input_cases import CLI_CASES, PYTHON_CASES, prepare_caches, prepare_files, prepare_plugins  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUT.md"
WORK_COMMANDS = ("train", "run", "paper")  # run with --no-progress


def models_in(cache: Path) -> int:
    return len(list((cache / "models").glob("*/model.pt"))) if (cache / "models").exists() else 0


def shown(case: str) -> str:
    """``VAR=VALUE pdm-bench ARGS`` with the made files as ``name``."""
    env, command = re.fullmatch(r"((?:[A-Z_]+=\S*\s+)*)(.*)", case).groups()  # type: ignore[union-attr]
    return f"{env}pdm-bench {command}".replace("{", "").replace("}", "")


def run_cli(case: str, paths: dict[str, str], root: Path, env: dict[str, str]) -> tuple[str, str, bool]:
    """(exit code, message, GOOD) of one CLI case."""
    words = shlex.split(case.format(**paths))
    extra = {}
    while words and "=" in words[0] and words[0].split("=")[0].isupper():
        name, _, value = words.pop(0).partition("=")
        extra[name] = value
    args = [*words, "--no-progress"] if words and words[0] in WORK_COMMANDS else words
    done = subprocess.run([sys.executable, "-m", "pdm_bench", *args], cwd=root / "work", env={**env, **extra},
                          capture_output=True, text=True, timeout=600)
    message = done.stderr.strip()
    good = done.returncode != 0 and len(message.splitlines()) == 1 and "Traceback" not in message
    return str(done.returncode), message, good


def run_python(paths: dict[str, str], out: Path) -> None:
    """Every Python case in this process (``--python``): one JSON line each, to ``out``."""
    import torch

    import pdm_bench as pb
    from pdm_bench import api
    from pdm_bench.errors import UserError

    scope = {"pb": pb, "api": api, "torch": torch, "T": object.__new__(pb.Trained), "P": paths}
    with open(out, "w") as results:
        for _, case in PYTHON_CASES:
            try:
                eval(case, scope)  # noqa: S307
                outcome, message, good = "returned", "no error", False
            except UserError as error:
                outcome, message = "UserError", str(error)
                good = len(message.splitlines()) == 1 and bool(message.strip())
            except BaseException as error:  # noqa: BLE001 - what the table is for
                outcome, message, good = type(error).__name__, str(error)[-200:], False
            results.write(json.dumps({"case": case, "outcome": outcome, "message": message, "good": good}) + "\n")


def markdown(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " / ")


def main() -> int:
    if sys.argv[1:2] == ["--python"]:
        run_python(json.loads(sys.argv[2]), Path(sys.argv[3]))
        return 0
    only = set(Path(sys.argv[2]).read_text().splitlines()) if sys.argv[1:2] == ["--only"] else set()  # a rerun of some
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "work").mkdir()
        paths = {**prepare_files(root), **prepare_plugins(root / "site"), **prepare_caches(root)}
        env = {**os.environ, "PDM_BENCH_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
        env.pop("PDM_BENCH_DATA", None)
        rows: list[tuple[str, str, str, bool, str]] = []  # section, case, exit, good, message
        for sec, case in CLI_CASES:
            if only and case not in only:
                continue
            before = models_in(root / "cache")
            code, message, good = run_cli(case, paths, root, env)
            good = good and models_in(root / "cache") == before
            rows.append((sec, f"`{shown(case)}`", code, good, message.replace(tmp, "TMP")))
            print(f"{'GOOD' if good else 'BAD '} {case} -> {code}: {message[-160:]}", flush=True)
        subprocess.run([sys.executable, __file__, "--python", json.dumps(paths), str(root / "python.jsonl")],
                       cwd=root / "work", env=env, check=True, timeout=1200, capture_output=True)
        results = [json.loads(line) for line in (root / "python.jsonl").read_text().splitlines()]
        for (sec, case), result in zip(PYTHON_CASES, results):
            rows.append((f"Python: {sec}", f"`{case}`", result["outcome"], result["good"],
                         result["message"].replace(tmp, "TMP")))
        trained = models_in(root / "cache")
    if only:
        print("(--only: docs/BAD_INPUT.md left as it was)")
    else:
        write_doc(rows, trained, time.perf_counter() - started)
    bad = [row for row in rows if not row[3]]
    for row in bad:
        print(f"BAD: {row[1]} -> {row[2]}: {row[4][-300:]}")
    print(f"{len(rows)} cases: {len(rows) - len(bad)} GOOD, {len(bad)} BAD; models trained: {trained} -> {DOC}")
    return 1 if bad or trained else 0


def write_doc(rows: list[tuple[str, str, str, bool, str]], trained: int, seconds: float) -> None:
    good = sum(row[3] for row in rows)
    lines = ["# Bad input: one line each, no traceback", "",
             "Made by `python benchmarks/bad_input_table.py` from the cases in `benchmarks/bad_input_cases.py`: each CLI",
             "case run as `pdm-bench ...` (train, run and paper with `--no-progress`) in an empty folder with a fresh cache",
             "and `OMP_NUM_THREADS=1`; each Python case called in one process, with `pb` = `pdm_bench`, `T` an untrained",
             "`Trained` stand-in and `TMP/...` files made for the case. Exit code 2: a usage error (1: a file that cannot",
             "be written). GOOD: a non-zero exit with one line on stderr and no traceback, or a one-line `UserError`; and",
             "no model trained. This run: no GPU; submitit and the Slurm client installed. `pdm-bench list` beside",
             "the plugin that calls `sys.exit()` lists it as BROKEN and exits 0 (tests/test_bad_input.py), so it is no",
             "row here.", "",
             f"**{len(rows)} cases: {good} GOOD, {len(rows) - good} BAD; models trained: {trained}** ({seconds:.0f} s).",
             ""]
    current = None
    for sec, case, code, ok, message in rows:
        if sec != current:
            lines += ["", f"## {sec}", "", "| case | exit | verdict | message |", "| --- | --- | --- | --- |"]
            current = sec
        lines.append(f"| {markdown(case)} | {code} | {'GOOD' if ok else 'BAD'} | {markdown(message)} |")
    DOC.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
