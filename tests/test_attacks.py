"""Our torch attacks against ART's: the same outputs (JSMA, C&W line search), at least the same strength (C&W Adam)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from art.attacks.evasion import CarliniL2Method, SaliencyMapMethod

from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.config import make_plan
from pdm_bench.data import load_dataset
from pdm_bench.defenses.baseline import Baseline
from pdm_bench.models import ModelSpec, build_model
from pdm_bench.threat_models.attacks import (CarliniWagnerL2, CarliniWagnerL2LineSearch, carlini_wagner_objective,
                                            frozen_copy)
from pdm_bench.threat_models.jsma import SaliencyMapTorch
from pdm_bench.training import train_or_load

CPU = torch.device("cpu")


def test_objective_matches_the_carlini_wagner_formulation_on_hand_made_logits() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0], [0.0, 0.0, 4.0]])
    labels = torch.tensor([1, 0, 0])
    # untargeted: max(Z_y - max_{j != y} Z_j + k, 0): 3-2, 5-1, 0-4 -> 1, 4, 0
    untargeted = carlini_wagner_objective(logits, labels, confidence=0.0, targeted=False)
    assert untargeted.tolist() == pytest.approx([1.0, 4.0, 0.0])
    # targeted: max(max_{j != t} Z_j - Z_t + k, 0) with k = 0.5: 2-3+.5, 1-5+.5, 4-0+.5
    targeted = carlini_wagner_objective(logits, labels, confidence=0.5, targeted=True)
    assert targeted.tolist() == pytest.approx([0.0, 0.0, 4.5])


@pytest.mark.parametrize("negate_logits", [False, True])
def test_attacks_frozen_copy_computes_the_models_function_and_leaves_the_model_alone(negate_logits: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(depth=14, width=8, in_channels=3), negate_logits=negate_logits).eval()
    for module in model.modules():  # BatchNorm statistics far from the identity, so folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = frozen_copy(model, CPU)
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        (z, raw), (z_frozen, raw_frozen) = model.embed_and_logits(x), frozen.embed_and_logits(x)
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z_frozen, z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(raw_frozen, raw, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, np.ndarray, np.ndarray]:
    data = load_dataset("digits")
    plan = make_plan("quick", dataset="digits", input_shape=data.input_shape, num_classes=10, epochs=12)
    trained = train_or_load(dataset=data, defense=Baseline(), plan=plan, cache_dir=tmp_path_factory.mktemp("c"),
                            device=CPU, progress=False, log=lambda _: None)
    assert trained.test_accuracy > 0.9
    classifier = to_art_classifier(trained.model, input_shape=data.input_shape, nb_classes=10, device=CPU)
    return classifier, data.x_test[:30], data.y_test[:30]


def _success_and_median_l2(classifier: Any, x: np.ndarray, y: np.ndarray, x_adv: np.ndarray) -> tuple[float, float]:
    clean = classifier.predict(x).argmax(1) == y
    fooled = clean & (classifier.predict(x_adv).argmax(1) != y)
    l2 = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)[fooled]
    return fooled.sum() / clean.sum(), float(np.median(l2)) if len(l2) else float("inf")


def test_jsma_gives_arts_images(small_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    classifier, x, y = small_model
    targets = np.eye(10)[(y + 1 + np.arange(len(y)) % 9) % 10]
    ours = SaliencyMapTorch(classifier, theta=1.0, gamma=0.1, batch_size=128, verbose=False).generate(x, targets)
    arts = SaliencyMapMethod(classifier, theta=1.0, gamma=0.1, batch_size=128, verbose=False).generate(x, targets)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert not np.array_equal(ours, x)
    np.testing.assert_array_equal(ours, arts)


@pytest.mark.slow  # ART / many Adam steps: ~1 minute on 2 cores
def test_line_search_cw_gives_arts_images(small_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    classifier, x, y = small_model
    x, y = x[:12], y[:12]
    settings = dict(confidence=0.0, binary_search_steps=9, max_iter=10, batch_size=128)
    ours = CarliniWagnerL2LineSearch(classifier, verbose=False, **settings).generate(x, np.eye(10)[y])
    arts = CarliniL2Method(classifier, verbose=False, **settings).generate(x, np.eye(10)[y])
    # Same steps: most images agree to float rounding; a line-search decision flipped by rounding can move a few.
    agree = np.abs(ours - arts).reshape(len(x), -1).max(axis=1) < 1e-4
    assert agree.mean() >= 0.9, agree
    (our_success, our_l2), (art_success, art_l2) = (_success_and_median_l2(classifier, x, y, a) for a in (ours, arts))
    assert our_success == art_success and our_success > 0.5
    assert our_l2 == pytest.approx(art_l2, rel=1e-2)


@pytest.fixture(scope="module")
def linear_model(digits_softmax: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """A softmax regression on digits: small enough for ART's C&W to run a high-confidence attack in a test."""
    data = load_dataset("digits")
    assert (digits_softmax.predict(data.x_test).argmax(1) == data.y_test).mean() > 0.9
    return digits_softmax, data.x_test[:10], data.y_test[:10]


@pytest.mark.slow  # ART / many Adam steps: ~1 minute on 2 cores
def test_adam_cw_is_at_least_as_strong_as_arts_at_high_confidence(linear_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    """C&W-hc's confidence with a smaller budget (3 x 500 steps, ~1 minute for ART here; measured: ours 100%, ART 0%).
    The full 9 x 1000 comparison is in benchmarks/bench_attacks.py."""
    classifier, x, y = linear_model
    settings = dict(confidence=10.0, binary_search_steps=3, max_iter=500, batch_size=128)
    ours = CarliniWagnerL2(classifier, learning_rate=5e-3, verbose=False, **settings).generate(x, np.eye(10)[y])
    arts = CarliniL2Method(classifier, verbose=False, **settings).generate(x, np.eye(10)[y])
    our_success, our_l2 = _success_and_median_l2(classifier, x, y, ours)
    art_success, art_l2 = _success_and_median_l2(classifier, x, y, arts)
    assert our_success >= art_success and our_success >= 0.9
    assert our_l2 <= art_l2 * 1.02 or art_success == 0, (our_l2, art_l2)
    # every image the attack changed is misclassified with the confidence margin
    changed = np.abs(ours - x).reshape(len(x), -1).max(axis=1) > 0
    logits = classifier.predict(ours)[changed]
    true_logit = logits[np.arange(len(logits)), y[changed]]
    others = np.where(np.eye(10, dtype=bool)[y[changed]], -np.inf, logits).max(axis=1)
    assert changed.any() and np.all(others - true_logit >= 10.0 - 1e-3)


def test_adam_cw_returns_failed_images_unchanged_and_checks_its_arguments(
        small_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    classifier, x, y = small_model
    unreachable = CarliniWagnerL2(classifier, confidence=1e6, binary_search_steps=1, max_iter=3,
                                  verbose=False).generate(x[:4], y[:4])
    np.testing.assert_array_equal(unreachable, x[:4])
    with pytest.raises(ValueError, match="Target labels `y` need to be provided"):
        CarliniWagnerL2(classifier, targeted=True).generate(x[:2])


def test_cw_starts_from_x_init_but_returns_x_where_it_fails(small_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    classifier, x, y = small_model
    x, y = x[:6], y[:6]
    first = CarliniWagnerL2LineSearch(classifier, binary_search_steps=5, max_iter=10, verbose=False).generate(
        x, np.eye(10)[y])
    attack = CarliniWagnerL2(classifier, binary_search_steps=2, max_iter=50, initial_const=10.0, learning_rate=5e-3,
                             batch_size=128, verbose=False)
    refined = attack.generate(x, np.eye(10)[y], x_init=first)
    fooled_before = classifier.predict(first).argmax(1) != y
    fooled_after = classifier.predict(refined).argmax(1) != y
    assert fooled_after[fooled_before].mean() >= 0.5
    assert np.all(np.abs(refined - x).max(axis=(1, 2, 3))[~fooled_after] == 0)


def test_warm_start_is_at_least_as_strong_at_no_larger_distortion(small_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    """Each binary-search step from the best image so far (not from the start image): the same images succeed, at
    a mean L2 no larger than the cold restarts' (issue 17's equal-strength rule; the full check is
    benchmarks/bench_cw_wb.py)."""
    classifier, x, y = small_model
    goal = np.eye(10)[(y + 3) % 10]
    settings = dict(targeted=True, binary_search_steps=4, max_iter=200, initial_const=1.0, learning_rate=5e-2,
                    batch_size=128, verbose=False)
    outputs = {warm: CarliniWagnerL2(classifier, warm_start=warm, **settings).generate(x, goal) for warm in (False, True)}
    hit = {warm: classifier.predict(adv).argmax(1) == goal.argmax(1) for warm, adv in outputs.items()}
    l2 = {warm: np.linalg.norm((adv - x).reshape(len(x), -1), axis=1) for warm, adv in outputs.items()}
    assert hit[True].sum() >= hit[False].sum() >= 0.9 * len(x)
    both = hit[True] & hit[False]
    assert l2[True][both].mean() <= 1.02 * l2[False][both].mean(), (l2[True][both].mean(), l2[False][both].mean())
    with pytest.raises(ValueError, match="warm_start"):
        CarliniWagnerL2(classifier, warm_start="yes")
