"""ITC inside batch groups: the group losses worked by hand, and their weight, text margin and detached text side
inside a training step."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_batch

from lavis_glscl.models.glscl.group_contrast import group_contrastive_loss, group_text_separation_loss
from lavis_glscl.models.pretraining import objectives


def ce(logits, target):
    """-log softmax(logits)[target], by hand."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


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


def test_itc_group_contrasts_each_clip_with_its_group_partners_caption_only_in_grouped_batches(tiny):
    """``group_contrast.weight``: ITC among the rows of each batch group (rows 2k, 2k + 1 for groups of 2), on the same
    unimodal ITC features, in the total as weight(itc) x group_contrast.weight; absent from ungrouped batches."""
    model = tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 2.0}, group_contrast={"weight": 0.5})
    batch = {**tiny_batch(batch_size=6, frames=2, seed=8), "batch_group_size": 2}
    out = model(batch)
    image = F.normalize(out.intermediate_output.image_feat.detach(), dim=-1)
    text = F.normalize(out.intermediate_output.text_feat.detach(), dim=-1)
    tau = float(model.cl_temp.detach())
    by_image = by_text = 0.0
    for first in (0, 2, 4):
        rows = [first, first + 1]
        sim = torch.stack([torch.stack([image[i] @ text[j] for j in rows]) for i in rows]) / tau  # [2 images, 2 texts]
        by_image += sum(-torch.log_softmax(sim[k], dim=0)[k] for k in range(2))
        by_text += sum(-torch.log_softmax(sim[:, k], dim=0)[k] for k in range(2))
    expected = (by_image + by_text) / 6
    assert out.loss_itc_group.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(2.0 * (out.loss_itc.item() + 0.5 * out.loss_itc_group.item()), rel=1e-5)
    assert tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 2.0}, group_contrast={"weight": 0.5})(
        {**batch, "batch_group_size": 1}).loss_itc_group is None
    assert tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 2.0})(batch).loss_itc_group is None


def test_itc_group_text_margin_hinges_the_cosine_of_each_groups_captions_itc_features(tiny):
    """``group_contrast.text_margin``: a hinge on the cosine of rows 2k, 2k + 1's ITC text features above the margin,
    over the group term's temperature (ITC's learnable one, which it does not train), weighted as the group term;
    without the margin, or in an ungrouped batch, no such loss."""
    margin = -0.5
    model = tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 2.0},
                 group_contrast={"weight": 0.5, "text_margin": margin})
    tau = model.cl_temp.item()
    batch = {**tiny_batch(batch_size=6, frames=2, seed=8), "batch_group_size": 2}
    out = model(batch)
    text = F.normalize(out.intermediate_output.text_feat.detach(), dim=-1)
    cosines = torch.stack([text[first] @ text[first + 1] for first in (0, 2, 4)])
    assert (cosines > margin).any()
    assert out.loss_itc_group_text.item() == pytest.approx(
        (cosines - margin).clamp(min=0).mean().item() / tau, rel=1e-5)
    out.loss_itc_group_text.backward()
    assert model.cl_temp.grad is None or model.cl_temp.grad == 0
    assert out.loss.item() == pytest.approx(
        2.0 * (out.loss_itc.item() + 0.5 * (out.loss_itc_group.item() + out.loss_itc_group_text.item())), rel=1e-5)
    without_margin = tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 2.0}, group_contrast={"weight": 0.5})
    assert without_margin(batch).loss_itc_group_text is None
    assert model({**batch, "batch_group_size": 1}).loss_itc_group_text is None
    with pytest.raises(ValueError, match="group_contrast.text_margin must be a cosine"):
        tiny("glscl_pretrain", dropout=False, group_contrast={"text_margin": 1.0})


def test_itc_group_detach_text_trains_only_the_visual_side_with_the_group_term(tiny):
    """``group_contrast.detach_text``: the same group loss value, whose gradient reaches the video tower and its ITC
    projection but no text parameter (with it off, the text tower gets one)."""
    batch = {**tiny_batch(batch_size=4, frames=2, seed=9), "batch_group_size": 2}
    grads = {}
    for detach in (False, True):
        model = tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 1.0},
                     group_contrast={"weight": 1.0, "detach_text": detach})
        loss = model(batch).loss_itc_group
        loss.backward()
        grads[detach] = (loss.item(), {name: param.grad for name, param in model.named_parameters()})
    (attached_loss, attached), (detached_loss, detached) = grads[False], grads[True]
    assert detached_loss == pytest.approx(attached_loss, rel=1e-6)
    text_names = [name for name in detached if name.startswith(("text_transformer.encoder", "language_proj"))]
    vision_names = [name for name in detached if name.startswith(("vision_transformer.transformer", "vision_proj"))]
    assert text_names and vision_names
    assert all(detached[name] is None or not detached[name].any() for name in text_names)
    assert any(attached[name] is not None and attached[name].abs().sum() > 0 for name in text_names)
    for name in vision_names:
        assert torch.allclose(detached[name], attached[name], atol=1e-7), name


def test_fixed_group_temperature_replaces_itcs_learnable_one_in_both_group_terms(tiny):
    """``group_contrast.temperature``: a fixed 0.2 (ITC's learnable temperature is 0.07) divides the group logits and
    the text hinge; a model that ignored it would use 0.07 and give other values."""
    tau = 0.2
    model = tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 1.0},
                 group_contrast={"weight": 1.0, "temperature": tau, "text_margin": -1.0})
    assert model.cl_temp.item() == pytest.approx(0.07)
    out = model({**tiny_batch(batch_size=4, frames=2, seed=5), "batch_group_size": 2})
    image = F.normalize(out.intermediate_output.image_feat.detach(), dim=-1).tolist()
    text = F.normalize(out.intermediate_output.text_feat.detach(), dim=-1).tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    by_image = by_text = hinge = 0.0
    for first in (0, 2):
        sim = [[dot(image[first + i], text[first + j]) / tau for j in range(2)] for i in range(2)]
        by_image += sum(ce(sim[i], i) for i in range(2))
        by_text += sum(ce([sim[i][j] for i in range(2)], j) for j in range(2))
        hinge += dot(text[first], text[first + 1]) + 1.0  # margin -1: every cosine is above it
    assert out.loss_itc_group.item() == pytest.approx((by_image + by_text) / 4, rel=1e-5)
    assert out.loss_itc_group_text.item() == pytest.approx(hinge / 2 / tau, rel=1e-5)


def test_group_text_margin_of_zero_hinges_every_positive_cosine_by_hand(tiny):
    """``group_contrast.text_margin: 0``: a margin, not "no margin": the hinge counts every positive cosine of a group's
    captions (a falsy check would drop the term).  By hand on unit texts at angles, and inside a step."""
    angles = [0.0, 0.5, 2.0, 0.1, 1.3, 3.0]  # group cosines cos(a - b): 0.878, -0.416, -0.129 | 0.362, -0.946, -0.600
    unit = torch.tensor([[math.cos(a), math.sin(a)] for a in angles])
    positive = [max(math.cos(angles[g + i] - angles[g + j]), 0.0)
                for g in (0, 3) for i in range(3) for j in range(3) if i != j]
    assert group_text_separation_loss(unit, 3, 0.0, 0.5).item() == pytest.approx(sum(positive) / 12 / 0.5, rel=1e-6)

    model = tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 1.0},
                 group_contrast={"weight": 1.0, "text_margin": 0.0})
    out = model({**tiny_batch(batch_size=6, frames=2, seed=8), "batch_group_size": 2})
    assert out.loss_itc_group_text is not None
    text = F.normalize(out.intermediate_output.text_feat.detach(), dim=-1).tolist()
    cosines = [sum(x * y for x, y in zip(text[first], text[first + 1])) for first in (0, 2, 4)]
    expected = sum(max(c, 0.0) for c in cosines) / 3 / model.cl_temp.item()
    assert out.loss_itc_group_text.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
