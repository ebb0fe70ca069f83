"""Two identical commands started together do the work once: the second waits for the first's model and reuses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_two_identical_trainings_train_once(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "pdm_bench", "train", "--dataset", "digits", "--defense", "baseline", "--epochs", "3",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    epochs = [out.count("\nepoch ") for out in outputs]
    assert sorted(epochs) == [0, 3], outputs  # one trained all three epochs, the other none
    waited = outputs[epochs.index(0)]
    assert "Reusing cached model" in waited, waited  # (usually after "waiting for it to finish")
