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

Both are counted: ``requests_requeued``, ``requests_lost_to_faults``. With disaggregated serving a
lost replica also loses the KV caches in transfer to it, or, for a prefill replica, the prompt KV it
kept for the decode pool (and so the requests waiting for it); every lost request starts again from
its prompt at the prefill pool (:func:`fail_replicas`). A replica can also crash on
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
from envs.sim.eventq import EV_XFER, _drop, _release_if_drained, heap_push, set_replica_state
from envs.sim.kernel import dispatch, start_iteration
from envs.sim.kvcache import release, sync_kv_tokens
from envs.sim.layout import (
    DROP_FAULT,
    I_LC_REBUILD,
    I_NEXT_ARR,
    I_NMODELS,
    I_ROUTER,
    M_INFLIGHT,
    M_QUEUED,
    M_RUNNING,
    P_BUSY_S,
    P_ITER_START,
    P_RELEASE,
    Q_BUSY,
    Q_KVRES,
    Q_KVSUM,
    Q_MODEL,
    Q_NHAND,
    Q_NRUN,
    Q_ROLE,
    Q_STATE,
    Q_VERSION,
    Q_XHEAD,
    Q_XIN,
    Q_XOUT,
    Q_XTAIL,
    R_ADMIT,
    R_BLOCKS,
    R_COMPUTED,
    R_DEADLINE,
    R_FIRST,
    R_GEN,
    R_HELD,
    R_KVSRC,
    R_MODEL,
    R_NEXT,
    R_PBLOCKS,
    R_PHELD,
    R_REASON,
    R_REPLICA,
    R_SCHED,
    R_STATE,
    R_SVC,
    REP_READY,
    REP_RELEASED,
    REQ_QUEUED,
    REQ_TRANSFER,
    ROLE_DECODE,
    ROLE_PREFILL,
    RUN_ID_MASK,
)
from envs.sim.paged import _free_source
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


@njit(cache=True, error_model="numpy", inline="always")
def _filter_list(ri, head, gone):
    """The linked list (``R_NEXT``) from ``head`` without the requests flagged in ``gone``:
    (new head, new tail, removed)."""
    new_head = new_tail = -1
    removed = 0
    i = head
    while i >= 0:
        nxt = ri[i, R_NEXT]
        if gone[i]:
            removed += 1
        else:
            if new_tail < 0:
                new_head = i
            else:
                ri[new_tail, R_NEXT] = i
            new_tail = i
            ri[i, R_NEXT] = -1
        i = nxt
    return new_head, new_tail, removed


@njit(cache=True, error_model="numpy")
def fail_replicas(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gf, gi, log_drop, pc, kc,
                  reps, t, requeue, origin):  # fmt: skip
    """Lose replicas ``reps`` at time ``t`` with their work; returns (requests re-queued, dropped).

    Every replica is taken out first (RELEASED at ``t``, its pending event cancelled, its busy time
    counted up to ``t``), so no request is re-routed to another replica that is being lost. Then
    their running and queued requests, in arrival (id) order, are re-routed (``requeue``) or
    dropped. The caller frees the GPUs.

    Disaggregated serving (``origin[m]``: the pool where model ``m``'s requests arrive, ``m`` itself
    but for a decode pool): a lost decode replica also loses the requests whose KV is in transfer to
    it; their prompt KV stays where it was computed, and its prefill replica frees it. A lost prefill
    replica loses the prompt KV it kept for the decode pool (a request's KV stays on its prefill
    replica until read: ``envs.sim.paged``), so the requests waiting for that KV in a decode replica's
    queue, its pool's central queue or its transfer list are lost too, and the decode replica frees
    the blocks it had taken for them. Every lost request of a decode pool starts again from its
    prompt at the prefill pool (counted out of one pool and into the other), as a retry from the
    client or gateway would. A transfer list that loses its head gets an event for the new head
    (the old event finds nothing to deliver: ``kernel.transfer_arrived``).
    """
    n_models = gi[I_NMODELS]
    n_arr = gi[I_NEXT_ARR]  # requests in the system have ids below it (a pending one is in no queue)
    lost = np.zeros(pi.shape[0], np.bool_)
    for r in reps:
        lost[r] = True
    touched = np.zeros(pi.shape[0], np.bool_)  # surviving replicas whose blocks or transfers changed
    total = 0
    for r in reps:
        total += pi[r, Q_NRUN] + qn[n_models + r] + (pi[r, Q_XIN] if pi[r, Q_ROLE] == ROLE_DECODE else 0)
    held = np.empty(total + n_arr, np.int64)
    taken = np.zeros(n_arr + 1, np.bool_)
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
        if pi[r, Q_ROLE] == ROLE_DECODE:  # KV caches in transfer to it: counted as queued again
            i = pi[r, Q_XHEAD]
            while i >= 0:
                held[k] = i
                k += 1
                mi[ri[i, R_MODEL], M_QUEUED] += 1
                rf[i, R_SVC] = 0.0  # it held the transfer's arrival time
                i = ri[i, R_NEXT]
            pi[r, Q_XHEAD] = -1
            pi[r, Q_XTAIL] = -1
            pi[r, Q_XIN] = 0
        elif pi[r, Q_ROLE] == ROLE_PREFILL:  # the KV it kept for the decode pool is lost (below)
            pi[r, Q_XOUT] = 0
            pi[r, Q_NHAND] = 0
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
    for j in range(k):
        taken[held[j]] = True
    # the requests above that still hold prompt KV on a surviving prefill replica: it is freed there
    for j in range(k):
        i = held[j]
        if ri[i, R_KVSRC] > 0 and not lost[ri[i, R_KVSRC] - 1]:
            ri[i, R_BLOCKS] = 0  # its blocks on the lost decode replica went with it
            ri[i, R_HELD] = 0
            touched[_free_source(ri, pi, pc, kc, i)] = True
    # requests elsewhere whose prompt KV was on a lost prefill replica
    orphan = np.zeros(n_arr + 1, np.bool_)
    n_orphans = 0
    for i in range(n_arr):
        src = ri[i, R_KVSRC]
        if src <= 0 or taken[i] or not lost[src - 1]:
            continue
        state = ri[i, R_STATE]
        if state != REQ_QUEUED and state != REQ_TRANSFER:
            continue
        orphan[i] = True
        n_orphans += 1
        held[k] = i
        k += 1
        if state == REQ_TRANSFER:  # its decode replica frees the blocks it took for the KV
            d = ri[i, R_REPLICA]
            release(ri, pi, pc, kc, d, i)
            pi[d, Q_XIN] -= 1
            touched[d] = True
            mi[ri[i, R_MODEL], M_QUEUED] += 1
            rf[i, R_SVC] = 0.0
    if n_orphans > 0:
        for q in range(qh.shape[0]):  # out of every queue (a decode replica's or its pool's central one)
            if qn[q] == 0:
                continue
            for lst in range(qh.shape[1]):
                h, tl, removed = _filter_list(ri, qh[q, lst], orphan)
                qh[q, lst] = h
                qt[q, lst] = tl
                qn[q] -= removed
        for d in range(pi.shape[0]):  # out of every surviving transfer list
            head = pi[d, Q_XHEAD]
            if lost[d] or pi[d, Q_ROLE] != ROLE_DECODE or head < 0:
                continue
            h, tl, removed = _filter_list(ri, head, orphan)
            pi[d, Q_XHEAD] = h
            pi[d, Q_XTAIL] = tl
            if h >= 0 and h != head:  # the new head's arrival (the old head's event finds nothing)
                heap_push(hp, gi, pi, rf[h, R_SVC], EV_XFER, d, -1)
        gi[I_LC_REBUILD] = 1  # requests left replica queues
    held = np.sort(held[:k])
    n_requeued = 0
    n_dropped = 0
    for i in held:
        m = ri[i, R_MODEL]
        o = origin[m]
        if o != m:  # a decode pool's request starts again at its prefill pool
            mi[m, M_QUEUED] -= 1
            mi[m, M_INFLIGHT] -= 1
            mi[o, M_QUEUED] += 1
            mi[o, M_INFLIGHT] += 1
            ri[i, R_MODEL] = o
            m = o
        ri[i, R_KVSRC] = 0
        ri[i, R_PBLOCKS] = 0
        ri[i, R_PHELD] = 0
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
    # surviving replicas that got blocks back or lost transfers: released if drained, else they may
    # admit what waited for blocks
    for r in range(pi.shape[0]):
        if touched[r] and not lost[r]:
            sync_kv_tokens(pi, r)
            _release_if_drained(pf, pi, qn, mrep, mn, gi, r, t)
            start_iteration(
                rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r, t
            )
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
