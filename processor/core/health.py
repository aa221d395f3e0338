"""Readiness as a set of named problems.

Each component reports what stops it from working (``redis``, ``postgres``, ``consumer``)
and clears it when it recovers; ``/readyz`` is 200 exactly when the set is empty, and its
503 body names every reason, so an operator sees *why* an instance is out of rotation.
"""

from __future__ import annotations

import attrs


@attrs.define
class Readiness:
    _problems: dict[str, str] = attrs.field(factory=dict)

    def fail(self, component: str, reason: str) -> None:
        self._problems[component] = reason

    def ok(self, component: str) -> None:
        self._problems.pop(component, None)

    @property
    def ready(self) -> bool:
        return not self._problems

    def problems(self) -> dict[str, str]:
        return dict(self._problems)
