"""The README's scaling note, derived: the released recipe's FLOPs and GPU-days, activation memory per GPU at
per-GPU batch 64 with and without checkpointing, and the shard storage of 4M images as 288 px JPEGs.

    python benchmarks/scaling.py [--jpeg-quality 90]

Inputs: ``flops.py``'s analytic count at the recipe's shapes; ``base_step.py``'s measured memory of ``base``
(``results/base_step_base.json``: run that first); the JPEG sizes of the colour photographs scikit-image ships,
resized to 288 px.  Every figure is printed with the arithmetic that gives it.

Assumptions, each printed where it is used: the recipe is ``base`` with RoBERTa's vocabulary (50,265) for the MLM
decoder, captions padded to 50 tokens as released, 18 real words per caption, 16 pairs per GPU on 8 GPUs per
micro-step (128 gathered, as released) and 100k steps of 4,096 pairs; GPU peaks are the dense bf16 spec-sheet
figures (A100 SXM 312 TFLOP/s, H100 SXM 989 TFLOP/s); activations scale linearly with the batch from the measured
batch, in fp32 (bf16 autocast keeps most of them in half the bytes; not measured here), plus the per-GPU similarity
matrices, which grow with its square.
"""
import argparse
import dataclasses
import io
import json

import flops
from common import RESULTS_DIR, save

STEPS, PAIRS_PER_STEP = 100_000, 4096
ROBERTA_VOCABULARY = 50_265
GPU_BF16_PEAK = {"A100": 312e12, "H100": 989e12}
UTILISATIONS = (0.35, 0.50)
PHOTOS = {  # scikit-image's colour photographs (not its microscopy or retina images)
    "astronaut": lambda data: data.astronaut(), "chelsea": lambda data: data.chelsea(),
    "coffee": lambda data: data.coffee(), "rocket": lambda data: data.rocket(),
    "motorcycle": lambda data: data.stereo_motorcycle()[0], "hubble_deep_field": lambda data: data.hubble_deep_field(),
}
IMAGES, CAPTIONS_PER_IMAGE, CAPTION_BYTES = 4_000_000, 2.4, 60
TAR_BLOCK = 512
MIB = 2 ** 20


def recipe_flops(config, per_gpu: int, gathered: int) -> dict:
    """Per-pair and whole-recipe FLOPs, plain and checkpointed, at ``per_gpu`` pairs and ``gathered`` rows."""
    arch = flops.architecture(config, ROBERTA_VOCABULARY)
    shapes = flops.base_recipe_batch(per_gpu, gathered)
    result = {}
    for checkpointing in (False, True):
        step = flops.total(flops.step_flops(arch, dataclasses.replace(config, grad_checkpointing=checkpointing),
                                            shapes))
        result["checkpointed" if checkpointing else "plain"] = {
            "model_per_pair": step.model / per_gpu, "executed_per_pair": step.executed / per_gpu,
            "forward_per_pair": step.forward / per_gpu}
    return result


def gpu_days(total_flops: float) -> dict:
    return {f"{gpu}@{int(100 * utilisation)}%": total_flops / (peak * utilisation) / 86400
            for gpu, peak in GPU_BF16_PEAK.items() for utilisation in UTILISATIONS}


def similarity_bytes(config, per_gpu: int, gathered: int, caption_words: int = 18) -> dict:
    """Bytes of the fp32 similarity matrices one GPU holds for backward: each contrastive loss keeps two ``T x T``
    log-softmaxes (rows and columns), ``T`` = the MLTC masked patches of the GPU (not gathered, as released) and
    the gathered MLTC masked words; ITC and MGSC are ``G x G``."""
    patches = (config.vision.image_size // config.vision.patch_size) ** 2
    masked_patches = per_gpu * int(patches * config.mltc_image_mask_ratio)
    masked_words = flops.mgsc_text_tokens([caption_words] * gathered, config.mgsc_text_mask_ratio,
                                          config.mgsc_text_mask_with_replacement)
    matrices = {"mltc_image": masked_patches, "mltc_text": masked_words, "itc": gathered, "mgsc_image": gathered,
                "mgsc_text": gathered}
    return {name: 2 * 4 * size ** 2 for name, size in matrices.items()}


def activation_memory(measured: dict, config, per_gpu: int, gathered: int) -> dict:
    """Activation memory at ``per_gpu`` pairs from base_step's measurements at its batch: what the graph holds after
    the forward, per pair, times ``per_gpu``, plus the similarity matrices; and what backward adds on top at its
    worst beyond the gradients (one fp32 copy of the parameters): the peak growth minus both, per pair.  Without
    checkpointing that is nothing (the peak comes while the activations are still held and the gradients not all
    there); with it, it is the recomputed layer's activations."""
    batch = measured["settings"]["batch"]
    gradients = 4 * measured["results"]["plain"]["parameters"] / MIB
    similarities = sum(similarity_bytes(config, per_gpu, gathered).values()) / MIB
    out = {"similarity_matrices_mib": similarities, "measured_batch": batch, "gradients_mib": gradients}
    for setting, row in measured["results"].items():
        held = row["activations_after_forward_mib"]
        backward_extra = max(0.0, row["peak_growth_mib"] - held - gradients)
        at_batch = (held + backward_extra) / batch * per_gpu + similarities
        out[setting] = {"held_per_pair_mib": held / batch, "backward_extra_per_pair_mib": backward_extra / batch,
                        "held_mib": held / batch * per_gpu + similarities, "peak_mib": at_batch}
    return out


def jpeg_sizes(quality: int, side: int = 288) -> dict:
    """Bytes of each photograph as a JPEG with its shorter side resized to ``side`` (aspect kept, bicubic), and of
    its centre ``side x side`` crop."""
    import numpy as np
    from PIL import Image
    from skimage import data

    sizes = {}
    for name, load in PHOTOS.items():
        image = Image.fromarray(np.asarray(load(data))).convert("RGB")
        scale = side / min(image.size)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        left, top = (resized.width - side) // 2, (resized.height - side) // 2
        square = resized.crop((left, top, left + side, top + side))
        encoded = {}
        for kind, picture in (("shorter_side", resized), ("square", square)):
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=quality)
            encoded[kind] = buffer.tell()
        sizes[name] = {"source": list(image.size), "resized": list(resized.size), **encoded}
    return sizes


def shard_storage(sizes: dict) -> dict:
    """4M samples in webdataset tars: per sample a ``jpg`` and a ``json`` member, each a 512-byte header plus its
    bytes padded to 512 (half a block on average), the json holding ~2.4 captions (9.85M captions over 4.1M images in
    the 4M set) of ~60 bytes and an image id."""
    json_bytes = CAPTIONS_PER_IMAGE * (CAPTION_BYTES + 4) + 40
    overhead = 2 * (TAR_BLOCK + TAR_BLOCK / 2) + json_bytes
    out = {"tar_and_caption_bytes_per_sample": overhead}
    for kind in ("shorter_side", "square"):
        each = [size[kind] for size in sizes.values()]
        mean = sum(each) / len(each)
        out[kind] = {"mean_jpeg_bytes": mean, "min_jpeg_bytes": min(each), "max_jpeg_bytes": max(each),
                     "total_gb": IMAGES * (mean + overhead) / 1e9}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--measured-type", default="base", help="model type whose base_step results to extrapolate")
    args = parser.parse_args()
    import lavis_glscl  # noqa: F401  (registers the models)

    config = flops.model_config("base")
    released = recipe_flops(config, 16, 128)
    per_gpu_64 = recipe_flops(config, 64, 512)
    print(f"FLOPs of the released recipe ({STEPS:,} steps x {PAIRS_PER_STEP:,} pairs; RoBERTa vocabulary, captions "
          f"padded to 50, 16 pairs per GPU x 8 GPUs per micro-step):")
    totals = {}
    for setting, row in released.items():
        total = STEPS * PAIRS_PER_STEP * row["executed_per_pair"]
        totals[setting] = {"flops": total, "gpu_days": gpu_days(total)}
        print(f"  {setting:13s} {row['executed_per_pair'] / 1e9:7.1f} GFLOP per pair (forward "
              f"{row['forward_per_pair'] / 1e9:.1f}) x {STEPS * PAIRS_PER_STEP:.3e} pairs = {total:.3e} FLOPs")
        print("    GPU-days: " + ", ".join(f"{key} {days:6.1f}" for key, days in totals[setting]["gpu_days"].items())
              + "   (FLOPs / (peak x utilisation) / 86,400 s)")
    print(f"  at 64 pairs per GPU (512 gathered): {per_gpu_64['plain']['model_per_pair'] / 1e9:.1f} GFLOP per pair "
          f"(the similarity matrices grow with the batch)")

    measured_path = RESULTS_DIR / f"base_step_{args.measured_type}.json"
    memory = None
    if measured_path.exists():
        memory = activation_memory(json.loads(measured_path.read_text()), config, 64, 512)
        print(f"activation memory per GPU at 64 pairs (fp32; base_step of '{args.measured_type}' at batch "
              f"{memory['measured_batch']}, per pair x 64, + similarity matrices "
              f"{memory['similarity_matrices_mib']:.0f} MiB; gradients {memory['gradients_mib'] / 1024:.2f} GiB "
              f"apart):")
        for setting in ("plain", "checkpointed"):
            row = memory[setting]
            print(f"  {setting:13s} held after forward {row['held_per_pair_mib']:6.1f} MiB/pair -> "
                  f"{row['held_mib'] / 1024:5.1f} GiB;  + backward's worst beyond gradients "
                  f"{row['backward_extra_per_pair_mib']:5.1f} MiB/pair -> peak {row['peak_mib'] / 1024:5.1f} GiB")
    else:
        print(f"activation memory: run benchmarks/base_step.py first ({measured_path.name} missing)")

    sizes = jpeg_sizes(args.jpeg_quality)
    storage = shard_storage(sizes)
    print(f"shard storage, 4M images as 288 px JPEG (quality {args.jpeg_quality}, mean of {len(sizes)} photographs "
          f"of scikit-image), + {storage['tar_and_caption_bytes_per_sample']:.0f} B of tar headers, padding and "
          f"captions per sample:")
    for kind in ("shorter_side", "square"):
        row = storage[kind]
        print(f"  {kind:13s} {row['mean_jpeg_bytes'] / 1024:5.1f} KiB per image (photographs "
              f"{row['min_jpeg_bytes'] / 1024:.1f} to {row['max_jpeg_bytes'] / 1024:.1f}) -> {row['total_gb']:6.1f} GB")
    recipe = {"per_gpu_16": released, "per_gpu_64": per_gpu_64, "totals": totals}
    path = save(f"scaling_{args.measured_type}", {"settings": vars(args), "recipe_flops": recipe,
                                                  "activation_memory_per_gpu_64": memory, "jpeg_sizes": sizes,
                                                  "shard_storage": storage})
    print(f"written {path}")


if __name__ == "__main__":
    main()
