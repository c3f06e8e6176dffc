"""mlrpl.losses: hand-computed values, unknown entries ignored, shapes, and graphs when empty."""
import math

import pytest
import torch

from mlrpl.losses import (asymmetric_loss, cooccurrence_focal, instance_contrastive, partial_bce,
                          ranking_loss, soft_partial_bce, zero_loss)


def test_partial_bce_ignores_unknowns_and_averages_over_known():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    got = partial_bce(logits, torch.tensor([[1, 0, -1]]))
    want = (math.log(2) + math.log(1 + math.e ** -1)) / 2
    assert got.item() == pytest.approx(want, abs=1e-6)
    empty = partial_bce(logits.requires_grad_(), torch.zeros(1, 3))
    assert empty.item() == 0 and empty.requires_grad


def test_soft_partial_bce_weights_and_soft_targets():
    logits = torch.tensor([[0.0, math.log(3.0)]])          # p = 0.5, 0.75
    t = torch.tensor([[0.5, 0.25]])
    got = soft_partial_bce(logits, t, torch.tensor([[0.0, 1.0]]))
    want = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert got.item() == pytest.approx(want, abs=1e-6)
    both = soft_partial_bce(logits, t, torch.ones(1, 2))
    assert both.item() == pytest.approx((math.log(2) + want) / 2, abs=1e-6)


def test_asymmetric_loss_hand_values():
    logits = torch.tensor([[0.0, 0.0, 0.0]])               # p = 0.5 everywhere
    target = torch.tensor([[1, -1, 0]])
    pos = -(0.5 ** 1) * math.log(0.5)                       # gamma+ = 1
    neg = -(0.45 ** 4) * math.log(0.55)                     # p_m = 0.5 - 0.05, gamma- = 4
    got = asymmetric_loss(logits, target, gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    assert got.item() == pytest.approx((pos + neg) / 2, abs=1e-6)      # mean over known
    total = asymmetric_loss(logits, target, gamma_pos=1.0, gamma_neg=4.0, clip=0.05,
                            reduction="sum")
    assert total.item() == pytest.approx(pos + neg, abs=1e-6)
    # two images: the mean divides by the known entries (4), not by B·C (6), nor by the images
    logits2 = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 5.0, 0.0]])     # p(log 3) = 0.75
    target2 = torch.tensor([[1, -1, 0], [1, 0, -1]])
    pos75 = -(0.25 ** 1) * math.log(0.75)
    got2 = asymmetric_loss(logits2, target2, gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    assert got2.item() == pytest.approx((pos + neg + pos75 + neg) / 4, abs=1e-6)
    assert got2.item() == pytest.approx(0.1168811, abs=1e-6)                 # the number itself
    # gamma = 0, clip = 0: plain BCE on known entries
    plain = asymmetric_loss(torch.tensor([[1.0, -2.0]]), torch.tensor([[1, -1]]), 0.0, 0.0, 0.0)
    assert plain.item() == pytest.approx(partial_bce(torch.tensor([[1.0, -2.0]]),
                                                     torch.tensor([[1, -1]])).item(), abs=1e-6)


def test_asymmetric_loss_soft_positive_splits_the_two_parts():
    got = asymmetric_loss(torch.tensor([[0.0]]), torch.tensor([[0.6]]), 0.0, 0.0, 0.0)
    assert got.item() == pytest.approx(0.6 * math.log(2) + 0.4 * math.log(2), abs=1e-6)


def test_shapes_of_every_loss():
    b, c, d = 3, 4, 5
    logits = torch.randn(b, c, requires_grad=True)
    target = torch.tensor([[1, -1, 0, 1], [0, 1, -1, -1], [1, 1, 0, 0]])
    for value in (partial_bce(logits, target), asymmetric_loss(logits, target),
                  soft_partial_bce(logits, target.clamp(min=0).float(), target != 0),
                  ranking_loss(logits, target),
                  instance_contrastive(torch.randn(b, c, d, requires_grad=True), target)):
        assert value.shape == () and value.requires_grad
    assert cooccurrence_focal(torch.zeros(b, 6), torch.ones(b, 6)).shape == (b, 6)
    assert zero_loss(logits).shape == () and zero_loss(logits).item() == 0
