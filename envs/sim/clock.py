"""The one control loop: boundaries every ``control_interval_s``, the last one at the horizon.

Controllers act at control boundaries, the simulation runs between them.
:func:`envs.sim.run_scenario` and every environment move time with a
:class:`ControlClock`, so an interval means the same thing everywhere:
interval ``k`` (1-based) ends at ``min(k * control_interval_s, horizon_s)`` and
there are ``ceil(horizon_s / control_interval_s)`` of them.
"""

from __future__ import annotations

import math
from typing import Any


class ControlClock:
    """Counts control intervals of one simulator and advances it to the next boundary."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        sc = sim.scenario
        self.interval_s = float(sc.control_interval_s)
        self.horizon_s = float(sc.horizon_s)
        self.n_intervals = int(math.ceil(self.horizon_s / self.interval_s - 1e-9))
        self.k = 0  #: intervals completed
        #: end of the interval in progress (the horizon once every interval is done); an attribute
        #: kept with ``k`` (Routing steps read it once per request)
        self.next_boundary_s = min(self.interval_s, self.horizon_s)

    def _count(self) -> None:
        self.k += 1
        self.next_boundary_s = min((self.k + 1) * self.interval_s, self.horizon_s)

    @property
    def done(self) -> bool:
        """Whether the last interval (the one ending at the horizon) has been run."""
        return self.k >= self.n_intervals

    @property
    def at_last_boundary(self) -> bool:
        """Whether the interval just completed ended at the horizon."""
        return self.k >= self.n_intervals

    def advance(self) -> int | None:
        """Run the simulator to the next boundary and count the interval.

        With an external router the simulator may stop early at an arrival: the
        pending request's id is returned and the interval is not counted; route
        it (``Simulator.route``) and call again.
        """
        pending = self.sim.advance(self.next_boundary_s)
        if pending is None:
            self._count()
        return pending

    def passed(self) -> None:
        """Count the interval in progress as done (its boundary was reached by other means)."""
        self._count()
