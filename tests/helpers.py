"""Plain helpers shared by the tests (fixtures live in ``conftest.py``; no test module imports another)."""
import inspect
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = REPO / "tests" / "configs" / "tiny_run.yaml"
TINY_MIXED_RUN = REPO / "tests" / "configs" / "tiny_mixed_run.yaml"
TRAIN_VARIANTS = REPO / "tests" / "scripts" / "train_variants.py"

GLSCL_OBJECTIVES = ("itc", "itm", "mlm", "mgsc", "mltc")
# A small shapes NLVR set: its generator options.
NLVR_SMALL_SET = {"num_train_images": 40, "num_train": 64, "num_test_images": 20, "num_test": 40, "image_size": 64,
                  "seed": 3}
# The parameters that stage 1 (ITC only) trains and stage 2 loads.
TOWER_PREFIXES = ("vision_transformer.", "text_transformer.", "vision_proj.", "language_proj.", "cl_temp")

# No dropout and no random augmentation: 1- and 2-process runs see identical inputs.
DETERMINISTIC = [
    "model.fusion.dropout=0.0", "model.text.config_overrides.hidden_dropout_prob=0.0",
    "model.text.config_overrides.attention_probs_dropout_prob=0.0",
    "datasets.shapes_demo.vis_processor.train.name=glscl_image_eval",
]


def tiny_config(arch: str, dropout: bool = True, **overrides):
    """The registered ``arch``'s ``tiny`` model config with ``overrides`` replacing whole entries (so
    ``loss_weights={"itc": 1.0}`` leaves ITC alone on); ``dropout=False`` zeroes GLSCL's fusion and text dropout."""
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(registry.get_model_class(arch).default_config_path("tiny")).model
    if not dropout:
        cfg.fusion.dropout = 0.0
        cfg.text.config_overrides.hidden_dropout_prob = 0.0
        cfg.text.config_overrides.attention_probs_dropout_prob = 0.0
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def typed_config(arch: str, dropout: bool = True, **overrides):
    """The registered ``arch``'s typed config (``GlsclConfig``) of :func:`tiny_config`: the options as the model reads
    them, the model-type yaml's values and the typed defaults."""
    from lavis.common.registry import registry

    cls = registry.get_model_class(arch)
    return cls.typed_options(cls.split_options(tiny_config(arch, dropout, **overrides))[0])


def tiny(arch: str, dropout: bool = True, **overrides):
    """The registered ``arch``'s ``tiny`` model, seeded, built from :func:`tiny_config`."""
    import torch
    from lavis.common.registry import registry

    torch.manual_seed(0)
    return registry.get_model_class(arch).from_config(tiny_config(arch, dropout, **overrides))


def run_yaml(folder: Path, base: Path = TINY_RUN, **sections) -> Path:
    """A copy of the run yaml ``base`` in ``folder`` with ``sections`` (``model={...}``, ``run={...}``,
    ``datasets={...}``) merged into it; returns its path."""
    from omegaconf import OmegaConf

    path = Path(folder) / f"run_{len(list(Path(folder).glob('run_*.yaml')))}.yaml"
    OmegaConf.save(OmegaConf.merge(OmegaConf.load(base), sections), path)
    return path


def tiny_batch(batch_size=4, frames=None, image_size=32, seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    frame_shape = (3, image_size, image_size)
    shape = (batch_size, *frame_shape) if frames is None else (batch_size, frames, *frame_shape)
    captions = ["a red circle above a blue square", "a small green triangle", "two large white diamonds left of it",
                "a cyan circle", "an orange square below a purple circle", "yellow", "a big red star and a blue moon",
                "nothing but a grey background"]
    return {"image" if frames is None else "video": torch.randn(*shape, generator=generator),
            "text_input": [captions[i % len(captions)] for i in range(batch_size)],
            "image_id": torch.arange(batch_size), "epoch": 0, "iters": 0}


class ListLoader:
    """A minimal eval loader over an in-memory gallery in LAVIS's (Video)RetrievalEvalDataset shape; with one caption
    per item, caption ``i`` belongs to item ``i``."""

    def __init__(self, visuals, texts, batch_size=3, key="image"):
        pairs = {"txt2img": {i: i for i in range(len(texts))}, "img2txt": {i: [i] for i in range(len(texts))}}
        self.dataset = type("Gallery", (), {"text": texts, "image": list(range(len(visuals))),
                                            "__len__": lambda self: len(visuals),
                                            **(pairs if len(texts) == len(visuals) else {})})()
        self.visuals, self.batch_size, self.key = visuals, batch_size, key

    def __iter__(self):
        import torch

        for start in range(0, len(self.visuals), self.batch_size):
            yield {self.key: self.visuals[start:start + self.batch_size], "index": torch.arange(start, start + 3)}


class Call(NamedTuple):
    args: dict
    out: object


class Trace:
    """Records every ``encode_image``, ``encode_text`` and ``fuse`` call of ``model``: arguments by name, output."""

    def __init__(self, model):
        self.images, self.texts, self.fusions = [], [], []
        for name, log in (("encode_image", self.images), ("encode_text", self.texts), ("fuse", self.fusions)):
            setattr(model, name, self._recorder(getattr(model, name), log))

    def rows_of_the_fusion(self):
        """``(call, image_of_row, text_of_row)`` of a step with one image encoding, one text encoding and one fusion:
        the fusion call, and which encoded image and caption each of its rows is."""
        (call,), (image,), (text,) = self.fusions, self.images, self.texts
        return call, match_rows(call.args["image_tokens"], image.out), match_rows(call.args["text_tokens"], text.out)

    @staticmethod
    def _recorder(method, log):
        signature = inspect.signature(method)

        def record(*args, **kwargs):
            out = method(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            log.append(Call(dict(bound.arguments), out))
            return out

        return record


def match_rows(rows, candidates, tolerance=1e-5):
    """For each row of ``rows`` ``[R, ...]`` the index of the row of ``candidates`` ``[C, ...]`` it equals within
    ``tolerance`` (exactly one must)."""
    distance = (rows.detach().flatten(1)[:, None] - candidates.detach().flatten(1)[None]).abs().amax(dim=-1)
    best = distance.min(dim=1)
    assert (best.values < tolerance).all(), "a fused row is none of the candidates"
    assert ((distance < tolerance).sum(dim=1) == 1).all(), "a fused row matches several candidates"
    return best.indices


def loss_with_bonus(model, batch, head, bonus, key):
    """``model(batch)``'s loss ``key`` while a forward hook adds ``bonus`` to the ``head``'s output."""
    handle = head.register_forward_hook(lambda module, inputs, output: output + bonus.to(output.dtype))
    try:
        return getattr(model(batch), key).item()
    finally:
        handle.remove()


def loss_values(output) -> dict:
    """``{name: float}`` of a model output's ``loss*`` entries (its intermediate outputs left out)."""
    return {key: float(value.detach()) for key, value in output.items() if key.startswith("loss")}


def run_module(module, args, cwd, env=None, timeout=600):
    """Run ``python -m module args`` in a subprocess; returns the CompletedProcess (stdout+stderr in .stdout)."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONWARNINGS"] = "ignore"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=environment, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_args(nproc=2):
    """``python -m torch.distributed.run`` arguments for ``nproc`` local processes on a free port."""
    return ["--nproc_per_node", str(nproc), f"--master_port={free_port()}"]


def read_log_records(output_dir: Path, key: str):
    """The JSON records of the single run under ``output_dir`` whose keys start with ``key``."""
    logs = list(output_dir.rglob("log.txt"))
    assert len(logs) == 1, logs
    records = []
    for line in logs[0].read_text().splitlines():
        if line.startswith("{") and line.endswith("}") and f'"{key}' in line:
            records.append(json.loads(line))
    return records


def step_losses(output_dir, epoch, iteration):
    """The ``loss*`` entries of the ``train_step`` record of ``(epoch, iteration)`` in the run under ``output_dir``."""
    for record in read_log_records(output_dir, "train_step"):
        if record["train_step_epoch"] == epoch and record["train_step_iter"] == iteration:
            return {k[len("train_step_"):]: v for k, v in record.items() if k.startswith("train_step_loss")}
    raise AssertionError(f"no train_step record for epoch {epoch} iteration {iteration} under {output_dir}")


def align_bench_tiny_yaml(tmp_path, output_dir, arch="glscl_retrieval"):
    """A run yaml of the ALIGN-BENCH task on a 4-image mini bench for the tiny ``arch``."""
    config = tmp_path / "align_bench_tiny.yaml"
    config.write_text(f"""
model: {{arch: {arch}, model_type: tiny}}
datasets:
  align_bench:
    type: shapes
    generator: {{num_images: 4, image_size: 32, seed: 2}}
    vis_processor:
      eval: {{name: glscl_image_eval, image_size: 32}}
run: {{task: align_bench, runner: runner_glscl, device: cpu, seed: 1, output_dir: "{output_dir}", batch_size_eval: 3,
      num_workers: 0, use_dist_eval_sampler: false, test_splits: [test], evaluate: true, distributed: false,
      dist_url: "env://"}}
""")
    return config


def tiny_vqa_yaml(folder: Path, output_dir: Path) -> Path:
    """Eight 32-px images with colour questions in LAVIS's VQA layout (training json; test questions and answers
    in the COCO-VQA files LAVIS's evaluator reads), and a run yaml of ``glscl_vqa`` tiny on them."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    answers = ["red", "blue", "yes", "no"]
    train, test, coco_questions, coco_annotations = [], [], [], []
    for i in range(8):
        Image.new("RGB", (32, 32), (200 * (i % 2), 0, 200 * (1 - i % 2))).save(images / f"{i}.png")
        train.append({"image": f"{i}.png", "question": "what color is it?", "answer": [answers[i % 2]] * 3,
                      "question_id": i})
        test.append({"image": f"{i}.png", "question": "what color is it?", "question_id": 100 + i})
        coco_questions.append({"image_id": i, "question": "what color is it?", "question_id": 100 + i})
        coco_annotations.append({"image_id": i, "question_id": 100 + i, "question_type": "what color",
                                 "answer_type": "other", "multiple_choice_answer": answers[i % 2],
                                 "answers": [{"answer": answers[i % 2], "answer_id": k} for k in range(1, 11)]})
    header = {"info": {}, "task_type": "Open-Ended", "data_type": "t", "data_subtype": "test", "license": {}}
    files = {"train.json": train, "test.json": test, "answers.json": answers,
             "q.json": {**header, "questions": coco_questions}, "a.json": {**header, "annotations": coco_annotations}}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    config = folder / "vqa.yaml"
    config.write_text(f"""
model: {{arch: glscl_vqa, model_type: tiny, answer_list: {folder / 'answers.json'}}}
datasets:
  glscl_vqa:
    vis_processor:
      train: {{name: glscl_image_eval, image_size: 32}}
      eval: {{name: glscl_image_eval, image_size: 32}}
    text_processor:
      train: {{name: glscl_caption}}
      eval: {{name: glscl_caption}}
    build_info:
      annotations:
        train: {{storage: {folder / 'train.json'}}}
        test: {{storage: [{folder / 'test.json'}, {folder / 'answers.json'}, {folder / 'q.json'}, {folder / 'a.json'}]}}
      images: {{storage: {images}}}
run:
  task: vqa
  runner: runner_glscl
  device: cpu
  seed: 1
  output_dir: {output_dir}
  lr_sched: glscl_warmup_linear
  init_lr: 1e-3
  min_lr: 0.0
  weight_decay: 0.0
  max_epoch: 1
  iters_per_epoch: 2
  batch_size_train: 4
  batch_size_eval: 4
  num_workers: 0
  log_freq: 1
  use_dist_eval_sampler: false
  train_splits: [train]
  test_splits: [test]
  evaluate: false
  distributed: false
  dist_url: env://
""")
    return config


def train_in_process(cfg_path, output_dir, options=()):
    """Train a run yaml in this process, as ``python -m lavis_glscl.train`` would; returns the runner."""
    from lavis_glscl.launch import build_runner, parse_args, setup

    cfg = setup(parse_args("test", ["--cfg-path", str(cfg_path), "--options", f"run.output_dir={output_dir}",
                                    *options]))
    runner = build_runner(cfg)
    runner.train()
    return runner


def tiny_runner(cfg_path, output_dir):
    """The runner of ``cfg_path`` (a ``run_yaml``), training into ``output_dir`` without a test split, logging every
    step."""
    from lavis_glscl import launch

    args = launch.parse_args("test", ["--cfg-path", str(cfg_path), "--options", f"run.output_dir={output_dir}",
                                      "run.test_splits=[]", "run.log_freq=1"])
    return launch.build_runner(launch.setup(args))


def model_of_run_yaml(cfg_path, options=()):
    """``(model, config)`` of a run yaml (a path, or one under ``projects/``) with ``options``, built as the runner
    builds it."""
    import argparse

    from lavis.common.registry import registry

    from lavis_glscl.launch import LaunchConfig
    from lavis_glscl.paths import run_config_path

    cfg = LaunchConfig(argparse.Namespace(cfg_path=run_config_path(cfg_path), options=list(options)))
    return registry.get_model_class(cfg.model_cfg.arch).from_config(cfg.model_cfg), cfg


# ------------------------------------------------------------------ Lightning checkpoints, without Lightning
LIGHTNING_ATTRIBUTE_DICTS = ("pytorch_lightning.utilities.parsing.AttributeDict",
                             "lightning.fabric.utilities.data.AttributeDict",
                             "lightning_fabric.utilities.data.AttributeDict")


def lightning_class(patch, qualified_name, bases=()):
    """A class that pickles as Lightning's ``qualified_name``: its modules are faked in ``sys.modules`` while
    ``patch`` (a ``monkeypatch.context()``) lasts, as Lightning is not installed."""
    import types

    module_name, _, class_name = qualified_name.rpartition(".")
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        patch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type(class_name, bases, {"__module__": module_name})
    setattr(sys.modules[module_name], class_name, cls)
    return cls


def save_lightning_checkpoint(path, state_dict, monkeypatch, **entries):
    """``state_dict`` in a PyTorch Lightning 1.x checkpoint of a METER-style module, with Lightning's usual entries
    (AdamW and LambdaLR states, AMP scaler, ``ModelCheckpoint`` state keyed by its class as Lightning <= 1.4 does,
    hyper-parameters in an ``AttributeDict``) and ``entries``."""
    import torch

    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([parameter], lr=2e-5, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 100000)
    parameter.sum().backward()
    optimizer.step()
    scheduler.step()
    with monkeypatch.context() as patch:
        attribute_dict = lightning_class(patch, LIGHTNING_ATTRIBUTE_DICTS[0], (dict,))
        model_checkpoint = lightning_class(patch, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
        torch.save({"epoch": 41, "global_step": 100000, "pytorch-lightning_version": "1.3.2", "state_dict": state_dict,
                    "callbacks": {model_checkpoint: {"monitor": "val/the_metric", "best_model_score": torch.tensor(0.7),
                                                     "best_model_path": "/ckpt/last.ckpt", "dirpath": "/ckpt"}},
                    "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
                    "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                 "growth_interval": 2000, "_growth_tracker": 7},
                    "hparams_name": "kwargs",
                    "hyper_parameters": attribute_dict(config={"loss_names": {"mgsc": 1, "mltc": 1},
                                                               "max_steps": 100000, "learning_rate": 2e-5}),
                    **entries}, path)


# ------------------------------------------------------------------ webdataset shards
def image_color(index: int):
    """The flat colour of generated image ``index``."""
    return (37 * index % 256, 91 * index % 256, 53 * index % 256)


def write_images(folder: Path, count: int, size: int = 16):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (size, size), image_color(index)).save(folder / f"{index}.png")


def png_bytes(index: int, size: int = 16) -> bytes:
    from PIL import Image

    encoded = io.BytesIO()
    Image.new("RGB", (size, size), image_color(index)).save(encoded, format="PNG")
    return encoded.getvalue()


def write_tar(path: Path, members):
    """A tar of ``(name, bytes)`` members, written with tarfile alone (independent of the code under test)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def simple_pairs(count):
    return [{"image": f"{i}.png", "caption": f"shape number {i}"} for i in range(count)]


def convert_to_shards(tmp_path, annotations, count=None, samples_per_shard=3, name="shards"):
    """``annotations`` over ``count`` generated 16-px images, written into shards by ``make_shards``."""
    from lavis_glscl.tools import make_shards

    media = tmp_path / "media"
    if count is not None:
        write_images(media, count)
    (tmp_path / "train.json").write_text(json.dumps(annotations))
    return make_shards.main(["--ann", str(tmp_path / "train.json"), "--media-root", str(media), "--out",
                             str(tmp_path / name), "--samples-per-shard", str(samples_per_shard)])


def shard_dataset(index_path, vis_processor=None, shuffle_shards=2):
    """The shards of an index as a training dataset of (16-px image, caption) pairs."""
    from lavis_glscl.datasets.shard_files import read_index
    from lavis_glscl.datasets.shards import ShardedCaptionPairs
    from lavis_glscl.processors import GlsclCaptionProcessor, GlsclImageEvalProcessor

    return ShardedCaptionPairs(read_index(str(index_path)), vis_processor or GlsclImageEvalProcessor(16),
                               GlsclCaptionProcessor(), shuffle_shards=shuffle_shards)


def shard_run_yaml(tmp_path, storage, run=None, extra_datasets=None, shuffle_shards=2):
    """A tiny-model run yaml training on ``storage`` (an index or shards) with type ``wds``; ``extra_datasets`` come
    first, ``run`` replaces run options."""
    from omegaconf import OmegaConf

    shards = {"type": "wds", "build_info": {"shards": {"storage": str(storage), "shuffle_shards": shuffle_shards}},
              "vis_processor": {"train": {"name": "glscl_image_train", "image_size": 32, "hflip_prob": 0.0}},
              "text_processor": {"train": {"name": "glscl_caption"}}}
    config = {"model": {"arch": "glscl_pretrain", "model_type": "tiny"},
              "datasets": {**(extra_datasets or {}), "glscl_image_text": shards},
              "run": {"task": "retrieval", "runner": "runner_glscl", "device": "cpu", "seed": 7,
                      "lr_sched": "glscl_warmup_linear", "init_lr": 1e-3, "min_lr": 0.0, "weight_decay": 0.01,
                      "max_epoch": 1, "batch_size_train": 2, "batch_size_eval": 2, "num_workers": 0, "log_freq": 1,
                      "train_splits": ["train"], "valid_splits": [], "test_splits": [], "evaluate": False,
                      "distributed": False, "dist_url": "env://", **(run or {})}}
    path = tmp_path / f"shard_run_{len(list(tmp_path.glob('shard_run_*.yaml')))}.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    return path


# ------------------------------------------------------------------ the data cache's writers
def slow_writer(calls_file, pause=0.3):
    """A writer that logs each call (one line per call, appended atomically, so that separate processes can
    count them) and leaves the directory half written for ``pause`` seconds."""
    def write(root):
        with open(calls_file, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        (root / "first.txt").write_text("first")
        time.sleep(pause)
        (root / "second.txt").write_text("second")
    return write


def assert_whole(root):
    """Both of ``slow_writer``'s files: a caller never gets the half-written state."""
    assert (root / "first.txt").read_text() == "first" and (root / "second.txt").read_text() == "second"


def leftovers(parent, name):
    """Entries beside ``name`` other than the set, its marker and its lock (i.e. staging directories)."""
    return sorted(set(os.listdir(parent)) - {name, f"{name}.complete", f"{name}.lock"})
