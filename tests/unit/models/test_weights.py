"""External weights: released GLSCL checkpoints, LAVIS and Lightning checkpoints, OpenAI and HF CLIP vision weights,
and checkpoints that fill too little of the model."""
import re

import pytest
import torch
from helpers import loss_values, save_lightning_checkpoint, tiny_batch, tiny_config
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModel, BertConfig, CLIPVisionConfig, CLIPVisionModel
from transformers.models.bert.modeling_bert import BertLayer

from lavis_glscl.models.layers.vision_transformer import VisionTransformer
from lavis_glscl.models.weights import load_clip_vision, load_hf_clip_vision
from lavis_glscl.paths import resolve_local_model_dir
from lavis_glscl.serialization import UntrustedCheckpointError
from lavis_glscl.typed_options import ConfigError


def linear(name, out_features, in_features, bias=True):
    return {f"{name}.weight": (out_features, in_features), **({f"{name}.bias": (out_features,)} if bias else {})}


def layer_norm(name, width):
    return {f"{name}.weight": (width,), f"{name}.bias": (width,)}


def clip_visual_shapes(width, layers, patch_size, grid_size):
    """OpenAI CLIP's ``VisionTransformer`` names and shapes (MLP 4x wide; no ``proj``), plus GLSCL's
    ``visual_mask_token``, written out by hand from CLIP's layout."""
    shapes = {"conv1.weight": (width, 3, patch_size, patch_size), "class_embedding": (width,),
              "positional_embedding": (1 + grid_size ** 2, width), **layer_norm("ln_pre", width),
              **layer_norm("ln_post", width), "visual_mask_token": (1, width)}
    for n in range(layers):
        block = {"attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
                 **linear("attn.out_proj", width, width), **layer_norm("ln_1", width),
                 **linear("mlp.c_fc", 4 * width, width), **linear("mlp.c_proj", width, 4 * width),
                 **layer_norm("ln_2", width)}
        shapes.update({f"transformer.resblocks.{n}.{key}": shape for key, shape in block.items()})
    return shapes


def mae_decoder_shapes(width, patch_size, grid_size, decoder_width=16):
    """The MAE pixel decoder (timm block names) that the released CLIP wrapper builds but never uses."""
    d = decoder_width
    block = {**layer_norm("norm1", d), **linear("attn.qkv", 3 * d, d), **linear("attn.proj", d, d),
             **layer_norm("norm2", d), **linear("mlp.fc1", 4 * d, d), **linear("mlp.fc2", d, 4 * d)}
    return {**linear("decoder_embed", d, width), "mask_token": (1, 1, d),
            "decoder_pos_embed": (1, 1 + grid_size ** 2, d),
            **{f"decoder_blocks.0.{key}": shape for key, shape in block.items()},
            **layer_norm("decoder_norm", d), **linear("decoder_pred", 3 * patch_size ** 2, d)}


def head_shapes(text_width, vision_width, hidden, vocab_size, embed_dim):
    """Bridges, poolers, heads and temperature by the released checkpoint's names; the insides of the ITC projections,
    which those names do not show, are lavis_glscl's (Linear, LayerNorm, GELU, Linear)."""
    shapes = {**linear("cross_modal_text_transform", hidden, text_width),
              **linear("cross_modal_image_transform", hidden, vision_width),
              "token_type_embeddings.weight": (2, hidden),
              **linear("cross_modal_text_pooler.dense", hidden, hidden),
              **linear("cross_modal_image_pooler.dense", hidden, hidden), **linear("itm_score.fc", 2, 2 * hidden),
              **linear("mlm_score.transform.dense", hidden, hidden),
              **layer_norm("mlm_score.transform.LayerNorm", hidden),
              **linear("mlm_score.decoder", vocab_size, hidden, bias=False), "mlm_score.bias": (vocab_size,),
              "cl_temp": ()}
    for name in ("vision_proj", "language_proj"):
        shapes.update({**linear(f"{name}.0", hidden, hidden), **layer_norm(f"{name}.1", hidden),
                       **linear(f"{name}.3", embed_dim, hidden)})
    return shapes


def random_like(tensor, generator):
    """Distinct random values of ``tensor``'s shape and dtype (integer buffers: a permutation)."""
    if tensor.is_floating_point():
        return torch.randn(tensor.shape, generator=generator)
    return torch.randperm(tensor.numel(), generator=generator).view(tensor.shape).to(tensor.dtype)


def released_state_dict(model_cfg, seed=0):
    """A released GLSCL ``state_dict`` (the released checkpoint's layout) at the sizes of ``model_cfg``,
    independently of the model's own names: the vision keys by hand, the text keys from HF's model for the text
    config, the fusion layers from HF's ``BertLayer``.  Every tensor holds distinct random values."""
    vision, fusion, text = model_cfg.vision, model_cfg.fusion, model_cfg.text
    grid = vision.image_size // vision.patch_size
    text_config = AutoConfig.from_pretrained(resolve_local_model_dir(text.path), local_files_only=True,
                                             **OmegaConf.to_container(text.config_overrides))
    fusion_layer = BertLayer(BertConfig(hidden_size=fusion.hidden_size, num_attention_heads=fusion.num_heads,
                                        intermediate_size=fusion.intermediate_size, is_decoder=True,
                                        add_cross_attention=True))
    templates = {f"vision_transformer.visual.{key}": torch.empty(shape) for key, shape in
                 clip_visual_shapes(vision.width, vision.layers, vision.patch_size, grid).items()}
    templates.update({f"vision_transformer.{key}": torch.empty(shape) for key, shape in
                      mae_decoder_shapes(vision.width, vision.patch_size, grid).items()})
    templates.update({f"text_transformer.{key}": value
                      for key, value in AutoModel.from_config(text_config).state_dict().items()})
    templates.update({f"cross_modal_{side}_layers.{n}.{key}": value for side in ("text", "image")
                      for n in range(fusion.num_layers) for key, value in fusion_layer.state_dict().items()})
    heads = head_shapes(text_config.hidden_size, vision.width, fusion.hidden_size, text_config.vocab_size,
                        model_cfg.embed_dim)
    templates.update({key: torch.empty(shape) for key, shape in heads.items()})
    generator = torch.Generator().manual_seed(seed)
    return {key: random_like(value, generator) for key, value in templates.items()}


def is_mae_decoder(released_key):
    """On the CLIP wrapper beside its ViT (``vision_transformer.visual``)."""
    return released_key.startswith("vision_transformer.") and not released_key.startswith("vision_transformer.visual.")


def test_released_checkpoint_lands_every_tensor_where_it_belongs(lavis_glscl, tmp_path, monkeypatch):
    from lavis_glscl.models.glscl import GlsclPretrain

    released = released_state_dict(tiny_config("glscl_pretrain"))
    path = str(tmp_path / "GLSCL-100k.ckpt")
    save_lightning_checkpoint(path, released, monkeypatch)
    model = GlsclPretrain.from_config(tiny_config("glscl_pretrain", pretrained=path))
    state = model.state_dict()
    destinations = {key: key.replace("vision_transformer.visual.", "vision_transformer.", 1)
                    for key in released if not is_mae_decoder(key)}
    for key, destination in destinations.items():
        assert torch.equal(state[destination], released[key]), key
    assert set(state) - set(destinations.values()) == {"vision_transformer.temporal_embed"}
    assert model.vision_transformer.temporal_embed.abs().sum() == 0
    report = model.load_checkpoint(path)
    assert report.missing == ["vision_transformer.temporal_embed"]
    assert report.unused == sorted(key for key in released if is_mae_decoder(key))


def test_released_checkpoint_with_a_foreign_or_missing_key_is_refused_with_both_lists(lavis_glscl, tmp_path,
                                                                                       monkeypatch):
    from lavis_glscl.models.glscl import GlsclPretrain

    released = released_state_dict(tiny_config("glscl_pretrain"))
    released["vision_transformer.visual.proj"] = torch.randn(32, 16)  # OpenAI CLIP's projection: not released
    del released["itm_score.fc.bias"]
    path = str(tmp_path / "GLSCL-100k.ckpt")
    save_lightning_checkpoint(path, released, monkeypatch)
    expected = "missing ['itm_score.fc.bias'], unused ['vision_transformer.visual.proj']"
    with pytest.raises(KeyError, match=re.escape(expected)):
        GlsclPretrain.from_config(tiny_config("glscl_pretrain", pretrained=path))


def test_lightning_checkpoints_in_lavis_glscl_names_still_load(tiny_model, tmp_path, monkeypatch):
    from lavis_glscl.models.glscl import GlsclPretrain

    source = tiny_model.eval()
    path = str(tmp_path / "own-names.ckpt")
    save_lightning_checkpoint(path, dict(source.state_dict()), monkeypatch)
    torch.manual_seed(123)
    loaded = GlsclPretrain.from_pretrained("tiny").eval()
    report = loaded.load_checkpoint(path)
    assert report.missing == [] and report.unused == []
    batch = tiny_batch()
    with torch.no_grad():
        expected, observed = source(batch), loaded(batch)
    assert loss_values(observed) == pytest.approx(loss_values(expected))


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
    state = {f"visual.{k}": v for k, v in source.state_dict().items()
             if k not in ("temporal_embed", "visual_mask_token")}
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


def test_weights_of_another_model_are_refused_with_both_key_lists(tiny, tmp_path):
    """The plain dual encoder shares GLSCL's tower names, not its fusion: its checkpoint fills the towers only."""
    donor = tiny("matching_dual_encoder").state_dict()
    torch.save({"model": donor}, tmp_path / "other.pth")
    target = dict(tiny("glscl_pretrain").named_parameters())
    share = sum(p.numel() for name, p in target.items() if name in donor) / sum(p.numel() for p in target.values())
    with pytest.raises(ConfigError) as refusal:
        tiny("glscl_pretrain", pretrained=str(tmp_path / "other.pth"))
    message = str(refusal.value)
    assert f"fills {share:.1%} of GlsclPretrain's parameters, below model.min_checkpoint_coverage 0.5" in message
    assert "GlsclPretrain keys it lacks" in message and "cross_modal_text_layers.*" in message
    foreign = sorted(key for key in donor if key not in target and key not in dict(tiny("glscl_pretrain").state_dict()))
    assert f"its keys GlsclPretrain has no place for ({len(foreign)}): [{', '.join(foreign)}]" in message


def test_min_checkpoint_coverage_sets_the_share_a_checkpoint_must_fill(tiny, tmp_path):
    source = tiny("glscl_pretrain")
    state = source.state_dict()
    dropped = [key for key in state if key.startswith("text_transformer.embeddings.")]
    share = 1 - sum(state[key].numel() for key in dropped) / sum(p.numel() for p in source.parameters())
    torch.save({"model": {k: v for k, v in state.items() if k not in dropped}}, tmp_path / "partial.pth")
    loaded = tiny("glscl_pretrain", pretrained=str(tmp_path / "partial.pth"))  # above the default half
    assert torch.equal(loaded.itm_score.fc.weight, source.itm_score.fc.weight)
    with pytest.raises(ConfigError, match=f"fills {share:.1%}.*below model.min_checkpoint_coverage 0.95"):
        tiny("glscl_pretrain", pretrained=str(tmp_path / "partial.pth"), min_checkpoint_coverage=0.95)
    assert 0.5 < share < 0.95, share


def test_vision_init_refuses_weights_that_fill_too_little_of_the_vit(tiny, tmp_path):
    torch.save({"visual.conv1.weight": torch.zeros(32, 3, 8, 8)}, tmp_path / "conv-only.pth")
    with pytest.raises(ConfigError, match="below vision_init.min_coverage 0.5"):
        tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "conv-only.pth")})
    model = tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "conv-only.pth"), "min_coverage": 0.0})
    assert model.vision_transformer.conv1.weight.abs().sum() == 0


class NotOnTheAllowList:
    """An object no weights file needs: reading a file that holds one runs code, so only a trusted file loads."""


@torch.no_grad()
def test_vision_init_format_hf_and_trust_checkpoint_reach_the_vit(tiny, tmp_path):
    """``vision_init.format: hf`` (default ``openai``) reads a local ``CLIPVisionModel`` directory into the ViT, which
    then computes HF's hidden states; ``vision_init.trust_checkpoint: true`` (default false) loads an OpenAI-layout
    file that also holds an object outside the allow-list, which is refused without it."""
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, hidden_act="quick_gelu")
    torch.manual_seed(5)
    reference = CLIPVisionModel(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    model = tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "hf"), "format": "hf"}).eval()
    pixels = torch.randn(1, 3, 32, 32)
    expected = reference.vision_model.post_layernorm(reference(pixel_values=pixels).last_hidden_state)
    torch.testing.assert_close(model.vision_transformer(pixels.unsqueeze(1)), expected, atol=1e-5, rtol=1e-4)

    _, state = openai_visual(layers=2)
    torch.save({**state, "note": NotOnTheAllowList()}, tmp_path / "openai.pth")
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint"):
        tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "openai.pth")})
    trusted = tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "openai.pth"), "trust_checkpoint": True})
    assert torch.equal(trusted.vision_transformer.conv1.weight, state["visual.conv1.weight"])
