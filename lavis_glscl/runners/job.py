"""Which directory a run writes to, and where a restarted run resumes.

A run directory is never shared: without ``run.job_id`` it is the start time to the second, created atomically, with
``_1``, ``_2``, ... when another run took that second; a ``run.job_id`` that exists already is refused unless the run
resumes.

``run.auto_resume: true`` makes a run restarted by its launcher continue by itself, from the newest complete
checkpoint of the same job (checkpoints are renamed into place only once written).  The job is, in this order:
``run.job_id``; SLURM's ``SLURM_JOB_ID`` (with ``SLURM_ARRAY_TASK_ID``), which a requeued job keeps; torchrun's
``--rdzv-id`` (``TORCHELASTIC_RUN_ID``); or, for workers that ``torchrun --max-restarts N`` restarted on the same
node, the directory the first attempt created (recorded under ``output_dir`` by the torchrun agent's host and
process id, which restarts keep).
"""
import datetime
import json
import logging
import os
import socket
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from lavis_glscl import distributed
from lavis_glscl.runners.options import RunOptions
from lavis_glscl.typed_options import ConfigError

CHECKPOINT_GLOB = "checkpoint_*.pth"


def job_identity(options: RunOptions, environ=None) -> Optional[str]:
    """The name of the job a restart belongs to, or None when nothing outlives the processes."""
    environ = os.environ if environ is None else environ
    if options.job_id:
        return options.job_id
    if environ.get("SLURM_JOB_ID"):
        array_task = environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm_{environ['SLURM_JOB_ID']}" + (f"_{array_task}" if array_task else "")
    run_id = environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"torchrun_{run_id}"
    return None


def agent_marker(output_dir: Path) -> Path:
    """Where the first attempt under this torchrun agent records its run directory for the agent's restarts."""
    return output_dir / f".torchrun_{socket.gethostname()}_{os.getppid()}.json"


def claim_new_directory(output_dir: Path, name: str) -> Path:
    """``output_dir/name``, or ``name_1``, ``name_2``, ... if taken, created atomically (``mkdir`` fails for all but
    one of several runs asking for the same name)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(10_000):
        directory = output_dir / (name if attempt == 0 else f"{name}_{attempt}")
        try:
            directory.mkdir()
            return directory
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run directory for {name} under {output_dir}")


def checkpoint_progress(path: Path) -> Tuple[int, int]:
    """``(epoch, step)`` a run resumed from ``path`` starts at (an epoch-end checkpoint: the next epoch's step 0)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    iteration = state.get("iteration")
    return (int(state["epoch"]) + 1, 0) if iteration is None else (int(state["epoch"]), int(iteration))


def newest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The complete checkpoint of ``run_dir`` furthest into training (``checkpoint_best.pth`` aside: its epoch's own
    checkpoint is at least as far)."""
    candidates: List[Path] = [path for path in run_dir.glob(CHECKPOINT_GLOB) if path.name != "checkpoint_best.pth"]
    if not candidates:
        return None
    return max(candidates, key=checkpoint_progress)


def decide_run_directory(options: RunOptions) -> Tuple[Path, Optional[Path]]:
    """(run directory, checkpoint to resume from or None), decided on this process; see the module docstring."""
    output_dir = Path(options.output_dir).expanduser().resolve()
    identity = job_identity(options)
    if options.auto_resume:
        marker = agent_marker(output_dir) if "TORCHELASTIC_RESTART_COUNT" in os.environ else None
        if identity is None and marker is not None and int(os.environ["TORCHELASTIC_RESTART_COUNT"]) > 0 \
                and marker.is_file():
            identity = json.loads(marker.read_text())["run_directory"]
        if identity is None:
            run_dir = claim_new_directory(output_dir, timestamp())
            if marker is not None:
                marker.write_text(json.dumps({"run_directory": run_dir.name}))
            else:
                logging.warning("run.auto_resume: nothing names this job for a restart (set run.job_id, or start it "
                                "with SLURM or torchrun); %s starts afresh", run_dir)
            return run_dir, None
        run_dir = output_dir / identity
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, newest_checkpoint(run_dir)
    if identity is not None and options.job_id:
        run_dir = output_dir / identity
        if run_dir.exists() and any(run_dir.iterdir()) and not options.resume_ckpt_path:
            raise ConfigError(f"run directory {run_dir} exists (run.job_id {options.job_id!r}) and this run does not "
                              "resume: choose another run.job_id, or continue it with run.auto_resume=true")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, None
    return claim_new_directory(output_dir, timestamp()), None


def prepare_run_directory(options: RunOptions) -> Tuple[str, Optional[str]]:
    """``(job id, checkpoint to resume or None)`` decided by rank 0 and shared with every rank; the job id names the
    run directory under ``output_dir``."""
    decision = None
    if distributed.world()[0] == 0:
        try:
            run_dir, resume = decide_run_directory(options)
            decision = {"job_id": run_dir.name, "resume": None if resume is None else str(resume)}
        except ConfigError as error:
            decision = {"error": str(error)}
    decision = distributed.broadcast_object(decision)
    if "error" in decision:
        raise ConfigError(decision["error"])
    return decision["job_id"], decision["resume"]


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d%H%M%S")
