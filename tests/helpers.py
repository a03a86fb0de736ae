"""Plain helpers shared by the tests (fixtures live in ``conftest.py``; no test module imports another)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = REPO / "tests" / "configs" / "tiny_run.yaml"
TRAIN_VARIANTS = REPO / "tests" / "scripts" / "train_variants.py"

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
    shape = (batch_size, 3, image_size, image_size) if frames is None else (batch_size, frames, 3, image_size, image_size)
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
