"""CLIP-style Vision Transformer that encodes images and videos with the same weights.

Parameter names follow OpenAI CLIP's ``VisionTransformer`` (``conv1``, ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N.{attn,ln_1,mlp.c_fc,mlp.c_proj,ln_2}``,
``ln_post``) plus GLSCL's ``temporal_embed`` and ``visual_mask_token``, so OpenAI CLIP and released GLSCL
weights load by name.  There is no ``proj``: GLSCL bridges tokens with its own linear layers.

An image is a 1-frame video.  Input ``[B, F, 3, H, W]``; inside the blocks the sequence is frame-major,
``[B, F * (1 + N), D]`` with each frame's CLS first.  Each frame CLS attends to every token of every
frame, each patch only to its own frame, its CLS included (:func:`frame_attention`, which scores a patch
against its own frame only); with ``F = 1`` this is plain ViT attention.  The output puts the ``F``
frame-CLS tokens first, then the patches frame by frame: ``[B, F + F * N, D]``.
"""
import math
from collections import OrderedDict
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lavis_glscl.models.layers.activation_checkpointing import run_segment


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "quick_gelu"):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", ACTIVATIONS[activation]()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """``x`` ``[B, F * T, D]``, frame-major with each frame's ``T`` tokens led by its CLS."""
        h = self.ln_1(x)
        attended = self.attn(h, h, h, need_weights=False)[0] if frames == 1 else frame_attention(self.attn, h, frames)
        x = x + attended
        return x + self.mlp(self.ln_2(x))


def frame_attention(attn: nn.MultiheadAttention, tokens: torch.Tensor, frames: int) -> torch.Tensor:
    """``attn`` over frame-major ``tokens`` ``[B, F * T, D]`` (each frame: its CLS, then its patches) where a frame
    CLS attends to every token and a patch only to its own frame's ``T`` tokens.  A patch is scored against its own
    frame alone, ``F * T^2`` scores in all where a masked attention over the sequence computes ``(F * T)^2``."""
    batch, length, width = tokens.shape
    per_frame, heads = length // frames, attn.num_heads
    query, key, value = F.linear(tokens, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def split_heads(t: torch.Tensor) -> torch.Tensor:  # [N, L, D] -> [N, heads, L, D / heads]
        return t.reshape(t.shape[0], -1, heads, width // heads).transpose(1, 2)

    def merge_heads(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(t.shape[0], -1, width)

    by_frame = [t.reshape(batch * frames, per_frame, width) for t in (query, key, value)]
    patches = F.scaled_dot_product_attention(split_heads(by_frame[0][:, 1:]), split_heads(by_frame[1]),
                                             split_heads(by_frame[2]))
    frame_cls = query.reshape(batch, frames, per_frame, width)[:, :, 0]
    cls = F.scaled_dot_product_attention(split_heads(frame_cls), split_heads(key), split_heads(value))
    patches = merge_heads(patches).reshape(batch, frames, per_frame - 1, width)
    out = torch.cat([merge_heads(cls).unsqueeze(2), patches], dim=2).reshape(batch, length, width)
    return attn.out_proj(out)


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, activation: str = "quick_gelu"):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, mlp_ratio, activation)
                                         for _ in range(layers)])


def as_frames(visual: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images → ``[B, 1, 3, H, W]``; ``[B, F, 3, H, W]`` videos unchanged."""
    if visual.dim() == 4:
        return visual.unsqueeze(1)
    if visual.dim() == 5:
        return visual
    raise ValueError(f"expected images [B, 3, H, W] or videos [B, F, 3, H, W], got {tuple(visual.shape)}")


def visual_input(samples: dict, video_layout: str = "tchw") -> torch.Tensor:
    """A batch's pixels as ``[B, F, 3, H, W]``, from ``samples['image']`` or ``samples['video']``; ``video_layout``
    ``cthw`` reads videos batched as ``[B, 3, F, H, W]`` (LAVIS's ALPRO processors)."""
    if "image" in samples:
        return as_frames(samples["image"])
    if "video" in samples:
        video = samples["video"]
        return as_frames(video.transpose(1, 2) if video_layout == "cthw" else video)
    raise KeyError(f"samples need an 'image' or 'video' entry, got keys {sorted(samples)}")


def cls_first(tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Frame-major ``[B, F * (1 + N), D]`` → ``[B, F + F * N, D]`` (the F frame CLS tokens, then all patches)."""
    batch, _, width = tokens.shape
    frames = tokens.view(batch, num_frames, -1, width)
    return torch.cat([frames[:, :, 0], frames[:, :, 1:].reshape(batch, -1, width)], dim=1)


def resize_position_embedding(positional_embedding: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Bicubically resize ``[1 + n * n, D]`` position embeddings to a ``grid_size x grid_size`` patch grid."""
    cls_pos, patch_pos = positional_embedding[:1], positional_embedding[1:]
    old_grid = int(math.isqrt(patch_pos.shape[0]))
    if old_grid * old_grid != patch_pos.shape[0]:
        raise ValueError(f"position embedding of {patch_pos.shape[0]} patches is not a square grid")
    if old_grid == grid_size:
        return positional_embedding
    grid = patch_pos.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(grid_size * grid_size, -1).to(positional_embedding.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


def resize_temporal_embedding(temporal_embed: torch.Tensor, max_frames: int) -> torch.Tensor:
    """Resize ``[1, T, D]`` temporal embeddings to ``max_frames``: truncate, or linearly interpolate when growing."""
    if temporal_embed.shape[1] == max_frames:
        return temporal_embed
    if temporal_embed.shape[1] > max_frames:
        return temporal_embed[:, :max_frames]
    grown = F.interpolate(temporal_embed.permute(0, 2, 1).float(), size=max_frames, mode="linear", align_corners=True)
    return grown.permute(0, 2, 1).to(temporal_embed.dtype)


class VisionTransformer(nn.Module):
    """Flexible image/video ViT (see the module docstring for shapes and attention)."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, max_frames: int = 8, mlp_ratio: float = 4.0, activation: str = "quick_gelu",
                 temporal_init: str = "random"):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if temporal_init not in ("random", "zero"):
            raise ValueError(f"temporal_init must be 'random' or 'zero', got {temporal_init!r}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.width = width
        self.max_frames = max_frames
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.num_patches + 1, width))
        # random: the released video encoder's start; zero: an image tower that adds nothing per frame (CLIP has no
        # temporal embedding), from which a video tower inflates as GLSCL inflates CLIP
        self.temporal_embed = nn.Parameter(scale * torch.randn(1, max_frames, width) * (temporal_init == "random"))
        self.visual_mask_token = nn.Parameter(torch.randn(1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, activation)
        self.ln_post = nn.LayerNorm(width)
        self.grad_checkpointing = False
        self._init_blocks(layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of keeping them (timm's name for the switch)."""
        self.grad_checkpointing = enable

    def _init_blocks(self, layers: int) -> None:
        """OpenAI CLIP's initialisation of the residual blocks."""
        proj_std = (self.width ** -0.5) * ((2 * layers) ** -0.5)
        attn_std = self.width ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights for another resolution or frame bound load too: the patch-grid position embeddings are
        resized bicubically and the temporal embeddings truncated or interpolated to this model's sizes."""
        positions, temporal = prefix + "positional_embedding", prefix + "temporal_embed"
        if positions in state_dict and state_dict[positions].shape != self.positional_embedding.shape:
            state_dict[positions] = resize_position_embedding(state_dict[positions], self.grid_size)
        if temporal in state_dict and state_dict[temporal].shape != self.temporal_embed.shape:
            state_dict[temporal] = resize_temporal_embedding(state_dict[temporal], self.max_frames)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, images: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Patch, class, position and temporal embeddings: ``[B, F, 3, H, W]`` → ``[B, F, 1 + N, D]``.

        ``token_mask`` bool ``[B, N]`` replaces those patch embeddings (in every frame) by
        ``visual_mask_token`` before position embeddings are added (MLTC).
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images [B, F, 3, H, W], got {tuple(images.shape)}")
        batch, frames = images.shape[:2]
        if frames > self.max_frames:
            raise ValueError(f"{frames} frames exceed max_frames={self.max_frames}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} frames, got {tuple(images.shape[-2:])}")
        x = self.conv1(images.flatten(0, 1).to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2).reshape(batch, frames, self.num_patches, self.width)
        if token_mask is not None:
            x = torch.where(token_mask[:, None, :, None], self.visual_mask_token.to(x.dtype), x)
        cls = self.class_embedding.to(x.dtype).expand(batch, frames, 1, self.width)
        x = torch.cat([cls, x], dim=2) + self.positional_embedding.to(x.dtype)
        return x + self.temporal_embed[:, :frames, None, :].to(x.dtype)

    def forward(self, images: torch.Tensor, keep_indices: Optional[torch.Tensor] = None,
                token_mask: Optional[torch.Tensor] = None, return_hidden_states: bool = False):
        """Encode ``images`` ``[B, F, 3, H, W]`` → ``[B, F + F * K, D]`` (frame CLS tokens first).

        ``keep_indices`` ``[B, K]``: keep only these patches of every frame (MGSC tube dropping; frame CLS
        always kept), after position embeddings are added.  ``token_mask`` ``[B, N]``: see :meth:`embed`.
        With ``return_hidden_states`` also returns the frame-major sequence after ``ln_pre`` and after each
        block, ``[B, F * (1 + K), D]`` each.
        """
        x = self.embed(images, token_mask)
        batch, frames = x.shape[:2]
        if keep_indices is not None:
            patches = x[:, :, 1:].gather(2, keep_indices[:, None, :, None].expand(-1, frames, -1, self.width))
            x = torch.cat([x[:, :, :1], patches], dim=2)
        tokens_per_frame = x.shape[2]
        x = self.ln_pre(x.reshape(batch, frames * tokens_per_frame, self.width))
        hidden_states: List[torch.Tensor] = [x]
        for block in self.transformer.resblocks:
            x = run_segment(block, x, frames, checkpointed=self.grad_checkpointing)
            hidden_states.append(x)
        x = cls_first(self.ln_post(x), frames)
        if return_hidden_states:
            return x, hidden_states
        return x


def hf_clip_vision_to_openai(state_dict: dict, prefix: str = "vision_model.") -> Tuple[dict, List[str]]:
    """Convert a HF ``CLIPVisionModel`` state dict to this module's (OpenAI CLIP) names.

    The separate ``q_proj``/``k_proj``/``v_proj`` become ``attn.in_proj_{weight,bias}``.  Returns the
    converted dict and the source keys that have no counterpart (e.g. ``position_ids`` buffers).
    ``temporal_embed`` is not produced: loaders set it to zero, so images encode exactly as the source model.
    """
    renames = {
        "embeddings.class_embedding": "class_embedding",
        "embeddings.patch_embedding.weight": "conv1.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "pre_layrnorm.weight": "ln_pre.weight",
        "pre_layrnorm.bias": "ln_pre.bias",
        "post_layernorm.weight": "ln_post.weight",
        "post_layernorm.bias": "ln_post.bias",
    }
    layer_renames = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    converted, unused, qkv = {}, [], {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            unused.append(key)
            continue
        name = key[len(prefix):]
        if name in renames:
            converted[renames[name]] = value
            continue
        parts = name.split(".")
        if parts[:2] != ["encoder", "layers"]:
            unused.append(key)
            continue
        index, rest = parts[2], ".".join(parts[3:])
        block = f"transformer.resblocks.{index}."
        if rest.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
            projection, kind = rest.split(".")[1][0], rest.split(".")[-1]
            qkv.setdefault((block, kind), {})[projection] = value
            continue
        for source, target in layer_renames.items():
            if rest.startswith(source + "."):
                converted[block + target + rest[len(source):]] = value
                break
        else:
            unused.append(key)
    for (block, kind), parts in qkv.items():
        converted[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return converted, unused
