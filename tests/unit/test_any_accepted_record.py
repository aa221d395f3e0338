"""Whatever the decoder accepts, the writer can store and the live broadcast can show.

The contract bounds few values: an IO ``__bigint`` may have any number of digits, floats
may be as large as a float gets. Each stage past the decoder (the IO mapping, the COPY
row, a live frame) once had a value that made it raise, which stopped the tree on a
record the contract calls valid; this holds them to every accepted record at once.
"""

from __future__ import annotations

import json

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from processor.broadcast.frames import position_body, position_frame
from processor.core import codec
from processor.core.model import Position
from processor.core.pg_io import JSONB_V1, copy_row
from processor.domain.plugin import Definitions, IoEnricher
from tests.unit.test_codec import NOW, PROPERTY, TOLERANCE_S, positions

# Any IO value the contract carries, with the integer sizes that once broke a stage.
io_values = st.one_of(
    st.integers(-(10**400), 10**400),
    st.sampled_from([2**64, -(2**63) - 1, 10**308, 2**1024, 10**999]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=8),
)
# The default mapping's ids, so every kind of rule meets every kind of value.
io_bags = st.dictionaries(
    st.sampled_from(["239", "240", "21", "66", "67", "16", "24", "181", "182", "10"]),
    io_values,
    max_size=10,
)


def _stored(value: object) -> object:
    return "\\x" + value.hex() if isinstance(value, bytes) else value


@PROPERTY
@given(positions(), io_bags)
def test_every_accepted_record_is_stored_and_shown(base: Position, bag: dict[str, object]) -> None:
    position = msgspec.structs.replace(base, attributes=bag, ts=min(base.ts, NOW))
    decoded = codec.decode(codec.encode(position), now=NOW, future_tolerance_s=TOLERANCE_S)

    enricher = IoEnricher(Definitions())
    [derived] = enricher.derive_json([decoded])
    row = copy_row(decoded, derived)
    assert row[11][:1] == JSONB_V1
    assert json.loads(row[11][1:]) == {k: _stored(v) for k, v in bag.items()}
    named = enricher.derive(decoded)
    assert (None if derived is None else json.loads(derived)) == (
        None if named is None else json.loads(json.dumps(named))
    )

    frame = json.loads(position_frame("1", position_body(decoded, 7, named)))
    assert frame["device_id"] == position.device_id
    assert frame["attrs"] == json.loads(json.dumps(named or {}))
