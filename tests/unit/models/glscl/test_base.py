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
