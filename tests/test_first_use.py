"""What a new user hits first (issue 15): bad input refused before any work, in one line, files diagnosed right."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

CliResult = Any  # conftest.CliResult (conftest is not importable under --import-mode=importlib)


def one_line_error(result: CliResult, expected: str) -> None:
    assert result.code == 2, result.out[-500:]
    assert expected in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


def test_the_cli_starts_without_torch() -> None:
    """`pdm-bench --help`, `list`'s parsing and every usage error do not wait for torch (docs/PERFORMANCE.md)."""
    code = "import sys, pdm_bench.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    typo = ("import sys; from pdm_bench.cli import run; "
            "code = run(['run', '--threat', 'gray', '--defense', 'pmd']); print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", typo], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "2 False" and "Did you mean: pdm?" in done.stderr
    listing = "import sys; from pdm_bench.cli import run; code = run(['list']); print(code, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("0 False") and "options: q=0.5, partners=batch" in done.stdout


@pytest.mark.parametrize("kind", ["defense", "detector", "threat_model"])
def test_list_reads_each_built_in_as_importing_it_would(kind: str) -> None:
    """`list` describes built-ins from their source (pdm_bench.catalog); the imported classes must say the same."""
    from pdm_bench import registry
    from pdm_bench.catalog import Card, read_card
    from pdm_bench.options import describe_options

    built = getattr(registry, f"{kind}_registry")(plugins=False)
    for name, target, _ in built.targets():
        value = built.get(name)
        params = getattr(value, "params_type", value)
        assert read_card(target) is not None, target
        assert read_card(target) == Card(value.description, describe_options(params)), target


def test_the_catalog_gives_up_on_what_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdm_bench.catalog import Card, read_card

    (tmp_path / "cards_demo.py").write_text(
        "from dataclasses import dataclass, field\nimport os\n"
        "@dataclass(kw_only=True)\nclass Plain:\n    description = 'plain'\n    a: int = 1\n"
        "    b: str = field(default='x')\n    c: int = field(default=0, init=False)\n"
        "@dataclass(kw_only=True)\nclass Computed(Plain):\n    d: str = os.sep\n"
        "class Outside(os.PathLike):\n    description = 'from a foreign base'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert read_card("cards_demo:Plain") == Card("plain", "a=1, b=x")
    assert read_card("cards_demo:Computed") is None and read_card("cards_demo:Outside") is None
    assert read_card("cards_demo:Missing") is None and read_card("no_such_module_here:X") is None


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "--seed", "99999999999999999999"], "Invalid value for '--seed': 99999999999999999999 is not in the range 0<=x<=4294967295"),
    (["paper", "--dataset", "digits", "--seed", "3", "--seeds", "0,1"], "--seed 3 and --seeds 0,1 both given"),
    (["paper", "--dataset", "digits", "--seeds", "0,4294967296"], "--seeds expects distinct non-negative integers up to 4294967295"),
    (["run", "--threat", "gray", "--attacks", ",,,"], "--attacks names no attack, got ',,,'"),
    (["run", "--threat", "gray", "--attacks", ""], "--attacks names no attack, got ''"),
    (["train", "-o", "q=0.3", "-o", "q=0.7"], "--defense-option sets q twice (q=0.3 and q=0.7); give it once"),
    (["train", "--device", "cuda:abc"], "Device 'cuda:abc' is malformed: expected cuda or cuda:N"),
])
def test_wrong_values_are_one_line_errors(cli: Callable[..., CliResult], args: list[str], expected: str) -> None:
    one_line_error(cli(*args, "--no-progress"), expected)


def test_a_one_class_folder_is_refused(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    for split in ("train", "test"):
        (tmp_path / "one" / split / "a").mkdir(parents=True)
        for i in range(3):
            Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype("uint8")).save(
                tmp_path / "one" / split / "a" / f"{i}.png")
    for command in ("train", "run"):
        extra = ["--threat", "gray"] if command == "run" else []
        one_line_error(cli(command, *extra, "--dataset", f"folder:{tmp_path / 'one'}", "--no-progress"),
                       "has 1 class (a): a classifier needs at least 2")


NON_SCALAR = '''
from dataclasses import dataclass

from torch.nn import functional as F

from pdm_bench.defenses.base import Defense


@dataclass(frozen=True, kw_only=True)
class PerSample(Defense):
    name = "per_sample"

    def loss(self, model, x, y, context):
        return F.cross_entropy(model.embed_and_logits(x)[1], y, reduction="none")
'''


def test_a_plugin_loss_that_is_not_a_scalar_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fake_dist: Callable[..., None], cli: Callable[..., CliResult]) -> None:
    fake_dist(tmp_path / "site", "pdm-per-sample", {"pdm_per_sample.py": NON_SCALAR},
              {"pdm_bench.defenses": {"per_sample": "pdm_per_sample:PerSample"}})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    one_line_error(cli("train", "--defense", "per_sample", "--epochs", "1", "--no-progress"),
                   "The loss of defense 'per_sample' (pdm_per_sample): expected a scalar loss, got a tensor of shape (128,)")


def test_a_truncated_model_is_called_corrupt_and_a_torn_checkpoint_is_retrained(
        tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    first = cli("train", "--defense", "baseline", "--epochs", "2", "--no-progress")
    assert first.code == 0
    run_dir = Path(first.out.split("Model: ")[1].strip())
    weights = (run_dir / "model.pt").read_bytes()
    (run_dir / "model.pt").write_bytes(weights[:1000])
    broken = cli("train", "--defense", "baseline", "--epochs", "2", "--no-progress")
    one_line_error(broken, f"Trained model {run_dir / 'model.pt'} is corrupt (PytorchStreamReader failed reading zip archive")
    assert f"remove {run_dir} and rerun the same command" in broken.err

    # A checkpoint torn by a kill: the run starts over from the first epoch, and finishes.
    (run_dir / "model.pt").unlink()
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({"config": meta["config"], "finished": None}))
    (run_dir / "checkpoint.pt").write_bytes(weights[:500])
    again = cli("train", "--defense", "baseline", "--epochs", "2", "--no-progress")
    assert again.code == 0, again.err
    assert "checkpoint.pt is corrupt" in again.out and "from the first epoch" in again.out and "epoch 2/2" in again.out
    assert not (run_dir / "checkpoint.pt").exists() and (run_dir / "model.pt").exists()


def test_a_results_file_saved_by_a_spreadsheet_is_read(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark before the header (as spreadsheets save CSV files)."""
    from pdm_bench.results import COLUMNS, ResultsStore

    results = tmp_path / "results.csv"
    results.write_text("\ufeff" + ",".join(COLUMNS) + "\ndigits,quick,0,pdm,gray,cw,auc,0.5,3,run,t,kde\n", encoding="utf-8")
    rows = ResultsStore(tmp_path).rows()
    assert [(r.attack, r.metric, r.value) for r in rows] == [("cw", "auc", 0.5)]


@pytest.mark.parametrize(("args", "expected"), [
    (["--threat", "gray", "--n-samples", "5000"], "--n-samples must be between 1 and the test set's size 360 (digits), got 5000"),
    (["--threat", "gray", "--bandwidth", "inf"], "Bad options for detector 'kde': bandwidth must be a positive finite number, got inf"),
    (["--threat", "black", "--proxy-depth", "7"], "--proxy-depth must be of the form 6n+2 (8, 14, 20, 32, ...), got 7"),
    (["--threat", "gray", "--results-dir", "{file}/results"], "--results-dir {file}/results: cannot write there (Not a directory)"),
])
def test_bad_run_settings_fail_before_any_training(tmp_path: Path, cli: Callable[..., CliResult], args: list[str],
                                                   expected: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli("run", *[a.replace("{file}", str(blocker)) for a in args], "--no-progress")
    one_line_error(result, expected.replace("{file}", str(blocker)))
    assert "epoch" not in result.out and not (tmp_path / "cache" / "models").exists()  # nothing was trained


def test_attacks_show_progress_in_a_terminal_and_stay_quiet_in_logs(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    common = ("run", "--threat", "gray", "--defense", "baseline", "--epochs", "1", "--attacks", "fgsm-0.1,cw-hc",
              "--n-samples", "10")
    shown = cli(*common, "--progress", "--results-dir", str(tmp_path / "a"))
    assert shown.code == 0, shown.err
    assert "cw-hc: 100%" in shown.err and "10/10" in shown.err  # images done, of how many
    assert "CarliniWagnerL2 on 10 images, search step" in shown.err and "successful" in shown.err
    assert "resiliency: 100%" in shown.err
    assert "detector: reference embeddings:" in shown.err and "KDE bandwidth search:" in shown.err
    assert "embedding geometry" in shown.err and "t-SNE" in shown.err and "5/5" in shown.err
    quiet = cli(*common, "--no-progress", "--no-geometry", "--results-dir", str(tmp_path / "b"))
    assert quiet.code == 0 and quiet.err == ""


def test_a_resumed_attack_says_how_many_images_it_reused(tmp_path: Path) -> None:
    from pdm_bench.storage import chunked_array

    logged: list[str] = []
    calls: list[int] = []

    def make(part: slice) -> np.ndarray:
        calls.append(part.start)
        if part.start == 20 and len(calls) == 2:
            raise KeyboardInterrupt  # killed while making the second chunk
        return np.full((part.stop - part.start, 1, 2, 2), part.start, dtype=np.float32)

    path, shape = tmp_path / "adv.npy", (50, 1, 2, 2)
    with pytest.raises(KeyboardInterrupt):
        chunked_array(path, shape, make, chunk_size=20, label="cw-hc", log=logged.append)
    assert not any("reused" in line for line in logged)
    array, _ = chunked_array(path, shape, make, chunk_size=20, label="cw-hc", log=logged.append)
    assert "cw-hc: 20 of 50 images reused from stored chunks (made by an earlier or a parallel run)" in logged
    assert calls == [0, 20, 20, 40] and array[45, 0, 0, 0] == 40


def test_the_gray_table_explains_its_columns_and_leaves_reused_times_blank() -> None:
    from pdm_bench.results import ResultRow
    from pdm_bench.threat_models.gray import gray_table

    rows = [ResultRow("digits", "quick", 0, "pdm", "gray", "fgsm-0.05", metric, value, 10, "run", "t")
            for metric, value in (("auc", 0.9), ("accuracy", 0.5), ("attack_seconds", float("nan")))]
    table = gray_table(rows, ["fgsm-0.05"], resiliency=False)
    assert "acc: accuracy on the attacked images" in table and "sec: attack time (blank: reused)" in table
    assert "nan" not in table.splitlines()[1][-8:] and "resiliency" not in table  # --no-resiliency: no curve table


def test_a_bandwidth_so_small_that_every_score_ties_is_warned_about(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    done = cli("run", "--threat", "gray", "--attacks", "fgsm-0.1", "--no-resiliency", "--n-samples", "30", "--bandwidth",
               "1e-30", "--defense", "baseline", "--epochs", "2", "--no-progress", "--no-geometry",
               "--results-dir", str(tmp_path / "r"))
    assert done.code == 0, done.err
    assert "warning: fgsm-0.1: all " in done.out and "detector scores are equal (-inf), so the AUC is 0.5 by construction" in done.out
