"""LAVIS's own ALBEF, BLIP and ALPRO classes built offline: LAVIS's classes with the bert-base-uncased vocabulary,
trained and evaluated by LAVIS's own ``forward`` and ``compute_sim_matrix``."""
import pytest
import torch
import torch.nn.functional as F
from helpers import ListLoader, tiny_batch


def lavis_class(arch):
    from lavis.models.albef_models.albef_pretrain import AlbefPretrain
    from lavis.models.albef_models.albef_retrieval import AlbefRetrieval
    from lavis.models.blip_models.blip_retrieval import BlipRetrieval

    return {"albef_pretrain_offline": AlbefPretrain, "albef_retrieval_offline": AlbefRetrieval,
            "blip_retrieval_offline": BlipRetrieval}[arch]


def test_offline_model_is_the_lavis_class_with_the_bert_base_uncased_vocabulary(offline_lavis_model):
    arch, model = offline_lavis_model
    lavis_cls = lavis_class(arch)
    assert isinstance(model, lavis_cls)
    assert type(model).forward is lavis_cls.forward and type(model).__init__ is not lavis_cls.__init__
    assert model.tokenizer("[MASK] hello").input_ids == [101, 103, 7592, 102]  # bert-base-uncased's ids
    if arch.startswith("blip"):
        assert model.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
        assert model.tokenizer.enc_token_id == 30523 < model.text_encoder.config.vocab_size


def test_offline_model_trains_every_parameter_its_lavis_forward_uses(offline_lavis_model):
    _, model = offline_lavis_model
    output = model({**tiny_batch(8), "num_iters_per_epoch": 10})
    assert torch.isfinite(output.loss) and output.loss > 0
    output.loss.backward()
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable and [name for name in trainable if model.get_parameter(name).grad is None] == []
    assert not any(param.requires_grad for name, param in model.named_parameters() if "_m." in name)


def test_text_init_copies_a_smaller_vocabulary_and_keeps_the_added_tokens_rows(lavis_glscl):
    import json

    from transformers import BertConfig, BertModel

    from lavis_glscl.models.baselines.lavis_offline import build_text_encoder, load_text_weights
    from lavis_glscl.paths import config_path

    med_config = json.loads(open(config_path("models/lavis_offline/med_config_blip_tiny.json")).read())
    torch.manual_seed(0)
    source = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)
    encoder = build_text_encoder(med_config, vision_width=32, text_init=None)
    added_rows = encoder.embeddings.word_embeddings.weight[30522:].detach().clone()
    cross_attention = encoder.encoder.layer[0].crossattention.self.query.weight.detach().clone()

    load_text_weights(encoder, source.state_dict())
    words = encoder.embeddings.word_embeddings.weight
    assert words.shape[0] == 30524
    torch.testing.assert_close(words[:30522], source.embeddings.word_embeddings.weight, rtol=0, atol=0)
    torch.testing.assert_close(words[30522:], added_rows, rtol=0, atol=0)
    torch.testing.assert_close(encoder.encoder.layer[1].attention.self.key.weight,
                               source.encoder.layer[1].attention.self.key.weight, rtol=0, atol=0)
    torch.testing.assert_close(encoder.encoder.layer[0].crossattention.self.query.weight, cross_attention)


CAPTIONS = ["a small red circle moves up", "a large blue square moves down", "a green triangle moves to the left",
            "a white diamond moves to the right", "a small cyan circle moves up", "a purple square moves down"]


@pytest.fixture
def tiny_alpro(tiny):
    return tiny("alpro_retrieval_offline")


def videos(count, model, seed=0):
    """``[N, 3, T, S, S]`` random clips in ALPRO's layout, ``T`` the model's ``n_frms``."""
    encoder = model.visual_encoder
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, encoder.num_frames, encoder.img_size, encoder.img_size, generator=generator)


def test_offline_alpro_is_lavis_alpro_retrieval_with_its_timesformer_and_the_bert_base_uncased_vocabulary(tiny_alpro):
    from lavis.models.alpro_models.alpro_retrieval import AlproRetrieval
    from lavis.models.med import XBertEncoder
    from lavis.models.timesformer.vit import TimeSformer

    model = tiny_alpro
    assert isinstance(model, AlproRetrieval)
    assert type(model).forward is AlproRetrieval.forward
    assert type(model).compute_sim_matrix is AlproRetrieval.compute_sim_matrix
    assert isinstance(model.visual_encoder, TimeSformer)
    assert type(model.visual_encoder).forward_features is TimeSformer.forward_features
    assert type(model.text_encoder) is XBertEncoder and model.text_encoder.config.add_cross_attention is False
    assert model.tokenizer("[MASK] hello").input_ids == [101, 103, 7592, 102]  # bert-base-uncased's ids


def test_sized_timesformer_at_vit_b_sizes_is_lavis_timesformer(lavis_glscl):
    """At LAVIS's hard-coded sizes (768 x 12, 12 heads) the sized TimeSformer has LAVIS's parameters, names and
    shapes, and gives LAVIS's features with LAVIS's weights."""
    from lavis.models.timesformer.vit import TimeSformer

    from lavis_glscl.models.baselines.lavis_offline import SizedTimeSformer

    torch.manual_seed(0)
    lavis_encoder = TimeSformer(image_size=32, patch_size=16, n_frms=2).eval()
    sized = SizedTimeSformer(image_size=32, patch_size=16, n_frms=2, width=768, layers=12, heads=12).eval()
    theirs, ours = lavis_encoder.state_dict(), sized.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    torch.nn.Module.load_state_dict(sized, theirs)
    clips = torch.randn(2, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sized.forward_features(clips), lavis_encoder.forward_features(clips))


def test_alpro_refuses_a_timesformer_narrower_than_its_text(lavis_glscl):
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    cls = registry.get_model_class("alpro_retrieval_offline")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.vision.width = 16
    with pytest.raises(ValueError, match="must equal the text width"):
        cls.from_config(cfg)


def test_tiny_alpro_trains_two_steps_and_lavis_evaluator_scores_it(tiny_alpro):
    """Two AdamW steps of LAVIS's ALPRO forward in a plain process (no process group), then LAVIS's own evaluator:
    each query's shortlist is its top ``k_test`` by ITC, scored ITM + ITC, the rest left at LAVIS's -100."""
    model = tiny_alpro
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = model.vision_proj.weight.detach().clone()
    for step in range(2):
        output = model({"video": videos(4, model, seed=step), "text_input": CAPTIONS[:4]})
        assert torch.isfinite(output.loss) and output.loss_vtc > 0 and output.loss_vtm > 0
        optimizer.zero_grad()
        output.loss.backward()
        assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
        optimizer.step()
    assert not torch.equal(model.vision_proj.weight, before)

    model.eval()
    gallery = videos(len(CAPTIONS), model, seed=9)
    k_test = 3
    with torch.no_grad():  # as LAVIS's runner evaluates
        scores_v2t, scores_t2v = model.compute_sim_matrix(ListLoader(gallery, CAPTIONS, key="video"),
                                                          {"k_test": k_test})
    assert scores_v2t.shape == scores_t2v.shape == (6, 6)
    with torch.no_grad():  # the ITC similarities, from the model's parts
        text = model.tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=model.max_txt_len,
                               return_tensors="pt")
        text_cls = model.text_encoder.forward_text(text, token_type_ids=torch.zeros_like(text.input_ids))
        text_feat = F.normalize(model.text_proj(text_cls.last_hidden_state[:, 0]), dim=-1)
        video_feat = F.normalize(model.vision_proj(model.visual_encoder.forward_features(gallery)[:, 0]), dim=-1)
        sims = video_feat @ text_feat.t()
    for scores, similarity in ((scores_v2t, sims), (scores_t2v, sims.t())):
        scored = torch.from_numpy(scores) > -100
        assert (scored.sum(dim=1) == k_test).all()
        shortlist = torch.zeros_like(scored)
        shortlist.scatter_(1, similarity.topk(k_test, dim=1).indices, True)
        assert torch.equal(scored, shortlist)
