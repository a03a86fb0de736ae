"""The pre-training yamls: LAVIS's corpora trained offline on local files."""
import json

import pytest
import torch
from helpers import convert_to_shards, read_log_records, simple_pairs, train_in_process, write_images


def test_the_lavis_corpora_yaml_trains_offline_on_local_files_in_proportion(lavis_glscl, tmp_path, monkeypatch):
    """The datasets of ``pretrain/pretrain_lavis_corpora.yaml`` (LAVIS's coco_caption, vg_caption, sbu_caption and
    conceptual_caption_3m builders, and shards) on tiny local files in LAVIS's annotation formats: built without any
    download attempt and mixed in proportion to their pairs."""
    import urllib.request

    from omegaconf import OmegaConf

    from lavis_glscl import launch, paths

    def no_network(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    project = paths.PROJECT_DIR / "glscl" / "pretrain" / "pretrain_lavis_corpora.yaml"
    with pytest.raises(launch.ConfigError, match="datasets.sbu_caption.build_info.annotations.train.storage"):
        # the storage paths are the user's to give
        launch.check_required_values(*launch.load_run_yaml(str(project), []))
    write_images(tmp_path / "images", 8)
    files = {"coco_caption": [{"image": f"{i // 2}.png", "caption": f"coco {i}", "image_id": i // 2} for i in range(6)],
             "vg_caption": [{"image": f"{i}.png", "caption": f"region {i}"} for i in range(4)],
             "sbu_caption": [{"image": f"{i}.png", "caption": f"sbu {i}"} for i in range(8)],
             "conceptual_caption_3m": [{"image": f"{i}.png", "caption": f"cc {i}"} for i in range(2)]}
    config = OmegaConf.load(project)
    config.model = {"arch": "glscl_pretrain", "model_type": "tiny"}
    for name, annotations in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(annotations))
        info = config.datasets[name].build_info
        for split in info.annotations:
            info.annotations[split].storage = str(tmp_path / f"{name}.json")
        info.images.storage = str(tmp_path / "images")
    convert_to_shards(tmp_path, simple_pairs(4), count=4, samples_per_shard=1)
    config.datasets.glscl_image_text.build_info.shards.storage = str(tmp_path / "shards" / "index.json")
    for dataset_cfg in config.datasets.values():
        dataset_cfg.vis_processor.train.image_size = 32
    config.run.update({"device": "cpu", "amp": False, "distributed": False, "iters_per_epoch": 4,
                       "batch_size_train": 2, "accum_grad_iters": 1, "save_freq_iters": 0, "num_workers": 0,
                       "log_freq": 1})
    OmegaConf.save(config, tmp_path / "corpora.yaml")
    runner = train_in_process(tmp_path / "corpora.yaml", tmp_path / "out")
    built = [(type(d).__name__, len(d)) for d in runner.train_loader.datasets]
    assert built == [("CaptionDataset", 6), ("ImageTextPairDataset", 4), ("ImageTextPairDataset", 8),
                     ("ImageTextPairDataset", 2), ("ShardedCaptionPairs", 4)]  # LAVIS's own classes, in yaml order
    torch.testing.assert_close(runner.train_loader.ratios,
                               torch.tensor([len(d) / 24 for d in runner.train_loader.datasets]))
    assert len(read_log_records(tmp_path / "out", "train_step")) == 4
