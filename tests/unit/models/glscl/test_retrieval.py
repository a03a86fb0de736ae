"""``glscl_retrieval``: registered with ITC and ITM at full weight and hard negatives, and the released rank recipe:
each caption scored against its negatives, on images and videos, the rank head as the retrieval score."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import Trace, loss_values, loss_with_bonus, tiny_batch

from lavis_glscl.models.glscl import GlsclPretrain, GlsclRetrieval


def training_step(model, batch):
    """One forward and backward pass: the output, how many (image, caption) pairs the ITM head scored, and the
    top-level modules and full names of the parameters that received a gradient."""
    scored = []
    hook = model.itm_score.register_forward_hook(lambda module, inputs, output: scored.append(len(inputs[0])))
    try:
        out = model(batch)
    finally:
        hook.remove()
    out.loss.backward()
    trained = {name for name, param in model.named_parameters() if param.grad is not None and param.grad.any()}
    return out, sum(scored), {name.split(".")[0] for name in trained}, trained


def test_retrieval_model_is_registered_with_itc_itm_defaults(lavis_glscl):
    """LAVIS's ``glscl_retrieval`` trains ITC and ITM only, both at full weight, with hard ITM negatives, where
    the pre-training model also trains MLM/MGSC/MLTC, weighs ITC 0.5 and draws random negatives."""
    from lavis.models import load_model

    torch.manual_seed(0)
    retrieval = load_model("glscl_retrieval", "tiny")
    pretrain = GlsclPretrain.from_pretrained("tiny")
    batch = tiny_batch(batch_size=4)
    out, itm_pairs, modules, trained = training_step(retrieval, batch)
    assert isinstance(retrieval, GlsclRetrieval)
    assert set(loss_values(out)) == {"loss", "loss_itc", "loss_itm"}
    assert out.loss.item() == pytest.approx(out.loss_itc.item() + out.loss_itm.item())  # not pre-training's 0.5 ITC
    # Each pair, plus its caption with a hard negative image and its image with a hard negative caption.
    assert itm_pairs == 3 * 4
    _, pretrain_itm_pairs, pretrain_modules, pretrain_trained = training_step(pretrain, batch)
    assert pretrain_itm_pairs == 4  # random negatives: some pairs have their image swapped, none are added
    # Same encoders and fusion; only the MLM head and the MLTC mask token stay untouched.
    assert pretrain_modules - modules == {"mlm_score"} and modules <= pretrain_modules
    assert "vision_transformer.visual_mask_token" in pretrain_trained - trained


def test_released_rank_recipe_scores_a_caption_against_its_negatives(tiny):
    model = tiny("glscl_retrieval", loss_weights={"rank": 1.0, "itc": 0.5}, rank_negatives=3)
    torch.testing.assert_close(model.rank_output.weight, model.itm_score.fc.weight[1:2])
    assert not model.itm_score.fc.weight.requires_grad  # frozen, as released
    out = model(tiny_batch(batch_size=4))
    assert set(loss_values(out)) == {"loss", "loss_rank", "loss_itc"}
    assert out.loss.item() == pytest.approx(out.loss_rank.item() + 0.5 * out.loss_itc.item(), rel=1e-6)
    assert 0 < out.loss_rank.item() < 5 and out.loss_rank.item() == pytest.approx(math.log(4), abs=0.5)
    out.loss.backward()
    assert model.rank_output.weight.grad.abs().sum() > 0
    model.config.rank_negatives = 4
    with pytest.raises(ValueError, match="needs 4 negative captions"):
        model(tiny_batch(batch_size=4))


def test_rank_recipe_fine_tunes_on_videos_too(tiny):
    model = tiny("glscl_retrieval", loss_weights={"rank": 1.0, "itc": 1.0}, rank_negatives=3)
    out = model(tiny_batch(batch_size=4, frames=3))
    assert set(loss_values(out)) == {"loss", "loss_rank", "loss_itc"}
    assert out.loss_rank.item() == pytest.approx(math.log(4), abs=0.5)
    out.loss.backward()
    assert model.rank_output.weight.grad.abs().sum() > 0 and model.vision_transformer.temporal_embed.grad is not None


def test_rank_output_is_the_retrieval_score_after_fine_tuning(tiny):
    model = tiny("glscl_retrieval", loss_weights={"rank": 1.0})
    features = torch.randn(3, 64)
    with torch.no_grad():
        model.rank_output.weight.add_(1.0)
    torch.testing.assert_close(model.match_score(features), model.rank_output(features)[:, 0])
    assert not torch.allclose(model.match_score(features), model.itm_score(features)[:, 1])


def test_rank_loss_scores_the_own_caption_as_candidate_0_and_targets_it(tiny):
    negatives, batch_size = 3, 6
    model = tiny("glscl_retrieval", dropout=False, loss_weights={"rank": 1.0, "itc": 0.5}, rank_negatives=negatives)
    trace = Trace(model)
    batch = tiny_batch(batch_size=batch_size, seed=7)
    out = model(batch)
    call, image_of_row, text_of_row = trace.rows_of_the_fusion()
    pairs = 1 + negatives
    rows = torch.arange(batch_size * pairs)
    own = image_of_row == text_of_row
    assert torch.equal(image_of_row, rows // pairs)  # each image's candidates together
    assert torch.equal(own, rows % pairs == 0)  # its own caption first, then negatives of other images
    scores = model.rank_output(call.out.cls_feats).view(batch_size, pairs)
    target = own.view(batch_size, pairs).long().argmax(dim=1)
    assert out.loss_rank.item() == pytest.approx(F.cross_entropy(scores, target).item(), rel=1e-5)
    # The own caption is the cross-entropy target: a huge score for it drives the loss to 0, for another to 30.
    assert loss_with_bonus(model, batch, model.rank_output, 30.0 * own[:, None].float(), "loss_rank") < 1e-6
    other = rows % pairs == 1
    assert loss_with_bonus(model, batch, model.rank_output, 30.0 * other[:, None].float(), "loss_rank") > 20.0
