"""A weights file is data: pickled checkpoints unpickle only what is allowed unless trusted, TorchScript archives are
read without running their code."""
import argparse
import collections
import math
import pickle
import re
from typing import Optional, Tuple

import pytest
import torch
from helpers import LIGHTNING_ATTRIBUTE_DICTS, lightning_class, save_lightning_checkpoint, tiny_config
from torch import nn

from lavis_glscl.serialization import UntrustedCheckpointError, read_checkpoint, read_torchscript_state_dict

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.mark.parametrize("attribute_dict_name", LIGHTNING_ATTRIBUTE_DICTS)
def test_lightning_hyper_parameters_unpickle_safely_without_lightning(attribute_dict_name, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        attribute_dict = lightning_class(patch, attribute_dict_name, (dict,))
        model_checkpoint = lightning_class(patch, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
        torch.save({"hyper_parameters": attribute_dict(config={"image_size": 288, "tokenizer": "roberta-base"},
                                                       args=argparse.Namespace(seed=0, num_gpus=8)),
                    "callbacks": {model_checkpoint: {"best_model_score": torch.tensor(0.5)}}}, tmp_path / "hp.ckpt")
    checkpoint = read_checkpoint(str(tmp_path / "hp.ckpt"))
    assert checkpoint["hyper_parameters"] == {"config": {"image_size": 288, "tokenizer": "roberta-base"},
                                              "args": argparse.Namespace(seed=0, num_gpus=8)}
    assert checkpoint["callbacks"] == {"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint":
                                       {"best_model_score": torch.tensor(0.5)}}


UNPICKLED = []


def record_unpickling():
    UNPICKLED.append("ran")
    return "payload"


class Payload:
    """Any pickled object: unpickling it runs code the file names, here ``record_unpickling``."""

    def __reduce__(self):
        return record_unpickling, ()


def test_checkpoints_holding_arbitrary_objects_load_only_when_trusted(tiny_model, tmp_path, monkeypatch):
    from lavis_glscl.models.glscl import GlsclPretrain

    path = str(tmp_path / "payload.ckpt")
    save_lightning_checkpoint(path, dict(tiny_model.state_dict()), monkeypatch, loops={"payload": Payload()})
    UNPICKLED.clear()
    refusal = re.escape(f"(['{record_unpickling.__module__}.record_unpickling'])") + ".*trust_checkpoint: true"
    with pytest.raises(pickle.UnpicklingError, match=refusal):
        GlsclPretrain.from_config(tiny_config("glscl_pretrain", pretrained=path))
    assert UNPICKLED == []
    config = tiny_config("glscl_pretrain", pretrained=path)
    config.trust_checkpoint = True
    model = GlsclPretrain.from_config(config)
    assert UNPICKLED == ["ran"]
    assert torch.equal(model.itm_score.fc.weight, tiny_model.itm_score.fc.weight)


class WritesOnLoad(nn.Module):
    """A module whose TorchScript ``__setstate__`` maps a file of the author's choosing and writes into it: what
    ``torch.jit.load`` runs when it reads the archive."""

    def __init__(self, victim: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.victim = victim
        self.mark = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return self.weight, self.victim, self.training

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.weight, self.victim, self.training = state[0], state[1], state[2]
        self.mark = torch.from_file(self.victim, True, 4, dtype=torch.uint8)
        self.mark.fill_(88)


class Wrapper(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        return self.visual(x)


@pytest.fixture
def malicious_archive(tmp_path):
    victim = tmp_path / "victim.pth"
    victim.write_bytes(b"untouched")
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.script(Wrapper(WritesOnLoad(str(victim)))).save(str(path))
    assert victim.read_bytes() == b"untouched"
    return path, victim


def test_a_torchscript_setstate_never_runs_from_pretrained_or_vision_init(tiny, malicious_archive):
    path, victim = malicious_archive
    with pytest.raises(UntrustedCheckpointError, match="defines its own __setstate__.*trust_checkpoint: true"):
        tiny("glscl_pretrain", pretrained=str(path))
    with pytest.raises(UntrustedCheckpointError, match="defines its own __setstate__"):
        tiny("glscl_pretrain", vision_init={"path": str(path)})
    with pytest.raises(UntrustedCheckpointError):
        read_checkpoint(str(path))  # the reader behind resume_ckpt_path and finetuned too
    assert victim.read_bytes() == b"untouched"


def test_only_a_trusted_torchscript_archive_may_run_its_code(malicious_archive):
    path, victim = malicious_archive
    state = read_checkpoint(str(path), trust_checkpoint=True)  # torch.jit.load: the archive's code runs
    assert victim.read_bytes() == b"XXXXuched"
    assert torch.equal(state["visual.weight"], torch.ones(3))


class ResidualAttentionBlock(nn.Module):
    """OpenAI CLIP's block layout (``clip/model.py``): attention, LayerNorms and a ``c_fc``/``c_proj`` MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(collections.OrderedDict(
            [("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask: Optional[torch.Tensor] = None

    def forward(self, x):
        x = x + self.attn(self.ln_1(x), self.ln_1(x), self.ln_1(x), need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class OpenAIVisual(nn.Module):
    """OpenAI CLIP's ``VisionTransformer`` names: conv1, class_embedding, positional_embedding, ln_pre, transformer,
    ln_post, proj."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch_size, patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((image_size // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAIClip(nn.Module):
    def __init__(self, **visual):
        super().__init__()
        self.visual = OpenAIVisual(**visual)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, image):
        return self.visual(image) * self.logit_scale.exp()


def perturbed(module: nn.Module) -> nn.Module:
    """Every LayerNorm and bias away from its initial value, so that a load from the wrong key would show."""
    torch.manual_seed(3)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return module


def test_an_openai_clip_torchscript_archive_loads_through_vision_init_to_torchs_own_tensors(tiny, tmp_path):
    path = tmp_path / "ViT-tiny.pt"
    source = perturbed(OpenAIClip(image_size=32, patch_size=8, width=32, layers=3, heads=2, output_dim=16)).eval()
    torch.jit.script(source).save(str(path))
    reference = torch.jit.load(str(path)).state_dict()  # torch's own reader (which runs the archive's code)
    read = read_torchscript_state_dict(str(path))
    assert list(read) == list(reference)
    assert all(torch.equal(read[key], reference[key]) for key in reference)

    model = tiny("glscl_pretrain", vision_init={"path": str(path)})  # tiny: 2 of the 3 blocks, 32 px, 8 px patches
    vit = model.vision_transformer.state_dict()
    loaded = {key[len("visual."):]: value for key, value in reference.items() if key.startswith("visual.")
              and key[len("visual."):] in vit}
    assert len(loaded) == len(vit) - 2  # all but GLSCL's own temporal_embed and visual_mask_token
    assert all(torch.equal(vit[key], value) for key, value in loaded.items())
    assert model.vision_transformer.temporal_embed.abs().sum() == 0
