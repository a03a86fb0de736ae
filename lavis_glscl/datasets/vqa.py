"""VQA data for LAVIS's ``vqa`` task: a builder for local VQAv2-format data, and the easy-vqa benchmark.

easy-vqa (PyPI ``easy-vqa``, MIT, by Victor Zhou) is a small real VQA benchmark made by someone else: 64 x 64
images of one coloured shape, 38,575 training and 9,673 test questions, 13 answers.  It is converted, with its
official train/test split, into LAVIS's VQAv2 layout plus the COCO-format question and annotation files
that LAVIS's official VQA evaluator reads (each answer given by 10 "annotators", so an exact match scores 1).
"""
import json
from pathlib import Path

from lavis.common.registry import registry
from lavis.datasets.datasets.coco_vqa_datasets import COCOVQADataset, COCOVQAEvalDataset

from lavis_glscl.datasets.builders import LocalFilesBuilder
from lavis_glscl.datasets.cache import ensure_cached
from lavis_glscl.paths import cache_dir, config_path

EASY_VQA_VERSION = 1


@registry.register_builder("glscl_vqa")
class VqaBuilder(LocalFilesBuilder):
    """Local VQAv2-format data with LAVIS's VQA datasets: train items ``{image, question, answer: [str, ...],
    question_id}``; an eval split's storage lists ``[questions, answer_list, coco questions, coco annotations]``."""

    train_dataset_cls = COCOVQADataset
    eval_dataset_cls = COCOVQAEvalDataset
    DATASET_CONFIG_DICT = {"default": config_path("datasets/glscl_vqa/defaults.yaml")}


def _coco_header(split: str) -> dict:
    return {"info": {"description": "easy-vqa, converted by lavis_glscl"}, "task_type": "Open-Ended",
            "data_type": "easy_vqa", "data_subtype": split, "license": {"name": "MIT"}}


def write_easy_vqa(root: Path) -> None:
    """Convert the installed easy-vqa package into the empty directory ``root``."""
    import easy_vqa

    train_questions, train_answers, train_images = easy_vqa.get_train_questions()
    train = [{"image": f"train/images/{image}.png", "question": question, "answer": [answer], "question_id": index}
             for index, (question, answer, image) in enumerate(zip(train_questions, train_answers, train_images))]
    test_questions, test_answers, test_images = easy_vqa.get_test_questions()
    offset = len(train)
    test = [{"image": f"test/images/{image}.png", "question": question, "question_id": offset + index}
            for index, (question, image) in enumerate(zip(test_questions, test_images))]
    coco_questions = {**_coco_header("test"), "questions": [
        {"image_id": image, "question": question, "question_id": offset + index}
        for index, (question, image) in enumerate(zip(test_questions, test_images))]}
    coco_annotations = {**_coco_header("test"), "annotations": [
        {"image_id": image, "question_id": offset + index, "question_type": " ".join(question.split()[:2]),
         "answer_type": "yes/no" if answer in ("yes", "no") else "other", "multiple_choice_answer": answer,
         "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]}
        for index, (question, answer, image) in enumerate(zip(test_questions, test_answers, test_images))]}
    files = {"train.json": train, "test.json": test, "answer_list.json": list(easy_vqa.get_answers()),
             "test_questions_coco.json": coco_questions, "test_annotations_coco.json": coco_annotations}
    for name, content in files.items():
        (root / name).write_text(json.dumps(content))


@registry.register_builder("easy_vqa")
class EasyVqaBuilder(VqaBuilder):
    """easy-vqa with its official split (needs ``pip install easy-vqa``, the ``easyvqa`` extra).  Annotation
    storage paths are relative to the converted files in the cache, image paths to the package's data."""

    DATASET_CONFIG_DICT = {"default": config_path("datasets/easy_vqa/defaults.yaml")}

    def __init__(self, cfg=None):
        super().__init__(cfg)
        try:
            import easy_vqa
        except ImportError as error:
            raise ImportError("the easy_vqa builder needs the easy-vqa package: pip install easy-vqa") from error
        self.root = cache_dir() / "easy_vqa" / f"v{EASY_VQA_VERSION}"
        self.root_storage_under(self.root, media_root=Path(easy_vqa.__file__).parent / "data")

    def _download_data(self):
        ensure_cached(self.root, write_easy_vqa)
        super()._download_data()
