"""Shared fixtures.  The whole suite runs in one pytest process: ``import lavis`` costs seconds and a GB."""
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = REPO / "tests" / "configs" / "tiny_run.yaml"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated data goes to a temporary cache, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["LAVIS_GLSCL_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def lavis_glscl():
    import lavis_glscl as package

    return package


@pytest.fixture
def tiny_model(lavis_glscl):
    """A fresh tiny GLSCL pre-training model (random weights, fixed seed)."""
    import torch
    from lavis_glscl.models.glscl import GlsclPretrain

    torch.manual_seed(0)
    return GlsclPretrain.from_pretrained("tiny")


def tiny_batch(batch_size=4, frames=None, image_size=32, seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, image_size, image_size) if frames is None else (batch_size, frames, 3, image_size, image_size)
    captions = ["a red circle above a blue square", "a small green triangle", "two large white diamonds left of it",
                "a cyan circle", "an orange square below a purple circle", "yellow", "a big red star and a blue moon",
                "nothing but a grey background"]
    return {"image" if frames is None else "video": torch.randn(*shape, generator=generator),
            "text_input": [captions[i % len(captions)] for i in range(batch_size)],
            "image_id": torch.arange(batch_size), "epoch": 0, "iters": 0}


def run_module(module, args, cwd, env=None, timeout=600):
    """Run ``python -m module args`` in a subprocess; returns the CompletedProcess (stdout+stderr in .stdout)."""
    import subprocess

    environment = {**os.environ, **(env or {})}
    environment["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=environment, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_log_records(output_dir: Path, key: str):
    """The JSON records of the single run under ``output_dir`` whose keys start with ``key``."""
    logs = list(output_dir.rglob("log.txt"))
    assert len(logs) == 1, logs
    records = []
    for line in logs[0].read_text().splitlines():
        if line.startswith("{") and line.endswith("}") and f'"{key}' in line:
            records.append(json.loads(line))
    return records


def align_bench_tiny_yaml(tmp_path, output_dir, arch="glscl_retrieval"):
    """A run yaml of the ALIGN-BENCH task on a 4-image mini bench for the tiny ``arch``."""
    config = tmp_path / "align_bench_tiny.yaml"
    config.write_text(f"""
model: {{arch: {arch}, model_type: tiny}}
datasets:
  align_bench:
    type: shapes
    generator: {{num_images: 4, image_size: 32, seed: 2}}
    vis_processor:
      eval: {{name: glscl_image_eval, image_size: 32}}
run: {{task: align_bench, runner: runner_glscl, device: cpu, seed: 1, output_dir: "{output_dir}", batch_size_eval: 3,
      num_workers: 0, use_dist_eval_sampler: false, test_splits: [test], evaluate: true, distributed: false,
      dist_url: "env://"}}
""")
    return config
