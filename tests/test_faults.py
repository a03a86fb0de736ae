"""Fault tolerance end to end: a killed torchrun run resumes to the same weights; 10 % bad data trains to the end.

(A NaN loss never reaching a checkpoint is tested in ``test_training.py``.)
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import DETERMINISTIC, TINY_RUN, free_port, read_log_records, run_module

from lavis_glscl.datasets import shapes


def torchrun_command(output_dir, options):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "lavis_glscl.train", "--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={output_dir}",
            *options]


def final_weights(output_dir, epoch):
    (checkpoint,) = output_dir.rglob(f"checkpoint_{epoch}.pth")
    return torch.load(checkpoint, weights_only=True)["model"]


@pytest.mark.slow
def test_torchrun_killed_mid_epoch_resumes_to_the_uninterrupted_weights_with_gradient_accumulation(tmp_path):
    options = DETERMINISTIC + ["run.max_epoch=3", "run.iters_per_epoch=8", "run.accum_grad_iters=4",
                               "run.save_freq_iters=4", "run.batch_size_train=2", "run.test_splits=[]"]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
    uninterrupted = subprocess.run(torchrun_command(tmp_path / "full", options), cwd=tmp_path, env=environment,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:]

    killed_dir = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen(torchrun_command(killed_dir, options), cwd=tmp_path, env=environment, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not list(killed_dir.rglob("checkpoint_latest.pth")) and run.poll() is None:
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 300 s"
            time.sleep(0.02)
        os.killpg(run.pid, signal.SIGKILL)  # torchrun and both workers, without any chance to clean up
        run.wait()
    assert run.returncode == -signal.SIGKILL
    assert not list(killed_dir.rglob("checkpoint_2.pth")), "the run finished before it could be killed"
    (latest,) = killed_dir.rglob("checkpoint_latest.pth")
    state = torch.load(latest, weights_only=True)
    assert state["iteration"] is not None and len(state["rng"]) == 2  # mid-epoch, one RNG state per rank

    resumed = subprocess.run(torchrun_command(tmp_path / "resumed", options + [f"run.resume_ckpt_path={latest}"]),
                             cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    expected, observed = final_weights(tmp_path / "full", 2), final_weights(tmp_path / "resumed", 2)
    assert expected.keys() == observed.keys()
    for name in expected:
        torch.testing.assert_close(observed[name], expected[name], rtol=0, atol=1e-6, msg=name)


def write_media(folder, modality, index, rng):
    if modality == "images":
        from PIL import Image

        path = folder / f"{index}.png"
        Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    else:
        path = folder / f"{index}.mp4"
        shapes.write_clip(path, shapes.render_clip(shapes.random_object(rng), "to the left", 32, 8, rng))
    return path.name


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["images", "videos"])
def test_ten_percent_bad_media_and_captions_train_to_the_end_with_exact_skip_counts(tmp_path, modality):
    """21 training pairs: 2 files that do not decode (garbage bytes, zero bytes), 2 empty captions, 1 missing file."""
    rng = np.random.RandomState(0)
    media = tmp_path / modality
    media.mkdir()
    key = modality[:-1]
    names = [write_media(media, modality, index, rng) for index in range(20)]
    (media / names[3]).write_bytes(b"not a picture nor a video")
    (media / names[7]).write_bytes(b"")
    train = [{key: name, "caption": f"sample number {index}"} for index, name in enumerate(names)]
    train[11]["caption"], train[15]["caption"] = " ", ""
    train.append({key: f"gone{os.path.splitext(names[0])[1]}", "caption": "a missing file"})
    test = [{key: names[i], "caption": [f"sample number {i}"]} for i in (0, 1, 2, 3, 4)]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "test.json").write_text(json.dumps(test))
    builder = "glscl_image_text" if modality == "images" else "glscl_video_text"
    processors = ("glscl_image_train", "glscl_image_eval", "") if modality == "images" else \
        ("glscl_video_train", "glscl_video_eval", ", n_frms: 2")
    config = tmp_path / "bad_data.yaml"
    config.write_text(TINY_RUN.read_text().replace(
        "  shapes_demo:\n    generator: {num_train: 32, num_test: 8, image_size: 32, seed: 1}\n", f"""  {builder}:
    build_info:
      annotations:
        train: {{storage: {tmp_path / 'train.json'}}}
        test: {{storage: {tmp_path / 'test.json'}}}
      {modality}: {{storage: {media}}}
""").replace("{name: glscl_image_train, image_size: 32, hflip_prob: 0.0}",
             f"{{name: {processors[0]}, image_size: 32, hflip_prob: 0.0{processors[2]}}}")
        .replace("{name: glscl_image_eval, image_size: 32}", f"{{name: {processors[1]}, image_size: 32{processors[2]}}}"))
    # 18 usable annotations: 3 steps of 6 visit each of them, the 2 undecodable ones included, exactly once
    result = run_module("lavis_glscl.train", ["--cfg-path", str(config), "--options", f"run.output_dir={tmp_path / 'out'}",
                                              "run.batch_size_train=6", "run.iters_per_epoch=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "skipped 3 of 21 annotations (2 empty caption, 1 missing file)" in result.stdout
    assert "skipped 1 of 5 annotations (1 unreadable file)" in result.stdout  # the gallery drops it before scoring
    assert "2 unreadable samples replaced, 0 non-finite steps skipped, 3 annotations dropped" in result.stdout
    (train_record,) = read_log_records(tmp_path / "out", "train_loss")
    assert train_record["train_skipped_samples"] == 2
    assert len(read_log_records(tmp_path / "out", "train_step")) == 3 and list((tmp_path / "out").rglob("evaluate.txt"))
