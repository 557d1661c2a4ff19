"""The controller protocols the simulator calls, and their registries.

The core calls three kinds of controller, each through a small protocol, and
never imports an implementation: built-ins (``baselines``) and user classes
register by name in :data:`ROUTERS`, :data:`SCALERS` and :data:`PLACERS`, or
are passed in as objects (``Simulator(scaler=obj)``, or an object in the
scenario dict). See ``docs/custom-controllers.md``.

* :class:`Scaler` — once per control interval and model: reads a
  :class:`~envs.sim.view.ModelLoad` view, returns the desired replica count.
* :class:`Placer` — once per new replica (or job): reads the cluster's
  allocation state and the demand, returns a node index (-1: nowhere fits).
* :class:`~envs.sim.routing.Router` — once per arriving request, inside the
  event loop (a compiled rule or score function) or as a Python callable;
  defined in :mod:`envs.sim.routing` with the rules it can use.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from envs.sim.registry import Registry


@runtime_checkable
class Scaler(Protocol):
    """Decides a model's replica count once per control interval.

    ``desired_replicas`` gets the model's :class:`~envs.sim.view.ModelLoad`
    (the interval that just ended) and returns how many provisioned (READY +
    LOADING) replicas the model should have; the engine clamps it to the
    deployment's ``[min_replicas, max_replicas]``. ``reset`` starts an episode.

    Optional: a scaler whose decisions never read the load (a fixed count) sets the
    attribute ``reads_load = False``. The control loop may then call it with ``None``
    instead of a view, when nothing else needs the interval's views and KPIs, and a
    ``None`` answer keeps the model's current target.
    """

    def reset(self) -> None: ...

    def desired_replicas(self, load: Any) -> int: ...


@runtime_checkable
class Placer(Protocol):
    """Chooses the node for a replica or job.

    ``select(state, demand, rng)`` reads an :class:`~envs.sim.cluster.ClusterState`
    (never changing it) and a :class:`~envs.sim.cluster.Demand` and returns a
    node that fits the demand, or -1. It may draw from ``rng`` (the
    simulator's generator). ``reset`` starts an episode.
    """

    def reset(self) -> None: ...

    def select(self, state: Any, demand: Any, rng: np.random.Generator) -> int: ...


#: Scalers by scenario name (``scaling: hpa``); filled by ``baselines.scaling`` and by users.
SCALERS = Registry("scaling", "scaler", Scaler)
#: Placers by scenario name (``placement: fgd``); filled by ``baselines.placement`` and by users.
PLACERS = Registry("placement", "placer", Placer)
