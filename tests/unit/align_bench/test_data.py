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


class WritesAFile:
    """Unpickling this calls ``Path.write_text``: what a crafted annotation file could run."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        from pathlib import Path

        return Path.write_text, (Path(self.target), "ran")


def test_an_annotation_pickle_is_read_as_data_and_a_crafted_one_runs_nothing(tmp_path):
    """Records with numpy masks read back equal under every pickle protocol; a pickle that calls a function when
    loaded is refused before the call (the target file never appears) and counts as unreadable."""
    import numpy as np
    import pytest

    from lavis_glscl.align_bench.data import UNPICKLE_ERRORS, read_record

    record = {"caption": "a red circle", "annotation": {"red circle": [
        {"bbox_mask": [1, 2, 5, 6], "pixel_mask": np.arange(12).reshape(3, 4) % 2 == 0}]}}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "item.pkl").write_bytes(pickle.dumps(record, protocol=protocol))
        read = read_record(str(tmp_path / "item.pkl"))
        region = read["annotation"]["red circle"][0]
        assert read["caption"] == record["caption"] and region["bbox_mask"] == [1, 2, 5, 6]
        np.testing.assert_array_equal(region["pixel_mask"], record["annotation"]["red circle"][0]["pixel_mask"])
    target = tmp_path / "written_by_the_pickle.txt"
    (tmp_path / "crafted.pkl").write_bytes(pickle.dumps({"caption": WritesAFile(target)}))
    with pytest.raises(UNPICKLE_ERRORS, match="pathlib.*write_text is not data"):
        read_record(str(tmp_path / "crafted.pkl"))
    assert not target.exists()
