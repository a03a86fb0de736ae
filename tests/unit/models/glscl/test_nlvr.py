"""``glscl_nlvr``: two fusion passes and their token types, loading pre-training checkpoints with a third token type,
and training and scoring through LAVIS's ``multimodal_classification`` task."""
import json
from pathlib import Path

import pytest
import torch
from helpers import NLVR_SMALL_SET, read_log_records, tiny_batch, train_in_process
from PIL import Image


def nlvr_batch(batch_size=4, seed=0):
    batch = tiny_batch(batch_size, seed=seed)
    other = tiny_batch(batch_size, seed=seed + 1)
    return {"image0": batch["image"], "image1": other["image"], "text_input": batch["text_input"],
            "label": torch.arange(batch_size) % 2}


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


def tiny_nlvr_yaml(folder: Path, output_dir: Path) -> Path:
    config = folder / "nlvr.yaml"
    config.write_text(f"""
model: {{arch: glscl_nlvr, model_type: tiny}}
datasets:
  shapes_nlvr_demo:
    generator: {json.dumps(NLVR_SMALL_SET)}
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
    root = nlvr.dataset_dir(**NLVR_SMALL_SET)
    items = json.loads((root / "test.json").read_text())
    images = [[processor(Image.open(root / path).convert("RGB")) for path in item["images"]] for item in items]
    with torch.no_grad():
        logits = model.pair_logits({"image0": torch.stack([pair[0] for pair in images]),
                                    "image1": torch.stack([pair[1] for pair in images]),
                                    "text_input": [item["sentence"] for item in items]})
    truth = torch.tensor([item["label"] == "True" for item in items])
    assert evaluation["test"]["acc"] == pytest.approx(float((logits.argmax(dim=1).bool() == truth).float().mean()))


def test_a_freshly_built_nlvr_model_has_the_right_images_token_type_started_from_the_image_row(tiny):
    """Built from scratch (no checkpoint): three token-type rows, the right image's (2) starting as the image row (1),
    as the released NLVR2 fine-tuning starts it, not as a fresh random row; once it differs, the right image's tokens
    and only they carry it: the pair logits equal the classifier on the left image fused as type 1 and the right image
    fused as type 1 with the two rows' difference added to every right-image token."""
    model = tiny("glscl_nlvr", dropout=False)
    rows = model.token_type_embeddings.weight
    assert rows.shape[0] == 3
    assert torch.equal(rows[2], rows[1]) and not torch.equal(rows[1], rows[0])
    batch = nlvr_batch(seed=4)
    with torch.no_grad():
        before = model.pair_logits(batch)
        rows[2].normal_()
        after = model.pair_logits(batch)
        text = model.tokenize(batch["text_input"])
        text_tokens = model.encode_text(text.input_ids, text.attention_mask)
        left = model.encode_image(batch["image0"].unsqueeze(1))
        right = model.encode_image(batch["image1"].unsqueeze(1))
        left_fused = model.fuse(text_tokens, text.attention_mask, left, 1)
        right_fused = model.fuse(text_tokens, text.attention_mask, right + rows[2] - rows[1], 1)
        expected = model.nlvr_classifier(torch.cat([left_fused.cls_feats, right_fused.cls_feats], dim=-1))
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-4)
