"""What the README tells a LAVIS user, checked: where LAVIS's ``cache_root`` points, and the evaluation-only recipe
for a released checkpoint (zero-shot retrieval with ``python -m lavis_glscl.evaluate`` on the fine-tuning yamls)."""
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from lavis_glscl import launch, paths

# The README's zero-shot retrieval options, on projects/glscl/finetune/retrieval_{coco,flickr30k}.yaml.
ZERO_SHOT_OPTIONS = ["model.pretrained=/ckpt/GLSCL-100k.ckpt", "model.text.path=/models/roberta-base",
                     "model.loss_weights.rank=0", "model.vision.image_size=288",
                     "datasets.glscl_image_text.vis_processor.eval.image_size=288",
                     "datasets.glscl_image_text.splits=[test]", "run.valid_splits=[]", "run.distributed=false"]


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


@pytest.mark.parametrize("project, dataset_type", [("glscl/finetune/retrieval_coco.yaml", "coco"),
                                                   ("glscl/finetune/retrieval_flickr30k.yaml", "flickr30k")])
def test_zero_shot_evaluation_recipe_builds_a_test_only_itm_scored_run(lavis_glscl, project, dataset_type):
    from lavis.common.registry import registry

    from lavis_glscl.models.base import CHECKPOINT_KEYS, LAVIS_ONLY_KEYS
    from lavis_glscl.models.glscl import GlsclConfig as ModelConfig

    cfg_path = str(paths.PROJECT_DIR / project)
    launch.check_required_values(*launch.load_run_yaml(cfg_path, ZERO_SHOT_OPTIONS))
    launch.check_task_options(*launch.load_run_yaml(cfg_path, ZERO_SHOT_OPTIONS))
    launch.check_registered_names(*launch.load_run_yaml(cfg_path, ZERO_SHOT_OPTIONS))
    cfg = launch.LaunchConfig(launch.parse_args("x", ["--cfg-path", cfg_path, "--options", *ZERO_SHOT_OPTIONS]))

    options = {k: v for k, v in OmegaConf.to_container(cfg.model_cfg).items()
               if k not in (*CHECKPOINT_KEYS, *LAVIS_ONLY_KEYS)}
    model_config = ModelConfig.from_options(options)
    assert cfg.model_cfg.pretrained == "/ckpt/GLSCL-100k.ckpt" and not cfg.model_cfg.load_finetuned
    # no rank head: the ITC shortlist is re-ranked by the pre-trained ITM head
    assert model_config.loss_weights.rank == 0.0 and model_config.vision.image_size == 288
    dataset_cfg = cfg.datasets_cfg.glscl_image_text
    builder = registry.get_builder_class("glscl_image_text")(dataset_cfg)
    assert dataset_cfg.type == dataset_type and set(builder.config.build_info.annotations) == {"test"}
    assert dataset_cfg.vis_processor.eval.image_size == 288
    assert list(cfg.run_cfg.test_splits) == ["test"] and not cfg.run_cfg.valid_splits
