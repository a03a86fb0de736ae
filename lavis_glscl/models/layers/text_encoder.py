"""The text tower: a Hugging Face ``AutoModel`` (BERT or RoBERTa family) and its tokenizer, from local files."""
from typing import List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lavis_glscl.models.layers.activation_checkpointing import run_segment
from lavis_glscl.paths import resolve_local_model_dir


def build_text_encoder(path: str, pretrained: bool = True, config_overrides: Optional[Mapping] = None
                       ) -> Tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Text encoder and tokenizer from the local model directory ``path`` (see ``resolve_local_model_dir``).

    With ``pretrained`` the directory's weights are loaded; otherwise the model is built from its
    ``config.json`` with random weights.  ``config_overrides`` change config fields (e.g. sizes for a tiny
    test model); with pretrained weights they must agree with the checkpoint.
    """
    directory = resolve_local_model_dir(path)
    config = AutoConfig.from_pretrained(directory, local_files_only=True, **dict(config_overrides or {}))
    if config.model_type not in ("bert", "roberta"):
        raise ValueError(f"text encoder must be BERT or RoBERTa family, {directory} holds {config.model_type!r}")
    if pretrained:
        model = AutoModel.from_pretrained(directory, config=config, local_files_only=True)
    else:
        model = AutoModel.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, use_fast=True)
    return model, tokenizer


def text_hidden_states(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       checkpointed: bool = False) -> torch.Tensor:
    """Last hidden states ``[B, L, D]`` of the BERT/RoBERTa ``model`` for ids and padding mask ``[B, L]``.

    With ``checkpointed`` (and autograd recording) every layer is checkpointed.  This runs HF's own embeddings and
    layers in the order of HF's forward, rather than HF's ``gradient_checkpointing_enable()``: transformers 4.26
    checkpoints with the reentrant variant, which gives the layers no gradient when the embeddings are frozen.
    """
    if not (checkpointed and torch.is_grad_enabled()):
        return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    hidden = model.embeddings(input_ids=input_ids)
    extended_mask = model.get_extended_attention_mask(attention_mask, input_ids.shape)
    for layer in model.encoder.layer:
        hidden = run_segment(lambda states, mask, layer=layer: layer(states, mask)[0], hidden, extended_mask,
                             checkpointed=True)
    return hidden


class TextBatch(NamedTuple):
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    maskable: torch.Tensor  # [B, L] bool: real, non-special tokens


def tokenize(tokenizer: PreTrainedTokenizerBase, captions: Union[str, List[str]], max_length: int, device) -> TextBatch:
    """Pad to the longest caption of the batch, truncate to ``max_length``; a string is one caption (as LAVIS's
    models take ``text_input``)."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    encoded = tokenizer(captions, padding="longest", truncation=True, max_length=max_length,
                        return_special_tokens_mask=True, return_tensors="pt").to(device)
    maskable = encoded.attention_mask.bool() & ~encoded.special_tokens_mask.bool()
    return TextBatch(encoded.input_ids, encoded.attention_mask, maskable)
