"""Where a trained GLSCL video model loses frame order: read-outs of checkpoints on the direction-only test pairs.

    python benchmarks/video_order.py --checkpoints STAGE1.pth RUN_A/checkpoint_0.pth ... [--yaml RUN.yaml]

Each pair of the shapes video test split is a clip and its time reversal with opposite captions ("moves to the
left" / "to the right").  For every checkpoint, built as ``--yaml`` builds its model (default: the video demo):

- ``video_cosine``: cosine of the ITC embeddings of a clip and its reversal (1.0: the vision side ignores order);
- ``caption_cosine``: cosine of the ITC embeddings of the two captions (1.0: the text side ignores direction);
- ``itc_gap`` and ``itc_right``: a clip's ITC similarity to its own caption minus to the opposite caption, mean,
  and the share of clips where it is positive (50 %: chance);
- ``itm_gap`` and ``itm_right``: the same for the ITM head's match logit of (clip, own caption) minus (reversal, the
  clip's caption): the fused path's view of order;
- ``temporal_norm`` / ``position_norm``: RMS over tokens of the temporal embedding and the patch position embedding
  (how large the only order signal of the ViT is against what it is added to).

Writes ``benchmarks/results/video_order.json``.
"""
import argparse
import logging
from typing import Dict

import torch
import torch.nn.functional as F
from common import save
from lavis.common.registry import registry

from lavis_glscl.launch import check_config, parse_args
from lavis_glscl.models.layers.vision_transformer import visual_input

DEFAULT_YAML = "projects/glscl/demo/pretrain_shapes_video.yaml"


def test_pairs(cfg):
    """The video test gallery (clips through the eval processor) and its direction-only pairs ``[[i, j], ...]``."""
    from lavis import tasks

    gallery = tasks.setup_task(cfg).build_datasets(cfg)["shapes_video_demo"]["test"]
    return gallery, gallery.hard_pairs


@torch.no_grad()
def read_outs(model, gallery, pairs) -> Dict[str, float]:
    clips = torch.stack([gallery[index]["video"] for index in range(len(gallery))])
    captions = [gallery.text[gallery.img2txt[index][0]] for index in range(len(gallery))]
    image_tokens = model.encode_image(visual_input({"video": clips}, model.config.video_layout))
    video = F.normalize(model.image_embedding(image_tokens, model.num_frames(image_tokens)), dim=-1)
    text = model.tokenize(captions)
    text_tokens = model.encode_text(text.input_ids, text.attention_mask)
    caption = F.normalize(model.text_embedding(text_tokens), dim=-1)
    first, second = torch.tensor(pairs).t()
    itc_gap = (video[first] * caption[first]).sum(-1) - (video[first] * caption[second]).sum(-1)

    def match(image_idx, text_idx):
        fusion = model.fuse(text_tokens[text_idx], text.attention_mask[text_idx], image_tokens[image_idx],
                            model.num_frames(image_tokens))
        return model.match_score(fusion.cls_feats)

    itm_gap = match(first, first) - match(second, first)
    vit = model.vision_transformer
    return {"video_cosine": (video[first] * video[second]).sum(-1).mean().item(),
            "caption_cosine": (caption[first] * caption[second]).sum(-1).mean().item(),
            "itc_gap": itc_gap.mean().item(), "itc_right": 100.0 * (itc_gap > 0).float().mean().item(),
            "itm_gap": itm_gap.mean().item(), "itm_right": 100.0 * (itm_gap > 0).float().mean().item(),
            "temporal_norm": vit.temporal_embed.pow(2).mean().sqrt().item(),
            "position_norm": vit.positional_embedding[1:].pow(2).mean().sqrt().item()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--yaml", default=DEFAULT_YAML)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    results = {}
    for path in args.checkpoints:
        cfg = check_config(parse_args("video_order", ["--cfg-path", args.yaml, "--options",
                                                      f"model.pretrained={path}"]))
        model = registry.get_model_class(cfg.model_cfg.arch).from_config(cfg.model_cfg).eval()
        gallery, pairs = test_pairs(cfg)
        results[path] = read_outs(model, gallery, pairs)
        print(path, {key: round(value, 4) for key, value in results[path].items()}, flush=True)
    print("written", save("video_order", {"yaml": args.yaml, "checkpoints": results}))


if __name__ == "__main__":
    main()
