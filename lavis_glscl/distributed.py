"""Distributed helpers that also work in a plain single process (no process group)."""
import datetime
import os
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist
from lavis.common.dist_utils import get_rank, get_world_size, is_dist_avail_and_initialized
from lavis.models.base_model import GatherLayer


def world() -> Tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    return get_rank(), get_world_size()


class LaunchError(RuntimeError):
    """The launcher's environment is not enough to start the process group."""


def launch_environment(environ=None) -> Optional[Tuple[int, int, int]]:
    """``(rank, world_size, local_rank)`` from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or,
    as LAVIS's ``init_distributed_mode`` reads them, SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``,
    ``SLURM_LOCALID``); ``None`` for a plain process."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in environ:
        return (int(environ["SLURM_PROCID"]), int(environ.get("SLURM_NTASKS", 1)),
                int(environ.get("SLURM_LOCALID", 0)))
    return None


def init_distributed(run_cfg) -> None:
    """Start the process group when launched by torchrun or srun: nccl on CUDA, gloo on CPU.

    Writes ``distributed``, ``rank``, ``world_size``, ``gpu`` and ``dist_backend`` into ``run_cfg`` as LAVIS's
    ``init_distributed_mode`` does, which only knows nccl.  Under SLURM, ``dist_url: env://`` needs
    ``MASTER_ADDR`` and ``MASTER_PORT`` (torchrun sets them itself).  A second call in the same process (several
    runs in one launch) reuses the group.
    """
    launch = launch_environment()
    if launch is None:
        run_cfg.distributed = False
        return
    run_cfg.rank, run_cfg.world_size, run_cfg.gpu = launch
    use_cuda = str(run_cfg.device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(run_cfg.gpu)
    run_cfg.dist_backend = "nccl" if use_cuda else "gloo"
    run_cfg.distributed = True
    if dist.is_initialized():
        return
    dist_url = run_cfg.get("dist_url", "env://")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if dist_url == "env://" and missing:
        raise LaunchError(f"rank {run_cfg.rank} of {run_cfg.world_size} (SLURM) needs {' and '.join(missing)} for "
                          f"run.dist_url env://: export MASTER_ADDR=<first node's host name> MASTER_PORT=<free port> "
                          f"before srun, or set run.dist_url=tcp://<host>:<port>")
    timeout = datetime.timedelta(minutes=run_cfg.get("dist_timeout_minutes", 60))
    store = restart_attempt_store(timeout) if dist_url == "env://" else None
    dist.init_process_group(backend=run_cfg.dist_backend, init_method=None if store else dist_url, store=store,
                            world_size=run_cfg.world_size, rank=run_cfg.rank, timeout=timeout)
    dist.barrier()


def restart_attempt_store(timeout: datetime.timedelta) -> Optional[dist.Store]:
    """Under torchrun, a client of the agent's store with keys of this restart attempt only, else None.

    torchrun keeps its store across ``--max-restarts``: without a prefix a restarted rank may read the killed attempt's
    addresses before its peers publish theirs and fail connecting to a dead port (gloo: "Connection refused").
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                timeout=timeout)
    return dist.PrefixStore(f"lavis_glscl/attempt_{attempt}", agent_store)


def shutdown() -> None:
    """Leave the process group at the end of a launch: a gloo group left to interpreter exit can abort the process
    ("terminate called without an active exception") while other ranks still talk to it."""
    if is_dist_avail_and_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in one process)."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not is_dist_avail_and_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def _max_size(size: int, device) -> int:
    tensor = torch.tensor([size], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_gather_with_grad(tensor: torch.Tensor, pad_dim: Optional[int] = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0; gradients flow back to each rank's own rows.

    ``pad_dim`` names a dimension whose size may differ between ranks.  Dimension 0: rows are gathered
    without padding (ragged batches, e.g. the masked tokens of MLTC).  Another dimension: it is zero-padded
    to the largest size before the gather (e.g. text length).
    """
    if not is_dist_avail_and_initialized():
        return tensor
    if pad_dim is None:
        return torch.cat(GatherLayer.apply(tensor), dim=0)
    if pad_dim != 0:
        target = _max_size(tensor.shape[pad_dim], tensor.device)
        pad = [0, 0] * (tensor.dim() - 1 - pad_dim % tensor.dim()) + [0, target - tensor.shape[pad_dim]]
        return torch.cat(GatherLayer.apply(torch.nn.functional.pad(tensor, pad)), dim=0)
    sizes = torch.tensor([tensor.shape[0]], device=tensor.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(get_world_size())]
    dist.all_gather(all_sizes, sizes)
    all_sizes = [int(s.item()) for s in all_sizes]
    padded = torch.nn.functional.pad(tensor, [0, 0] * (tensor.dim() - 1) + [0, max(all_sizes) - tensor.shape[0]])
    gathered = GatherLayer.apply(padded)
    return torch.cat([part[:size] for part, size in zip(gathered, all_sizes)], dim=0)


def all_gather_no_grad(tensor: torch.Tensor, pad_dim: Optional[int] = None) -> torch.Tensor:
    """:func:`all_gather_with_grad` for tensors that need no gradient (ids, labels, detached features)."""
    with torch.no_grad():
        return all_gather_with_grad(tensor.detach(), pad_dim=pad_dim)


def rank_row_range(num_rows: int) -> Tuple[int, int]:
    """Contiguous ``[start, end)`` rows owned by this rank when ``num_rows`` rows are split across ranks."""
    rank, world_size = world()
    step = -(-num_rows // world_size)
    start = min(num_rows, rank * step)
    return start, min(num_rows, start + step)


def gather_objects(obj: Any) -> list:
    """Every rank's picklable ``obj`` in rank order, on every rank (``[obj]`` in one process)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
