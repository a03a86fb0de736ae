"""Poolers and task heads of GLSCL, with the released checkpoints' parameter names."""
import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform


class Pooler(nn.Module):
    """``tanh(dense(·))`` of the first ``num_frames`` tokens' mean: the CLS token for text and images,
    the mean of the frame CLS tokens for video.  ``[B, L, D]`` → ``[B, D]``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, :num_frames].mean(dim=1)))


class ITMHead(nn.Module):
    """Image-text matching logits ``[B, 2]`` from the concatenated pooled features ``[B, 2D]``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 2)

    def forward(self, cls_feats: torch.Tensor) -> torch.Tensor:
        return self.fc(cls_feats)


class MLMHead(nn.Module):
    """BERT prediction head: transform, then an untied decoder to the vocabulary plus a bias."""

    def __init__(self, bert_config):
        super().__init__()
        self.transform = BertPredictionHeadTransform(bert_config)
        self.decoder = nn.Linear(bert_config.hidden_size, bert_config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(bert_config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` → ``[..., V]``."""
        return self.decoder(self.transform(hidden_states)) + self.bias


def projection_head(hidden_size: int, embed_dim: int) -> nn.Sequential:
    """ITC projection: Linear → LayerNorm → GELU → Linear to ``embed_dim``."""
    return nn.Sequential(
        nn.Linear(hidden_size, hidden_size),
        nn.LayerNorm(hidden_size),
        nn.GELU(),
        nn.Linear(hidden_size, embed_dim),
    )
