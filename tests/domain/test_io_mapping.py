"""IO mapping: raw Teltonika bag -> named attributes, per model, fast."""

from __future__ import annotations

import functools
import json
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor import native
from processor.core.codec import stored_json
from processor.domain import io_apply, io_mapping
from processor.domain.definition import build_definition
from processor.domain.io_mapping import (
    DEFAULT_MAPPING,
    InvalidMapping,
    IoMapping,
    IoMappings,
    IoRule,
)
from processor.domain.plugin import Definitions, IoEnricher
from tests.domain.course import raw_rows
from tests.helpers import make_position


def test_defaults_scale_and_name_teltonika_elements() -> None:
    bag = {
        "239": 1, "240": 0, "21": 4, "66": 12850, "67": 4012, "16": 123456789,
        "24": 87, "181": 12, "182": 9, "999": 5,
    }  # fmt: skip
    named = DEFAULT_MAPPING.apply(bag)
    assert named == {
        "ignition": True,
        "movement": False,
        "gsm_signal": 4,
        "external_voltage_v": 12.85,
        "battery_voltage_v": 4.012,
        "odometer_km": 123456.789,
        "gnss_speed_kmh": 87,
        "pdop": 1.2,
        "hdop": 0.9,
    }


def test_decimal_scales_give_the_value_a_person_reads() -> None:
    """14120 mV is 14.12 V, stored and broadcast as ``14.12``: multiplied by 0.001 (which
    has no exact binary form) it was 14.120000000000001."""
    bag = {"66": 14120, "67": 4035, "181": 13, "16": 9007199897257492}
    assert DEFAULT_MAPPING.apply(bag) == {
        "external_voltage_v": 14.12,
        "battery_voltage_v": 4.035,
        "odometer_km": 9007199897257.492,
        "pdop": 1.3,
    }
    (stored,) = DEFAULT_MAPPING.apply_json([bag])
    assert stored is not None
    assert b'"external_voltage_v":14.12,' in stored
    assert b"0000000" not in stored


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-(2**63), 2**64 - 1) | st.sampled_from([10**30 + 1, -(10**309)]),
    st.integers(1, 9),
)
def test_a_one_over_ten_scale_gives_the_float_nearest_the_exact_result(
    value: int, digits: int
) -> None:
    """Whatever the raw integer, ``value * 10**-digits`` is the float nearest the exact
    decimal (``float(Fraction)`` rounds correctly), in both forms the writer may run."""
    rules = (IoRule(1, "x", float(f"1e-{digits}"), "number"),)
    exact = float(Fraction(value, 10**digits))
    assert IoMapping(rules).apply({"1": value}) == {"x": exact}
    want = [stored_json({"x": exact})]
    assert io_apply.apply_json(io_mapping.plan(rules), [{"1": value}]) == want
    assert io_mapping._compile(rules)[1]([{"1": value}]) == want


def test_nothing_mapped_is_none_and_bigints_stay_exact_when_unscaled() -> None:
    assert DEFAULT_MAPPING.apply({"999": 1}) is None
    mappings = IoMappings.from_rules([("X", IoRule(16, "raw_odometer", 1.0, "number"))])
    assert mappings.for_model("X").apply({"16": 18446744073709551615}) == {
        "raw_odometer": 18446744073709551615
    }


def test_bytes_kind_is_hex_and_number_rule_skips_buffers() -> None:
    mappings = IoMappings.from_rules(
        [("M", IoRule(10, "iccid", 1.0, "bytes")), ("M", IoRule(11, "level", 1.0, "number"))]
    )
    assert mappings.for_model("M").apply({"10": b"\x01\xab", "11": b"\x00"}) == {"iccid": "01ab"}


def test_directus_rows_replace_defaults_for_their_model_only() -> None:
    def row(id_: int, io_id: int, name: str, scale: float, kind: str) -> dict[str, object]:
        return {
            "id": id_,
            "model": "FMB920",
            "io_id": io_id,
            "name": name,
            "scale": scale,
            "kind": kind,
        }

    rows = raw_rows(
        io_mappings=[
            row(1, 239, "engine_on", 1, "bool"),
            row(2, 1, "x", 1, "weird"),
            row(3, 2, "y", 0, "number"),
        ]
    )
    built = build_definition(rows)
    assert [(r.table, r.id) for r in built.rejected] == [("io_mappings", 2), ("io_mappings", 3)]
    enricher = IoEnricher(Definitions(built.definition))
    known = make_position("356307042441013", attributes={"239": 1, "66": 12000})
    assert enricher.derive(known) == {"engine_on": True}
    unknown = make_position("999", attributes={"239": 0, "66": 12000})
    assert enricher.derive(unknown) == {"ignition": False, "external_voltage_v": 12.0}


def test_the_batch_form_maps_each_device_by_its_model() -> None:
    """One batch, several models: each record as ``derive`` maps it, in batch order."""
    rows = raw_rows(
        io_mappings=[
            {"id": 1, "model": "FMB920", "io_id": 239, "name": "engine_on", "scale": 1,
             "kind": "bool"},
            {"id": 2, "model": "FMB920", "io_id": 16, "name": "odo", "scale": 1,
             "kind": "number"},
        ]
    )  # fmt: skip
    enricher = IoEnricher(Definitions(build_definition(rows).definition))
    known, unknown = "356307042441013", "999"
    positions = [
        make_position(known, attributes={"239": 1, "16": 2**70}),
        make_position(unknown, attributes={"239": 0, "66": 12000}),
        make_position(unknown, attributes={"999": 1}),
        make_position(known, attributes={"239": 0}),
    ]
    stored = enricher.derive_json(positions)
    assert [None if s is None else json.loads(s) for s in stored] == [
        {"engine_on": True, "odo": 2**70},
        {"ignition": False, "external_voltage_v": 12.0},
        None,
        {"engine_on": False},
    ]
    assert stored == [
        None if (named := enricher.derive(p)) is None else stored_json(named) for p in positions
    ]
    assert enricher.derive_json([positions[1], positions[2]]) == stored[1:3]
    assert enricher.derive_json([positions[0], positions[3]]) == [stored[0], stored[3]]
    assert IoEnricher(Definitions()).derive_json(positions[1:3]) == stored[1:3]


def test_rule_validation() -> None:
    with pytest.raises(InvalidMapping):
        IoRule.checked(-1, "a", 1, "number")
    with pytest.raises(InvalidMapping):
        IoRule.checked(1, " ", 1, "number")
    with pytest.raises(InvalidMapping):
        IoRule.checked(1, "a", float("nan"), "number")
    assert IoRule.checked(1, " a ", 2, "bool") == IoRule(1, "a", 2.0, "bool")


def interpreted(rules: tuple[IoRule, ...], attributes: dict[str, Any]) -> dict[str, Any] | None:
    """What a mapping means, rule by rule in order (the compiled function must agree)."""
    out: dict[str, Any] = {}
    for rule in rules:
        value = attributes.get(str(rule.io_id))
        if value is None:
            continue
        if rule.kind == "number":
            if isinstance(value, bytes):
                continue
            if rule.scale == 1.0:
                out[rule.name] = value
                continue
            # A scale of one over a whole number n is a division by n (0.001: / 1000).
            inverse = 1 / rule.scale
            n = round(inverse) if 2 <= abs(inverse) <= 2**53 else 0
            whole = n != 0 and 1 / n == rule.scale
            try:
                out[rule.name] = value / n if whole else value * rule.scale
            except OverflowError:  # a result no float holds: nothing to scale
                continue
        elif rule.kind == "bool":
            out[rule.name] = any(value) if isinstance(value, bytes) else value != 0
        else:
            out[rule.name] = value.hex() if isinstance(value, bytes) else format(int(value), "x")
    return out or None


io_ids = st.integers(0, 12)
rule_lists = st.lists(
    st.builds(
        IoRule,
        io_id=io_ids,
        name=st.sampled_from(["a", "b", "c", "x'y", '"; import os; "', "\\n"]),
        scale=st.sampled_from([1.0, 0.001, 0.1, -0.05, -2.5, 10.0, 0.3, 5e-324, 1e-300]),
        kind=st.sampled_from(["number", "bool", "bytes"]),
    ),
    max_size=8,
).map(tuple)
bags = st.dictionaries(
    io_ids.map(str),
    st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=4) | st.sampled_from([10**400, -(10**309), 2**1024]),
    max_size=10,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(rule_lists, bags)
def test_the_compiled_mapping_means_what_its_rules_say(
    rules: tuple[IoRule, ...], attributes: dict[str, Any]
) -> None:
    """Same names, values, value types and order as the rules read one by one, for any
    rule set Directus may hold: repeated ids and names (a later rule wins), every kind
    on every value type, names that would be code if they were pasted into source."""
    expected = interpreted(rules, attributes)
    got = IoMapping(rules).apply(attributes)
    assert got == expected
    if got is not None and expected is not None:
        assert list(got) == list(expected)
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
    # The writer's batch form: the same, as stored JSON, integers beyond 64 bits included.
    stored = IoMapping(rules).apply_json([attributes, {}, attributes])
    want = None if expected is None else stored_json(expected)
    assert stored == [want, None, want]
    # Both batch forms, whichever is in use: the generated code (what runs from source)
    # and io_apply's loop over the rules (what runs compiled, processor/native.py).
    batch = [attributes, {}, attributes]
    assert io_mapping._compile(rules)[1](batch) == [want, None, want]
    assert io_apply.apply_json(io_mapping.plan(rules), batch) == [want, None, want]
    if want is not None:
        assert json.loads(want) == json.loads(stored_json(interpreted(rules, attributes)))


def test_the_batch_form_in_use_is_the_faster_one() -> None:
    """Compiled, io_apply's loop replaces the generated batch code, which is then not
    generated at all; from source, the generated code is what runs."""
    mapping = IoMapping(io_mapping.TELTONIKA_DEFAULTS)
    loop = isinstance(mapping.apply_json, functools.partial)
    assert loop == native.runs_compiled(io_apply)
    assert io_mapping._compile(mapping.rules, batch=False)[1] is None
    assert callable(io_mapping._compile(mapping.rules)[1])
