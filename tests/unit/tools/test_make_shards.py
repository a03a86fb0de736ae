"""The shard converter: captions grouped, bad input skipped, reproducible output, LAVIS builders' files, indexes."""
import json

import pytest
from helpers import convert_to_shards, simple_pairs, write_images

from lavis_glscl.datasets.shard_files import load_shard_list, read_index
from lavis_glscl.tools import make_shards


def test_make_shards_groups_captions_skips_bad_input_and_writes_what_webdataset_reads(tmp_path, capsys):
    import webdataset as wds

    annotations = simple_pairs(10)
    annotations[2]["caption"] = "   "  # its only caption is empty
    annotations.append({"image": "1.png", "caption": "a second caption of one", "image_id": 7})
    annotations.append({"image": "4.png", "caption": ["", "four again"]})
    annotations.append({"image": "missing.png", "caption": "not there"})
    annotations.append({"image": "corrupt.png", "caption": "broken"})
    write_images(tmp_path / "media", 10)
    (tmp_path / "media" / "corrupt.png").write_bytes(b"not a png")
    summary = convert_to_shards(tmp_path, annotations)
    assert summary["skipped"] == {"empty caption": 2, "no usable caption": 1, "missing file": 1, "unreadable file": 1}
    assert (summary["samples"], summary["pairs"], summary["shards"]) == (9, 11, 3)  # 9 images, 3 per shard
    assert "make_shards: 9 samples, 11 pairs in 3 shards" in capsys.readouterr().out
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [3, 3, 3] and sum(s["pairs"] for s in index["shards"]) == 11

    urls = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    read = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    assert len(read) == 9
    captions = {}
    for sample in read:
        meta = json.loads(sample["json"])
        assert sample["png"] == (tmp_path / "media" / meta["source"]).read_bytes()  # stored as it was
        captions[meta["source"]] = (meta["caption"], meta["image_id"])
    assert captions["1.png"] == (["shape number 1", "a second caption of one"], "7")
    assert captions["4.png"] == (["shape number 4", "four again"], "4.png")
    assert captions.keys() == {f"{i}.png" for i in range(10) if i != 2}


def test_make_shards_is_byte_for_byte_reproducible_and_the_seed_changes_the_order(tmp_path):
    convert_to_shards(tmp_path, simple_pairs(7), count=7, name="a")
    make_shards.main(["--ann", str(tmp_path / "train.json"), "--media-root", str(tmp_path / "media"), "--out",
                      str(tmp_path / "b"), "--samples-per-shard", "3"])
    make_shards.main(["--ann", str(tmp_path / "train.json"), "--media-root", str(tmp_path / "media"), "--out",
                      str(tmp_path / "c"), "--samples-per-shard", "3", "--seed", "1"])
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() != (tmp_path / "c" / "shard-000000.tar").read_bytes()


def test_make_shards_converts_a_lavis_builders_files_from_their_cache_root_layout(lavis_glscl, tmp_path, monkeypatch):
    """``--dataset sbu_caption``: LAVIS's annotation file and images where its default config says, under cache_root."""
    from lavis.common.registry import registry

    monkeypatch.setitem(registry.mapping["paths"], "cache_root", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sbu_captions/annotations/sbu.json"):
        make_shards.main(["--dataset", "sbu_caption"])
    write_images(tmp_path / "sbu_captions" / "images", 5)
    (tmp_path / "sbu_captions" / "annotations").mkdir()
    (tmp_path / "sbu_captions" / "annotations" / "sbu.json").write_text(json.dumps(simple_pairs(5)))
    summary = make_shards.main(["--dataset", "sbu_caption", "--samples-per-shard", "2"])
    assert summary["index"] == str(tmp_path / "shards" / "sbu_caption" / "index.json")
    assert (summary["samples"], summary["pairs"], summary["shards"]) == (5, 5, 3)


def test_index_only_counts_existing_shards_as_make_shards_does(tmp_path):
    annotations = simple_pairs(5) + [{"image": "0.png", "caption": "zero twice"}]
    convert_to_shards(tmp_path, annotations, count=5, samples_per_shard=2)
    written = read_index(str(tmp_path / "shards" / "index.json"))
    make_shards.main(["--index-only", str(tmp_path / "shards" / "shard-{000000..000002}.tar"), "--out",
                      str(tmp_path / "again")])
    assert read_index(str(tmp_path / "again" / "index.json")) == written
    assert load_shard_list(str(tmp_path / "shards" / "shard-{000000..000002}.tar")) == written
    assert sum(entry.pairs for entry in written) == 6
