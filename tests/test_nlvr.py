"""NLVR: the shapes NLVR demo set (labels checked against the pixels), ``glscl_nlvr``'s two fusion passes and their
token types, loading pre-training checkpoints with a third token type, and training and scoring through LAVIS's
``multimodal_classification`` task on LAVIS's NLVR dataset classes."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_log_records, tiny_batch, train_in_process
from PIL import Image

SMALL_SET = {"num_train_images": 40, "num_train": 64, "num_test_images": 20, "num_test": 40, "image_size": 64,
             "seed": 3}


@pytest.fixture(scope="module")
def small_set(lavis_glscl, tmp_path_factory):
    from lavis_glscl.datasets import nlvr

    return nlvr.ensure_generated(tmp_path_factory.mktemp("nlvr") / "set", **SMALL_SET)


def nlvr_batch(batch_size=4, seed=0):
    batch = tiny_batch(batch_size, seed=seed)
    other = tiny_batch(batch_size, seed=seed + 1)
    return {"image0": batch["image"], "image1": other["image"], "text_input": batch["text_input"],
            "label": torch.arange(batch_size) % 2}


# ------------------------------------------------------------------ the shapes NLVR demo set
def test_sentences_follow_the_attribute_counts_of_the_pair(lavis_glscl):
    from lavis_glscl.datasets.nlvr import is_true, sentence

    left, right = Counter(red=2, circle=1, square=1), Counter(red=1, blue=1, circle=2)
    assert sentence("both", "orange") == "both images contain an orange shape"
    assert sentence("at least one", "square") == "at least one image contains a square"
    assert is_true("both", "red", left, right) and is_true("both", "circle", left, right)
    assert not is_true("both", "square", left, right) and is_true("at least one", "square", left, right)
    assert is_true("at least one", "blue", left, right) and not is_true("at least one", "green", left, right)


def colour_objects(path: Path, colour: str) -> int:
    """Objects of ``colour`` in a shapes image, read from its pixels: connected regions within the render noise."""
    from scipy import ndimage

    from lavis_glscl.datasets.shapes import COLORS

    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    mask = (np.abs(pixels - np.array(COLORS[colour])) <= 8).all(axis=-1)
    return ndimage.label(mask, structure=np.ones((3, 3)))[1]


def test_generated_labels_are_balanced_and_true_of_the_pixels(small_set):
    from lavis_glscl.datasets.shapes import COLORS

    checked = Counter()
    for split, size in (("train", SMALL_SET["num_train"]), ("test", SMALL_SET["num_test"])):
        items = json.loads((small_set / f"{split}.json").read_text())
        assert len(items) == size and Counter(item["label"] for item in items) == {"True": size // 2,
                                                                                  "False": size // 2}
        for item in items:
            left, right = (small_set / path for path in item["images"])
            assert left != right and left.is_file() and right.is_file() and left.name.startswith(split)
            words = item["sentence"].split()
            (colour,) = [word for word in words if word in COLORS]  # the default sentences name one colour
            counts = colour_objects(left, colour), colour_objects(right, colour)
            if words[0] == "both":
                assert max(counts) > 0, item  # a false "both" is a near miss: one image holds the colour
                truth = min(counts) > 0
            else:
                truth = max(counts) > 0
            assert str(truth) == item["label"], (item, counts)
            checked[words[0]] += 1
    assert set(checked) == {"both", "at"}  # every sentence kind met the pixel check


def test_shape_sentences_come_with_the_shape_attribute(lavis_glscl, tmp_path):
    from lavis_glscl.datasets import nlvr
    from lavis_glscl.datasets.shapes import COLORS, SHAPES

    options = {**SMALL_SET, "num_train": 2, "num_test": 80, "attributes": ["shape"]}
    root = nlvr.ensure_generated(tmp_path / "shape_set", **options)
    sentences = [item["sentence"] for item in json.loads((root / "test.json").read_text())]
    words = [{word[:-1] if word[:-1] in SHAPES else word for word in text.split()} for text in sentences]  # plurals
    assert all(len(w & set(SHAPES)) == 1 and not w & set(COLORS) for w in words)
    assert nlvr.dataset_dir(**options) != nlvr.dataset_dir(**SMALL_SET)


def test_generator_options_are_checked(lavis_glscl, tmp_path):
    from lavis_glscl.datasets import nlvr

    with pytest.raises(ValueError, match="unknown shapes NLVR generator option"):
        nlvr.dataset_dir(num_images=3)
    with pytest.raises(ValueError, match="attributes must be some of"):
        nlvr.dataset_dir(attributes=["size"])
    with pytest.raises(ValueError, match="at least 2 images"):
        nlvr.ensure_generated(tmp_path / "set", num_test_images=1)
    assert nlvr.dataset_dir(seed=1) != nlvr.dataset_dir(seed=2)


def builder_config(name: str, **extra):
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    processors = {"vis_processor": {"train": {"name": "glscl_image_eval", "image_size": 32},
                                    "eval": {"name": "glscl_image_eval", "image_size": 32}},
                  "text_processor": {"train": {"name": "glscl_caption"}, "eval": {"name": "glscl_caption"}}}
    defaults = OmegaConf.load(registry.get_builder_class(name).default_config_path()).datasets[name]
    return OmegaConf.merge(defaults, processors, extra)


def test_glscl_nlvr_builder_reads_lavis_nlvr_layout_under_cache_root(lavis_glscl, small_set, monkeypatch, tmp_path):
    from lavis.common.registry import registry
    from lavis.datasets.datasets.nlvr_datasets import NLVRDataset, NLVREvalDataset

    cache_root = tmp_path / "lavis_cache"
    (cache_root / "nlvr" / "annotations").mkdir(parents=True)
    (cache_root / "nlvr" / "images").symlink_to(small_set / "images")
    items = json.loads((small_set / "test.json").read_text())
    for name in ("train", "dev", "test"):
        layout = [{**item, "images": [p.replace("images/", "", 1) for p in item["images"]]} for item in items]
        (cache_root / "nlvr" / "annotations" / f"{name}.json").write_text(json.dumps(layout))
    monkeypatch.setitem(registry.mapping["paths"], "cache_root", str(cache_root))
    datasets = registry.get_builder_class("glscl_nlvr")(builder_config("glscl_nlvr")).build_datasets()
    assert type(datasets["train"]) is NLVRDataset and type(datasets["val"]) is NLVREvalDataset
    sample = datasets["test"][0]
    assert sample["image0"].shape == (3, 32, 32) and sample["label"] == int(items[0]["label"] == "True")
    assert sample["text_input"] == items[0]["sentence"]
    (cache_root / "nlvr" / "annotations" / "dev.json").unlink()
    with pytest.raises(FileNotFoundError, match="dev.json"):
        registry.get_builder_class("glscl_nlvr")(builder_config("glscl_nlvr")).build_datasets()


# ------------------------------------------------------------------ the model
def test_fuse_gives_the_image_tokens_the_requested_token_type(tiny):
    model = tiny("glscl_nlvr", dropout=False)
    text = model.tokenize(["a red circle", "two squares"])
    text_tokens = model.encode_text(text.input_ids, text.attention_mask)
    image_tokens = model.encode_image(tiny_batch(2)["image"].unsqueeze(1))
    with torch.no_grad():
        model.token_type_embeddings.weight[2].normal_()
        rows = model.token_type_embeddings.weight
        as_type_2 = model.fuse(text_tokens, text.attention_mask, image_tokens, 1, image_token_type=2)
        # type 2 is type 1 plus the difference of the two rows, added to every image token
        shifted = model.fuse(text_tokens, text.attention_mask, image_tokens + rows[2] - rows[1], 1)
        as_type_1 = model.fuse(text_tokens, text.attention_mask, image_tokens, 1)
    torch.testing.assert_close(as_type_2.cls_feats, shifted.cls_feats, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(as_type_2.cls_feats, as_type_1.cls_feats, atol=1e-3)


def test_glscl_nlvr_fuses_left_with_type_1_and_right_with_type_2_and_classifies_their_concatenation(tiny,
                                                                                                     monkeypatch):
    model = tiny("glscl_nlvr", dropout=False)
    batch = nlvr_batch()
    calls = []
    fuse = model.fuse

    def recording_fuse(text_tokens, text_mask, image_tokens, num_frames, **options):
        output = fuse(text_tokens, text_mask, image_tokens, num_frames, **options)
        calls.append((image_tokens, options["image_token_type"], output.cls_feats))
        return output

    monkeypatch.setattr(model, "fuse", recording_fuse)
    with torch.no_grad():
        logits = model.pair_logits(batch)
        left = model.encode_image(batch["image0"].unsqueeze(1))
        right = model.encode_image(batch["image1"].unsqueeze(1))
    assert [token_type for _, token_type, _ in calls] == [1, 2]
    torch.testing.assert_close(calls[0][0], left)
    torch.testing.assert_close(calls[1][0], right)
    hidden = model.config.fusion.hidden_size
    assert logits.shape == (4, 2) and model.nlvr_classifier[0].in_features == 4 * hidden
    torch.testing.assert_close(logits, model.nlvr_classifier(torch.cat([calls[0][2], calls[1][2]], dim=-1)))
    prediction = model.predict(batch)
    torch.testing.assert_close(prediction["predictions"], logits)
    assert torch.equal(prediction["targets"], batch["label"])


def test_glscl_nlvr_loss_is_cross_entropy_and_trains_exactly_what_it_leaves_trainable(tiny):
    model = tiny("glscl_nlvr", dropout=False)
    batch = nlvr_batch()
    output = model(batch)
    logits = model.pair_logits(batch).detach()
    # cross-entropy by hand: -log softmax of the labelled class, averaged
    expected = -(logits.log_softmax(dim=1)[torch.arange(4), batch["label"]]).mean()
    assert float(output["loss_nlvr"].detach()) == pytest.approx(float(expected), abs=1e-5)
    output["loss"].backward()
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    reached = {name for name, param in model.named_parameters() if param.grad is not None}
    assert trainable == reached
    assert {"token_type_embeddings.weight", "nlvr_classifier.3.weight"} <= trainable
    assert not any(name.startswith(("itm_score", "mlm_score", "vision_proj", "language_proj")) for name in trainable)
    assert (model.token_type_embeddings.weight.grad.abs().sum(dim=1) > 0).all()  # text, left and right types


def released_layout(state_dict):
    """A Lightning file's ``state_dict`` in the released names: the ViT under ``vision_transformer.visual.``, no
    ``temporal_embed``."""
    released = {}
    for key, value in state_dict.items():
        if key == "vision_transformer.temporal_embed":
            continue
        if key.startswith("vision_transformer."):
            key = "vision_transformer.visual." + key[len("vision_transformer."):]
        released[key] = value
    return released


@pytest.mark.parametrize("layout", ["lavis", "released"])
def test_pretraining_checkpoint_loads_with_the_right_image_type_from_the_image_row(tiny, tmp_path, caplog, layout):
    pretrained = tiny("glscl_pretrain")
    with torch.no_grad():
        for param in pretrained.parameters():
            param.add_(torch.randn_like(param))  # weights no fresh model could have by chance
    weights = {key: value.clone() for key, value in pretrained.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": weights} if layout == "lavis" else {"state_dict": released_layout(weights), "epoch": 41},
               path)
    with caplog.at_level("INFO"):
        model = tiny("glscl_nlvr", pretrained=str(path))
    rows = model.token_type_embeddings.weight
    assert rows.shape[0] == 3 and weights["token_type_embeddings.weight"].shape[0] == 2
    assert torch.equal(rows[:2], weights["token_type_embeddings.weight"])
    assert torch.equal(rows[2], weights["token_type_embeddings.weight"][1])
    state = model.state_dict()
    compared = [key for key in weights if key != "token_type_embeddings.weight"
                and not (layout == "released" and key == "vision_transformer.temporal_embed")]
    assert all(torch.equal(state[key], weights[key]) for key in compared), \
        [key for key in compared if not torch.equal(state[key], weights[key])]
    assert "token type 2 starts from the checkpoint's image type 1" in caplog.text
    assert sorted(key for key in state if key not in weights) == [f"nlvr_classifier.{i}.{p}" for i in (0, 1, 3)
                                                                  for p in ("bias", "weight")]


def test_nlvr_checkpoint_with_three_token_types_loads_as_it_is(tiny, tmp_path):
    trained = tiny("glscl_nlvr")
    with torch.no_grad():
        trained.token_type_embeddings.weight[2].normal_()
    path = tmp_path / "nlvr.pth"
    torch.save({"model": trained.state_dict()}, path)
    model = tiny("glscl_nlvr", pretrained=str(path))
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ------------------------------------------------------------------ LAVIS's task
def tiny_nlvr_yaml(folder: Path, output_dir: Path) -> Path:
    config = folder / "nlvr.yaml"
    config.write_text(f"""
model: {{arch: glscl_nlvr, model_type: tiny}}
datasets:
  shapes_nlvr_demo:
    generator: {json.dumps(SMALL_SET)}
    vis_processor:
      train: {{name: glscl_image_train, image_size: 32}}
      eval: {{name: glscl_image_eval, image_size: 32}}
    text_processor:
      train: {{name: glscl_caption}}
      eval: {{name: glscl_caption}}
run: {{task: multimodal_classification, runner: runner_glscl, device: cpu, seed: 1, output_dir: "{output_dir}",
      lr_sched: glscl_warmup_linear, init_lr: 1e-3, min_lr: 0.0, weight_decay: 0.01, max_epoch: 1, iters_per_epoch: 2,
      batch_size_train: 4, batch_size_eval: 8, num_workers: 0, log_freq: 1, train_splits: [train], valid_splits: [],
      test_splits: [test], evaluate: false, distributed: false, dist_url: "env://"}}
""")
    return config


def test_glscl_nlvr_trains_two_steps_and_lavis_multimodal_classification_scores_it(lavis_glscl, tmp_path):
    from lavis.common.registry import registry

    from lavis_glscl.datasets import nlvr

    output_dir = tmp_path / "out"
    runner = train_in_process(tiny_nlvr_yaml(tmp_path, output_dir), output_dir)
    steps = read_log_records(output_dir, "train_step")
    assert [r["train_step_iter"] for r in steps] == [0, 1] and all(r["train_step_loss_nlvr"] > 0 for r in steps)
    (evaluation,) = [json.loads(line) for line in next(output_dir.rglob("evaluate.txt")).read_text().splitlines()]
    assert runner.test_results["test"]["acc"] == evaluation["test"]["acc"]

    # the accuracy LAVIS's evaluator reported, recomputed from the saved weights and the generated files
    model = registry.get_model_class("glscl_nlvr").from_config(
        {**runner.config.model_cfg, "pretrained": str(next(output_dir.rglob("checkpoint_0.pth")))}).eval()
    processor = registry.get_processor_class("glscl_image_eval")(image_size=32)
    root = nlvr.dataset_dir(**SMALL_SET)
    items = json.loads((root / "test.json").read_text())
    images = [[processor(Image.open(root / path).convert("RGB")) for path in item["images"]] for item in items]
    with torch.no_grad():
        logits = model.pair_logits({"image0": torch.stack([pair[0] for pair in images]),
                                    "image1": torch.stack([pair[1] for pair in images]),
                                    "text_input": [item["sentence"] for item in items]})
    truth = torch.tensor([item["label"] == "True" for item in items])
    assert evaluation["test"]["acc"] == pytest.approx(float((logits.argmax(dim=1).bool() == truth).float().mean()))


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
