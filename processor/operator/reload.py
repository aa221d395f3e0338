"""``processor domain reload``: make running instances reload the race definition now.

Instances reload it every ``DOMAIN_REFRESH_S`` anyway; after an edit in Directus that
must take effect at once (a moved finish line), this publishes a reload request on the
control channel. Like ``rehydrate``, the receiver count tells how many instances got it.
"""

from __future__ import annotations

import argparse

from processor.core.control import control_channel, reload_message
from processor.operator.session import ENV_HELP, Context, Report, Subparsers


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    domain = sub.add_parser(
        "domain",
        help="race-domain operations on running instances",
        description="Race-domain operations on running instances.",
    )
    actions = domain.add_subparsers(dest="domain_action", metavar="ACTION", required=True)
    parser = actions.add_parser(
        "reload",
        parents=[common],
        epilog=ENV_HELP,
        help="reload the race definition (events, geofences, IO mappings) now",
        description="Publish a reload request on <stream>:control: every running instance "
        "reloads the race definition from the Directus tables at once.",
    )
    parser.set_defaults(handler=run, prog=parser.prog)


async def run(ctx: Context, args: argparse.Namespace) -> Report:
    channel = control_channel(ctx.settings.telemetry_stream)
    receivers = await (await ctx.redis()).publish(channel, reload_message())
    data = {"channel": channel, "receivers": receivers}
    text = f"reload: sent on {channel}, received by {receivers} instance(s)"
    return Report(data, text)
