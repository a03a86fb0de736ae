"""A weights file is data: TorchScript archives are read without running their code, typed options refuse wrong
types, a checkpoint of another model is refused, run directories are never shared."""
import collections
import math
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from lavis_glscl.serialization import UntrustedCheckpointError, read_checkpoint, read_torchscript_state_dict
from lavis_glscl.typed_options import ConfigError, build_dataclass

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


# ------------------------------------------------------------------ TorchScript archives
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


def test_weights_of_another_model_are_refused_with_both_key_lists(tiny, tmp_path):
    """The plain dual encoder shares GLSCL's tower names, not its fusion: its checkpoint fills the towers only."""
    donor = tiny("matching_dual_encoder").state_dict()
    torch.save({"model": donor}, tmp_path / "other.pth")
    target = dict(tiny("glscl_pretrain").named_parameters())
    share = sum(p.numel() for name, p in target.items() if name in donor) / sum(p.numel() for p in target.values())
    with pytest.raises(ConfigError) as refusal:
        tiny("glscl_pretrain", pretrained=str(tmp_path / "other.pth"))
    message = str(refusal.value)
    assert f"fills {share:.1%} of GlsclPretrain's parameters, below model.min_checkpoint_coverage 0.5" in message
    assert "GlsclPretrain keys it lacks" in message and "cross_modal_text_layers.*" in message
    foreign = sorted(key for key in donor if key not in target and key not in dict(tiny("glscl_pretrain").state_dict()))
    assert f"its keys GlsclPretrain has no place for ({len(foreign)}): [{', '.join(foreign)}]" in message


def test_min_checkpoint_coverage_sets_the_share_a_checkpoint_must_fill(tiny, tmp_path):
    source = tiny("glscl_pretrain")
    state = source.state_dict()
    dropped = [key for key in state if key.startswith("text_transformer.embeddings.")]
    share = 1 - sum(state[key].numel() for key in dropped) / sum(p.numel() for p in source.parameters())
    torch.save({"model": {k: v for k, v in state.items() if k not in dropped}}, tmp_path / "partial.pth")
    loaded = tiny("glscl_pretrain", pretrained=str(tmp_path / "partial.pth"))  # above the default half
    assert torch.equal(loaded.itm_score.fc.weight, source.itm_score.fc.weight)
    with pytest.raises(ConfigError, match=f"fills {share:.1%}.*below model.min_checkpoint_coverage 0.95"):
        tiny("glscl_pretrain", pretrained=str(tmp_path / "partial.pth"), min_checkpoint_coverage=0.95)
    assert 0.5 < share < 0.95, share


def test_vision_init_refuses_weights_that_fill_too_little_of_the_vit(tiny, tmp_path):
    torch.save({"visual.conv1.weight": torch.zeros(32, 3, 8, 8)}, tmp_path / "conv-only.pth")
    with pytest.raises(ConfigError, match="below vision_init.min_coverage 0.5"):
        tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "conv-only.pth")})
    model = tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "conv-only.pth"), "min_coverage": 0.0})
    assert model.vision_transformer.conv1.weight.abs().sum() == 0


# ------------------------------------------------------------------ typed options
def typed_blocks():
    from dataclasses import dataclass, field

    @dataclass
    class Inner:
        size: int
        rate: float = 0.5

    @dataclass
    class Outer:
        inner: Inner
        flag: bool = False
        name: Optional[str] = None
        weights: Dict[str, float] = field(default_factory=dict)
        names: List[str] = field(default_factory=list)

    return Outer, Inner


@pytest.mark.parametrize("options, message", [
    ({"inner": {"size": 2}, "flag": "false"}, "block.flag must be true or false, got 'false' (str)"),
    ({"inner": {"size": 2.5}}, "block.inner.size must be an integer, got 2.5 (float)"),
    ({"inner": {"size": True}}, "block.inner.size must be an integer, got True (bool)"),
    ({"inner": {"size": 2, "rate": "fast"}}, "block.inner.rate must be a number, got 'fast' (str)"),
    ({"inner": {"size": 2}, "weights": {"itc": "high"}}, "block.weights.itc must be a number"),
    ({"inner": {"size": 2}, "names": "a,b"}, "block.names must be a list of a string"),
    ({"inner": {"size": 2}, "name": 3}, "block.name must be a string or null, got 3 (int)"),
    ({"inner": {"size": 2}, "flga": True}, "unknown option(s) block.flga (did you mean 'flag'?)"),
    ({"inner": {"sise": 2}}, "unknown option(s) block.inner.sise (did you mean 'size'?)"),
    ({"flag": True}, "block needs block.inner"),
])
def test_typed_blocks_refuse_wrong_types_naming_the_key(options, message):
    outer, _ = typed_blocks()
    with pytest.raises(ConfigError) as refusal:
        build_dataclass(outer, options, "block")
    assert message in str(refusal.value)


def test_typed_blocks_convert_integers_where_numbers_go_and_build_nested_blocks():
    outer, inner = typed_blocks()
    built = build_dataclass(outer, OmegaConf.to_container(OmegaConf.create(
        {"inner": {"size": 3, "rate": 1}, "weights": {"itc": 1}, "names": ["a"]})), "block")
    assert built.inner == inner(size=3, rate=1.0) and isinstance(built.inner.rate, float)
    assert built.weights == {"itc": 1.0} and isinstance(built.weights["itc"], float) and built.names == ["a"]


def test_a_quoted_false_never_turns_trust_on(tiny, tmp_path):
    torch.save({"model": tiny("glscl_pretrain").state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(ConfigError, match="model.trust_checkpoint must be true or false or null, got 'false'"):
        tiny("glscl_pretrain", pretrained=str(tmp_path / "weights.pth"), trust_checkpoint="false")
    with pytest.raises(ConfigError, match="model.vision_init.trust_checkpoint must be true or false"):
        tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "weights.pth"), "trust_checkpoint": "no"})


# ------------------------------------------------------------------ run directories
def test_a_taken_second_gives_the_next_run_a_directory_of_its_own(tmp_path, monkeypatch):
    from lavis_glscl.runners import job
    from lavis_glscl.runners.options import RunOptions

    monkeypatch.setattr(job, "timestamp", lambda: "20261207120000")
    options = RunOptions(task="retrieval", output_dir=str(tmp_path))
    names = [job.decide_run_directory(options)[0].name for _ in range(3)]
    assert names == ["20261207120000", "20261207120000_1", "20261207120000_2"]


def test_a_named_job_that_exists_is_refused_unless_it_resumes(tmp_path):
    from lavis_glscl.runners import job
    from lavis_glscl.runners.options import RunOptions

    (tmp_path / "ablation" / "log.txt").parent.mkdir()
    (tmp_path / "ablation" / "log.txt").write_text("{}")
    with pytest.raises(ConfigError, match="exists .run.job_id 'ablation'. and this run does not resume"):
        job.decide_run_directory(RunOptions(task="retrieval", output_dir=str(tmp_path), job_id="ablation"))
    resumed = RunOptions(task="retrieval", output_dir=str(tmp_path), job_id="ablation", auto_resume=True)
    assert job.decide_run_directory(resumed) == (tmp_path / "ablation", None)  # no checkpoint yet: from the start


@pytest.mark.parametrize("environ, identity", [
    ({"SLURM_JOB_ID": "417"}, "slurm_417"),
    ({"SLURM_JOB_ID": "417", "SLURM_ARRAY_TASK_ID": "3"}, "slurm_417_3"),
    ({"TORCHELASTIC_RUN_ID": "pretrain-7"}, "torchrun_pretrain-7"),
    ({"TORCHELASTIC_RUN_ID": "none"}, None),
    ({}, None),
])
def test_the_job_a_restart_belongs_to_comes_from_the_launcher(environ, identity):
    from lavis_glscl.runners import job
    from lavis_glscl.runners.options import RunOptions

    assert job.job_identity(RunOptions(task="retrieval"), environ) == identity
    assert job.job_identity(RunOptions(task="retrieval", job_id="mine"), environ) == "mine"


def test_the_newest_checkpoint_is_the_one_furthest_into_training(tmp_path):
    from lavis_glscl.runners import job

    for name, epoch, iteration in (("checkpoint_0.pth", 0, None), ("checkpoint_latest.pth", 1, 4),
                                   ("checkpoint_best.pth", 0, None)):
        torch.save({"epoch": epoch, "iteration": iteration}, tmp_path / name)
    (tmp_path / "checkpoint_1.pth.tmp").write_bytes(b"cut short")  # a save that never finished
    assert job.newest_checkpoint(tmp_path) == tmp_path / "checkpoint_latest.pth"
    torch.save({"epoch": 1, "iteration": None}, tmp_path / "checkpoint_1.pth")
    assert job.newest_checkpoint(tmp_path) == tmp_path / "checkpoint_1.pth"


# ------------------------------------------------------------------ the command line
def bad_inputs(tmp_path, tiny):
    """(name, --cfg-path, --options, what the one-line error must name) for inputs a user gets wrong."""
    from helpers import TINY_RUN

    (tmp_path / "list.yaml").write_text("- model: {arch: glscl_pretrain}\n- run: {task: retrieval}\n")
    (tmp_path / "broken.yaml").write_text("model: {arch: glscl_pretrain\nrun: [\n")
    torch.save({"model": tiny("matching_dual_encoder").state_dict()}, tmp_path / "other.pth")
    torch.save({"model": {}, "optimizer": {}, "epoch": 0, "iteration": None,
                "config": {"model": {"arch": "glscl_retrieval", "model_type": "tiny"}}}, tmp_path / "retrieval.pth")
    run = str(TINY_RUN)
    return [
        ("misspelled run key", run, ["run.batch_size_trian=4"], "run.batch_size_trian (did you mean 'batch_size_train'?)"),
        ("negative epochs", run, ["run.max_epoch=-1"], "run.max_epoch must be at least 1"),
        ("learning rate not a number", run, ["run.init_lr=fast"], "run.init_lr must be a number"),
        ("empty batch", run, ["run.batch_size_train=0"], "run.batch_size_train must be at least 1"),
        ("model width not a number", run, ["model.vision.width=wide"], "model.vision.width must be an integer"),
        ("option without =", run, ["run.max_epoch"], "--options 'run.max_epoch' is not key=value"),
        ("quoted false", run, ['model.trust_checkpoint="false"'], "model.trust_checkpoint must be true or false"),
        ("unknown precision", run, ["run.amp_dtype=float8"], "run.amp_dtype must be 'float16' or 'bfloat16'"),
        ("unknown objective", run, ["model.loss_weights.itcc=1.0"], "unknown loss_weights ['itcc']"),
        ("misspelled model key", run, ["model.mgsc_temprature=0.1"], "model.mgsc_temprature (did you mean "
                                                                     "'mgsc_temperature'?)"),
        ("plateau window", run, ["run.plateau.metric=train_loss", "run.plateau.window=0"], "run.plateau"),
        ("yaml that is a list", str(tmp_path / "list.yaml"), [], "list.yaml is a list; a run yaml is a mapping"),
        ("yaml that does not parse", str(tmp_path / "broken.yaml"), [], "broken.yaml is not valid yaml"),
        ("missing yaml", str(tmp_path / "absent.yaml"), [], "absent.yaml does not exist"),
        ("weights of another model", run, [f"model.pretrained={tmp_path / 'other.pth'}"],
         "below model.min_checkpoint_coverage 0.5"),
        ("resume across architectures", run, [f"run.resume_ckpt_path={tmp_path / 'retrieval.pth'}"],
         "a checkpoint of glscl_retrieval (tiny), this run builds glscl_pretrain (tiny)"),
        ("missing resume checkpoint", run, [f"run.resume_ckpt_path={tmp_path / 'gone.pth'}"],
         "run.resume_ckpt_path"),
    ]


@pytest.mark.slow
def test_bad_options_and_files_stop_in_seconds_with_one_line_naming_the_key(tiny, tmp_path):
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    def attempt(case):
        name, cfg_path, options, expected = case
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "lavis_glscl.train", "--cfg-path", cfg_path,
                                 "--options", f"run.output_dir={tmp_path / 'out'}", *options], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        return name, expected, result, time.monotonic() - start

    cases = bad_inputs(tmp_path, tiny)
    assert len(cases) >= 12
    with ThreadPoolExecutor(2) as pool:
        for name, expected, result, seconds in pool.map(attempt, cases):
            assert result.returncode == 2, (name, result.stderr[-2000:])
            assert "Traceback" not in result.stdout + result.stderr, (name, result.stderr[-2000:])
            errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and expected in errors[0], (name, result.stderr[-2000:])
            assert seconds < 20, (name, seconds)
