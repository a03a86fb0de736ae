"""``runner_glscl``: LAVIS's epoch runner with its CPU, distributed and checkpoint gaps closed.

Differences from ``RunnerBase`` (LAVIS 1.0.2):

- the model property always moves/wraps the model (LAVIS leaves ``runner.model`` as None on CPU), and
  DDP works on CPU (gloo) as well as CUDA;
- plain ``DataLoader``s (LAVIS's ``PrefetchLoader`` needs CUDA); training batches come from
  :class:`~lavis_glscl.datasets.loaders.TrainBatches`, so ``train_dataset_ratios`` (weights, or ``proportional``)
  really mixes datasets, map-style ones and shards streamed by :mod:`~lavis_glscl.datasets.shards` alike, and
  map-style global batches do not depend on the world size;
- AdamW groups carry ``lr_scale`` (``model.get_optimizer_params``) and the scheduler gets
  ``iters_per_epoch``, so step-level schedules such as ``glscl_warmup_linear`` work;
- every ``loss*`` entry of the model output is logged; a step whose loss is NaN/inf on any rank is
  skipped on all ranks and counted, as are samples the datasets skipped;
- checkpoints hold everything needed to resume exactly (model incl. frozen weights, optimizer, scaler,
  epoch, iteration, every rank's RNG state, best metric), are written atomically and never with
  non-finite weights; ``resume_ckpt_path`` resumes at an epoch end or mid-epoch (``save_freq_iters``);
- no unconditional barrier, and a relative ``output_dir`` is relative to the working directory.

Where LAVIS 1.0.2's own loop is right, this one follows it: the step goes through ``task.train_step(model,
samples)``; gradient accumulation (``accum_grad_iters``) synchronises DDP gradients only on the last micro-step
(``no_sync``) and flushes a partial accumulation at the epoch end, so every checkpoint starts from zero gradients;
LAVIS's schedulers keep each group's ``lr_scale`` (:class:`~lavis_glscl.optims.GroupScaledScheduler`); each logged
step reports, as LAVIS's ``MetricLogger`` does, the ETA, seconds per step, data time and peak memory (CUDA
allocator on GPU, resident set on CPU), plus the LR of every ``lr_scale`` group and, with ``max_grad_norm``, the
gradient norm before clipping.
"""
import contextlib
import datetime
import logging
import os
import random
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry
from lavis.datasets.data_utils import prepare_sample, reorg_datasets_by_split
from lavis.runners.runner_base import RunnerBase
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from lavis_glscl import distributed
from lavis_glscl.datasets.loaders import TrainBatches
from lavis_glscl.optims import GroupScaledScheduler, default_param_groups
from lavis_glscl.runners.options import RunOptions
from lavis_glscl.serialization import read_checkpoint
from lavis_glscl.typed_options import ConfigError


def rng_state() -> dict:
    """This process's Python, NumPy and torch RNG states as plain lists (picklable across ranks, and loadable
    with ``torch.load(weights_only=True)``)."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


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


@registry.register_runner("runner_glscl")
class RunnerGlscl(RunnerBase):
    """See the module docstring.  Extra run options: ``amp_dtype`` (float16|bfloat16), ``warmup_ratio``,
    ``iters_per_epoch``, ``save_freq_iters``, ``keep_last_checkpoints``, ``find_unused_parameters``,
    ``adam_eps``, ``max_grad_norm``."""

    def __init__(self, cfg, task, model, datasets, job_id):
        self.options = RunOptions.from_config(cfg.run_cfg)
        super().__init__(cfg, task, model, datasets, job_id)
        self.best = {"agg_metrics": 0.0, "epoch": 0, "saved": False}
        self.plateau = self.options.plateau
        self.test_results = None

    # ------------------------------------------------------------------ setup
    def setup_output_dir(self):
        output_dir = Path(self.options.output_dir).expanduser().resolve() / self.job_id
        result_dir = output_dir / "result"
        result_dir.mkdir(parents=True, exist_ok=True)
        for name, path in (("result_dir", result_dir), ("output_dir", output_dir)):
            registry.mapping["paths"][name] = str(path)
        self.result_dir, self.output_dir = result_dir, output_dir
        if is_main_process():
            # <output_dir>/latest always names the newest run, e.g. for a fine-tuning yaml's `pretrained`
            latest = output_dir.parent / "latest"
            if latest.is_symlink() or not latest.exists():
                temporary = output_dir.parent / f".latest.{self.job_id}"
                temporary.unlink(missing_ok=True)
                temporary.symlink_to(output_dir.name)
                os.replace(temporary, latest)

    @property
    def model(self):
        if self._wrapped_model is None:
            self._model = self._model.to(self.device)
            if self.use_distributed:
                device_ids = [self.config.run_cfg.gpu] if self.cuda_enabled else None
                skips = getattr(self._model, "skips_parameters_on_some_batches", lambda: False)()
                find_unused = self.options.find_unused_parameters or skips
                self._wrapped_model = DistributedDataParallel(self._model, device_ids=device_ids,
                                                              find_unused_parameters=find_unused)
            else:
                self._wrapped_model = self._model
        return self._wrapped_model

    @property
    def optimizer(self):
        if self._optimizer is None:
            options = self.options
            model = self.unwrap_dist_model(self.model)
            weight_decay = options.weight_decay
            groups = (model.get_optimizer_params(weight_decay) if hasattr(model, "get_optimizer_params")
                      else default_param_groups(model, weight_decay))
            logging.info("number of trainable parameters: %d", sum(p.numel() for g in groups for p in g["params"]))
            self._optimizer = torch.optim.AdamW(groups, lr=self.init_lr, weight_decay=weight_decay,
                                                betas=(0.9, options.beta2), eps=options.adam_eps)
        return self._optimizer

    @property
    def amp_dtype(self) -> torch.dtype:
        return {"float16": torch.float16, "bfloat16": torch.bfloat16}[self.options.amp_dtype]

    @property
    def use_amp(self) -> bool:
        return self.options.amp

    @property
    def scaler(self):
        if self._scaler is None and self.use_amp and self.amp_dtype == torch.float16 and self.cuda_enabled:
            self._scaler = torch.amp.GradScaler("cuda")
        return self._scaler

    @property
    def lr_scheduler(self):
        if self._lr_sched is None:
            options = self.options
            scheduler_cls = registry.get_lr_scheduler_class(options.lr_sched)
            # LAVIS's step scheduler takes decay_rate=None literally; its own default is 1
            decay = {"decay_rate": options.lr_decay_rate} if options.lr_decay_rate is not None else {}
            scheduler = scheduler_cls(
                optimizer=self.optimizer, max_epoch=self.max_epoch, min_lr=self.min_lr, init_lr=self.init_lr,
                warmup_start_lr=options.warmup_lr, warmup_steps=options.warmup_steps,
                warmup_ratio=options.warmup_ratio, iters_per_epoch=len(self.train_loader), **decay)
            self._lr_sched = (scheduler if getattr(scheduler, "applies_lr_scale", False)
                              else GroupScaledScheduler(scheduler, self.optimizer))
        return self._lr_sched

    @property
    def dataloaders(self) -> dict:
        if self._dataloaders is None:
            options = self.options
            rank, world_size = distributed.world()
            by_split = reorg_datasets_by_split(self.datasets)
            self.datasets, self._dataloaders = {}, {}
            for split, datasets in sorted(by_split.items()):
                if split in self.train_splits:
                    self.datasets[split] = datasets
                    self._dataloaders[split] = TrainBatches(
                        datasets, options.batch_size_train, rank, world_size, options.seed,
                        options.train_dataset_ratios, options.iters_per_epoch, options.num_workers,
                        pin_memory=self.cuda_enabled)
                    continue
                if len(datasets) != 1:
                    raise ValueError(f"split {split!r} has {len(datasets)} datasets; evaluation needs exactly one")
                dataset = self.datasets[split] = datasets[0]
                sampler = (DistributedSampler(dataset, shuffle=False)
                           if self.use_distributed and self.use_dist_eval_sampler else None)
                self._dataloaders[split] = DataLoader(
                    dataset, batch_size=options.batch_size_eval, sampler=sampler, shuffle=False,
                    num_workers=options.num_workers, pin_memory=self.cuda_enabled,
                    collate_fn=getattr(dataset, "collater", None))
        return self._dataloaders

    # ------------------------------------------------------------------ training
    def train(self):
        start_time = time.time()
        self.log_config()
        start_epoch, start_iter = 0, 0
        if not self.evaluate_only and self.resume_ckpt_path:
            start_epoch, start_iter = self._load_checkpoint(self.resume_ckpt_path)
        last_epoch, steps, plateau_reached = start_epoch, 0, False
        for epoch in range(start_epoch, self.max_epoch):
            last_epoch = epoch
            checks = {}
            if not self.evaluate_only:
                train_stats = self.train_epoch(epoch, start_iter)
                self.log_stats(train_stats, "train")
                checks.update({f"train_{key}": value for key, value in train_stats.items()})
                steps += len(self.train_loader) - start_iter
                start_iter = 0
            for split_name in self.valid_splits:
                checks.update({f"{split_name}_{key}": value
                               for key, value in (self._validate(split_name, epoch) or {}).items()})
            plateau_reached = not self.evaluate_only and self._plateau_reached(checks)
            if not self.evaluate_only:
                self._save_checkpoint(epoch)
            if self.evaluate_only or plateau_reached:
                break
            distributed.barrier()
        if not self.evaluate_only:
            self.log_stats({"steps": steps, "epochs": last_epoch + 1, "plateau_reached": plateau_reached}, "run")
        self.test_results = self.evaluate(cur_epoch="best" if self.best["saved"] else last_epoch,
                                          skip_reload=self.evaluate_only)
        logging.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start_time)))

    def _plateau_reached(self, checks: Dict[str, float]) -> bool:
        """Feed this epoch's value of ``run.plateau``'s metric to the rule (decided on rank 0, which alone holds
        validation metrics) and say whether the run stops here."""
        if self.plateau is None:
            return False
        reached = False
        if is_main_process():
            if self.plateau.metric not in checks:
                raise KeyError(f"run.plateau.metric {self.plateau.metric!r} is not among this epoch's values "
                               f"{sorted(checks)}")
            reached = self.plateau.update(checks[self.plateau.metric])
            if reached:
                logging.info("plateau: %s %s over the last %d checks; stopping after epoch %d", self.plateau.metric,
                             self.plateau.history, self.plateau.window, len(self.plateau.history) - 1)
        return bool(distributed.broadcast_object(reached))

    def _validate(self, split_name: str, epoch: int) -> Optional[dict]:
        """Evaluate ``split_name``; keep the best checkpoint by ``agg_metrics`` on ``val``.  Returns the metrics
        (rank 0; None elsewhere)."""
        logging.info("Evaluating on %s.", split_name)
        val_log = self.eval_epoch(split_name=split_name, cur_epoch=epoch)
        if val_log is None or not is_main_process():
            return None
        if "agg_metrics" not in val_log:
            raise KeyError(f"the task's evaluation of {split_name!r} returned no 'agg_metrics'")
        if val_log["agg_metrics"] > self.best["agg_metrics"] and split_name == "val":
            self.best.update(agg_metrics=val_log["agg_metrics"], epoch=epoch, saved=True)
            self._save_checkpoint(epoch, is_best=True)
        self.log_stats({**val_log, "best_epoch": self.best["epoch"]}, split_name)
        return val_log

    def train_epoch(self, epoch: int, start_iter: int = 0) -> Dict[str, float]:
        """One epoch (from ``start_iter`` when resuming); returns the epoch's mean losses and skip counts."""
        model = self.model
        model.train()
        loader = self.train_loader
        iters = len(loader)
        accum = self.accum_grad_iters
        save_freq = self.options.save_freq_iters
        sums: Dict[str, float] = defaultdict(float)
        counts = {"steps": 0, "image_steps": 0, "video_steps": 0, "skipped_samples": 0, "nonfinite_steps": 0}
        timer = StepTimer(iters)
        logging.info("Start training epoch %d, %d iters per epoch.", epoch, iters)
        for step, samples in enumerate(loader.epoch(epoch, start_iter), start=start_iter):
            timer.data_ready()
            skipped = samples.pop("num_skipped", None)
            if torch.is_tensor(skipped):
                counts["skipped_samples"] += int(skipped.sum())
            samples = prepare_sample(samples, cuda_enabled=self.cuda_enabled)
            samples.update({"epoch": epoch, "num_iters_per_epoch": iters, "iters": step})
            self.lr_scheduler.step(cur_epoch=epoch, cur_step=step)
            updates = (step + 1) % accum == 0 or step + 1 == iters
            # DDP all-reduces gradients in backward; on accumulation micro-steps they only add up locally
            sync = contextlib.nullcontext() if updates or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                    loss, output = self.train_step(model, samples)
                if not self._finite_on_all_ranks(loss):
                    counts["nonfinite_steps"] += 1
                    logging.warning("epoch %d step %d: non-finite loss, step skipped on every rank", epoch, step)
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                if self.scaler is not None:
                    self.scaler.scale(loss / accum).backward()
                else:
                    (loss / accum).backward()
            if updates:
                grad_norm = self._optimizer_step()
                if grad_norm is not None:
                    output["grad_norm"] = grad_norm
            counts["steps"] += 1
            modality = "video" if "video" in samples else "image"
            counts[f"{modality}_steps"] += 1
            for key, value in output.items():
                if key.startswith("loss") and torch.is_tensor(value):
                    sums[key] += float(value.detach())
                    sums[f"{modality}_{key}"] += float(value.detach())
            timer.step_done()
            if step % self.log_freq == 0 or step == iters - 1:
                self._log_step(epoch, step, iters, output, timer, modality)
            if save_freq and (step + 1) % save_freq == 0 and step + 1 < iters:
                self._save_checkpoint(epoch, iteration=step + 1)
        return self._epoch_stats(sums, counts)

    def train_step(self, model, samples: dict) -> Tuple[torch.Tensor, dict]:
        """The task's ``train_step(model, samples)`` (a task that overrides it is honoured); returns its loss and
        the model output of that step (every ``loss*`` entry is logged).  LAVIS's tasks return the loss alone, so
        the output is taken from the model's forward as the task calls it."""
        captured = {}
        hook = self.unwrap_dist_model(model).register_forward_hook(
            lambda module, inputs, output: captured.setdefault("output", output))
        try:
            result = self.task.train_step(model=model, samples=samples)
        finally:
            hook.remove()
        loss = result[0] if isinstance(result, (tuple, list)) else result
        output = dict(captured.get("output") or {})
        output["loss"] = loss
        return loss, output

    def _optimizer_step(self) -> Optional[torch.Tensor]:
        """Clip (``max_grad_norm``), step and zero the gradients; returns the norm before clipping, if clipped."""
        max_norm = self.options.max_grad_norm
        grad_norm = None
        if max_norm:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, float(max_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    @torch.no_grad()
    def eval_epoch(self, split_name, cur_epoch, skip_reload=False):
        """LAVIS's evaluation of one split, with the batches kept on the CPU when there is no CUDA device."""
        data_loader = self.dataloaders.get(split_name)
        if data_loader is None:
            raise KeyError(f"no data loader for split {split_name!r}; built splits: {sorted(self.dataloaders)}")
        model = self.unwrap_dist_model(self.model)
        if not skip_reload and cur_epoch == "best":
            model = self._reload_best_model(model)
        model.eval()
        self.task.before_evaluation(model=model, dataset=self.datasets[split_name])
        results = self.task.evaluation(model, data_loader, cuda_enabled=self.cuda_enabled)
        if results is not None:
            return self.task.after_evaluation(val_result=results, split_name=split_name, epoch=cur_epoch)
        return None

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

    def _finite_on_all_ranks(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=self.device)
        if distributed.is_dist_avail_and_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

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
        dropped = sum(len(items) for d in self.datasets.get("train", []) for items in getattr(d, "dropped", {}).values())
        if stats["skipped_samples"] or stats["nonfinite_steps"] or dropped:
            logging.warning("epoch summary: %d unreadable samples replaced, %d non-finite steps skipped, %d annotations "
                            "dropped when the datasets were built", stats["skipped_samples"], stats["nonfinite_steps"],
                            dropped)
        return stats

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, cur_epoch, is_best=False, iteration: Optional[int] = None):
        """Full training state; ``iteration`` = next step of ``cur_epoch`` for a mid-epoch save, None at epoch end."""
        rng_states = distributed.gather_objects(rng_state())
        if not is_main_process():
            return
        model = self.unwrap_dist_model(self.model)
        state_dict = model.state_dict()
        bad = [name for name, value in state_dict.items() if value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            logging.error("not saving a checkpoint at epoch %s: non-finite values in %s", cur_epoch, bad[:5])
            return
        save_obj = {
            "model": state_dict,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "config": self.config.to_dict(),
            "epoch": cur_epoch,
            "iteration": iteration,
            "rng": rng_states,
            "best": dict(self.best),
            "data_layout": self.train_loader.layout,  # what sharded data needs to resume mid-epoch
            "plateau_history": list(self.plateau.history) if self.plateau else None,
        }
        name = "best" if is_best else ("latest" if iteration is not None else cur_epoch)
        path = self.output_dir / f"checkpoint_{name}.pth"
        logging.info("Saving checkpoint at epoch %s%s to %s.", cur_epoch,
                     "" if iteration is None else f" iteration {iteration}", path)
        temporary = path.with_suffix(".pth.tmp")
        torch.save(save_obj, temporary)
        os.replace(temporary, path)
        if not is_best and iteration is None:
            self._prune_epoch_checkpoints(cur_epoch)

    def _check_same_architecture(self, path: str, checkpoint: dict) -> None:
        """Refuse, naming both, to resume a run of one model from a checkpoint of another (its config says which)."""
        if not isinstance(checkpoint, dict) or "model" not in checkpoint or "optimizer" not in checkpoint:
            raise ConfigError(f"run.resume_ckpt_path {path} is not a training checkpoint (model, optimizer, epoch); to "
                              "start from its weights, set model.pretrained instead")
        saved = (checkpoint.get("config") or {}).get("model") or {}
        current = self.config.model_cfg
        ours = (current.get("arch"), current.get("model_type"))
        theirs = (saved.get("arch"), saved.get("model_type"))
        if saved and ours != theirs:
            raise ConfigError(f"run.resume_ckpt_path {path} is a checkpoint of {theirs[0]} ({theirs[1]}), this run "
                              f"builds {ours[0]} ({ours[1]}): resume with the same model.arch and model.model_type, "
                              "or start from its weights with model.pretrained")

    def _prune_epoch_checkpoints(self, cur_epoch: int) -> None:
        keep = self.options.keep_last_checkpoints
        if not keep:
            return
        for epoch in range(cur_epoch - int(keep), -1, -1):
            old = self.output_dir / f"checkpoint_{epoch}.pth"
            if not old.exists():
                break
            old.unlink()

    def _load_checkpoint(self, url_or_filename):
        """Restore the full training state; returns ``(start_epoch, start_iter)``."""
        if not os.path.isfile(url_or_filename):
            raise ConfigError(f"run.resume_ckpt_path {url_or_filename} does not exist")
        checkpoint = read_checkpoint(url_or_filename)
        self._check_same_architecture(url_or_filename, checkpoint)
        self.unwrap_dist_model(self.model).load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.best.update(checkpoint.get("best", {}))
        if self.plateau is not None:
            self.plateau.history = list(checkpoint.get("plateau_history") or [])
        rank, world_size = distributed.world()
        states = checkpoint.get("rng") or []
        if len(states) == world_size:
            set_rng_state(states[rank])
        elif states:
            logging.warning("checkpoint holds RNG states of %d ranks, running on %d: RNG not restored", len(states),
                            world_size)
        iteration = checkpoint.get("iteration")
        if iteration is not None:
            self.train_loader.check_resumable(checkpoint.get("data_layout"))
        epoch = int(checkpoint["epoch"])
        logging.info("Resumed from %s (epoch %d, %s)", url_or_filename, epoch,
                     "end of epoch" if iteration is None else f"iteration {iteration}")
        return (epoch + 1, 0) if iteration is None else (epoch, int(iteration))
