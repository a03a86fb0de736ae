"""External weights: released GLSCL checkpoints, OpenAI and HF CLIP vision weights, resolution changes."""
import pytest
import torch
from conftest import tiny_batch
from transformers import CLIPVisionConfig, CLIPVisionModel

from lavis_glscl.models.checkpoints import MAE_DECODER_PREFIXES, load_clip_vision, load_hf_clip_vision, read_checkpoint
from lavis_glscl.models.vision_transformer import VisionTransformer

RELEASED_TOP_LEVEL = {"text_transformer", "vision_transformer", "cross_modal_text_transform",
                      "cross_modal_image_transform", "token_type_embeddings", "cross_modal_image_layers",
                      "cross_modal_text_layers", "cross_modal_image_pooler", "cross_modal_text_pooler", "mlm_score",
                      "itm_score", "cl_temp", "vision_proj", "language_proj"}


def released_checkpoint(model, path):
    """A Lightning-style checkpoint in the released naming: the model's weights plus a tiny MAE decoder."""
    state_dict = dict(model.state_dict())
    decoder = {"decoder_embed.weight": torch.randn(8, 32), "mask_token": torch.randn(1, 1, 8),
               "decoder_pos_embed": torch.randn(1, 17, 8), "decoder_blocks.0.attn.qkv.weight": torch.randn(24, 8),
               "decoder_norm.weight": torch.ones(8), "decoder_pred.weight": torch.randn(192, 8)}
    torch.save({"state_dict": {**state_dict, **decoder}, "epoch": 41, "global_step": 99999}, path)
    return state_dict, decoder


def test_released_checkpoint_loads_with_only_the_mae_decoder_unused(tiny_model, tmp_path):
    from lavis_glscl.models.glscl import GlsclPretrain

    source = tiny_model.eval()
    state_dict, decoder = released_checkpoint(source, tmp_path / "GLSCL-100k.ckpt")
    assert {key.split(".")[0] for key in state_dict} == RELEASED_TOP_LEVEL
    vision_keys = {key.split(".")[1] for key in state_dict if key.startswith("vision_transformer.")}
    assert vision_keys == {"conv1", "class_embedding", "positional_embedding", "temporal_embed", "visual_mask_token",
                           "ln_pre", "transformer", "ln_post"}
    assert "vision_transformer.transformer.resblocks.1.attn.in_proj_weight" in state_dict
    assert "cross_modal_text_layers.0.crossattention.self.query.weight" in state_dict
    torch.manual_seed(123)
    loaded = GlsclPretrain.from_pretrained("tiny").eval()
    report = loaded.load_checkpoint(str(tmp_path / "GLSCL-100k.ckpt"))
    assert report.missing == [] and report.unused == sorted(decoder)
    assert all(key.startswith(MAE_DECODER_PREFIXES) for key in report.unused)
    batch = tiny_batch()
    with torch.no_grad():
        expected, observed = source(batch), loaded(batch)
    assert {k: v.item() for k, v in observed.items()} == pytest.approx({k: v.item() for k, v in expected.items()})


def test_released_checkpoint_with_foreign_keys_is_refused_with_the_key_lists(tiny_model, tmp_path):
    state_dict, decoder = released_checkpoint(tiny_model, tmp_path / "x.ckpt")
    state_dict.pop("itm_score.fc.bias")
    torch.save({"state_dict": {**state_dict, **decoder, "nlvr2_classifier.weight": torch.zeros(2)}}, tmp_path / "y.ckpt")
    with pytest.raises(KeyError, match=r"missing \['itm_score.fc.bias'\], unused \['nlvr2_classifier.weight'\]"):
        tiny_model.load_checkpoint(str(tmp_path / "y.ckpt"))


def test_lavis_checkpoints_load_leniently_as_lavis_does(tiny_model, tmp_path):
    state_dict = dict(tiny_model.state_dict())
    state_dict.pop("itm_score.fc.bias")
    torch.save({"model": state_dict, "epoch": 0}, tmp_path / "checkpoint_0.pth")
    report = tiny_model.load_checkpoint(str(tmp_path / "checkpoint_0.pth"))
    assert report.missing == ["itm_score.fc.bias"] and report.unused == []


def openai_visual(width=32, layers=3):
    torch.manual_seed(5)
    source = VisionTransformer(image_size=32, patch_size=8, width=width, layers=layers, heads=2).eval()
    with torch.no_grad():
        source.temporal_embed.zero_()  # CLIP has none
    state = {f"visual.{k}": v for k, v in source.state_dict().items() if k not in ("temporal_embed", "visual_mask_token")}
    state["visual.proj"] = torch.randn(width, 16)
    state["logit_scale"] = torch.tensor(4.6)
    return source, state


@torch.no_grad()
def test_openai_clip_weights_keep_the_first_blocks_and_report_the_rest():
    source, state = openai_visual(layers=3)
    target = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2).eval()
    report = load_clip_vision(target, state)
    assert report.missing == ["temporal_embed", "visual_mask_token"]  # temporal_embed is zeroed instead
    assert "visual.proj" in report.unused and "logit_scale" in report.unused
    assert sorted(k for k in report.unused if "resblocks.2." in k) == sorted(
        f"visual.transformer.resblocks.2.{k}" for k in source.transformer.resblocks[2].state_dict())
    assert target.temporal_embed.abs().sum() == 0
    images = torch.randn(2, 1, 3, 32, 32)
    _, hidden = source(images, return_hidden_states=True)
    torch.testing.assert_close(target(images), source.ln_post(hidden[2]), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # tracing the tiny stand-in for CLIP
def test_openai_torchscript_files_are_read_as_state_dicts(tmp_path):
    source, state = openai_visual()

    class Clip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = source

        def forward(self, images):
            return self.visual(images)

    traced = torch.jit.trace(Clip().eval(), torch.randn(1, 1, 3, 32, 32), check_trace=False)
    traced.save(str(tmp_path / "ViT-tiny.pt"))
    loaded = read_checkpoint(str(tmp_path / "ViT-tiny.pt"))
    assert torch.equal(loaded["visual.conv1.weight"], source.conv1.weight)


@torch.no_grad()
def test_hf_clip_directories_load_through_the_conversion(tmp_path):
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, hidden_act="quick_gelu")
    torch.manual_seed(2)
    reference = CLIPVisionModel(config).eval()
    reference.save_pretrained(tmp_path)
    target = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2).eval()
    report = load_hf_clip_vision(target, str(tmp_path))
    assert report.missing == ["temporal_embed", "visual_mask_token"] and report.unused == []
    pixels = torch.randn(1, 3, 32, 32)
    expected = reference.vision_model.post_layernorm(reference(pixel_values=pixels).last_hidden_state)
    torch.testing.assert_close(target(pixels.unsqueeze(1)), expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_position_embeddings_survive_a_trip_through_twice_the_resolution():
    torch.manual_seed(0)
    original = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2).eval()
    saved = {k: v.clone() for k, v in original.state_dict().items()}
    doubled = VisionTransformer(image_size=64, patch_size=8, width=32, layers=2, heads=2).eval()
    doubled.load_state_dict(original.state_dict())
    assert doubled(torch.randn(1, 1, 3, 64, 64)).shape == (1, 65, 32)
    assert torch.equal(doubled.positional_embedding[0], original.positional_embedding[0])  # the CLS slot
    assert all(torch.equal(saved[k], v) for k, v in original.state_dict().items())  # the source is untouched
    back = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2).eval()
    back.load_state_dict(doubled.state_dict())
    images = torch.randn(4, 1, 3, 32, 32)
    cls_before, cls_after = original(images)[:, 0], back(images)[:, 0]
    # bicubic up- then down-sampling is not exactly invertible: the CLS output moves by well under 1 %
    assert ((cls_after - cls_before).norm(dim=-1) / cls_before.norm(dim=-1)).max() < 0.01
    same = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2).eval()
    same.load_state_dict(original.state_dict())
    assert torch.equal(same(images), original(images))  # no resizing at the same grid
