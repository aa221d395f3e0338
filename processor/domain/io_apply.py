"""The writer's batch form of an IO mapping as a plain loop over its rules, for mypyc.

Interpreted, a loop over rules cost ~2 µs per record more than the straight-line code
``io_mapping._compile`` generates, so that is what runs from source. Compiled
(``processor/native.py``) the loop is the cheaper one, and generated code cannot be
compiled. ``IoMapping.apply_json`` therefore takes this where it runs compiled; the
property test in ``tests/domain/test_io_mapping.py`` holds both forms to the rules read
one by one.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from processor.core.codec import stored_json

# Rule kinds as the loop tests them.
NUMBER: Final = 0
SCALED: Final = 1  # a number times its scale
BOOL: Final = 2
BYTES: Final = 3
DIVIDED: Final = 4  # a number divided by a whole number (``io_mapping.step``)


def hex_text(value: Any) -> str:
    """A ``bytes`` rule's value: the buffer's hex, or an integer's."""
    if isinstance(value, bytes):
        return value.hex()
    return format(int(value), "x")


class Plan:
    """One mapping's rules as parallel lists: IO key, name, operand and kind per rule
    (``io_mapping.step``). Operands stay Python objects (``Any``): unboxed, each result
    would box a new one."""

    def __init__(
        self, keys: list[str], names: list[str], operands: list[Any], kinds: list[int]
    ) -> None:
        self.keys = keys
        self.names = names
        self.operands = operands
        self.kinds = kinds


def apply_json(plan: Plan, bags: list[dict[str, Any]]) -> list[bytes | None]:
    """Per bag, the named attributes as stored JSON (``stored_json``), or None when no
    rule's IO element is present. The same rules as ``io_mapping._RULE_CODE``: a number
    rule skips a buffer, a scaled rule skips a value whose result no float holds."""
    keys, names, operands, kinds = plan.keys, plan.names, plan.operands, plan.kinds
    n = len(keys)
    result: list[bytes | None] = []
    for bag in bags:
        out: dict[str, Any] = {}
        for i in range(n):  # a native loop: over a range object it iterates generically
            value = bag.get(keys[i])
            if value is None:
                continue
            kind = kinds[i]
            if kind == NUMBER:
                if type(value) is not bytes:
                    out[names[i]] = value
            elif kind == DIVIDED:
                if type(value) is not bytes:
                    try:  # noqa: SIM105 (suppress() would be a context manager per value)
                        out[names[i]] = value / operands[i]
                    except OverflowError:
                        pass
            elif kind == SCALED:
                if type(value) is not bytes:
                    try:  # noqa: SIM105
                        out[names[i]] = value * operands[i]
                    except OverflowError:
                        pass
            elif kind == BOOL:
                out[names[i]] = any(value) if type(value) is bytes else value != 0
            else:
                out[names[i]] = hex_text(value)
        if not out:
            result.append(None)
            continue
        try:
            result.append(orjson.dumps(out))
        except TypeError:
            result.append(stored_json(out))
    return result
