"""Our attacks as drop-ins for ART's (issue 16): estimator types, preprocessing, data ranges, layouts, signatures,
parameter checks. ART's own classes on the same models are the reference."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch
from art.attacks.evasion import CarliniL2Method, SaliencyMapMethod
from art.estimators.classification import PyTorchClassifier, SklearnClassifier
from art.exceptions import EstimatorError

from pdm_bench.data import load_dataset
from pdm_bench.threat_models.attacks import CarliniWagnerL2
from pdm_bench.threat_models.cw_line_search import CarliniWagnerL2LineSearch
from pdm_bench.threat_models.jsma import SaliencyMapTorch

OURS_AND_ARTS = [(CarliniWagnerL2, CarliniL2Method), (CarliniWagnerL2LineSearch, CarliniL2Method),
                 (SaliencyMapTorch, SaliencyMapMethod)]
QUIET = dict(batch_size=64, verbose=False)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_dataset("digits")
    return data.x_train, data.y_train, data.x_test[:20], data.y_test[:20]


def _linear(x_train: np.ndarray, y_train: np.ndarray, *, scale: float = 1.0, shift: float = 0.0,
            mean: float = 0.0, std: float = 1.0) -> torch.nn.Module:
    """Softmax regression trained on ``((x * scale + shift) - mean) / std`` (the data as the classifier gets it)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    inputs = (torch.from_numpy(x_train) * scale + shift - mean) / std
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), torch.from_numpy(y_train)).backward()
        optimizer.step()
    return model


def _classifier(model: torch.nn.Module, **kwargs: Any) -> PyTorchClassifier:
    return PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                             device_type="cpu", **kwargs)


def _flipped(classifier: Any, x: np.ndarray, y: np.ndarray, adv: np.ndarray) -> tuple[int, float]:
    fooled = classifier.predict(adv).argmax(1) != y
    l2 = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)[fooled]
    return int(fooled.sum()), float(np.median(l2)) if len(l2) else 0.0


@pytest.mark.parametrize(("ours", "arts"), OURS_AND_ARTS)
def test_estimator_requirements_are_arts(ours: type, arts: type) -> None:
    assert ours._estimator_requirements == arts._estimator_requirements

    class ClassifierNoAPI:
        pass

    with pytest.raises(EstimatorError):
        ours(ClassifierNoAPI)


@pytest.mark.parametrize(("ours", "arts"), OURS_AND_ARTS)
def test_signature_defaults_and_attack_params_are_arts(ours: type, arts: type) -> None:
    art_parameters = list(inspect.signature(arts.__init__).parameters.values())
    our_parameters = list(inspect.signature(ours.__init__).parameters.values())
    assert [(p.name, p.default, p.kind) for p in our_parameters[:len(art_parameters)]] == \
        [(p.name, p.default, p.kind) for p in art_parameters]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in our_parameters[len(art_parameters):])
    assert ours.attack_params[:len(arts.attack_params)] == arts.attack_params


def test_positional_construction_as_in_art(digits: tuple[np.ndarray, ...]) -> None:
    classifier = _classifier(_linear(*digits[:2]), clip_values=(0.0, 1.0))
    for cls in (CarliniWagnerL2, CarliniWagnerL2LineSearch):
        attack = cls(classifier, 2.0, False, 0.02, 3, 7, 0.5, 4, 6, 16, False)
        assert (attack.confidence, attack.targeted, attack.learning_rate, attack.binary_search_steps, attack.max_iter,
                attack.initial_const, attack.max_halving, attack.max_doubling, attack.batch_size, attack.verbose) == \
            (2.0, False, 0.02, 3, 7, 0.5, 4, 6, 16, False)
    jsma = SaliencyMapTorch(classifier, 0.5, 0.2, 16, False)
    assert (jsma.theta, jsma.gamma, jsma.batch_size, jsma.verbose) == (0.5, 0.2, 16, False)


BAD_CW = [("binary_search_steps", "1.0"), ("binary_search_steps", -1), ("max_iter", "1.0"), ("max_iter", -1),
          ("max_halving", "1.0"), ("max_halving", -1), ("max_halving", 0), ("max_doubling", "1.0"),
          ("max_doubling", -1), ("batch_size", "1.0"), ("batch_size", -1), ("batch_size", 0)]
GOOD_CW = [("binary_search_steps", 0), ("max_iter", 0), ("learning_rate", 0.0), ("initial_const", 0.0)]


@pytest.mark.parametrize("cls", [CarliniWagnerL2, CarliniWagnerL2LineSearch])
def test_cw_parameters_are_checked_as_art_checks_them(cls: type, digits: tuple[np.ndarray, ...]) -> None:
    classifier = _classifier(_linear(*digits[:2]), clip_values=(0.0, 1.0))
    for name, value in BAD_CW:
        with pytest.raises(ValueError):
            CarliniL2Method(classifier, **{name: value})
        with pytest.raises(ValueError, match=f"`{name}`"):
            cls(classifier, **{name: value})
    x = digits[2][:3]
    for name, value in GOOD_CW:  # ART accepts these; so do we, and they run
        CarliniL2Method(classifier, **{name: value})
        attack = cls(classifier, **{name: value}, **QUIET)
        assert attack.generate(x).shape == x.shape
    attack = cls(classifier, **QUIET)
    for name, value in BAD_CW + [("verbose", "False")]:  # set_params validates too (ART's Attack.set_params)
        with pytest.raises(ValueError):
            attack.set_params(**{name: value})
    with pytest.raises(ValueError, match="cannot be set"):
        attack.set_params(no_such_parameter=1)
    if cls is CarliniWagnerL2:
        with pytest.raises(ValueError, match="abort_early"):
            cls(classifier, abort_early="yes")


def test_jsma_parameters_are_checked_as_art_checks_them(digits: tuple[np.ndarray, ...]) -> None:
    classifier = _classifier(_linear(*digits[:2]), clip_values=(0.0, 1.0))
    for name, value in [("gamma", -1), ("gamma", 0), ("gamma", 1.5), ("batch_size", -1), ("verbose", "False")]:
        with pytest.raises(ValueError):
            SaliencyMapMethod(classifier, **{name: value})
        with pytest.raises(ValueError, match=f"`{name}`"):
            SaliencyMapTorch(classifier, **{name: value})
    SaliencyMapTorch(classifier, theta=0.0)  # ART accepts a zero theta
    with pytest.raises(ValueError):
        SaliencyMapTorch(classifier, verbose=False).set_params(gamma=2.0)


class _Normalise(torch.nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def test_mean_std_preprocessing_is_attacked_like_art_does(digits: tuple[np.ndarray, ...]) -> None:
    """The line search (ART's algorithm) flips what ART's flips at the same L2; every attack gives what it gives
    on the same network with the normalisation as its first layer and no preprocessing."""
    x_train, y_train, x, y = digits
    mean, std = float(x_train.mean()), float(x_train.std())
    network = _linear(x_train, y_train, mean=mean, std=std)
    classifier = _classifier(network, clip_values=(0.0, 1.0), preprocessing=(mean, std))
    inlined = _classifier(torch.nn.Sequential(_Normalise(mean, std), network), clip_values=(0.0, 1.0))
    assert (classifier.predict(x).argmax(1) == y).mean() >= 0.9
    settings = dict(confidence=0.0, binary_search_steps=5, max_iter=10, batch_size=64)
    arts = CarliniL2Method(classifier, verbose=False, **settings).generate(x)
    art_flips, art_l2 = _flipped(classifier, x, y, arts)
    ours = CarliniWagnerL2LineSearch(classifier, verbose=False, **settings).generate(x)
    flips, l2 = _flipped(classifier, x, y, ours)
    assert flips >= art_flips >= len(x) // 2 and l2 <= art_l2 * 1.05, (flips, art_flips, l2, art_l2)
    targets = np.eye(10)[(y + 1) % 10]
    for make in (lambda c: CarliniWagnerL2(c, binary_search_steps=3, max_iter=100, **QUIET).generate(x),
                 lambda c: CarliniWagnerL2LineSearch(c, **settings | {"verbose": False}).generate(x),
                 lambda c: SaliencyMapTorch(c, theta=1.0, gamma=0.2, **QUIET).generate(x, targets)):
        adv = make(classifier)
        np.testing.assert_allclose(adv, make(inlined), atol=1e-4)
        assert adv.min() >= 0.0 and adv.max() <= 1.0 and _flipped(classifier, x, y, adv)[0] >= len(x) // 2


@pytest.mark.parametrize(("clip", "scale", "shift"), [(None, 255.0, 0.0), ((0.0, 255.0), 255.0, 0.0),
                                                      ((-1.0, 1.0), 2.0, -1.0), ((0.0, 1.0), 1.0, 0.0)])
def test_images_stay_in_the_datas_range_and_nothing_is_rescaled(clip: tuple[float, float] | None, scale: float,
                                                                shift: float, digits: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, x, y = digits
    model = _linear(x_train, y_train, scale=scale, shift=shift)
    classifier = _classifier(model, clip_values=clip)
    data = (x * scale + shift).astype(np.float32)
    low, high = clip if clip is not None else (float(data.min()), float(data.max()))  # ART's range without clip_values
    adam = CarliniWagnerL2(classifier, binary_search_steps=5, max_iter=50, initial_const=1.0,
                           learning_rate=0.01 * (high - low), **QUIET).generate(data)
    ours = CarliniWagnerL2LineSearch(classifier, binary_search_steps=5, max_iter=10, **QUIET).generate(data)
    arts = CarliniL2Method(classifier, binary_search_steps=5, max_iter=10, **QUIET).generate(data)
    np.testing.assert_allclose(ours, arts, atol=1e-4 * (high - low))  # ART's algorithm: ART's images
    for adv in (adam, ours):
        assert adv.min() >= low - 1e-4 * (high - low) and adv.max() <= high + 1e-4 * (high - low)
        untouched = np.abs(adv - data).reshape(len(x), -1).max(axis=1) == 0  # failures come back as they were
        clean = classifier.predict(data).argmax(1)  # untargeted, no y: away from the prediction
        assert untouched.all() or np.all(classifier.predict(adv[~untouched]).argmax(1) != clean[~untouched])
    assert _flipped(classifier, data, y, adam)[0] >= len(x) // 2
    targets = np.eye(10)[(y + 1) % 10]
    ours = SaliencyMapTorch(classifier, theta=0.5 * (high - low), gamma=0.3, **QUIET).generate(data, targets)
    arts = SaliencyMapMethod(classifier, theta=0.5 * (high - low), gamma=0.3, **QUIET).generate(data, targets)
    np.testing.assert_allclose(ours, arts, atol=1e-5 * (high - low))


class _ChannelsLast(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


def test_channels_last_input(digits: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, x, y = digits
    classifier = PyTorchClassifier(_ChannelsLast(_linear(x_train, y_train)), loss=torch.nn.CrossEntropyLoss(),
                                   input_shape=(8, 8, 1), nb_classes=10, clip_values=(0.0, 1.0),
                                   channels_first=False, device_type="cpu")
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    settings = dict(binary_search_steps=5, max_iter=10, batch_size=64)
    ours = CarliniWagnerL2LineSearch(classifier, verbose=False, **settings).generate(nhwc)
    arts = CarliniL2Method(classifier, verbose=False, **settings).generate(nhwc)
    assert ours.shape == nhwc.shape
    assert _flipped(classifier, nhwc, y, ours)[0] == _flipped(classifier, nhwc, y, arts)[0] >= len(x) // 2
    adam = CarliniWagnerL2(classifier, binary_search_steps=3, max_iter=100, **QUIET).generate(nhwc)
    assert _flipped(classifier, nhwc, y, adam)[0] >= len(x) // 2


def test_a_scikit_learn_classifier_runs_through_the_general_path(digits: tuple[np.ndarray, ...]) -> None:
    from sklearn.linear_model import LogisticRegression

    x_train, y_train, x, y = (a.reshape(len(a), -1) if a.ndim > 1 else a for a in digits)
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    classifier = SklearnClassifier(model, clip_values=(0.0, 1.0))
    assert (classifier.predict(x).argmax(1) == y).mean() >= 0.9
    settings = dict(binary_search_steps=5, max_iter=10, batch_size=64, initial_const=1.0)
    ours = CarliniWagnerL2LineSearch(classifier, verbose=False, **settings).generate(x)
    arts = CarliniL2Method(classifier, verbose=False, **settings).generate(x)
    np.testing.assert_allclose(ours, arts, atol=1e-5)  # the same algorithm on the same gradients: ART's images
    assert _flipped(classifier, x, y, ours)[0] >= len(x) // 2
    adam = CarliniWagnerL2(classifier, binary_search_steps=5, max_iter=100, initial_const=1.0, learning_rate=0.05,
                           **QUIET).generate(x)
    assert _flipped(classifier, x, y, adam)[0] >= len(x) // 2
    targets = np.eye(10)[(y + 1) % 10]
    ours = SaliencyMapTorch(classifier, theta=1.0, gamma=0.2, **QUIET).generate(x, targets)
    arts = SaliencyMapMethod(classifier, theta=1.0, gamma=0.2, **QUIET).generate(x, targets)
    np.testing.assert_allclose(ours, arts, atol=1e-5)


def test_per_feature_clip_values(digits: tuple[np.ndarray, ...]) -> None:
    """ART allows clip_values per feature; the images respect each feature's bounds (ART's C&W does too; its JSMA
    fails on them, ours handles them)."""
    x_train, y_train, x, y = digits
    high = np.ones((1, 8, 8), dtype=np.float32)
    high[..., 4:] = 0.75  # the right half may not go above 0.75
    data = np.minimum(x, high)
    classifier = _classifier(_linear(x_train, y_train), clip_values=(np.zeros_like(high), high))
    targets = np.eye(10)[(y + 1) % 10]
    ours = SaliencyMapTorch(classifier, theta=1.0, gamma=0.2, **QUIET).generate(data, targets)
    assert (classifier.predict(ours).argmax(1) == targets.argmax(1)).mean() >= 0.5
    line = CarliniWagnerL2LineSearch(classifier, binary_search_steps=5, max_iter=10, **QUIET).generate(data)
    np.testing.assert_allclose(line, CarliniL2Method(classifier, binary_search_steps=5, max_iter=10, **QUIET).generate(data),
                               atol=1e-4)
    adam = CarliniWagnerL2(classifier, binary_search_steps=3, max_iter=100, **QUIET).generate(data)
    for adv in (ours, line, adam):
        assert np.all(adv >= 0) and np.all(adv <= high + 1e-6)
    assert _flipped(classifier, data, y, adam)[0] >= len(x) // 2


def test_preprocessing_defences_on_both_paths(digits: tuple[np.ndarray, ...]) -> None:
    """A torch preprocessing defence runs on the fast path (gradients through its forward, as ART's class_gradient
    takes them), a numpy one (ART's SpatialSmoothing) on the general path: both give ART's images."""
    from art.defences.preprocessor import SpatialSmoothing
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch

    from pdm_bench.threat_models.estimator_paths import estimator_path

    class Blur(PreprocessorPyTorch):
        def __init__(self) -> None:
            super().__init__(device_type="cpu", apply_fit=False, apply_predict=True)

        def forward(self, x: torch.Tensor, y: Any = None) -> tuple[torch.Tensor, Any]:
            return torch.nn.functional.avg_pool2d(x, 3, 1, 1), y

    x_train, y_train, x, y = digits
    network, targets = _linear(x_train, y_train), np.eye(10)[(y + 1) % 10]
    for defence, fast in ((Blur(), True), (SpatialSmoothing(window_size=3, clip_values=(0.0, 1.0)), False)):
        classifier = _classifier(network, clip_values=(0.0, 1.0), preprocessing_defences=[defence],
                                 preprocessing=(0.1, 0.9))
        assert estimator_path(classifier).fast is fast
        ours = SaliencyMapTorch(classifier, theta=1.0, gamma=0.2, **QUIET).generate(x, targets)
        arts = SaliencyMapMethod(classifier, theta=1.0, gamma=0.2, **QUIET).generate(x, targets)
        np.testing.assert_array_equal(ours, arts)
        settings = dict(binary_search_steps=3, max_iter=5, **QUIET)
        ours = CarliniWagnerL2LineSearch(classifier, **settings).generate(x)
        np.testing.assert_allclose(ours, CarliniL2Method(classifier, **settings).generate(x), atol=1e-5)
        assert (classifier.predict(ours).argmax(1) != classifier.predict(x).argmax(1)).any()
