"""Train several variants of one run yaml in one launch: a plain process, or every rank of torchrun or srun.

    python tests/scripts/train_variants.py --cfg-path <yaml> --output-dir <dir> \
        --variant <name> [option ...] [--variant <name> [option ...]]

Each ``--variant`` trains the yaml with its ``key=value`` options into ``<dir>/<name>``; the process group (if
any) is started once and reused, so a torchrun test pays the ranks' start-up once for all variants.
"""
import argparse
import sys
from pathlib import Path

import lavis_glscl  # noqa: F401  (registrations)
from lavis_glscl import distributed
from lavis_glscl.launch import build_runner, parse_args, setup


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [OPTION ...]")
    args = parser.parse_args(argv)
    for name, *options in args.variant:
        cfg = setup(parse_args("variant", ["--cfg-path", args.cfg_path, "--options",
                                           f"run.output_dir={args.output_dir / name}", *options]))
        build_runner(cfg).train()
    distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
