"""The ``glscl_warmup_linear`` schedule against Hugging Face's linear warm-up and decay, with per-group LR scales."""
import pytest
import torch
from helpers import typed_config

FUSION_PARAM = "cross_modal_text_layers.0.attention.self.query.weight"
ENCODER_PARAM = "vision_transformer.conv1.weight"


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
def test_warmup_linear_schedule_follows_hf_linear_warmup_and_decay_to_min_lr(tiny, warmup, warmup_steps):
    from transformers import get_polynomial_decay_schedule_with_warmup

    model = tiny("glscl_pretrain", dropout=False)
    init_lr, min_lr, total = 1e-3, 1e-5, 20
    lrs = scheduled_lrs(model, max_epoch=2, iters_per_epoch=10, init_lr=init_lr, min_lr=min_lr, **warmup)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=init_lr)
    reference = get_polynomial_decay_schedule_with_warmup(optimizer, warmup_steps, total, lr_end=min_lr, power=1.0)
    for step, (encoder_lr, _) in enumerate(lrs):
        assert encoder_lr == pytest.approx(init_lr * reference.lr_lambdas[0](step), rel=1e-9, abs=1e-15), step
    assert lrs[0][0] == 0.0 and lrs[warmup_steps][0] == pytest.approx(init_lr)


def test_warmup_linear_schedule_starts_at_warmup_start_lr(tiny):
    model = tiny("glscl_pretrain", dropout=False)
    lrs = scheduled_lrs(model, max_epoch=1, iters_per_epoch=10, init_lr=1e-3, min_lr=0.0, warmup_steps=4,
                        warmup_start_lr=2e-4)
    hand = [2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3 * 5 / 6]  # +2e-4 per warm-up step, then down by 1/6 per step
    assert [encoder for encoder, _ in lrs[:6]] == pytest.approx(hand, rel=1e-9)


def test_warmup_linear_schedule_gives_fusion_layers_lr_scale_times_the_encoder_lr(tiny):
    model = tiny("glscl_pretrain", dropout=False)
    scale = typed_config("glscl_pretrain").lr_scales["cross_modal_"]
    assert scale == 5.0 and FUSION_PARAM.startswith("cross_modal_")
    lrs = scheduled_lrs(model, max_epoch=1, iters_per_epoch=10, init_lr=1e-3, min_lr=1e-5, warmup_steps=2)
    assert lrs[2][0] == pytest.approx(1e-3)
    for encoder_lr, fusion_lr in lrs[1:]:
        assert fusion_lr == pytest.approx(scale * encoder_lr, rel=1e-12) and encoder_lr > 0


def nested_prefix_scale(name):
    """The scale the nested ``lr_scales`` below give a parameter, written out longest prefix first."""
    if name.startswith("cross_modal_text_layers.0.attention.self."):
        return 0.5
    if name.startswith("cross_modal_text_layers.0."):
        return 2.0
    if name.startswith("cross_modal_"):
        return 5.0
    return 1.0


@pytest.mark.parametrize("scheduler, options, base_lr", [
    ("glscl_warmup_linear", {"iters_per_epoch": 10, "warmup_steps": 2}, 1e-3),  # step 2: warm-up done, init_lr
    ("linear_warmup_cosine_lr", {}, 5e-4),  # LAVIS's own, epoch 1 of 2: half-way down the cosine to min_lr 0
], ids=["glscl_warmup_linear", "lavis_linear_warmup_cosine_lr"])
def test_nested_lr_scales_prefixes_give_each_parameter_its_longest_prefixs_scale(tiny, scheduler, options, base_lr):
    """``model.lr_scales`` with nested prefixes, listed neither longest first nor last, so that neither the first nor
    the last matching prefix is the longest one: every parameter's group LR is the base LR times the scale of its
    longest matching prefix (1 without one), under this plugin's scheduler and under LAVIS's."""
    from lavis.common.registry import registry

    model = tiny("glscl_pretrain", dropout=False, lr_scales={"cross_modal_text_layers.0.": 2.0, "cross_modal_": 5.0,
                                                             "cross_modal_text_layers.0.attention.self.": 0.5})
    optimizer = torch.optim.AdamW(model.get_optimizer_params(weight_decay=0.01), lr=1e-3)
    lr_scheduler = registry.get_lr_scheduler_class(scheduler)(optimizer=optimizer, max_epoch=2, init_lr=1e-3,
                                                               min_lr=0.0, **options)
    if not getattr(lr_scheduler, "applies_lr_scale", False):
        from lavis_glscl.optims import GroupScaledScheduler

        lr_scheduler = GroupScaledScheduler(lr_scheduler, optimizer)
    lr_scheduler.step(cur_epoch=0 if scheduler == "glscl_warmup_linear" else 1, cur_step=2)
    group_of = {id(param): group for group in optimizer.param_groups for param in group["params"]}
    named = dict(model.named_parameters())
    scales = {name: nested_prefix_scale(name) for name in named}
    assert set(scales.values()) == {0.5, 2.0, 5.0, 1.0}
    for name, param in named.items():
        if param.requires_grad:
            assert group_of[id(param)]["lr"] == pytest.approx(base_lr * scales[name], rel=1e-12), name
