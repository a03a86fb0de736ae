"""Convert local caption pairs into the webdataset shards that ``glscl_image_text``/``glscl_video_text`` type
``wds`` stream (:mod:`lavis_glscl.datasets.shards`)::

    python -m lavis_glscl.tools.make_shards --ann train.json [--ann more.json ...] --media-root images/ --out shards/
    python -m lavis_glscl.tools.make_shards --dataset vg_caption --out shards/vg   # a registered builder's train split
    python -m lavis_glscl.tools.make_shards --index-only "shards/{000000..000099}.tar" --out shards/   # index only

Annotations: json lists of ``{"image"|"video": path under --media-root, "caption": str or [str, ...], "image_id":
optional}``, i.e. the ``glscl_image_text``/``glscl_video_text`` layout and LAVIS's ``coco_karpathy_train``,
``vg_caption``, ``sbu`` and ``cc3m`` files alike.  Entries naming the same media file become one sample holding all
their captions (the media stored once, each caption still one training pair).  Samples are written in an order
shuffled by ``--seed`` (each shard a random subset of the corpus, which the loader's shard mixing relies on),
``--samples-per-shard`` per shard and at most ``--max-shard-mb``.  The same inputs give byte-identical shards.

Skipped, counted and reported: missing files, images PIL cannot open, empty captions (and samples left with none).
Videos are only checked to exist and be non-empty; the loader replaces undecodable ones during training.

Writes ``<out>/shard-000000.tar, ...`` and, last, ``<out>/index.json`` (each shard's sample and pair counts): point
``build_info.shards.storage`` at the index.  ``--index-only`` writes the index of existing shards (e.g. from
img2dataset) so that the ranks need not count them at every start.
"""
import argparse
import io
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image
from tqdm import tqdm
from webdataset import TarWriter

from lavis_glscl.datasets.shard_files import INDEX_FORMAT, MEDIA_EXTENSIONS, OpenShard, shard_paths

MEDIA_KEYS = {"images": "image", "videos": "video"}
SHARD_NAME = "shard-{:06d}.tar"


@dataclass
class Sample:
    """One media file and every caption given for it."""

    media: str
    captions: List[str] = field(default_factory=list)
    image_id: Optional[str] = None


def group_annotations(annotations: Sequence[dict], media_key: str) -> List[Sample]:
    """Annotations → one :class:`Sample` per media file (first-seen order), captions in annotation order."""
    samples: Dict[str, Sample] = {}
    for ann in annotations:
        captions = ann.get("caption")
        captions = [captions] if isinstance(captions, str) else list(captions or [])
        sample = samples.setdefault(ann[media_key], Sample(ann[media_key]))
        sample.captions += captions
        if sample.image_id is None and ann.get("image_id") is not None:
            sample.image_id = str(ann["image_id"])
    return list(samples.values())


def media_problem(path: str, kind: str) -> Optional[str]:
    """Why ``path`` cannot be a training sample, or None."""
    if not os.path.isfile(path):
        return "missing file"
    if kind == "videos":
        if Path(path).suffix.lower().lstrip(".") not in MEDIA_EXTENSIONS[kind]:
            return "unsupported video format"
        return "empty file" if os.path.getsize(path) == 0 else None
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError):
        return "unreadable file"
    return None


def media_member(path: str, kind: str) -> Tuple[str, bytes]:
    """``(extension, bytes)`` to store: the file as it is, or, for an image format the loader does not read, as PNG."""
    extension = Path(path).suffix.lower().lstrip(".")
    if extension in MEDIA_EXTENSIONS[kind]:
        return extension, Path(path).read_bytes()
    with Image.open(path) as image:
        encoded = io.BytesIO()
        image.convert("RGB").save(encoded, format="PNG")
    return "png", encoded.getvalue()


def write_shards(samples: Sequence[Sample], media_root: str, out: Path, kind: str, samples_per_shard: int,
                 max_shard_bytes: int, skipped: Counter) -> List[dict]:
    """Write ``samples`` into shards under ``out``; returns the index's shard entries and counts what it skips."""
    shards: List[dict] = []
    writer, current, written = None, None, 0
    try:
        for sample in tqdm(samples, desc="make_shards", unit="sample", file=sys.stderr):
            captions = [caption for caption in sample.captions if caption.strip()]
            if len(captions) < len(sample.captions):
                skipped["empty caption"] += len(sample.captions) - len(captions)
            path = os.path.join(media_root, sample.media)
            problem = "no usable caption" if not captions else media_problem(path, kind)
            if problem:
                skipped[problem] += 1
                continue
            if writer is None or current["samples"] >= samples_per_shard or current["bytes"] >= max_shard_bytes:
                if writer is not None:
                    writer.close()
                current = {"path": SHARD_NAME.format(len(shards)), "samples": 0, "pairs": 0, "bytes": 0}
                shards.append(current)
                writer = TarWriter(str(out / current["path"]), mtime=0.0)
            extension, data = media_member(path, kind)
            meta = {"caption": captions, "image_id": sample.image_id or sample.media, "source": sample.media}
            current["bytes"] += writer.write({"__key__": f"{written:09d}", extension: data,
                                              "json": json.dumps(meta).encode("utf-8")})
            written += 1
            current["samples"] += 1
            current["pairs"] += len(captions)
    finally:
        if writer is not None:
            writer.close()
    return [{k: shard[k] for k in ("path", "samples", "pairs")} for shard in shards]


def write_index(out: Path, kind: str, shards: List[dict]) -> Path:
    """``out/index.json``, written atomically: its presence says the shard set is complete."""
    index = {"format": INDEX_FORMAT, "media": kind, "samples": sum(s["samples"] for s in shards),
             "pairs": sum(s["pairs"] for s in shards), "shards": shards}
    path = out / "index.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(index, indent=1))
    os.replace(temporary, path)
    return path


def index_existing(pattern: str, out: Path) -> List[dict]:
    """Index entries of existing shards (paths relative to ``out`` where they lie under it)."""
    entries = []
    for path in tqdm(shard_paths(pattern), desc="counting", unit="shard", file=sys.stderr):
        shard = OpenShard(path)
        try:
            entries.append({"path": os.path.relpath(os.path.abspath(path), out.resolve()),
                            "samples": len(shard.samples), "pairs": len(shard.pairs())})
        finally:
            shard.close()
    return entries


def builder_train_split(name: str, dataset_type: str) -> Tuple[List[str], str, str]:
    """``(annotation files, media root, media kind)`` of a registered builder's train split, from its default config
    (relative paths under ``cache_root``); lavis_glscl's own builders check or generate their files first."""
    from lavis.common.registry import registry
    from lavis.datasets.builders.base_dataset_builder import load_dataset_config

    import lavis_glscl  # noqa: F401  (registers the builders, fixes cache_root)
    from lavis_glscl.datasets.builders import LocalFilesBuilder, absolute_storage, storage_list

    builder_cls = registry.get_builder_class(name)
    if builder_cls is None:
        raise KeyError(f"no dataset builder named {name!r}")
    builder = builder_cls(load_dataset_config(builder_cls.default_config_path(dataset_type)))
    if isinstance(builder, LocalFilesBuilder):
        builder._download_data()
    info = builder.config.build_info
    annotations = [absolute_storage(path) for path in storage_list(info.annotations.train.storage)]
    missing = [path for path in annotations if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{name}'s train annotations are not there: place {missing} (nothing is downloaded)")
    return annotations, absolute_storage(info.get(builder.data_type).storage), builder.data_type


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ann", action="append", help="annotation json (repeatable)")
    source.add_argument("--dataset", help="a registered builder whose train split to convert, e.g. coco_caption")
    source.add_argument("--index-only", metavar="SHARDS", help="write the index of existing shards (brace pattern)")
    parser.add_argument("--type", default="default", help="the builder's type with --dataset")
    parser.add_argument("--media-root", help="folder the annotations' paths are relative to (with --ann)")
    parser.add_argument("--media", choices=sorted(MEDIA_KEYS), default="images", help="with --ann")
    parser.add_argument("--out", help="output folder (default with --dataset: <cache_root>/shards/<dataset>)")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--max-shard-mb", type=float, default=1024.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order")
    args = parser.parse_args(argv)
    if args.ann and not args.media_root:
        parser.error("--ann needs --media-root")
    if not args.out and not args.dataset:
        parser.error("--out is required unless --dataset is given")
    return args


def main(argv: Optional[List[str]] = None) -> dict:
    """Run the conversion; returns what it printed last as a dict (written index, counts, skips)."""
    args = parse_args(argv)
    if args.dataset:
        annotation_files, media_root, kind = builder_train_split(args.dataset, args.type)
        if not args.out:
            from lavis.common.utils import get_cache_path
            args.out = get_cache_path(f"shards/{args.dataset}" + ("" if args.type == "default" else f"_{args.type}"))
    else:
        annotation_files, media_root, kind = args.ann, args.media_root, args.media
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    if args.index_only:
        shards, kind = index_existing(args.index_only, out), args.media
    else:
        annotations = [ann for path in annotation_files for ann in json.loads(Path(path).read_text())]
        samples = group_annotations(annotations, MEDIA_KEYS[kind])
        random.Random(args.seed).shuffle(samples)
        shards = write_shards(samples, media_root, out, kind, args.samples_per_shard,
                              int(args.max_shard_mb * 2 ** 20), skipped)
    if not shards:
        sys.exit(f"make_shards: nothing to write ({dict(skipped) or 'no annotations'})")
    index = write_index(out, kind, shards)
    summary = {"index": str(index), "shards": len(shards), "samples": sum(s["samples"] for s in shards),
               "pairs": sum(s["pairs"] for s in shards), "skipped": dict(skipped)}
    skips = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())) or "nothing"
    print(f"make_shards: {summary['samples']} samples, {summary['pairs']} pairs in {summary['shards']} shards; "
          f"skipped {skips}; index {index}")
    return summary


if __name__ == "__main__":
    main()
