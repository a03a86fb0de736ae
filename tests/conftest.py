"""Shared fixtures.  The whole suite runs in one pytest process: ``import lavis`` costs seconds and a GB."""
import os

import pytest

# OpenMP threads that spin while waiting burn the CPU whenever processes share the cores (the subprocess and
# torchrun tests): a waiting thread sleeps instead.  Set before torch is imported, inherited by every subprocess.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated data goes to a temporary cache, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["LAVIS_GLSCL_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def lavis_glscl():
    import lavis_glscl as package

    return package


@pytest.fixture
def tiny_model(lavis_glscl):
    """A fresh tiny GLSCL pre-training model (random weights, fixed seed)."""
    import torch

    from lavis_glscl.models.glscl import GlsclPretrain

    torch.manual_seed(0)
    return GlsclPretrain.from_pretrained("tiny")


@pytest.fixture(scope="session")
def tiny(lavis_glscl):
    """``tiny(arch, dropout=True, **overrides)``: a registered model's seeded ``tiny`` build, ``overrides`` replacing
    whole config entries (see ``helpers.tiny``)."""
    from helpers import tiny as build

    return build


@pytest.fixture
def run_yaml(tmp_path):
    """``run_yaml(base=TINY_RUN, **sections)``: the tiny run yaml with ``model``/``run``/``datasets`` sections merged
    in, written under this test's ``tmp_path``."""
    from functools import partial

    from helpers import run_yaml as write

    return partial(write, tmp_path)
