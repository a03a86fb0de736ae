"""Each model family trained and scored end to end in a fresh process, through LAVIS's tasks and evaluators: ALBEF +
GLSCL, LAVIS's ALBEF, BLIP and ALPRO, ``glscl_vqa``, mixed image and video training, LAVIS's MSR-VTT builder."""
import json
from pathlib import Path

import pytest
from helpers import TINY_MIXED_RUN, TINY_RUN, read_log_records, run_module, tiny_vqa_yaml

from lavis_glscl.datasets import shapes


@pytest.mark.slow
def test_albef_glscl_trains_through_the_runner_and_lavis_retrieval_evaluates_it(tmp_path):
    result = run_module("lavis_glscl.train", ["--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={tmp_path}",
                                              "model.arch=albef_glscl_pretrain", "model.model_type=tiny"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = read_log_records(tmp_path, "train_step")
    assert len(steps) == 2 and all(s["train_step_loss_mgsc_image"] > 0 for s in steps)
    assert "txt_r1" in result.stdout and len(list(tmp_path.rglob("evaluate.txt"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["albef_retrieval_offline", "blip_retrieval_offline"])
def test_lavis_retrieval_model_trains_through_the_runner_and_its_own_evaluator_scores_it(tmp_path, arch):
    result = run_module("lavis_glscl.train", ["--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={tmp_path}",
                                              f"model.arch={arch}", "model.model_type=tiny"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = read_log_records(tmp_path, "train_step")
    assert len(steps) == 2 and all(s["train_step_loss_itc"] > 0 and s["train_step_loss_itm"] > 0 for s in steps)
    assert "txt_r1" in result.stdout and len(list(tmp_path.rglob("evaluate.txt"))) == 1


@pytest.mark.slow
def test_alpro_trains_through_the_runner_on_the_shapes_videos_and_glscl_retrieval_scores_it(tmp_path):
    """The compare command's ALPRO row at tiny size: videos only, in ALPRO's layout, LAVIS's evaluator, pair
    accuracy from ``glscl_retrieval``."""
    video = "datasets.shapes_video_demo.vis_processor"
    options = [f"run.output_dir={tmp_path}", "model.arch=alpro_retrieval_offline", "model.model_type=tiny",
               "run.train_dataset_ratios=[0.0,1.0]", "run.iters_per_epoch=2", f"{video}.train.n_frms=2",
               f"{video}.eval.n_frms=2", f"{video}.train.layout=cthw", f"{video}.eval.layout=cthw"]
    result = run_module("lavis_glscl.train", ["--cfg-path", str(TINY_MIXED_RUN), "--options", *options], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = read_log_records(tmp_path, "train_step")
    assert [s["train_step_modality"] for s in steps] == ["video", "video"]
    assert all(s["train_step_loss_vtc"] > 0 and s["train_step_loss_vtm"] > 0 for s in steps)
    assert "pair_accuracy" in result.stdout and "txt_r1" in result.stdout


@pytest.mark.slow
def test_glscl_vqa_trains_and_is_scored_by_lavis_vqa_task(tmp_path):
    config = tiny_vqa_yaml(tmp_path, tmp_path / "out")
    result = run_module("lavis_glscl.train", ["--cfg-path", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = read_log_records(tmp_path / "out", "train_step")
    assert [r["train_step_iter"] for r in steps] == [0, 1] and steps[0]["train_step_loss_vqa"] > 0
    evaluation = next((tmp_path / "out").rglob("evaluate.txt")).read_text()
    accuracy = json.loads(evaluation.splitlines()[-1])["agg_metrics"]
    assert 0.0 <= accuracy <= 100.0 and "Overall Accuracy" in result.stdout


@pytest.mark.slow
def test_mixed_image_and_video_training_keeps_batches_homogeneous_and_logs_each_modality(tmp_path):
    result = run_module("lavis_glscl.train",
                        ["--cfg-path", str(TINY_MIXED_RUN), "--options", f"run.output_dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = read_log_records(tmp_path, "train_step")
    modalities = [r["train_step_modality"] for r in steps]
    assert len(modalities) == 6 and set(modalities) == {"image", "video"}
    (epoch,) = read_log_records(tmp_path, "train_loss")
    for modality in ("image", "video"):
        assert epoch[f"train_{modality}_loss"] > 0 and epoch[f"train_{modality}_loss_mgsc_image"] > 0
    assert "pair_accuracy" in result.stdout and "txt_r1" in result.stdout


@pytest.mark.slow
def test_lavis_msrvtt_builder_with_local_files_works_with_glscl_retrieval(tmp_path):
    root = shapes.ensure_generated(tmp_path / "videos", kind="videos", num_train=8, num_test=6, image_size=32, seed=4)
    config = tmp_path / "msrvtt.yaml"
    config.write_text(f"""
model: {{arch: glscl_retrieval, model_type: tiny}}
datasets:
  msrvtt_retrieval:
    vis_processor:
      train: {{name: glscl_video_train, image_size: 32, n_frms: 2}}
      eval: {{name: glscl_video_eval, image_size: 32, n_frms: 2}}
    text_processor:
      train: {{name: glscl_caption}}
      eval: {{name: glscl_caption}}
    build_info:
      annotations:
        train: {{storage: {root / 'train.json'}}}
        val: {{storage: {root / 'test.json'}}}
        test: {{storage: {root / 'test.json'}}}
      videos: {{storage: {root}}}
run:
  task: retrieval
  device: cpu
  seed: 1
  output_dir: {tmp_path / 'out'}
  batch_size_train: 2
  batch_size_eval: 4
  num_workers: 0
  k_test: 4
  use_dist_eval_sampler: false
  test_splits: [test]
  evaluate: true
  distributed: false
  dist_url: env://
""")
    result = run_module("lavis_glscl.evaluate", ["--cfg-path", str(config)], cwd=tmp_path,
                        env={"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "txt_r1" in result.stdout and "img_r10" in result.stdout
    assert len(list(Path(tmp_path / "out").rglob("evaluate.txt"))) == 1
