"""Video through LAVIS's machinery: mixed image + video training, and LAVIS's own MSR-VTT builder."""
from pathlib import Path

import pytest
from helpers import REPO, read_log_records, run_module

from lavis_glscl.datasets import shapes

MIXED_RUN = REPO / "tests" / "configs" / "tiny_mixed_run.yaml"


@pytest.mark.slow
def test_mixed_image_and_video_training_keeps_batches_homogeneous_and_logs_each_modality(tmp_path):
    result = run_module("lavis_glscl.train", ["--cfg-path", str(MIXED_RUN), "--options", f"run.output_dir={tmp_path}"],
                        cwd=tmp_path)
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
