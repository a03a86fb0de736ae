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


def torchrun_command(output_dir, options, max_restarts=0):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--max-restarts={max_restarts}",
            f"--master_port={free_port()}", "-m", "lavis_glscl.train", "--cfg-path", str(TINY_RUN), "--options",
            f"run.output_dir={output_dir}", *options]


def final_weights(output_dir, epoch):
    (checkpoint,) = output_dir.rglob(f"checkpoint_{epoch}.pth")
    return torch.load(checkpoint, weights_only=True)["model"]


def worker_pids(agent_pid):
    """The ranks torchrun's agent started (its child processes)."""
    with open(f"/proc/{agent_pid}/task/{agent_pid}/children") as children:
        return [int(pid) for pid in children.read().split()]


@pytest.mark.slow
def test_a_rank_killed_under_torchrun_restarts_resumes_by_itself_to_the_uninterrupted_weights(tmp_path):
    """``kill -9`` of one rank after a mid-epoch checkpoint (gradient accumulation on): torchrun ``--max-restarts 1``
    restarts both ranks, which find their run directory and its newest checkpoint themselves
    (``run.auto_resume``) and finish with exactly the weights of a run never interrupted."""
    options = DETERMINISTIC + ["run.max_epoch=3", "run.iters_per_epoch=8", "run.accum_grad_iters=4",
                               "run.save_freq_iters=4", "run.batch_size_train=2", "run.test_splits=[]",
                               "run.auto_resume=true"]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
    uninterrupted = subprocess.run(torchrun_command(tmp_path / "full", options), cwd=tmp_path, env=environment,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:]

    killed_dir = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen(torchrun_command(killed_dir, options, max_restarts=1), cwd=tmp_path, env=environment,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not list(killed_dir.rglob("checkpoint_latest.pth")) and run.poll() is None:
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 300 s"
            time.sleep(0.02)
        ranks = worker_pids(run.pid)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGKILL)
        assert run.wait(timeout=600) == 0
    output = (tmp_path / "killed.log").read_text()
    assert "failed" in output and "Resumed from" in output, output[-3000:]
    (run_dir,) = [path for path in killed_dir.iterdir() if path.is_dir() and not path.is_symlink()]
    resumed_from = output.split("resumes from its newest complete checkpoint ")[1].split()[0]
    assert resumed_from.startswith(str(run_dir / "checkpoint_"))
    expected, observed = final_weights(tmp_path / "full", 2), final_weights(killed_dir, 2)
    assert expected.keys() == observed.keys()
    assert all(torch.equal(observed[name], expected[name]) for name in expected)


@pytest.mark.slow
def test_two_runs_started_in_a_taken_second_write_two_directories(tmp_path):
    """Every second of the next minute is taken under ``output_dir`` (as by runs started then): two runs started
    together each claim a directory of their own, with the suffixes, and leave the taken ones alone."""
    import datetime

    output_dir = tmp_path / "out"
    now = datetime.datetime.now()
    taken = {(now + datetime.timedelta(seconds=s)).strftime("%Y%m%d%H%M%S") for s in range(60)}
    for name in taken:
        (output_dir / name).mkdir(parents=True)
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "lavis_glscl.train", "--cfg-path", str(TINY_RUN), "--options",
               f"run.output_dir={output_dir}", "run.test_splits=[]"]
    runs = [subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(2)]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stdout.read()[-3000:]
    written = sorted(path.parent.name for path in output_dir.glob("*/checkpoint_0.pth") if not path.parent.is_symlink())
    assert len(written) == 2 and len(set(written)) == 2
    assert all(name.rsplit("_", 1)[0] in taken and name not in taken for name in written)
    assert all(not any((output_dir / name).iterdir()) for name in taken)


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
