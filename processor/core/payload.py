"""The contract's payload as msgspec reads it: the first step of ``codec``'s fast path.

Its own module because these are msgspec ``Struct`` classes, which mypyc cannot compile
(their fields are descriptors msgspec's metaclass makes), while ``codec``, which uses
them, is compiled (``processor/native.py``). The bounds are the contract's; ``codec``'s
reference path checks the same ones field by field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

# Finite bounds for "any number" fields: comparisons against them reject inf, NaN and ints
# too large to become a float, in one step.
FLOAT_MAX: Final = 1.7976931348623157e308
# IO ids are at most two bytes in Codec 8E and 16.
IO_ID_MAX: Final = 65535


class Sentinel(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A sentinel object as msgspec reads it: the buffer's base64 decoded in C (stricter
    than the reference, never looser: ``tests/unit/test_codec.py``)."""

    bigint: str | None = msgspec.field(default=None, name="__bigint")
    buffer: bytes | None = msgspec.field(default=None, name="__buffer_b64")


class Payload(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The contract's payload as msgspec checks it (the fast path's first step)."""

    device_id: str
    timestamp: str
    latitude: Annotated[float, Meta(ge=-90.0, le=90.0)]
    longitude: Annotated[float, Meta(ge=-180.0, le=180.0)]
    altitude: Annotated[float, Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]
    angle: Annotated[float, Meta(ge=0.0, le=360.0)]
    satellites: Annotated[int, Meta(ge=0, le=255)]
    speed: Annotated[float, Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]
    priority: Annotated[int, Meta(ge=0, le=2)]
    event_io_id: Annotated[int, Meta(ge=0, le=IO_ID_MAX)]
    attributes: dict[str, int | float | Sentinel]
    received_at: str | None = None
    codec: Literal["8", "8E", "16"] | None = None


decode_payload = msgspec.json.Decoder(Payload).decode


# The fields in declaration order, in one C call (``codec._fast`` unpacks them). Typed
# for the compiled caller; ``attributes`` as Any because it rewrites sentinels in place.
if TYPE_CHECKING:

    def payload_values(
        payload: Payload,
    ) -> tuple[
        str,
        str,
        float,
        float,
        float,
        float,
        int,
        float,
        int,
        int,
        dict[str, Any],
        str | None,
        str | None,
    ]: ...

else:
    payload_values = msgspec.structs.astuple
