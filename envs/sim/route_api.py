"""The simulator's routing API: decisions taken outside the event loop.

With the ``external`` router (or ``decode_router="external"``) the kernel stops at each arrival
(or handoff) that needs a decision; :class:`RouteAPI` is how a caller takes it: :meth:`route`
sends the waiting request and runs on, :meth:`choose_replica` asks a built-in rule what it would
pick, and :meth:`route_and_observe` is ``InferGym/Routing``'s whole step in one compiled call
(:mod:`envs.sim.batch`). A mixin of :class:`envs.sim.engine.Simulator`, which owns the state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.sim import kernel as K
from envs.sim.batch import RoutingBuffers, route_step_at
from envs.sim.features import outstanding_work_s, routing_observation
from envs.sim.routing import RouterSpec, route_once


class RouteAPI:
    """Routing decisions from outside the loop (mixed into :class:`~envs.sim.engine.Simulator`)."""

    def choose_replica(self, spec: RouterSpec | Any) -> int:
        """The replica a router's rule picks for the pending request (-1: central queue), without routing it.

        ``spec`` is a :class:`~envs.sim.routing.RouterSpec` or a router object.
        Round-robin style rules advance their counters, which the ``external``
        mode never uses otherwise: replaying a router this way through
        ``InferGym/Routing-v0`` makes exactly its in-loop decisions.
        """
        if not isinstance(spec, RouterSpec):
            spec = spec.kernel_spec()
        i = self.pending_request
        if i is None:
            raise RuntimeError("choose_replica() called with no request waiting for a routing decision")
        addr = spec.score.address if spec.score is not None else 0
        return int(
            route_once(
                self.state.rf,
                self.state.ri,
                self.state.pf,
                self.state.pi,
                self.state.qn,
                self.state.mi,
                self.state.mrep,
                self.state.mn,
                self.state.gf,
                self.state.gi,
                self.state.pc,
                self.state.kc,
                i,
                int(spec.rule),
                addr,
                int(spec.score is not None and spec.score.aggregates),
                float(spec.load_bound_eps),
                *map(float, spec.params),
            )  # fmt: skip
        )

    @property
    def pending_request(self) -> int | None:
        """Id of the request waiting for an external routing decision, if any."""
        p = int(self.state.gi[K.I_PENDING])
        return None if p < 0 else p

    @property
    def pending_stage(self) -> str | None:
        """Which decision the pending request waits for: ``"arrival"`` (the router's), ``"decode"`` (a
        disaggregated model's decode router, after its handoff), or None when none is pending."""
        if self.state.gi[K.I_PENDING] < 0:
            return None
        return "decode" if self.state.gi[K.I_HAND_R] >= 0 else "arrival"

    def route(self, replica: int, until: float | None = None) -> int | None:
        """Send the pending request to ``replica`` (a READY replica of its model), or -1 to the central queue.

        With ``until``, go on running to ``until`` in the same call and return
        what :meth:`advance` would (the next pending request's id, or None): one
        compiled call per routing decision, what ``InferGym/Routing-v0`` steps with.
        """
        i = self.pending_request
        if i is None:
            raise RuntimeError("route() called with no request waiting for a routing decision")
        self._check_route(i, replica, "replica")
        if until is None:
            self._kernel(self.now, route_to=replica)
            self.sync_releases()
            return None
        if until < self.now:
            raise ValueError(f"until: {until!r} must be >= the current time {self.now!r}")
        code = self._kernel(until, route_to=replica)
        self.sync_releases()
        return int(self.state.gi[K.I_PENDING]) if code == K.STOP_ROUTE else None

    # ------------------------------------------------------------------ compiled per-step features

    def routing_observation(self, i: int, speed_max: np.ndarray, seen: np.ndarray, terms: np.ndarray,
                            obs: np.ndarray, mask: np.ndarray, slot_rep: np.ndarray, norms: np.ndarray) -> int:  # fmt: skip
        """Fill ``InferGym/Routing``'s observation, mask and slots for request ``i`` (-1: none) and add
        the costs of requests finished since the caller's cursor ``seen`` to ``terms``; see
        :func:`envs.sim.features.routing_observation`. Returns the number of READY slots."""
        return int(
            routing_observation(
                self.state.rf,
                self.state.ri,
                self.state.pf,
                self.state.pi,
                self.state.qn,
                self.state.mrep,
                self.state.mn,
                self.state.log_done,
                self.state.log_drop,
                self.state.gi,
                self.state.pc,
                self.state.kc,
                self.slo,
                speed_max,
                int(i),
                self.n_models,
                self.n_classes,
                seen,
                terms,
                obs,
                mask,
                slot_rep,
                norms,
            )  # fmt: skip
        )

    def route_and_observe(self, route_to: int, until: float, buf: RoutingBuffers) -> int:
        """One ``InferGym/Routing-v0`` step in one compiled call (:func:`envs.sim.batch.route_step_at`: the state and the buffers cross as two address tables).

        Sends the pending request (if any) to ``route_to`` (a READY replica of its model, or -1: the
        caller checked it), runs to the next arrival that needs a decision and fills ``buf`` for it;
        returns its id, or -1 when the clock reached ``until`` first. Faults due by ``until`` are
        applied on the way, as :meth:`advance` does. ``route_to`` is an ``int`` and ``until`` a
        ``float`` (Routing's step calls this once per request: nothing is converted here).
        """
        faults, st = self.faults, self.state
        while True:
            stop = until if faults is None or faults.next_time_s() > until else faults.next_time_s()
            i = route_step_at(st.address_table(), buf.table(self.slo), stop, route_to, self.n_models,
                              self.n_classes)  # fmt: skip
            if i >= 0 or faults is None or faults.next_time_s() > until:
                if st.gi[K.I_NRELEASED] != self._synced_releases:  # (sync_releases' own test, unrolled)
                    self.sync_releases()
                return i
            route_to = -1
            faults.apply(self)

    def outstanding_work_s(self, cap_s: float) -> float:
        """Seconds of queued and running work over all replicas (:func:`envs.sim.features.outstanding_work_s`)."""
        return float(
            outstanding_work_s(
                self.state.pf,
                self.state.pi,
                self.state.qn,
                self.state.mrep,
                self.state.mn,
                self.n_models,
                cap_s,
            )
        )

    def _check_route(self, i: int, replica: Any, what: str) -> None:
        if isinstance(replica, bool) or not isinstance(replica, (int, np.integer)):
            raise ValueError(f"{what}: {replica!r} must be a replica id (int) or -1")
        if replica >= 0:
            if not (replica < self.n_replicas and self.state.pi[replica, K.Q_STATE] == K.REP_READY):
                raise ValueError(f"{what}: {replica!r} is not a READY replica")
            if self.state.pi[replica, K.Q_MODEL] != self.state.ri[i, K.R_MODEL]:
                raise ValueError(
                    f"{what}: {replica!r} does not serve model {int(self.state.ri[i, K.R_MODEL])}"
                )
        elif replica != -1:
            raise ValueError(f"{what}: {replica!r} must be a replica id or -1 (central queue)")
