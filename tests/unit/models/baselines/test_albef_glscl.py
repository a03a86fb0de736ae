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

    albef.loss_weights = CompletionWeights()
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


def test_unknown_completion_objective_is_refused(lavis_glscl):
    from omegaconf import OmegaConf

    from lavis_glscl.models.baselines.albef_glscl import AlbefGlsclPretrain

    base = OmegaConf.load(AlbefGlsclPretrain.default_config_path("tiny")).model
    with pytest.raises(ValueError, match=r"unknown option\(s\) model.loss_weights.itc; known in model.loss_weights: "
                                         "mgsc, mltc"):
        AlbefGlsclPretrain.from_config(OmegaConf.merge(base, {"loss_weights": {"itc": 1.0}}))
