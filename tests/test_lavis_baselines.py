"""LAVIS's own ALBEF and BLIP classes built offline, and ALIGN-BENCH's probe of their cross-attention."""
import pytest
import torch
from helpers import TINY_RUN, read_log_records, run_module, tiny_batch

CAPTIONS = ["a red circle", "two small blue squares left of it"]


def lavis_class(arch):
    from lavis.models.albef_models.albef_pretrain import AlbefPretrain
    from lavis.models.albef_models.albef_retrieval import AlbefRetrieval
    from lavis.models.blip_models.blip_retrieval import BlipRetrieval

    return {"albef_pretrain_offline": AlbefPretrain, "albef_retrieval_offline": AlbefRetrieval,
            "blip_retrieval_offline": BlipRetrieval}[arch]


@pytest.fixture(params=["albef_pretrain_offline", "albef_retrieval_offline", "blip_retrieval_offline"])
def offline(request, lavis_glscl):
    from lavis.common.registry import registry

    torch.manual_seed(0)
    return request.param, registry.get_model_class(request.param).from_pretrained("tiny")


def test_offline_model_is_the_lavis_class_with_the_bert_base_uncased_vocabulary(offline):
    arch, model = offline
    lavis_cls = lavis_class(arch)
    assert isinstance(model, lavis_cls)
    assert type(model).forward is lavis_cls.forward and type(model).__init__ is not lavis_cls.__init__
    assert model.tokenizer("[MASK] hello").input_ids == [101, 103, 7592, 102]  # bert-base-uncased's ids
    if arch.startswith("blip"):
        assert model.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
        assert model.tokenizer.enc_token_id == 30523 < model.text_encoder.config.vocab_size


def test_offline_model_trains_every_parameter_its_lavis_forward_uses(offline):
    _, model = offline
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


def saved_attention_reference(arch, model, images, captions):
    """The last cross-attention layer's probabilities through LAVIS's own ``save_attention`` (ALBEF's Grad-CAM
    path), in the image-grounded pass each model's training runs: AlbefPretrain's text then fusion passes, the
    retrieval models' single ITM pass (BLIP's with [ENC] first)."""
    tokens = model.tokenizer(captions, padding="longest", return_tensors="pt")
    input_ids = tokens.input_ids.clone()
    if arch.startswith("blip"):
        input_ids[:, 0] = model.tokenizer.enc_token_id
    image_tokens = model.visual_encoder.forward_features(images)
    image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.long)
    bert = getattr(model.text_encoder, "bert", model.text_encoder)
    cross_attention = bert.encoder.layer[-1].crossattention.self
    cross_attention.save_attention = True
    with torch.enable_grad():
        if arch == "albef_pretrain_offline":
            text = bert(input_ids, attention_mask=tokens.attention_mask, return_dict=True, mode="text")
            bert(encoder_embeds=text.last_hidden_state, attention_mask=tokens.attention_mask,
                 encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask, return_dict=True,
                 mode="fusion")
        else:
            model.text_encoder(input_ids, attention_mask=tokens.attention_mask, encoder_hidden_states=image_tokens,
                               encoder_attention_mask=image_mask, return_dict=True)
    cross_attention.save_attention = False
    return cross_attention.get_attention_map().detach()


def test_probe_reads_the_last_cross_attention_layer_as_lavis_saves_it(offline):
    from lavis_glscl.align_bench.attention import cross_attention_probe

    arch, model = offline
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    maps = cross_attention_probe(model)(images, CAPTIONS)
    reference = saved_attention_reference(arch, model, images, CAPTIONS)  # [B, heads, L, 1 + K]
    assert reference.shape[-1] == 17 != reference.shape[-2]  # over the image tokens: not self-attention
    torch.testing.assert_close(maps.attention, reference[..., 1:].amax(dim=1))
    assert maps.grid_size == 4 and (maps.attention.sum(dim=-1) < 1).all()  # the image CLS took the rest
    assert maps.offsets[1, 1].tolist() == [0, 3]  # "two"


def test_probe_gives_the_same_maps_with_lavis_slow_tokenizer(offline):
    from transformers import BertTokenizer

    from lavis_glscl.align_bench.attention import cross_attention_probe
    from lavis_glscl.models.baselines.lavis_offline import BERT_BASE_UNCASED_VOCAB
    from lavis_glscl.paths import resolve_local_model_dir

    arch, model = offline
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    fast = cross_attention_probe(model)(images, CAPTIONS)
    slow = BertTokenizer.from_pretrained(str(resolve_local_model_dir(BERT_BASE_UNCASED_VOCAB)))
    if arch.startswith("blip"):  # as LAVIS's BlipBase.init_tokenizer
        slow.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        slow.enc_token_id = slow.additional_special_tokens_ids[0]
    model.tokenizer = slow
    with_slow = cross_attention_probe(model)(images, CAPTIONS)
    torch.testing.assert_close(with_slow.attention, fast.attention, rtol=0, atol=0)
    assert with_slow.offsets.tolist() == fast.offsets.tolist()


def test_probe_refuses_a_model_without_cross_attention(lavis_glscl):
    from lavis_glscl.align_bench.attention import cross_attention_probe

    with pytest.raises(TypeError, match="not a LAVIS ALBEF or BLIP model"):
        cross_attention_probe(torch.nn.Linear(2, 2))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["albef_retrieval_offline", "blip_retrieval_offline"])
def test_lavis_retrieval_model_trains_through_the_runner_and_its_own_evaluator_scores_it(tmp_path, arch):
    result = run_module("lavis_glscl.train", ["--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={tmp_path}",
                                              f"model.arch={arch}", "model.model_type=tiny"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = read_log_records(tmp_path, "train_step")
    assert len(steps) == 2 and all(s["train_step_loss_itc"] > 0 and s["train_step_loss_itm"] > 0 for s in steps)
    assert "txt_r1" in result.stdout and len(list(tmp_path.rglob("evaluate.txt"))) == 1
