"""A research switch of the video demo, in one place: ITC inside each batch group (``group_contrast``).

With training batches in groups (``train_batch_group_size``: a clip and its time reversal), ITC over the whole batch
hardly weighs a clip against its reversal while the batch's other clips still differ in what they show; the group term
contrasts inside each group too, so that the only difference left to match on is the order of the frames::

    model:
      group_contrast: {weight: 1.0, detach_text: true, text_margin: 0.9}

``weight`` times the ITC weight gives the group term's weight (0: off, the released ITC alone); ``temperature`` fixes
its temperature (default: ITC's learnable one); ``detach_text`` lets it train the visual side only, toward the captions'
current features (while a clip and its reversal still embed alike, a trained text side lowers the group loss fastest
by making the opposite captions alike: MiniLM's CLS went from cosine 0.94 to 0.999 in 100 steps, after which nothing
taught order); ``text_margin`` adds ``loss_itc_group_text``, a hinge on the cosine of a group's captions above that
margin, on the group term's logit scale.
"""
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from lavis_glscl.models.glscl.outputs import WeightedLoss


@dataclass
class GroupContrast:
    weight: float = 0.0
    temperature: Optional[float] = None
    detach_text: bool = False
    text_margin: Optional[float] = None

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"group_contrast.weight must be >= 0, got {self.weight}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"group_contrast.temperature must be > 0, got {self.temperature}")
        if self.text_margin is not None and not -1.0 <= self.text_margin < 1.0:
            raise ValueError(f"group_contrast.text_margin must be a cosine in [-1, 1), got {self.text_margin}")

    def losses(self, image_feat: torch.Tensor, text_feat: torch.Tensor, group_size: int, itc_temperature,
               itc_weight: float) -> Dict[str, WeightedLoss]:
        """The group terms of a batch of ITC embeddings ``[B, E]`` in consecutive groups of ``group_size``, each
        weighted ``weight`` times the ITC weight: ``itc_group`` and, with ``text_margin``, ``itc_group_text``."""
        if not self.weight or group_size < 2:
            return {}
        temperature = self.temperature or itc_temperature
        weight = self.weight * itc_weight
        texts = text_feat.detach() if self.detach_text else text_feat
        losses = {"itc_group": WeightedLoss(group_contrastive_loss(image_feat, texts, group_size, temperature),
                                            weight)}
        if self.text_margin is not None:
            # the hinge does not tune the temperature: a constant scale
            scale = torch.as_tensor(temperature).detach()
            losses["itc_group_text"] = WeightedLoss(
                group_text_separation_loss(text_feat, group_size, self.text_margin, scale), weight)
        return losses


def group_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, group_size: int,
                           temperature) -> torch.Tensor:
    """ITC inside each group of ``group_size`` consecutive rows of unimodal embeddings ``[B, D]``: every image must
    find its text among its group's texts and every text its image, as :func:`itc_loss` over the batch (sum of both
    directions).  With a clip and its time reversal as a group this is the time-order contrast of Bagad et al.,
    "Test of Time" (CVPR 2023): the only difference left to match on is the order of the frames."""
    batch, dim = image_embeds.shape
    if group_size < 2 or batch % group_size or text_embeds.shape != image_embeds.shape:
        raise ValueError(f"group_contrastive_loss needs [B, D] embeddings of equal shape, B a multiple of a group "
                         f"size >= 2; got {tuple(image_embeds.shape)}, {tuple(text_embeds.shape)}, group {group_size}")
    image = F.normalize(image_embeds, dim=-1).view(-1, group_size, dim)
    text = F.normalize(text_embeds, dim=-1).view(-1, group_size, dim)
    logits = image @ text.transpose(1, 2) / temperature  # [B / group, group, group]
    targets = torch.arange(group_size, device=logits.device).repeat(batch // group_size)
    return (F.cross_entropy(logits.reshape(-1, group_size), targets)
            + F.cross_entropy(logits.transpose(1, 2).reshape(-1, group_size), targets))


def group_text_separation_loss(text_embeds: torch.Tensor, group_size: int, margin: float,
                               temperature) -> torch.Tensor:
    """Hinge on the cosine of every two texts of a group of ``group_size`` consecutive rows ``[B, D]`` above
    ``margin``, divided by ``temperature`` (a margin on ITC's logit scale), averaged over those pairs.  It keeps the
    captions a group contrasts ("to the left" / "to the right") apart, which both ITC terms, while a clip and its
    reversal still embed alike, lower fastest by making them alike: at weight 1 on the cosine scale the batch ITC
    still held them at 0.96.  Identical captions add a constant (the cosine of a text with itself has no
    gradient)."""
    batch, dim = text_embeds.shape
    if group_size < 2 or batch % group_size:
        raise ValueError(f"group_text_separation_loss needs [B, D] texts, B a multiple of a group size >= 2; "
                         f"got {tuple(text_embeds.shape)}, group {group_size}")
    text = F.normalize(text_embeds, dim=-1).view(-1, group_size, dim)
    cosines = text @ text.transpose(1, 2)  # [B / group, group, group]
    other = ~torch.eye(group_size, dtype=torch.bool, device=text.device)
    return F.relu(cosines[:, other] - margin).mean() / temperature
