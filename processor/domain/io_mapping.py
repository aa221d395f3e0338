"""Raw Teltonika IO bag -> named attributes (``positions.derived``), per device model.

The writer calls this for every record before insert, so the rules are compiled into
straight-line code with dict lookups and no allocation beyond the result, run once per
batch (``bench.domain`` times it per fix: 0.7 µs for the default rule set on a fast day;
``bench.record_path`` counts its instructions).

Directus ``io_mappings`` rows win for their model; a model without rows, or a device
Directus does not know, gets the Teltonika FMB/FMC defaults below, which is what the
field runs on.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs
import orjson

from processor import native
from processor.core.codec import stored_json
from processor.core.model import AttributeValue
from processor.domain import io_apply

Kind = Literal["bool", "number", "bytes"]
KINDS: frozenset[str] = frozenset({"bool", "number", "bytes"})


class InvalidMapping(ValueError):
    """An ``io_mappings`` row that cannot be applied; the message says why."""


@attrs.frozen(slots=True)
class IoRule:
    """One IO element: raw value at key ``io_id`` times ``scale`` becomes ``name``
    (``step`` says how the product is computed)."""

    io_id: int
    name: str
    scale: float = 1.0
    kind: Kind = "number"

    @classmethod
    def checked(cls, io_id: Any, name: Any, scale: Any, kind: Any) -> IoRule:
        if type(io_id) is not int or not 0 <= io_id <= 65_535:
            raise InvalidMapping(f"io_id {io_id!r} is not an IO id 0-65535")
        if type(name) is not str or not name.strip():
            raise InvalidMapping(f"name {name!r} is empty")
        if kind not in KINDS:
            raise InvalidMapping(f"kind {kind!r} is not one of bool, number, bytes")
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise InvalidMapping(f"scale {scale!r} is not a number")
        if not math.isfinite(scale) or scale == 0:
            raise InvalidMapping(f"scale {scale!r} is not a finite non-zero number")
        return cls(io_id, name.strip(), float(scale), kind)


# Teltonika FMB/FMC "AVL ID" table (FMB920, FMB130, FMC130, FMC650 share these ids).
TELTONIKA_DEFAULTS: tuple[IoRule, ...] = (
    IoRule(239, "ignition", 1, "bool"),
    IoRule(240, "movement", 1, "bool"),
    IoRule(21, "gsm_signal", 1, "number"),  # 0-5 bars
    IoRule(66, "external_voltage_v", 0.001, "number"),  # mV
    IoRule(67, "battery_voltage_v", 0.001, "number"),  # mV
    IoRule(16, "odometer_km", 0.001, "number"),  # total odometer, m
    IoRule(24, "gnss_speed_kmh", 1, "number"),
    IoRule(181, "pdop", 0.1, "number"),
    IoRule(182, "hdop", 0.1, "number"),
)


Step = Literal["number", "scaled", "divided", "bool", "bytes"]


def step(rule: IoRule) -> tuple[Step, Any]:
    """How a rule computes its value, and the operand: a number rule whose scale is one
    over a whole number (0.001, 0.1, 0.05, 1e-9) divides by that number instead of
    multiplying by the scale. 14120 * 0.001 is 14.120000000000001 (0.001 has no exact
    binary form), 14120 / 1000 is 14.12: Python's division is correctly rounded, so the
    stored and broadcast value is the float nearest the decimal result, written the way
    a person reads it."""
    if rule.kind != "number":
        return rule.kind, None
    if rule.scale == 1.0:
        return "number", None
    inverse = 1.0 / rule.scale  # inf for a subnormal scale
    if 2.0 <= abs(inverse) <= 2.0**53:
        whole = round(inverse)  # 1 / 1e-9 is 999999999.9999999: round, then check
        if 1.0 / whole == rule.scale:
            return "divided", whole
    return "scaled", rule.scale


# One rule's lines in a compiled ``apply`` (``{i}``: the rule's constants K, N, S; S is
# ``step``'s operand). A number rule skips a buffer value: the model table is wrong then,
# not the fix. A scaled rule skips a value whose result no float holds (a contract
# ``__bigint`` may have hundreds of digits): the exact value stays in ``attributes``.
_RULE_CODE: dict[Step, str] = {
    "number": """
    v = get(K{i})
    if v is not None and v.__class__ is not bytes:
        out[N{i}] = v""",
    "scaled": """
    v = get(K{i})
    if v is not None and v.__class__ is not bytes:
        try:
            out[N{i}] = v * S{i}
        except OverflowError:
            pass""",
    "divided": """
    v = get(K{i})
    if v is not None and v.__class__ is not bytes:
        try:
            out[N{i}] = v / S{i}
        except OverflowError:
            pass""",
    "bool": """
    v = get(K{i})
    if v is not None:
        out[N{i}] = any(v) if v.__class__ is bytes else v != 0""",
    "bytes": """
    v = get(K{i})
    if v is not None:
        out[N{i}] = hex_text(v)""",
}


# The batch form, for the writer: the rules inside one loop over the batch's IO bags,
# each result serialised as ``stored_json`` does (orjson; the stdlib beyond 64 bits).
_BATCH_HEAD = """
def apply_json(bags):
    result = []
    append = result.append
    for attributes in bags:
        get = attributes.get
        out = {}"""
_BATCH_TAIL = """
        if not out:
            append(None)
            continue
        try:
            append(dumps(out))
        except TypeError:
            append(stored_json(out))
    return result"""


def _compile(rules: tuple[IoRule, ...], *, batch: bool = True) -> tuple[Any, Any]:
    """The rules as straight-line code: per record, a dict lookup and a test per rule,
    no loop, no tuple unpacking, no call per element (``bench.profile``: the loop over
    rule tuples cost ~2 µs per record on the write path). Names, keys and scales from
    Directus are constants in the functions' namespace, never source text.

    Two functions of the same rules: ``apply`` (one bag -> dict) and ``apply_json``
    (bags -> JSON each), which saves the writer a Python call or four per record;
    ``batch=False`` leaves the second out (None) where ``io_apply``'s loop replaces it.
    """
    namespace: dict[str, Any] = {"hex_text": io_apply.hex_text, "dumps": orjson.dumps}
    namespace["stored_json"] = stored_json
    body: list[str] = []
    for i, rule in enumerate(rules):
        how, operand = step(rule)
        namespace[f"K{i}"], namespace[f"N{i}"], namespace[f"S{i}"] = (
            str(rule.io_id), rule.name, operand
        )  # fmt: skip
        body.append(_RULE_CODE[how].format(i=i))
    one = ["def apply(attributes):", "    get = attributes.get", "    out = {}", *body]
    one.append("    return out or None")
    source = "\n".join(one)
    if batch:
        loop = [_BATCH_HEAD, *(textwrap.indent(code, "    ") for code in body), _BATCH_TAIL]
        source += "\n" + "\n".join(loop)
    exec(compile(source, "<io mapping>", "exec"), namespace)
    return namespace["apply"], namespace.get("apply_json")


def plan(rules: tuple[IoRule, ...]) -> io_apply.Plan:
    """The rules as ``io_apply`` loops over them."""
    kinds = {
        "number": io_apply.NUMBER,
        "scaled": io_apply.SCALED,
        "divided": io_apply.DIVIDED,
        "bool": io_apply.BOOL,
        "bytes": io_apply.BYTES,
    }
    steps = [step(r) for r in rules]
    return io_apply.Plan(
        [str(r.io_id) for r in rules],
        [r.name for r in rules],
        [operand for _, operand in steps],
        [kinds[how] for how, _ in steps],
    )


# The batch form: io_apply's loop where it runs compiled, else the generated code.
_LOOP_IS_FASTER = native.runs_compiled(io_apply)


@attrs.frozen
class IoMapping:
    """The rules of one model, compiled into one function (``_compile``)."""

    rules: tuple[IoRule, ...]
    _apply: Any = attrs.field(init=False, repr=False, eq=False)
    # bags -> per bag ``stored_json(apply(bag))`` or None, compiled with ``_apply``.
    apply_json: Callable[[Iterable[Mapping[str, AttributeValue]]], list[bytes | None]] = (
        attrs.field(init=False, repr=False, eq=False)
    )

    def __attrs_post_init__(self) -> None:
        apply, apply_json = _compile(self.rules, batch=not _LOOP_IS_FASTER)
        if _LOOP_IS_FASTER:
            apply_json = functools.partial(io_apply.apply_json, plan(self.rules))
        object.__setattr__(self, "_apply", apply)
        object.__setattr__(self, "apply_json", apply_json)

    def apply(self, attributes: Mapping[str, AttributeValue]) -> dict[str, Any] | None:
        """Named attributes for a raw bag; None when no rule's IO element is present."""
        result: dict[str, Any] | None = self._apply(attributes)
        return result


DEFAULT_MAPPING = IoMapping(TELTONIKA_DEFAULTS)


@attrs.frozen
class IoMappings:
    """Per-model mappings from Directus; models without rows use ``default``."""

    by_model: Mapping[str, IoMapping] = attrs.field(factory=dict)
    default: IoMapping = DEFAULT_MAPPING

    @classmethod
    def from_rules(cls, rules: Iterable[tuple[str, IoRule]]) -> IoMappings:
        grouped: dict[str, list[IoRule]] = {}
        for model, rule in rules:
            grouped.setdefault(model, []).append(rule)
        return cls(
            {m: IoMapping(tuple(sorted(r, key=lambda r: r.io_id))) for m, r in grouped.items()}
        )

    def for_model(self, model: str | None) -> IoMapping:
        if model is None:
            return self.default
        return self.by_model.get(model, self.default)
