"""The CLIP-style ViT against Hugging Face's CLIPVisionModel, and its video attention pattern."""
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from lavis_glscl.models.layers.vision_transformer import (
    VisionTransformer,
    frame_attention_mask,
    hf_clip_vision_to_openai,
    resize_position_embedding,
)


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    options = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, max_frames=4)
    options.update(kwargs)
    return VisionTransformer(**options).eval()


def test_matches_hf_clip_vision_model_after_conversion(tmp_path):
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=32, patch_size=8, hidden_act="quick_gelu")
    torch.manual_seed(1)
    CLIPVisionModel(config).save_pretrained(tmp_path)
    reference = CLIPVisionModel.from_pretrained(tmp_path).eval()
    converted, unused = hf_clip_vision_to_openai(reference.state_dict())
    assert all("position_ids" in key for key in unused)
    ours = VisionTransformer(image_size=32, patch_size=8, width=32, layers=3, heads=4, mlp_ratio=2.0).eval()
    missing, unexpected = ours.load_state_dict(converted, strict=False)
    assert sorted(missing) == ["temporal_embed", "visual_mask_token"] and not unexpected
    with torch.no_grad():
        ours.temporal_embed.zero_()
        pixels = torch.randn(2, 3, 32, 32)
        expected = reference(pixel_values=pixels, output_hidden_states=True)
        tokens, hidden = ours(pixels.unsqueeze(1), return_hidden_states=True)
    assert len(hidden) == len(expected.hidden_states) == 4
    for mine, theirs in zip(hidden, expected.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tokens, reference.vision_model.post_layernorm(expected.last_hidden_state),
                               atol=1e-5, rtol=1e-4)


def test_frame_attention_mask_pattern():
    blocked = frame_attention_mask(num_frames=2, tokens_per_frame=3)
    allowed = (~blocked).int().tolist()
    assert allowed == [
        [1, 1, 1, 1, 1, 1],  # frame 0 CLS: everything
        [1, 1, 1, 0, 0, 0],  # frame 0 patches: frame 0 only
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],  # frame 1 CLS: everything
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
    ]
    assert frame_attention_mask(1, 5) is None


def test_a_patch_of_one_frame_reaches_every_frame_cls_but_only_its_own_frame_patches():
    vit = tiny_vit(layers=1)
    video = torch.randn(1, 3, 3, 32, 32)
    changed = video.clone()
    changed[0, 1, :, :8, :8] += 5.0  # the first patch of frame 1
    with torch.no_grad():
        before, after = vit(video), vit(changed)
    differs = (before - after).abs().amax(dim=-1)[0] > 1e-6  # [F + F * N]
    frames, patches = 3, 16
    assert differs[:frames].all()  # one block: every frame CLS sees frame 1's patch
    patch_diff = differs[frames:].view(frames, patches)
    assert not patch_diff[0].any() and not patch_diff[2].any()  # other frames' patches untouched after one block
    assert patch_diff[1].all()  # frame 1's patches all attend to the changed patch


def test_keep_indices_drop_patches_and_keep_frame_cls():
    vit = tiny_vit()
    video = torch.randn(2, 2, 3, 32, 32)
    keep = torch.tensor([[0, 5, 9], [1, 2, 15]])
    with torch.no_grad():
        out = vit(video, keep_indices=keep)
    assert out.shape == (2, 2 + 2 * 3, 32)


def test_token_mask_replaces_patch_embeddings_before_positions():
    vit = tiny_vit()
    images = torch.randn(1, 1, 3, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 3] = True
    other = images.clone()
    other[0, 0, :, :8, 24:32] = torch.randn(3, 8, 8)  # change only masked patch 3's pixels
    with torch.no_grad():
        assert torch.allclose(vit(images, token_mask=mask), vit(other, token_mask=mask))
        assert not torch.allclose(vit(images), vit(other))


def test_input_checks():
    vit = tiny_vit()
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        vit(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="max_frames"):
        vit(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ValueError, match="32x32"):
        vit(torch.randn(1, 1, 3, 64, 64))


def test_resize_position_embedding_keeps_cls_and_is_identity_at_same_grid():
    pos = torch.randn(1 + 16, 8)
    assert resize_position_embedding(pos, 4) is pos
    bigger = resize_position_embedding(pos, 8)
    assert bigger.shape == (65, 8) and torch.equal(bigger[0], pos[0])
