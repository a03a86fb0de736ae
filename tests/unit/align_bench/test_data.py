"""The ALIGN-BENCH builder skips and counts what it cannot read."""
import logging
import pickle

from omegaconf import OmegaConf

from lavis_glscl.align_bench.data import AlignBenchBuilder, ensure_shapes_bench
from lavis_glscl.paths import config_path


def test_builder_skips_and_counts_a_missing_image_and_a_corrupt_pickle(lavis_glscl, tmp_path, caplog):
    root = ensure_shapes_bench(tmp_path / "bench", num_images=4, image_size=32, seed=1)
    (root / "images" / "1.jpg").unlink()
    (root / "pkls" / "2.pkl").write_bytes(b"not a pickle")
    cfg = OmegaConf.load(config_path("datasets/align_bench/defaults.yaml")).datasets.align_bench
    cfg.build_info.images.storage = str(root / "images")
    cfg.build_info.annotations.test.storage = str(root / "pkls")
    cfg.vis_processor.eval.image_size = 32
    with caplog.at_level(logging.WARNING):
        dataset = AlignBenchBuilder(cfg).build_datasets()["test"]
    assert {reason: names for reason, names in dataset.dropped.items()} == {
        "missing image": ["1"], "unreadable annotation": ["2"]}
    assert "skipped 2 of 4 items (1 missing image, 1 unreadable annotation)" in caplog.text
    assert dataset.names == ["0", "3"]
    sample = dataset[1]
    record = pickle.loads((root / "pkls" / "3.pkl").read_bytes())
    assert sample["image"].shape == (3, 32, 32) and sample["image_size"] == (32, 32)
    assert sample["text_input"] == record["caption"] and set(sample["annotation"]) == set(record["annotation"])
