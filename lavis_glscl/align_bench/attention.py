"""Where ALIGN-BENCH reads a model's text-to-image cross-attention.

A model provides ``cross_attention_maps(images, captions) -> CrossAttentionMaps`` itself (GLSCL's: its last text-side
fusion layer's cross-attention, :meth:`~lavis_glscl.models.glscl.base.GlsclBase.cross_attention_maps`).  LAVIS's
ALBEF and BLIP models are
read from their BERT (``lavis.models.med``): the last layer that has a cross-attention module, in the
image-grounded pass the model's own ITM head reads (ALBEF: text layers then fusion layers; BLIP: the ``[ENC]``-led
text through every layer).  That BERT returns self-attentions only, so the probabilities are taken from the input
of the layer's attention dropout, which needs neither autograd nor ALBEF's Grad-CAM ``save_attention`` hooks.
"""
from functools import partial
from typing import Callable, Sequence

import torch
from lavis.models.albef_models import AlbefBase
from lavis.models.blip_models.blip import BlipBase
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import convert_slow_tokenizer

from lavis_glscl.models.glscl.outputs import CrossAttentionMaps

AttentionProbe = Callable[[torch.Tensor, Sequence[str]], CrossAttentionMaps]


def cross_attention_probe(model) -> AttentionProbe:
    """``probe(images [B, 3, H, W], captions) -> CrossAttentionMaps`` for ``model``, or a ``TypeError``."""
    if hasattr(model, "cross_attention_maps"):
        return model.cross_attention_maps
    if isinstance(model, (AlbefBase, BlipBase)):
        return partial(lavis_cross_attention_maps, model, offsets_tokenizer(model.tokenizer))
    raise TypeError(f"{type(model).__name__} has no cross_attention_maps(images, captions) and is not a LAVIS "
                    f"ALBEF or BLIP model: ALIGN-BENCH needs a fusion model's text-to-image attention")


def offsets_tokenizer(tokenizer):
    """``tokenizer`` when it is fast, else a fast twin with the same vocabulary and special tokens (LAVIS's own
    models carry slow ``BertTokenizer``s, which give no character offsets)."""
    if tokenizer.is_fast:
        return tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=convert_slow_tokenizer(tokenizer), **tokenizer.special_tokens_map)


@torch.no_grad()
def lavis_cross_attention_maps(model, tokenizer, images: torch.Tensor, captions: Sequence[str]) -> CrossAttentionMaps:
    """The last cross-attention layer's probabilities of a LAVIS ALBEF/BLIP ``model``, image CLS column dropped,
    max over heads: ``[B, L, K]`` for ``images`` ``[B, 3, H, W]``; ``tokenizer`` is ``offsets_tokenizer`` of the
    model's (built once per probe: converting a slow tokenizer reads its whole vocabulary)."""
    encoded = tokenizer(list(captions), padding="longest", truncation=True, max_length=model.max_txt_len,
                        return_offsets_mapping=True, return_tensors="pt")
    input_ids = encoded.input_ids.to(model.device)
    if isinstance(model, BlipBase):
        input_ids[:, 0] = model.tokenizer.enc_token_id
    bert = getattr(model.text_encoder, "bert", model.text_encoder)
    last_cross_attention = [layer for layer in bert.encoder.layer if hasattr(layer, "crossattention")][-1]
    captured = []
    hook = last_cross_attention.crossattention.self.dropout.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0]))
    try:
        image_tokens = model.visual_encoder.forward_features(images.to(model.device))
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device)
        bert(input_ids, attention_mask=encoded.attention_mask.to(model.device), encoder_hidden_states=image_tokens,
             encoder_attention_mask=image_mask, return_dict=True, mode="multimodal")
    finally:
        hook.remove()
    patches = captured[0][..., 1:]  # [B, heads, L, K]
    return CrossAttentionMaps(patches.amax(dim=1), encoded.offset_mapping, int(round(patches.shape[-1] ** 0.5)))
