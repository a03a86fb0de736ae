"""Image- and video-caption training pairs streamed from webdataset tar shards, split over ranks and workers.

The shard format and index: :mod:`lavis_glscl.datasets.shard_files`.

**An epoch's stream** is a pure function of (seed, epoch), given R ranks, W DataLoader workers per rank
(``num_workers: 0`` counts as one) and the batch size B:

- *Readers.* Worker ``w`` of rank ``r`` is reader ``s = r * W + w`` of ``S = R * W``; it reads only its shards.
- *Passes.* Pass ``p`` permutes the shards by (seed, epoch, dataset, p); reader ``s`` is dealt shards ``s, s + S,
  ...`` of the permutation, ``num_shards // S`` of them, and streams exactly ``L`` pairs of them, ``L`` being the
  fewest pairs any reader can be dealt.  So a pass holds ``S * L`` pairs, each at most once, at most one shard's
  worth per reader short of the set; a reader that needs more continues with pass ``p + 1``.
- *Mixing.* A reader opens its shards ``shuffle_shards`` at a time and streams their pairs in an order permuted by
  (seed, epoch, dataset, pass, reader, group).  Members are read by seeking (local files), so a group keeps its tar
  headers and captions in memory, never its media.
- *Batches.* A reader cuts its stream into batches of B pairs; a rank's DataLoader takes its workers' batches in
  turn, so the rank's batch ``n`` of this dataset is batch ``n // W`` of worker ``n % W``.
- *Augmentations* draw from generators seeded per stream position, not from the process's generators.

**Resuming** at step i: the step schedule says how many batches ``n`` each rank drew from this dataset; each worker
skips the pairs its own batches held (whole shard groups by their counts, then positions inside the group, nothing
decoded) and the workers' turn order is rotated so that batch ``n`` comes first.  A run resumed with the same ranks,
workers and batch size therefore continues exactly: no pair repeated, none skipped.  With another layout a
mid-epoch checkpoint is refused (``TrainBatches.check_resumable``); an epoch-end checkpoint resumes with any.
Unlike the map-style batches, the stream is not world-size invariant: each rank reads its own shards, which is the
point at scale.

**Bad input.**  A pair whose media does not decode, whose caption is empty after text processing, or whose sample
lacks media or captions, is replaced by the next good pair of its group and the sample carries ``num_skipped = 1``,
as the map-style datasets do with unreadable files.  A shard that does not open, or holds fewer pairs than its index
says, has its missing pairs replaced the same way (and a warning); pairs beyond its index count are not read.  A group
without one good pair (or 100 pairs in a row that do not decode) stops the run, as 100 unreadable files in a row stop
a map-style one.
"""
import io
import logging
from itertools import islice
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torch.utils.data.dataloader import default_collate

from lavis_glscl.datasets.datasets import ABSENT, first_readable, load_rgb
from lavis_glscl.datasets.shard_files import (
    MEDIA_EXTENSIONS,
    READ_ERRORS,
    MemberBytes,
    Pair,
    ShardEntry,
    ShardGroup,
    stable_id,
)
from lavis_glscl.seeding import Salt, mixed_seed, seeded_generator, seeded_global_draws


class ShardedCaptionPairs(IterableDataset):
    """Caption pairs from webdataset shards (see the module docstring).  Iterating it directly streams one pass as
    one reader (seed 0, epoch 0); training reads it through :meth:`rank_batches`.

    Samples: the processed media under ``media_key``, ``text_input``, ``image_id`` (int64; pairs of one sample, or
    of one json ``image_id``, share it), ``instance_id`` (``<shard>/<key>#<caption>``) and ``num_skipped``.
    """

    media_key = "image"
    media_kind = "images"
    max_replacements = 100

    def __init__(self, shards: Sequence[ShardEntry], vis_processor=None, text_processor=None, shuffle_shards: int = 4):
        if not shards:
            raise ValueError("no shards to read")
        if shuffle_shards < 1:
            raise ValueError(f"shuffle_shards must be at least 1, got {shuffle_shards}")
        self.shards = list(shards)
        self.vis_processor, self.text_processor = vis_processor, text_processor
        self.shuffle_shards = int(shuffle_shards)
        self.dropped: Dict[str, List[str]] = {}  # nothing is dropped up front: bad pairs are replaced and counted

    def __len__(self) -> int:
        return sum(entry.pairs for entry in self.shards)

    def collater(self, samples: List[dict]) -> dict:
        return default_collate(samples)

    # ------------------------------------------------------------------ the layout of an epoch
    def pass_length(self, readers: int) -> int:
        """``L``: the pairs every one of ``readers`` streams per pass."""
        per_reader = len(self.shards) // readers
        if per_reader < 1:
            raise ValueError(f"{len(self.shards)} shards cannot feed {readers} readers (ranks x workers): write at "
                             "least one shard per reader (make_shards --samples-per-shard) or use fewer workers")
        return sum(sorted(entry.pairs for entry in self.shards)[:per_reader])

    def batches_per_pass(self, batch_size: int, world_size: int = 1, num_workers: int = 0) -> int:
        """Batches a rank draws in a pass without any of its readers entering the next one."""
        workers = max(1, num_workers)
        return workers * (self.pass_length(world_size * workers) // batch_size)

    def reader_shards(self, seed: int, epoch: int, dataset_index: int, pass_index: int, reader: int,
                      readers: int) -> List[ShardEntry]:
        order = torch.randperm(len(self.shards), generator=seeded_generator(seed, epoch, dataset_index, pass_index,
                                                                          Salt.SHARD_ORDER))
        dealt = order[reader::readers][:len(self.shards) // readers]
        return [self.shards[i] for i in dealt.tolist()]

    def reader_pairs(self, seed: int, epoch: int, dataset_index: int, reader: int, readers: int,
                     start: int = 0) -> Iterator[dict]:
        """Reader ``reader``'s samples from stream position ``start`` on, pass after pass (endless)."""
        length = self.pass_length(readers)
        pass_index, offset = divmod(start, length)
        while True:
            yield from self._pass_pairs(seed, epoch, dataset_index, pass_index, reader, readers, offset, length)
            pass_index, offset = pass_index + 1, 0

    def _pass_pairs(self, seed, epoch, dataset_index, pass_index, reader, readers, offset, length):
        entries = self.reader_shards(seed, epoch, dataset_index, pass_index, reader, readers)
        group_start = 0
        for group_index, first in enumerate(range(0, len(entries), self.shuffle_shards)):
            group_entries = entries[first:first + self.shuffle_shards]
            size = min(sum(entry.pairs for entry in group_entries), length - group_start)
            if offset < group_start + size:
                group = ShardGroup(group_entries, seeded_generator(seed, epoch, dataset_index, pass_index, reader,
                                                                   group_index, Salt.SHARD_GROUP))
                try:
                    for position in range(max(0, offset - group_start), size):
                        stream_position = pass_index * length + group_start + position
                        yield self._sample(group, position, mixed_seed(seed, epoch, dataset_index, reader,
                                                                       stream_position, Salt.SHARD_PAIR))
                finally:
                    group.close()
            group_start += size
            if group_start >= length:
                return

    def rank_batches(self, batch_size: int, rank: int, world_size: int, num_workers: int, seed: int, epoch: int,
                     dataset_index: int = 0, start_batch: int = 0) -> "RankBatches":
        return RankBatches(self, batch_size, rank, world_size, num_workers, seed, epoch, dataset_index, start_batch)

    def __iter__(self) -> Iterator[dict]:
        return islice(self.reader_pairs(0, 0, 0, 0, 1), self.pass_length(1))

    # ------------------------------------------------------------------ one pair
    def _sample(self, group: ShardGroup, position: int, seed: int) -> dict:
        """The pair at ``position`` of ``group``, or the next good one after it (``num_skipped`` = 1)."""
        def load(step: int):
            pair = group.pairs[(position + step) % len(group)]
            return ABSENT if pair is None else self._decode(group, pair, seed)

        return first_readable(load, len(group), self.max_replacements,
                              lambda failures: f"no readable pair in shards {group.paths} from position {position} on "
                                               f"({failures} did not decode): repair them or leave them out of the "
                                               "index")

    def _decode(self, group: ShardGroup, pair: Pair, seed: int) -> Optional[dict]:
        number, sample_index, caption_index = pair
        shard = group.shards[number]
        key, members = shard.samples[sample_index]
        name = f"{shard.path}/{key}"
        media = next((members[ext] for ext in MEDIA_EXTENSIONS[self.media_kind] if ext in members), None)
        if media is None or caption_index is None:
            logging.warning("skipping %s: no %s", name, "caption" if media is not None else self.media_key)
            return None
        try:
            with seeded_global_draws(seed):
                caption = shard.captions[sample_index][caption_index]
                text = self.text_processor(caption) if self.text_processor else caption
                if not text.strip():
                    logging.warning("skipping %s: empty caption %r", name, caption)
                    return None
                loaded = self.load_media(shard.read(media), f"{name}.{media.name.rsplit('.', 1)[-1]}")
        except READ_ERRORS as error:
            logging.warning("skipping unreadable %s %s (%s)", self.media_key, name, error)
            return None
        return {self.media_key: loaded, "text_input": text, "image_id": stable_id(shard.image_ids[sample_index]),
                "instance_id": f"{name}#{caption_index}"}

    def load_media(self, data: bytes, name: str):
        image = load_rgb(io.BytesIO(data))
        return self.vis_processor(image) if self.vis_processor else image


class ShardedVideoCaptionPairs(ShardedCaptionPairs):
    """Video-caption pairs from shards (``mp4`` + ``txt``/``json``); the video processor receives the clip's bytes as
    a file object (decord opens it as it opens a path)."""

    media_key = "video"
    media_kind = "videos"

    def load_media(self, data: bytes, name: str):
        return self.vis_processor(MemberBytes(data, name))


class RankBatches(IterableDataset):
    """One rank's collated batches of a sharded dataset in one epoch, from batch ``start_batch`` on (endless), for a
    DataLoader with ``batch_size=None`` and ``num_workers`` workers: batch ``n`` is batch ``n // W`` of worker
    ``n % W`` (see the module docstring); after a resume, worker ``j`` plays worker ``(j + start_batch) % W``."""

    def __init__(self, dataset: ShardedCaptionPairs, batch_size: int, rank: int, world_size: int, num_workers: int,
                 seed: int, epoch: int, dataset_index: int, start_batch: int):
        self.dataset, self.batch_size = dataset, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        self.seed, self.epoch, self.dataset_index, self.start_batch = seed, epoch, dataset_index, start_batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if (info.num_workers if info else 1) != self.workers:
            raise RuntimeError(f"RankBatches was laid out for {self.workers} workers and runs in "
                               f"{info.num_workers if info else 1}")
        worker = ((info.id if info else 0) + self.start_batch) % self.workers
        batches_done = len(range(worker, self.start_batch, self.workers))
        pairs = self.dataset.reader_pairs(self.seed, self.epoch, self.dataset_index,
                                          reader=self.rank * self.workers + worker,
                                          readers=self.world_size * self.workers,
                                          start=batches_done * self.batch_size)
        while True:
            yield self.dataset.collater([next(pairs) for _ in range(self.batch_size)])
