"""C&W's ``give_up`` rule: the same images as the full binary search wherever some image reaches the confidence, in
fewer steps; and the gray box's one-line reason when an attack has no pairs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pdm_bench.art_adapter import to_art_classifier
from pdm_bench.data import load_dataset
from pdm_bench.results import Metric
from pdm_bench.threat_models.attacks import CarliniWagnerL2
from pdm_bench.threat_models.gray import no_pairs_note


@pytest.fixture(scope="module")
def linear() -> tuple[Any, np.ndarray, np.ndarray]:
    """A softmax regression on digits: the logit lead an image can reach is bounded by the pixel box, so at a high
    confidence some images reach it and some cannot."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    model.embedding = torch.nn.Identity()
    classifier = to_art_classifier(model, input_shape=data.input_shape, nb_classes=10, device=torch.device("cpu"))
    x, y = data.x_test[:40], data.y_test[:40]
    return classifier, x, np.eye(10)[(y + 1) % 10]


class _Counting(CarliniWagnerL2):
    def observe(self, search_step: int, running: torch.Tensor, going_on: torch.Tensor, succeeded: torch.Tensor) -> None:
        self.rows = getattr(self, "rows", 0) + len(running)


@pytest.mark.parametrize("confidence", [30.0, 40.0])
def test_give_up_returns_the_full_searchs_images_in_fewer_steps(linear: tuple[Any, np.ndarray, np.ndarray],
                                                                  confidence: float) -> None:
    classifier, x, goal = linear
    settings = dict(confidence=confidence, targeted=True, binary_search_steps=9, max_iter=200, batch_size=128,
                    learning_rate=5e-2, initial_const=1e-2, verbose=False)
    full, quick = _Counting(classifier, **settings), _Counting(classifier, give_up=True, **settings)
    full_images, quick_images = full.generate(x, goal), quick.generate(x, goal)
    changed = (np.abs(full_images - x).reshape(len(x), -1).max(axis=1) > 0).sum()
    assert 0 < changed < len(x)  # some images reach the confidence, some cannot
    np.testing.assert_array_equal(quick_images, full_images)
    assert quick.rows < 0.95 * full.rows
    assert quick.closest_lead == full.closest_lead >= confidence


def test_give_up_is_a_checked_bool(linear: tuple[Any, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="give_up"):
        CarliniWagnerL2(linear[0], give_up="yes")  # type: ignore[arg-type]


def test_no_pairs_note_says_why() -> None:
    values = {("cw-hc", Metric.PAIRS_KEPT): 0.0, ("cw-hc", Metric.CLOSEST_LEAD): 7.364,
              ("fgsm-0.1", Metric.PAIRS_KEPT): 0.0, ("cw", Metric.PAIRS_KEPT): 12.0}

    def get(attack: str, metric: str) -> float:
        return values.get((attack, metric), float("nan"))

    assert no_pairs_note(get, "cw-hc") == ("cw-hc: no pairs, because no image reached the required logit lead of 10 "
                                           "over every other class (the closest reached 7.36; more search steps "
                                           "stopped helping)")
    assert no_pairs_note(get, "fgsm-0.1") == "fgsm-0.1: no pairs, because it fooled none of the correctly classified images"
    assert no_pairs_note(get, "cw") == ""
