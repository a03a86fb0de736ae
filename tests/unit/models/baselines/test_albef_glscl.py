"""albef_glscl_pretrain: LAVIS's ALBEF pre-training with GLSCL's completion objectives, built offline."""
import copy

import pytest
import torch
from helpers import tiny_batch


@pytest.fixture
def albef(tiny):
    return tiny("albef_glscl_pretrain")


def albef_batch(size=8):
    return {**tiny_batch(size), "num_iters_per_epoch": 10}


def test_zero_completion_weights_give_lavis_albef_pretraining_exactly(albef):
    from lavis.models.albef_models.albef_pretrain import AlbefPretrain

    from lavis_glscl.models.baselines.albef_glscl import CompletionWeights

    albef.completion.loss_weights = CompletionWeights()
    lavis_copy = copy.deepcopy(albef)  # ALBEF's forward moves its queues and momentum encoders
    samples = albef_batch()
    torch.manual_seed(1)
    ours = albef(samples)
    torch.manual_seed(1)
    reference = AlbefPretrain.forward(lavis_copy, samples)
    assert set(ours) == {"loss", "loss_itc", "loss_itm", "loss_mlm"}
    torch.testing.assert_close(ours["loss"], reference.loss, rtol=0, atol=0)


def test_completion_objectives_add_to_albef_and_train_every_parameter(albef):
    output = albef(albef_batch())
    assert {"loss_mgsc_text", "loss_mgsc_image", "loss_mltc_text"} <= set(output)
    expected = (output["loss_itc"] + output["loss_itm"] + output["loss_mlm"] + output["loss_mgsc_text"]
                + output["loss_mgsc_image"] + 0.2 * output["loss_mltc_text"])
    torch.testing.assert_close(output["loss"], expected)
    output["loss"].backward()
    assert [n for n, p in albef.named_parameters() if p.requires_grad and p.grad is None] == []
    assert albef.image_completion_head.weight.grad.abs().sum() > 0


def test_kept_patch_encoding_with_every_patch_equals_lavis_vit(albef):
    from lavis_glscl.models.baselines.albef_glscl import encode_kept_patches

    vit = albef.visual_encoder.eval()
    images = torch.randn(2, 3, 32, 32)
    every_patch = torch.arange(16).expand(2, 16)
    torch.testing.assert_close(encode_kept_patches(vit, images, every_patch), vit.forward_features(images))
    some = torch.tensor([[0, 5, 9], [2, 3, 15]])
    assert encode_kept_patches(vit, images, some).shape == (2, 4, 32)


def test_completion_mask_ratios_and_temperature_follow_their_options(tiny, monkeypatch):
    """mgsc_image_mask_ratio 0.75 keeps 4 of 16 patches (0.8 would keep 3); mgsc_text_mask_ratio 0 masks one word per
    caption (0.4 draws more in every caption of 3+ words); completion_temperature 1e4 flattens every completion
    logit, so each completion loss is twice (both directions) the log of its number of candidates (8 captions, 8
    masked words)."""
    import math

    from lavis_glscl.models.baselines import albef_glscl

    seen = {}
    kept_encoding, text_mask = albef_glscl.encode_kept_patches, albef_glscl.mgsc_text_mask

    def spy_kept(*args):
        seen["dropped"] = kept_encoding(*args)
        return seen["dropped"]

    def spy_mask(*args):
        seen["masked"] = text_mask(*args)
        return seen["masked"]

    monkeypatch.setattr(albef_glscl, "encode_kept_patches", spy_kept)
    monkeypatch.setattr(albef_glscl, "mgsc_text_mask", spy_mask)
    model = tiny("albef_glscl_pretrain", mgsc_image_mask_ratio=0.75, mgsc_text_mask_ratio=0.0,
                 completion_temperature=1e4)
    output = model(albef_batch())
    assert seen["dropped"].shape[:2] == (8, 1 + 4)
    assert seen["masked"].sum(dim=1).tolist() == [1] * 8
    for name in ("loss_mgsc_text", "loss_mgsc_image", "loss_mltc_text"):
        assert abs(output[name].item() - 2 * math.log(8)) < 1e-3, name


def test_unknown_completion_objective_and_values_out_of_range_are_refused(lavis_glscl):
    from omegaconf import OmegaConf

    from lavis_glscl.models.baselines.albef_glscl import AlbefGlsclPretrain
    from lavis_glscl.typed_options import ConfigError

    base = OmegaConf.load(AlbefGlsclPretrain.default_config_path("tiny")).model
    with pytest.raises(ValueError, match=r"unknown option\(s\) model.loss_weights.itc; known in model.loss_weights: "
                                         "mgsc, mltc"):
        AlbefGlsclPretrain.from_config(OmegaConf.merge(base, {"loss_weights": {"itc": 1.0}}))
    for options, message in [({"loss_weights": {"mltc": -0.2}}, r"model.loss_weights: mltc must be >= 0, got -0.2"),
                             ({"mgsc_image_mask_ratio": 1.0}, r"mgsc_image_mask_ratio must be in \[0, 1\), got 1.0"),
                             ({"mgsc_text_mask_ratio": -0.1}, r"mgsc_text_mask_ratio must be in \[0, 1\), got -0.1"),
                             ({"completion_temperature": 0}, r"completion_temperature must be > 0, got 0")]:
        with pytest.raises(ConfigError, match=message):  # refused before anything is built
            AlbefGlsclPretrain.check_options(OmegaConf.merge(base, options))
