"""``glscl_pretrain``: GLSCL pre-training, ITC + ITM + MLM + MGSC + MLTC, one :class:`PretrainingStep` per batch.

The step composes the pure objectives of :mod:`lavis_glscl.models.pretraining.objectives` over these passes:

- the full image and the full text through the encoders (ITC, and ITC inside each batch group with
  ``group_contrast``, :mod:`.group_contrast`; and fused for ITM, with negatives from the global batch, or each row's
  group partner when the batch comes in groups and ``itm_negatives: partner``), the MLM-masked text fused with the
  full image (MLM);
- MGSC's P1 (80 %-dropped image, full text) and P2 (full image, 40 %-masked text): each modality's prediction comes
  from the pass where it is masked, its detached target from the pass where it is not;
- MLTC's P3 (30 % of patches replaced by the mask token, full text), whose fused masked patches must find P2's, and
  P2's fused masked words, which must find P1's.

Every unimodal pass is computed once per distinct input and shared by the objectives that use it
(``share_unimodal_passes``); ``False`` recomputes it per use, as the released code does.  Every random number comes
from :class:`~lavis_glscl.models.pretraining.randomness.StepRandomness`.
"""
from functools import cached_property
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from lavis.common.registry import registry

from lavis_glscl.distributed import all_gather_no_grad, all_gather_with_grad, all_reduce_sum, world
from lavis_glscl.models.glscl.base import GlsclBase
from lavis_glscl.models.glscl.config import SIZE_CONFIGS
from lavis_glscl.models.glscl.outputs import GlsclIntermediateOutput, GlsclOutput, WeightedLoss
from lavis_glscl.models.layers.vision_transformer import visual_input
from lavis_glscl.models.pretraining import objectives
from lavis_glscl.models.pretraining.masking import keep_patch_indices, mgsc_text_mask, mlm_mask, patch_token_mask
from lavis_glscl.models.pretraining.negatives import (
    forbidden_negatives,
    group_partners,
    hard_negatives,
    negative_rows,
    random_partners,
)
from lavis_glscl.models.pretraining.randomness import StepRandomness
from lavis_glscl.paths import config_path


class UnimodalPasses:
    """Encoder outputs of one step by input variant: computed once and shared, or recomputed per use."""

    def __init__(self, share: bool):
        self.share = share
        self._cache: Dict[str, torch.Tensor] = {}

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.share:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def computed(self, key: str) -> Optional[torch.Tensor]:
        """The shared pass ``key`` if this step computed it (never when recomputing per use)."""
        return self._cache.get(key)


class PretrainingStep:
    """One training step: the batch (``images`` ``[B, F, 3, H, W]``, tokenised ``text``, ``group_size``: its rows come
    in consecutive groups of that many, 1 when ungrouped), its random numbers, the unimodal passes the objectives
    share, and the global-batch ids that decide which negatives are forbidden.

    Each objective is a method returning its unweighted loss; :meth:`losses` runs the active ones in a fixed order
    (the order the encoder and fusion passes draw dropout noise in).
    """

    def __init__(self, model: "GlsclPretrain", samples: dict):
        self.model = model
        self.config = model.config
        self.images = visual_input(samples, model.config.video_layout)
        self.batch, self.frames = self.images.shape[:2]
        self.text = model.tokenize(samples["text_input"])
        if self.text.input_ids.shape[0] != self.batch:
            raise ValueError(f"{self.text.input_ids.shape[0]} captions for {self.batch} images")
        self.rng = model.step_randomness(samples, self.batch)
        self.noise = self._draw_noise()
        self.passes = UnimodalPasses(self.config.share_unimodal_passes)
        ids = samples.get("image_id")
        self.row_ids = ids.to(model.device) if torch.is_tensor(ids) else None
        self.group_size = int(samples.get("batch_group_size", 1))
        self.intermediate = GlsclIntermediateOutput()

    def _draw_noise(self) -> Dict[str, torch.Tensor]:
        """Every random number of a step, always drawn in this order whichever objectives are on."""
        rng = self.rng
        num_patches, length = self.model.vision_transformer.num_patches, self.model.max_text_length
        return {
            "itm_negative": negative_rows(rng.global_uniform()),
            "itm_partner": rng.uniform(rng.global_batch_size),
            "itm_hard_image": rng.uniform(),
            "itm_hard_text": rng.uniform(),
            "mlm_select": rng.uniform(length),
            "mlm_action": rng.uniform(length),
            "mlm_random_ids": rng.integers(len(self.model.tokenizer), length),
            "mgsc_image": rng.uniform(num_patches),
            "mgsc_text": rng.uniform(length),
            "mltc_image": rng.uniform(num_patches),
        }

    def noise_for(self, key: str, length: Optional[int] = None) -> torch.Tensor:
        """This rank's noise ``key`` on the model's device, cut to ``length`` columns when given."""
        value = self.noise[key] if length is None else self.noise[key][:, :length]
        return value.to(self.model.device)

    # ------------------------------------------------------------------ shared passes and batch facts
    def image_full(self) -> torch.Tensor:
        return self.passes.get("image_full", lambda: self.model.encode_image(self.images))

    def text_full(self) -> torch.Tensor:
        return self.passes.get("text_full", lambda: self.model.encode_text(self.text.input_ids,
                                                                           self.text.attention_mask))

    @cached_property
    def forbidden(self) -> torch.Tensor:
        """Bool ``[B, G]``: global-batch columns a row may not take as a negative (itself, same ``image_id``)."""
        global_ids = all_gather_no_grad(self.row_ids) if self.row_ids is not None else None
        return forbidden_negatives(self.rng.row_offset, self.batch, self.rng.global_batch_size, self.row_ids,
                                   global_ids, self.model.device)

    def gathered_text(self, own_text: torch.Tensor):
        """Unimodal text tokens ``own_text`` ``[B, L, D]`` and masks of the global batch, zero-padded to its
        longest caption, and this rank's own padded to the same length: ``([G, L', D], [G, L'], [B, L', D],
        [B, L'])``."""
        all_text = all_gather_with_grad(own_text, pad_dim=1)
        all_mask = all_gather_no_grad(self.text.attention_mask, pad_dim=1)
        padding = all_mask.shape[1] - self.text.attention_mask.shape[1]
        return (all_text, all_mask, F.pad(own_text, (0, 0, 0, padding)),
                F.pad(self.text.attention_mask, (0, padding)))

    def tokens_with_partner_images(self, partners: torch.Tensor, negative: torch.Tensor,
                                   own_images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image tokens where ``negative`` rows show the global-batch image ``partners`` instead of their own
        (``own_images``, default the shared full-image pass); without shared passes, the mixed batch is encoded."""
        if self.config.share_unimodal_passes:
            own_images = self.image_full() if own_images is None else own_images
            partner_tokens = all_gather_with_grad(own_images)[partners]
            return torch.where(negative[:, None, None], partner_tokens, own_images)
        partner_images = all_gather_no_grad(self.images)[partners]
        return self.model.encode_image(torch.where(negative[:, None, None, None, None], partner_images, self.images))

    # ------------------------------------------------------------------ objectives
    def losses(self) -> Dict[str, WeightedLoss]:
        """Every active objective's unweighted loss with its weight, by the name it is logged under."""
        weights, group_contrast = self.config.loss_weights, self.config.group_contrast
        losses: Dict[str, WeightedLoss] = {}
        if weights.itc or (weights.itm and self.config.itm_negatives == "hard"):
            self.intermediate.image_feat = self.model.image_embedding(self.image_full(), self.frames)
            self.intermediate.text_feat = self.model.text_embedding(self.text_full())
            if weights.itc:
                losses["itc"] = WeightedLoss(self.itc(), weights.itc)
                losses.update(group_contrast.losses(self.intermediate.image_feat, self.intermediate.text_feat,
                                                    self.group_size, self.model.cl_temp, weights.itc))
        if weights.itm:
            losses["itm"] = WeightedLoss(self.itm(), weights.itm)
        if weights.mlm:
            losses["mlm"] = WeightedLoss(self.mlm(), weights.mlm)
        if self.mgsc_applies() or weights.mltc:
            losses.update(self.completion())
        self.intermediate.image_embeds = self.passes.computed("image_full")
        self.intermediate.text_embeds = self.passes.computed("text_full")
        return losses

    def itc(self) -> torch.Tensor:
        """ITC over the global batch: GLSCL's norm-softmax loss at the learnable temperature."""
        return objectives.itc_loss(self.intermediate.image_feat, self.intermediate.text_feat, self.model.cl_temp,
                                   all_gather_with_grad)

    def itm(self) -> torch.Tensor:
        """ITM with negatives from the global batch: random (half the rows, as the released code), hard, or the group
        partner's (``partner``, random in an ungrouped batch)."""
        mode = self.config.itm_negatives
        if mode == "hard":
            fusion, labels = self._hard_negative_pairs()
        elif mode == "partner" and self.group_size > 1:
            fusion, labels = self._partner_negative_pairs()
        else:
            negative = self.rng.local_rows(self.noise["itm_negative"]).to(self.model.device)
            partners = random_partners(self.noise_for("itm_partner"), self.forbidden)
            image_tokens = self.tokens_with_partner_images(partners, negative)
            fusion = self.model.fuse(self.text_full(), self.text.attention_mask, image_tokens, self.frames)
            labels = (~negative).long()
        logits = self.model.itm_score(fusion.cls_feats)
        self.intermediate.cls_feats, self.intermediate.itm_logits, self.intermediate.itm_labels = (
            fusion.cls_feats, logits, labels)
        return objectives.itm_loss(logits, labels)

    def _hard_negative_pairs(self):
        """ALBEF-style: every row's pair, its text with a hard negative image, its image with a hard negative text
        (drawn ∝ softmax of the ITC similarity over the global batch); labels 1, 0, 0."""
        model = self.model
        with torch.no_grad():
            image_embeds = F.normalize(self.intermediate.image_feat, dim=-1)
            text_embeds = F.normalize(self.intermediate.text_feat, dim=-1)
            text_to_image = text_embeds @ all_gather_no_grad(image_embeds).t() / model.cl_temp
            image_to_text = image_embeds @ all_gather_no_grad(text_embeds).t() / model.cl_temp
            hard_images = hard_negatives(text_to_image, self.forbidden, self.noise_for("itm_hard_image"))
            hard_texts = hard_negatives(image_to_text, self.forbidden, self.noise_for("itm_hard_text"))
        return self._pairs_with_negatives(hard_images, hard_texts)

    def _partner_negative_pairs(self):
        """Every row's pair, its text with its group partner's image, its image with the partner's text; labels 1, 0,
        0.  In the shapes video set a clip's partner is its time reversal, captioned with the opposite direction."""
        partners = group_partners(self.batch, self.group_size, self.rng.row_offset, self.model.device)
        if self.forbidden.gather(1, partners.unsqueeze(1)).any():
            raise ValueError(f"rows of a batch group (train_batch_group_size {self.group_size}) share an image_id, so "
                             "they cannot be each other's ITM negatives (itm_negatives: partner)")
        return self._pairs_with_negatives(partners, partners)

    def _pairs_with_negatives(self, negative_images: torch.Tensor, negative_texts: torch.Tensor):
        """Fuse ``[3B]`` rows: each row's own pair, its text with the global-batch image ``negative_images`` ``[B]``,
        its image with the global-batch text ``negative_texts`` ``[B]``; labels 1, 0, 0."""
        model = self.model
        own_images, own_text = self.image_full(), self.text_full()
        all_negative = torch.ones(self.batch, dtype=torch.bool, device=model.device)
        images_of_negatives = self.tokens_with_partner_images(negative_images, all_negative, own_images)
        all_text, all_mask, own_text, own_mask = self.gathered_text(own_text)
        text_tokens = torch.cat([own_text, own_text, all_text[negative_texts]])
        text_mask = torch.cat([own_mask, own_mask, all_mask[negative_texts]])
        image_tokens = torch.cat([own_images, images_of_negatives, own_images])
        fusion = model.fuse(text_tokens, text_mask, image_tokens, self.frames)
        labels = torch.cat([torch.ones(self.batch), torch.zeros(2 * self.batch)]).long().to(model.device)
        return fusion, labels

    def mlm(self) -> torch.Tensor:
        """MLM on the fused text of (MLM-masked text, full image), normalised by the global masked-token count."""
        model, text = self.model, self.text
        length = text.input_ids.shape[1]
        masked_ids, labels = mlm_mask(text.input_ids, text.maskable, self.noise_for("mlm_select", length),
                                      self.noise_for("mlm_action", length), self.noise_for("mlm_random_ids", length),
                                      model.tokenizer.mask_token_id, self.config.mlm_probability)
        text_tokens = self.passes.get("text_mlm", lambda: model.encode_text(masked_ids, text.attention_mask))
        fusion = model.fuse(text_tokens, text.attention_mask, self.image_full(), self.frames)
        selected = labels != -100
        world_size = world()[1]
        global_count = all_reduce_sum(selected.sum().float().detach())
        normalizer = (global_count / world_size).clamp(min=1.0 / world_size)
        return objectives.mlm_loss(model.mlm_score(fusion.text_feats[selected]), labels[selected], normalizer)

    def mgsc_applies(self) -> bool:
        """Whether this batch trains MGSC: its weight is on, and the batch is of images or ``video_completion.mgsc``."""
        return bool(self.config.loss_weights.mgsc) and (self.frames == 1 or self.config.video_completion.mgsc)

    def completion(self) -> Dict[str, WeightedLoss]:
        """MGSC and MLTC from the passes P1 (dropped image, full text), P2 (full image, masked text) and P3
        (mask-token image, full text); each target comes from the pass where its modality is unmasked."""
        model, config, text, frames = self.model, self.config, self.text, self.frames
        keep = keep_patch_indices(self.noise_for("mgsc_image"), 1.0 - config.mgsc_image_mask_ratio)
        text_mask = mgsc_text_mask(text.maskable, self.noise_for("mgsc_text"), config.mgsc_text_mask_ratio,
                                   config.mgsc_text_mask_with_replacement)
        masked_ids = text.input_ids.masked_fill(text_mask, model.tokenizer.mask_token_id)
        image_dropped = self.passes.get("image_dropped", lambda: model.encode_image(self.images, keep_indices=keep))
        text_masked = self.passes.get("text_mgsc", lambda: model.encode_text(masked_ids, text.attention_mask))
        p1 = model.fuse(self.text_full(), text.attention_mask, image_dropped, frames)
        p2 = model.fuse(text_masked, text.attention_mask, self.image_full(), frames)
        tau_global, tau_local = config.mgsc_temperature, config.mltc_temperature
        losses = {}
        weights = config.loss_weights
        if self.mgsc_applies():
            losses["mgsc_image"] = WeightedLoss(torch.stack([
                objectives.mgsc_loss(p1.image_feats[:, f], p2.image_feats[:, f], tau_global, all_gather_with_grad)
                for f in range(frames)]).mean(), weights.mgsc)
            losses["mgsc_text"] = WeightedLoss(objectives.mgsc_loss(p2.text_feats[:, 0], p1.text_feats[:, 0],
                                                                    tau_global, all_gather_with_grad), weights.mgsc)
        if weights.mltc:
            ragged_gather = lambda rows: all_gather_with_grad(rows, pad_dim=0)  # noqa: E731
            losses["mltc_text"] = WeightedLoss(objectives.mltc_loss(p2.text_feats, p1.text_feats, text_mask,
                                                                    tau_local, ragged_gather), weights.mltc)
            if frames == 1 or config.video_completion.mltc:
                token_mask = patch_token_mask(self.noise_for("mltc_image"), config.mltc_image_mask_ratio)
                image_masked = self.passes.get("image_token_masked",
                                               lambda: model.encode_image(self.images, token_mask=token_mask))
                p3 = model.fuse(self.text_full(), text.attention_mask, image_masked, frames)
                cls_slots = torch.zeros(self.batch, frames, dtype=torch.bool, device=model.device)
                positions = torch.cat([cls_slots, token_mask.repeat(1, frames)], dim=1)
                losses["mltc_image"] = WeightedLoss(objectives.mltc_loss(
                    p3.image_feats, p2.image_feats, positions, tau_local,
                    ragged_gather if config.mltc_image_gather else None), weights.mltc)
        return losses


@registry.register_model("glscl_pretrain")
class GlsclPretrain(GlsclBase):
    """GLSCL pre-training: ITC + ITM + MLM + MGSC + MLTC (weights in ``loss_weights``; 0 turns an objective and
    its passes off, and freezes what only it trains)."""

    # the sizes, and the video demo's training options
    PRETRAINED_MODEL_CONFIG_DICT = {**SIZE_CONFIGS, "demo_video": config_path("models/glscl/pretrain_demo_video.yaml")}
    OBJECTIVES = ("itc", "itm", "mlm", "mgsc", "mltc")
    STEP = PretrainingStep

    def __init__(self, config):
        super().__init__(config)
        unsupported = [name for name in config.active_objectives if name not in self.OBJECTIVES]
        if unsupported:
            raise ValueError(f"{type(self).__name__} has no objective {unsupported}; its objectives: "
                             f"{list(self.OBJECTIVES)} (the rank objective is glscl_retrieval's)")
        self._steps_without_schedule = 0

    def objective_reach(self) -> Dict[str, list]:
        fusion = [self.token_type_embeddings, self.cross_modal_text_layers, self.cross_modal_image_layers]
        poolers = [self.cross_modal_text_pooler, self.cross_modal_image_pooler]
        return {
            "itc": [self.vision_proj, self.language_proj, self.cl_temp],
            "itm": [*fusion, *poolers, self.itm_score],
            # MLM reads the fused text tokens: the last image-side layer's output feeds no text layer
            "mlm": [self.token_type_embeddings, self.cross_modal_text_layers, *self.cross_modal_image_layers[:-1],
                    self.mlm_score],
            "mgsc": fusion,
            "mltc": [*fusion, self.vision_transformer.visual_mask_token],
        }

    def step_randomness(self, samples: dict, batch: int) -> StepRandomness:
        """The step's random numbers from (mask seed, epoch, iteration); outside a runner (no ``iters`` in the
        samples), from a per-model call counter."""
        if "iters" in samples:
            epoch, iteration = int(samples.get("epoch", 0)), int(samples["iters"])
        else:
            epoch, iteration = -1, self._steps_without_schedule
            self._steps_without_schedule += 1
        rank, world_size = world()
        return StepRandomness(self.config.mask_seed, epoch, iteration, batch, rank, world_size)

    def forward(self, samples: dict) -> GlsclOutput:
        """``samples``: ``image`` ``[B, 3, H, W]`` or ``video`` ``[B, F, 3, H, W]``, ``text_input`` (list of str),
        optionally ``image_id`` ``[B]`` (negatives never share it) and the runner's ``epoch``/``iters``."""
        step = self.STEP(self, samples)
        losses = step.losses()
        total = sum(weighted.weight * weighted.loss for weighted in losses.values())
        return GlsclOutput(loss=total, intermediate_output=step.intermediate,
                           **{f"loss_{name}": weighted.loss for name, weighted in losses.items()})
