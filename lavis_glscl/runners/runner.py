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

Where LAVIS 1.0.2's own loop is right, this one follows it: the step is the task's ``train_step(model, samples)``
(:meth:`RunnerGlscl.train_step`); gradient accumulation (``accum_grad_iters``) synchronises DDP gradients only on the
last micro-step (``no_sync``) and flushes a partial accumulation at the epoch end, so every checkpoint starts from
zero gradients; LAVIS's schedulers keep each group's ``lr_scale`` (:class:`~lavis_glscl.optims.GroupScaledScheduler`).
The step logs (:mod:`.logs`) and the saved training state (:mod:`.state`) are mixins of their own.
"""
import contextlib
import datetime
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry
from lavis.datasets.data_utils import prepare_sample, reorg_datasets_by_split
from lavis.runners.runner_base import RunnerBase
from lavis.tasks.base_task import BaseTask
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from lavis_glscl import distributed
from lavis_glscl.datasets.loaders import TrainBatches
from lavis_glscl.models.base import ConfiguredModel
from lavis_glscl.optims import GroupScaledScheduler, default_param_groups
from lavis_glscl.runners.logs import StepLogs, StepTimer
from lavis_glscl.runners.options import RunOptions
from lavis_glscl.runners.state import CheckpointState


@registry.register_runner("runner_glscl")
class RunnerGlscl(CheckpointState, StepLogs, RunnerBase):
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
                skips = isinstance(self._model, ConfiguredModel) and self._model.skips_parameters_on_some_batches()
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
            # a plain float: LAVIS's classification task reports a numpy scalar, which a checkpoint must not hold
            self.best.update(agg_metrics=float(val_log["agg_metrics"]), epoch=epoch, saved=True)
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
        """The step's loss and the model output it came from (every ``loss*`` entry is logged).  LAVIS's
        ``BaseTask.train_step`` is ``model(samples)["loss"]``: for a task that keeps it the runner calls the model
        itself and keeps the whole output; a task with a ``train_step`` of its own is called as LAVIS calls it, and
        may return the loss, ``(loss, output)`` or the output."""
        own_step = vars(self.task).get("train_step") or type(self.task).train_step
        if own_step is BaseTask.train_step:
            output = dict(model(samples))
            return output["loss"], output
        result = self.task.train_step(model=model, samples=samples)
        if isinstance(result, Mapping):
            return result["loss"], dict(result)
        loss, output = (result[0], dict(result[1])) if isinstance(result, (tuple, list)) else (result, {})
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

    def _finite_on_all_ranks(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=self.device)
        if distributed.is_dist_avail_and_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())
