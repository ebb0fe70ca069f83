"""Gray-box threat model: rows, resume without redoing work, and one-line errors for bad input."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pdm_bench.config import make_plan
from pdm_bench.data import load_dataset
from pdm_bench.defenses.baseline import Baseline
from pdm_bench.detectors import KDEDetector, fit_detector
from pdm_bench.errors import UserError
from pdm_bench.evaluation import Evaluation, sample_indices
from pdm_bench.metrics import detection_auc, distortions, kept_pairs, success_rate
from pdm_bench.results import ResultsStore, Threat
from pdm_bench.threat_models.attack_specs import AttackBackend
from pdm_bench.threat_models.gray import parse_attack, run_gray
from pdm_bench.training import train_or_load

CliResult = Any
CPU = torch.device("cpu")


def test_auc_and_pair_protocol_by_hand() -> None:
    assert detection_auc(np.array([3.0, 2.0]), np.array([1.0, 0.0]), bootstrap=0).value == 1.0
    assert detection_auc(np.array([0.0, 1.0]), np.array([3.0, 2.0]), bootstrap=0).value == 0.0
    half = detection_auc(np.array([1.0, 3.0]), np.array([2.0, 0.0]), bootstrap=200)
    assert half.value == 0.75 and 0.0 <= half.low <= half.value <= half.high <= 1.0
    y, clean, adv = np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3]), np.array([1, 1, 1, 0])
    assert kept_pairs(y, clean, adv).tolist() == [0, 3]  # image 2 was wrong already, image 1 not fooled
    assert success_rate(y, clean, adv) == pytest.approx(2 / 3)
    sizes = distortions(np.zeros((1, 1, 2, 2)), np.array([[[[0.3, 0.0], [0.4, 0.0]]]]))
    assert sizes["l2"][0] == pytest.approx(0.5) and sizes["linf"][0] == pytest.approx(0.4) and sizes["l0"][0] == 2
    # an attack that never succeeds (e.g. C&W-hc on an RCE model) keeps no pairs: NaN, not a crash
    assert all(len(v) == 0 for v in distortions(np.zeros((0, 1, 8, 8)), np.zeros((0, 1, 8, 8))).values())
    assert np.isnan(detection_auc(np.array([]), np.array([])).value)


@pytest.fixture(scope="module")
def evaluation_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    data = load_dataset("digits")
    plan = make_plan("quick", dataset="digits", input_shape=data.input_shape, num_classes=10, epochs=15)
    trained = train_or_load(dataset=data, defense=Baseline(), plan=plan, cache_dir=tmp_path_factory.mktemp("c"),
                            device=CPU, progress=False, log=lambda _: None)
    return data, trained, fit_detector(KDEDetector(), trained.model, data, device=CPU)


def test_gray_rows_and_a_rerun_redoes_nothing(evaluation_parts: tuple[Any, Any, Any], tmp_path: Path) -> None:
    data, trained, detector = evaluation_parts
    store = ResultsStore(tmp_path)
    ev = Evaluation(data, trained, Threat.GRAY.value, detector, sample_indices(data, 120, 0), store, CPU, 0, log=lambda _: None)
    rows = run_gray(ev, ["fgsm-0.1", "cw"], backend=AttackBackend.TORCH, targeted=False, resiliency=False)
    got = {(r.attack, r.metric): r.value for r in rows}
    for attack in ("fgsm-0.1", "cw"):
        assert 0.0 <= got[(attack, "auc_low")] <= got[(attack, "auc")] <= got[(attack, "auc_high")] <= 1.0
        assert 0.0 < got[(attack, "success_rate")] <= 1.0 and got[(attack, "pairs_kept")] > 0
    assert got[("fgsm-0.1", "linf_mean")] == pytest.approx(0.1, abs=1e-5)
    assert got[("clean", "accuracy")] == pytest.approx(trained.test_accuracy, abs=0.1)
    adversarial_files = sorted((tmp_path / "adversarial").iterdir())
    assert len(adversarial_files) == 2
    mtimes = [f.stat().st_mtime_ns for f in adversarial_files]
    before = len(store.rows())
    run_gray(ev, ["fgsm-0.1", "cw"], backend=AttackBackend.TORCH, targeted=False, resiliency=False)
    assert len(store.rows()) == before and [f.stat().st_mtime_ns for f in adversarial_files] == mtimes
    # Results lost but adversarials kept (a kill between the two writes): they are reused, not regenerated.
    (tmp_path / "results.csv").unlink()
    again = run_gray(ev, ["fgsm-0.1"], backend=AttackBackend.TORCH, targeted=False, resiliency=False)
    assert [f.stat().st_mtime_ns for f in adversarial_files] == mtimes
    assert {(r.attack, r.metric): r.value for r in again}[("fgsm-0.1", "auc")] == got[("fgsm-0.1", "auc")]


def test_a_kill_inside_a_long_attack_loses_only_the_unfinished_chunk(evaluation_parts: tuple[Any, Any, Any],
                                                                    tmp_path: Path) -> None:
    data, trained, detector = evaluation_parts
    ev = Evaluation(data, trained, Threat.GRAY.value, detector, sample_indices(data, 120, 0), ResultsStore(tmp_path), CPU, 0,
                    log=lambda _: None, chunk_size=50)
    x = data.x_test[ev.indices]
    made: list[tuple[int, int]] = []

    def make(part: slice) -> np.ndarray:
        made.append((part.start, part.stop))
        if part.start == 50 and len(made) == 2:
            raise KeyboardInterrupt  # killed in the middle of the second chunk
        return x[part] + 0.01

    with pytest.raises(KeyboardInterrupt):
        ev.cached_adversarials("fake", {}, make)
    images, seconds = ev.cached_adversarials("fake", {}, make)
    assert made == [(0, 50), (50, 100), (50, 100), (100, 120)]  # the first chunk was not made again
    np.testing.assert_allclose(images, x + 0.01)
    assert seconds >= 0.0
    assert not list((tmp_path / "adversarial").glob("*.parts"))  # assembled into one file, chunks removed
    again, seconds_again = ev.cached_adversarials("fake", {}, make)
    assert len(made) == 4 and np.isnan(seconds_again) and np.array_equal(again, images)
    # Chunking does not change an attack's images (C&W is per image: early abort and binary search per image).
    l2_means = []
    for chunk_size, directory in ((10, "chunked"), (30, "whole")):
        small = Evaluation(data, trained, Threat.GRAY.value, detector, sample_indices(data, 30, 0),
                           ResultsStore(tmp_path / directory), CPU, 0, log=lambda _: None, chunk_size=chunk_size)
        rows = run_gray(small, ["cw"], backend=AttackBackend.TORCH, targeted=False, resiliency=False)
        l2_means.append({(r.attack, r.metric): r.value for r in rows}[("cw", "l2_mean")])
    assert l2_means[0] == pytest.approx(l2_means[1], rel=1e-4)


def test_two_runs_of_one_attack_share_its_chunks_and_record_it_once(evaluation_parts: tuple[Any, Any, Any],
                                                                     tmp_path: Path) -> None:
    data, trained, detector = evaluation_parts
    indices = sample_indices(data, 100, 0)
    x = data.x_test[indices]
    made: list[tuple[int, int]] = []  # (worker, first image of the chunk)
    outputs: dict[int, tuple[np.ndarray, float]] = {}
    start_together = threading.Barrier(2)

    def worker(number: int) -> None:
        ev = Evaluation(data, trained, Threat.GRAY.value, detector, indices, ResultsStore(tmp_path), CPU, 0,
                        log=lambda _: None, chunk_size=20)

        def make(part: slice) -> np.ndarray:
            made.append((number, part.start))
            time.sleep(0.3)
            return x[part] + 0.01

        start_together.wait()
        outputs[number] = ev.cached_adversarials("fake", {}, make)

    threads = [threading.Thread(target=worker, args=(number,)) for number in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(start for _, start in made) == [0, 20, 40, 60, 80]  # each chunk made once
    assert {number for number, _ in made} == {0, 1}  # by both runs
    for images, _ in outputs.values():
        np.testing.assert_allclose(images, x + 0.01)
    assert not list((tmp_path / "adversarial").glob("*.parts"))
    # Both record the attack; only the first one's rows are kept.
    store = ResultsStore(tmp_path)
    row = Evaluation(data, trained, Threat.GRAY.value, detector, indices, store, CPU, 0).row("fake", "auc", 0.5, 100)
    assert store.append([row], completes="fake", legacy=("fake", "auc"))
    assert not store.append([row], completes="fake", legacy=("fake", "auc"))
    assert len([r for r in store.rows() if r.metric != "finished"]) == 1


def test_results_file_that_is_not_ours_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("name,score\nalice,3\n")
    with pytest.raises(UserError, match="is not a pdm-bench results file"):
        ResultsStore(tmp_path).rows()
    path.write_text(",".join(("dataset preset seed defense threat attack metric value n run_id time").split()) + "\nx,y\n")
    with pytest.raises(UserError, match="Malformed results file .*line 2: expected 11 fields, got 2"):
        ResultsStore(tmp_path).append([])  # nothing to add: untouched
        ResultsStore(tmp_path).rows()
    assert path.read_text().endswith("x,y\n")


def test_attack_names_and_eps_validation() -> None:
    assert parse_attack("fgsm-0.03").params == {"eps": 0.03}
    assert parse_attack("bim-0.1").params == {"eps": 0.1, "max_iter": 10}
    with pytest.raises(UserError, match=r"Unknown attack 'cw-h'. Did you mean: cw-hc\?"):
        parse_attack("cw-h")
    for bad in ("fgsm-0", "fgsm-1.5", "bim--0.1", "bim-x"):
        with pytest.raises(UserError, match=r"eps must be in \(0, 1\]"):
            parse_attack(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threat", "grey"], "Error: Unknown threat model 'grey'. Did you mean: gray? Available: adaptive, black, gray, white"),
        (["--threat", "gray", "--attacks", "fgsm,cw"], "Error: Unknown attack 'fgsm'."),
        (["--threat", "gray", "--attacks", "fgsm-2"], "Error: Attack 'fgsm-2': eps must be in (0, 1]"),
        (["--threat", "gray", "--n-samples", "0", "--epochs", "1"], "Error: --n-samples must be between 1 and the test set's size 360 (digits), got 0"),
        (["--threat", "gray", "--n-samples", "5000", "--epochs", "1"], "Error: --n-samples must be between 1 and the test set's size 360"),
        (["--threat", "gray", "--bandwidth", "-1"], "Error: Bad options for detector 'kde': bandwidth must be a positive finite number, got -1.0"),
        (["--threat", "white", "--cw-iterations", "0"], "Error: Bad options for threat model 'white': --cw-iterations must be a positive integer, got 0"),
        (["--threat", "black", "--cw-initial-const", "0"], "Error: Bad options for threat model 'black': --cw-initial-const must be a positive number, got 0.0"),
        (["--threat", "black", "--proxy-epochs", "-3"], "Error: Bad options for threat model 'black': --proxy-epochs must be a positive integer, got -3"),
        (["--threat", "white", "--wb-kde-points", "0"], "Error: Bad options for threat model 'white': --wb-kde-points must be a positive integer, got 0"),
        (["--threat", "white", "--attacks", "cw"], "Error: --attacks does not apply to threat model 'white'"),
    ],
)
def test_run_bad_input_is_one_line(cli: Callable[..., CliResult], args: list[str], message: str, tmp_path: Path) -> None:
    result = cli("run", *args, "--results-dir", str(tmp_path), "--no-progress")
    assert result.code == 2 and result.err.startswith(message), result.err
    assert result.err.count("\n") == 1


def test_run_refuses_a_foreign_results_file(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    result = cli("run", "--threat", "gray", "--results-dir", str(tmp_path))
    assert result.code == 2 and "is not a pdm-bench results file" in result.err
    assert (tmp_path / "results.csv").read_text() == "a,b\n1,2\n"
