"""Operator commands: ``processor status | pending | claim | dlq ... | rehydrate``.

One module per command (argument parser and handler side by side); ``session`` turns
outcomes and failures into output and exit codes, ``output`` renders tables and JSON.
They talk to Redis and PostgreSQL only through the core adapters, like the daemon.
"""
