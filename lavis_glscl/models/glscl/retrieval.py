"""``glscl_retrieval``: GLSCL fine-tuned for image/video-text retrieval.

Besides the pre-training objectives (the ALBEF-style recipe trains ITC + ITM with hard negatives), the released
fine-tuning objective ``rank``: each image scores its caption and ``rank_negatives`` random captions of other
images from the global batch with ``rank_output`` (a 2D → 1 head initialised from the ITM head's "match" row),
cross-entropy over them, caption first.  At test time the ITC shortlist is re-ranked by ``rank_output`` when the
model has it, else by the ITM head.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from torch import nn

from lavis_glscl.models.glscl.outputs import WeightedLoss
from lavis_glscl.models.glscl.pretrain import GlsclPretrain, PretrainingStep
from lavis_glscl.paths import config_path


class RetrievalStep(PretrainingStep):
    """A pre-training step plus the rank objective, which runs last."""

    def losses(self) -> Dict[str, WeightedLoss]:
        losses = super().losses()
        if self.config.loss_weights.rank:
            losses["rank"] = WeightedLoss(self.rank(), self.config.loss_weights.rank)
        return losses

    def rank(self) -> torch.Tensor:
        """Cross-entropy of each image over its caption (candidate 0) and ``rank_negatives`` other captions of the
        global batch (drawn from the step's ``itm_partner`` noise among the allowed columns)."""
        model = self.model
        image_tokens, own_text = self.image_full(), self.text_full()
        num_negatives = self.config.rank_negatives
        available = int((~self.forbidden).sum(dim=1).min())
        if available < num_negatives:
            raise ValueError(f"the rank loss needs {num_negatives} negative captions per image, the global batch "
                             f"offers {available}: raise the batch size or lower rank_negatives")
        negatives = self.noise_for("itm_partner").masked_fill(self.forbidden, 2.0).topk(
            num_negatives, dim=1, largest=False).indices  # [B, K] global caption indices
        all_text, all_mask, own_text, own_mask = self.gathered_text(own_text)
        candidates = torch.cat([own_text.unsqueeze(1), all_text[negatives]], dim=1)  # [B, 1 + K, L, D]
        masks = torch.cat([own_mask.unsqueeze(1), all_mask[negatives]], dim=1)
        pairs = 1 + num_negatives
        fusion = model.fuse(candidates.flatten(0, 1), masks.flatten(0, 1),
                            image_tokens.repeat_interleave(pairs, dim=0), self.frames)
        scores = model.rank_output(fusion.cls_feats).view(self.batch, pairs)
        return F.cross_entropy(scores, torch.zeros(self.batch, dtype=torch.long, device=model.device))


@registry.register_model("glscl_retrieval")
class GlsclRetrieval(GlsclPretrain):
    """GLSCL for image/video-text retrieval: ITC shortlist + cross-encoder re-rank at test time; trains the
    ALBEF-style ITC + ITM (hard negatives) or the released rank recipe."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": config_path("models/glscl/retrieval_base.yaml"),
        "demo": config_path("models/glscl/retrieval_demo.yaml"),
        "tiny": config_path("models/glscl/retrieval_tiny.yaml"),
    }
    OBJECTIVES = (*GlsclPretrain.OBJECTIVES, "rank")
    STEP = RetrievalStep

    def __init__(self, config):
        super().__init__(config)
        if config.loss_weights.rank:
            self.rank_output = nn.Linear(2 * config.fusion.hidden_size, 1)
            self.init_rank_output()

    @torch.no_grad()
    def init_rank_output(self) -> None:
        self.rank_output.weight.copy_(self.itm_score.fc.weight[1:2])
        self.rank_output.bias.copy_(self.itm_score.fc.bias[1:2])

    def objective_reach(self) -> Dict[str, list]:
        reach = super().objective_reach()
        reach["rank"] = [*self.fused_pair_reach(), *([self.rank_output] if hasattr(self, "rank_output") else [])]
        return reach

    def load_checkpoint(self, url_or_filename, trust_checkpoint: bool = False, min_coverage: float = 0.5):
        """As the base's; a checkpoint without ``rank_output`` (any pre-training one) re-initialises it from its
        ITM head, as the released fine-tuning does."""
        report = super().load_checkpoint(url_or_filename, trust_checkpoint, min_coverage)
        if hasattr(self, "rank_output") and "rank_output.weight" in report.missing:
            self.init_rank_output()
        return report

    def match_score(self, cls_feats: torch.Tensor) -> torch.Tensor:
        """The fine-tuned ``rank_output`` score when the model has one, else the ITM head's "match" logit."""
        if hasattr(self, "rank_output"):
            return self.rank_output(cls_feats)[:, 0]
        return super().match_score(cls_feats)
