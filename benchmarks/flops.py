"""Analytic matmul FLOPs of one GLSCL pre-training step, from the config's shapes, checked against PyTorch's count.

    python benchmarks/flops.py [--check-type demo] [--check-batch 8]

How the count goes.  Every matmul of every pass is counted from its shapes: ``[m, k] @ [k, n]`` is ``2mkn``
FLOPs forward; backward computes the gradient of each operand that needs one, ``2mkn`` each.  So backward is 2x
forward everywhere except the patch embedding (pixels need no gradient: 1x), the first text layer's Q/K/V when the
text embeddings are frozen (1x), the completion similarities against detached targets (1x), what runs without a
graph (hard-negative similarities: 0x) and a fusion pass's last layer on a side no loss reads (0x: e.g. MLM's
last image-side layer).  Norms, activations, softmax and losses are not matmuls and are left out, as PyTorch's
``FlopCounterMode`` leaves them out.  Under ``grad_checkpointing`` each checkpointed layer whose backward runs is
run forward once more (``recompute``; a ViT block's last matmul is not, since no saved tensor needs its output and
the recomputation stops early); model FLOPs (``forward + backward``) leave that out, executed FLOPs count it.

Per step and rank (``B`` pairs, ``G`` gathered rows, ``F`` frames of ``N`` patches, ``L`` text tokens):

- ViT (every block is ``2T(3W² + W² + 2WH) + 4BS²W`` on ``T = BS`` tokens): the full image (``S = F(1 + N)``), the
  MLTC mask-token image (same length) and P1's dropped image (``S = F(1 + K)``, ``K = int(0.2 N)``), plus the patch
  embedding (on all patches: the drop comes after it) and the bridge;
- text encoder (the same layer formula): the full, MLM-masked and MGSC-masked captions, plus the bridge;
- fusion: ITM (``B`` pairs, or ``3B`` with hard negatives), MLM, P1, P2 and P3, each ``N_f`` text-side and
  ``N_f`` image-side co-attention layers (self-attention, cross-attention to the other stream, FFN) and the two
  poolers;
- heads: ITC projections, ITM, the MLM transform and decoder on the masked tokens only;
- similarities: ITC ``G x G`` (gathered), MGSC ``G x G`` per frame and for text, MLTC text over the gathered masked
  words and MLTC image over this rank's masked patches.

Without shared unimodal passes (``share_unimodal_passes: false``) each objective reruns its encoders, as the code
does.  The count is a pure function of the config and the batch shapes; ``--check-type`` runs one forward and
backward under ``FlopCounterMode`` (attention on PyTorch's math backend, whose matmuls it sees) and prints the
agreement, with and without checkpointing.
"""
import argparse
import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

TEXT_EMBEDDINGS = "text_transformer.embeddings."


@dataclass(frozen=True)
class Flops:
    """Matmul FLOPs of some part of a step: forward, backward, and forward run again by checkpointing."""

    forward: float = 0.0
    backward: float = 0.0
    recompute: float = 0.0

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.forward + other.forward, self.backward + other.backward, self.recompute + other.recompute)

    def __mul__(self, times: float) -> "Flops":
        return Flops(self.forward * times, self.backward * times, self.recompute * times)

    __rmul__ = __mul__

    @property
    def model(self) -> float:
        """FLOPs the method needs (forward + backward): what MFU divides."""
        return self.forward + self.backward

    @property
    def executed(self) -> float:
        """FLOPs the machine runs, recomputation included."""
        return self.model + self.recompute


@dataclass(frozen=True)
class Architecture:
    """The sizes the count needs, from a model config (``architecture``)."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_mlp: int
    text_width: int
    text_layers: int
    text_ffn: int
    vocab_size: int
    fusion_width: int
    fusion_layers: int
    fusion_ffn: int
    embed_dim: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class Batch:
    """One rank's batch: ``rows`` pairs of ``frames`` frames, captions padded to ``text_length`` with
    ``caption_tokens[i]`` maskable (real, non-special) tokens, and ``gathered_rows`` rows in the contrastive terms
    (the global micro-batch; ``rows`` on one rank)."""

    rows: int
    text_length: int
    caption_tokens: Tuple[int, ...]
    frames: int = 1
    gathered_rows: Optional[int] = None

    def __post_init__(self):
        if len(self.caption_tokens) != self.rows:
            raise ValueError(f"{len(self.caption_tokens)} caption lengths for {self.rows} rows")

    @property
    def gathered(self) -> int:
        return self.gathered_rows or self.rows


def architecture(config, vocab_size: Optional[int] = None) -> Architecture:
    """Sizes of a :class:`~lavis_glscl.models.glscl.config.GlsclConfig`; the text sizes come from the text
    directory's ``config.json`` with the overrides applied (no weights are read).  ``vocab_size`` replaces that
    config's vocabulary (the MLM decoder's width), e.g. RoBERTa's 50,265 for the released recipe."""
    from transformers import AutoConfig

    from lavis_glscl.paths import resolve_local_model_dir

    text = AutoConfig.from_pretrained(resolve_local_model_dir(config.text.path), local_files_only=True,
                                      **dict(config.text.config_overrides))
    vision, fusion = config.vision, config.fusion
    return Architecture(vision.image_size, vision.patch_size, vision.width, vision.layers,
                        int(vision.width * vision.mlp_ratio), text.hidden_size, text.num_hidden_layers,
                        text.intermediate_size, vocab_size or text.vocab_size, fusion.hidden_size, fusion.num_layers,
                        fusion.intermediate_size, config.embed_dim)


# ---------------------------------------------------------------------------------------------------- building blocks
def matmul(m: float, k: float, n: float, operands_with_grad: int = 2) -> Flops:
    """``[m, k] @ [k, n]``; its backward computes ``operands_with_grad`` gradients of ``2mkn`` FLOPs each."""
    flops = 2.0 * m * k * n
    return Flops(flops, operands_with_grad * flops)


def no_backward(flops: Flops) -> Flops:
    """Forward only: what no loss reaches (autograd skips it, and checkpointing never recomputes it)."""
    return Flops(flops.forward)


def checkpointed(layer: Flops, enabled: bool, not_recomputed: Flops = Flops()) -> Flops:
    """``layer`` with its forward counted again when it is checkpointed and its backward runs."""
    if not enabled or layer.backward == 0:
        return layer
    return layer + Flops(recompute=layer.forward - not_recomputed.forward)


def attention(batch: int, queries: int, keys: int, width: int) -> Flops:
    """Scores ``q kᵀ`` and the weighted sum of values over all heads: ``[B, Lq, W]`` against ``[B, Lk, W]``."""
    return matmul(batch * queries, width, keys) + matmul(batch * queries, keys, width)


def transformer_layer(batch: int, length: int, width: int, ffn: int, input_grad: bool = True,
                      attended: Optional[Flops] = None) -> Flops:
    """A self-attention + FFN layer (ViT block, BERT layer) on ``[B, S, W]``: Q/K/V, attention, output, FFN;
    ``attended``: the attention's own count where it is not every token against every token."""
    tokens = batch * length
    attended = attention(batch, length, length, width) if attended is None else attended
    return (matmul(tokens, width, 3 * width, 2 if input_grad else 1) + attended
            + matmul(tokens, width, width) + matmul(tokens, width, ffn) + matmul(tokens, ffn, width))


def co_attention_layer(batch: int, length: int, other_length: int, width: int, ffn: int) -> Flops:
    """One side's co-attention layer on ``[B, S, W]`` attending ``[B, R, W]``: self-attention, cross-attention
    (its keys and values projected from the other stream), FFN."""
    tokens, other_tokens = batch * length, batch * other_length
    self_attention = (matmul(tokens, width, 3 * width) + attention(batch, length, length, width)
                      + matmul(tokens, width, width))
    cross_attention = (matmul(tokens, width, width) + matmul(other_tokens, width, 2 * width)
                       + attention(batch, length, other_length, width) + matmul(tokens, width, width))
    return self_attention + cross_attention + matmul(tokens, width, ffn) + matmul(tokens, ffn, width)


# ---------------------------------------------------------------------------------------------------- passes
def vision_pass(arch: Architecture, batch: int, frames: int, kept_patches: int, recompute: bool) -> Flops:
    """Patch embedding (all patches), the blocks on ``F (1 + K)`` tokens per sample, the bridge.  A block's
    attention scores a frame's patches against that frame's tokens only and each frame CLS against all tokens."""
    width, per_frame = arch.vision_width, 1 + kept_patches
    length = frames * per_frame
    embedding = matmul(batch * frames * arch.num_patches, 3 * arch.patch_size ** 2, width, operands_with_grad=1)
    attended = attention(batch * frames, per_frame - 1, per_frame, width) + attention(batch, frames, length, width)
    block = transformer_layer(batch, length, width, arch.vision_mlp, attended=attended)
    last_matmul = matmul(batch * length, arch.vision_mlp, width)
    return (embedding + arch.vision_layers * checkpointed(block, recompute, last_matmul)
            + matmul(batch * length, width, arch.fusion_width))


def text_pass(arch: Architecture, batch: int, length: int, embeddings_trainable: bool, recompute: bool) -> Flops:
    """The text layers (the first one's Q/K/V get no input gradient under frozen embeddings), the bridge, and the
    pooler that HF's forward runs though nothing reads it (the checkpointed path runs the layers itself, without)."""
    width, ffn = arch.text_width, arch.text_ffn
    first = transformer_layer(batch, length, width, ffn, input_grad=embeddings_trainable)
    rest = transformer_layer(batch, length, width, ffn)
    unused_pooler = Flops() if recompute else no_backward(matmul(batch, width, width))
    return (checkpointed(first, recompute) + (arch.text_layers - 1) * checkpointed(rest, recompute)
            + matmul(batch * length, width, arch.fusion_width) + unused_pooler)


def fusion_pass(arch: Architecture, pairs: int, text_length: int, image_length: int, text_read: bool,
                image_read: bool, pooled_read: bool, recompute: bool) -> Flops:
    """``N_f`` text-side and image-side layers and both poolers.  ``*_read``: whether a loss reads that side's
    fused tokens (``pooled_read``: the pooled features, which read both).  A layer's backward runs when a loss
    reads its output: directly (a last layer) or through the next layers (an earlier one)."""
    width, ffn = arch.fusion_width, arch.fusion_ffn
    text_grad, image_grad = text_read or pooled_read, image_read or pooled_read
    text_layer = co_attention_layer(pairs, text_length, image_length, width, ffn)
    image_layer = co_attention_layer(pairs, image_length, text_length, width, ffn)
    total = Flops()
    for index in range(arch.fusion_layers):
        last = index == arch.fusion_layers - 1
        for layer, own_grad in ((text_layer, text_grad), (image_layer, image_grad)):
            reached = own_grad if last else (text_grad or image_grad)
            total += checkpointed(layer, recompute) if reached else no_backward(layer)
    poolers = 2 * matmul(pairs, width, width)
    return total + (poolers if pooled_read else no_backward(poolers))


# ---------------------------------------------------------------------------------------------------- masked counts
def mlm_tokens(caption_tokens: Sequence[int], probability: float) -> int:
    """Tokens MLM selects: ``max(1, round(p n))`` of each caption's ``n`` (in float32, as the masking does)."""
    return sum(max(1, int(np.rint(np.float32(n) * np.float32(probability)))) for n in caption_tokens if n)


def mgsc_text_tokens(caption_tokens: Sequence[int], ratio: float, with_replacement: bool) -> float:
    """Distinct words MGSC masks: ``k = int(n r) + 1`` draws per caption; with replacement, the expected number
    of distinct positions ``n (1 - (1 - 1/n)^k)``, else ``min(n, k)``."""
    total = 0.0
    for n in caption_tokens:
        if n:
            draws = int(np.float32(n) * np.float32(ratio)) + 1
            total += n * (1 - (1 - 1 / n) ** draws) if with_replacement else min(n, draws)
    return total


def _embeddings_trainable(config) -> bool:
    """False when ``freeze`` holds the whole text embedding layer (as ``demo`` does); other freezing is refused, as
    it changes which backward matmuls run in ways the count does not follow."""
    frozen = set(config.freeze)
    if frozen - {TEXT_EMBEDDINGS, TEXT_EMBEDDINGS.rstrip(".")}:
        raise ValueError(f"the count models frozen text embeddings only, the config freezes {sorted(frozen)}")
    return not frozen


# ---------------------------------------------------------------------------------------------------- the step
def step_flops(arch: Architecture, config, batch: Batch) -> Dict[str, Flops]:
    """Matmul FLOPs of one training step on one rank, by part (``vision``, ``text``, ``fusion``, ``heads``,
    ``similarities``), for the objectives, pass sharing, negatives and checkpointing of ``config`` (a
    ``GlsclConfig``)."""
    on = {name: name in config.active_objectives for name in ("itc", "itm", "mlm", "mgsc", "mltc", "rank")}
    rows, gathered, frames, length = batch.rows, batch.gathered, batch.frames, batch.text_length
    recompute, width, patches = config.grad_checkpointing, arch.fusion_width, arch.num_patches
    kept = max(1, int(patches * (1.0 - config.mgsc_image_mask_ratio)))
    image_tokens = {"image_full": frames * (1 + patches), "image_token_masked": frames * (1 + patches),
                    "image_dropped": frames * (1 + kept)}
    hard = on["itm"] and config.itm_negatives == "hard"
    mgsc = on["mgsc"] and (frames == 1 or config.video_completion.mgsc)
    completion = mgsc or on["mltc"]
    image_mltc = on["mltc"] and (frames == 1 or config.video_completion.mltc)

    # (pass, text input, image input, pairs, text read, image read, pooled read)
    fusions = []
    if on["itm"]:
        fusions.append(("itm", "text_full", "image_full", 3 * rows if hard else rows, False, False, True))
    if on["mlm"]:
        fusions.append(("mlm", "text_mlm", "image_full", rows, True, False, False))
    if completion:
        fusions.append(("p1", "text_full", "image_dropped", rows, False, mgsc, False))
        fusions.append(("p2", "text_mgsc", "image_full", rows, True, False, False))
    if image_mltc:
        fusions.append(("p3", "text_full", "image_token_masked", rows, False, True, False))

    # Encoder passes by consumer: (with gradient, {input: passes it runs when nothing is shared}).
    consumers = [(on["itc"], {"image_full": 1, "text_full": 1})] if on["itc"] or hard else []
    for name, text_input, image_input, _, text_read, image_read, pooled_read in fusions:
        image_passes = 2 if name == "itm" and hard else 1  # own images, and the partner mix re-encoded
        consumers.append((text_read or image_read or pooled_read, {text_input: 1, image_input: image_passes}))
    encoders: Dict[str, Tuple[int, int]] = {}  # input: (passes with gradient, passes without)
    for with_grad, inputs in consumers:
        for key, passes in inputs.items():
            grad_passes, plain_passes = encoders.get(key, (0, 0))
            encoders[key] = (grad_passes + passes * with_grad, plain_passes + passes * (not with_grad))
    if config.share_unimodal_passes:
        encoders = {key: (1, 0) if grad_passes else (0, 1) for key, (grad_passes, _) in encoders.items()}

    embeddings_trainable = _embeddings_trainable(config)
    parts = {"vision": Flops(), "text": Flops(), "fusion": Flops(), "heads": Flops(), "similarities": Flops()}
    for key, (grad_passes, plain_passes) in encoders.items():
        if key.startswith("image"):
            part, flops = "vision", vision_pass(arch, rows, frames, image_tokens[key] // frames - 1, recompute)
        else:
            part, flops = "text", text_pass(arch, rows, length, embeddings_trainable, recompute)
        parts[part] += grad_passes * flops + plain_passes * no_backward(flops)
    for _, _, image_input, pairs, text_read, image_read, pooled_read in fusions:
        parts["fusion"] += fusion_pass(arch, pairs, length, image_tokens[image_input], text_read, image_read,
                                       pooled_read, recompute)

    heads, similarities = Flops(), Flops()
    if on["itc"] or hard:
        projections = 2 * (matmul(rows, width, width) + matmul(rows, width, arch.embed_dim))
        heads += projections if on["itc"] else no_backward(projections)
    if on["itc"]:
        similarities += matmul(gathered, arch.embed_dim, gathered)
    if hard:
        similarities += no_backward(2 * matmul(rows, arch.embed_dim, gathered))
    if on["itm"]:
        heads += matmul(3 * rows if hard else rows, 2 * width, 2)
    if on["mlm"]:
        masked = mlm_tokens(batch.caption_tokens, config.mlm_probability)
        heads += matmul(masked, width, width) + matmul(masked, width, arch.vocab_size)
    if mgsc:
        similarities += (frames + 1) * matmul(gathered, width, gathered, operands_with_grad=1)
    if on["mltc"]:
        words = mgsc_text_tokens(batch.caption_tokens, config.mgsc_text_mask_ratio,
                                 config.mgsc_text_mask_with_replacement) * gathered / rows
        similarities += matmul(words, width, words, operands_with_grad=1)
        if image_mltc:
            masked_patches = rows * frames * int(patches * config.mltc_image_mask_ratio)
            masked_patches *= gathered / rows if config.mltc_image_gather else 1
            similarities += matmul(masked_patches, width, masked_patches, operands_with_grad=1)
    parts["heads"], parts["similarities"] = heads, similarities
    return parts


def total(parts: Dict[str, Flops]) -> Flops:
    return sum(parts.values(), Flops())


# ---------------------------------------------------------------------------------------------------- shapes, checks
def model_config(model_type: str, **overrides):
    """The ``GlsclConfig`` of ``glscl_pretrain``'s ``model_type`` with ``overrides`` (nothing is built)."""
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    from lavis_glscl.models.glscl.config import GlsclConfig

    options = OmegaConf.to_container(OmegaConf.merge(
        OmegaConf.load(registry.get_model_class("glscl_pretrain").default_config_path(model_type)).model, overrides))
    for key in ("arch", "model_type", "load_finetuned", "pretrained", "finetuned"):
        options.pop(key, None)
    return GlsclConfig.from_options(options)


def batch_of(model, samples: dict) -> Batch:
    """The shapes of ``samples`` as ``model`` tokenises them (one rank)."""
    from lavis_glscl.models.layers.vision_transformer import visual_input

    text = model.tokenize(samples["text_input"])
    images = visual_input(samples)
    return Batch(images.shape[0], text.input_ids.shape[1], tuple(text.maskable.sum(dim=1).tolist()), images.shape[1])


def benchmark_batch(config, rows: int) -> Batch:
    """The shapes of the pre-training benchmarks' batch of ``rows`` pairs (their captions, tokenised)."""
    from pretraining_step import CAPTIONS
    from transformers import AutoTokenizer

    from lavis_glscl.models.layers.text_encoder import tokenize
    from lavis_glscl.paths import resolve_local_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_local_model_dir(config.text.path), local_files_only=True,
                                              use_fast=True)
    text = tokenize(tokenizer, [CAPTIONS[i % len(CAPTIONS)] for i in range(rows)], config.text.max_length, "cpu")
    return Batch(rows, text.input_ids.shape[1], tuple(text.maskable.sum(dim=1).tolist()))


def base_recipe_batch(rows: int, gathered: int, text_length: int = 50, caption_tokens: int = 18) -> Batch:
    """A batch of the released recipe's shapes: captions padded to 50 as released; ``caption_tokens`` real words
    per caption (an assumption: it moves only the MLM head and the MLTC text similarity)."""
    return Batch(rows, text_length, (caption_tokens,) * rows, gathered_rows=gathered)


def counted_flops(model, samples: dict) -> Dict[str, float]:
    """PyTorch's own count of one forward + backward of ``model`` on ``samples``: ``{"forward", "total"}``, with
    attention on the math backend (its matmuls are visible; CPU's fused kernel is not in the counter's table)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward_counter:
            loss = model(samples)["loss"]
        with FlopCounterMode(display=False) as backward_counter:
            loss.backward()
    model.zero_grad(set_to_none=True)
    forward = forward_counter.get_total_flops()
    return {"forward": float(forward), "total": float(forward + backward_counter.get_total_flops())}


def check(model_type: str, batch_size: int, overrides: dict) -> dict:
    """Analytic against counted FLOPs of one step of ``model_type`` with ``overrides``, with and without
    checkpointing.  MGSC masks words without replacement here, so that every count is known exactly (with
    replacement the analytic count takes the expected number of distinct masked words)."""
    import torch
    from lavis.common.registry import registry
    from omegaconf import OmegaConf
    from pretraining_step import batch as pretraining_batch

    model_cls = registry.get_model_class("glscl_pretrain")
    options = OmegaConf.merge(OmegaConf.load(model_cls.default_config_path(model_type)).model,
                              {"mgsc_text_mask_with_replacement": False, **overrides})
    torch.manual_seed(0)
    model = model_cls.from_config(options).train()
    samples = pretraining_batch(batch_size, model.config.vision.image_size, "cpu")
    shapes, arch = batch_of(model, samples), architecture(model.config, len(model.tokenizer))
    results = {}
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        analytic = total(step_flops(arch, dataclasses.replace(model.config, grad_checkpointing=checkpointing), shapes))
        counted = counted_flops(model, samples)
        results["checkpointed" if checkpointing else "plain"] = {
            "analytic": analytic.executed, "counted": counted["total"],
            "relative_difference": abs(analytic.executed - counted["total"]) / counted["total"]}
    return results


def table_row(arch: Architecture, config, shapes: Batch) -> dict:
    row = {}
    for checkpointing in (False, True):
        parts = step_flops(arch, dataclasses.replace(config, grad_checkpointing=checkpointing), shapes)
        step = total(parts)
        row["checkpointed" if checkpointing else "plain"] = {
            **dataclasses.asdict(step), "model": step.model, "executed": step.executed,
            "model_per_pair": step.model / shapes.rows,
            "executed_per_pair": step.executed / shapes.rows,
            "model_by_part": {part: flops.model for part, flops in parts.items()}}
    return {"rows": shapes.rows, "text_length": shapes.text_length, **row}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-type", default="demo", help="model type checked against FlopCounterMode")
    parser.add_argument("--check-batch", type=int, default=8)
    args = parser.parse_args()

    from common import save

    import lavis_glscl  # noqa: F401  (registers the models)

    demo, base = model_config("demo"), model_config("base")
    table = {  # the pre-training benchmarks' batches, and the released recipe's shapes on one GPU
        "demo, batch 32 (pretraining_step.py)": table_row(architecture(demo), demo, benchmark_batch(demo, 32)),
        "base, batch 4 (base_step.py)": table_row(architecture(base), base, benchmark_batch(base, 4)),
        "base, released recipe on one GPU (16 pairs, 128 gathered, 50 tokens, RoBERTa vocabulary)": table_row(
            architecture(base, vocab_size=50_265), base, base_recipe_batch(16, 128)),
    }
    print("analytic matmul FLOPs of one pre-training step (forward + backward; recompute: what checkpointing adds)")
    for name, row in table.items():
        print(f"  {name}: captions of {row['text_length']} tokens")
        plain, checked = row["plain"], row["checkpointed"]
        print(f"    forward {plain['forward'] / 1e9:9.1f} G  backward {plain['backward'] / 1e9:9.1f} G  "
              f"(backward / forward {plain['backward'] / plain['forward']:.2f})  recompute "
              f"{checked['recompute'] / 1e9:8.1f} G   per pair: model {plain['model_per_pair'] / 1e9:7.2f} G, "
              f"checkpointed {checked['executed_per_pair'] / 1e9:7.2f} G")
        shares = {part: flops / plain["model"] for part, flops in plain["model_by_part"].items()}
        print("    " + ", ".join(f"{part} {100 * share:.1f} %" for part, share in shares.items()))
    checks = {name: check(args.check_type, args.check_batch, overrides)
              for name, overrides in {"shared passes": {}, "unshared passes": {"share_unimodal_passes": False},
                                      "hard negatives": {"itm_negatives": "hard"}}.items()}
    print(f"check against FlopCounterMode ('{args.check_type}', batch {args.check_batch}, one forward + backward):")
    for name, result in checks.items():
        for mode, row in result.items():
            print(f"  {name:16s} {mode:13s} analytic {row['analytic'] / 1e9:10.4f} G  counted "
                  f"{row['counted'] / 1e9:10.4f} G  relative difference {row['relative_difference']:.1e}")
    path = save(f"flops_{args.check_type}", {"settings": vars(args), "analytic": table, "check": checks})
    print(f"written {path}")


if __name__ == "__main__":
    main()
