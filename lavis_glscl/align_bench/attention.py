"""Where ALIGN-BENCH reads a model's text-to-image cross-attention.

GLSCL models are read from their last text-side fusion layer's cross-attention (:func:`glscl_cross_attention_maps`);
any other model may provide ``cross_attention_maps(images, captions)`` itself.  LAVIS's ALBEF and BLIP models are
read from their BERT (``lavis.models.med``): the last layer that has a cross-attention module, in the
image-grounded pass the model's own ITM head reads (ALBEF: text layers then fusion layers; BLIP: the ``[ENC]``-led
text through every layer).  That BERT returns self-attentions only, so the probabilities are taken from the input
of the layer's attention dropout, which needs neither autograd nor ALBEF's Grad-CAM ``save_attention`` hooks.
"""
from functools import partial
from typing import Callable, NamedTuple, Sequence

import torch
from lavis.models.albef_models import AlbefBase
from lavis.models.blip_models.blip import BlipBase
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import convert_slow_tokenizer

from lavis_glscl.models.glscl import GlsclBase
from lavis_glscl.models.vision_transformer import as_frames


class CrossAttentionMaps(NamedTuple):
    attention: torch.Tensor  # [B, L, K]: last fusion layer, text token -> image patch, max over heads
    offsets: torch.Tensor  # [B, L, 2]: each token's character span in its caption; (0, 0) for special tokens, padding
    grid_size: int  # the K patches form a grid_size x grid_size grid, row-major


AttentionProbe = Callable[[torch.Tensor, Sequence[str]], CrossAttentionMaps]


def cross_attention_probe(model) -> AttentionProbe:
    """``probe(images [B, 3, H, W], captions) -> CrossAttentionMaps`` for ``model``, or a ``TypeError``."""
    if isinstance(model, GlsclBase):
        return partial(glscl_cross_attention_maps, model)
    if hasattr(model, "cross_attention_maps"):
        return model.cross_attention_maps
    if isinstance(model, (AlbefBase, BlipBase)):
        return partial(lavis_cross_attention_maps, model, offsets_tokenizer(model.tokenizer))
    raise TypeError(f"{type(model).__name__} has no cross_attention_maps(images, captions) and is not a LAVIS "
                    f"ALBEF or BLIP model: ALIGN-BENCH needs a fusion model's text-to-image attention")


@torch.no_grad()
def glscl_cross_attention_maps(model: GlsclBase, images: torch.Tensor, captions: Sequence[str]) -> CrossAttentionMaps:
    """Where each caption token looks in its image ``[B, 3, H, W]``: the last text-side fusion layer's
    cross-attention probabilities (not its self-attention, which the released ALIGN-BENCH scripts read by mistake),
    image CLS column dropped, max over heads.  Call it in eval mode: attention dropout acts on these probabilities.
    """
    images = as_frames(images.to(model.device))
    if images.shape[1] != 1:
        raise ValueError(f"cross-attention maps are defined for images, got {images.shape[1]}-frame videos")
    # the model's own tokenization, plus each token's character span
    encoded = model.tokenizer(list(captions), padding="longest", truncation=True, max_length=model.max_text_length,
                              return_offsets_mapping=True, return_tensors="pt").to(model.device)
    text_tokens = model.encode_text(encoded.input_ids, encoded.attention_mask)
    fusion = model.fuse(text_tokens, encoded.attention_mask, model.encode_image(images), num_frames=1,
                        output_attentions=True)
    patches = fusion.text_to_image_attentions[-1][..., 1:]  # [B, heads, L, K]
    return CrossAttentionMaps(patches.amax(dim=1), encoded.offset_mapping, model.vision_transformer.grid_size)


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
