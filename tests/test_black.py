"""Black-box threat model: rows, the distilled proxy cached and reused, resume without redoing work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier

from pdm_bench.art_adapter import build_copycat
from pdm_bench.config import make_plan
from pdm_bench.data import load_dataset
from pdm_bench.defenses.baseline import Baseline
from pdm_bench.detectors import KDEDetector, fit_detector
from pdm_bench.errors import UserError
from pdm_bench.evaluation import Evaluation, sample_indices
from pdm_bench.inference import predict_logits
from pdm_bench.models import ModelSpec, build_model
from pdm_bench.results import ResultsStore, Threat
from pdm_bench.threat_models.black import black_table, distil_proxy, run_black
from pdm_bench.threat_models.white import WhiteBudget
from pdm_bench.training import train_or_load

CPU = torch.device("cpu")
TINY = (WhiteBudget(max_iter=100, binary_search_steps=3, initial_const=1.0, learning_rate=5e-2),)


@pytest.fixture(scope="module")
def ev(tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    data = load_dataset("digits")
    plan = make_plan("quick", dataset="digits", input_shape=data.input_shape, num_classes=10, epochs=10)
    trained = train_or_load(dataset=data, defense=Baseline(), plan=plan, cache_dir=tmp_path_factory.mktemp("cache"),
                            device=CPU, progress=False, log=lambda _: None)
    detector = fit_detector(KDEDetector(), trained.model, data, device=CPU)
    return Evaluation(data, trained, Threat.BLACK.value, detector, sample_indices(data, 16, 0),
                      ResultsStore(tmp_path_factory.mktemp("results")), CPU, 0, log=lambda _: None, chunk_size=10)


@pytest.mark.slow  # ART / many Adam steps: ~1 minute on 2 cores
def test_black_rows_cached_proxy_and_a_rerun_redoes_nothing(ev: Evaluation) -> None:
    rows = run_black(ev, schedule=TINY, proxy_epochs=6)
    got = {(r.attack, r.metric): r.value for r in rows}
    assert all(r.threat == "black" for r in rows)
    for name in ("cw-wb", "cw"):
        auc_ordered = 0.0 <= got[(name, "auc_low")] <= got[(name, "auc")] <= got[(name, "auc_high")] <= 1.0
        assert auc_ordered or got[(name, "pairs_kept")] == 0  # plain C&W may transfer to no image
        assert 0.0 <= got[(name, "success_rate")] <= 1.0
    assert got[("cw-wb", "pairs_kept")] > 0 and got[("cw-wb", "proxy_success_rate")] > 0.2
    assert 0.8 < got[("cw-wb", "proxy_agreement")] <= 1.0 and got[("cw-wb", "proxy_depth")] == 8
    assert "agreement with the target" in black_table(rows)
    proxies = list((ev.trained.run_dir.parent.parent / "proxies").iterdir())
    assert len(proxies) == 1 and (proxies[0] / "model.pt").exists()
    # the proxy is cached like a trained model: the same config reuses it, another trains anew
    weights = (proxies[0] / "model.pt").stat().st_mtime_ns
    proxy = distil_proxy(ev, cache_dir=ev.trained.run_dir.parent.parent, epochs=6)
    assert proxy.from_cache and proxy.agreement == got[("cw-wb", "proxy_agreement")]
    assert (proxies[0] / "model.pt").stat().st_mtime_ns == weights
    before = len(ev.results.rows())
    assert len(run_black(ev, schedule=TINY, proxy_epochs=6)) == len(rows) and len(ev.results.rows()) == before


def test_the_copycat_learns_from_the_victims_probabilities(ev: Evaluation) -> None:
    data, model = ev.dataset, ev.trained.model
    proxy = build_model(ModelSpec(depth=8, in_channels=1))
    copycat, _ = build_copycat(model, proxy, optimizer=torch.optim.Adam(proxy.parameters()),
                               input_shape=data.input_shape, nb_classes=10, device=CPU, epochs=1, batch_size=64,
                               milestones=(), gamma=0.1, seed=0, nb_stolen=5)
    queries = copycat._select_data(data.x_train)
    soft = copycat._query_label(queries)
    assert soft.shape == (5, 10) and np.allclose(soft.sum(1), 1.0, atol=1e-5) and not np.array_equal(soft, soft.round())
    assert np.array_equal(soft.argmax(1), predict_logits(model, queries, device=CPU).argmax(1).numpy())


def test_a_killed_distillation_resumes_after_its_last_epoch(ev: Evaluation, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    whole = distil_proxy(ev, cache_dir=tmp_path / "whole", epochs=3)
    fit = PyTorchClassifier.fit
    calls: list[int] = []

    def dying_fit(self: PyTorchClassifier, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the third epoch
        fit(self, *args, **kwargs)

    monkeypatch.setattr(PyTorchClassifier, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        distil_proxy(ev, cache_dir=tmp_path / "killed", epochs=3)
    (checkpoint,) = (tmp_path / "killed" / "proxies").glob("*/checkpoint.pt")
    assert torch.load(checkpoint, weights_only=True)["epochs_done"] == 2
    calls.clear()
    resumed = distil_proxy(ev, cache_dir=tmp_path / "killed", epochs=3)
    assert len(calls) == 1 and not checkpoint.exists()  # only the third epoch was trained again
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name  # as if never killed


def test_black_bad_input_is_one_line(ev: Evaluation) -> None:
    with pytest.raises(UserError, match=r"^expected a positive integer proxy epochs, got 0$"):
        run_black(ev, schedule=TINY, proxy_epochs=0)
    with pytest.raises(UserError, match=r"^C&W-wb budget: expected a positive integer max_iter, got -1$"):
        run_black(ev, schedule=(WhiteBudget(max_iter=-1),))
