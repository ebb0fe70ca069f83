"""The Python API: README's first Python block runs as written; a wrapped network is evaluated like a trained one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pdm_bench as pb
from pdm_bench.errors import UserError

README = Path(__file__).resolve().parents[1] / "README.md"


def first_python_block() -> str:
    text = README.read_text(encoding="utf-8")
    heading = re.search(r"^##+ .*Python.*$", text, flags=re.MULTILINE)
    assert heading is not None, "README has no section with 'Python' in its heading"
    block = re.search(r"```python\n(.*?)```", text[heading.end():], flags=re.DOTALL)
    assert block is not None
    return block.group(1)


def test_readme_python_block_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PDM_BENCH_CACHE", str(tmp_path / "cache"))
    exec(compile(first_python_block(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"\{'fgsm-0\.1': 0\.\d+, 'cw': 0\.\d+\}", out), out[-2000:]
    assert (tmp_path / "pdm-results" / "report" / "table2_graybox_auc.csv").exists()
    # Same caches: the CLI's model and the rows are reused, nothing is redone.
    trained = pb.load(dataset="digits", defense="pdm", cache_dir=tmp_path / "cache", log=lambda _: None)
    rows = pb.evaluate(trained, threat="gray", attacks=["fgsm-0.1", "cw"], n_samples=100, resiliency=False,
                       log=print)
    assert "fgsm-0.1: already in" in capsys.readouterr().out
    assert {r.run_id for r in rows} == {rows[0].run_id}


def test_wrapped_network_is_evaluated_like_a_trained_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    trained = pb.train(dataset="digits", defense="baseline", epochs=2, cache_dir=cache, log=lambda _: None)
    network = trained.network  # our ResNet: a user network whose embedding is the module 'embedding'
    mine = pb.wrap(network, embedding="pool", dataset="digits", name="mine", cache_dir=cache)
    assert mine.test_accuracy == pytest.approx(trained.test_accuracy)
    images = mine.data.x_test[:7]
    from_art = mine.art_classifier().get_activations(images, "embedding", batch_size=4, framework=False)
    np.testing.assert_allclose(from_art, mine.network.embed(torch.as_tensor(images)).detach().numpy(), atol=1e-5)
    rows = pb.evaluate(mine, threat="gray", attacks=["fgsm-0.1"], n_samples=30, resiliency=False,
                       results_dir=tmp_path / "results", log=lambda _: None)
    values = {(r.attack, r.metric): r.value for r in rows}
    assert {r.defense for r in rows} == {"mine"} and 0.0 <= values[("fgsm-0.1", "auc")] <= 1.0
    with pytest.raises(UserError, match="has no layer 'pol'.*pool"):
        pb.wrap(network, embedding="pol", dataset="digits", cache_dir=cache)
    with pytest.raises(UserError, match="No trained rce model"):
        pb.load(dataset="digits", defense="rce", cache_dir=cache, log=lambda _: None)
    with pytest.raises(UserError, match="Unknown threat model 'whit'"):
        pb.evaluate(mine, threat="whit")
