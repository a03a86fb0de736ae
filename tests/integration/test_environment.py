"""What a fresh process sees once lavis_glscl is imported: the entry points default to offline (a user's
``HF_HUB_OFFLINE=0`` gives LAVIS's models the hub back), and LAVIS's ``cache_root`` lies under ``$LAVIS_GLSCL_CACHE``.

transformers and huggingface_hub read their offline switches once, when first imported, and ``python -m
lavis_glscl.<module>`` imports them (through ``import lavis``) before the module's own code runs; so what counts is
what they read in a process started through the entry point.  A ``sitecustomize`` probe reads it at exit, from the
modules the entry point loaded (it imports nothing itself).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from omegaconf import OmegaConf

PROBE = '''
import atexit, json, os, sys

def report():
    hub_constants = sys.modules.get("huggingface_hub.constants")
    transformers_hub = sys.modules.get("transformers.utils.hub")
    with open(os.environ["OFFLINE_PROBE_OUT"], "w") as handle:
        json.dump({"huggingface_hub": hub_constants and hub_constants.HF_HUB_OFFLINE,
                   "transformers": transformers_hub and transformers_hub.is_offline_mode()}, handle)

atexit.register(report)
'''

CONSOLE_SCRIPT = str(Path(sys.executable).parent / "lavis-glscl-evaluate")


def offline_modes_seen(tmp_path: Path, command, user_environment: dict) -> dict:
    """Run ``command --help`` (argparse exits after the package import) with ``user_environment`` and the probe;
    returns what transformers and huggingface_hub read."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    environment.update(user_environment, OFFLINE_PROBE_OUT=str(tmp_path / "seen.json"), PYTHONWARNINGS="ignore",
                       PYTHONPATH=os.pathsep.join([str(probe_dir), environment.get("PYTHONPATH", "")]))
    result = subprocess.run([*command, "--help"], cwd=REPO, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0 and "--cfg-path" in result.stdout, result.stdout[-3000:]
    return json.loads((tmp_path / "seen.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("command, user_environment, offline", [
    ([sys.executable, "-m", "lavis_glscl.train"], {}, True),
    ([CONSOLE_SCRIPT], {}, True),
    ([sys.executable, "-m", "lavis_glscl.train"], {"HF_HUB_OFFLINE": "0"}, False),
    ([sys.executable, "-m", "lavis_glscl.train"], {"TRANSFORMERS_OFFLINE": "0"}, False),
], ids=["module-default", "console-script-default", "user-hub-online", "user-transformers-online"])
def test_entry_point_processes_are_offline_unless_the_user_says_otherwise(tmp_path, command, user_environment,
                                                                          offline):
    assert offline_modes_seen(tmp_path, command, user_environment) == {"huggingface_hub": offline,
                                                                        "transformers": offline}


@pytest.mark.slow
def test_lavis_cache_root_moves_with_lavis_glscl_cache(lavis_glscl, tmp_path):
    """LAVIS's default ``cache_root`` (an internal path of its authors') does not exist here, so a fresh process that
    imports lavis_glscl resolves LAVIS's relative dataset paths under ``$LAVIS_GLSCL_CACHE/lavis``."""
    from lavis.common.registry import registry

    lavis_default = OmegaConf.load(os.path.join(registry.get_path("library_root"), "configs/default.yaml"))
    assert not os.path.isdir(os.path.join(registry.get_path("repo_root"), lavis_default.env.cache_root))
    probe = ("import lavis_glscl; from lavis.common.utils import get_cache_path; "
             "print(get_cache_path('coco/images'))")
    result = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "LAVIS_GLSCL_CACHE": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "lavis" / "coco" / "images")
