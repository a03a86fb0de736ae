"""Every packaged project yaml builds: run yamls name registered parts and configure them as they accept, compare rows
build from their base yaml and tests."""
import inspect
import os

import numpy as np
import pytest
from omegaconf import OmegaConf
from torch import nn

from lavis_glscl import launch, paths

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
                                                                              processor_samples, monkeypatch,
                                                                              recorded_cached_runs):
    """Each run yaml, its required values given, builds a complete config whose model options the model accepts,
    whose runner, scheduler and task resolve, whose builders accept their dataset configs and provide the run's
    splits, and whose processors take their options and produce the configured sizes; a ``${cached_run:...}`` names
    a packaged run yaml (recorded, not trained)."""
    from lavis.common.registry import registry
    from lavis.tasks import setup_task

    cfg = config_with_placeholders(str(paths.PROJECT_DIR / project))
    OmegaConf.to_container(cfg.config, resolve=True, throw_on_missing=True)  # nothing unset, no broken ${...}
    assert all(os.path.isfile(paths.run_config_path(stage)) for stage in recorded_cached_runs), recorded_cached_runs
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
