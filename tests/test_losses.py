"""Each loss against values computed by hand on tiny tensors, and the Siamese partner sampling."""

from __future__ import annotations

import math

import pytest
import torch

from pdm_bench.defenses.base import TrainContext
from pdm_bench.defenses.losses import (
    ClassGroups,
    cross_entropy,
    reduce_variance_loss,
    reverse_cross_entropy,
    sample_partners_from_dataset,
    sample_partners_in_batch,
    siamese_loss,
)
from pdm_bench.defenses.pdm import PDM
from pdm_bench.defenses.siamese_rvl import SiameseRVL
from pdm_bench.errors import UserError
from pdm_bench.models import ModelSpec, build_model


def test_cross_entropy_by_hand() -> None:
    z = torch.tensor([[0.0, math.log(2.0), 0.0]])  # softmax = (1/4, 1/2, 1/4)
    assert cross_entropy(z, torch.tensor([1])).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_reverse_cross_entropy_by_hand() -> None:
    z = torch.tensor([[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0]])
    # sample 0, y=0: R = (0, 1/2, 1/2): -(1/2 log 1/2 + 1/2 log 1/4) = 1.5 log 2; sample 1: log 3
    expected = (1.5 * math.log(2.0) + math.log(3.0)) / 2
    assert reverse_cross_entropy(z, torch.tensor([0, 2]), 3).item() == pytest.approx(expected, abs=1e-6)


def test_reverse_cross_entropy_is_minimised_by_a_low_true_logit() -> None:
    y = torch.tensor([0])
    low_true = torch.tensor([[-5.0, 0.0, 0.0]])
    high_true = torch.tensor([[5.0, 0.0, 0.0]])
    assert reverse_cross_entropy(low_true, y, 3) < reverse_cross_entropy(high_true, y, 3)


def test_siamese_loss_by_hand() -> None:
    z1 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # pair 0: cos 0, s=0 -> 0; pair 1: cos 1/sqrt(2), s=1 -> 1 - 1/sqrt(2)
    expected = (0.0 + (1 - 1 / math.sqrt(2))) / 2
    assert siamese_loss(z1, z2, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)
    assert siamese_loss(z1, z2, torch.tensor([1, 0])).item() == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2, abs=1e-6)


def test_reduce_variance_loss_by_hand() -> None:
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 5.0], [0.0, 7.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 1])
    # class 0: mu (1,0), distances 1, 1 -> sigma 1; class 1: mu (0,5), distances 2, 0, 2 -> sigma 4/3
    mean = reduce_variance_loss(z, y, 4)  # classes 2 and 3 are absent and do not count
    assert mean.item() == pytest.approx((1 + 4 / 3) / 2, abs=1e-6)
    assert reduce_variance_loss(z, y, 4, reduction="sum").item() == pytest.approx(1 + 4 / 3, abs=1e-6)
    mean.backward()
    assert torch.isfinite(z.grad).all()  # the point sitting exactly on its class mean has a zero-norm residual


def test_reduce_variance_loss_singleton_class_has_finite_gradient() -> None:
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    loss = reduce_variance_loss(z, torch.tensor([0, 1, 1]), 2)
    assert loss.item() == pytest.approx(math.sqrt(2) / 2, abs=1e-6)  # sigma_0 = 0, sigma_1 = sqrt(2); mean of two
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad[0].abs().sum() == 0


def test_in_batch_partners_follow_q() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(20)
    idx, same = sample_partners_in_batch(y, 1.0, g)
    assert bool((y[idx] == y).all()) and bool((idx != torch.arange(len(y))).all()) and bool(same.all())
    idx, same = sample_partners_in_batch(y, 0.0, g)
    assert bool((y[idx] != y).all()) and not bool(same.any())
    _, same = sample_partners_in_batch(torch.arange(10).repeat(200), 0.3, g)
    assert same.float().mean().item() == pytest.approx(0.3, abs=0.03)


def test_in_batch_partner_falls_back_when_the_wanted_kind_is_missing() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 1])  # sample 0 has no same-class partner
    idx, same = sample_partners_in_batch(y, 1.0, g)
    assert idx[0] != 0 and same[0] == 0 and same[1] == 1 and idx[1] == 2
    idx, same = sample_partners_in_batch(torch.tensor([4, 4]), 0.0, g)  # no other class at all
    assert idx.tolist() == [1, 0] and same.tolist() == [1, 1]


def test_dataset_partners_follow_q() -> None:
    g = torch.Generator().manual_seed(0)
    train_y = torch.arange(5).repeat(30)
    groups = ClassGroups.of(train_y, 5)
    y = torch.arange(5).repeat(400)
    idx, same = sample_partners_from_dataset(y, 1.0, groups, g)
    assert bool((train_y[idx] == y).all()) and bool(same.all())
    idx, same = sample_partners_from_dataset(y, 0.0, groups, g)
    assert bool((train_y[idx] != y).all())
    idx, same = sample_partners_from_dataset(y, 0.5, groups, g)
    assert bool(((train_y[idx] == y).long() == same).all())
    assert same.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert len(set(idx.tolist())) > 100  # draws from the whole set


@pytest.mark.parametrize("partners", ["batch", "dataset"])
def test_pdm_terms_and_gradients(partners: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(depth=8, width=4, in_channels=1, num_classes=3), negate_logits=True)
    train_x, train_y = torch.rand(30, 1, 8, 8), torch.arange(3).repeat(10)
    context = TrainContext(3, train_x, train_y, torch.Generator().manual_seed(1))
    terms = PDM(partners=partners).loss(model, train_x[:12], train_y[:12], context)
    assert set(terms) == {"cls", "cls2", "siam", "rvl"}
    total = sum(terms.values())
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    emb, z = model.embed_and_logits(train_x[:4])
    assert torch.allclose(model(train_x[:4]), -z)  # PDM predicts with the negated logits


def test_defense_options_parse_and_validate() -> None:
    pdm = PDM.from_options({"q": "0.7", "partners": "dataset", "rvl_reduction": "sum"})
    assert (pdm.q, pdm.partners, pdm.rvl_reduction) == (0.7, "dataset", "sum")
    with pytest.raises(UserError, match="Unknown option of defense 'pdm' 'qq'. Did you mean: q?"):
        PDM.from_options({"qq": "0.7"})
    with pytest.raises(UserError, match="must be one of batch, dataset; got 'pool'"):
        SiameseRVL.from_options({"partners": "pool"})
    with pytest.raises(UserError, match="expects float, got 'high'"):
        PDM.from_options({"rvl_weight": "high"})
    with pytest.raises(UserError, match=r"q must be in \[0, 1\], got 1.5"):
        PDM.from_options({"q": "1.5"})
