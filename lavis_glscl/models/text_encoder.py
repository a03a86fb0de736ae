"""The text tower: a Hugging Face ``AutoModel`` (BERT or RoBERTa family) and its tokenizer, from local files."""
from typing import List, Mapping, NamedTuple, Optional, Tuple

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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


class TextBatch(NamedTuple):
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    maskable: torch.Tensor  # [B, L] bool: real, non-special tokens


def tokenize(tokenizer: PreTrainedTokenizerBase, captions: List[str], max_length: int, device) -> TextBatch:
    """Pad to the longest caption of the batch, truncate to ``max_length``."""
    encoded = tokenizer(list(captions), padding="longest", truncation=True, max_length=max_length,
                        return_special_tokens_mask=True, return_tensors="pt").to(device)
    maskable = encoded.attention_mask.bool() & ~encoded.special_tokens_mask.bool()
    return TextBatch(encoded.input_ids, encoded.attention_mask, maskable)
