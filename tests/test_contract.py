"""The model contract: our ResNet satisfies it, ``wrap`` makes a user's network satisfy it (also through ART)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from pdm_bench.contract import (
    EMBEDDING_LAYER,
    EmbeddingClassifier,
    WrappedModel,
    check_classifier,
    model_fingerprint,
    wrap,
)
from pdm_bench.errors import UserError
from pdm_bench.models import ModelSpec, build_model

INPUT_SHAPE = (1, 8, 8)


class UserNet(nn.Module):
    """A user's classifier with named parts; its embedding is the output of ``pool`` (flattened)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, num_classes)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def _inputs(n: int = 5) -> torch.Tensor:
    return torch.rand((n, *INPUT_SHAPE), generator=torch.Generator().manual_seed(0))


def _net() -> UserNet:
    torch.manual_seed(0)
    return UserNet().eval()


def test_resnet_satisfies_the_protocol() -> None:
    resnet = build_model(ModelSpec(depth=8, width=4, in_channels=1, num_classes=10))
    assert isinstance(resnet, EmbeddingClassifier)
    assert isinstance(getattr(resnet, EMBEDDING_LAYER), nn.Identity)
    assert not isinstance(nn.Linear(2, 2), EmbeddingClassifier)
    check_classifier(resnet, input_shape=INPUT_SHAPE, num_classes=10, device="cpu")


def test_wrapped_user_model_embeds_and_predicts_like_the_network() -> None:
    net, x = _net(), _inputs()
    wrapped = wrap(net, embedding="pool")
    assert isinstance(wrapped, EmbeddingClassifier) and wrapped.network is net
    expected_embedding = torch.flatten(net.pool(net.features(x)), 1)
    embedding, raw = wrapped.embed_and_logits(x)
    torch.testing.assert_close(embedding, expected_embedding)
    torch.testing.assert_close(wrapped.embed(x), expected_embedding)
    torch.testing.assert_close(raw, net(x))
    torch.testing.assert_close(wrapped(x), net(x))
    negated = wrap(net, embedding="pool", negate_logits=True)
    assert float(negated.logit_sign) == -1.0
    torch.testing.assert_close(negated(x), -net(x))
    torch.testing.assert_close(negated.embed_and_logits(x)[1], net(x))  # raw logits stay raw


def test_gradients_flow_to_the_input_through_embed() -> None:
    wrapped = wrap(_net(), embedding="pool")
    x = _inputs().requires_grad_(True)
    wrapped.embed(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_embedding_is_not_changed_by_a_later_in_place_op() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))
    x = _inputs()
    expected = net[1](net[0](x))
    torch.testing.assert_close(wrap(net, embedding="1").embed(x), expected)  # negative entries survive the ReLU


def test_sequential_layer_by_index_and_copies() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 10))
    x = _inputs()
    wrapped = wrap(net, embedding="2")
    assert wrapped.embed(x).shape == (5, 12)
    clone = copy.deepcopy(wrapped)
    with torch.no_grad():
        clone.network[4].weight.zero_()
    torch.testing.assert_close(clone.embed(x), wrapped.embed(x))
    torch.testing.assert_close(clone(x), clone.network[4].bias.expand(5, 10))
    assert not torch.equal(wrapped(x), clone(x))


def test_art_get_activations_returns_the_embedding() -> None:
    wrapped = wrap(_net(), embedding="pool", negate_logits=True)
    classifier = PyTorchClassifier(model=wrapped, loss=nn.CrossEntropyLoss(), input_shape=INPUT_SHAPE, nb_classes=10,
                                   clip_values=(0.0, 1.0))
    x = _inputs(11)
    activations = classifier.get_activations(x.numpy(), EMBEDDING_LAYER, batch_size=8, framework=False)
    with torch.no_grad():
        expected = wrapped.embed(x).numpy()
        logits = wrapped(x).numpy()
    assert activations.shape == expected.shape == (11, 4)
    np.testing.assert_allclose(activations, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(classifier.predict(x.numpy()), logits, rtol=1e-5, atol=1e-6)


def test_wrap_an_embedding_classifier_keeps_its_raw_logits_and_sign() -> None:
    resnet = build_model(ModelSpec(depth=8, width=4, in_channels=1, num_classes=10), negate_logits=True).eval()
    wrapped = wrap(resnet, embedding="embedding")
    x = _inputs()
    with torch.no_grad():
        embedding, raw = wrapped.embed_and_logits(x)
        expected_embedding, expected_raw = resnet.embed_and_logits(x)
        torch.testing.assert_close(embedding, expected_embedding)
        torch.testing.assert_close(raw, expected_raw)
        torch.testing.assert_close(wrapped(x), resnet(x))


def test_bad_layer_name_is_a_one_line_user_error_listing_the_layers() -> None:
    with pytest.raises(UserError) as caught:
        wrap(_net(), embedding="pol")
    message = str(caught.value)
    assert "\n" not in message and "'pol'" in message
    assert "Did you mean: pool" in message
    for layer in ("features", "features.0", "pool", "head"):
        assert layer in message
    with pytest.raises(UserError, match="torch.nn.Module"):
        wrap(object(), embedding="pool")  # type: ignore[arg-type]


def test_long_layer_lists_are_truncated() -> None:
    net = nn.Sequential(*[nn.ReLU() for _ in range(100)])
    with pytest.raises(UserError) as caught:
        wrap(net, embedding="layer7")
    message = str(caught.value)
    assert "\n" not in message and "more" in message and ", 99" in message and ", 50," not in message


def test_layer_off_the_forward_path_is_a_clear_runtime_error() -> None:
    wrapped = wrap(_net(), embedding="unused")
    with pytest.raises(RuntimeError, match="did not run"):
        wrapped.embed(_inputs())
    with pytest.raises(UserError, match="did not run"):
        check_classifier(wrapped, input_shape=INPUT_SHAPE, num_classes=10, device="cpu")


def test_model_fingerprint_is_stable_and_tracks_weights() -> None:
    net = _net()
    first = model_fingerprint(net)
    assert len(first) == 16 and int(first, 16) >= 0
    assert model_fingerprint(net) == first == model_fingerprint(copy.deepcopy(net))
    with torch.no_grad():
        net.head.weight[0, 0] += 1e-3
    assert model_fingerprint(net) != first
    assert model_fingerprint(wrap(net, embedding="pool")) != model_fingerprint(wrap(net, embedding="features"))


def test_check_classifier_accepts_a_good_model_and_restores_its_mode() -> None:
    wrapped = wrap(_net(), embedding="pool").train()
    wrapped.network.features.eval()  # a mixed-mode model keeps its modes
    check_classifier(wrapped, input_shape=INPUT_SHAPE, num_classes=10, device="cpu")
    assert wrapped.training and wrapped.network.head.training and not wrapped.network.features.training


def test_check_classifier_rejects_wrong_class_count_and_non_classifiers() -> None:
    wrapped = wrap(UserNet(num_classes=7), embedding="pool")
    with pytest.raises(UserError) as caught:
        check_classifier(wrapped, input_shape=INPUT_SHAPE, num_classes=10, device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "(2, 7)" in message and "(2, 10)" in message
    with pytest.raises(UserError, match="wrap"):
        check_classifier(UserNet(), input_shape=INPUT_SHAPE, num_classes=10, device="cpu")
    with pytest.raises(UserError) as caught:  # wrong input channels: torch's multi-line error becomes one line
        check_classifier(wrapped, input_shape=(3, 8, 8), num_classes=7, device="cpu")
    assert "\n" not in str(caught.value)
    assert isinstance(wrapped, WrappedModel)
