"""Compiled steps over one or many simulations: the routing step and the batched calls of the vector envs.

A Python call into compiled code costs about 0.1 us per array argument, and a Gymnasium step that
makes two such calls with twenty arrays each spends more time crossing into numba than simulating.
This module fuses what one environment step runs into one compiled function, and runs that
function for N simulations in one call:

* :func:`route_step` routes the pending request, runs the event loop to the next arrival that
  needs a decision (or to ``until``) and fills the routing observation: one ``InferGym/Routing-v0``
  step in one call. Arrivals whose model has no READY replica in a slot go to the central queue
  inside the same call, as :class:`~envs.routing.RoutingEnv` documents.
* :func:`route_step_at` is :func:`route_step` with the state and the env's buffers passed as two
  address tables (:mod:`envs.sim.ptrs`): the single Routing env's call, two arguments instead of 37.
* :func:`route_batch` runs :func:`route_step` for every simulation of a vector env.
* :func:`advance_at` runs :func:`envs.sim.kernel.advance` for one simulation given as an address
  table, without the GIL: the Autoscale vector env runs its simulations on several threads at once
  (they share no array, so the threads never write the same memory).

The simulations' arrays reach :func:`route_batch` as one flat address table (:class:`StateList`:
each simulation's :meth:`envs.sim.state.EngineState.address_table`), so a vector step costs one
argument per kind, not one per array and simulation, and no reference counting per array (a numba
typed list of tuples, used before, paid 42 atomic count updates per simulation and step, a sixth of
the step). A simulation that grows its arrays (more replicas than rows) gets its row replaced
before the next call (:meth:`StateList.sync`).
"""

from __future__ import annotations

import os
import types
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import config, njit, prange

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim import ptrs as P
from envs.sim.features import outstanding_work_s, routing_observation
from envs.sim.kernel import STOP_ROUTE, advance
from envs.sim.layout import G_NOW, I_NRELEASED, I_PENDING

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's default OpenMP layer shares libgomp with torch: after a parallel step, torch's own
    # parallel kernels ran with numba's thread count and spun against it (a 20 us tanh took 2.6 ms
    # while training here). The work-queue layer has its own threads, idle when not in use.
    config.THREADING_LAYER = "workqueue"

#: Arrays of :meth:`envs.sim.state.EngineState.kernel_args` (entries per simulation in a
#: :class:`StateList`'s table).
N_STATE_ARRAYS = 21
#: int64 per simulation in a :class:`StateList`'s table
ROW_WIDTH = N_STATE_ARRAYS * P.ROW

#: ``decisions`` codes: an arrival that had no READY replica in a slot, and a masked action (both
#: sent to the central queue).
AUTO_TO_CENTRAL, MASKED_TO_CENTRAL = -1, -2


@njit(cache=True, error_model="numpy", _nrt=False)
def route_step(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gf, gi, log_done, log_drop,
               tick_inflight, tick_queued, pc, kc, until, route_to, slo, speed_max, n_models, n_classes, seen, terms, obs,
               mask, slot_rep, norms, decisions):  # fmt: skip
    """Route the pending request (if any) to ``route_to`` and run to the next decision or to ``until``.

    Returns the id of the next request that waits for a decision, with its observation, mask and
    slots filled by :func:`envs.sim.features.routing_observation` (which also adds the costs of the
    requests finished so far to ``terms``); or -1 when the clock reached ``until`` first (nothing
    is filled then: the caller runs the control boundary or the fault due at ``until`` and calls
    again). An arrival with no READY replica in a slot is sent to the central queue here and marked
    ``AUTO_TO_CENTRAL`` in ``decisions``.
    """
    while True:
        code = advance(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gf, gi, log_done,
                       log_drop, tick_inflight, tick_queued, pc, kc, until, route_to)  # fmt: skip
        if code != STOP_ROUTE:
            return -1
        i = gi[I_PENDING]
        n_ready = routing_observation(rf, ri, pf, pi, qn, mrep, mn, log_done, log_drop, gi, pc, kc, slo, speed_max, i,
                                      n_models, n_classes, seen, terms, obs, mask, slot_rep, norms)  # fmt: skip
        if n_ready > 0:
            return i
        decisions[i] = AUTO_TO_CENTRAL
        route_to = -1


@njit(cache=True, error_model="numpy")  # with the runtime: the views it makes are returned by helpers
def route_step_at(st, bt, until, route_to, n_models, n_classes):
    """:func:`route_step` with the state and the buffers as address tables (:mod:`envs.sim.ptrs`):
    ``st`` is :meth:`envs.sim.state.EngineState.address_table`, ``bt`` :meth:`RoutingBuffers.table`.
    Two arguments cross into compiled code instead of thirty-seven."""
    return route_step(
        P.f64_2(st, 0), P.i64_2(st, 1), P.f64_2(st, 2), P.i64_2(st, 3), P.i64_2(st, 4), P.i64_2(st, 5),
        P.i64_2(st, 6), P.i64_2(st, 7), P.i64_1(st, 8), P.i64_2(st, 9), P.i64_2(st, 10), P.i64_1(st, 11),
        P.f64_2(st, 12), P.f64_1(st, 13), P.i64_1(st, 14), P.i64_1(st, 15), P.i64_1(st, 16), P.i64_2(st, 17),
        P.i64_2(st, 18), P.i64_1(st, 19), P.i64_3(st, 20),
        until, route_to, P.f64_2(bt, 0), P.f64_1(bt, 1), n_models, n_classes, P.i64_1(bt, 2), P.f64_1(bt, 3),
        P.f32_1(bt, 4), P.b1_1(bt, 5), P.i64_1(bt, 6), P.f64_1(bt, 7), P.i64_1(bt, 8),
    )  # fmt: skip


#: Rows of :func:`route_batch`'s ``out`` array (one column per simulation).
(OUT_REWARD, OUT_SLO, OUT_DROPS, OUT_LATENCY, OUT_INVALID, OUT_COMPLETED, OUT_E2E, OUT_NOW, OUT_REPLICA,
 OUT_REQUEST, OUT_SHAPING) = range(11)  # fmt: skip
N_OUT = 11
#: ``needs`` flags of :func:`route_batch`: what the caller still does in Python for a simulation.
NEED_BOUNDARY, NEED_SYNC = 1, 2


def _route_batch(states, decisions, fast, until, actions, pending, mask, slot_rep, slo, speed_max, n_models,
                 n_classes, seen, terms, obs, norms, w, latency_unit_s, shaping, shaping_cap_s, phi, synced, out,
                 needs, n_invalid, n_slow):  # fmt: skip
    """One ``InferGym/Routing-v0`` step of every simulation ``e`` with ``fast[e]`` (see :func:`route_step`).

    The action ``actions[e]`` is a slot: a masked slot sends the pending request to the central
    queue (``decisions`` code -2, an invalid action, counted in ``n_invalid[e]``), another routes it
    to ``slot_rep[e, a]``. The step's reward and info values go to ``out[:, e]`` (rows ``OUT_*``),
    computed as the single env does, operation for operation. A simulation that reached ``until[e]``
    before its next decision gets ``needs[e] |= NEED_BOUNDARY`` and nothing else (its costs stay in
    ``terms[e]``); one whose kernel released replicas since ``synced[e]`` gets ``NEED_SYNC``.
    Returns the number of simulations with a need (``n_slow[0]`` gets the number without ``fast``),
    or -1, before anything changes, if an action is not a slot (``0 <= actions[e] < mask.shape[1]``).
    """
    n_slots = mask.shape[1]
    for e in range(len(pending)):
        if actions[e] < 0 or actions[e] >= n_slots:
            return -1
    for k in prange(len(pending)):
        e = np.int64(k)  # prange's index is unsigned
        needs[e] = 0
        if not fast[e]:
            continue
        b = N_STATE_ARRAYS * e  # simulation e's first entry in the table
        dec = P.i64_1(decisions, e)
        a = actions[e]
        i = pending[e]
        # rows as views without reference counts (a[e] would update the batch's count twice each)
        m_e, s_e, t_e = P.row(mask, e), P.row(slot_rep, e), P.row(terms, e)
        if m_e[a]:
            r = s_e[a]
            dec[i] = r
            inv = 0.0
        else:
            r = -1
            dec[i] = MASKED_TO_CENTRAL
            inv = 1.0
            n_invalid[e] += 1
        gf, gi = P.f64_1(states, b + 13), P.i64_1(states, b + 14)
        p = route_step(P.f64_2(states, b), P.i64_2(states, b + 1), P.f64_2(states, b + 2), P.i64_2(states, b + 3),
                       P.i64_2(states, b + 4), P.i64_2(states, b + 5), P.i64_2(states, b + 6), P.i64_2(states, b + 7),
                       P.i64_1(states, b + 8), P.i64_2(states, b + 9), P.i64_2(states, b + 10),
                       P.i64_1(states, b + 11), P.f64_2(states, b + 12), gf, gi, P.i64_1(states, b + 15),
                       P.i64_1(states, b + 16), P.i64_2(states, b + 17), P.i64_2(states, b + 18),
                       P.i64_1(states, b + 19), P.i64_3(states, b + 20), until[e], r, slo, speed_max,
                       n_models, n_classes, P.row(seen, e), t_e, P.row(obs, e), m_e, s_e, norms, dec)  # fmt: skip
        pending[e] = p
        out[OUT_NOW, e] = gf[G_NOW]
        out[OUT_REPLICA, e] = r
        out[OUT_INVALID, e] = inv
        flag = 0
        if gi[I_NRELEASED] != synced[e]:
            flag |= NEED_SYNC
        if p < 0:
            flag |= NEED_BOUNDARY
        else:
            t = t_e
            latency = t[2] / latency_unit_s
            reward = -(0 + w[0] * t[0] + w[1] * t[1] + w[2] * latency + w[3] * inv)
            if shaping > 0.0:
                phi1 = outstanding_work_s(
                    P.f64_2(states, b + 2),
                    P.i64_2(states, b + 3),
                    P.i64_1(states, b + 8),
                    P.i64_2(states, b + 10),
                    P.i64_1(states, b + 11),
                    n_models,
                    shaping_cap_s,
                )
                shaped = shaping * (phi[e] - phi1)
                phi[e] = phi1
                reward += shaped
                out[OUT_SHAPING, e] = shaped
            out[OUT_REWARD, e] = reward
            out[OUT_SLO, e] = t[0]
            out[OUT_DROPS, e] = t[1]
            out[OUT_LATENCY, e] = latency
            out[OUT_COMPLETED, e] = t[3]
            out[OUT_E2E, e] = t[2]
            out[OUT_REQUEST, e] = p
            t[0] = t[1] = t[2] = t[3] = 0.0
        needs[e] = flag
    n_need = slow = 0
    for e in range(len(pending)):
        if needs[e] != 0:
            n_need += 1
        if not fast[e]:
            slow += 1
    n_slow[0] = slow
    return n_need


def _renamed(fn: types.FunctionType, name: str) -> types.FunctionType:
    """``fn`` under another name. numba's on-disk cache names an entry after the function's qualified
    name and first line, not after the compile options, so two builds of one Python function (serial
    and ``parallel=True``) would share one entry and each process would load whichever was compiled
    first: the serial build then ran as the parallel one, with the thread pool's start-up on every call."""
    out = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    out.__qualname__ = name
    out.__doc__ = fn.__doc__
    return out


#: Serial and parallel builds of the batched routing step (the parallel one runs the simulations
#: on all cores; starting numba's work-queue threads costs about 100 us a call, the work of some
#: twenty routing steps, so few simulations run faster on one core).
route_batch = njit(cache=True, error_model="numpy")(_route_batch)
route_batch_parallel = njit(cache=True, error_model="numpy", parallel=True)(
    _renamed(_route_batch, "_route_batch_parallel")
)


@njit(cache=True, error_model="numpy", nogil=True)
def advance_at(st, until):
    """:func:`envs.sim.kernel.advance` of one simulation to ``until`` (no routing decision pending), its
    state passed as an address table (:meth:`envs.sim.state.EngineState.address_table`). Releases the
    GIL: the Autoscale vector env runs several simulations on worker threads while its own thread
    reads and builds the other sub-envs' steps. Returns the kernel's code."""
    return advance(
        P.f64_2(st, 0), P.i64_2(st, 1), P.f64_2(st, 2), P.i64_2(st, 3), P.i64_2(st, 4), P.i64_2(st, 5),
        P.i64_2(st, 6), P.i64_2(st, 7), P.i64_1(st, 8), P.i64_2(st, 9), P.i64_2(st, 10), P.i64_1(st, 11),
        P.f64_2(st, 12), P.f64_1(st, 13), P.i64_1(st, 14), P.i64_1(st, 15), P.i64_1(st, 16), P.i64_2(st, 17),
        P.i64_2(st, 18), P.i64_1(st, 19), P.i64_3(st, 20),
        until, -1,
    )  # fmt: skip


@dataclass(eq=False)
class RoutingBuffers:
    """What :func:`route_step` fills or reads besides the state, owned by the caller (the Routing env).

    ``speed_max`` (per model, req/s) and ``norms`` are read; ``seen`` (done / dropped cursors),
    ``terms`` (cost sums), ``obs``, ``mask``, ``slot_rep`` and ``decisions`` (per request) are
    written. In a vector env each is a row of the batched array.
    """

    speed_max: np.ndarray
    norms: np.ndarray
    seen: np.ndarray
    terms: np.ndarray
    obs: np.ndarray
    mask: np.ndarray
    slot_rep: np.ndarray
    decisions: np.ndarray
    _table: tuple = field(default=(None, None), repr=False)

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name != "_table":  # a buffer replaced (e.g. re-pointed after unpickling): the table is stale
            object.__setattr__(self, "_table", (None, None))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": (None, None)}  # addresses mean nothing in another process

    def table(self, slo: np.ndarray) -> np.ndarray:
        """The buffers and a simulation's ``slo`` as one address table (:func:`route_step_at`'s ``bt``),
        built once per ``slo`` array (the buffers themselves are never replaced)."""
        held, t = self._table
        if held is not slo:
            arrays = (slo, self.speed_max, self.seen, self.terms, self.obs, self.mask, self.slot_rep, self.norms,
                      self.decisions)  # fmt: skip
            t = P.address_table(arrays)
            self._table = (slo, t)  # holding slo keeps the address valid
        return t


class StateList:
    """The kernel arrays of N simulations as one flat address table (:mod:`envs.sim.ptrs`): simulation
    ``e``'s arrays are entries ``N_STATE_ARRAYS * e ..`` in :meth:`EngineState.kernel_args` order.

    ``sync(e, sim)`` puts simulation ``e``'s arrays in (after a reset, or whenever it may have grown
    them); it compares the state's table by identity first (a state builds a new one whenever it
    replaces an array), so calling it after every Python-side change costs well under a microsecond
    when nothing moved. The arrays a row points at are held here until the row is replaced, so a
    row is never left pointing at freed memory.
    """

    def __init__(self, sims: Sequence[object]) -> None:
        self.items = np.zeros(len(sims) * ROW_WIDTH, np.int64)
        self._held: list[tuple | None] = [None] * len(sims)
        for e, sim in enumerate(sims):
            self.sync(e, sim)

    def __len__(self) -> int:
        return len(self._held)

    def sync(self, e: int, sim: object) -> None:
        table = sim.state.address_table()
        held = self._held[e]
        if held is None or held[0] is not table:
            k = e * ROW_WIDTH
            self.items[k : k + len(table)] = table
            self._held[e] = (table, sim.state.kernel_args())


class ArrayList:
    """N int64 arrays (the vector envs' per-simulation ``decisions``) as one address table; item
    assignment replaces one (and holds it while its address is in the table)."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._held = list(arrays)
        self.items = P.address_table(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def __getitem__(self, e: int) -> np.ndarray:
        return self._held[e]

    def __setitem__(self, e: int, array: np.ndarray) -> None:
        if array is not self._held[e]:
            self.items[P.ROW * e : P.ROW * (e + 1)] = P.address_table([array])
            self._held[e] = array


__all__ = [
    "AUTO_TO_CENTRAL",
    "MASKED_TO_CENTRAL",
    "N_STATE_ARRAYS",
    "ROW_WIDTH",
    "ArrayList",
    "N_OUT",
    "RoutingBuffers",
    "StateList",
    "advance_at",
    "route_batch",
    "route_batch_parallel",
    "route_step",
    "route_step_at",
]
