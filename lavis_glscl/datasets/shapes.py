"""A deterministic, compositional "shapes" image-caption set (and a video-caption set): the embedded demo data.

Each image shows two objects (size x colour x shape) in a spatial relation, e.g. "a small red circle
to the left of a large blue square".  The test split comes in pairs whose captions differ in exactly
one word (a colour, a shape, a size, or the direction of the relation), so matching needs more than a
bag of attributes.  Beside every image, ``pkls/<name>.pkl`` holds the ALIGN-BENCH record
``{"caption", "annotation": {phrase: [{"bbox_mask": [x1, y1, x2, y2], "pixel_mask": bool [H, W]}]}}``.

Layout of a generated set (written once into the cache, atomically, then reused)::

    images/{train,test}_NNNNN.png   pkls/{train,test}_NNNNN.pkl
    train.json  [{"image", "caption", "image_id"}]       (training pairs)
    test.json   [{"image", "caption": [str]}]            (LAVIS retrieval evaluation format)
    test_hard_pairs.json  [[i, j], ...]                  (test items whose captions differ in one word)

The video set shows one object moving across the frame ("a small red circle moves to the left"), 8, 12 or 16
frames per clip, written as mp4 (MPEG-4 part 2, which OpenCV writes and decord reads).  The object crosses
``VIDEO_TRAVEL`` of the free width, so the 4 frames the eval processor takes from a 64 px clip are 9-15 px apart:
at least one 8 px patch (version 2 moved 4-12 px, about half a 16 px patch).  The video demo draws its clips at
32 px, 4.4-7.3 px apart: 16 patches a frame, where a ViT trained from scratch on the direction label learns it in
300 steps (at 64 px, 64 patches a frame, it stays at chance: README "Video that knows time").  Its test split comes
in pairs where one clip is the other played backwards: the same frames, opposite captions ("to the left" / "to the
right"), so only a model that uses frame order can tell them apart::

    videos/{train,test}_NNNNN.mp4   train.json  test.json  test_hard_pairs.json  (same formats, key "video")
"""
import functools
import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw

from lavis_glscl.datasets.cache import ensure_cached
from lavis_glscl.paths import cache_dir

GENERATOR_VERSION = 2  # of the image set (and the ALIGN-BENCH mini bench drawn with it)
VIDEO_GENERATOR_VERSION = 3  # 3: objects cross 80-100 % of the free width in 8/12/16 frames (2: 45-70 %, 8-16)

COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.10, "large": 0.18}  # half-extent as a fraction of the image side
RELATIONS = ("to the left of", "to the right of", "above", "below")
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}
DIRECTIONS = {"to the left": (-1, 0), "to the right": (1, 0), "up": (0, -1), "down": (0, 1)}
REVERSED = {"to the left": "to the right", "to the right": "to the left", "up": "down", "down": "up"}
VIDEO_TRAVEL = (0.8, 1.0)  # range of the fraction of the free width (side minus object) a clip's object crosses
CLIP_LENGTHS = (8, 12, 16)  # multiples of 4: the 4 frames of the segment middles are evenly spaced in time


class ShapeObject(NamedTuple):
    size: str
    color: str
    shape: str

    @property
    def phrase(self) -> str:
        return " ".join(self)


@dataclass(frozen=True)
class Scene:
    first: ShapeObject
    relation: str
    second: ShapeObject

    @property
    def caption(self) -> str:
        return f"a {self.first.phrase} {self.relation} a {self.second.phrase}"


def random_object(rng: np.random.RandomState) -> ShapeObject:
    return ShapeObject(rng.choice(list(SIZES)), rng.choice(list(COLORS)), rng.choice(SHAPES))


def random_scene(rng: np.random.RandomState) -> Scene:
    first = random_object(rng)
    second = random_object(rng)
    while second == first:
        second = random_object(rng)
    return Scene(first, rng.choice(RELATIONS), second)


def one_word_variant(scene: Scene, rng: np.random.RandomState) -> Scene:
    """A scene whose caption differs from ``scene``'s in exactly one word."""
    while True:
        kind = rng.choice(["relation", "size", "color", "shape"])
        if kind == "relation":
            return Scene(scene.first, OPPOSITE[scene.relation], scene.second)
        which = rng.choice(["first", "second"])
        target = getattr(scene, which)
        options = {"size": list(SIZES), "color": list(COLORS), "shape": list(SHAPES)}[kind]
        value = rng.choice([o for o in options if o != getattr(target, kind)])
        changed = target._replace(**{kind: value})
        variant = Scene(changed, scene.relation, scene.second) if which == "first" else Scene(
            scene.first, scene.relation, changed)
        if variant.first != variant.second:
            return variant


def _polygon(shape: str, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    raise ValueError(shape)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def _place(scene: Scene, size: int, rng: np.random.RandomState) -> List[Tuple[float, float, float]]:
    """Centres and half-extents ``(cx, cy, r)`` for the two objects that make the relation clearly true."""
    radii = [SIZES[scene.first.size] * size, SIZES[scene.second.size] * size]
    while True:
        centres = [(rng.uniform(r, size - r), rng.uniform(r, size - r)) for r in radii]
        dx = centres[1][0] - centres[0][0]  # second minus first: first is left of second when dx > 0
        dy = centres[1][1] - centres[0][1]
        gap = radii[0] + radii[1] + 0.04 * size
        along, across = {"to the left of": (dx, dy), "to the right of": (-dx, dy), "above": (dy, dx),
                         "below": (-dy, dx)}[scene.relation]
        if along > gap and abs(across) < 0.5 * along:
            return [(cx, cy, r) for (cx, cy), r in zip(centres, radii)]


def render(scene: Scene, size: int, rng: np.random.RandomState):
    """The RGB image ``[size, size, 3]`` and each object's ``(phrase, box, pixel mask)``."""
    background = tuple(int(v) for v in rng.randint(15, 70, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    regions = []
    for obj, (cx, cy, r) in zip((scene.first, scene.second), _place(scene, size, rng)):
        _draw(draw, obj.shape, cx, cy, r, COLORS[obj.color])
        mask_image = Image.new("L", (size, size), 0)
        _draw(ImageDraw.Draw(mask_image), obj.shape, cx, cy, r, 255)
        mask = np.asarray(mask_image) > 0
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        regions.append((obj.phrase, box, mask))
    pixels = np.asarray(image, dtype=np.int16) + rng.randint(-6, 7, size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), regions


def _write_item(root: Path, name: str, scene: Scene, size: int, rng: np.random.RandomState) -> str:
    pixels, regions = render(scene, size, rng)
    Image.fromarray(pixels).save(root / "images" / f"{name}.png")
    record = {"caption": scene.caption,
              "annotation": {phrase: [{"bbox_mask": box, "pixel_mask": mask}] for phrase, box, mask in regions}}
    with open(root / "pkls" / f"{name}.pkl", "wb") as handle:
        pickle.dump(record, handle)
    return f"images/{name}.png"


def _test_scenes(num_test: int, rng: np.random.RandomState) -> Tuple[List[Scene], List[List[int]]]:
    scenes, pairs, seen = [], [], set()
    while len(scenes) + 1 < num_test:
        scene = random_scene(rng)
        variant = one_word_variant(scene, rng)
        if scene.caption in seen or variant.caption in seen:
            continue
        seen.update([scene.caption, variant.caption])
        pairs.append([len(scenes), len(scenes) + 1])
        scenes.extend([scene, variant])
    while len(scenes) < num_test:
        scene = random_scene(rng)
        if scene.caption not in seen:
            seen.add(scene.caption)
            scenes.append(scene)
    return scenes, pairs


def generate_images(root: Path, num_train: int, num_test: int, image_size: int, seed: int, num_val: int = 0) -> None:
    """Write a complete image set into the empty directory ``root``.  The validation split (``num_val`` images, drawn
    as the test split is, with its own one-word pairs) comes after everything else, so that adding it leaves the train
    and test splits as they were."""
    rng = np.random.RandomState(seed)
    (root / "images").mkdir()
    (root / "pkls").mkdir()
    train = []
    for index in range(num_train):
        scene = random_scene(rng)
        name = f"train_{index:05d}"
        train.append({"image": _write_item(root, name, scene, image_size, rng), "caption": scene.caption,
                      "image_id": name})
    splits = {}
    for split, count in (("test", num_test), ("val", num_val)):
        if count:
            scenes, pairs = _test_scenes(count, rng)
            splits[split] = ([{"image": _write_item(root, f"{split}_{i:05d}", scene, image_size, rng),
                               "caption": [scene.caption]} for i, scene in enumerate(scenes)], pairs)
    _write_splits(root, train, splits)


def motion_caption(obj: ShapeObject, direction: str) -> str:
    return f"a {obj.phrase} moves {direction}"


def render_clip(obj: ShapeObject, direction: str, size: int, num_frames: int, rng: np.random.RandomState,
                travel_range: Tuple[float, float] = VIDEO_TRAVEL) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of ``obj`` crossing the frame in ``direction``: a fraction drawn from
    ``travel_range`` of the free width."""
    r = SIZES[obj.size] * size
    (dx, dy) = DIRECTIONS[direction]
    travel = rng.uniform(*travel_range) * (size - 2 * r)
    start_along = rng.uniform(r, size - r - travel)
    across = rng.uniform(r, size - r)
    background = tuple(int(v) for v in rng.randint(15, 70, size=3))
    frames = []
    for t in np.linspace(0.0, 1.0, num_frames):
        along = start_along + t * travel
        if dx + dy < 0:  # moving left or up: run the same path backwards
            along = size - along
        cx, cy = (along, across) if dx else (across, along)
        image = Image.new("RGB", (size, size), background)
        _draw(ImageDraw.Draw(image), obj.shape, cx, cy, r, COLORS[obj.color])
        pixels = np.asarray(image, dtype=np.int16) + rng.randint(-6, 7, size=(size, size, 3))
        frames.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_clip(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4 video {path}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def generate_videos(root: Path, num_train: int, num_test: int, image_size: int, seed: int,
                    clip_lengths: Sequence[int] = CLIP_LENGTHS) -> None:
    """Write a complete video set into the empty directory ``root``.  Training clips come in consecutive
    pairs, a clip and its time reversal, as the test pairs do (``train_batch_group_size: 2`` batches them
    together: each is the other's hardest negative)."""
    rng = np.random.RandomState(seed)
    (root / "videos").mkdir()
    train = []
    for _ in range(num_train // 2):
        obj, direction = random_object(rng), rng.choice(list(DIRECTIONS))
        clip = render_clip(obj, direction, image_size, int(rng.choice(clip_lengths)), rng)
        for frames, motion in ((clip, direction), (clip[::-1], REVERSED[direction])):
            name = f"train_{len(train):05d}"
            write_clip(root / "videos" / f"{name}.mp4", frames)
            train.append({"video": f"videos/{name}.mp4", "caption": motion_caption(obj, motion), "image_id": name})
    test, pairs, seen = [], [], set()
    while len(test) + 1 < num_test:
        obj, direction = random_object(rng), rng.choice(list(DIRECTIONS))
        captions = (motion_caption(obj, direction), motion_caption(obj, REVERSED[direction]))
        if seen & set(captions):
            continue
        seen.update(captions)
        clip = render_clip(obj, direction, image_size, int(rng.choice(clip_lengths)), rng)
        pairs.append([len(test), len(test) + 1])
        for caption, frames in zip(captions, (clip, clip[::-1])):
            name = f"test_{len(test):05d}"
            write_clip(root / "videos" / f"{name}.mp4", frames)
            test.append({"video": f"videos/{name}.mp4", "caption": [caption]})
    _write_splits(root, train, {"test": (test, pairs)})


def _write_splits(root: Path, train: list, evaluation: dict) -> None:
    """``train.json``, and per evaluation split ``<split>.json`` with its caption pairs ``<split>_hard_pairs.json``."""
    (root / "train.json").write_text(json.dumps(train))
    for split, (items, pairs) in evaluation.items():
        (root / f"{split}.json").write_text(json.dumps(items))
        (root / f"{split}_hard_pairs.json").write_text(json.dumps(pairs))


GENERATORS = {"images": generate_images, "videos": generate_videos}


def dataset_dir(kind: str = "images", num_train: int = 6000, num_test: int = 500, image_size: int = 64, seed: int = 0,
                num_val: int = 0, cache_root: Optional[Path] = None) -> Path:
    """Where the set of ``kind`` with these parameters lives (generated or not)."""
    if kind not in GENERATORS:
        raise ValueError(f"shapes kind must be one of {list(GENERATORS)}, got {kind!r}")
    if num_val and kind != "images":
        raise ValueError("num_val: only the shapes image set has a validation split")
    version = VIDEO_GENERATOR_VERSION if kind == "videos" else GENERATOR_VERSION
    # a set without a validation split keeps the key (and cache directory) it had before num_val existed
    key = json.dumps([version, kind, num_train, num_test, image_size, seed] + ([num_val] if num_val else []))
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return (cache_root or cache_dir()) / "shapes" / f"{kind}-v{version}-{digest}"


def ensure_generated(root: Path, kind: str = "images", num_train: int = 6000, num_test: int = 500,
                     image_size: int = 64, seed: int = 0, num_val: int = 0) -> Path:
    """Generate the set into ``root`` unless it is already complete there (:func:`ensure_cached`)."""
    if num_test < 2 or num_train < 1 or num_val == 1 or num_val < 0:
        raise ValueError("a shapes set needs num_train >= 1, num_test >= 2 and num_val 0 or >= 2")
    extra = {"num_val": num_val} if num_val else {}
    return ensure_cached(root, functools.partial(GENERATORS[kind], num_train=num_train, num_test=num_test,
                                                 image_size=image_size, seed=seed, **extra))
