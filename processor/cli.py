"""Command line: ``processor run`` (the daemon), ``processor migrate``, operator commands.

Configuration errors are reported as one line on stderr naming the variable, and exit
with code 2 (see ``exit_codes``), before anything connects anywhere. Argument errors are
one line too (``prog: error: ...``), also exit 2. The operator commands (``status``,
``pending``, ``claim``, ``dlq``, ``rehydrate``) live in ``processor.operator``, the
feed simulator (``simulate``) in ``processor.simulator``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, cast

import trio
from structlog.typing import FilteringBoundLogger

from processor import __version__, config, exit_codes, native
from processor.domain import commands as domain_commands
from processor.logs import make_logger
from processor.operator import commands as operator_commands
from processor.operator.session import Subparsers, execute
from processor.simulator import command as simulate


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (usage stays available through --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(exit_codes.CONFIG_ERROR, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="processor", description="Redis Stream -> PostgreSQL telemetry processor."
    )
    parser.add_argument("--version", action="version", version=f"processor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    env_help = config.describe()
    sub.add_parser(
        "run",
        help="run the daemon until SIGTERM/SIGINT",
        description="Consume the telemetry stream into PostgreSQL until "
        "SIGTERM or SIGINT, then drain within SHUTDOWN_BUDGET_S.",
        epilog=env_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_parser(
        "migrate",
        help="apply database migrations and exit",
        description="Apply pending migrations under an advisory lock and exit.",
        epilog=env_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    operator_commands.register(cast("Subparsers", sub))
    domain_commands.add_commands(sub)
    simulate_parser = sub.add_parser(
        "simulate",
        help=simulate.HELP,
        description=simulate.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_arguments(simulate_parser)
    native_parser = sub.add_parser(
        "native",
        help="say which hot-path modules run compiled (mypyc) and which from source",
        description="One line per module of processor/native.py: compiled, or source "
        "and why (not compiled, source changed since, PROCESSOR_PURE_PYTHON set).",
    )
    native_parser.add_argument(
        "--require-compiled",
        action="store_true",
        help="exit 1 unless every module runs compiled (the image's build checks this)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "native":  # about this install, not a deployment: no configuration
        return _native(args.require_compiled)
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"processor: configuration error: {exc}", file=sys.stderr)
        return exit_codes.CONFIG_ERROR
    log = make_logger(settings.log_level)
    if args.command == "run":
        from processor.app import App

        _tune_gc()
        if settings.nice:
            os.nice(settings.nice)  # the "starting" line logs the niceness in effect
        return trio.run(App.create(settings, log).run)
    if args.command == "migrate":
        return trio.run(_migrate, settings, log)
    if getattr(args, "domain_command", None) is not None:
        return domain_commands.run_command(args, settings)
    if args.command == "simulate":
        return simulate.main(args, settings)
    if getattr(args, "handler", None) is not None:
        return execute(settings, args)
    raise AssertionError(f"unhandled command {args.command}")


async def _migrate(settings: config.Settings, log: FilteringBoundLogger) -> int:
    """``processor migrate``: an unreachable database or a refused migration is one error
    line and an exit code a script can act on (69: retry later; 1: fix the schema), not a
    traceback, like the operator commands."""
    from processor.core.bridge import open_bridge
    from processor.core.migrate import MigrationError, apply_migrations
    from processor.core.pg_io import PostgresUnavailable

    async with open_bridge():
        try:
            report = await apply_migrations(settings.postgres_url, log=log)
        except PostgresUnavailable as exc:
            log.error("postgres unavailable", error=str(exc), exit_code=exit_codes.UNAVAILABLE)
            return exit_codes.UNAVAILABLE
        except MigrationError as exc:
            log.error("migration failed", error=str(exc), exit_code=exit_codes.FAILED)
            return exit_codes.FAILED
    log.info("migrations applied", applied=list(report.applied), storage=report.storage_mode)
    return exit_codes.OK


def _native(require_compiled: bool) -> int:
    states = native.status()
    for module, state in states.items():
        print(f"{module}: {state}")
    if require_compiled and any(state != "compiled" for state in states.values()):
        print("processor: the hot path does not run compiled", file=sys.stderr)
        return exit_codes.FAILED
    return exit_codes.OK


# The daemon allocates many short-lived objects per record (decoded JSON, Position,
# Entry) and few long-lived ones; CPython's default generation-0 threshold (700) made
# the cyclic collector ~20% of its CPU. Measured with `python -m bench.profile
# --records 100000`: 47 -> 38 µs of CPU per record, +20-25% drain rate, same peak RSS.
GC_THRESHOLDS = (100_000, 50, 1_000)


def _tune_gc() -> None:
    gc.freeze()  # what start-up built (modules, settings) is never collected
    gc.set_threshold(*GC_THRESHOLDS)
