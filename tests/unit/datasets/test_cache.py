"""The cache writer: one write per set however many threads race, nothing kept from a failed write, no rewrite of a
complete set, and the three generated data sets (shapes, mini ALIGN-BENCH, easy-vqa) going through it."""
import json
import threading

import pytest
from helpers import assert_whole, leftovers, slow_writer

from lavis_glscl.datasets import cache
from lavis_glscl.datasets.cache import CacheWriteError, ensure_cached, is_complete, marker_path


def test_concurrent_threads_wait_for_a_single_write(tmp_path):
    root, calls = tmp_path / "cache" / "set", tmp_path / "calls.txt"
    start, results, errors = threading.Barrier(4), [], []

    def call():
        start.wait()
        try:
            returned = ensure_cached(root, slow_writer(calls))
            assert_whole(returned)  # checked at return time, while others may still be waiting
            results.append(returned)
        except Exception as error:  # surfaced below: an assert in a thread would otherwise be lost
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [root] * 4
    assert len(calls.read_text().splitlines()) == 1
    assert is_complete(root) and leftovers(root.parent, "set") == []


def test_a_failed_write_keeps_nothing_and_says_so(tmp_path):
    root = tmp_path / "set"

    def failing(directory):
        (directory / "partial.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(CacheWriteError, match="disk full") as raised:
        ensure_cached(root, failing)
    assert str(root) in str(raised.value) and isinstance(raised.value.__cause__, OSError)
    assert not root.exists() and not marker_path(root).exists()
    assert leftovers(tmp_path, "set") == []
    ensure_cached(root, lambda directory: (directory / "ok.txt").write_text("ok"))  # the next call retries
    assert (root / "ok.txt").read_text() == "ok"


def test_a_complete_set_is_not_written_again(tmp_path):
    root, calls = tmp_path / "set", tmp_path / "calls.txt"
    ensure_cached(root, slow_writer(calls, pause=0))
    stamp = (root / "first.txt").stat().st_mtime_ns
    assert ensure_cached(root, slow_writer(calls, pause=0)) == root
    assert len(calls.read_text().splitlines()) == 1
    assert (root / "first.txt").stat().st_mtime_ns == stamp


def test_an_unmarked_directory_is_replaced(tmp_path):
    """A directory without its marker (a run killed between rename and marker, or an older cache layout) is
    not trusted: it is written again from scratch."""
    root, calls = tmp_path / "set", tmp_path / "calls.txt"
    root.mkdir()
    (root / "stale.txt").write_text("from an interrupted run")
    ensure_cached(root, slow_writer(calls, pause=0))
    assert not (root / "stale.txt").exists()
    assert_whole(root)
    assert len(calls.read_text().splitlines()) == 1


@pytest.fixture
def cache_calls(monkeypatch):
    """Record the directories each data module hands to ``ensure_cached`` (which still runs)."""
    from lavis_glscl.align_bench import data
    from lavis_glscl.datasets import shapes, vqa

    directories = []

    def recording(directory, write):
        directories.append(directory)
        return cache.ensure_cached(directory, write)

    for module in (shapes, data, vqa):
        monkeypatch.setattr(module, "ensure_cached", recording)
    return directories


def test_shapes_sets_generate_through_the_cache(cache_calls, tmp_path):
    from lavis_glscl.datasets import shapes

    images = shapes.ensure_generated(tmp_path / "images", num_train=3, num_test=4, image_size=16, seed=1)
    videos = shapes.ensure_generated(tmp_path / "videos", kind="videos", num_train=2, num_test=2, image_size=16,
                                     seed=1)
    assert cache_calls == [images, videos] and is_complete(images) and is_complete(videos)
    assert len(json.loads((images / "test.json").read_text())) == 4
    assert sorted(p.name for p in (videos / "videos").iterdir()) == [
        "test_00000.mp4", "test_00001.mp4", "train_00000.mp4", "train_00001.mp4"]


def test_the_mini_align_bench_generates_through_the_cache(cache_calls, tmp_path):
    from lavis_glscl.align_bench.data import ensure_shapes_bench

    bench = ensure_shapes_bench(tmp_path / "bench", num_images=3, image_size=16, seed=1)
    assert cache_calls == [bench] and is_complete(bench)
    assert sorted(p.name for p in (bench / "pkls").iterdir()) == ["0.pkl", "1.pkl", "2.pkl"]


def test_the_easy_vqa_builder_converts_through_the_cache(cache_calls, lavis_glscl):
    pytest.importorskip("easy_vqa")
    from lavis_glscl.datasets.vqa import EasyVqaBuilder

    builder = EasyVqaBuilder()
    builder._download_data()
    assert cache_calls == [builder.root] and is_complete(builder.root)
    assert len(json.loads((builder.root / "test.json").read_text())) == 9673
