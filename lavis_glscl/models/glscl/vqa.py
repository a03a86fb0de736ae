"""``glscl_vqa``: VQA as classification over an answer vocabulary (the released recipe): an MLP on the pooled fused
features ``[B, 2D]``, binary cross-entropy on soft answer scores, scaled by the vocabulary size.

Training samples follow LAVIS's VQA collater (``image``, ``text_input`` questions, flattened ``answer`` strings with
``weight`` and ``n_answers``); ``predict_answers`` serves LAVIS's ``vqa`` task.
"""
import dataclasses
import importlib
import json
import logging
import os
from typing import Dict, List

import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from lavis.common.utils import get_cache_path
from torch import nn

from lavis_glscl.models.glscl.base import GlsclBase, init_bert_weights
from lavis_glscl.models.glscl.config import SIZE_CONFIGS, GlsclConfig, LossWeights
from lavis_glscl.models.glscl.outputs import GlsclOutput
from lavis_glscl.models.layers.vision_transformer import visual_input
from lavis_glscl.paths import PACKAGE_PREFIX


def load_answer_list(spec: str) -> List[str]:
    """The VQA answer vocabulary: a json list file (a relative path that is not there is under LAVIS's
    ``cache_root``, as LAVIS's ``coco/annotations/answer_list.json``), or ``package:<module>`` for a package with
    ``get_answers()`` (``package:easy_vqa``)."""
    if spec.startswith(PACKAGE_PREFIX):
        return list(importlib.import_module(spec[len(PACKAGE_PREFIX):]).get_answers())
    path = spec if os.path.isabs(spec) or os.path.isfile(spec) else get_cache_path(spec)
    with open(path) as handle:
        return list(json.load(handle))


@registry.register_model("glscl_vqa")
class GlsclVqa(GlsclBase):
    """GLSCL with a VQA classifier; the fusion and poolers train under it, the pre-training heads take no part."""

    # The architecture of each type is the pre-training one; the answer vocabulary comes with the run's data.
    PRETRAINED_MODEL_CONFIG_DICT = SIZE_CONFIGS
    RELEASED_MISSING_OK = ("rank_output", "vqa_classifier")

    def __init__(self, config: GlsclConfig):
        if not config.answer_list:
            raise ValueError("glscl_vqa needs model.answer_list: a json list of answers, or package:easy_vqa")
        # the type yaml's pre-training objectives do not apply
        super().__init__(dataclasses.replace(config, loss_weights=LossWeights()))
        self.answers = load_answer_list(config.answer_list)
        self.answer_index = {answer: index for index, answer in enumerate(self.answers)}
        hidden = 2 * config.fusion.hidden_size
        self.vqa_classifier = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                            nn.Linear(hidden, len(self.answers)))
        self.vqa_classifier.apply(init_bert_weights)

    def active_objectives(self) -> List[str]:
        return ["vqa"]

    def objective_reach(self) -> Dict[str, list]:
        return {"vqa": [*self.fused_pair_reach(), self.vqa_classifier]}

    def answer_logits(self, samples: dict) -> torch.Tensor:
        """``[B, num_answers]`` logits for the questions ``samples['text_input']`` about ``samples['image']``."""
        images = visual_input(samples, self.config.video_layout)
        text = self.tokenize(samples["text_input"])
        fusion = self.fuse(self.encode_text(text.input_ids, text.attention_mask), text.attention_mask,
                           self.encode_image(images), images.shape[1])
        return self.vqa_classifier(fusion.cls_feats)

    def soft_targets(self, answers: List[str], weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``[B, num_answers]`` answer scores from LAVIS's flattened answers; answers outside the vocabulary are
        dropped (counted in the log)."""
        targets = torch.zeros(len(counts), len(self.answers), device=self.device)
        rows = torch.arange(len(counts)).repeat_interleave(counts.cpu())
        unknown = 0
        for row, answer, weight in zip(rows.tolist(), answers, weights.tolist()):
            if answer in self.answer_index:
                targets[row, self.answer_index[answer]] += weight
            else:
                unknown += 1
        if unknown:
            logging.debug("%d answers outside the VQA vocabulary were ignored", unknown)
        return targets.clamp(max=1.0)

    def forward(self, samples: dict) -> GlsclOutput:
        logits = self.answer_logits(samples)
        targets = self.soft_targets(samples["answer"], samples["weight"], samples["n_answers"])
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        return GlsclOutput(loss=loss, loss_vqa=loss)

    @torch.no_grad()
    def predict_answers(self, samples: dict, answer_list=None, **kwargs) -> List[str]:
        """The highest-scoring answer per question (LAVIS's ``vqa`` task calls this; its generation options do
        not apply to a classifier).  With ``answer_list``, only those answers are candidates."""
        logits = self.answer_logits(samples)
        if answer_list:
            allowed = torch.full((len(self.answers),), float("-inf"), device=logits.device)
            allowed[[self.answer_index[a] for a in answer_list if a in self.answer_index]] = 0.0
            logits = logits + allowed
        return [self.answers[i] for i in logits.argmax(dim=1).tolist()]
