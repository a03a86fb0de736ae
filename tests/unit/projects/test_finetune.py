"""The fine-tuning yamls: the paper's recipe on LAVIS's layouts, the README's zero-shot retrieval recipe for a released
checkpoint (evaluation only, with ``python -m lavis_glscl.evaluate``), and the NLVR yamls' required values."""
import os

import pytest
from omegaconf import OmegaConf

from lavis_glscl import launch, paths


@pytest.mark.parametrize("project, image_size, k_test, dataset_type, scale", [
    ("finetune/retrieval_coco.yaml", 384, 256, "coco", 5.0),
    ("finetune/retrieval_flickr30k.yaml", 384, 128, "flickr30k", 10.0),
    ("finetune/retrieval_msrvtt.yaml", 224, 128, "msrvtt", 5.0),
])
def test_finetune_yamls_carry_the_paper_recipe_on_lavis_layouts(lavis_glscl, project, image_size, k_test,
                                                                  dataset_type, scale):
    from lavis.common.registry import registry

    cfg = launch.LaunchConfig(launch.parse_args("x", ["--cfg-path", str(paths.PROJECT_DIR / "glscl" / project)]))
    model_cls = registry.get_model_class(cfg.model_cfg.arch)
    model = model_cls.typed_options(model_cls.split_options(cfg.model_cfg, resolve_checkpoints=False)[0])
    run = cfg.run_cfg
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


# The README's zero-shot retrieval options, on projects/glscl/finetune/retrieval_{coco,flickr30k}.yaml.
ZERO_SHOT_OPTIONS = ["model.pretrained=/ckpt/GLSCL-100k.ckpt", "model.text.path=/models/roberta-base",
                     "model.loss_weights.rank=0", "model.vision.image_size=288",
                     "datasets.glscl_image_text.vis_processor.eval.image_size=288",
                     "datasets.glscl_image_text.splits=[test]", "run.valid_splits=[]", "run.distributed=false"]


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


@pytest.mark.parametrize("project, required", [("glscl/demo/finetune_nlvr_shapes.yaml", []),
                                               ("glscl/finetune/nlvr2.yaml", ["model.pretrained", "model.text.path"])])
def test_nlvr_run_yamls_name_their_required_values_and_build(lavis_glscl, project, required):
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    from lavis_glscl import launch, paths
    from lavis_glscl.models.base import CHECKPOINT_KEYS, LAVIS_ONLY_KEYS
    from lavis_glscl.models.glscl import GlsclConfig as ModelConfig

    cfg_path = str(paths.PROJECT_DIR / project)
    if required:
        with pytest.raises(launch.ConfigError) as error:
            launch.check_required_values(*launch.load_run_yaml(cfg_path, []))
        assert all(f"  {key}: " in str(error.value) for key in required)
    options = [f"{key}=/placeholder/{key}" for key in required]
    launch.check_required_values(*launch.load_run_yaml(cfg_path, options))
    launch.check_registered_names(*launch.load_run_yaml(cfg_path, options))
    argv = ["--cfg-path", cfg_path] + (["--options", *options] if options else [])
    cfg = launch.LaunchConfig(launch.parse_args("x", argv))
    assert cfg.model_cfg.arch == "glscl_nlvr" and cfg.run_cfg.task == "multimodal_classification"
    model_options = {k: v for k, v in OmegaConf.to_container(cfg.model_cfg).items()
                     if k not in (*CHECKPOINT_KEYS, *LAVIS_ONLY_KEYS)}
    model_config = ModelConfig.from_options(model_options)
    assert set(model_config.lr_scales) >= {"cross_modal_", "nlvr_classifier"}
    ((name, dataset_cfg),) = cfg.datasets_cfg.items()
    builder = registry.get_builder_class(name)(dataset_cfg)
    wanted = {*cfg.run_cfg.train_splits, *cfg.run_cfg.get("valid_splits", []), *cfg.run_cfg.test_splits}
    assert wanted <= set(builder.config.build_info.annotations)
    size = dataset_cfg.vis_processor.eval.image_size
    assert size == model_config.vision.image_size == dataset_cfg.vis_processor.train.image_size


def test_vqav2_yaml_is_the_released_recipe_on_lavis_coco_vqa(lavis_glscl):
    """Section 7 of the released recipe: 384 px, lr 5e-6, fusion x10, classifier x50, 10 epochs, 10 % warm-up, a
    global batch of 512, RandAugment(2, 9) without flips; the classifier's answers are LAVIS's answer list."""
    from omegaconf import OmegaConf

    from lavis_glscl.paths import run_config_path

    cfg = OmegaConf.load(run_config_path("projects/glscl/finetune/vqav2.yaml"))
    model, run, (name, dataset), = cfg.model, cfg.run, *cfg.datasets.items()
    assert (model.arch, model.model_type, model.vision.image_size) == ("glscl_vqa", "base", 384)
    assert dict(model.lr_scales) == {"cross_modal_": 10.0, "vqa_classifier": 50.0}
    assert float(run.init_lr) == 5e-6 and run.warmup_ratio == 0.1 and run.max_epoch == 10 and run.task == "vqa"
    assert run.batch_size_train * run.accum_grad_iters * 8 == 512  # 8 GPUs, as the README's torchrun line
    assert name == "coco_vqa" and model.answer_list == "coco/annotations/answer_list.json"
    train_processor = dataset.vis_processor.train
    assert (train_processor.image_size, list(train_processor.rand_augment), train_processor.hflip_prob) == \
        (384, [2, 9], 0.0)
    assert OmegaConf.is_missing(model, "pretrained") and OmegaConf.is_missing(model.text, "path")
