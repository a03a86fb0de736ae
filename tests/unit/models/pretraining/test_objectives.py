"""The objectives against values worked by hand from their definitions."""
import math

import pytest
import torch

from lavis_glscl.models.pretraining import objectives


def ce(logits, target):
    """-log softmax(logits)[target], by hand."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def nsl_by_hand(sim, tau):
    n = len(sim)
    rows = sum(ce([sim[i][j] / tau for j in range(n)], i) for i in range(n)) / n
    cols = sum(ce([sim[i][j] / tau for i in range(n)], j) for j in range(n)) / n
    return rows + cols


def test_norm_softmax_loss_identity_is_twice_log_one_plus_inverse_e():
    loss = objectives.norm_softmax_loss(torch.eye(2), 1.0)
    assert loss.item() == pytest.approx(2 * math.log(1 + math.exp(-1)), abs=1e-6)


def test_norm_softmax_loss_is_sum_of_row_and_column_means_2x2():
    # rows: log(1+e^-0.6) twice; columns: log(1+e^-0.8) and log(1+e^-0.4)
    sim = [[0.5, 0.2], [0.1, 0.4]]
    expected = math.log(1 + math.exp(-0.6)) + (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(-0.4))) / 2
    assert objectives.norm_softmax_loss(torch.tensor(sim), 0.5).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(nsl_by_hand(sim, 0.5), abs=1e-12)


def test_norm_softmax_loss_3x3_and_shape_check():
    sim = [[0.9, 0.1, -0.3], [0.2, 0.4, 0.5], [0.0, -0.1, 0.7]]
    assert objectives.norm_softmax_loss(torch.tensor(sim), 0.1).item() == pytest.approx(nsl_by_hand(sim, 0.1), rel=1e-5)
    with pytest.raises(ValueError):
        objectives.norm_softmax_loss(torch.zeros(2, 3), 1.0)


def test_mgsc_loss_normalises_and_contrasts_predictions_with_targets():
    pred = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # unit rows: (0.6, 0.8), (1, 0)
    target = torch.tensor([[0.0, 2.0], [1.0, 1.0]])  # unit rows: (0, 1), (1, 1)/sqrt(2)
    r = 1 / math.sqrt(2)
    sim = [[0.8, 0.6 * r + 0.8 * r], [0.0, r]]
    assert objectives.mgsc_loss(pred, target, 0.03).item() == pytest.approx(nsl_by_hand(sim, 0.03), rel=1e-5)


def test_mgsc_loss_sends_no_gradient_to_its_target():
    pred = torch.randn(3, 4, requires_grad=True)
    target = torch.randn(3, 4, requires_grad=True)
    objectives.mgsc_loss(pred, target, 0.03).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None


def test_mltc_loss_uses_only_masked_positions():
    # one sample, three tokens; positions 0 and 2 are masked, position 1 must not matter
    pred = torch.tensor([[[1.0, 0.0], [5.0, 5.0], [0.0, 2.0]]])
    target = torch.tensor([[[2.0, 0.0], [-7.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False, True]])
    r = 1 / math.sqrt(2)
    sim = [[1.0, r], [0.0, r]]  # pred tokens (1,0), (0,1) vs target tokens (1,0), (r,r)
    loss = objectives.mltc_loss(pred, target, mask, 0.03)
    assert loss.item() == pytest.approx(nsl_by_hand(sim, 0.03), rel=1e-5)
    changed = pred.clone()
    changed[0, 1] = torch.tensor([-3.0, 9.0])
    assert objectives.mltc_loss(changed, target, mask, 0.03).item() == pytest.approx(loss.item(), rel=1e-6)


def test_mltc_loss_sends_no_gradient_to_its_target_and_is_zero_without_masks():
    pred = torch.randn(2, 5, 3, requires_grad=True)
    target = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    objectives.mltc_loss(pred, target, mask, 0.03).backward()
    assert target.grad is None
    assert pred.grad[0, 1].abs().sum() > 0 and pred.grad[0, 0].abs().sum() == 0
    empty = objectives.mltc_loss(pred, target, torch.zeros(2, 5, dtype=torch.bool), 0.03)
    assert empty.item() == 0.0 and empty.requires_grad


def test_itc_loss_is_norm_softmax_of_cosines():
    image = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    r = 1 / math.sqrt(2)
    sim = [[1.0, 0.0], [r, r]]
    assert objectives.itc_loss(image, text, 0.07).item() == pytest.approx(nsl_by_hand(sim, 0.07), rel=1e-5)


def test_itm_and_mlm_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = (ce([2.0, 0.0], 1) + ce([0.0, 1.0], 1)) / 2
    assert objectives.itm_loss(logits, torch.tensor([1, 1])).item() == pytest.approx(expected, rel=1e-6)
    vocab_logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [3.0, 1.0, 1.0]])
    labels = torch.tensor([2, -100, 0])
    mean = (ce([1.0, 2.0, 3.0], 2) + ce([3.0, 1.0, 1.0], 0)) / 2
    assert objectives.mlm_loss(vocab_logits, labels).item() == pytest.approx(mean, rel=1e-6)
    assert objectives.mlm_loss(vocab_logits, labels, normalizer=4.0).item() == pytest.approx(mean / 2, rel=1e-6)
    assert objectives.mlm_loss(vocab_logits, torch.full((3,), -100)).item() == 0.0
