"""How a rally car's speed changes over simulated time: stops, pulling away, cruising.

Downstream code sees speeds (zones keep the maximum), distances between fixes (line
crossings are interpolated along them) and ignition/movement flips (event records), so
the profile has all three: cruise targets of 60-150 km/h on stages, slow village
sections, stops with the engine running or off, and finite acceleration and braking
between them, so no two consecutive fixes imply an impossible speed.
"""

from __future__ import annotations

import random
from typing import Final

import attrs

KMH: Final = 1 / 3.6  # km/h -> m/s
_ACCEL_MS2: Final = 2.8  # a rally car pulling away hard but on gravel
_BRAKE_MS2: Final = 4.5
_STEP_S: Final = 0.5  # integration step: small next to the 1-5 s between fixes
# Stops longer than this are with the engine off (ignition 0, external voltage drops).
_ENGINE_OFF_AFTER_S: Final = 45.0


@attrs.define
class Driver:
    """The speed state of one car; ``advance`` moves simulated time on and says how far."""

    rng: random.Random
    speed_ms: float = 0.0
    target_ms: float = 0.0
    phase_left_s: float = 0.0
    stop_s: float = 0.0  # length of the current stop, 0 while driving

    @property
    def ignition(self) -> bool:
        return not (self.stop_s > _ENGINE_OFF_AFTER_S and self.speed_ms == 0.0)

    @property
    def moving(self) -> bool:
        return self.speed_ms > 0.5

    @property
    def speed_kmh(self) -> float:
        return self.speed_ms / KMH

    def advance(self, seconds: float) -> float:
        """Let ``seconds`` pass; the metres driven meanwhile."""
        travelled = 0.0
        left = seconds
        while left > 1e-9:
            step = min(_STEP_S, left)
            if self.phase_left_s <= 0:
                self._next_phase()
            before = self.speed_ms
            if self.target_ms > before:
                self.speed_ms = min(self.target_ms, before + _ACCEL_MS2 * step)
            else:
                self.speed_ms = max(self.target_ms, before - _BRAKE_MS2 * step)
            travelled += (before + self.speed_ms) / 2 * step
            self.phase_left_s -= step
            left -= step
        return travelled

    def _next_phase(self) -> None:
        rng = self.rng
        if self.stop_s == 0.0 and self.target_ms > 0 and rng.random() < 0.2:
            # Stop: a junction, a refuel, a neutralisation (long: engine off).
            self.stop_s = rng.choice((rng.uniform(5, 40), rng.uniform(60, 240)))
            self.target_ms, self.phase_left_s = 0.0, self.stop_s
        elif rng.random() < 0.15:
            # A village or speed-control zone.
            self.stop_s = 0.0
            self.target_ms, self.phase_left_s = rng.uniform(30, 50) * KMH, rng.uniform(20, 90)
        else:
            self.stop_s = 0.0
            self.target_ms, self.phase_left_s = rng.uniform(60, 150) * KMH, rng.uniform(20, 240)
