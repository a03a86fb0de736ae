"""Run one of LAVIS's own scripts with lavis_glscl's registrations in place:

    python -m lavis_glscl.run_lavis_script <LAVIS clone>/train.py --cfg-path <run.yaml> [--options k=v ...]

LAVIS 1.0.2's ``train.py`` and ``evaluate.py`` live at the root of a LAVIS clone, not in the wheel, and only
know the names registered by the modules they import; GLSCL's models, builders, processors, tasks, runner and
scheduler exist once ``lavis_glscl`` is imported.  This shim imports it, then runs the script unchanged as
``__main__``: ``sys.argv`` is the script and its arguments, and the script's directory comes first on
``sys.path``, as ``python <script>`` would have it.  Nothing is written into LAVIS's package and no start-up
hook is installed; the registrations live in this process only.  Like every lavis_glscl entry point it runs
offline unless the environment says otherwise: ``import lavis_glscl`` sets ``HF_HUB_OFFLINE=1`` and
``TRANSFORMERS_OFFLINE=1`` before transformers and huggingface_hub are first imported (they read them then), and
the script inherits them; ``HF_HUB_OFFLINE=0`` allows LAVIS's own hub downloads.

Limits, all LAVIS's own behaviour that the shim leaves as it is:

- the script runs against the LAVIS that ``lavis_glscl`` imported (the installed 1.0.2): a ``lavis/`` package
  beside the script (the clone's own) is not imported, since ``lavis`` is already loaded (a note says so);
- ``--cfg-path`` goes to LAVIS's ``Config`` as given: it must be an existing file (``python -m lavis_glscl.train``
  also finds the packaged ``projects/glscl/...`` yamls), and unknown registry names fail where LAVIS looks them
  up rather than when the config is read;
- LAVIS's ``init_distributed_mode`` starts ``nccl`` and calls ``torch.cuda.set_device`` when launched by
  ``torchrun``, so several processes need CUDA; on CPUs, ``torchrun -m lavis_glscl.train`` (gloo) is the way.
"""
import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lavis_glscl.run_lavis_script",
        description="Run a LAVIS script (e.g. train.py or evaluate.py of a LAVIS clone) with lavis_glscl registered.")
    parser.add_argument("script", help="path of the LAVIS script")
    # Everything after the script is the script's own (including its --help), passed through untouched.
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="the script's arguments")
    args = parser.parse_args(argv)
    if not Path(args.script).is_file():
        parser.error(f"no script at {args.script!r}; give the path of a LAVIS script, e.g. <LAVIS clone>/train.py "
                     f"(LAVIS's wheel does not ship train.py/evaluate.py, its repository root does)")
    return args


def _note_other_lavis(script_dir: Path) -> None:
    """Say so when the script sits beside a ``lavis`` package other than the one this process uses."""
    import lavis

    beside = script_dir / "lavis"
    in_use = Path(lavis.__file__).resolve().parent
    if (beside / "__init__.py").is_file() and beside.resolve() != in_use:
        print(f"run_lavis_script: using the LAVIS at {in_use} (the one lavis_glscl registers into), "
              f"not {beside}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import lavis_glscl  # noqa: F401  (the registrations the script's config names rely on)

    directory = Path(args.script).resolve().parent
    _note_other_lavis(directory)
    sys.argv = [args.script, *args.script_args]
    sys.path.insert(0, str(directory))
    runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
