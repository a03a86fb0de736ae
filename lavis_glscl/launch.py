"""Shared start-up of ``python -m lavis_glscl.train`` and ``python -m lavis_glscl.evaluate``.

Same flags as LAVIS's repository-root ``train.py``/``evaluate.py`` (``--cfg-path``, ``--options k=v``),
plus ``--cfg`` as an alias.  Works as one plain process and under ``torchrun`` (gloo on CPU, nccl on CUDA).
"""
import argparse
import contextlib
import logging
import sys
from typing import List, Optional

from lavis.common.config import Config
from lavis.common.registry import registry
from omegaconf import DictConfig, OmegaConf

from lavis_glscl import distributed
from lavis_glscl.lavis_config import check_downloads
from lavis_glscl.models.base import ConfiguredModel
from lavis_glscl.paths import run_config_path
from lavis_glscl.runners.job import prepare_run_directory
from lavis_glscl.runners.options import RunOptions
from lavis_glscl.seeding import seed_process
from lavis_glscl.typed_options import ConfigError, closest

DEFAULT_RUNNER = "runner_glscl"


def parse_args(description: str, argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", "--cfg", dest="cfg_path", required=True, help="path to the run yaml")
    parser.add_argument("--options", nargs="+", default=[],
                        help="override run/model/datasets settings in the yaml, as key=value (dotted keys)")
    return parser.parse_args(argv)


def check_option_syntax(options: List[str]) -> None:
    """Every ``--options`` entry is ``key=value`` with a dotted key (LAVIS would pair a lone key with the next
    entry, or fail deep inside OmegaConf)."""
    for option in options:
        key, equals, _ = option.partition("=")
        if not equals or not key or key != key.strip() or key.startswith(".") or key.endswith("."):
            raise ConfigError(f"--options {option!r} is not key=value: write e.g. run.max_epoch=2 (a dotted key, '=', "
                              "the value)")


def load_run_yaml(cfg_path: str, options: List[str]):
    """The run yaml with ``options`` merged in, or :class:`ConfigError` for a missing file, invalid yaml, a yaml that
    is not a mapping and options that do not merge."""
    try:
        path = run_config_path(cfg_path)
    except FileNotFoundError as error:
        raise ConfigError(f"{error}") from None
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml's and OmegaConf's parse errors have no common base
        raise ConfigError(f"{path} is not valid yaml: {str(error).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path} is a {type(loaded).__name__.replace('Config', '').lower()}; a run yaml is a mapping "
                          "with model, datasets and run blocks")
    try:
        return path, override(loaded, OmegaConf.from_dotlist(list(options)))
    except Exception as error:
        raise ConfigError(f"--options do not merge into {path}: {str(error).splitlines()[0]}") from None


def dotted_leaves(tree, prefix: str = ""):
    """``(dotted key, value)`` of every leaf of a nested mapping; lists, and mappings whose keys hold dots (e.g.
    ``lr_scales`` prefixes), are leaves."""
    for key, value in tree.items():
        if isinstance(value, dict) and value and not any("." in str(name) for name in value):
            yield from dotted_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def override(config: DictConfig, options: DictConfig) -> DictConfig:
    """``config`` with each value of ``options`` set in place.  ``OmegaConf.merge`` would resolve the interpolation
    a value replaces: ``--options model.pretrained=x`` would train the ``${cached_run:...}`` it overrides."""
    for key, value in dotted_leaves(OmegaConf.to_container(options)):
        OmegaConf.update(config, key, value, merge=True)
    return config


class LaunchConfig(Config):
    """LAVIS's ``Config``, but ``--options model.arch=a model.model_type=x`` also select the default yaml of that
    model and type (LAVIS 1.0.2 merges options after having loaded the defaults of the yaml's own arch and type)."""

    @staticmethod
    def build_model_config(config, **kwargs):
        options = OmegaConf.create(kwargs)
        # the options replace the yaml's model values before LAVIS merges them (see override)
        override(config, OmegaConf.create({"model": options.get("model") or {}}))
        return Config.build_model_config(config)


def _registered(mapping: str) -> dict:
    return registry.mapping[mapping]


def _unknown_name_error(kind: str, name: str, mapping: str, cfg_path: str) -> ConfigError:
    names = _registered(mapping)
    ours = sorted(n for n, c in names.items() if getattr(c, "__module__", "").startswith("lavis_glscl"))
    others = sorted(n for n in names if n not in ours)
    return ConfigError(f"unknown {kind} {name!r} in {cfg_path}{closest(str(name), names)}. Registered by lavis_glscl: "
                       f"{', '.join(ours) or 'none'}; by LAVIS: {', '.join(others) or 'none'}")


def check_registered_names(cfg_path: str, cfg: DictConfig) -> None:
    """Fail at config time, with the registered names, on any unknown model, dataset, task, runner,
    scheduler or processor name in the run yaml (LAVIS's registry lookups return None and fail later)."""
    run, model = cfg.get("run") or {}, cfg.get("model") or {}
    checks = [("model arch", model.get("arch"), "model_name_mapping"),
              ("task", run.get("task"), "task_name_mapping"),
              ("runner", run.get("runner", DEFAULT_RUNNER), "runner_name_mapping")]
    if run.get("lr_sched") is not None:
        checks.append(("lr scheduler", run.get("lr_sched"), "lr_scheduler_name_mapping"))
    for dataset_name, dataset_cfg in (cfg.get("datasets") or {}).items():
        checks.append(("dataset", dataset_name, "builder_name_mapping"))
        for processor_kind in ("vis_processor", "text_processor"):
            for split_cfg in ((dataset_cfg or {}).get(processor_kind) or {}).values():
                if split_cfg is not None and split_cfg.get("name") is not None:
                    checks.append(("processor", split_cfg.get("name"), "processor_name_mapping"))
    for kind, name, mapping in checks:
        if name is None:
            raise ConfigError(f"{cfg_path} does not set a {kind}")
        if name not in _registered(mapping):
            raise _unknown_name_error(kind, name, mapping, cfg_path)


# What to put in a required (``???``) value of a packaged run yaml.
REQUIRED_VALUE_HINTS = {
    "model.vision_init.path": "a local OpenAI CLIP ViT-B/16 file (ViT-B-16.pt of the openai/CLIP release, or a state "
                              "dict with visual.* keys); with vision_init.format=hf, a local CLIPVisionModel directory",
    "model.text.path": "a local roberta-base directory (config.json, weights, tokenizer files: a saved copy of the "
                       "Hugging Face roberta-base repository)",
    "model.pretrained": "a local GLSCL checkpoint: the released GLSCL-100k.ckpt or MGSC-100k.ckpt, or the "
                        "checkpoint_*.pth of a pre-training run",
}


def check_required_values(cfg_path: str, cfg: DictConfig) -> None:
    """Fail at once, naming each key and what to put there, when the run yaml leaves a required value (``???``)
    unset, instead of deep inside model construction."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        lines = [f"  {key}: {REQUIRED_VALUE_HINTS.get(key, 'see the comments of the yaml')}" for key in missing]
        raise ConfigError(f"{cfg_path} needs values for:\n" + "\n".join(lines) +
                         "\nset them in the yaml or with --options key=value")


def check_task_options(cfg_path: str, cfg: DictConfig) -> None:
    """Refuse a score normaliser on a task that would ignore it: only ``glscl_retrieval`` applies one (to any
    model's scores; LAVIS's ``retrieval`` task scores with the model's matrices as they are)."""
    run = cfg.get("run") or {}
    normalizer = run.get("score_normalizer", None)
    if normalizer not in (None, "none") and run.get("task") != "glscl_retrieval":
        raise ConfigError(f"{cfg_path}: the score normaliser {normalizer!r} is applied by the glscl_retrieval task; "
                          f"run.task is {run.get('task')!r}, which would ignore it: set run.task=glscl_retrieval")


def check_config(args: argparse.Namespace) -> LaunchConfig:
    """Every check that needs nothing built: ``--options`` syntax, the yaml, required values, registered names, the
    run block (:class:`RunOptions`) and the model's own options; returns LAVIS's config of the run."""
    check_option_syntax(args.options)
    args.cfg_path, merged = load_run_yaml(args.cfg_path, args.options)
    check_required_values(args.cfg_path, merged)
    check_task_options(args.cfg_path, merged)
    check_registered_names(args.cfg_path, merged)
    try:
        cfg = LaunchConfig(args)
    except KeyError as error:  # an unknown model_type
        raise ConfigError(str(error.args[0] if error.args else error)) from None
    RunOptions.from_config(cfg.run_cfg)
    model_cls = registry.get_model_class(cfg.model_cfg.arch)
    if issubclass(model_cls, ConfiguredModel):
        model_cls.adapt_to_processors(cfg)
        model_cls.check_options(cfg.model_cfg)
    check_downloads(cfg)
    return cfg


def setup_logging() -> None:
    """LAVIS's log format and levels (INFO on rank 0, warnings elsewhere), set before the config checks so that what
    they adapt is logged; the rank comes from the launcher's environment, the process group not started yet."""
    launch = distributed.launch_environment()
    rank = launch[0] if launch else 0
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARN,
                        format="%(asctime)s [%(levelname)s] %(message)s", handlers=[logging.StreamHandler()])


def setup(args: argparse.Namespace) -> LaunchConfig:
    """Check the config, start the process group if launched by torchrun, seed, log."""
    setup_logging()
    cfg = check_config(args)
    distributed.init_distributed(cfg.run_cfg)
    seed_process(int(cfg.run_cfg.seed), distributed.world()[0])
    cfg.pretty_print()
    return cfg


@contextlib.contextmanager
def config_errors_exit():
    """For the command line: a :class:`ConfigError` (raised while checking, building or running) ends the process
    with its message alone, exit status 2."""
    try:
        yield
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def build_runner(cfg: LaunchConfig):
    """Task, datasets, model and runner as LAVIS's ``train.py`` builds them (runner default: ``runner_glscl``)."""
    from lavis import tasks

    job_id, resume = prepare_run_directory(RunOptions.from_config(cfg.run_cfg))
    if resume is not None:
        logging.info("run.auto_resume: job %s resumes from its newest complete checkpoint %s", job_id, resume)
        cfg.run_cfg.resume_ckpt_path = resume
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", DEFAULT_RUNNER))
    return runner_cls(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)


def report(results: Optional[dict]) -> None:
    """Print each evaluated split's metrics (rank 0)."""
    if not results or distributed.world()[0] != 0:
        return
    for split, metrics in results.items():
        if metrics:
            print(f"== {split} ==")
            for key, value in metrics.items():
                print(f"{key:>12}: {value:.2f}" if isinstance(value, float) else f"{key:>12}: {value}")
    logging.shutdown()
