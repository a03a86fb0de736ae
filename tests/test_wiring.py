"""How the GLSCL models wire their pure parts together (issue 13, item 6).

The pure functions (masks, NSL, negatives) have their own tests; these pin which pass, mask, slice, label and
option reaches them inside a training step.  Every expectation is computed here, from the method reference
(``glscl_method.md`` §3-4), the tiny yamls and torch/HF references, never from the code under test, and is
read through seams the family-package move keeps: the registry, ``model(samples)`` and its losses' gradients,
``encode_image`` / ``encode_text`` / ``fuse`` (wrapped to record their calls), the heads, ``token_type_embeddings``
and the tokenizer.  Dropout is set to 0 through the config, so models stay in training mode.

The passes of a step, recognised by their inputs (§4.5-4.6):
P1 image dropped to F + F * int(N * 0.2) tokens + full text; P2 full image + ``<mask>``-ed text;
P3 full-length image with ``visual_mask_token`` patches (``token_mask``) + full text.
"""
import inspect
from typing import NamedTuple

import helpers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_batch, typed_config
from omegaconf import OmegaConf
from PIL import Image

# ----------------------------------------------------------------------------------------------------- helpers
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FUSION_PARAM = "cross_modal_text_layers.0.attention.self.query.weight"
ENCODER_PARAM = "vision_transformer.conv1.weight"


def tiny_config(arch: str, **overrides):
    return helpers.tiny_config(arch, dropout=False, **overrides)


def tiny(arch: str, **overrides):
    """The registered ``arch``'s tiny model, seeded, without dropout, ``overrides`` replacing whole config entries."""
    return helpers.tiny(arch, dropout=False, **overrides)


def tiny_sizes():
    """Patches per frame N and the three mask ratios, from the tiny pre-training yaml."""
    cfg = typed_config("glscl_pretrain")
    patches = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    return patches, cfg


class Call(NamedTuple):
    args: dict
    out: object


class Trace:
    """Records every ``encode_image``, ``encode_text`` and ``fuse`` call of ``model``: arguments by name, output."""

    def __init__(self, model):
        self.images, self.texts, self.fusions = [], [], []
        for name, log in (("encode_image", self.images), ("encode_text", self.texts), ("fuse", self.fusions)):
            setattr(model, name, self._recorder(getattr(model, name), log))

    @staticmethod
    def _recorder(method, log):
        signature = inspect.signature(method)

        def record(*args, **kwargs):
            out = method(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            log.append(Call(dict(bound.arguments), out))
            return out

        return record


def source(calls, tokens):
    """The recorded encoder call whose output equals ``tokens``, or None."""
    for call in calls:
        if call.out.shape == tokens.shape and torch.equal(call.out, tokens):
            return call
    return None


def match_rows(rows, candidates):
    """For each row of ``rows`` ``[R, ...]`` the index of the equal row of ``candidates`` ``[C, ...]`` (unique)."""
    distance = (rows.detach().flatten(1)[:, None] - candidates.detach().flatten(1)[None]).abs().amax(dim=-1)
    best = distance.min(dim=1)
    assert (best.values < 1e-5).all(), "a fused row is none of the candidates"
    assert ((distance < 1e-5).sum(dim=1) == 1).all(), "a fused row matches several candidates"
    return best.indices


def gradient_positions(loss, tokens):
    """Bool ``[B, L]``: positions of ``tokens`` ``[B, L, D]`` that ``loss`` sends a gradient to; None: no path."""
    (grad,) = torch.autograd.grad(loss, [tokens], retain_graph=True, allow_unused=True)
    return None if grad is None else grad.abs().sum(dim=-1) > 0


def assert_no_gradient(loss, *tensors):
    for tensor in tensors:
        positions = gradient_positions(loss, tensor)
        assert positions is None or not positions.any(), "a detached target received a gradient"


def nsl(pred, target, temperature):
    """The method reference's NormSoftmaxLoss of ``n(pred) n(target)^T / t``: the row-wise plus the column-wise
    mean negative log-likelihood of the diagonal."""
    sim = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).t() / temperature
    return -(sim.log_softmax(dim=1).diagonal().mean() + sim.log_softmax(dim=0).diagonal().mean())


def hf_text(model, captions, max_length):
    """Ids, padding mask and maskable (real, non-special) positions straight from the HF tokenizer."""
    encoded = model.tokenizer(list(captions), padding="longest", truncation=True, max_length=max_length,
                              return_special_tokens_mask=True, return_tensors="pt")
    maskable = encoded.attention_mask.bool() & ~encoded.special_tokens_mask.bool()
    return encoded.input_ids, encoded.attention_mask, maskable


# ------------------------------------------------------------------------------- MGSC / MLTC: passes and masks
class Pass(NamedTuple):
    fusion: object  # the fuse output
    text: Call  # the encode_text call that made its text tokens
    image: Call  # the encode_image call that made its image tokens
    fuse_args: dict


class CompletionStep(NamedTuple):
    model: object
    frames: int
    out: object
    ids: torch.Tensor
    attention_mask: torch.Tensor
    maskable: torch.Tensor
    p1: Pass
    p2: Pass
    p3: Pass


@pytest.fixture(scope="module", params=[1, 3], ids=["image", "video3"])
def completion_step(request, lavis_glscl):
    """One pre-training step with only MGSC and MLTC on (so every fusion pass is P1, P2 or P3), its passes
    recognised by their inputs."""
    frames = request.param
    model = tiny("glscl_pretrain", loss_weights={"mgsc": 1.0, "mltc": 1.0})
    trace = Trace(model)
    batch = tiny_batch(batch_size=6, frames=None if frames == 1 else frames, seed=1)
    out = model(batch)
    ids, attention_mask, maskable = hf_text(model, batch["text_input"], typed_config("glscl_pretrain").text.max_length)
    passes = {}
    assert len(trace.fusions) == 3, "MGSC + MLTC take exactly the three fusion passes P1, P2, P3"
    for call in trace.fusions:
        text, image = source(trace.texts, call.args["text_tokens"]), source(trace.images, call.args["image_tokens"])
        assert text is not None and image is not None, "fused tokens that no encoder call produced"
        full_text = torch.equal(text.args["input_ids"], ids)
        keep, token_mask = image.args.get("keep_indices"), image.args.get("token_mask")
        assert call.args["num_frames"] == frames
        assert torch.equal(call.args["text_mask"], attention_mask)
        if keep is not None and token_mask is None and full_text:
            name = "p1"
        elif keep is None and token_mask is None and not full_text:
            name = "p2"
        elif keep is None and token_mask is not None and full_text:
            name = "p3"
        else:
            raise AssertionError(f"a fusion pass that is none of P1/P2/P3 (keep {keep is not None}, token mask "
                                 f"{token_mask is not None}, full text {full_text})")
        assert name not in passes, f"two fusion passes look like {name}"
        passes[name] = Pass(call.out, text, image, call.args)
    return CompletionStep(model, frames, out, ids, attention_mask, maskable, **passes)


def test_mgsc_image_predicts_with_p1_frame_cls_tokens_against_detached_p2_averaged_over_frames(completion_step):
    s, frames = completion_step, completion_step.frames
    loss = s.out.loss_mgsc_image
    positions = gradient_positions(loss, s.p1.fusion.image_feats)
    assert positions is not None, "MGSC image takes its prediction from P1 (dropped image, full text)"
    expected = torch.zeros_like(positions)
    expected[:, :frames] = True  # the F fused frame-CLS tokens, no patch
    assert torch.equal(positions, expected)
    assert_no_gradient(loss, s.p1.fusion.text_feats, s.p2.fusion.image_feats, s.p2.fusion.text_feats,
                       s.p3.fusion.image_feats, s.p3.fusion.text_feats)
    temperature = typed_config("glscl_pretrain").mgsc_temperature
    reference = torch.stack([nsl(s.p1.fusion.image_feats[:, f], s.p2.fusion.image_feats[:, f], temperature)
                             for f in range(frames)]).mean()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_mgsc_text_predicts_with_p2_text_cls_against_detached_p1_text_cls(completion_step):
    s = completion_step
    loss = s.out.loss_mgsc_text
    positions = gradient_positions(loss, s.p2.fusion.text_feats)
    assert positions is not None, "MGSC text takes its prediction from P2 (full image, masked text)"
    expected = torch.zeros_like(positions)
    expected[:, 0] = True
    assert torch.equal(positions, expected)
    assert_no_gradient(loss, s.p2.fusion.image_feats, s.p1.fusion.text_feats, s.p1.fusion.image_feats,
                       s.p3.fusion.text_feats, s.p3.fusion.image_feats)
    reference = nsl(s.p2.fusion.text_feats[:, 0], s.p1.fusion.text_feats[:, 0],
                    typed_config("glscl_pretrain").mgsc_temperature)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_mltc_text_predicts_with_p2_at_its_masked_tokens_against_detached_p1_tokens(completion_step):
    s = completion_step
    loss = s.out.loss_mltc_text
    masked = s.p2.text.args["input_ids"] != s.ids
    positions = gradient_positions(loss, s.p2.fusion.text_feats)
    assert positions is not None, "MLTC text takes its prediction from P2"
    assert masked.any(dim=1).all() and torch.equal(positions, masked)
    assert_no_gradient(loss, s.p2.fusion.image_feats, s.p1.fusion.text_feats, s.p1.fusion.image_feats,
                       s.p3.fusion.text_feats, s.p3.fusion.image_feats)
    reference = nsl(s.p2.fusion.text_feats[masked], s.p1.fusion.text_feats[masked],
                    typed_config("glscl_pretrain").mltc_temperature)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_mltc_image_predicts_with_p3_at_mask_token_patches_against_detached_p2_tokens(completion_step):
    s, frames = completion_step, completion_step.frames
    loss = s.out.loss_mltc_image
    token_mask = s.p3.image.args["token_mask"]  # [B, N]
    patches = token_mask.shape[1]
    expected = torch.zeros(token_mask.shape[0], frames + frames * patches, dtype=torch.bool)
    for f in range(frames):  # frame CLS tokens first, then frame f's N patches
        expected[:, frames + f * patches:frames + (f + 1) * patches] = token_mask
    positions = gradient_positions(loss, s.p3.fusion.image_feats)
    assert positions is not None, "MLTC image takes its prediction from P3 (mask-token image, full text)"
    assert torch.equal(positions, expected)
    assert_no_gradient(loss, s.p3.fusion.text_feats, s.p2.fusion.image_feats, s.p2.fusion.text_feats,
                       s.p1.fusion.image_feats, s.p1.fusion.text_feats)
    reference = nsl(s.p3.fusion.image_feats[expected], s.p2.fusion.image_feats[expected],
                    typed_config("glscl_pretrain").mltc_temperature)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_p1_keeps_int_n_times_0_2_patches_per_frame_plus_each_frame_cls(completion_step):
    s, frames = completion_step, completion_step.frames
    patches, cfg = tiny_sizes()
    kept = int(patches * (1 - cfg.mgsc_image_mask_ratio))
    assert (patches, kept) == (16, 3)  # 32 px / 8 px patches; int(16 * 0.2)
    keep = s.p1.image.args["keep_indices"]
    assert keep.shape == (6, kept)
    assert all(len(set(row)) == kept and 0 <= min(row) and max(row) < patches for row in keep.tolist())
    assert s.p1.fuse_args["image_tokens"].shape[1] == frames + frames * kept
    full = s.p2.fuse_args["image_tokens"].shape[1]
    assert full == frames + frames * patches and s.p3.fuse_args["image_tokens"].shape[1] == full


def test_p2_text_has_mask_tokens_only_at_maskable_positions_at_most_int_0_4_n_plus_1(completion_step):
    s = completion_step
    _, cfg = tiny_sizes()
    masked_ids = s.p2.text.args["input_ids"]
    changed = masked_ids != s.ids
    assert (masked_ids[changed] == s.model.tokenizer.mask_token_id).all()
    assert not (changed & ~s.maskable).any(), "CLS, SEP or padding was masked"
    maskable_count = s.maskable.sum(dim=1)  # L - 2 for a non-pad length L
    assert torch.equal(maskable_count, s.attention_mask.sum(dim=1) - 2)
    draws = (maskable_count.double() * cfg.mgsc_text_mask_ratio).floor().long() + 1
    count = changed.sum(dim=1)
    assert ((count >= 1) & (count <= draws)).all()
    assert torch.equal(s.p2.text.args["attention_mask"], s.attention_mask)


def test_p3_replaces_exactly_int_n_times_0_3_patches_by_the_mask_token(completion_step):
    s = completion_step
    patches, cfg = tiny_sizes()
    token_mask = s.p3.image.args["token_mask"]
    assert token_mask.dtype == torch.bool and token_mask.shape == (6, patches)
    assert (token_mask.sum(dim=1) == int(patches * cfg.mltc_image_mask_ratio)).all()  # int(16 * 0.3) = 4
    assert not torch.equal(s.p3.fuse_args["image_tokens"], s.p2.fuse_args["image_tokens"])


def test_mlm_selects_about_15_percent_of_maskable_tokens_never_special_ones(lavis_glscl, monkeypatch):
    from lavis_glscl.models.pretraining import objectives

    model = tiny("glscl_pretrain", loss_weights={"mlm": 1.0})
    trace = Trace(model)
    labels_seen = []
    mlm_loss = objectives.mlm_loss
    signature = inspect.signature(mlm_loss)

    def recording_mlm_loss(*args, **kwargs):
        labels_seen.append(signature.bind(*args, **kwargs).arguments["labels"])
        return mlm_loss(*args, **kwargs)

    monkeypatch.setattr(objectives, "mlm_loss", recording_mlm_loss)
    mask_token_id = model.tokenizer.mask_token_id
    probability = typed_config("glscl_pretrain").mlm_probability  # 0.15
    mask_tokens = 0
    for step in range(4):
        batch = dict(tiny_batch(batch_size=8, seed=step), iters=step)
        ids, attention_mask, maskable = hf_text(model, batch["text_input"], typed_config("glscl_pretrain").text.max_length)
        for log in (trace.images, trace.texts, trace.fusions):
            log.clear()
        out = model(batch)
        (call,) = trace.fusions
        masked_ids = source(trace.texts, call.args["text_tokens"]).args["input_ids"]
        selected = gradient_positions(out.loss_mlm, call.out.text_feats)
        assert not (selected & ~maskable).any(), "a special token or padding was selected for MLM"
        n = maskable.sum(dim=1).double()
        count = selected.sum(dim=1)
        assert ((count >= (n * probability).floor().clamp(min=1))
                & (count <= (n * probability).ceil().clamp(min=1))).all()
        assert not (masked_ids != ids)[~selected].any(), "an unselected token was changed"
        labels = labels_seen[-1]
        assert torch.equal(labels[labels != -100], ids[selected])
        mask_tokens += int((masked_ids[selected] == mask_token_id).sum())
        image = source(trace.images, call.args["image_tokens"]).args
        assert image["keep_indices"] is None and image["token_mask"] is None  # MLM sees the full image
    assert mask_tokens > 0


# --------------------------------------------------------------------------------------------------- video
def test_fused_image_pooler_reads_the_mean_of_every_frame_cls_token(lavis_glscl):
    model = tiny("glscl_pretrain")
    generator = torch.Generator().manual_seed(3)
    frames, patches, width = 3, 4, 32
    text = torch.randn(2, 7, width, generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    image = torch.randn(2, frames + frames * patches, width, generator=generator)
    with torch.no_grad():
        fusion = model.fuse(text, mask, image, frames)
        text_pooled = model.cross_modal_text_pooler(fusion.text_feats[:, :1], 1)
        image_pooled = model.cross_modal_image_pooler(fusion.image_feats[:, :frames].mean(dim=1, keepdim=True), 1)
        first_only = model.cross_modal_image_pooler(fusion.image_feats[:, :1], 1)
    torch.testing.assert_close(fusion.cls_feats, torch.cat([text_pooled, image_pooled], dim=-1))
    assert not torch.allclose(image_pooled, first_only, atol=1e-4)


def test_video_itc_embeds_the_mean_of_the_unimodal_frame_cls_tokens(lavis_glscl):
    model = tiny("glscl_pretrain", loss_weights={"itc": 1.0})
    trace = Trace(model)
    frames = 3
    out = model(tiny_batch(batch_size=4, frames=frames, seed=2))
    (image,), (text,) = trace.images, trace.texts
    positions = gradient_positions(out.loss_itc, image.out)
    expected = torch.zeros_like(positions)
    expected[:, :frames] = True
    assert torch.equal(positions, expected)
    reference = nsl(model.vision_proj(image.out[:, :frames].mean(dim=1)), model.language_proj(text.out[:, 0]),
                    model.cl_temp)
    assert out.loss_itc.item() == pytest.approx(reference.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------- token types
def test_fusion_adds_token_type_0_to_text_and_type_1_to_image(lavis_glscl):
    model = tiny("glscl_pretrain")
    generator = torch.Generator().manual_seed(4)
    text = torch.randn(2, 6, 32, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    image = torch.randn(2, 1 + 16, 32, generator=generator)
    with torch.no_grad():
        model.token_type_embeddings.weight.copy_(torch.randn(2, 32, generator=generator))
        types = model.token_type_embeddings.weight.clone()
        fused = model.fuse(text, mask, image, 1)
        model.token_type_embeddings.weight.zero_()
        by_hand = model.fuse(text + types[0], mask, image + types[1], 1)
        swapped = model.fuse(text + types[1], mask, image + types[0], 1)
    for got, want in zip(fused[:3], by_hand[:3]):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(fused.cls_feats, swapped.cls_feats, atol=1e-3)


# --------------------------------------------------------------------------------------------- ITM and rank
def loss_with_bonus(model, batch, head, bonus, key):
    """``model(batch)``'s loss ``key`` while a forward hook adds ``bonus`` to the ``head``'s output."""
    handle = head.register_forward_hook(lambda module, inputs, output: output + bonus.to(output.dtype))
    try:
        return getattr(model(batch), key).item()
    finally:
        handle.remove()


def match_logit_bonus(labels, size=30.0):
    """ITM logits ``[P, 2]`` pushed by ``size`` towards index 1 ("match") where ``labels`` is 1, index 0 elsewhere."""
    return size * torch.stack([1 - labels, labels], dim=1)


def test_itm_random_negatives_half_the_rows_labelled_0_positives_1(lavis_glscl):
    model = tiny("glscl_pretrain", loss_weights={"itm": 1.0})
    trace = Trace(model)
    batch = tiny_batch(batch_size=8, seed=5)
    out = model(batch)
    (call,) = trace.fusions
    (image,) = trace.images
    assert image.args["keep_indices"] is None and image.args["token_mask"] is None
    own_images = image.out
    ids, _, _ = hf_text(model, batch["text_input"], typed_config("glscl_pretrain").text.max_length)
    own_texts = next(c for c in trace.texts if torch.equal(c.args["input_ids"], ids)).out
    rows = torch.arange(8)
    assert torch.equal(match_rows(call.args["text_tokens"], own_texts), rows)
    image_of_row = match_rows(call.args["image_tokens"], own_images)
    labels = (image_of_row == rows).long()
    assert int((labels == 0).sum()) == 8 // 2, "half the rows get a random negative image"
    logits = model.itm_score(call.out.cls_feats)
    assert out.loss_itm.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    # Index 1 is "match": pushing the positives' index 1 and the negatives' index 0 up drives the loss to 0.
    assert loss_with_bonus(model, batch, model.itm_score, match_logit_bonus(labels), "loss_itm") < 1e-6
    assert loss_with_bonus(model, batch, model.itm_score, match_logit_bonus(1 - labels), "loss_itm") > 20.0


def test_itm_hard_negatives_fuse_3b_rows_the_first_b_positive(lavis_glscl):
    model = tiny("glscl_retrieval")
    assert model.config.itm_negatives == "hard"
    trace = Trace(model)
    batch_size = 6
    batch = tiny_batch(batch_size=batch_size, seed=6)
    out = model(batch)
    (call,) = trace.fusions
    (image,) = trace.images
    (text,) = trace.texts
    image_of_row = match_rows(call.args["image_tokens"], image.out)
    text_of_row = match_rows(call.args["text_tokens"], text.out)
    rows = torch.arange(batch_size)
    assert torch.equal(image_of_row[:batch_size], rows) and torch.equal(text_of_row[:batch_size], rows)
    assert torch.equal(text_of_row[batch_size:2 * batch_size], rows)  # own caption, hard negative image
    assert (image_of_row[batch_size:2 * batch_size] != rows).all()
    assert torch.equal(image_of_row[2 * batch_size:], rows)  # own image, hard negative caption
    assert (text_of_row[2 * batch_size:] != rows).all()
    labels = (image_of_row == text_of_row).long()
    assert torch.equal(labels, torch.cat([torch.ones(batch_size), torch.zeros(2 * batch_size)]).long())
    logits = model.itm_score(call.out.cls_feats)
    assert out.loss_itm.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert loss_with_bonus(model, batch, model.itm_score, match_logit_bonus(labels), "loss_itm") < 1e-6
    assert loss_with_bonus(model, batch, model.itm_score, match_logit_bonus(1 - labels), "loss_itm") > 20.0


def test_itc_group_contrasts_each_clip_with_its_group_partners_caption_only_in_grouped_batches(lavis_glscl):
    """``group_contrast.weight``: ITC among the rows of each batch group (rows 2k, 2k + 1 for groups of 2), on the same
    unimodal ITC features, in the total as weight(itc) x group_contrast.weight; absent from ungrouped batches."""
    model = tiny("glscl_pretrain", loss_weights={"itc": 2.0}, group_contrast={"weight": 0.5})
    batch = {**tiny_batch(batch_size=6, frames=2, seed=8), "batch_group_size": 2}
    out = model(batch)
    image = F.normalize(out.intermediate_output.image_feat.detach(), dim=-1)
    text = F.normalize(out.intermediate_output.text_feat.detach(), dim=-1)
    tau = float(model.cl_temp.detach())
    by_image = by_text = 0.0
    for first in (0, 2, 4):
        rows = [first, first + 1]
        sim = torch.stack([torch.stack([image[i] @ text[j] for j in rows]) for i in rows]) / tau  # [2 images, 2 texts]
        by_image += sum(-torch.log_softmax(sim[k], dim=0)[k] for k in range(2))
        by_text += sum(-torch.log_softmax(sim[:, k], dim=0)[k] for k in range(2))
    expected = (by_image + by_text) / 6
    assert out.loss_itc_group.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(2.0 * (out.loss_itc.item() + 0.5 * out.loss_itc_group.item()), rel=1e-5)
    assert tiny("glscl_pretrain", loss_weights={"itc": 2.0}, group_contrast={"weight": 0.5})(
        {**batch, "batch_group_size": 1}).loss_itc_group is None
    assert tiny("glscl_pretrain", loss_weights={"itc": 2.0})(batch).loss_itc_group is None


def test_itc_group_text_margin_hinges_the_cosine_of_each_groups_captions_itc_features(lavis_glscl):
    """``group_contrast.text_margin``: a hinge on the cosine of rows 2k, 2k + 1's ITC text features above the margin,
    over the group term's temperature (ITC's learnable one, which it does not train), weighted as the group term;
    without the margin, or in an ungrouped batch, no such loss."""
    margin = -0.5
    model = tiny("glscl_pretrain", loss_weights={"itc": 2.0}, group_contrast={"weight": 0.5, "text_margin": margin})
    tau = model.cl_temp.item()
    batch = {**tiny_batch(batch_size=6, frames=2, seed=8), "batch_group_size": 2}
    out = model(batch)
    text = F.normalize(out.intermediate_output.text_feat.detach(), dim=-1)
    cosines = torch.stack([text[first] @ text[first + 1] for first in (0, 2, 4)])
    assert (cosines > margin).any()
    assert out.loss_itc_group_text.item() == pytest.approx(
        (cosines - margin).clamp(min=0).mean().item() / tau, rel=1e-5)
    out.loss_itc_group_text.backward()
    assert model.cl_temp.grad is None or model.cl_temp.grad == 0
    assert out.loss.item() == pytest.approx(
        2.0 * (out.loss_itc.item() + 0.5 * (out.loss_itc_group.item() + out.loss_itc_group_text.item())), rel=1e-5)
    assert tiny("glscl_pretrain", loss_weights={"itc": 2.0}, group_contrast={"weight": 0.5})(batch).loss_itc_group_text is None
    assert model({**batch, "batch_group_size": 1}).loss_itc_group_text is None
    with pytest.raises(ValueError, match="group_contrast.text_margin must be a cosine"):
        tiny("glscl_pretrain", group_contrast={"text_margin": 1.0})


def test_itc_group_detach_text_trains_only_the_visual_side_with_the_group_term(lavis_glscl):
    """``group_contrast.detach_text``: the same group loss value, whose gradient reaches the video tower and its ITC
    projection but no text parameter (with it off, the text tower gets one)."""
    batch = {**tiny_batch(batch_size=4, frames=2, seed=9), "batch_group_size": 2}
    grads = {}
    for detach in (False, True):
        model = tiny("glscl_pretrain", loss_weights={"itc": 1.0}, group_contrast={"weight": 1.0, "detach_text": detach})
        loss = model(batch).loss_itc_group
        loss.backward()
        grads[detach] = (loss.item(), {name: param.grad for name, param in model.named_parameters()})
    (attached_loss, attached), (detached_loss, detached) = grads[False], grads[True]
    assert detached_loss == pytest.approx(attached_loss, rel=1e-6)
    text_names = [name for name in detached if name.startswith(("text_transformer.encoder", "language_proj"))]
    vision_names = [name for name in detached if name.startswith(("vision_transformer.transformer", "vision_proj"))]
    assert text_names and vision_names
    assert all(detached[name] is None or not detached[name].any() for name in text_names)
    assert any(attached[name] is not None and attached[name].abs().sum() > 0 for name in text_names)
    for name in vision_names:
        assert torch.allclose(detached[name], attached[name], atol=1e-7), name


def test_rank_loss_scores_the_own_caption_as_candidate_0_and_targets_it(lavis_glscl):
    negatives, batch_size = 3, 6
    model = tiny("glscl_retrieval", loss_weights={"rank": 1.0, "itc": 0.5}, rank_negatives=negatives)
    trace = Trace(model)
    batch = tiny_batch(batch_size=batch_size, seed=7)
    out = model(batch)
    (call,) = trace.fusions
    (image,) = trace.images
    (text,) = trace.texts
    image_of_row = match_rows(call.args["image_tokens"], image.out)
    text_of_row = match_rows(call.args["text_tokens"], text.out)
    pairs = 1 + negatives
    rows = torch.arange(batch_size * pairs)
    own = image_of_row == text_of_row
    assert torch.equal(image_of_row, rows // pairs)  # each image's candidates together
    assert torch.equal(own, rows % pairs == 0)  # its own caption first, then negatives of other images
    scores = model.rank_output(call.out.cls_feats).view(batch_size, pairs)
    target = own.view(batch_size, pairs).long().argmax(dim=1)
    assert out.loss_rank.item() == pytest.approx(F.cross_entropy(scores, target).item(), rel=1e-5)
    # The own caption is the cross-entropy target: a huge score for it drives the loss to 0, for another to 30.
    assert loss_with_bonus(model, batch, model.rank_output, 30.0 * own[:, None].float(), "loss_rank") < 1e-6
    other = rows % pairs == 1
    assert loss_with_bonus(model, batch, model.rank_output, 30.0 * other[:, None].float(), "loss_rank") > 20.0


# ------------------------------------------------------------------------------------------- rank row splits
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5, 7, 8, 16])
def test_rank_row_range_gives_every_row_to_exactly_one_rank_in_order(lavis_glscl, monkeypatch, world_size):
    from lavis_glscl import distributed

    for num_rows in range(0, 50):
        ranges = []
        for rank in range(world_size):
            monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, world_size))
            ranges.append(distributed.rank_row_range(num_rows))
        assert [row for start, end in ranges for row in range(start, end)] == list(range(num_rows)), ranges
        assert all(start <= end for start, end in ranges)
        assert all(ranges[r][1] == ranges[r + 1][0] for r in range(world_size - 1)), ranges
        assert max(end - start for start, end in ranges) == -(-num_rows // world_size)


class Rows(torch.utils.data.Dataset):
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index


@pytest.mark.parametrize("size, batch_size, world_size", [
    (8, 1, 8), (12, 2, 3), (13, 2, 3), (24, 3, 4), (31, 4, 2), (40, 5, 3), (17, 1, 5), (9, 3, 1)])
def test_train_batches_give_rank_r_rows_r_b_to_r_plus_1_b_of_each_global_batch(lavis_glscl, size, batch_size,
                                                                                world_size):
    from lavis_glscl.datasets.loaders import TrainBatches

    dataset = Rows(size)
    global_batches = [b.tolist() for b in TrainBatches([dataset], batch_size * world_size, 0, 1, seed=5).epoch(0)]
    assert len(global_batches) == size // (batch_size * world_size)
    seen = [row for global_batch in global_batches for row in global_batch]
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(size))
    per_rank = [[b.tolist() for b in TrainBatches([dataset], batch_size, rank, world_size, seed=5).epoch(0)]
                for rank in range(world_size)]
    for step, global_batch in enumerate(global_batches):
        for rank in range(world_size):
            assert per_rank[rank][step] == global_batch[rank * batch_size:(rank + 1) * batch_size]
    assert all(len(batches) == len(global_batches) for batches in per_rank)


# ------------------------------------------------------------------------------------- processors from config
def random_picture(seed=0, size=40):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def clip_reference(picture, size, flip):
    """Bicubic resize of the whole picture, optional horizontal flip, CLIP normalisation (torchvision/PIL)."""
    from torchvision.transforms import functional as TF

    tensor = TF.to_tensor(picture.resize((size, size), Image.BICUBIC))
    return TF.normalize(TF.hflip(tensor) if flip else tensor, CLIP_MEAN, CLIP_STD)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_image_train_processor_reads_image_size_min_scale_and_hflip_prob_from_config(lavis_glscl, flip):
    from lavis.common.registry import registry

    picture = random_picture()
    processor = registry.get_processor_class("glscl_image_train").from_config(
        OmegaConf.create({"image_size": 24, "min_scale": 1.0, "max_scale": 1.0, "hflip_prob": flip}))
    torch.manual_seed(0)
    expected = clip_reference(picture, 24, flip == 1.0)
    for _ in range(8):  # scale 1: always the whole picture; the flip always or never
        torch.testing.assert_close(processor(picture), expected)
    cropping = registry.get_processor_class("glscl_image_train").from_config(
        OmegaConf.create({"image_size": 24, "min_scale": 0.2, "max_scale": 0.3, "hflip_prob": flip}))
    assert not torch.allclose(cropping(picture), expected, atol=1e-3)


def test_image_eval_processor_reads_image_size_from_config(lavis_glscl):
    from lavis.common.registry import registry

    picture = random_picture(seed=1)
    for size in (16, 40, 56):
        processor = registry.get_processor_class("glscl_image_eval").from_config(OmegaConf.create({"image_size": size}))
        torch.testing.assert_close(processor(picture), clip_reference(picture, size, flip=False))


# ------------------------------------------------------------------------------- warm-up/linear LR schedule
def scheduled_lrs(model, **options):
    """Per global step, (base LR of an encoder parameter's group, of a fusion parameter's group) under
    ``glscl_warmup_linear`` with AdamW groups from ``model.get_optimizer_params``, as the runner builds them."""
    from lavis.common.registry import registry

    optimizer = torch.optim.AdamW(model.get_optimizer_params(weight_decay=0.01), lr=options["init_lr"])
    scheduler = registry.get_lr_scheduler_class("glscl_warmup_linear")(optimizer=optimizer, **options)
    named = dict(model.named_parameters())
    group_of = {id(param): group for group in optimizer.param_groups for param in group["params"]}
    encoder, fusion = group_of[id(named[ENCODER_PARAM])], group_of[id(named[FUSION_PARAM])]
    lrs = []
    for epoch in range(options["max_epoch"]):
        for step in range(options["iters_per_epoch"]):
            scheduler.step(cur_epoch=epoch, cur_step=step)
            lrs.append((encoder["lr"], fusion["lr"]))
    return lrs


@pytest.mark.parametrize("warmup, warmup_steps", [({"warmup_steps": 3, "warmup_ratio": 0.5}, 3),
                                                  ({"warmup_steps": 0, "warmup_ratio": 0.25}, 5),
                                                  ({}, 2)],  # the default warm-up ratio 0.1 of 20 steps
                         ids=["warmup_steps_win", "warmup_ratio", "default_ratio"])
def test_warmup_linear_schedule_follows_hf_linear_warmup_and_decay_to_min_lr(lavis_glscl, warmup, warmup_steps):
    from transformers import get_polynomial_decay_schedule_with_warmup

    model = tiny("glscl_pretrain")
    init_lr, min_lr, total = 1e-3, 1e-5, 20
    lrs = scheduled_lrs(model, max_epoch=2, iters_per_epoch=10, init_lr=init_lr, min_lr=min_lr, **warmup)
    reference = get_polynomial_decay_schedule_with_warmup(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=init_lr), warmup_steps, total, lr_end=min_lr, power=1.0)
    for step, (encoder_lr, _) in enumerate(lrs):
        assert encoder_lr == pytest.approx(init_lr * reference.lr_lambdas[0](step), rel=1e-9, abs=1e-15), step
    assert lrs[0][0] == 0.0 and lrs[warmup_steps][0] == pytest.approx(init_lr)


def test_warmup_linear_schedule_starts_at_warmup_start_lr(lavis_glscl):
    model = tiny("glscl_pretrain")
    lrs = scheduled_lrs(model, max_epoch=1, iters_per_epoch=10, init_lr=1e-3, min_lr=0.0, warmup_steps=4,
                        warmup_start_lr=2e-4)
    hand = [2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3 * 5 / 6]  # +2e-4 per warm-up step, then down by 1/6 per step
    assert [encoder for encoder, _ in lrs[:6]] == pytest.approx(hand, rel=1e-9)


def test_warmup_linear_schedule_gives_fusion_layers_lr_scale_times_the_encoder_lr(lavis_glscl):
    model = tiny("glscl_pretrain")
    scale = typed_config("glscl_pretrain").lr_scales["cross_modal_"]
    assert scale == 5.0 and FUSION_PARAM.startswith("cross_modal_")
    lrs = scheduled_lrs(model, max_epoch=1, iters_per_epoch=10, init_lr=1e-3, min_lr=1e-5, warmup_steps=2)
    assert lrs[2][0] == pytest.approx(1e-3)
    for encoder_lr, fusion_lr in lrs[1:]:
        assert fusion_lr == pytest.approx(scale * encoder_lr, rel=1e-12) and encoder_lr > 0
