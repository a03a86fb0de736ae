"""Shared fixtures.  The whole suite runs in one pytest process: ``import lavis`` costs seconds and a GB."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting burn the CPU whenever processes share the cores (the subprocess and
# torchrun tests): a waiting thread sleeps instead.  Set before torch is imported, inherited by every subprocess.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Generated data goes to a temporary cache, never the user's; set before test modules import lavis_glscl at collection
# (its import points LAVIS's cache_root into this cache).
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="lavis_glscl_cache_"))
os.environ["LAVIS_GLSCL_CACHE"] = str(SESSION_CACHE)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache():
    """The session's cache, removed at the end."""
    yield SESSION_CACHE
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def lavis_glscl():
    import lavis_glscl as package

    return package


@pytest.fixture(scope="session")
def tiny(lavis_glscl):
    """``tiny(arch, dropout=True, **overrides)``: a registered model's seeded ``tiny`` build, ``overrides`` replacing
    whole config entries (see ``helpers.tiny``)."""
    from helpers import tiny as build

    return build


@pytest.fixture
def tiny_model(tiny):
    """A fresh tiny GLSCL pre-training model (random weights, fixed seed)."""
    return tiny("glscl_pretrain")


@pytest.fixture(params=["albef_pretrain_offline", "albef_retrieval_offline", "blip_retrieval_offline"])
def offline_lavis_model(request, tiny):
    """``(arch, model)``: each of LAVIS's own ALBEF and BLIP classes built offline at the tiny size."""
    return request.param, tiny(request.param)


@pytest.fixture
def run_yaml(tmp_path):
    """``run_yaml(base=TINY_RUN, **sections)``: the tiny run yaml with ``model``/``run``/``datasets`` sections merged
    in, written under this test's ``tmp_path``."""
    from functools import partial

    from helpers import run_yaml as write

    return partial(write, tmp_path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Shapes clips of 3, 11 and 40 frames (``short``, ``odd``, ``long``) and two files that do not decode."""
    import numpy as np

    from lavis_glscl.datasets import shapes

    root = tmp_path_factory.mktemp("clips")
    rng = np.random.RandomState(0)
    obj = shapes.ShapeObject("large", "red", "circle")
    for name, length in (("short", 3), ("odd", 11), ("long", 40)):
        shapes.write_clip(root / f"{name}.mp4", shapes.render_clip(obj, "to the right", 64, length, rng))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else")
    (root / "empty.mp4").write_bytes(b"")
    return root


@pytest.fixture
def bad_shards(tmp_path):
    """Three shards, ten pairs by the index, six of them good (a, b, c, d, f, g): in shard 0 an image that does not
    decode, a sample without caption, one with an empty caption, one without image; shard 1 cut short (the index
    counts one pair it no longer holds); shard 2 is not a tar at all (its one pair counted)."""
    from helpers import png_bytes, write_tar

    from lavis_glscl.datasets.shard_files import ShardEntry

    good = {"a": 0, "b": 1, "c": 2, "d": 3, "f": 5, "g": 6}
    folder = tmp_path / "bad"
    folder.mkdir()
    write_tar(folder / "s0.tar", [("a.png", png_bytes(0)), ("a.txt", b"pair a"), ("x.png", b"garbage"),
                                  ("x.txt", b"undecodable"), ("y.png", png_bytes(9)), ("z.png", png_bytes(8)),
                                  ("z.txt", b" ... "), ("w.txt", b"no image"), ("b.png", png_bytes(1)),
                                  ("b.txt", b"pair b"), ("c.png", png_bytes(2)), ("c.txt", b"pair c")])
    write_tar(folder / "s1.tar", [("d.png", png_bytes(3)), ("d.txt", b"pair d"), ("f.png", png_bytes(5)),
                                  ("f.txt", b"pair f"), ("g.png", png_bytes(6)), ("g.txt", b"pair g")])
    (folder / "s2.tar").write_bytes(b"no tar here")
    entries = [ShardEntry(str(folder / "s0.tar"), 7), ShardEntry(str(folder / "s1.tar"), 4),
               ShardEntry(str(folder / "s2.tar"), 1)]
    return entries, good


@pytest.fixture
def recorded_cached_runs():
    """The ``cached_run`` resolver replaced by one that records the yamls it is asked to train."""
    from omegaconf import OmegaConf

    from lavis_glscl import cached_runs

    asked = []
    OmegaConf.clear_resolver(cached_runs.RESOLVER)
    OmegaConf.register_resolver(cached_runs.RESOLVER, lambda run_yaml: asked.append(run_yaml) or "trained.pth")
    yield asked
    OmegaConf.clear_resolver(cached_runs.RESOLVER)
    cached_runs.register_resolver()
