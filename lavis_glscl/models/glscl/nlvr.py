"""``glscl_nlvr``: NLVR2-style visual reasoning over an image pair, as the released METER/GLSCL head does it.

The sentence is fused with each image in its own pass (the left image with token type 1, the right one with a third
token type, 2); the two pooled outputs ``[B, 2D]`` are concatenated and an MLP ``4D → 2D → LN → GELU → 2`` decides
whether the sentence is true of the pair, trained with cross-entropy.

Samples follow LAVIS's NLVR datasets (``image0``, ``image1`` ``[B, 3, H, W]``, ``text_input``, ``label`` 0/1);
:meth:`GlsclNlvr.predict` serves LAVIS's ``multimodal_classification`` task.  A pre-training checkpoint has two token
types: loading it starts the third row from the image row (:meth:`GlsclNlvr._load_from_state_dict`).
"""
import dataclasses
import logging
from typing import Dict, List

import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from torch import nn

from lavis_glscl.models.glscl.base import GlsclBase, init_bert_weights
from lavis_glscl.models.glscl.config import SIZE_CONFIGS, GlsclConfig, LossWeights
from lavis_glscl.models.glscl.outputs import GlsclOutput
from lavis_glscl.models.layers.vision_transformer import as_frames

TEXT_TYPE, LEFT_IMAGE_TYPE, RIGHT_IMAGE_TYPE = 0, 1, 2
NUM_CLASSES = 2  # LAVIS's NLVR labels: "False" 0, "True" 1


def pair_classifier(hidden: int) -> nn.Sequential:
    """The released NLVR2 head on two concatenated ``[B, 2 * hidden]`` pooled outputs."""
    return nn.Sequential(nn.Linear(4 * hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(),
                         nn.Linear(2 * hidden, NUM_CLASSES))


def extend_token_types(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``[T, D]`` token-type embeddings grown to ``[rows, D]``, each new row a copy of the image row (type 1), as the
    released NLVR2 fine-tuning starts the second image's type."""
    extra = weight[LEFT_IMAGE_TYPE:LEFT_IMAGE_TYPE + 1].expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra], dim=0)


@registry.register_model("glscl_nlvr")
class GlsclNlvr(GlsclBase):
    """GLSCL with the NLVR2 pair classifier; the fusion, poolers and token types train under it, the pre-training
    heads take no part."""

    # The architecture of each type is the pre-training one; the classifier is the same for every type.
    PRETRAINED_MODEL_CONFIG_DICT = SIZE_CONFIGS
    RELEASED_MISSING_OK = ("nlvr_classifier",)
    NUM_TOKEN_TYPES = 3

    def __init__(self, config: GlsclConfig):
        # the type yaml's pre-training objectives do not apply
        super().__init__(dataclasses.replace(config, loss_weights=LossWeights()))
        self.nlvr_classifier = pair_classifier(config.fusion.hidden_size)
        self.nlvr_classifier.apply(init_bert_weights)
        self.init_right_image_type()

    @torch.no_grad()
    def init_right_image_type(self) -> None:
        """Start the right image's token type as the (left) image's."""
        self.token_type_embeddings.weight[RIGHT_IMAGE_TYPE] = self.token_type_embeddings.weight[LEFT_IMAGE_TYPE]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights with fewer token types (any pre-training checkpoint, the released ones included) load too: the
        missing rows start from the checkpoint's image row."""
        key = prefix + "token_type_embeddings.weight"
        rows = self.token_type_embeddings.num_embeddings
        if key in state_dict and state_dict[key].shape[0] < rows:
            logging.info("%s: token type %d starts from the checkpoint's image type %d", type(self).__name__,
                         RIGHT_IMAGE_TYPE, LEFT_IMAGE_TYPE)
            state_dict[key] = extend_token_types(state_dict[key], rows)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def active_objectives(self) -> List[str]:
        return ["nlvr"]

    def objective_reach(self) -> Dict[str, list]:
        return {"nlvr": [*self.fused_pair_reach(), self.nlvr_classifier]}

    def pair_logits(self, samples: dict) -> torch.Tensor:
        """``[B, 2]`` logits (False, True) of the sentences ``samples['text_input']`` about the image pairs
        ``samples['image0']``, ``samples['image1']`` (``[B, 3, H, W]`` each)."""
        left, right = as_frames(samples["image0"]), as_frames(samples["image1"])
        text = self.tokenize(samples["text_input"])
        text_tokens = self.encode_text(text.input_ids, text.attention_mask)
        # one ViT pass over both images: [2B, F + F * K, D], left images first
        left_tokens, right_tokens = self.encode_image(torch.cat([left, right]).to(self.device)).chunk(2)
        frames = left.shape[1]
        left_fused = self.fuse(text_tokens, text.attention_mask, left_tokens, frames, image_token_type=LEFT_IMAGE_TYPE)
        right_fused = self.fuse(text_tokens, text.attention_mask, right_tokens, frames,
                                image_token_type=RIGHT_IMAGE_TYPE)
        return self.nlvr_classifier(torch.cat([left_fused.cls_feats, right_fused.cls_feats], dim=-1))

    def forward(self, samples: dict) -> GlsclOutput:
        loss = F.cross_entropy(self.pair_logits(samples), samples["label"].to(self.device))
        return GlsclOutput(loss=loss, loss_nlvr=loss)

    @torch.no_grad()
    def predict(self, samples: dict) -> Dict[str, torch.Tensor]:
        """``{"predictions": [B, 2] logits, "targets": [B] labels}``, what LAVIS's ``multimodal_classification``
        task reads."""
        return {"predictions": self.pair_logits(samples), "targets": samples["label"]}
