"""Redis Stream -> PostgreSQL telemetry processor for rally GPS trackers."""

# trio-asyncio must be imported before psycopg and redis.asyncio: they bind
# asyncio.get_running_loop at import time, and trio-asyncio replaces it so the asyncio
# loop it runs inside Trio is found. Importing it here orders every processor.* import.
import trio_asyncio  # noqa: F401

from processor import native

# Before any compiled module is imported: a stale build must not run (see native.py).
native.guard()

__version__ = "0.1.0"
