"""The CLIP-style ViT against Hugging Face's CLIPVisionModel, its video attention pattern, tube masking, the temporal
embedding, and position and temporal embeddings resized on loading."""
import pytest
import torch
from direction_probe import DotClips
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from lavis_glscl.models.layers.vision_transformer import (
    VisionTransformer,
    frame_attention,
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


def blocked_outside_own_frame(frames: int, per_frame: int) -> torch.Tensor:
    """The pattern as a mask over the frame-major sequence, True where attention is blocked: a CLS row (each frame's
    first token) sees everything, a patch row only its own frame."""
    positions = torch.arange(frames * per_frame)
    frame, is_cls = positions // per_frame, positions % per_frame == 0
    return ~((frame.unsqueeze(1) == frame.unsqueeze(0)) | is_cls.unsqueeze(1))


@pytest.mark.parametrize("frames, per_frame", [(2, 5), (3, 17), (4, 4)])
def test_frame_attention_equals_masked_attention_over_the_whole_sequence(frames, per_frame):
    torch.manual_seed(frames)
    attention = nn.MultiheadAttention(32, 4, batch_first=True)
    tokens = torch.randn(3, frames * per_frame, 32, requires_grad=True)
    reference = attention(tokens, tokens, tokens, attn_mask=blocked_outside_own_frame(frames, per_frame),
                          need_weights=False)[0]
    computed = frame_attention(attention, tokens, frames)
    torch.testing.assert_close(computed, reference, atol=1e-6, rtol=1e-5)
    gradient = torch.autograd.grad(computed.square().sum(), tokens)[0]
    torch.testing.assert_close(gradient, torch.autograd.grad(reference.square().sum(), tokens)[0], atol=1e-5, rtol=1e-5)


def test_a_patch_sees_its_own_frame_only_and_a_frame_cls_sees_every_frame():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 2, batch_first=True)
    tokens = torch.randn(1, 3 * 4, 16)
    changed = tokens.clone()
    changed[:, 8:] += 1.0  # the third frame only
    before, after = frame_attention(attention, tokens, 3), frame_attention(attention, changed, 3)
    assert torch.equal(before[:, 1:4], after[:, 1:4]) and torch.equal(before[:, 5:8], after[:, 5:8])  # patches
    assert not torch.allclose(before[:, 0], after[:, 0]) and not torch.allclose(before[:, 4], after[:, 4])  # CLS


def test_dropped_patches_keep_the_pattern_inside_the_vit():
    """With MGSC's kept patches (3 of 16 per frame) the ViT's frames are still attended frame by frame."""
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2).eval()
    video = torch.randn(2, 3, 3, 32, 32)
    keep = torch.tensor([[0, 5, 9], [1, 2, 15]])
    changed = video.clone()
    changed[:, 2] += 1.0  # the third frame
    out, out_changed = vit(video, keep_indices=keep), vit(changed, keep_indices=keep)
    # [B, F + F * K, D]: frame CLS tokens first, then each frame's kept patches
    assert out.shape == (2, 3 + 3 * 3, 32)
    # the first frame's patches still change: through its CLS, which saw the third frame in the block before
    assert not torch.allclose(out[:, 3:6], out_changed[:, 3:6])
    one_block = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=2).eval()
    first, first_changed = one_block(video, keep_indices=keep), one_block(changed, keep_indices=keep)
    torch.testing.assert_close(first[:, 3:6], first_changed[:, 3:6])  # after one block they cannot have seen it


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


@torch.no_grad()
def test_one_frame_video_equals_the_plain_image_transformer():
    vit = tiny_vit()
    plain = tiny_vit()
    plain.load_state_dict(vit.state_dict())
    plain.positional_embedding += vit.temporal_embed[0, 0]  # a plain ViT: the frame-0 embedding folded in
    plain.temporal_embed.zero_()
    images = torch.randn(3, 1, 3, 32, 32)
    torch.testing.assert_close(vit(images), plain(images), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_tube_masking_drops_the_same_positions_in_every_frame():
    vit = tiny_vit()
    video = torch.randn(1, 3, 3, 32, 32)
    keep = torch.tensor([[2, 7, 11]])
    base = vit(video, keep_indices=keep)
    dropped, kept = video.clone(), video.clone()
    dropped[0, 2, :, 0:8, 0:8] += 3.0  # patch 0 of frame 2: not kept
    kept[0, 2, :, 0:8, 16:24] += 3.0  # patch 2 of frame 2: kept
    assert torch.equal(vit(dropped, keep_indices=keep), base)
    assert not torch.allclose(vit(kept, keep_indices=keep), base)


def test_temporal_and_position_embeddings_resize_when_loading():
    source = tiny_vit(max_frames=8)
    for frames in (4, 16):
        target = tiny_vit(max_frames=frames)
        target.load_state_dict(source.state_dict())
        assert target.temporal_embed.shape == (1, frames, 32)
    truncated = tiny_vit(max_frames=4)
    truncated.load_state_dict(source.state_dict())
    assert torch.equal(truncated.temporal_embed, source.temporal_embed[:, :4])
    bigger = tiny_vit(image_size=64)
    bigger.load_state_dict(source.state_dict() | {"temporal_embed": source.temporal_embed[:, :4]})
    assert bigger.positional_embedding.shape == (65, 32)


@torch.no_grad()
def test_only_the_temporal_embedding_tells_a_clip_from_its_reversal():
    """Without the temporal embedding the frame-CLS attention is blind to order: a reversed clip gives the reversed
    frame CLS tokens, hence the same mean (the video feature).  With it the two features differ."""
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2, max_frames=4).eval()
    clips, _ = DotClips().sample(3, torch.Generator().manual_seed(1))
    reversed_clips = clips.flip(1)
    with_order = vit(clips)[:, :4], vit(reversed_clips)[:, :4]
    assert (with_order[0].mean(dim=1) - with_order[1].mean(dim=1)).abs().max() > 1e-2
    vit.temporal_embed.zero_()
    forwards, backwards = vit(clips)[:, :4], vit(reversed_clips)[:, :4]
    torch.testing.assert_close(backwards, forwards.flip(1), atol=1e-5, rtol=1e-5)


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
