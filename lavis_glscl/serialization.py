"""Reading weight files as data: nothing a file names runs unless the user trusts the file.

Every weights file lavis_glscl reads (``pretrained``, ``finetuned``, ``vision_init.path``, ``resume_ckpt_path``) goes
through :func:`read_checkpoint`:

- a ``torch.save`` file is unpickled with ``torch.load(weights_only=True)`` plus a short allow-list for what
  Lightning checkpoints hold (``CHECKPOINT_SAFE_GLOBALS``);
- a TorchScript archive (OpenAI's CLIP ``ViT-B-16.pt``) is read by :func:`read_torchscript_state_dict`: its pickled
  module tree through an unpickler that resolves every TorchScript class to an inert record, tensors from the
  archive's own storages, parameter and buffer names from the ``__parameters__``/``__buffers__`` lines of its code
  files (read as text).  No TorchScript class is instantiated and no ``__setstate__`` runs, so the archive's code
  (which ``torch.jit.load`` would run) never does;
- anything else (other pickled objects, a TorchScript module whose state only its own ``__setstate__`` can read) is
  refused, naming what it holds, unless ``trust_checkpoint: true``: then it is loaded in full, which runs whatever
  code it carries.
"""
import argparse
import collections
import logging
import os
import pickle
import re
import types
import zipfile
from typing import Dict, List, Optional, Tuple

import torch

# What Lightning checkpoints (1.x and 2.x) of a METER-style module hold beyond tensors, containers and numbers.
# Lightning is not installed, so its classes resolve to stand-ins (pickled name: stand-in):
# - its hyper-parameter container ``AttributeDict``, under each module name it has had: plain ``dict``, as torch
#   fills only exact dicts from pickled items (SETITEMS), so it refuses a dict subclass of ours;
# - ``ModelCheckpoint``, by which Lightning <= 1.4 keyed that callback's state under ``callbacks``: its name.
# ``argparse.Namespace`` is what older modules took as hyper-parameters.  Optimizer, LR-scheduler (LambdaLR) and
# AMP-scaler states hold only tensors, numbers, strings and containers, which torch allows already.
LIGHTNING_STAND_INS = {
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,
    "lightning.fabric.utilities.data.AttributeDict": dict,
    "lightning_fabric.utilities.data.AttributeDict": dict,
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint":
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
}
CHECKPOINT_SAFE_GLOBALS = [(stand_in, name) for name, stand_in in LIGHTNING_STAND_INS.items()] + [argparse.Namespace]

TRUST_HINT = ("Load it only if you trust it: trust_checkpoint: true in the model config (beside pretrained/finetuned; "
              "vision_init.trust_checkpoint for vision_init.path)")


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A weights file that cannot be read as data alone; the message names what it holds and how to trust it."""


class StandInUnpickler(pickle.Unpickler):
    """Full unpickling (of a trusted file) that resolves Lightning's classes to their stand-ins."""

    def find_class(self, module, name):
        return LIGHTNING_STAND_INS.get(f"{module}.{name}") or super().find_class(module, name)


# a pickle_module for torch.load: the three attributes torch uses of one
TRUSTED_PICKLE = types.SimpleNamespace(__name__="lavis_glscl_trusted_pickle", Unpickler=StandInUnpickler,
                                       load=lambda file, **options: StandInUnpickler(file, **options).load())


def read_checkpoint(path: str, trust_checkpoint: bool = False):
    """The contents of the local weights file ``path`` on the CPU; a TorchScript archive gives its state dict.

    Beyond tensors and containers only ``CHECKPOINT_SAFE_GLOBALS`` are unpickled; a file holding anything else is
    refused with :class:`UntrustedCheckpointError` unless ``trust_checkpoint`` (then it is loaded in full, which runs
    whatever code it carries).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist (lavis_glscl never downloads weights)")
    if is_torchscript(path):
        try:
            return read_torchscript_state_dict(path)
        except UntrustedCheckpointError:
            if not trust_checkpoint:
                raise
        logging.warning("%s: TorchScript archive loaded with torch.jit.load (trust_checkpoint), running its code", path)
        return torch.jit.load(path, map_location="cpu").state_dict()
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_checkpoint:
            raise UntrustedCheckpointError(
                f"{path} holds objects beyond tensors, containers and Lightning's hyper-parameters "
                f"({unsafe_globals(path) or error}); unpickling them runs code the file carries. {TRUST_HINT}"
            ) from None
    logging.warning("%s holds objects beyond the allow-list; unpickling it in full (trust_checkpoint)", path)
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=TRUSTED_PICKLE)


def unsafe_globals(path: str) -> List[str]:
    """The pickled classes and functions of the torch zip file ``path`` outside torch's and our allow-lists
    (empty for a legacy, non-zip file, which torch cannot list)."""
    if not zipfile.is_zipfile(path):
        return []
    with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


# ------------------------------------------------------------------ TorchScript archives as data
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# TorchScript's own list and type-tag helpers: they only rebuild containers
SCRIPT_LIST_BUILDERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "build_genericlist")


class ScriptObjectRecord:
    """What the archive pickled for one TorchScript object: its class name and the state its BUILD opcode carried,
    kept as data (``__setstate__`` here stores the state; the class's own ``__setstate__`` never runs)."""

    qualified_name = ""

    def __setstate__(self, state):
        self.state = state


class ScriptClass(collections.namedtuple("ScriptClass", "is_module parameters buffers own_setstate")):
    """A TorchScript class as its code file declares it."""


def script_classes(archive: zipfile.ZipFile, root: str) -> Dict[str, ScriptClass]:
    """Every class of the archive's code files, by qualified name (``__torch__.clip.model.VisionTransformer``), read
    as text: whether it is a module, its ``__parameters__`` and ``__buffers__``, and whether it defines
    ``__setstate__``."""
    classes: Dict[str, ScriptClass] = {}
    code_prefix = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(code_prefix) and name.endswith(".py")):
            continue
        module = name[len(code_prefix):-len(".py")].replace("/", ".")
        current: Optional[str] = None
        for line in archive.read(name).decode("utf-8").splitlines():
            header = re.match(r"class (\w+)\((\w*)\):", line)
            if header:
                current = f"{module}.{header.group(1)}"
                classes[current] = ScriptClass(header.group(2) == "Module", [], [], False)
                continue
            if current is None:
                continue
            declared = re.match(r"  __(parameters|buffers)__ = \[(.*)\]", line)
            if declared:
                getattr(classes[current], declared.group(1)).extend(re.findall(r'"([^"]*)"', declared.group(2)))
            elif line.startswith("  def __setstate__("):
                classes[current] = classes[current]._replace(own_setstate=True)
    return classes


def rebuild_tensor(storage: torch.Tensor, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...],
                   requires_grad: bool = False, backward_hooks=None, metadata=None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for the archive's data: a view of a storage read from the archive."""
    if backward_hooks:
        raise UntrustedCheckpointError("a tensor of the archive carries backward hooks (code)")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


class TorchScriptDataUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript archive's ``data.pkl`` allowing only tensors, containers and inert records of the
    archive's classes; any other name is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: Dict[str, torch.Tensor] = {}
        self.records: Dict[str, type] = {}

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            qualified = f"{module}.{name}"
            if qualified not in self.records:
                self.records[qualified] = type(name, (ScriptObjectRecord,), {"qualified_name": qualified})
            return self.records[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in SCRIPT_LIST_BUILDERS:
            return list
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, type_tag: value
        raise UntrustedCheckpointError(f"the TorchScript archive names {module}.{name}, which is not plain data")

    def persistent_load(self, saved_id):
        kind, dtype, key, _location, numel = saved_id
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise UntrustedCheckpointError(f"the TorchScript archive refers to {kind!r} {dtype!r}, not a storage")
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.root}/data/{key}"))
            storage = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if storage.numel() != numel:
                raise UntrustedCheckpointError(f"storage {key} of the archive holds {storage.numel()} values, "
                                               f"not {numel}")
            self.storages[key] = storage
        return self.storages[key]


def read_torchscript_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of the TorchScript archive ``path`` (as ``torch.jit.load(path).state_dict()`` gives it), read
    without running anything the archive carries; :class:`UntrustedCheckpointError` when that is impossible."""
    with zipfile.ZipFile(path) as archive:
        roots = [name[:-len("/data.pkl")] for name in archive.namelist()
                 if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(roots) != 1:
            raise UntrustedCheckpointError(f"{path}: not a TorchScript module archive (data.pkl at {roots})")
        root = roots[0]
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).decode().strip() != "little":
            raise UntrustedCheckpointError(f"{path}: a big-endian TorchScript archive")
        classes = script_classes(archive, root)
        with archive.open(f"{root}/data.pkl") as handle:
            top = TorchScriptDataUnpickler(handle, archive, root).load()
    state_dict: Dict[str, torch.Tensor] = collections.OrderedDict()
    collect_module_state(top, classes, "", state_dict, path)
    return state_dict


def collect_module_state(record, classes: Dict[str, ScriptClass], prefix: str, state_dict: dict, path: str) -> None:
    """Parameters and buffers of the module ``record`` and its submodules, named as ``state_dict()`` names them."""
    if not isinstance(record, ScriptObjectRecord):
        raise UntrustedCheckpointError(f"{path}: the archive's top object is a {type(record).__name__}, not a module")
    declared = classes.get(record.qualified_name)
    if declared is None:
        raise UntrustedCheckpointError(f"{path}: no code declares {record.qualified_name}")
    state = getattr(record, "state", None)
    if declared.own_setstate or not isinstance(state, dict):
        raise UntrustedCheckpointError(
            f"{path}: {record.qualified_name} defines its own __setstate__, code that torch.jit.load would run to "
            f"read its state; {TRUST_HINT}")
    for name in (*declared.parameters, *declared.buffers):
        if torch.is_tensor(state.get(name)):
            state_dict[prefix + name] = state[name]
    for name, value in state.items():
        child = classes.get(value.qualified_name) if isinstance(value, ScriptObjectRecord) else None
        if child is not None and child.is_module:
            collect_module_state(value, classes, f"{prefix}{name}.", state_dict, path)
