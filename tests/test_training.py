"""Training loop: caching by config, exact resume after a crash, checkpoints that belong to another config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pdm_bench.art_adapter import art_embeddings, to_art_classifier
from pdm_bench.config import dataset_family, make_plan
from pdm_bench.data import Dataset, load_dataset
from pdm_bench.defenses.baseline import Baseline
from pdm_bench.defenses.pdm import PDM
from pdm_bench.errors import UserError
from pdm_bench.models import ModelSpec, build_model
from pdm_bench.inference import evaluate_accuracy
from pdm_bench.training import model_dir, train_or_load

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


class Crash(RuntimeError):
    pass


def _crash_after(epoch_to_crash: int):
    def hook(epoch: int) -> None:
        if epoch == epoch_to_crash:
            raise Crash(f"simulated kill after epoch {epoch + 1}")

    return hook


def test_resume_after_a_crash_gives_the_uninterrupted_weights(digits: Dataset, tmp_path: Path) -> None:
    plan = make_plan("quick", dataset="digits", input_shape=digits.input_shape, num_classes=10, epochs=3)
    defense = PDM(partners="dataset")
    straight = train_or_load(dataset=digits, defense=defense, plan=plan, cache_dir=tmp_path / "a", device=CPU, progress=False, log=lambda _: None)

    with pytest.raises(Crash):
        train_or_load(dataset=digits, defense=defense, plan=plan, cache_dir=tmp_path / "b", device=CPU,
                      progress=False, log=lambda _: None, on_epoch_end=_crash_after(1))
    run_dir = model_dir(tmp_path / "b", digits, defense, plan)[0]
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "model.pt").exists()
    lines: list[str] = []
    resumed = train_or_load(dataset=digits, defense=defense, plan=plan, cache_dir=tmp_path / "b", device=CPU, progress=False, log=lines.append)
    assert "Resuming" in lines[0] and "after epoch 2/3" in lines[0]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]  # finished epochs kept, none redone
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.test_accuracy == straight.test_accuracy


def test_second_call_reuses_the_cache_and_a_changed_option_retrains(digits: Dataset, tmp_path: Path) -> None:
    plan = make_plan("quick", dataset="digits", input_shape=digits.input_shape, num_classes=10, epochs=1)
    first = train_or_load(dataset=digits, defense=Baseline(), plan=plan, cache_dir=tmp_path, device=CPU, progress=False, log=lambda _: None)
    lines: list[str] = []
    again = train_or_load(dataset=digits, defense=Baseline(), plan=plan, cache_dir=tmp_path, device=CPU, progress=False, log=lines.append)
    assert again.from_cache and not first.from_cache and lines[0].startswith("Reusing cached model")
    assert evaluate_accuracy(again.model, digits.x_test, digits.y_test, device=CPU) == pytest.approx(first.test_accuracy)
    state = torch.load(first.run_dir / "model.pt", weights_only=True)  # loads with weights_only
    assert "weights" in state
    other_seed = make_plan("quick", dataset="digits", input_shape=digits.input_shape, num_classes=10, epochs=1, seed=1)
    assert model_dir(tmp_path, digits, Baseline(), other_seed)[1] != first.key
    assert model_dir(tmp_path, digits, PDM(q=0.6), plan)[1] != model_dir(tmp_path, digits, PDM(), plan)[1]


def test_checkpoint_of_another_config_is_refused(digits: Dataset, tmp_path: Path) -> None:
    plan = make_plan("quick", dataset="digits", input_shape=digits.input_shape, num_classes=10, epochs=1)
    result = train_or_load(dataset=digits, defense=Baseline(), plan=plan, cache_dir=tmp_path, device=CPU, progress=False, log=lambda _: None)
    meta_path = result.run_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["plan"]["epochs"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="holds a model of another config"):
        train_or_load(dataset=digits, defense=Baseline(), plan=plan, cache_dir=tmp_path, device=CPU, progress=False, log=lambda _: None)
    meta["config"]["plan"]["epochs"] = 1
    meta_path.write_text(json.dumps(meta))
    wrong = build_model(ModelSpec(depth=14, width=16, in_channels=1, num_classes=10))
    torch.save({"weights": wrong.state_dict()}, result.run_dir / "model.pt")
    with pytest.raises(UserError, match=r"model.pt does not fit this config \(Error\(s\) in loading state_dict"):
        train_or_load(dataset=digits, defense=Baseline(), plan=plan, cache_dir=tmp_path, device=CPU, progress=False, log=lambda _: None)


def test_art_classifier_predicts_like_the_model_and_exposes_the_embedding(digits: Dataset) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(depth=8, width=8, in_channels=1, num_classes=10), negate_logits=True).eval()
    classifier = to_art_classifier(model, input_shape=digits.input_shape, nb_classes=10, device=CPU)
    x = digits.x_test[:50]
    with torch.no_grad():
        embedding, raw = model.embed_and_logits(torch.from_numpy(x))
    np.testing.assert_allclose(classifier.predict(x), -raw.numpy(), rtol=1e-5, atol=1e-5)  # RCE predicts with -z
    for _ in range(2):  # a second call must not stack a second hook (ART quirk with integer layers)
        np.testing.assert_allclose(art_embeddings(classifier, x, batch_size=16), embedding.numpy(), rtol=1e-5, atol=1e-5)
    assert classifier.clip_values is not None and tuple(np.asarray(classifier.clip_values).tolist()) == (0.0, 1.0)
    assert len(model.embedding._forward_hooks) == 1


def test_the_quick_preset_resolves_per_dataset_family() -> None:
    """CIFAR-10 (either copy) gets its own depth and epochs; MNIST and digits keep ResNet-8 (their models unchanged)."""
    for dataset, shape, depth, epochs in (("cifar10-jpeg", (3, 32, 32), 14, 10), ("cifar10", (3, 32, 32), 14, 10),
                                          ("mnist", (1, 28, 28), 8, 4), ("digits", (1, 8, 8), 8, 50)):
        plan = make_plan("quick", dataset=dataset, input_shape=shape, num_classes=10)
        assert (plan.model.depth, plan.epochs) == (depth, epochs), dataset
    assert make_plan("paper", dataset="cifar10", input_shape=(3, 32, 32), num_classes=10).model.depth == 56


def test_pdm_weighs_rce_as_cross_entropy_on_cifar10_at_the_quick_preset_only() -> None:
    """The quick preset's CIFAR-10 deviation (classification weights 9): MNIST, digits and the paper preset keep the
    paper's weights, and an option the user sets wins over the deviation."""
    quick_cifar = PDM.from_options({}, preset="quick", family=dataset_family("cifar10-jpeg"))
    assert (quick_cifar.classification_weight, quick_cifar.partner_classification_weight) == (9.0, 9.0)
    for preset, dataset in (("quick", "mnist"), ("quick", "digits"), ("paper", "cifar10")):
        assert PDM.from_options({}, preset=preset, family=dataset_family(dataset)) == PDM(), (preset, dataset)
    mine = PDM.from_options({"classification_weight": "1"}, preset="quick", family="cifar10")
    assert (mine.classification_weight, mine.partner_classification_weight) == (1.0, 9.0)
    assert Baseline.from_options({}, preset="quick", family="cifar10") == Baseline()
