"""The cross-attention probe: GLSCL's last fusion layer, and LAVIS's ALBEF and BLIP as LAVIS saves it."""
import pytest
import torch

from lavis_glscl.align_bench.attention import cross_attention_probe
from lavis_glscl.paths import resolve_local_model_dir


def test_cross_attention_maps_are_the_last_layers_text_to_image_probabilities(tiny_model):
    model = tiny_model.eval()
    images, captions = torch.randn(2, 3, 32, 32), ["a red circle", "a small blue square, left"]
    maps = cross_attention_probe(model)(images, captions)
    text = model.tokenize(captions)
    fusion = model.fuse(model.encode_text(text.input_ids, text.attention_mask), text.attention_mask,
                        model.encode_image(images[:, None]), 1, output_attentions=True)
    last = fusion.text_to_image_attentions[-1]  # [B, heads, L, 1 + K]
    assert last.shape[-1] == 1 + maps.grid_size ** 2 != last.shape[-2]  # over image tokens: not self-attention
    torch.testing.assert_close(last.sum(dim=-1), torch.ones(last.shape[:-1]))
    torch.testing.assert_close(maps.attention, last[..., 1:].amax(dim=1))
    assert maps.offsets[1].tolist()[:3] == [[0, 0], [0, 1], [2, 7]]  # [CLS], "a", "small"


CAPTIONS = ["a red circle", "two small blue squares left of it"]


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


def test_probe_reads_the_last_cross_attention_layer_as_lavis_saves_it(offline_lavis_model):
    from lavis_glscl.align_bench.attention import cross_attention_probe

    arch, model = offline_lavis_model
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    maps = cross_attention_probe(model)(images, CAPTIONS)
    reference = saved_attention_reference(arch, model, images, CAPTIONS)  # [B, heads, L, 1 + K]
    assert reference.shape[-1] == 17 != reference.shape[-2]  # over the image tokens: not self-attention
    torch.testing.assert_close(maps.attention, reference[..., 1:].amax(dim=1))
    assert maps.grid_size == 4 and (maps.attention.sum(dim=-1) < 1).all()  # the image CLS took the rest
    assert maps.offsets[1, 1].tolist() == [0, 3]  # "two"


def test_probe_gives_the_same_maps_with_lavis_slow_tokenizer(offline_lavis_model):
    from transformers import BertTokenizer

    from lavis_glscl.align_bench.attention import cross_attention_probe
    from lavis_glscl.models.baselines.lavis_offline import BERT_BASE_UNCASED_VOCAB

    arch, model = offline_lavis_model
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
