"""Evaluate with LAVIS: ``python -m lavis_glscl.evaluate --cfg-path <yaml> [--options k=v ...]``.

Evaluates the yaml's ``test_splits`` with the weights the model config loads (``pretrained``/``finetuned``).
"""
import sys

import lavis_glscl  # noqa: F401
from lavis_glscl import distributed
from lavis_glscl.launch import build_runner, config_errors_exit, parse_args, report, setup


def main(argv=None):
    with config_errors_exit():
        cfg = setup(parse_args("Evaluate a LAVIS model (GLSCL or any registered one).", argv))
        results = build_runner(cfg).evaluate(skip_reload=True)
    report(results)
    distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
