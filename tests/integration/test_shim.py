"""LAVIS's own repository-root ``train.py`` run through the shim that registers GLSCL, and without it."""
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_RUN, read_log_records, run_module

# LAVIS's repository-root train.py in shape, against LAVIS's public API only: no lavis_glscl import, so GLSCL's
# names exist only when something else registered them.
LAVIS_STYLE_TRAIN = '''
"""Train a model as LAVIS's repository-root train.py does."""
import argparse
import random

import numpy as np
import torch

import lavis.tasks as tasks
from lavis.common.config import Config
from lavis.common.dist_utils import get_rank, init_distributed_mode
from lavis.common.logger import setup_logger
from lavis.common.registry import registry
from lavis.common.utils import now
from lavis.runners.runner_base import RunnerBase  # noqa: F401  (registers runner_base)


def parse_args():
    parser = argparse.ArgumentParser(description="Training")
    parser.add_argument("--cfg-path", required=True, help="path to configuration file.")
    parser.add_argument("--options", nargs="+", help="override some settings in the used config")
    return parser.parse_args()


def setup_seeds(config):
    seed = config.run_cfg.seed + get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_runner_class(cfg):
    return registry.get_runner_class(cfg.run_cfg.get("runner", "runner_base"))


def main():
    job_id = now()
    cfg = Config(parse_args())
    init_distributed_mode(cfg.run_cfg)
    setup_seeds(cfg)
    setup_logger()
    cfg.pretty_print()
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner = get_runner_class(cfg)(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)
    runner.train()


if __name__ == "__main__":
    main()
'''


def write_lavis_style_train(directory: Path) -> Path:
    script = directory / "train.py"
    script.write_text(LAVIS_STYLE_TRAIN)
    return script


@pytest.mark.slow
def test_lavis_style_train_script_trains_through_the_shim(tmp_path):
    script = write_lavis_style_train(tmp_path)
    output_dir = tmp_path / "output"
    result = run_module("lavis_glscl.run_lavis_script",
                        [str(script), "--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={output_dir}"],
                        cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert [(r["train_step_epoch"], r["train_step_iter"]) for r in read_log_records(output_dir, "train_step")] == \
        [(0, 0), (0, 1)]
    assert len(list(output_dir.rglob("checkpoint_0.pth"))) == 1


@pytest.mark.slow
def test_lavis_style_train_script_alone_does_not_know_glscl(tmp_path):
    """The same script under plain ``python``: LAVIS has never heard of GLSCL's names, so the shim is what works."""
    script = write_lavis_style_train(tmp_path)
    result = subprocess.run([sys.executable, str(script), "--cfg-path", str(TINY_RUN), "--options",
                             f"run.output_dir={tmp_path / 'output'}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode != 0
    assert "Model 'glscl_pretrain' has not been registered" in result.stdout, result.stdout[-3000:]
    assert not list((tmp_path / "output").rglob("log.txt"))
