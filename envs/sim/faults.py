"""Node failures: the schedule of a scenario's faults and what a failure does to a replica's work.

A scenario's faults (``faults``, ``nodes[].mtbf_s`` / ``mttr_s`` and spot pools ``nodes[].spot``, see
docs/scenarios.md) become a sorted schedule of (time, node, notice | fail | repair) events when a
simulation is built. A spot node is told ``notice_s`` before it is taken (``ClusterState.node_noticed``,
and ``ModelLoad.replicas_noticed`` for scalers), so a placer can avoid it and a scaler replace its
replicas in time. When a node
fails, every replica on it is lost at once (as when a machine or its GPUs go down:
Kubernetes marks the node NotReady and its pods are gone, https://kubernetes.io/docs/concepts/
architecture/nodes/#condition); its weights in the node's cache are gone too, so a later cold
start there is remote. Its GPUs cannot be allocated until the repair.

What happens to the requests the lost replicas held is the scenario's ``fault_policy``:

* ``requeue`` (default): each request loses its progress (its KV cache was on the lost GPUs) and
  goes back to the router at the failure time, as a client retry or a gateway's retry on another
  endpoint would send it; its arrival time is unchanged, so its latency includes the lost work. With
  an external (Python or agent) router the request waits in its model's central queue instead.
* ``drop``: each request is dropped (it counts in ``requests_dropped``).

Both are counted: ``requests_requeued``, ``requests_lost_to_faults``. A replica can also crash on
its own (``models[].replica_crash_per_hour``): its work goes the same way and it restarts in place. Requests are conserved
through every fault: arrived = completed + dropped + in the system.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.eventq import _drop, set_replica_state
from envs.sim.kernel import dispatch
from envs.sim.layout import (
    DROP_FAULT,
    I_NMODELS,
    I_ROUTER,
    M_QUEUED,
    M_RUNNING,
    P_BUSY_S,
    P_ITER_START,
    P_RELEASE,
    Q_BUSY,
    Q_KVRES,
    Q_KVSUM,
    Q_MODEL,
    Q_NRUN,
    Q_STATE,
    Q_VERSION,
    R_ADMIT,
    R_BLOCKS,
    R_COMPUTED,
    R_DEADLINE,
    R_FIRST,
    R_GEN,
    R_HELD,
    R_MODEL,
    R_NEXT,
    R_REASON,
    R_REPLICA,
    R_SCHED,
    R_STATE,
    REP_READY,
    REP_RELEASED,
    REQ_QUEUED,
    RUN_ID_MASK,
)
from envs.sim.routing import RULE_EXTERNAL, route

FAIL, REPAIR, NOTICE, CRASH = 0, 1, 2, 3
#: why a node fails
HARDWARE, SPOT, SCRIPT = 0, 1, 2


@dataclass(frozen=True)
class FaultEvent:
    """A node going down (``FAIL``), coming back (``REPAIR``) or told it will go (``NOTICE``) at ``time_s``."""

    time_s: float
    node: int  #: the node; for a CRASH, the model
    kind: int
    cause: int = HARDWARE
    u: float = 0.0  #: for a CRASH, which READY replica (thinning: see :func:`schedule`)


def schedule(
    rng: np.random.Generator,
    horizon_s: float,
    pool_nodes: Sequence[range],
    mtbf_s: Sequence[float | None],
    mttr_s: Sequence[float],
    scripted: Sequence[tuple[float, int, Sequence[int], float]],
    spot: Sequence[tuple[float, float, float] | None] = (),
    crashes: Sequence[tuple[float, int]] = (),
) -> list[FaultEvent]:
    """Every fault event before the horizon, in time order (ties: node, then fail before repair).

    ``pool_nodes[p]`` are pool ``p``'s node indices. Random failures: each node of a pool with an
    ``mtbf_s`` alternates exponential up times (mean ``mtbf_s``) and down times (mean ``mttr_s``).
    ``scripted``: (at_s, pool, node offsets within the pool, duration_s). ``spot[p]``: pool ``p``'s
    (preemptions per hour, notice seconds, mean down seconds) or None: each of its nodes is
    preempted as a Poisson process while up, told ``notice_s`` before (or at time 0 if sooner).
    ``crashes[m]``: model ``m``'s (crashes per READY replica and hour, max_replicas): candidate
    crashes at ``max_replicas`` times that rate, each hitting READY replica ``floor(u * max_replicas)``
    (in id order) if there is one: thinning, so each READY replica crashes at the given rate.
    """
    events: list[FaultEvent] = []
    for m, (per_hour, max_replicas) in enumerate(crashes):
        if per_hour <= 0:
            continue
        t = 0.0
        while True:
            t += float(rng.exponential(3600.0 / (per_hour * max_replicas)))
            if t >= horizon_s:
                break
            events.append(FaultEvent(t, m, CRASH, HARDWARE, float(rng.random())))
    for p, nodes in enumerate(pool_nodes):
        if p >= len(spot) or spot[p] is None:
            continue
        per_hour, notice_s, down_s = spot[p]
        for node in nodes:
            t = 0.0
            while True:
                t += float(rng.exponential(3600.0 / per_hour))
                if t >= horizon_s:
                    break
                events.append(FaultEvent(max(0.0, t - notice_s), node, NOTICE, SPOT))
                events.append(FaultEvent(t, node, FAIL, SPOT))
                t += float(rng.exponential(down_s))
                if t >= horizon_s:
                    break
                events.append(FaultEvent(t, node, REPAIR, SPOT))
    for p, nodes in enumerate(pool_nodes):
        if mtbf_s[p] is None:
            continue
        for node in nodes:
            t = 0.0
            while True:
                t += float(rng.exponential(mtbf_s[p]))
                if t >= horizon_s:
                    break
                events.append(FaultEvent(t, node, FAIL))
                t += float(rng.exponential(mttr_s[p]))
                if t < horizon_s:
                    events.append(FaultEvent(t, node, REPAIR))
    for at_s, pool, offsets, duration_s in scripted:
        for k in offsets:
            node = pool_nodes[pool][k]
            events.append(FaultEvent(at_s, node, FAIL, SCRIPT))
            if at_s + duration_s < horizon_s:
                events.append(FaultEvent(at_s + duration_s, node, REPAIR, SCRIPT))
    events.sort(key=lambda e: (e.time_s, e.node, e.kind))
    # a node already down stays down: drop a FAIL while down and the REPAIR of a FAIL dropped
    out, down = [], {}
    for e in events:
        if e.kind == CRASH:
            out.append(e)
        elif e.kind == NOTICE:
            if down.get(e.node, 0) == 0:
                out.append(e)
        elif e.kind == FAIL:
            down[e.node] = down.get(e.node, 0) + 1
            if down[e.node] == 1:
                out.append(e)
        elif down.get(e.node, 0) > 0:
            down[e.node] -= 1
            if down[e.node] == 0:
                out.append(e)
    return out


@njit(cache=True, error_model="numpy")
def fail_replicas(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gf, gi, log_drop, pc, kc,
                  reps, t, requeue):  # fmt: skip
    """Lose replicas ``reps`` at time ``t`` with their work; returns (requests re-queued, dropped).

    Every replica is taken out first (RELEASED at ``t``, its pending event cancelled, its busy time
    counted up to ``t``), so no request is re-routed to another replica that is being lost. Then
    their running and queued requests, in arrival (id) order, are re-routed (``requeue``) or
    dropped. The caller frees the GPUs.
    """
    n_models = gi[I_NMODELS]
    total = 0
    for r in reps:
        total += pi[r, Q_NRUN] + qn[n_models + r]
    held = np.empty(total, np.int64)
    k = 0
    for r in reps:
        own = n_models + r
        m = pi[r, Q_MODEL]
        for j in range(pi[r, Q_NRUN]):
            held[k] = run[r, j] & RUN_ID_MASK  # the reserve engine's heap keys hold the id low
            k += 1
        for lst in range(qh.shape[1]):
            i = qh[own, lst]
            while i >= 0:
                held[k] = i
                k += 1
                i = ri[i, R_NEXT]
            qh[own, lst] = -1
            qt[own, lst] = -1
        qn[own] = 0
        # running requests count as queued again (dispatch and _drop expect queued ones)
        mi[m, M_RUNNING] -= pi[r, Q_NRUN]
        mi[m, M_QUEUED] += pi[r, Q_NRUN]
        if pi[r, Q_BUSY] == 1:
            pf[r, P_BUSY_S] += t - pf[r, P_ITER_START]
            pi[r, Q_BUSY] = 0
        set_replica_state(pi, mrep, mn, gi, r, REP_RELEASED)
        pi[r, Q_VERSION] += 1
        pi[r, Q_NRUN] = 0
        pi[r, Q_KVRES] = 0
        pi[r, Q_KVSUM] = 0
        pf[r, P_RELEASE] = t
        n = mn[m]
        for a in range(n):
            if mrep[m, a] == r:
                for b in range(a, n - 1):
                    mrep[m, b] = mrep[m, b + 1]
                mn[m] = n - 1
                break
    held = np.sort(held[:k])
    n_requeued = 0
    n_dropped = 0
    for i in held:
        m = ri[i, R_MODEL]
        ri[i, R_STATE] = REQ_QUEUED
        ri[i, R_REPLICA] = -1  # dispatch sets it again unless the request waits in a central queue
        rf[i, R_ADMIT] = np.nan
        rf[i, R_FIRST] = np.nan
        # paged engine: its KV and output are gone with the replica (the cache is not touched: it is lost)
        ri[i, R_COMPUTED] = 0
        ri[i, R_GEN] = 0
        ri[i, R_HELD] = 0
        ri[i, R_BLOCKS] = 0
        ri[i, R_SCHED] = 0
        if requeue and rf[i, R_DEADLINE] > t:
            mi[m, M_QUEUED] -= 1  # dispatch counts it again
            dest = (
                -1
                if gi[I_ROUTER] == RULE_EXTERNAL
                else route(rf, ri, pf, pi, qn, mi, mrep, mn, gf, gi, pc, kc, i)
            )
            dispatch(
                rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, i,
                dest, t
            )  # fmt: skip
            n_requeued += 1
        else:
            _drop(rf, ri, mi, log_drop, gi, i, t)
            if rf[i, R_DEADLINE] > t:
                ri[i, R_REASON] = DROP_FAULT
            n_dropped += 1
    return n_requeued, n_dropped


def downtime_s(events: Sequence[FaultEvent], node: int, t0: float, t1: float) -> float:
    """Seconds node ``node`` was down inside ``[t0, t1)`` according to ``events`` (time-ordered)."""
    total, since = 0.0, math.nan
    for e in events:
        if e.node != node or e.time_s >= t1 or e.kind in (NOTICE, CRASH):
            continue
        if e.kind == FAIL:
            since = e.time_s
        elif not math.isnan(since):
            total += max(0.0, min(e.time_s, t1) - max(since, t0))
            since = math.nan
    if not math.isnan(since):
        total += max(0.0, t1 - max(since, t0))
    return total


class FaultInjector:
    """A simulation's fault schedule, applied as time reaches each event, and its counters.

    ``events`` are time-ordered; :meth:`next_time_s` is the next one's time (inf: none left). The
    simulator runs its loop up to that time, then calls :meth:`apply`.
    """

    def __init__(self, events: list[FaultEvent], requeue: bool) -> None:
        self.events = events
        self.requeue = requeue
        self.k = 0
        self.blocked: dict[int, object] = {}  # failed node -> the allocation holding its GPUs
        self.node_failures = 0
        self.spot_preemptions = 0
        self.replica_crashes = 0
        self.requests_requeued = 0
        self.requests_lost = 0
        self.replicas_lost = 0

    def next_time_s(self) -> float:
        return self.events[self.k].time_s if self.k < len(self.events) else math.inf

    def apply(self, sim: object) -> None:
        """Apply the next event to ``sim`` (a :class:`~envs.sim.engine.Simulator` whose clock is at its time)."""
        e = self.events[self.k]
        self.k += 1
        # Replicas the kernel released (drained) before this instant are no longer on their node: free
        # them first, so that a failure never counts or re-queues them and a crash's restart finds room.
        sim.sync_releases()
        if e.kind == NOTICE:
            sim.cluster.node_noticed[e.node] = True
            return
        if e.kind == CRASH:
            self._crash(sim, e)
            return
        if e.kind == REPAIR:
            sim.cluster.release(self.blocked.pop(e.node))
            sim.cluster.node_noticed[e.node] = False
            return
        sim.cluster.node_noticed[e.node] = False
        if e.cause == SPOT:
            self.spot_preemptions += 1
        else:
            self.node_failures += 1
        lost = [r for r in sim.state.live if r.alloc.node == e.node]
        a, b = sim._lose_replicas(lost, e.time_s, self.requeue)
        self.requests_requeued += a
        self.requests_lost += b
        self.replicas_lost += len(lost)
        sim.cluster.cached[e.node, :] = False  # the node's disk went with it: the next load there is remote
        self.blocked[e.node] = sim._block_node(e.node)

    def _crash(self, sim: object, e: FaultEvent) -> None:
        """A replica's process dies: its work is lost, and it restarts in place (Kubernetes restarts a
        crashed container on its node, restartPolicy Always:
        https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#restart-policy), as a new
        replica cold-starting from the node's disk."""
        m, st = e.node, sim.state
        ready = sorted(
            (r for r in st.live if r.model == m and st.pi[r.rid, Q_STATE] == REP_READY), key=lambda r: r.rid
        )
        k = int(e.u * sim.scenario.models[m].max_replicas)
        if k >= len(ready):
            return
        rec = ready[k]
        node, gpu_type = rec.alloc.node, rec.gpu_type
        a, b = sim._lose_replicas([rec], e.time_s, self.requeue)
        self.requests_requeued += a
        self.requests_lost += b
        self.replica_crashes += 1
        sim.cluster.touch_cache(node, m, e.time_s)  # the node's disk still holds the weights
        sim._add_replica(m, gpu_type, node=node)

    def counts(self) -> dict[str, float]:
        """The event and request counters so far (a KPI window's start keeps them: :meth:`kpis`)."""
        return {
            "node_failures": float(self.node_failures),
            "spot_preemptions": float(self.spot_preemptions),
            "replica_crashes": float(self.replica_crashes),
            "requests_requeued": float(self.requests_requeued),
            "requests_lost_to_faults": float(self.requests_lost),
        }

    def kpis(self, sim: object, t0: float = 0.0, since: dict[str, float] | None = None) -> dict[str, float]:
        """The counters from ``t0`` to now (``since``: :meth:`counts` at ``t0``; ``None``: from the start),
        and ``gpu_seconds_lost``: GPUs of failed nodes x their downtime within ``[t0, now]``."""
        gpus = sim.cluster.node_gpus
        done = [e for e in self.events[: self.k] if e.kind != CRASH]
        lost = sum(float(gpus[n]) * downtime_s(done, n, t0, sim.now) for n in {e.node for e in done})
        out = self.counts()
        if since is not None:
            out = {k: v - since.get(k, 0.0) for k, v in out.items()}
        out["gpu_seconds_lost"] = lost
        return out
