"""Why a record is poison. Each contract rule that rejects a record has its own type.

The dead-letter router records ``kind`` (a stable snake_case name, used as a metric label)
and the message; operators fix and replay on that basis, so messages name the field and
the offending value.
"""

from __future__ import annotations


class PoisonRecord(Exception):
    """A stream entry that violates the position-record contract. Never retried."""

    kind = "poison"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MissingPayload(PoisonRecord):
    kind = "missing_payload"


class UnknownVersion(PoisonRecord):
    kind = "unknown_version"


class MalformedPayload(PoisonRecord):
    """Not UTF-8, not JSON, or not a JSON object."""

    kind = "malformed_payload"


class MissingField(PoisonRecord):
    kind = "missing_field"


class InvalidField(PoisonRecord):
    """A field has the wrong type or a value outside the contract's range."""

    kind = "invalid_field"


class InvalidAttribute(PoisonRecord):
    """An IO attribute key or value (including sentinels) breaks the contract."""

    kind = "invalid_attribute"


class FutureTimestamp(PoisonRecord):
    kind = "future_timestamp"


POISON_KINDS: tuple[type[PoisonRecord], ...] = (
    MissingPayload,
    UnknownVersion,
    MalformedPayload,
    MissingField,
    InvalidField,
    InvalidAttribute,
    FutureTimestamp,
)
