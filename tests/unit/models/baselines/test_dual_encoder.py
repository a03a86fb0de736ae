"""The matching toolkit's dual encoder: every loss, the toolkit's loss on cosines, a similarity head added to the
cosines."""
import pytest
import torch
from helpers import tiny_batch

from lavis_glscl.matching import scan_similarity, vse_plus_plus_loss


@pytest.mark.parametrize("loss", ["infonce", "vse++", "sum_margin", "knn_margin", "unified"])
def test_dual_encoder_trains_with_every_loss(tiny, loss):
    model = tiny("matching_dual_encoder", loss=loss)
    out = model(tiny_batch())
    assert set(out.keys()) == {"loss", "loss_itc"} and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.vision_proj.weight.grad.abs().sum() > 0


def test_dual_encoder_loss_is_the_toolkit_loss_on_cosines(tiny):
    model = tiny("matching_dual_encoder", loss="vse++").eval()
    batch = tiny_batch()
    images, _ = model.encode_image(batch["image"].unsqueeze(1))
    texts, _ = model.encode_text(model.tokenize(batch["text_input"]))
    expected = vse_plus_plus_loss(images @ texts.t(), margin=0.2)
    assert model(batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


@torch.no_grad()
def test_dual_encoder_scores_add_the_weighted_head_to_the_cosines(tiny):
    from helpers import ListLoader

    model = tiny("matching_dual_encoder", similarity_head="scan", head_weight=0.5).eval()
    images = torch.randn(4, 3, 32, 32)
    texts = ["a red circle", "blue", "a green square above it", "two things"]
    i2t, t2i = model.compute_sim_matrix(ListLoader(images, texts), {"k_test": 2})
    image_embeds, patches = model.encode_image(images.unsqueeze(1))
    text = model.tokenize(texts)
    text_embeds, words = model.encode_text(text)
    raw = image_embeds @ text_embeds.t() + 0.5 * scan_similarity(patches, words, None, text.maskable)
    torch.testing.assert_close(torch.from_numpy(i2t), raw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(t2i), raw.t(), atol=1e-5, rtol=1e-4)
