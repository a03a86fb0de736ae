"""A deterministic, compositional "shapes" image-caption set: the embedded demo data.

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
"""
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from lavis_glscl.paths import cache_dir

GENERATOR_VERSION = 1

COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.10, "large": 0.18}  # half-extent as a fraction of the image side
RELATIONS = ("to the left of", "to the right of", "above", "below")
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}


@dataclass(frozen=True)
class ShapeObject:
    size: str
    color: str
    shape: str

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


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
        changed = ShapeObject(**{**target.__dict__, kind: value})
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


def generate(root: Path, num_train: int, num_test: int, image_size: int, seed: int) -> None:
    """Write a complete shapes set into the (new) directory ``root``."""
    rng = np.random.RandomState(seed)
    (root / "images").mkdir(parents=True)
    (root / "pkls").mkdir()
    train = []
    for index in range(num_train):
        scene = random_scene(rng)
        name = f"train_{index:05d}"
        train.append({"image": _write_item(root, name, scene, image_size, rng), "caption": scene.caption,
                      "image_id": name})
    scenes, pairs = _test_scenes(num_test, rng)
    test = [{"image": _write_item(root, f"test_{i:05d}", scene, image_size, rng), "caption": [scene.caption]}
            for i, scene in enumerate(scenes)]
    for name, content in (("train.json", train), ("test.json", test), ("test_hard_pairs.json", pairs)):
        (root / name).write_text(json.dumps(content))


def dataset_dir(num_train: int = 6000, num_test: int = 500, image_size: int = 64, seed: int = 0,
                cache_root: Optional[Path] = None) -> Path:
    """Where the set with these parameters lives (generated or not)."""
    key = json.dumps([GENERATOR_VERSION, num_train, num_test, image_size, seed])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return (cache_root or cache_dir()) / "shapes" / f"v{GENERATOR_VERSION}-{digest}"


def ensure_generated(root: Path, num_train: int = 6000, num_test: int = 500, image_size: int = 64,
                     seed: int = 0) -> Path:
    """Generate the set into ``root`` unless it is already complete there; safe against concurrent callers."""
    if (root / "test.json").is_file():
        return root
    if num_test < 2 or num_train < 1:
        raise ValueError("the shapes set needs num_train >= 1 and num_test >= 2")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        generate(staging / "set", num_train, num_test, image_size, seed)
        try:
            os.rename(staging / "set", root)
        except OSError:
            if not (root / "test.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
