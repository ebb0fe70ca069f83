"""C&W's ``closest_lead`` (the largest margin any image reached) and the gray box's one-line reason when an attack
has no pairs."""

from __future__ import annotations

from typing import Any

import numpy as np

from pdm_bench.data import load_dataset
from pdm_bench.results import Metric
from pdm_bench.threat_models.attacks import CarliniWagnerL2
from pdm_bench.threat_models.gray import no_pairs_note


def test_closest_lead_is_the_largest_margin_reached(digits_softmax: Any) -> None:
    """A softmax regression on digits: the margin an image can reach is bounded by the pixel box; at a confidence
    no image reaches, every image comes back unchanged and ``closest_lead`` says how close the best one came."""
    classifier, data = digits_softmax, load_dataset("digits")
    x, y = data.x_test[:20], data.y_test[:20]
    goal = np.eye(10)[(y + 1) % 10]
    settings = dict(targeted=True, binary_search_steps=6, max_iter=100, batch_size=128, learning_rate=5e-2,
                    initial_const=1e-2, verbose=False)
    reachable = CarliniWagnerL2(classifier, confidence=5.0, **settings)
    assert not np.array_equal(reachable.generate(x, goal), x) and reachable.closest_lead >= 5.0
    unreachable = CarliniWagnerL2(classifier, confidence=1000.0, **settings)
    np.testing.assert_array_equal(unreachable.generate(x, goal), x)
    assert 5.0 <= unreachable.closest_lead < 1000.0


def test_no_pairs_note_says_why() -> None:
    values = {("cw-hc", Metric.PAIRS_KEPT): 0.0, ("cw-hc", Metric.CLOSEST_LEAD): 7.364,
              ("fgsm-0.1", Metric.PAIRS_KEPT): 0.0, ("cw", Metric.PAIRS_KEPT): 12.0}

    def get(attack: str, metric: str) -> float:
        return values.get((attack, metric), float("nan"))

    assert no_pairs_note(get, "cw-hc") == ("cw-hc: no pairs, because no image reached the confidence: a logit margin "
                                           "of 10 for the adversarial class (the largest any image reached was 7.36)")
    assert no_pairs_note(get, "fgsm-0.1") == "fgsm-0.1: no pairs, because it fooled none of the correctly classified images"
    assert no_pairs_note(get, "cw") == ""
