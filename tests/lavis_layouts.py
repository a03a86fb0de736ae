"""Small fake sets in LAVIS's own dataset layouts under LAVIS's ``cache_root`` (lavis_glscl's cache in a test session),
for runs of LAVIS's own yamls."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

LAVIS_PROJECTS = Path(importlib.util.find_spec("lavis").origin).parent / "projects"
# What a user without a GPU passes: the CPU, one process, small batches, two steps
CPU_OPTIONS = ["run.device=cpu", "run.distributed=false", "run.num_workers=0", "run.batch_size_train=2",
               "run.batch_size_eval=4", "run.max_epoch=1", "run.iters_per_epoch=2"]
CAPTIONS = ["a red square", "a blue circle", "a green triangle", "a yellow star", "a white moon"]


def cache_root() -> Path:
    """LAVIS's cache_root in this test session: lavis_glscl's cache (LAVIS's own default does not exist here)."""
    return Path(os.environ["LAVIS_GLSCL_CACHE"]) / "lavis"


def write_random_images(folder: Path, names, size=32):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / name)


def write_retrieval_set(annotations: Path, images: Path, names):
    """Ten images in LAVIS's Karpathy retrieval layout: train pairs, val and test galleries with captions."""
    paths = [f"val2014/{i:03d}.jpg" for i in range(10)]
    write_random_images(images, paths)
    annotations.mkdir(parents=True, exist_ok=True)
    train = [{"image": path, "caption": CAPTIONS[i % 5], "image_id": f"img{i}"} for i, path in enumerate(paths)]
    gallery = [{"image": path, "caption": [CAPTIONS[i % 5], f"picture {i}"]} for i, path in enumerate(paths[:5])]
    for name, content in zip(names, (train, gallery, gallery)):
        (annotations / name).write_text(json.dumps(content))


def write_msrvtt():
    from lavis_glscl.datasets import shapes

    root = cache_root() / "msrvtt"
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(1)
    for i in range(4):
        obj = shapes.random_object(rng)
        shapes.write_clip(root / "videos" / f"video{i}.mp4", shapes.render_clip(obj, "to the left", 32, 12, rng))
    (root / "annotations").mkdir(exist_ok=True)
    train = [{"video": f"video{i}.mp4", "caption": CAPTIONS[i]} for i in range(4)]
    gallery = [{"video": f"video{i}.mp4", "caption": [CAPTIONS[i]]} for i in range(4)]
    for name, content in (("retrieval_train.json", train), ("retrieval_val.json", gallery),
                          ("retrieval_test.json", gallery)):
        (root / "annotations" / name).write_text(json.dumps(content))
    return []


def write_coco():
    write_retrieval_set(cache_root() / "coco" / "annotations", cache_root() / "coco" / "images",
                        ["coco_karpathy_train.json", "coco_karpathy_val.json", "coco_karpathy_test.json"])
    return []


def write_flickr30k():
    write_retrieval_set(cache_root() / "flickr30k" / "annotations", cache_root() / "flickr30k" / "images",
                        ["train.json", "val.json", "test.json"])
    return []


def write_nlvr():
    """LAVIS's NLVR2 layout; its default images path is LAVIS's authors' own, so the storage path is given."""
    images = cache_root() / "nlvr" / "images"
    write_random_images(images, [f"{i}.png" for i in range(8)])
    (cache_root() / "nlvr" / "annotations").mkdir(parents=True, exist_ok=True)
    items = [{"images": [f"{i}.png", f"{(i + 1) % 8}.png"], "sentence": f"the left image shows shape {i}",
              "label": "True" if i % 2 else "False"} for i in range(8)]
    for name in ("train.json", "dev.json", "test.json"):
        (cache_root() / "nlvr" / "annotations" / name).write_text(json.dumps(items))
    return [f"datasets.nlvr.build_info.images.storage={images}"]


def write_coco_vqa():
    """Twelve questions in LAVIS's coco_vqa layout, with the answer list and the VQA evaluator's files."""
    root = cache_root() / "coco"
    write_random_images(root / "images", [f"val2014/{i:03d}.jpg" for i in range(6)])
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    answers = ["red", "blue", "yes", "no"]
    questions = [{"question_id": 500 + i, "image": f"val2014/{i % 6:03d}.jpg", "image_id": i % 6,
                  "question": "what color is it?" if i % 2 else "is there a shape?",
                  "answer": [answers[i % 2]] * 3 if i % 2 else ["yes"] * 2 + ["no"]} for i in range(12)]
    header = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014", "license": {}}
    coco_questions = [{"image_id": q["image_id"], "question": q["question"], "question_id": q["question_id"]}
                      for q in questions]
    coco_annotations = [{"image_id": q["image_id"], "question_id": q["question_id"], "question_type": "what",
                         "answer_type": "other" if q["question"].startswith("what") else "yes/no",
                         "multiple_choice_answer": q["answer"][0],
                         "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(q["answer"] * 4)][:10]}
                        for q in questions]
    files = {"vqa_train.json": questions[:8], "vqa_val.json": questions[8:], "vqa_val_eval.json": questions,
             "answer_list.json": answers, "vqa_test.json": questions[:4],
             "v2_OpenEnded_mscoco_val2014_questions.json": {**header, "questions": coco_questions},
             "v2_mscoco_val2014_annotations.json": {**header, "annotations": coco_annotations}}
    for name, content in files.items():
        (root / "annotations" / name).write_text(json.dumps(content))
    return []
