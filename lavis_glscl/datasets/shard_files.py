"""The shard files: what a shard holds, its index, and reading its samples by seeking.

**Format** (webdataset's, as LAVIS's LAION builder reads it).  A shard is an uncompressed tar whose members sharing
a key (the name up to its first dot) form one sample: the media (``jpg``/``jpeg``/``png``/``webp``, or
``mp4``/``webm``/``avi``/``mkv``) and its captions, a ``json`` member whose ``"caption"`` is a string or a list of
strings (an ``"image_id"`` beside it marks samples that are never each other's negatives), else a ``txt`` member.
Each caption of a sample is one training *pair*.  ``python -m lavis_glscl.tools.make_shards`` writes such shards
and an ``index.json`` holding each shard's pair count; shards named by a brace pattern or a list of paths are
counted by reading their tar headers and captions once, on every rank, when the dataset is built.

A group of shards a reader opens together (:class:`ShardGroup`) keeps their tar headers and captions in memory,
never their media; a shard that does not open, or holds fewer pairs than its index says, has the missing pairs
marked for replacement.
"""
import hashlib
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from lavis_glscl.datasets.datasets import LOAD_ERRORS

INDEX_FORMAT = "lavis_glscl-shards-1"
MEDIA_EXTENSIONS = {"images": ("jpg", "jpeg", "png", "webp"), "videos": ("mp4", "webm", "avi", "mkv")}
READ_ERRORS = (*LOAD_ERRORS, tarfile.TarError)
Pair = Tuple[int, int, Optional[int]]  # (shard in its group, sample in its shard, caption of the sample or None)


@dataclass(frozen=True)
class ShardEntry:
    """One shard and how many pairs it holds (by its index, or counted)."""

    path: str
    pairs: int


def stable_id(value) -> int:
    """A non-negative int64 naming ``value`` the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "little") >> 1


def parse_captions(caption_json: Optional[bytes], caption_txt: Optional[bytes]) -> Tuple[List[str], Optional[str]]:
    """A sample's captions and image id from its ``json`` member (``caption``: str or list) or its ``txt``."""
    if caption_json is not None:
        try:
            meta = json.loads(caption_json)
        except ValueError:
            meta = {}
        if isinstance(meta, dict) and "caption" in meta:
            captions = meta["caption"]
            captions = [captions] if isinstance(captions, str) else captions if isinstance(captions, list) else []
            return [c for c in captions if isinstance(c, str)], meta.get("image_id")
    if caption_txt is not None:
        return [caption_txt.decode("utf-8", errors="replace")], None
    return [], None


class OpenShard:
    """A local tar shard opened for random access: its samples in tar order (members grouped by key) and their
    captions.  A truncated tar yields the samples before the damage."""

    def __init__(self, path: str):
        self.path = path
        self.tar = tarfile.open(path, mode="r:")
        self.samples: List[Tuple[str, Dict[str, tarfile.TarInfo]]] = []
        for info in self._members():
            key, extension = base_plus_ext(info.name) if info.isfile() else (None, None)
            if key is None:
                continue
            if not self.samples or self.samples[-1][0] != key:
                self.samples.append((key, {}))
            self.samples[-1][1][extension.lower()] = info
        self.captions: List[List[str]] = []
        self.image_ids: List[object] = []
        for key, members in self.samples:
            captions, image_id = parse_captions(self._read_optional(members.get("json")),
                                                self._read_optional(members.get("txt")))
            self.captions.append(captions)
            self.image_ids.append(image_id if image_id is not None else f"{path}/{key}")

    def _members(self) -> Iterator[tarfile.TarInfo]:
        try:
            yield from self.tar
        except tarfile.ReadError as error:
            logging.warning("shard %s is damaged after %d members (%s)", self.path, len(self.tar.members), error)

    def _read_optional(self, info: Optional[tarfile.TarInfo]) -> Optional[bytes]:
        if info is None:
            return None
        try:
            return self.read(info)
        except READ_ERRORS:
            return None

    def read(self, info: tarfile.TarInfo) -> bytes:
        return self.tar.extractfile(info).read()

    def pairs(self) -> List[Tuple[int, Optional[int]]]:
        """``(sample, caption)`` of every pair in tar order; ``caption`` None for a sample without captions."""
        return [(sample, caption) for sample, captions in enumerate(self.captions)
                for caption in (range(len(captions)) if captions else [None])]

    def close(self) -> None:
        self.tar.close()


def count_pairs(path: str) -> int:
    shard = OpenShard(path)
    try:
        return len(shard.pairs())
    finally:
        shard.close()


def read_index(path: str) -> List[ShardEntry]:
    """The shards listed by a ``make_shards`` index (paths relative to the index's folder)."""
    with open(path) as handle:
        index = json.load(handle)
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path} is not a shard index written by lavis_glscl.tools.make_shards "
                         f"(format {index.get('format')!r}, expected {INDEX_FORMAT!r})")
    folder = os.path.dirname(os.path.abspath(path))
    return [ShardEntry(os.path.normpath(os.path.join(folder, shard["path"])), int(shard["pairs"]))
            for shard in index["shards"]]


def shard_paths(storage) -> List[str]:
    """Tar paths of ``storage``: one path or brace pattern (``/data/{000000..000099}.tar``), or a list of them."""
    patterns = [storage] if isinstance(storage, str) else list(storage)
    return [path for pattern in patterns for path in expand_urls(pattern)]


def load_shard_list(storage) -> List[ShardEntry]:
    """``storage``: an ``index.json`` written by ``make_shards``, or shard paths/patterns (counted here, which reads
    every shard's headers and captions: write an index for large sets)."""
    if isinstance(storage, str) and storage.endswith(".json"):
        return read_index(storage)
    paths = shard_paths(storage)
    logging.info("counting the pairs of %d shards (an index from lavis_glscl.tools.make_shards --index-only "
                 "skips this)", len(paths))
    return [ShardEntry(path, count_pairs(path)) for path in paths]


class MemberBytes:
    """A shard member's bytes for a processor that opens a path or a file object (decord reads ``read()`` whole on
    every open, and a video processor may open a clip twice); prints as the member's name."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name = data, name

    def read(self, *_) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.name


class ShardGroup:
    """Shards a reader opens together, their pairs in one seeded order (``None`` for a pair the index counts but
    the shard does not hold)."""

    def __init__(self, entries: Sequence[ShardEntry], generator: torch.Generator):
        self.paths = [entry.path for entry in entries]
        self.shards: List[Optional[OpenShard]] = []
        pairs: List[Optional[Pair]] = []
        for number, entry in enumerate(entries):
            shard = self._open(entry)
            found = shard.pairs() if shard is not None else []
            if shard is not None and len(found) != entry.pairs:
                logging.warning("shard %s holds %d pairs, its index says %d: %s", entry.path, len(found), entry.pairs,
                                "the missing ones are replaced" if len(found) < entry.pairs else "the rest is not read")
            found = found[:entry.pairs]
            pairs += [(number, sample, caption) for sample, caption in found]
            pairs += [None] * (entry.pairs - len(found))
            self.shards.append(shard)
        self.pairs = [pairs[i] for i in torch.randperm(len(pairs), generator=generator).tolist()]

    @staticmethod
    def _open(entry: ShardEntry) -> Optional[OpenShard]:
        try:
            return OpenShard(entry.path)
        except (*READ_ERRORS, EOFError) as error:
            logging.warning("shard %s does not open (%s): its %d pairs are replaced", entry.path, error, entry.pairs)
            return None

    def __len__(self) -> int:
        return len(self.pairs)

    def close(self) -> None:
        for shard in self.shards:
            if shard is not None:
                shard.close()
