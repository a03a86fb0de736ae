"""The ``run`` block, read once into a typed object: every key LAVIS, its tasks and ``runner_glscl`` read, with its type
and allowed range.

``RunOptions.from_config(run_cfg)`` refuses an unknown key (naming the closest known one: ``batch_size_trian``), a value
of the wrong type (``init_lr: fast``, ``amp: "false"``) and a value out of range (``batch_size_train: 0``,
``max_epoch: -1``), naming the key, before anything is built (``launch.setup``).  Keys that LAVIS's own tasks read
(generation lengths, beam sizes, ...) are known with LAVIS's loose types; keys LAVIS's ``init_distributed_mode``
writes (``rank``, ``gpu``, ``dist_backend``) are accepted too.
"""
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Union

from omegaconf import OmegaConf

from lavis_glscl.stopping import PlateauRule
from lavis_glscl.typed_options import ConfigError, build_dataclass


@dataclass
class RunOptions:
    """Every key of a run yaml's ``run`` block (defaults: LAVIS's where it has one)."""

    task: str
    # --- LAVIS's runner and entry points
    runner: str = "runner_glscl"
    device: str = "cuda"
    seed: int = 42
    output_dir: str = "output"
    evaluate: bool = False
    num_workers: int = 4
    batch_size_train: Optional[int] = None
    batch_size_eval: Optional[int] = None
    lr_sched: Optional[str] = None
    init_lr: Optional[float] = None
    min_lr: float = 0.0
    warmup_lr: float = -1.0
    warmup_steps: int = 0
    lr_decay_rate: Optional[float] = None
    weight_decay: float = 0.0
    beta2: float = 0.999
    max_epoch: int = 1
    accum_grad_iters: int = 1
    log_freq: int = 50
    amp: bool = False
    train_splits: List[str] = field(default_factory=list)
    valid_splits: List[str] = field(default_factory=list)
    test_splits: List[str] = field(default_factory=list)
    use_dist_eval_sampler: bool = True
    resume_ckpt_path: Optional[str] = None
    train_dataset_ratios: Union[None, str, List[float], Dict[str, float]] = None
    distributed: bool = False
    dist_url: str = "env://"
    world_size: int = 1
    # written by LAVIS's init_distributed_mode (and ours) when a run starts
    rank: Optional[int] = None
    gpu: Optional[int] = None
    dist_backend: Optional[str] = None
    # LAVIS's runner_iter
    max_iters: Optional[int] = None
    iters_per_inner_epoch: Optional[int] = None
    # --- LAVIS's tasks (retrieval, captioning, VQA, dialogue, PNP-VQA), read by them as they are
    k_test: int = 128
    max_len: Any = None
    min_len: Any = None
    num_beams: Any = None
    num_ans_candidates: Any = None
    inference_method: Any = None
    prompt: Any = None
    report_metric: Any = None
    block_num: Any = None
    cap_max_length: Any = None
    cap_min_length: Any = None
    internal_bsz_fid: Any = None
    num_captions: Any = None
    num_captions_fid: Any = None
    num_patches: Any = None
    repetition_penalty: Any = None
    top_k: Any = None
    top_p: Any = None
    # --- runner_glscl
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.1
    iters_per_epoch: Optional[int] = None
    save_freq_iters: int = 0
    keep_last_checkpoints: Optional[int] = None
    find_unused_parameters: bool = False
    max_grad_norm: Optional[float] = None
    plateau: Optional[PlateauRule] = None
    dist_timeout_minutes: float = 60.0
    # resume by itself from the newest complete checkpoint of the same job (see runners.job)
    auto_resume: bool = False
    # the run directory's name under output_dir; default: the start time, unique per run
    job_id: Optional[str] = None
    # --- the glscl_retrieval and align_bench tasks
    itm_pairs_per_batch: int = 256
    rerank_add_itc: bool = True
    retrieval_scorer: Literal["auto", "itc", "rerank"] = "auto"
    score_normalizer: Optional[str] = None
    score_normalizer_options: Optional[Dict[str, Dict[str, Any]]] = None
    agg_metric: Optional[str] = None
    max_box_fraction: Optional[float] = None

    def __post_init__(self):
        positive = ("batch_size_train", "batch_size_eval", "max_epoch", "accum_grad_iters", "log_freq", "k_test",
                    "iters_per_epoch", "keep_last_checkpoints", "itm_pairs_per_batch", "world_size", "max_iters",
                    "iters_per_inner_epoch")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"run.{name} must be at least 1, got {value}")
        non_negative = ("num_workers", "warmup_steps", "save_freq_iters", "init_lr", "min_lr", "weight_decay")
        for name in non_negative:
            value = getattr(self, name)
            if value is not None and (value < 0 or (isinstance(value, float) and not math.isfinite(value))):
                raise ConfigError(f"run.{name} must be a finite number >= 0, got {value}")
        for name in ("adam_eps", "dist_timeout_minutes", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"run.{name} must be > 0, got {value}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"run.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if not 0.0 < self.beta2 < 1.0:
            raise ConfigError(f"run.beta2 must be in (0, 1), got {self.beta2}")
        if self.save_freq_iters % self.accum_grad_iters:
            raise ConfigError(f"run.save_freq_iters ({self.save_freq_iters}) must be a multiple of "
                              f"run.accum_grad_iters ({self.accum_grad_iters}): a mid-epoch checkpoint would drop "
                              "accumulated gradients")
        if isinstance(self.train_dataset_ratios, str) and self.train_dataset_ratios != "proportional":
            raise ConfigError(f"run.train_dataset_ratios must be a list of weights or 'proportional', got "
                              f"{self.train_dataset_ratios!r}")
        if self.resume_ckpt_path and not os.path.isfile(self.resume_ckpt_path):
            raise ConfigError(f"run.resume_ckpt_path {self.resume_ckpt_path} does not exist")
        if self.job_id is not None and (not self.job_id or "/" in self.job_id or self.job_id in (".", "..")):
            raise ConfigError(f"run.job_id must be a directory name (no '/'), got {self.job_id!r}")

    @property
    def training(self) -> bool:
        return not self.evaluate and bool(self.train_splits)

    @classmethod
    def from_config(cls, run_cfg: Optional[Mapping]) -> "RunOptions":
        """The typed ``run`` block; :class:`ConfigError` naming the key for anything unknown, mistyped or out of
        range, and for what training needs but the block lacks."""
        if run_cfg is None:
            raise ConfigError("the run yaml has no run block (run: {task: ..., ...})")
        if OmegaConf.is_config(run_cfg):
            run_cfg = OmegaConf.to_container(run_cfg, resolve=True)
        options = build_dataclass(cls, run_cfg, "run")
        if options.training:
            needed = [name for name in ("batch_size_train", "lr_sched", "init_lr") if getattr(options, name) is None]
            if needed:
                raise ConfigError(f"training (run.train_splits {options.train_splits}) needs "
                                  + ", ".join(f"run.{name}" for name in needed))
        return options
