"""Bad input (#36): one line naming the value and what is valid, before any work; never a traceback, never a silent
default. One test per class of fix; docs/BAD_INPUT.md (benchmarks/bad_input_table.py) runs every case."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import pdm_bench as pb
from pdm_bench import api
from pdm_bench.errors import UserError

CliResult = Any  # conftest.CliResult


def one_line(error: pytest.ExceptionInfo[UserError]) -> str:
    message = str(error.value)
    assert message.strip() and "\n" not in message
    return message


def test_sixteen_bit_grayscale_folder_is_scaled_not_white(tmp_path: Path) -> None:
    from pdm_bench.data import load_dataset

    for split in ("train", "test"):
        for cls, level in (("dark", 1000), ("light", 60000)):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8), level + i, np.uint16)).save(tmp_path / split / cls / f"{i}.png")
    assert Image.open(tmp_path / "train" / "dark" / "0.png").mode.startswith("I")
    data = load_dataset(f"folder:{tmp_path}", cache_dir=tmp_path / "cache")
    assert data.input_shape == (1, 8, 8)
    dark, light = data.x_train[data.y_train == 0], data.x_train[data.y_train == 1]
    assert dark.max() == pytest.approx(round(1000 * 255 / 65535) / 255)  # 4/255, not the 1.0 of a clipped RGB
    assert light.min() == pytest.approx(round(60000 * 255 / 65535) / 255)


def _damaged_cache(cache: Path, damage: Callable[[Any, dict[str, Any]], None], accuracy: float = 0.1) -> None:
    """A finished, untrained model of pb.train()'s default config, damaged by ``damage(model, meta)``."""
    from pdm_bench.training import model_entry

    config = api.resolve_model(dataset="digits", defense="pdm", options=None, preset="quick", epochs=None, seed=0,
                               data_dir=None, cache_dir=cache, device="cpu")
    entry = model_entry(cache, config.data, config.defense, config.plan)
    model = config.defense.build_model(config.plan.model)
    meta: dict[str, Any] = {}
    damage(model, meta)
    entry.finish(model.state_dict(), test_accuracy=accuracy, history=[], trained_on={})
    stored = json.loads(entry.meta_path.read_text())
    for key in meta.pop("drop", []):
        del stored[key]
    entry.meta_path.write_text(json.dumps(stored))


@pytest.mark.parametrize(("damage", "accuracy", "expected"), [
    (lambda model, meta: next(iter(model.parameters())).data.fill_(float("nan")), 0.1, "has non-finite weights"),
    (lambda model, meta: meta.update(drop=["test_accuracy"]), 0.1, "'test_accuracy' is missing"),
    (lambda model, meta: None, 0.99, "the files do not belong together"),
    (lambda model, meta: None, 7.5, "test_accuracy 7.5 is not in [0, 1]"),
])
def test_a_damaged_cached_model_is_refused_before_use(tmp_path: Path, damage: Callable[..., None], accuracy: float,
                                                      expected: str) -> None:
    _damaged_cache(tmp_path, damage, accuracy)
    with pytest.raises(UserError) as error:
        pb.train(cache_dir=tmp_path, device="cpu", log=lambda _: None)
    assert expected in one_line(error) and ("model.pt" in str(error.value) or "meta.json" in str(error.value))
    assert "delete" in str(error.value) or "remove" in str(error.value)


def test_one_option_by_two_routes_is_an_error() -> None:
    from pdm_bench.cli import detector_choice, threat_options

    with pytest.raises(UserError, match="--attacks cw and -t attacks=jsma both set attacks; give it once"):
        threat_options("gray", {"--attacks": "cw"}, ["attacks=jsma"], strict=True)
    with pytest.raises(UserError, match="--bandwidth 0.5 and --detector-option bandwidth=0.3 both set bandwidth"):
        detector_choice("kde", ["bandwidth=0.3"], 0.5, None)
    with pytest.raises(UserError, match="--kde-points 10 and --detector-option points_per_class=20"):
        detector_choice("kde", ["points_per_class=20"], None, 10)


def test_paths_of_an_unknown_user_are_one_line(tmp_path: Path) -> None:
    from pdm_bench.config import resolve_cache_dir
    from pdm_bench.data import load_dataset, resolve_data_dir

    for call in (lambda: resolve_cache_dir("~nosuchuser_pdm/cache"), lambda: resolve_data_dir("~nosuchuser_pdm/d"),
                 lambda: load_dataset("folder:~nosuchuser_pdm/images", cache_dir=tmp_path)):
        with pytest.raises(UserError) as error:
            call()
        assert "~nosuchuser_pdm" in one_line(error) and "cannot expand '~'" in str(error.value)


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("kde", {"bandwidth": 1e-300}, r"bandwidth must be between 1e-150 and 1e\+150"),
    ("kde", {"bandwidth": "1e300"}, "bandwidth must be between"),
    ("lid", {"k": "1"}, "k must be an integer >= 2"),
])
def test_detector_values_that_would_fail_late_fail_now(name: str, options: dict[str, Any], expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        api.make_detector(name, options)


def test_lid_k_and_adaptive_budgets_are_checked_against_the_data() -> None:
    from pdm_bench.data import load_dataset

    digits = load_dataset("digits")
    with pytest.raises(UserError, match="k=20 neighbours need more than the 10 reference embeddings"):
        api.check_run(api.make_threat("gray"), api.make_detector("lid", {"points_per_class": "1"}), digits)
    api.check_run(api.make_threat("gray"), api.make_detector("lid"), digits)  # the defaults fit
    with pytest.raises(UserError, match=r"--eps with --norm linf must be at most 1"):
        api.make_threat("adaptive", {"norm": "linf", "eps": "5"})
    with pytest.raises(UserError, match=r"at most sqrt\(1x8x8\) = 8 on digits"):
        api.check_run(api.make_threat("adaptive", {"norm": "l2", "eps": "1e9"}), api.make_detector("kde"), digits)
    api.check_run(api.make_threat("adaptive", {"norm": "l2"}), api.make_detector("kde"), digits)


@pytest.mark.parametrize(("options", "expected"), [
    ({"classification_weight": "0", "partner_classification_weight": "0", "siamese_weight": "0", "rvl_weight": "0"},
     "are all 0: the loss would be 0 and train nothing"),
    ({"rvl_weight": "inf"}, "rvl_weight must be a finite number >= 0, got inf"),
    ({"siamese_weight": "nan"}, "siamese_weight must be a finite number >= 0, got nan"),
])
def test_degenerate_loss_weights_are_refused(options: dict[str, str], expected: str) -> None:
    from pdm_bench.registry import defense_registry

    with pytest.raises(UserError, match=expected):
        defense_registry().get("pdm").from_options(options)


def test_a_plugin_option_class_raising_anything_is_one_line() -> None:
    from pdm_bench.options import build_options

    @dataclass(kw_only=True)
    class Options:
        x: int = 0

        def __post_init__(self) -> None:
            raise RuntimeError("not\nready")

    with pytest.raises(UserError) as error:
        build_options(Options, {"x": "1"}, owner="defense 'plugin'")
    assert one_line(error) == "Bad options for defense 'plugin': its options class " \
        "test_a_plugin_option_class_raising_anything_is_one_line.<locals>.Options raised RuntimeError: not ready"


def test_a_plugin_calling_sys_exit_is_listed_as_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       cli: Callable[..., CliResult], fake_dist: Callable[..., None]) -> None:
    fake_dist(tmp_path / "site", "pdm-exiting", {"pdm_exiting_xyz.py": "import sys\nsys.exit('gave up')\n"},
              {"pdm_bench.defenses": {"exiting": "pdm_exiting_xyz:Defense"}})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    listing = cli("list")
    assert listing.code == 0 and "exiting        BROKEN plugin from pdm-exiting 0.1.0" in listing.out
    assert "SystemExit: gave up" in listing.out and "Datasets:" in listing.out
    failed = cli("train", "--defense", "exiting")
    assert failed.code == 2 and failed.err.count("\n") == 1 and "SystemExit: gave up" in failed.err
    sys.modules.pop("pdm_exiting_xyz", None)


@pytest.mark.parametrize("args", [
    ["train", "--results-dir", ""], ["run", "--threat", "gray", "--results-dir", ""], ["report", "--out", ""],
    ["train", "--cache-dir", ""],
])
def test_an_empty_folder_option_is_an_error(args: list[str], cli: Callable[..., CliResult], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    done = cli(*args)
    assert done.code == 2 and done.err.count("\n") == 1 and "an empty path; give a folder" in done.err
    assert list(tmp_path.iterdir()) == [], "nothing is written into the current folder"


def test_a_bad_thread_count_in_the_environment_is_one_line(cli: Callable[..., CliResult],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "abc")
    done = cli("train")
    assert done.code == 2 and done.err == ("Error: Environment variable OMP_NUM_THREADS='abc' is not a positive "
                                           "thread count, e.g. OMP_NUM_THREADS=4 (or unset it)\n")


@pytest.mark.parametrize(("call", "expected"), [
    (lambda: pb.train(epochs=2.5), "pdm_bench.train: epochs must be int or None, got 2.5 (float)"),
    (lambda: pb.train(seed="0"), "pdm_bench.train: seed must be int, got '0' (str)"),
    (lambda: pb.train(options=["q=0.3"]), "pdm_bench.train: options must be a mapping or None, got ['q=0.3'] (list)"),
    (lambda: pb.train(device=0), "pdm_bench.train: device must be str, got 0 (int)"),
    (lambda: pb.train(defense=None), "pdm_bench.train: defense must be str, got None (NoneType)"),
    (lambda: pb.train(results_dir=""), "--results-dir is empty: give a folder"),
    (lambda: pb.load(epochs="3"), "pdm_bench.load: epochs must be int or None, got '3' (str)"),
    (lambda: pb.evaluate(object.__new__(pb.Trained), n_samples="20"), "pdm_bench.evaluate: n_samples must be int or"),
    (lambda: pb.evaluate(None), "pdm_bench.evaluate: trained must be Trained, got None"),
    (lambda: pb.evaluate(object.__new__(pb.Trained), threat=3), "pdm_bench.evaluate: threat must be str or ThreatModel, got 3"),
    (lambda: pb.report(None), "pdm_bench.report: results_dir must be str or a path or a sequence"),
    (lambda: pb.Study(seeds=["0"]), "pdm_bench.Study: seeds must be a sequence of int, got ['0'] (list)"),
    (lambda: pb.Study(n_samples="20"), "pdm_bench.Study: n_samples must be int or None, got '20' (str)"),
    (lambda: pb.Study(preset="fast"), "Unknown preset 'fast'"),
    (lambda: pb.Study(device="tpu"), "Unknown device 'tpu'"),
    (lambda: pb.Study(defenses="pmd"), "Unknown defense 'pmd'. Did you mean: pdm?"),
    (lambda: pb.Study(dataset="digits").run(jobs=0), "jobs must be a positive number of steps run at once, got 0"),
    (lambda: pb.Study(dataset="digits").run(jobs="2"), "pdm_bench.Study.run: jobs must be int, got '2' (str)"),
    (lambda: api.make_detector("kde", [("bandwidth", 1)]), "pdm_bench.make_detector: options must be a mapping or None"),
    (lambda: api.make_threat("gray", "attacks=cw"), "pdm_bench.make_threat: options must be a mapping or None"),
])
def test_python_entry_points_refuse_wrong_types_in_one_line(call: Callable[[], Any], expected: str) -> None:
    with pytest.raises(UserError) as error:
        call()
    assert expected in one_line(error)


def test_a_study_takes_one_string_as_names_and_checks_sizes_before_any_step(tmp_path: Path) -> None:
    study = pb.Study(dataset="digits", defenses="pdm", train_only="", threats="gray,white", cache_dir=tmp_path,
                     results_dir=tmp_path / "results")
    assert (list(study.defenses), list(study.train_only), list(study.threats)) == (["pdm"], [], ["gray", "white"])
    too_many = pb.Study(dataset="digits", defenses="pdm", train_only="", threats="gray", n_samples=5000,
                        cache_dir=tmp_path, results_dir=tmp_path / "results", log=lambda _: None)
    with pytest.raises(UserError, match="--n-samples must be between 1 and the test set's size 360"):
        too_many.run()
    assert not (tmp_path / "models").exists(), "nothing was trained"


def test_a_damaged_run_record_is_refused_before_work_and_in_the_report(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "abc.json").write_text("{not json")
    with pytest.raises(UserError) as error:
        api.check_results_dir(tmp_path)
    assert one_line(error).startswith(f"Malformed run record {tmp_path / 'runs' / 'abc.json'}: ")
    (tmp_path / "runs" / "abc.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object, got list"):
        api.check_results_dir(tmp_path)
    with pytest.raises(UserError, match="is a file: pass the --results-dir of your runs"):
        pb.report(tmp_path / "runs" / "abc.json")


def test_a_study_checks_detector_names_when_built() -> None:
    with pytest.raises(UserError, match="Unknown detector 'kdee'. Did you mean: kde?"):
        pb.Study(detector="kde,kdee")
