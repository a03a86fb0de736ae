"""Runs that other runs start from, trained once and cached: ``${cached_run:<run yaml>}``.

A run yaml can name as a value the final checkpoint of another run yaml, e.g. a stage-2 pre-training that starts from
the towers a stage-1 run trained::

    model:
      pretrained: ${cached_run:projects/glscl/demo/towers_shapes.yaml}

The first process resolving it trains that run (``python -m lavis_glscl.train`` in a subprocess of its own, one
process, its output shown) and keeps its last checkpoint as ``<cache>/runs/<yaml name>-<digest>/checkpoint.pth``,
beside its ``log.txt`` and ``evaluate.txt``; every later process (other ranks, later runs, other rows of a comparison)
waits for it or takes it (:func:`~lavis_glscl.datasets.cache.ensure_cached`: a lock, an atomic rename, a marker).  The
digest covers the run's whole config as LAVIS merges it (model and dataset defaults included) and the package
version, so a changed recipe trains anew; delete ``<cache>/runs`` to retrain after changing the code.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lavis_glscl.datasets.cache import ensure_cached
from lavis_glscl.paths import cache_dir, run_config_path

RESOLVER = "cached_run"
CHECKPOINT = "checkpoint.pth"
# what a launcher tells a process about its place in a group: the cached run is one plain process of its own
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                    "SLURM_NTASKS", "SLURM_LOCALID")


def run_digest(cfg_path: str) -> str:
    """A digest of the run's config as LAVIS merges it (the yaml, its model's and datasets' defaults; without its
    output directory) and of the package version.  LAVIS's ``Config`` itself is not built: it would register itself
    as the running process's configuration."""
    from omegaconf import OmegaConf

    from lavis_glscl import __version__
    from lavis_glscl.launch import LaunchConfig

    config = OmegaConf.load(cfg_path)
    parts = [OmegaConf.to_container(part, resolve=True) for part in
             (config, LaunchConfig.build_model_config(config), LaunchConfig.build_dataset_config(config))]
    parts[0].get("run", {}).pop("output_dir", None)
    return hashlib.sha1(json.dumps([__version__, parts], sort_keys=True).encode()).hexdigest()[:12]


def train_into(cfg_path: str, directory: Path) -> None:
    """Train ``cfg_path`` in a subprocess and keep its last checkpoint, log and metrics in ``directory``."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in LAUNCH_VARIABLES and not name.startswith("TORCHELASTIC_")}
    output_dir = directory / "output"
    print(f"cached_run: training {cfg_path} once (kept under {directory.parent})", flush=True)
    subprocess.run([sys.executable, "-m", "lavis_glscl.train", "--cfg-path", cfg_path, "--options",
                    f"run.output_dir={output_dir}", "run.job_id=run"], env=environment, check=True)
    run_dir = output_dir / "run"
    epochs = sorted(run_dir.glob("checkpoint_[0-9]*.pth"), key=lambda path: int(path.stem.split("_")[1]))
    if not epochs:
        raise FileNotFoundError(f"{cfg_path} left no epoch checkpoint in {run_dir}")
    os.replace(epochs[-1], directory / CHECKPOINT)
    for name in ("log.txt", "evaluate.txt"):
        if (run_dir / name).is_file():
            os.replace(run_dir / name, directory / name)
    shutil.rmtree(output_dir)


def cached_run_checkpoint(run_yaml: str) -> str:
    """The path of the final checkpoint of ``run_yaml`` (a path, or ``projects/...`` of the package), trained first
    if no complete copy is cached; the value of ``${cached_run:<run_yaml>}``."""
    cfg_path = run_config_path(run_yaml)
    directory = cache_dir() / "runs" / f"{Path(cfg_path).stem}-{run_digest(cfg_path)}"
    ensure_cached(directory, lambda contents: train_into(cfg_path, contents))
    return str(directory / CHECKPOINT)


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_resolver(RESOLVER, cached_run_checkpoint)
