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


def test_dual_encoder_loss_is_the_toolkit_loss_on_cosines_with_its_own_options(tiny):
    """``loss_options`` of the chosen loss reach it (margin 0.5; the yaml's is 0.2); other losses' blocks are built
    and left unused."""
    model = tiny("matching_dual_encoder", loss="vse++",
                 loss_options={"vse++": {"margin": 0.5}, "infonce": {"temperature": 0.5}}).eval()
    batch = tiny_batch()
    images, _ = model.encode_image(batch["image"].unsqueeze(1))
    texts, _ = model.encode_text(model.tokenize(batch["text_input"]))
    expected = vse_plus_plus_loss(images @ texts.t(), margin=0.5)
    assert model(batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


@torch.no_grad()
def test_dual_encoder_scores_add_the_weighted_head_to_the_cosines(tiny):
    from helpers import ListLoader

    model = tiny("matching_dual_encoder", similarity_head="scan", head_weight=0.5,
                 similarity_head_options={"scan": {"lambda_softmax": 4.0, "aggregation": "mean"}}).eval()
    images = torch.randn(4, 3, 32, 32)
    texts = ["a red circle", "blue", "a green square above it", "two things"]
    i2t, t2i = model.compute_sim_matrix(ListLoader(images, texts), {"k_test": 2})
    image_embeds, patches = model.encode_image(images.unsqueeze(1))
    text = model.tokenize(texts)
    text_embeds, words = model.encode_text(text)
    head = scan_similarity(patches, words, None, text.maskable, lambda_softmax=4.0, aggregation="mean")
    raw = image_embeds @ text_embeds.t() + 0.5 * head
    torch.testing.assert_close(torch.from_numpy(i2t), raw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(t2i), raw.t(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options, message", [
    ({"loss": "vse"}, r"model: unknown loss 'vse'; known names: .*vse\+\+"),
    ({"similarity_head": "scan_t2i"}, r"model: unknown similarity head 'scan_t2i'; known names: .*scan"),
    ({"loss_options": {"vse++": {"margn": 0.2}}}, r"model: loss_options.vse\+\+: .*'margn'"),
    ({"similarity_head_options": {"scan": {"lambda": 9.0}}}, r"model: similarity_head_options.scan: .*'lambda'"),
    ({"vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "frames": 4}},
     r"unknown option\(s\) model.vision.frames \(did you mean 'max_frames'\?\)"),
    ({"head_weight": "half"}, r"model.head_weight"),
])
def test_dual_encoder_options_are_checked_before_building_naming_the_key(lavis_glscl, options, message):
    """A misspelled part or option of any configured part, chosen or not, an unknown tower key or a value of the
    wrong type is refused when the config is read."""
    from omegaconf import OmegaConf

    from lavis_glscl.models.baselines.dual_encoder import MatchingDualEncoder
    from lavis_glscl.typed_options import ConfigError

    base = OmegaConf.load(MatchingDualEncoder.default_config_path("tiny")).model
    with pytest.raises(ConfigError, match=message):
        MatchingDualEncoder.check_options(OmegaConf.merge(base, options))
