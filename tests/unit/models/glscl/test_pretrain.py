"""``glscl_pretrain``: the objectives a step composes and how they are wired together.

The objectives' weighted total, shared and recomputed unimodal passes, masks fixed by the step, zero-weight objectives
skipped, video batches.  The pure functions (masks, NSL, negatives) have their own tests; the wiring tests pin which
pass, mask, slice, label and option reaches them inside a training step.  Every expectation is computed here, from
the method's definitions, the tiny yamls and torch/HF references, never from the code under test, and is read through
seams that keep: the registry, ``model(samples)`` and its losses' gradients, ``encode_image`` / ``encode_text`` /
``fuse`` (wrapped to record their calls), the heads, ``token_type_embeddings`` and the tokenizer.  Dropout is set to 0
through the config, so models stay in training mode.

The passes of a step, recognised by their inputs:
P1 image dropped to F + F * int(N * 0.2) tokens + full text; P2 full image + ``<mask>``-ed text;
P3 full-length image with ``visual_mask_token`` patches (``token_mask``) + full text.
"""
import copy
import inspect
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from helpers import Call, Trace, loss_values, loss_with_bonus, match_rows, tiny_batch, typed_config

from lavis_glscl.models.glscl.config import LossWeights


# ------------------------------------------------------------------------------------------- the composed step
def losses_of(model, batch):
    return loss_values(model(batch))


def test_output_has_every_objective_and_the_weighted_total(tiny_model):
    tiny_model.eval()
    out = tiny_model(tiny_batch())
    expected = {"loss", "loss_itc", "loss_itm", "loss_mlm", "loss_mgsc_image", "loss_mgsc_text", "loss_mltc_image",
                "loss_mltc_text", "intermediate_output"}
    assert set(out.keys()) == expected
    intermediate = out.intermediate_output  # the full-input passes, as LAVIS's models return them
    assert intermediate.image_embeds.shape == (4, 1 + 16, 32) and intermediate.text_embeds.shape[:2] == (4, 9)
    assert intermediate.image_feat.shape == intermediate.text_feat.shape == (4, 16)
    assert intermediate.itm_logits.shape == (4, 2) and intermediate.itm_labels.tolist().count(0) == 2
    w = tiny_model.loss_weights
    total = (w.itc * out.loss_itc + w.itm * out.loss_itm + w.mlm * out.loss_mlm
             + w.mgsc * (out.loss_mgsc_image + out.loss_mgsc_text)
             + w.mltc * (out.loss_mltc_image + out.loss_mltc_text))
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6)
    assert (w.itc, w.mgsc, w.mltc) == (0.5, 1.0, 0.2)


def test_shared_and_recomputed_unimodal_passes_give_the_same_losses(tiny_model):
    tiny_model.eval()  # dropout off
    recomputing = copy.deepcopy(tiny_model)
    recomputing.config.share_unimodal_passes = False
    for itm_negatives in ("random", "hard"):
        tiny_model.config.itm_negatives = recomputing.config.itm_negatives = itm_negatives
        batch = tiny_batch(batch_size=6, seed=3)
        shared, recomputed = losses_of(tiny_model, batch), losses_of(recomputing, batch)
        assert shared.keys() == recomputed.keys()
        for key in shared:
            assert shared[key] == pytest.approx(recomputed[key], rel=1e-5, abs=1e-6), key


def test_sharing_computes_each_distinct_unimodal_pass_once(tiny_model, monkeypatch):
    calls = {"image": 0, "text": 0}
    encode_image, encode_text = tiny_model.encode_image, tiny_model.encode_text

    def count_image(*args, **kwargs):
        calls["image"] += 1
        return encode_image(*args, **kwargs)

    def count_text(*args, **kwargs):
        calls["text"] += 1
        return encode_text(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "encode_image", count_image)
    monkeypatch.setattr(tiny_model, "encode_text", count_text)
    tiny_model(tiny_batch())
    assert calls == {"image": 3, "text": 3}  # full/dropped/token-masked image; full/MLM/MGSC text
    calls.update(image=0, text=0)
    tiny_model.config.share_unimodal_passes = False
    tiny_model(tiny_batch())
    assert calls == {"image": 6, "text": 6}  # the released code: both encoders in each of the six passes


def test_masks_depend_on_the_step_not_on_the_call(tiny_model):
    tiny_model.eval()
    batch = tiny_batch()
    assert losses_of(tiny_model, batch) == losses_of(tiny_model, batch)
    later = dict(batch, iters=1)
    assert losses_of(tiny_model, later)["loss_mlm"] != losses_of(tiny_model, batch)["loss_mlm"]


def test_zero_weight_objectives_are_skipped(tiny_model):
    tiny_model.config.loss_weights = LossWeights(itc=1.0)
    out = tiny_model(tiny_batch())
    assert {key for key in out.keys() if key.startswith("loss")} == {"loss", "loss_itc"}


def test_every_trainable_parameter_gets_a_gradient(tiny_model):
    tiny_model(tiny_batch()).loss.backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_video_batches_train_with_per_frame_mgsc(tiny_model):
    out = tiny_model(tiny_batch(frames=3))
    assert torch.isfinite(out.loss) and out.loss_mltc_image is not None and out.loss_mgsc_image is not None
    tiny_model.config.video_completion.mltc = False
    assert tiny_model(tiny_batch(frames=3)).loss_mltc_image is None


def test_video_completion_mgsc_off_drops_mgsc_from_video_batches_only(tiny_model):
    tiny_model.config.video_completion.mgsc = False
    video = tiny_model(tiny_batch(frames=3))
    assert video.loss_mgsc_image is None and video.loss_mgsc_text is None
    assert video.loss_mltc_text is not None and video.loss_mltc_image is not None
    image = tiny_model(tiny_batch())
    assert image.loss_mgsc_image is not None and image.loss_mgsc_text is not None


@torch.no_grad()
def test_images_and_one_frame_videos_give_the_same_losses(tiny_model):
    tiny_model.eval()
    batch = tiny_batch()
    video_batch = dict(batch)
    video_batch["video"] = video_batch.pop("image").unsqueeze(1)
    image_losses, video_losses = loss_values(tiny_model(batch)), loss_values(tiny_model(video_batch))
    assert image_losses == video_losses


# ------------------------------------------------------------------------------- MGSC / MLTC: passes and masks
def tiny_sizes():
    """Patches per frame N and the three mask ratios, from the tiny pre-training yaml."""
    cfg = typed_config("glscl_pretrain")
    patches = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    return patches, cfg


def source(calls, tokens):
    """The recorded encoder call whose output equals ``tokens``, or None."""
    for call in calls:
        if call.out.shape == tokens.shape and torch.equal(call.out, tokens):
            return call
    return None


def gradient_positions(loss, tokens):
    """Bool ``[B, L]``: positions of ``tokens`` ``[B, L, D]`` that ``loss`` sends a gradient to; None: no path."""
    (grad,) = torch.autograd.grad(loss, [tokens], retain_graph=True, allow_unused=True)
    return None if grad is None else grad.abs().sum(dim=-1) > 0


def assert_no_gradient(loss, *tensors):
    for tensor in tensors:
        positions = gradient_positions(loss, tensor)
        assert positions is None or not positions.any(), "a detached target received a gradient"


def nsl(pred, target, temperature):
    """NormSoftmaxLoss of ``n(pred) n(target)^T / t``: the row-wise plus the column-wise
    mean negative log-likelihood of the diagonal."""
    sim = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).t() / temperature
    return -(sim.log_softmax(dim=1).diagonal().mean() + sim.log_softmax(dim=0).diagonal().mean())


def hf_text(model, captions, max_length):
    """Ids, padding mask and maskable (real, non-special) positions straight from the HF tokenizer."""
    encoded = model.tokenizer(list(captions), padding="longest", truncation=True, max_length=max_length,
                              return_special_tokens_mask=True, return_tensors="pt")
    maskable = encoded.attention_mask.bool() & ~encoded.special_tokens_mask.bool()
    return encoded.input_ids, encoded.attention_mask, maskable


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
def completion_step(request, tiny):
    """One pre-training step with only MGSC and MLTC on (so every fusion pass is P1, P2 or P3), its passes
    recognised by their inputs."""
    frames = request.param
    model = tiny("glscl_pretrain", dropout=False, loss_weights={"mgsc": 1.0, "mltc": 1.0})
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


# ------------------------------------------------------------------------------------------------ MLM and ITC
def test_mlm_selects_about_15_percent_of_maskable_tokens_never_special_ones(tiny, monkeypatch):
    from lavis_glscl.models.pretraining import objectives

    model = tiny("glscl_pretrain", dropout=False, loss_weights={"mlm": 1.0})
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
    max_length = typed_config("glscl_pretrain").text.max_length
    mask_tokens = 0
    for step in range(4):
        batch = dict(tiny_batch(batch_size=8, seed=step), iters=step)
        ids, _, maskable = hf_text(model, batch["text_input"], max_length)
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


def test_video_itc_embeds_the_mean_of_the_unimodal_frame_cls_tokens(tiny):
    model = tiny("glscl_pretrain", dropout=False, loss_weights={"itc": 1.0})
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


# ------------------------------------------------------------------------------------------------ ITM negatives
def match_logit_bonus(labels, size=30.0):
    """ITM logits ``[P, 2]`` pushed by ``size`` towards index 1 ("match") where ``labels`` is 1, index 0 elsewhere."""
    return size * torch.stack([1 - labels, labels], dim=1)


def test_itm_random_negatives_half_the_rows_labelled_0_positives_1(tiny):
    model = tiny("glscl_pretrain", dropout=False, loss_weights={"itm": 1.0})
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


def test_itm_hard_negatives_fuse_3b_rows_the_first_b_positive(tiny):
    model = tiny("glscl_retrieval", dropout=False)
    assert model.config.itm_negatives == "hard"
    trace = Trace(model)
    batch_size = 6
    batch = tiny_batch(batch_size=batch_size, seed=6)
    out = model(batch)
    call, image_of_row, text_of_row = trace.rows_of_the_fusion()
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


@pytest.mark.parametrize("group_size, partners", [(2, [1, 0, 3, 2, 5, 4]), (3, [1, 2, 0, 4, 5, 3])])
def test_partner_negatives_fuse_each_row_with_its_group_partners_clip_and_caption(tiny, group_size, partners):
    """3B fused rows: each own pair (label 1), its caption with the partner's clip and its clip with the partner's
    caption (label 0); the partners are written out here, so a negative from any other row fails."""
    model = tiny("glscl_pretrain", dropout=False, itm_negatives="partner", loss_weights={"itm": 1.0})
    trace = Trace(model)
    batch = {**tiny_batch(batch_size=6, frames=3, seed=2), "batch_group_size": group_size}
    output = model(batch)
    (fusion,), (own_images,), (own_texts,) = trace.fusions, trace.images, trace.texts
    # the fused text is padded to the longest caption of the batch, as the batch's own is
    image_of_row = match_rows(fusion.args["image_tokens"], own_images.out, tolerance=1e-6)
    text_of_row = match_rows(fusion.args["text_tokens"], own_texts.out, tolerance=1e-6)
    rows, partners = list(range(6)), torch.tensor(partners)
    assert image_of_row.tolist() == rows + partners.tolist() + rows
    assert text_of_row.tolist() == rows + rows + partners.tolist()
    labels = output.intermediate_output.itm_labels
    assert labels.tolist() == [1] * 6 + [0] * 12
    logits = model.itm_score(output.intermediate_output.cls_feats)
    assert output.loss_itm.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_partner_negatives_without_groups_are_the_random_negatives(tiny):
    """An ungrouped batch (images in a mixed run) gets exactly the released random negatives."""
    batch = tiny_batch(batch_size=8, seed=4)
    partner = tiny("glscl_pretrain", dropout=False, itm_negatives="partner")(batch)
    random = tiny("glscl_pretrain", dropout=False, itm_negatives="random")(batch)
    assert torch.equal(partner.intermediate_output.itm_labels, random.intermediate_output.itm_labels)
    for key in ("loss", "loss_itm", "loss_itc", "loss_mlm", "loss_mgsc_image", "loss_mltc_text"):
        assert partner[key].item() == random[key].item(), key


def test_partner_negatives_refuse_group_partners_sharing_an_image_id(tiny):
    model = tiny("glscl_pretrain", itm_negatives="partner", loss_weights={"itm": 1.0})
    batch = {**tiny_batch(batch_size=4, frames=2), "batch_group_size": 2, "image_id": torch.tensor([0, 0, 1, 1])}
    with pytest.raises(ValueError, match="share an image_id"):
        model(batch)


@pytest.mark.parametrize("itm_negatives, frames, group_size", [("hard", None, 1), ("partner", 2, 2)],
                         ids=["hard", "partner"])
def test_itm_negative_rows_fuse_their_caption_with_that_captions_own_padding_mask(tiny, itm_negatives, frames,
                                                                                  group_size):
    """``itm_negatives: hard`` and ``partner`` with captions of different token lengths: every one of the 3B fused
    rows carries the padding mask of the caption it fuses (ones over that caption's tokens, as the tokenizer counts
    them for the caption alone), and its fused output equals fusing that caption alone, unpadded, with the row's
    image tokens.  A negative row that kept its own caption's mask would attend to padding or miss tokens."""
    model = tiny("glscl_pretrain", dropout=False, itm_negatives=itm_negatives, loss_weights={"itm": 1.0})
    trace = Trace(model)
    batch = {**tiny_batch(batch_size=6, frames=frames, seed=6), "batch_group_size": group_size}
    model(batch)
    (fusion,), (own_texts,) = trace.fusions, trace.texts
    lengths = [model.tokenize([caption]).attention_mask.shape[1] for caption in batch["text_input"]]
    text_of_row = match_rows(fusion.args["text_tokens"], own_texts.out, tolerance=1e-6).tolist()
    padded = fusion.args["text_mask"].shape[1]
    assert len(set(lengths)) > 2 and padded == max(lengths)
    own_caption = list(range(6)) * 3
    assert any(lengths[text_of_row[row]] != lengths[own_caption[row]] for row in range(12, 18)), \
        "some negative caption must differ in length from the row's own"
    for row, caption in enumerate(text_of_row):
        length = lengths[caption]
        assert fusion.args["text_mask"][row].tolist() == [1] * length + [0] * (padded - length), row
        with torch.no_grad():
            alone = model.fuse(own_texts.out[caption:caption + 1, :length], torch.ones(1, length, dtype=torch.long),
                               fusion.args["image_tokens"][row:row + 1], fusion.args["num_frames"])
        torch.testing.assert_close(fusion.out.cls_feats[row:row + 1].detach(), alone.cls_feats, atol=1e-5, rtol=1e-4)


def test_completion_mask_ratios_temperatures_and_exact_text_masking_follow_their_options(tiny):
    """MGSC and MLTC away from the released values, on images: P1 keeps int(16 * (1 - 0.5)) = 8 patches
    (``mgsc_image_mask_ratio`` 0.5; 0.8 keeps 3), P3 masks int(16 * 0.75) = 12 (``mltc_image_mask_ratio``; 0.3 masks
    4), P2 masks exactly min(n, int(n * 0.9) + 1) of a caption's n maskable tokens, here all of them
    (``mgsc_text_mask_ratio`` 0.9, ``mgsc_text_mask_with_replacement: false``; as many draws with replacement repeat
    some positions and leave others), and the losses are
    NormSoftmax at ``mgsc_temperature`` 0.5 and ``mltc_temperature`` 0.2 (released: 0.03)."""
    model = tiny("glscl_pretrain", dropout=False, loss_weights={"mgsc": 1.0, "mltc": 1.0}, mgsc_image_mask_ratio=0.5,
                 mltc_image_mask_ratio=0.75, mgsc_text_mask_ratio=0.9, mgsc_text_mask_with_replacement=False,
                 mgsc_temperature=0.5, mltc_temperature=0.2)
    trace = Trace(model)
    batch = tiny_batch(batch_size=6, seed=1)
    out = model(batch)
    ids, _, maskable = hf_text(model, batch["text_input"], typed_config("glscl_pretrain").text.max_length)
    (p1_image,) = [call for call in trace.images if call.args["keep_indices"] is not None]
    (p3_image,) = [call for call in trace.images if call.args["token_mask"] is not None]
    (p2_text,) = [call for call in trace.texts if not torch.equal(call.args["input_ids"], ids)]
    assert p1_image.args["keep_indices"].shape == (6, 8)
    token_mask = p3_image.args["token_mask"]
    assert token_mask.sum(dim=1).tolist() == [12] * 6
    changed = p2_text.args["input_ids"] != ids
    assert changed.sum(dim=1).tolist() == [min(n, int(n * 0.9) + 1) for n in maskable.sum(dim=1).tolist()]
    passes = {}
    for call in trace.fusions:
        image, text = source(trace.images, call.args["image_tokens"]), source(trace.texts, call.args["text_tokens"])
        name = "p1" if image is p1_image else "p3" if image is p3_image else "p2" if text is p2_text else "?"
        passes[name] = call.out
    p1, p2, p3 = passes["p1"], passes["p2"], passes["p3"]
    assert set(passes) == {"p1", "p2", "p3"}
    expected = {"loss_mgsc_image": nsl(p1.image_feats[:, 0], p2.image_feats[:, 0], 0.5),
                "loss_mgsc_text": nsl(p2.text_feats[:, 0], p1.text_feats[:, 0], 0.5),
                "loss_mltc_text": nsl(p2.text_feats[changed], p1.text_feats[changed], 0.2),
                "loss_mltc_image": nsl(p3.image_feats[:, 1:][token_mask], p2.image_feats[:, 1:][token_mask], 0.2)}
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value.item(), rel=1e-5), key


def test_mlm_probability_sets_how_many_maskable_tokens_of_each_caption_are_selected(tiny):
    """``mlm_probability: 0.5`` (released 0.15): each caption has max(1, round(0.5 n)) of its n maskable tokens
    selected, the positions the MLM loss sends a gradient to."""
    model = tiny("glscl_pretrain", dropout=False, loss_weights={"mlm": 1.0}, mlm_probability=0.5)
    trace = Trace(model)
    batch = tiny_batch(batch_size=8, seed=2)
    out = model(batch)
    _, _, maskable = hf_text(model, batch["text_input"], typed_config("glscl_pretrain").text.max_length)
    (fusion,) = trace.fusions
    counts = gradient_positions(out.loss_mlm, fusion.out.text_feats).sum(dim=1).tolist()
    assert counts == [max(1, round(0.5 * n)) for n in maskable.sum(dim=1).tolist()]
    assert max(counts) >= 4


def test_mask_seed_chooses_the_steps_masks(tiny):
    """``mask_seed``: the same seed gives the same kept patches and MLTC mask at the same step, another seed (the
    default 0 here) other ones."""
    batch = tiny_batch(batch_size=6, seed=3)

    def masks(**options):
        model = tiny("glscl_pretrain", dropout=False, loss_weights={"mgsc": 1.0, "mltc": 1.0}, **options)
        trace = Trace(model)
        model(batch)
        (keep,) = [call.args["keep_indices"] for call in trace.images if call.args["keep_indices"] is not None]
        (token_mask,) = [call.args["token_mask"] for call in trace.images if call.args["token_mask"] is not None]
        return keep, token_mask

    seeded, again, default = masks(mask_seed=5), masks(mask_seed=5), masks()
    assert all(torch.equal(a, b) for a, b in zip(seeded, again))
    assert not torch.equal(seeded[0], default[0]) and not torch.equal(seeded[1], default[1])


def test_video_layout_cthw_reads_channel_first_video_batches_as_the_same_clips(tiny):
    """``video_layout: cthw`` (LAVIS's ALPRO processors batch videos as [B, 3, F, H, W]): the same clips batched
    channel-first give the losses the default layout gives them frame-first."""
    batch = tiny_batch(batch_size=4, frames=2, seed=4)
    frames_first = loss_values(tiny("glscl_pretrain", dropout=False)(batch))
    channels_first = {**batch, "video": batch["video"].transpose(1, 2).contiguous()}
    assert channels_first["video"].shape == (4, 3, 2, 32, 32)
    read = loss_values(tiny("glscl_pretrain", dropout=False, video_layout="cthw")(channels_first))
    assert read.keys() == frames_first.keys()
    for key, value in frames_first.items():
        assert read[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
