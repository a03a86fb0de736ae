"""What ``runner_glscl`` logs of training: each logged step (losses averaged over ranks, each ``lr_scale`` group's LR,
LAVIS's ETA, seconds per step, data time, peak memory) and each epoch's means and skip counts."""
import datetime
import logging
import resource
import time
from typing import Dict

import torch

from lavis_glscl import distributed


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far in MiB: the CUDA allocator's on GPU, the resident set's on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StepTimer:
    """Seconds per step and data-loading seconds per step since the epoch (re)started, and the epoch's ETA."""

    def __init__(self, iters: int):
        self.iters = iters
        self.steps = 0
        self.total = self.data = 0.0
        self.started = self.last = time.time()

    def data_ready(self) -> None:
        self.data += time.time() - self.last

    def step_done(self) -> None:
        self.steps += 1
        self.last = time.time()
        self.total = self.last - self.started

    @property
    def seconds_per_step(self) -> float:
        return self.total / max(1, self.steps)

    @property
    def data_seconds_per_step(self) -> float:
        return self.data / max(1, self.steps)

    def eta_seconds(self, step: int) -> float:
        return self.seconds_per_step * (self.iters - step - 1)


class StepLogs:
    """The runner's step and epoch logs (a mixin of :class:`~lavis_glscl.runners.runner.RunnerGlscl`)."""

    def _log_step(self, epoch: int, step: int, iters: int, output, timer: "StepTimer", modality: str) -> None:
        """Log the step's losses averaged over ranks, the LR of each ``lr_scale`` group, timing and peak memory, to
        the console (as LAVIS's MetricLogger lays it out) and as a ``train_step`` record in log.txt."""
        keys = sorted(k for k, v in output.items() if (k.startswith("loss") or k == "grad_norm") and torch.is_tensor(v))
        values = torch.stack([output[k].detach().float() for k in keys]).to(torch.float64)
        values = (distributed.all_reduce_sum(values) / distributed.world()[1]).tolist()
        losses = dict(zip(keys, values))
        rates = self.group_learning_rates()
        memory = peak_memory_mb(self.device)
        logging.info("Train: epoch [%d] [%d/%d] %s  eta: %s  %s  lr: %s  time: %.4f  data: %.4f  max mem: %.0f",
                     epoch, step, iters, modality, datetime.timedelta(seconds=int(timer.eta_seconds(step))),
                     "  ".join(f"{k}: {v:.4f}" for k, v in losses.items()),
                     " ".join(f"{lr:.2e}(x{scale:g})" for scale, lr in rates.items()),
                     timer.seconds_per_step, timer.data_seconds_per_step, memory)
        record = {"epoch": epoch, "iter": step, "modality": modality, "lr": self.base_learning_rate(),
                  **{f"lr_scale_{scale:g}": lr for scale, lr in rates.items()}, **losses,
                  "seconds_per_step": timer.seconds_per_step, "data_seconds": timer.data_seconds_per_step,
                  "max_mem_mb": memory}
        self.log_stats(record, "train_step")

    def group_learning_rates(self) -> Dict[float, float]:
        """``{lr_scale: lr}`` of the optimizer's groups, as set for this step."""
        return {float(group.get("lr_scale", 1.0)): group["lr"] for group in self.optimizer.param_groups}

    def base_learning_rate(self) -> float:
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_scale", 1.0)

    def _epoch_stats(self, sums: Dict[str, float], counts: Dict[str, int]) -> Dict[str, float]:
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [float(counts[k]) for k in counts], dtype=torch.float64,
                              device=self.device)
        totals = distributed.all_reduce_sum(totals).tolist()
        world_size = distributed.world()[1]
        total_counts = dict(zip(counts, totals[len(keys):]))
        stats = {}
        for key, value in zip(keys, totals[:len(keys)]):
            modality = key.split("_")[0] if not key.startswith("loss") else None
            steps = total_counts[f"{modality}_steps"] if modality else total_counts["steps"]
            # per-modality means only when the epoch mixed modalities
            if modality is None or 0 < steps < total_counts["steps"]:
                stats[key] = value / max(1.0, steps)
        stats["lr"] = self.base_learning_rate()
        stats["skipped_samples"] = int(total_counts["skipped_samples"])
        stats["nonfinite_steps"] = int(total_counts["nonfinite_steps"] / world_size)
        logging.info("Averaged stats: %s", "  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                                                   for k, v in stats.items()))
        dropped = sum(len(items) for dataset in self.datasets.get("train", [])
                      for items in getattr(dataset, "dropped", {}).values())
        if stats["skipped_samples"] or stats["nonfinite_steps"] or dropped:
            logging.warning("epoch summary: %d unreadable samples replaced, %d non-finite steps skipped, %d "
                            "annotations dropped when the datasets were built", stats["skipped_samples"],
                            stats["nonfinite_steps"], dropped)
        return stats
