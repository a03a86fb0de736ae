"""Train (and then test) with LAVIS: ``python -m lavis_glscl.train --cfg-path <yaml> [--options k=v ...]``.

Launch under ``torchrun --nproc_per_node=N -m lavis_glscl.train ...`` for several processes.
"""
import sys

import lavis_glscl  # noqa: F401  (registers lavis_glscl and LAVIS's runners before the config is read)
from lavis_glscl import distributed
from lavis_glscl.launch import build_runner, config_errors_exit, parse_args, report, setup


def main(argv=None):
    with config_errors_exit():
        cfg = setup(parse_args("Train a LAVIS model (GLSCL or any registered one).", argv))
        runner = build_runner(cfg)
        runner.train()
    report(runner.test_results)
    distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
