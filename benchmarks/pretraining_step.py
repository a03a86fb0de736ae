"""GLSCL pre-training step time and peak memory, variants side by side with LAVIS's ALBEF.

    python benchmarks/pretraining_step.py [--model-type demo] [--batch 32] [--device cpu|cuda] [--amp-dtype bf16]

Variants of the same model and batch (forward + backward of one training step; the optimizer update is the
same for all and left out):
  glscl            all five objectives, unimodal passes shared between objectives (the default)
  glscl_unshared   the same with ``share_unimodal_passes: false`` (encoders rerun per objective, as the
                   released code does)
  itc_itm_mlm      the same model with MGSC and MLTC off (the METER/ALBEF-style objective set)
  lavis_albef      LAVIS's own ALBEF pre-training (``AlbefPretrain``: momentum encoders, queues, ITM hard
                   negatives, MLM) at the matched width and depth of the same type (``albef_pretrain_offline``)
Each variant runs in a fresh process so that its peak memory is its own: the peak over the steps minus the
memory held once the model and the batch are built.
"""
import argparse
import json
import sys
import time

import torch
from common import in_fresh_process, peak_mib, resident_mib, save
from omegaconf import OmegaConf

VARIANTS = {  # name: (registered model, overrides of its type's config)
    "glscl": ("glscl_pretrain", {}),
    "glscl_unshared": ("glscl_pretrain", {"share_unimodal_passes": False}),
    "itc_itm_mlm": ("glscl_pretrain", {"loss_weights": {"mgsc": 0.0, "mltc": 0.0}}),
    "lavis_albef": ("albef_pretrain_offline", {}),
}
CAPTIONS = ["a small red circle to the left of a large blue square", "two green triangles above a yellow star",
            "a purple diamond below a white circle", "a big orange square to the right of a small cyan triangle"]


def batch(size: int, image_size: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.randn(size, 3, image_size, image_size, generator=generator).to(device),
            "text_input": [CAPTIONS[i % len(CAPTIONS)] for i in range(size)],
            "image_id": torch.arange(size, device=device), "epoch": 0, "iters": 0, "num_iters_per_epoch": 100}


def step_worker(args) -> dict:
    from lavis.common.registry import registry

    import lavis_glscl  # noqa: F401  (registers the models)

    torch.manual_seed(0)
    arch, overrides = VARIANTS[args.variant]
    model_cls = registry.get_model_class(arch)
    config = OmegaConf.merge(OmegaConf.load(model_cls.default_config_path(args.model_type)).model, overrides)
    model = model_cls.from_config(config).to(args.device).train()
    samples = batch(args.batch, config.vision.image_size, args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp_dtype)

    def step():
        with torch.autocast(device_type=args.device, dtype=dtype, enabled=dtype is not None):
            loss = model(samples)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()

    before = torch.cuda.memory_allocated() / 2 ** 20 if args.device == "cuda" else resident_mib()
    step()  # warm-up; the peak of a step (activations, gradients) is reached here already
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": min(times), "peak_growth_mib": peak_mib() - before}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="demo")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp-dtype", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(step_worker(args)))
        return

    from lavis.common.registry import registry

    import lavis_glscl  # noqa: F401  (registers the models)

    names = [name for name, (arch, _) in VARIANTS.items()
             if args.model_type in registry.get_model_class(arch).PRETRAINED_MODEL_CONFIG_DICT]
    results = {name: in_fresh_process(__file__, [*sys.argv[1:], "--variant", name]) for name in names}
    reference = results["glscl"]["seconds_per_step"]
    print(f"pre-training step of '{args.model_type}', batch {args.batch}, {args.device}, amp {args.amp_dtype} "
          f"(forward + backward, best of {args.repeats})")
    for name, result in results.items():
        seconds = result["seconds_per_step"]
        print(f"  {name:15s} {seconds:7.3f} s/step  time / glscl {seconds / reference:5.2f}"
              f"   peak memory growth {result['peak_growth_mib']:8.1f} MiB")
    ratio = reference / results["glscl_unshared"]["seconds_per_step"]
    print(f"  shared / unshared step time: {ratio:.2f}x (goal: at most 0.75x)")
    if "lavis_albef" in results:
        print(f"  glscl / LAVIS ALBEF step time: {reference / results['lavis_albef']['seconds_per_step']:.2f}x")
    else:
        print(f"  LAVIS ALBEF left out: albef_pretrain_offline has no type {args.model_type!r}")
    path = save(f"pretraining_step_{args.model_type}_{args.device}", {
        "settings": {k: v for k, v in vars(args).items() if k != "variant"}, "variants": results,
        "shared_over_unshared_time": ratio})
    print(f"written {path}")


if __name__ == "__main__":
    main()
