"""GLSCL's optimisation pieces for LAVIS: a step-level warm-up/linear-decay LR schedule with per-group scales, and
per-group scales for LAVIS's own schedulers."""
from typing import List

import torch
from lavis.common.registry import registry


def default_param_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    """LAVIS's AdamW grouping for models without ``get_optimizer_params``: no decay on 1-d parameters,
    biases and norms; LR scale 1."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "bias" in name or "ln" in name or "bn" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]


@registry.register_lr_scheduler("glscl_warmup_linear")
class WarmupLinearScheduler:
    """Linear warm-up from ``warmup_start_lr`` to ``init_lr`` over the first steps, then linear decay that reaches
    ``min_lr`` at step ``max_epoch * iters_per_epoch``, one past the last step run (as HF's linear schedule and the
    released code's); every group gets ``lr * group["lr_scale"]``.

    The warm-up lasts ``warmup_steps`` steps when given (> 0), else ``warmup_ratio`` of all steps.
    ``iters_per_epoch`` is required: ``runner_glscl`` passes it.
    """

    applies_lr_scale = True

    def __init__(self, optimizer, max_epoch, init_lr, iters_per_epoch, min_lr=0.0, warmup_ratio=0.1,
                 warmup_steps=0, warmup_start_lr=-1, **kwargs):
        self.optimizer = optimizer
        self.init_lr = float(init_lr)
        self.min_lr = float(min_lr)
        self.iters_per_epoch = int(iters_per_epoch)
        self.total_steps = max(1, int(max_epoch) * self.iters_per_epoch)
        self.warmup_steps = int(warmup_steps) if warmup_steps and warmup_steps > 0 else int(
            round(float(warmup_ratio) * self.total_steps))
        self.warmup_start_lr = float(warmup_start_lr) if warmup_start_lr is not None and warmup_start_lr >= 0 else 0.0

    def lr_at(self, step: int) -> float:
        """Base learning rate (before group scales) at global step ``step``."""
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.init_lr - self.warmup_start_lr) * step / self.warmup_steps
        remaining = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / remaining) if remaining > 0 else 1.0
        return self.init_lr + (self.min_lr - self.init_lr) * progress

    def step(self, cur_epoch: int, cur_step: int) -> float:
        lr = self.lr_at(cur_epoch * self.iters_per_epoch + cur_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr


class GroupScaledScheduler:
    """Gives each optimizer group ``lr * group["lr_scale"]`` under a scheduler that sets one LR for every group, as
    LAVIS's ``linear_warmup_cosine_lr`` and ``linear_warmup_step_lr`` do (they would drop the scales silently).

    Each group's LR is brought back to the unscaled value before the wrapped scheduler steps, so schedulers that
    set the LR and schedulers that multiply it are both scaled exactly once.
    """

    def __init__(self, scheduler, optimizer):
        self.scheduler = scheduler
        self.optimizer = optimizer

    def step(self, cur_epoch: int, cur_step: int):
        for group in self.optimizer.param_groups:
            group["lr"] /= group.get("lr_scale", 1.0)
        result = self.scheduler.step(cur_epoch=cur_epoch, cur_step=cur_step)
        for group in self.optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
        return result
