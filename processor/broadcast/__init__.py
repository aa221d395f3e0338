"""Live broadcast: positions to the race-control web app over WebSocket.

The wire contract is ``/work/shared/spec/live-protocol.md``. The plug-in entry point is
``processor.broadcast.plugin.broadcast_plugin``; everything else is one concept per
module (outbox, subscriptions, roster, stream tail, Directus client, server).
"""
