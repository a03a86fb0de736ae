"""The objectives against values worked by hand from their definitions."""
import math

import pytest
import torch

from lavis_glscl.models.pretraining import objectives
from lavis_glscl.models.glscl.group_contrast import group_contrastive_loss, group_text_separation_loss


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


def test_group_contrastive_loss_is_itc_inside_each_group_by_hand():
    """Two groups of two: each image against its group's two texts and each text against its group's two images,
    mean over the 4 rows per direction, summed (as ITC).  Embeddings are unit vectors at angles, so the cosines are
    cos(a - b)."""
    angles_image, angles_text = [0.0, 1.0, 0.3, 2.0], [0.2, 0.9, 1.5, 0.1]
    unit = lambda angles: torch.tensor([[math.cos(a), math.sin(a)] for a in angles])  # noqa: E731
    tau = 0.5
    image_rows = text_rows = 0.0
    for group in (0, 2):
        sim = [[math.cos(angles_image[group + i] - angles_text[group + j]) / tau for j in range(2)] for i in range(2)]
        image_rows += sum(ce(sim[i], i) for i in range(2))
        text_rows += sum(ce([sim[i][j] for i in range(2)], j) for j in range(2))
    expected = image_rows / 4 + text_rows / 4
    loss = group_contrastive_loss(3.0 * unit(angles_image), unit(angles_text), 2, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # one group of the whole batch is the batch-wide ITC
    whole = group_contrastive_loss(unit(angles_image), unit(angles_text), 4, tau)
    assert whole.item() == pytest.approx(objectives.norm_softmax_loss(unit(angles_image) @ unit(angles_text).t(),
                                                                       tau).item(), rel=1e-6)


@pytest.mark.parametrize("batch, group", [(5, 2), (4, 1), (4, 3)])
def test_group_contrastive_loss_refuses_batches_without_whole_groups(batch, group):
    with pytest.raises(ValueError, match="group"):
        group_contrastive_loss(torch.randn(batch, 3), torch.randn(batch, 3), group, 0.1)
    with pytest.raises(ValueError, match="group"):
        group_text_separation_loss(torch.randn(batch, 3), group, 0.5, 0.1)


def test_group_text_separation_loss_is_the_mean_hinge_on_cosines_inside_each_group_by_hand():
    """Texts at angles, so a pair's cosine is cos(a - b): groups of 3 give 6 ordered pairs each; only cosines above
    the margin count, by how much, over the temperature; the loss has no gradient once every pair is below it."""
    angles = [0.0, 0.2, 1.4, 3.0, 3.1, 0.5]
    unit = lambda values: torch.tensor([[math.cos(a), math.sin(a)] for a in values])  # noqa: E731
    margin, temperature = 0.5, 0.25
    hinges = [max(math.cos(angles[group + i] - angles[group + j]) - margin, 0.0)
              for group in (0, 3) for i in range(3) for j in range(3) if i != j]
    texts = (2.0 * unit(angles)).requires_grad_()
    loss = group_text_separation_loss(texts, 3, margin, temperature)
    assert loss.item() == pytest.approx(sum(hinges) / 12 / temperature, rel=1e-6)
    loss.backward()
    assert texts.grad[:2].abs().sum() > 0 and texts.grad[2].abs().sum() == 0  # 1.4 is beyond 60 degrees of both
    apart = unit([0.0, 2.0, 4.0, 1.0, 3.0, 5.0]).requires_grad_()
    group_text_separation_loss(apart, 3, margin, temperature).backward()
    assert apart.grad.abs().sum() == 0
