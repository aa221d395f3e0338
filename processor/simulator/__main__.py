"""``python -m processor.simulator``: the ``processor simulate`` command, standalone."""

from __future__ import annotations

import argparse
import sys

from processor import config, exit_codes
from processor.simulator.command import DESCRIPTION, add_arguments, main


def run() -> int:
    parser = argparse.ArgumentParser(prog="python -m processor.simulator", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args()
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"processor simulate: configuration error: {exc}", file=sys.stderr)
        return exit_codes.CONFIG_ERROR
    return main(args, settings)


raise SystemExit(run())
