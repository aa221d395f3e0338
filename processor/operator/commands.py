"""The operator subcommands, added to the ``processor`` parser by ``cli``."""

from __future__ import annotations

import argparse

from processor.operator import claim, dlq, pending, rehydrate, reload, status
from processor.operator.session import Subparsers


def register(sub: Subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", help="print one JSON document instead of text"
    )
    for module in (status, pending, claim, dlq, rehydrate, reload):
        module.register(sub, common)
