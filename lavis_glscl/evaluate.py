"""Evaluate with LAVIS: ``python -m lavis_glscl.evaluate --cfg-path <yaml> [--options k=v ...]``.

Evaluates the yaml's ``test_splits`` with the weights the model config loads (``pretrained``/``finetuned``).
"""
import sys

import lavis_glscl  # noqa: F401
from lavis_glscl import distributed
from lavis_glscl.launch import build_runner, parse_args, report, setup_or_exit


def main(argv=None):
    cfg = setup_or_exit(parse_args("Evaluate a LAVIS model (GLSCL or any registered one).", argv))
    runner = build_runner(cfg)
    report(runner.evaluate(skip_reload=True))
    distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
