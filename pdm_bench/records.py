"""What a run leaves in its results directory besides the threat models' rows, so a report needs nothing else:

- per trained model (rows with threat ``model``, run id = the model's cache key): clean accuracy on the whole test
  set (Table 1) and the embedding's geometry (Eq. 4 terms, Davies-Bouldin index), with the t-SNE coordinates in
  ``RESULTS_DIR/embeddings/<key>.csv`` (Figure 2);
- per run, ``RESULTS_DIR/runs/<run id>.json``: how it was made (command, package versions, device, git commit).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pdm_bench.data import Dataset
from pdm_bench.errors import UserError, one_line
from pdm_bench.results import Metric, ResultRow, ResultsStore, Threat, now
from pdm_bench.storage import atomic_write_text
from pdm_bench.training import TrainedModel

MODEL_THREAT = Threat.MODEL.value
PACKAGES = ("pdm-bench", "torch", "adversarial-robustness-toolbox", "numpy", "scikit-learn", "jinja2", "matplotlib")
GEOMETRY_METRICS = ("davies_bouldin", "embedding_margin", "embedding_margin_mean", "jacobian_frobenius", "margin_bound")


def model_row(data: Dataset, trained: TrainedModel, attack: str, metric: str, value: float, n: int) -> ResultRow:
    plan = trained.plan
    return ResultRow(data.name, plan.preset, plan.seed, trained.defense.name, MODEL_THREAT, attack, metric, float(value),
                     int(n), trained.key, now())


def record_model(store: ResultsStore, data: Dataset, trained: TrainedModel, *, device: torch.device,
                 geometry: bool = True, points: int = 1000, log: Any = print, progress: bool = False) -> None:
    """Clean test accuracy and (once per model) the embedding geometry, as rows; t-SNE to ``embeddings/``."""
    if not store.finished(trained.key, "clean", legacy=("clean", Metric.TEST_ACCURACY)):
        store.append([model_row(data, trained, "clean", Metric.TEST_ACCURACY, trained.test_accuracy, len(data.y_test))],
                     completes="clean", legacy=("clean", Metric.TEST_ACCURACY))
    if geometry and not store.finished(trained.key, "embedding", legacy=("embedding", Metric.MARGIN_BOUND)):
        from pdm_bench.analysis import measure_geometry

        started = time.perf_counter()
        g = measure_geometry(trained.model, data.x_test, data.y_test, device=device, seed=trained.plan.seed, points=points,
                             progress=progress)
        if g.tsne is not None:
            write_tsne(store.directory, trained.key, g.tsne, g.labels)
        values = {"davies_bouldin": g.davies_bouldin, "embedding_margin": g.margin, "embedding_margin_mean": g.margin_mean,
                  "jacobian_frobenius": g.jacobian_frobenius, "margin_bound": g.bound}
        store.append([model_row(data, trained, "embedding", k, v, g.n) for k, v in values.items()],
                     completes="embedding", legacy=("embedding", Metric.MARGIN_BOUND))
        log(f"Embedding geometry ({g.n} test images, {time.perf_counter() - started:.1f} s): Davies-Bouldin "
            f"{g.davies_bouldin:.3f}, margin eta {g.margin:.4g}, mean ||J||_F {g.jacobian_frobenius:.4g}, "
            f"eta/||J|| {g.bound:.4g}")


def tsne_path(directory: Path, key: str) -> Path:
    return directory / "embeddings" / f"{key}.csv"


def write_tsne(directory: Path, key: str, coords: Any, labels: Any) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("x", "y", "label"))
    writer.writerows((f"{a:.5g}", f"{b:.5g}", int(c)) for (a, b), c in zip(coords.tolist(), labels.tolist()))
    atomic_write_text(tsne_path(directory, key), buffer.getvalue())


def read_tsne(directory: Path, key: str) -> tuple[list[float], list[float], list[int]] | None:
    """The t-SNE coordinates of a model, or None when absent or unreadable."""
    try:
        with open(tsne_path(directory, key), newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [float(r["x"]) for r in rows], [float(r["y"]) for r in rows], [int(r["label"]) for r in rows]
    except (OSError, KeyError, ValueError):
        return None


def git_commit() -> str:
    """The git commit of the pdm-bench checkout this code runs from (``+dirty`` with local changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return "unknown (not a git checkout)"
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (git failed)"
    return head + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _distributions_pointing_at(module: str) -> list[str]:
    """Distributions whose pdm-bench entry points name ``module`` (for installs that list no top-level modules)."""
    found = []
    for dist in metadata.distributions():
        if any(p.group.startswith("pdm_bench.") and p.value.split(":")[0].split(".")[0] == module for p in dist.entry_points):
            found.append(dist.metadata["Name"])
    return found


def component_version(component: object) -> str:
    """The distribution and version a class (a defense, a plugin's) was installed from, e.g. ``pdm-bench 0.1.0``."""
    return module_version(type(component).__module__)


def module_version(module_name: str) -> str:
    """The distribution and version that installed the module ``module_name`` (e.g. a plugin attack's factory's)."""
    module = module_name.split(".")[0]
    names = dict.fromkeys(metadata.packages_distributions().get(module, []) or _distributions_pointing_at(module))
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found) or f"{module} (not installed as a package)"


def weights_provenance(trained: TrainedModel) -> dict[str, Any]:
    """The sha256 of the model's weights file and what trained it (CPU capability, threads; 'not recorded' for models
    trained before it was recorded)."""
    import hashlib

    path = trained.run_dir / "model.pt"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "no weights file (a wrapped model)"
    meta_path = trained.run_dir / "meta.json"
    trained_on: Any = "not recorded"
    try:
        trained_on = json.loads(meta_path.read_text(encoding="utf-8")).get("trained_on", trained_on)
    except (OSError, ValueError, AttributeError):
        pass
    return {"weights_sha256": digest, "trained_on": trained_on}


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def record_run(store: ResultsStore, run_id: str, *, command: str, device: torch.device, details: dict[str, Any]) -> None:
    """``runs/<run_id>.json``: the command, versions, device, git commit and date, with ``details`` (N, settings)."""
    payload = {"run_id": run_id, "command": command, "date": now(),
               "git_commit": git_commit(), "device": device_description(device), "versions": versions(), **details}
    atomic_write_text(store.directory / "runs" / f"{run_id}.json", json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_runs(directory: Path) -> dict[str, dict[str, Any]]:
    """Every run record of a results directory; one that is not a JSON object is a one-line :class:`UserError` (each
    is written atomically, so it was edited or damaged since: a report must not silently drop its provenance)."""
    runs = {}
    for path in sorted((directory / "runs").glob("*.json")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or one_line(error)
            raise UserError(f"Malformed run record {path}: {reason}; fix or move it (rerunning the same command "
                            "writes it again)") from None
        if not isinstance(payload, dict):
            raise UserError(f"Malformed run record {path}: expected a JSON object, got {type(payload).__name__}; fix "
                            "or move it (rerunning the same command writes it again)")
        runs[path.stem] = payload
    return runs
