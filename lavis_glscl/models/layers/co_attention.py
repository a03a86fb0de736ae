"""Co-attention fusion layers (METER's ``BertCrossLayer``), built on HF's own ``BertLayer``.

A ``BertLayer`` configured as a decoder with cross-attention is exactly self-attention over its own
stream, cross-attention to the other stream, then the feed-forward block, with the parameter names of
the released checkpoints (``attention``, ``crossattention``, ``intermediate``, ``output``).  Unlike the
released copy, HF's layer returns the cross-attention probabilities, which ALIGN-BENCH reads.
"""
from typing import Optional, Tuple

import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer


def co_attention_config(hidden_size: int, num_heads: int, intermediate_size: int, dropout: float = 0.1) -> BertConfig:
    return BertConfig(
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        hidden_act="gelu",
        is_decoder=True,
        add_cross_attention=True,
    )


def extended_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Padding mask ``[B, L]`` (1 = token) → additive mask ``[B, 1, 1, L]`` for HF attention."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class CoAttentionLayer(BertLayer):
    """One side of a co-attention pair: its stream attends to itself, then to the other stream."""

    def co_attend(self, hidden_states: torch.Tensor, other_states: torch.Tensor, attention_mask: torch.Tensor,
                  other_attention_mask: torch.Tensor, output_attentions: bool = False
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``hidden_states`` ``[B, L, D]``, ``other_states`` ``[B, M, D]``, additive masks ``[B, 1, 1, L|M]``.

        Returns the new states ``[B, L, D]`` and, with ``output_attentions``, the cross-attention
        probabilities ``[B, heads, L, M]``.
        """
        outputs = self(hidden_states, attention_mask=attention_mask, encoder_hidden_states=other_states,
                       encoder_attention_mask=other_attention_mask, output_attentions=output_attentions)
        return outputs[0], (outputs[2] if output_attentions else None)
