"""The GLSCL model: objective composition, shared passes, optimizer groups, retrieval scoring."""
import copy
import math

import pytest
import torch
from helpers import ListLoader, loss_values, tiny_batch

from lavis_glscl.models.glscl import GlsclPretrain, GlsclRetrieval
from lavis_glscl.models.glscl.config import LossWeights
from lavis_glscl.models.scoring import itm_rerank


def losses_of(model, batch):
    return loss_values(model(batch))


def test_output_has_every_objective_and_the_weighted_total(tiny_model):
    tiny_model.eval()
    out = tiny_model(tiny_batch())
    expected = {"loss", "loss_itc", "loss_itm", "loss_mlm", "loss_mgsc_image", "loss_mgsc_text", "loss_mltc_image",
                "loss_mltc_text", "intermediate_output"}
    assert set(out.keys()) == expected
    intermediate = out.intermediate_output  # the full-input passes, as LAVIS's models return them
    assert intermediate.image_embeds.shape == (4, 1 + 16, 32) and intermediate.text_embeds.shape[:2] == (4, 9)
    assert intermediate.image_feat.shape == intermediate.text_feat.shape == (4, 16)
    assert intermediate.itm_logits.shape == (4, 2) and intermediate.itm_labels.tolist().count(0) == 2
    w = tiny_model.loss_weights
    total = (w.itc * out.loss_itc + w.itm * out.loss_itm + w.mlm * out.loss_mlm
             + w.mgsc * (out.loss_mgsc_image + out.loss_mgsc_text) + w.mltc * (out.loss_mltc_image + out.loss_mltc_text))
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6)
    assert (w.itc, w.mgsc, w.mltc) == (0.5, 1.0, 0.2)


def test_shared_and_recomputed_unimodal_passes_give_the_same_losses(tiny_model):
    tiny_model.eval()  # dropout off
    recomputing = copy.deepcopy(tiny_model)
    recomputing.config.share_unimodal_passes = False
    for itm_negatives in ("random", "hard"):
        tiny_model.config.itm_negatives = recomputing.config.itm_negatives = itm_negatives
        batch = tiny_batch(batch_size=6, seed=3)
        shared, recomputed = losses_of(tiny_model, batch), losses_of(recomputing, batch)
        assert shared.keys() == recomputed.keys()
        for key in shared:
            assert shared[key] == pytest.approx(recomputed[key], rel=1e-5, abs=1e-6), key


def test_sharing_computes_each_distinct_unimodal_pass_once(tiny_model, monkeypatch):
    calls = {"image": 0, "text": 0}
    encode_image, encode_text = tiny_model.encode_image, tiny_model.encode_text

    def count_image(*args, **kwargs):
        calls["image"] += 1
        return encode_image(*args, **kwargs)

    def count_text(*args, **kwargs):
        calls["text"] += 1
        return encode_text(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "encode_image", count_image)
    monkeypatch.setattr(tiny_model, "encode_text", count_text)
    tiny_model(tiny_batch())
    assert calls == {"image": 3, "text": 3}  # full/dropped/token-masked image; full/MLM/MGSC text
    calls.update(image=0, text=0)
    tiny_model.config.share_unimodal_passes = False
    tiny_model(tiny_batch())
    assert calls == {"image": 6, "text": 6}  # the released code: both encoders in each of the six passes


def test_masks_depend_on_the_step_not_on_the_call(tiny_model):
    tiny_model.eval()
    batch = tiny_batch()
    assert losses_of(tiny_model, batch) == losses_of(tiny_model, batch)
    later = dict(batch, iters=1)
    assert losses_of(tiny_model, later)["loss_mlm"] != losses_of(tiny_model, batch)["loss_mlm"]


def test_zero_weight_objectives_are_skipped(tiny_model):
    tiny_model.config.loss_weights = LossWeights(itc=1.0)
    out = tiny_model(tiny_batch())
    assert {key for key in out.keys() if key.startswith("loss")} == {"loss", "loss_itc"}


def test_unknown_objective_or_negative_mode_is_refused(lavis_glscl):
    from omegaconf import OmegaConf

    base = OmegaConf.load(GlsclPretrain.default_config_path("tiny")).model
    with pytest.raises(ValueError, match=r"unknown option\(s\) model.loss_weights.mgcs \(did you mean 'mgsc'\?\)"):
        GlsclPretrain.from_config(OmegaConf.merge(base, {"loss_weights": {"mgcs": 1.0}}))
    with pytest.raises(ValueError, match="itm_negatives"):
        GlsclPretrain.from_config(OmegaConf.merge(base, {"itm_negatives": "hardest"}))
    with pytest.raises(KeyError, match="unknown model_type"):
        GlsclPretrain.default_config_path("huge")


def test_every_trainable_parameter_gets_a_gradient(tiny_model):
    tiny_model(tiny_batch()).loss.backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


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


def test_video_batches_train_with_per_frame_mgsc(tiny_model):
    out = tiny_model(tiny_batch(frames=3))
    assert torch.isfinite(out.loss) and out.loss_mltc_image is not None and out.loss_mgsc_image is not None
    tiny_model.config.video_completion.mltc = False
    assert tiny_model(tiny_batch(frames=3)).loss_mltc_image is None


def test_video_completion_mgsc_off_drops_mgsc_from_video_batches_only(tiny_model):
    tiny_model.config.video_completion.mgsc = False
    video = tiny_model(tiny_batch(frames=3))
    assert video.loss_mgsc_image is None and video.loss_mgsc_text is None
    assert video.loss_mltc_text is not None and video.loss_mltc_image is not None
    image = tiny_model(tiny_batch())
    assert image.loss_mgsc_image is not None and image.loss_mgsc_text is not None


def test_itm_rerank_batches_queries_and_orders_the_rest_below():
    sims = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.3, 0.4, 0.1], [0.0, 0.6, 0.7, 0.65]])
    calls = []

    def reverse_itc(query, gallery):  # an ITM that prefers what ITC ranks lower
        calls.append(len(query))
        return -sims[query, gallery] * 10

    scores = itm_rerank(sims, k=2, score_pairs=reverse_itc, pairs_per_batch=4, add_sims=False, rows=(0, 3))
    assert calls == [4, 2]  # 3 queries x 2 shortlisted, scored 4 pairs at a time
    order = scores.argsort(dim=1, descending=True).tolist()
    assert order[0] == [1, 0, 3, 2]  # shortlist {0, 1} reversed, then the rest in ITC order
    assert order[2] == [3, 2, 1, 0]
    one = itm_rerank(sims, k=1, score_pairs=reverse_itc, rows=(0, 3), add_sims=False)
    assert torch.equal(one.argsort(dim=1, descending=True), sims.argsort(dim=1, descending=True))


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


def training_step(model, batch):
    """One forward and backward pass: the output, how many (image, caption) pairs the ITM head scored, and the
    top-level modules and full names of the parameters that received a gradient."""
    scored = []
    hook = model.itm_score.register_forward_hook(lambda module, inputs, output: scored.append(len(inputs[0])))
    try:
        out = model(batch)
    finally:
        hook.remove()
    out.loss.backward()
    trained = {name for name, param in model.named_parameters() if param.grad is not None and param.grad.any()}
    return out, sum(scored), {name.split(".")[0] for name in trained}, trained


def test_retrieval_model_is_registered_with_itc_itm_defaults(lavis_glscl):
    """LAVIS's ``glscl_retrieval`` trains ITC and ITM only, both at full weight, with hard ITM negatives, where
    the pre-training model also trains MLM/MGSC/MLTC, weighs ITC 0.5 and draws random negatives."""
    from lavis.models import load_model

    torch.manual_seed(0)
    retrieval = load_model("glscl_retrieval", "tiny")
    pretrain = GlsclPretrain.from_pretrained("tiny")
    batch = tiny_batch(batch_size=4)
    out, itm_pairs, modules, trained = training_step(retrieval, batch)
    assert isinstance(retrieval, GlsclRetrieval)
    assert set(loss_values(out)) == {"loss", "loss_itc", "loss_itm"}
    assert out.loss.item() == pytest.approx(out.loss_itc.item() + out.loss_itm.item())  # not pre-training's 0.5 ITC
    # Each pair, plus its caption with a hard negative image and its image with a hard negative caption.
    assert itm_pairs == 3 * 4
    _, pretrain_itm_pairs, pretrain_modules, pretrain_trained = training_step(pretrain, batch)
    assert pretrain_itm_pairs == 4  # random negatives: some pairs have their image swapped, none are added
    # Same encoders and fusion; only the MLM head and the MLTC mask token stay untouched.
    assert pretrain_modules - modules == {"mlm_score"} and modules <= pretrain_modules
    assert "vision_transformer.visual_mask_token" in pretrain_trained - trained


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


def test_released_rank_recipe_scores_a_caption_against_its_negatives(tiny):
    model = tiny("glscl_retrieval", loss_weights={"rank": 1.0, "itc": 0.5}, rank_negatives=3)
    torch.testing.assert_close(model.rank_output.weight, model.itm_score.fc.weight[1:2])
    assert not model.itm_score.fc.weight.requires_grad  # frozen, as released
    out = model(tiny_batch(batch_size=4))
    assert set(loss_values(out)) == {"loss", "loss_rank", "loss_itc"}
    assert out.loss.item() == pytest.approx(out.loss_rank.item() + 0.5 * out.loss_itc.item(), rel=1e-6)
    assert 0 < out.loss_rank.item() < 5 and out.loss_rank.item() == pytest.approx(math.log(4), abs=0.5)
    out.loss.backward()
    assert model.rank_output.weight.grad.abs().sum() > 0
    model.config.rank_negatives = 4
    with pytest.raises(ValueError, match="needs 4 negative captions"):
        model(tiny_batch(batch_size=4))


def test_rank_recipe_fine_tunes_on_videos_too(tiny):
    model = tiny("glscl_retrieval", loss_weights={"rank": 1.0, "itc": 1.0}, rank_negatives=3)
    out = model(tiny_batch(batch_size=4, frames=3))
    assert set(loss_values(out)) == {"loss", "loss_rank", "loss_itc"}
    assert out.loss_rank.item() == pytest.approx(math.log(4), abs=0.5)
    out.loss.backward()
    assert model.rank_output.weight.grad.abs().sum() > 0 and model.vision_transformer.temporal_embed.grad is not None


def test_rank_output_is_the_retrieval_score_after_fine_tuning(tiny):
    model = tiny("glscl_retrieval", loss_weights={"rank": 1.0})
    features = torch.randn(3, 64)
    with torch.no_grad():
        model.rank_output.weight.add_(1.0)
    torch.testing.assert_close(model.match_score(features), model.rank_output(features)[:, 0])
    assert not torch.allclose(model.match_score(features), model.itm_score(features)[:, 1])


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
