"""Redis Stream -> PostgreSQL telemetry processor for rally GPS trackers."""

# trio-asyncio must be imported before psycopg and redis.asyncio: they bind
# asyncio.get_running_loop at import time, and trio-asyncio replaces it so the asyncio
# loop it runs inside Trio is found. Importing it here orders every processor.* import.
import trio_asyncio  # noqa: F401

__version__ = "0.1.0"
