"""Bad data and the data cache across processes: 10 % bad media and captions train to the end with exact skip counts,
and separate processes write a cached set once."""
import json
import multiprocessing
import os

import numpy as np
import pytest
from helpers import TINY_RUN, assert_whole, leftovers, read_log_records, run_module, slow_writer

from lavis_glscl.datasets import shapes
from lavis_glscl.datasets.cache import ensure_cached, is_complete


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
        .replace("{name: glscl_image_eval, image_size: 32}",
                 f"{{name: {processors[1]}, image_size: 32{processors[2]}}}"))
    # 18 usable annotations: 3 steps of 6 visit each of them, the 2 undecodable ones included, exactly once
    result = run_module("lavis_glscl.train", ["--cfg-path", str(config), "--options",
                                              f"run.output_dir={tmp_path / 'out'}", "run.batch_size_train=6",
                                              "run.iters_per_epoch=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "skipped 3 of 21 annotations (2 empty caption, 1 missing file)" in result.stdout
    assert "skipped 1 of 5 annotations (1 unreadable file)" in result.stdout  # the gallery drops it before scoring
    assert "2 unreadable samples replaced, 0 non-finite steps skipped, 3 annotations dropped" in result.stdout
    (train_record,) = read_log_records(tmp_path / "out", "train_loss")
    assert train_record["train_skipped_samples"] == 2
    assert len(read_log_records(tmp_path / "out", "train_step")) == 3 and list((tmp_path / "out").rglob("evaluate.txt"))


def _racing_process(root, calls, start):
    start.wait()
    assert_whole(ensure_cached(root, slow_writer(calls, pause=1.0)))


@pytest.mark.slow
def test_concurrent_processes_write_once(tmp_path):
    """Separate processes (as ranks are) are kept apart by the file lock, not by anything in memory."""
    root, calls = tmp_path / "set", tmp_path / "calls.txt"
    context = multiprocessing.get_context("fork")  # the children need the writer, defined in this module
    start = context.Barrier(2)
    processes = [context.Process(target=_racing_process, args=(root, calls, start)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert len(calls.read_text().splitlines()) == 1
    assert_whole(root)
    assert is_complete(root) and leftovers(tmp_path, "set") == ["calls.txt"]
