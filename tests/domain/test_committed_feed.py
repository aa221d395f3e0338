"""The committed feed's entry framing: payloads in, the same payloads out, or a clear no."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.domain.committed_feed import entry_fields, payloads_of


@given(st.lists(st.binary(max_size=600), max_size=50))
def test_payloads_round_trip_in_order(payloads: list[bytes]) -> None:
    assert payloads_of(entry_fields(payloads)) == payloads


@given(st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=10), st.data())
def test_an_entry_cut_inside_a_payload_is_refused(
    payloads: list[bytes], data: st.DataObject
) -> None:
    """A cut between two payloads is a valid shorter entry; anywhere else it is refused."""
    framed = entry_fields(payloads)[b"payloads"]
    boundaries, at = set(), 0
    for p in payloads:
        at += 4 + len(p)
        boundaries.add(at)
    cut = data.draw(st.integers(1, len(framed) - 1).filter(lambda c: c not in boundaries))
    with pytest.raises(ValueError, match="runs past"):
        payloads_of({b"payloads": framed[:cut]})


def test_an_entry_without_the_field_is_refused() -> None:
    with pytest.raises(ValueError, match="no payloads field"):
        payloads_of({b"0": b"{}"})
