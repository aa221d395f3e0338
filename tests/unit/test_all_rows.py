from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processor.core.pg_io import AllRows, position_row
from tests.helpers import make_position

# Distinct keys, as a batch the direct COPY took whole has them.
batches = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(min_value=0, max_value=50)),
    unique=True,
    max_size=30,
)


@given(batches, batches)
def test_all_rows_is_the_set_of_the_batch_keys(
    left: list[tuple[str, int]], right: list[tuple[str, int]]
) -> None:
    """The direct path's lazy result answers as the set the staged path builds: size,
    membership, iteration, equality and union with a plain set, either way round."""
    rows = [position_row(make_position(d, second=s)) for d, s in left]
    keys = {(row[0], row[1]) for row in rows}
    other = {
        (row[0], row[1]) for row in (position_row(make_position(d, second=s)) for d, s in right)
    }

    lazy = AllRows(rows)
    assert len(lazy) == len(keys)
    assert lazy == keys
    assert set(lazy) == keys
    assert all(key in lazy for key in keys)
    assert not any(key in lazy for key in other - keys)
    assert lazy | other == keys | other
    assert other | lazy == keys | other
