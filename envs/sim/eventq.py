"""The event queue and request queues of the compiled engine, and what both serving engines share.

A binary min-heap of replica events ordered by ``(time, priority, sequence)``; per-queue linked lists
of requests (one list per request class); and the replica helpers both engines use: the iteration
time, launching an iteration or decode run, completing a request, releasing a drained replica. The
engines are :mod:`envs.sim.kernel` (``reserve``, and the loop) and :mod:`envs.sim.paged` (``paged``,
with disaggregated prefill and decode). Compiled like the loop, without numba's runtime
(``_nrt=False`` where not inlined): nothing here allocates.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.layout import *  # noqa: F403  (the state's field names, defined once there)

INF = np.inf
INT_MAX = np.iinfo(np.int64).max

EWMA_WEIGHT = 0.2  # weight of the newest latency sample in a replica's EWMA (least_time router)

# event types / priorities. A READY or ITER_END event carries its replica's event version and is
# cancelled when the version moves on; a KV transfer's (XFER) carries -1 and is never cancelled.
EV_READY, EV_ITER_END, EV_XFER = 0, 1, 2
PRIO_ARRIVAL = 3


# ----------------------------------------------------------------------------- heap


@njit(cache=True, error_model="numpy", inline="always")
def _heap_set(hp, i, t, key, rep, version):
    """Write the event ``(t, key, rep, version)`` to heap row ``i``."""
    hp[i, H_T] = t
    hp[i, H_KEY] = key
    hp[i, H_REP] = rep
    hp[i, H_VER] = version


@njit(cache=True, error_model="numpy", inline="always")
def _sift_down(hp, i, n, t, key, rep, version):
    """Put the event ``(t, key, rep, version)`` in the hole at row ``i`` of the heap's rows ``1 .. n``,
    moving the smaller child up while it comes first. Moving entries into a hole, each field read
    once into a local, is about 3-5x faster here than swapping whole entries (numba keeps the locals
    in registers; a swap of four array elements per level it does not)."""
    while True:
        c = 2 * i
        if c > n:
            break
        tc = hp[c, H_T]
        kc = hp[c, H_KEY]
        if c < n:
            t1 = hp[c + 1, H_T]
            k1 = hp[c + 1, H_KEY]
            if t1 < tc or (t1 == tc and k1 < kc):
                c += 1
                tc = t1
                kc = k1
        if not (tc < t or (tc == t and kc < key)):
            break
        _heap_set(hp, i, tc, kc, hp[c, H_REP], hp[c, H_VER])
        i = c
    _heap_set(hp, i, t, key, rep, version)


@njit(cache=True, error_model="numpy", inline="always")
def heap_push(hp, gi, pi, t, prio, rep, version):
    n = gi[I_HEAP_N]
    if n >= hp.shape[0] - 1:
        n = _heap_compact(hp, gi, pi)
    key = float((prio << 48) | gi[I_SEQ])
    gi[I_SEQ] += 1
    n += 1
    gi[I_HEAP_N] = n
    while n > 1:  # move later parents down into the hole, then fill it
        p = n >> 1
        tp = hp[p, H_T]
        if not (t < tp or (t == tp and key < hp[p, H_KEY])):
            break
        _heap_set(hp, n, tp, hp[p, H_KEY], hp[p, H_REP], hp[p, H_VER])
        n = p
    _heap_set(hp, n, t, key, rep, version)


@njit(cache=True, error_model="numpy", _nrt=False)
def _heap_compact(hp, gi, pi):
    """Drop cancelled events (stale replica version) and rebuild the heap; returns the new size.

    Each replica has at most two live events (READY or ITER_END, and the next
    KV transfer into it), so with room for 4 per replica compaction always
    frees space; it is rare (only split decode runs leave cancelled events
    behind faster than they are popped).
    """
    n = 0
    for k in range(1, gi[I_HEAP_N] + 1):
        v = hp[k, H_VER]
        if v < 0 or v == pi[int(hp[k, H_REP]), Q_VERSION]:
            n += 1
            _heap_set(hp, n, hp[k, H_T], hp[k, H_KEY], hp[k, H_REP], v)
    for start in range(n >> 1, 0, -1):  # bottom-up heapify; keys are unique, so order is preserved
        _sift_down(hp, start, n, hp[start, H_T], hp[start, H_KEY], hp[start, H_REP], hp[start, H_VER])
    gi[I_HEAP_N] = n
    return n


@njit(cache=True, error_model="numpy", inline="always")
def heap_pop(hp, gi):
    """Take the earliest event out of the heap; returns its row (now just past the heap)."""
    last = gi[I_HEAP_N]
    n = last - 1
    gi[I_HEAP_N] = n
    t, key, rep, version = hp[last, H_T], hp[last, H_KEY], hp[last, H_REP], hp[last, H_VER]
    _heap_set(hp, last, hp[1, H_T], hp[1, H_KEY], hp[1, H_REP], hp[1, H_VER])  # the root moves past the end
    if n > 0:
        _sift_down(hp, 1, n, t, key, rep, version)
    return last


# ----------------------------------------------------------------------------- queues


@njit(cache=True, error_model="numpy", inline="always")
def _enqueue(ri, qh, qt, qn, q, i):
    lst = ri[i, R_LIST]
    ri[i, R_NEXT] = -1
    if qt[q, lst] < 0:
        qh[q, lst] = i
    else:
        ri[qt[q, lst], R_NEXT] = i
    qt[q, lst] = i
    qn[q] += 1


@njit(cache=True, error_model="numpy", inline="always")
def _enqueue_front(ri, qh, qt, qn, q, i):
    lst = ri[i, R_LIST]
    ri[i, R_NEXT] = qh[q, lst]
    if qh[q, lst] < 0:
        qt[q, lst] = i
    qh[q, lst] = i
    qn[q] += 1


@njit(cache=True, error_model="numpy", inline="always")
def _pop_head(ri, qh, qt, qn, q, lst, i):
    """Remove request ``i``, the head of list ``lst`` of queue ``q``."""
    nxt = ri[i, R_NEXT]
    qh[q, lst] = nxt
    if nxt < 0:
        qt[q, lst] = -1
    qn[q] -= 1


@njit(cache=True, error_model="numpy", inline="always")
def _drop(rf, ri, mi, log_drop, gi, i, t):
    """Drop queued request ``i``, found at time ``t`` (a timed-out request is dropped at its deadline)."""
    ri[i, R_STATE] = REQ_DROPPED
    rf[i, R_DONE] = min(t, rf[i, R_DEADLINE])
    m = ri[i, R_MODEL]
    mi[m, M_INFLIGHT] -= 1
    mi[m, M_QUEUED] -= 1
    log_drop[gi[I_NDROP]] = i
    gi[I_NDROP] += 1


@njit(cache=True, error_model="numpy", _nrt=False)
def purge_expired(rf, ri, qh, qt, qn, mi, log_drop, gi, now):
    """Drop every queued request whose deadline has passed (all queues).

    A list holds one request class in arrival order, so its deadlines
    (arrival + the class timeout) are increasing: only heads need checking.
    """
    nq, nl = qh.shape
    for q in range(nq):
        if qn[q] == 0:
            continue
        for lst in range(nl):
            i = qh[q, lst]
            # a request preempted after admission (paged engine) has started: it never times out
            while i >= 0 and rf[i, R_DEADLINE] <= now and np.isnan(rf[i, R_ADMIT]):
                nxt = ri[i, R_NEXT]
                qh[q, lst] = nxt
                if nxt < 0:
                    qt[q, lst] = -1
                qn[q] -= 1
                _drop(rf, ri, mi, log_drop, gi, i, now)
                i = nxt


@njit(cache=True, error_model="numpy", inline="always")
def _next_waiting(rf, ri, qh, n_lists, own, m, with_central, by_priority):
    """``(queue, list, request)`` a replica admits next (-1s: none): among the heads of its own lists
    (queue ``own``) and, if ``with_central``, its model's central lists (queue ``m``), the highest
    priority level (priority queue only), then the earliest arrival."""
    bq, bl, bi = -1, -1, -1
    for lst in range(n_lists):
        for src in range(2):
            q = own if src == 0 else m
            if src == 1 and not with_central:
                break
            h = qh[q, lst]
            if h < 0:
                continue
            if bi < 0:
                bq, bl, bi = q, lst, h
                continue
            ph, pb = (ri[h, R_PRIO], ri[bi, R_PRIO]) if by_priority else (0, 0)
            if ph < pb or (ph == pb and rf[h, R_ARR] < rf[bi, R_ARR]):
                bq, bl, bi = q, lst, h
    return bq, bl, bi


@njit(cache=True, error_model="numpy", inline="always")
def _queues_empty(qh, gi, m, own, with_central):
    for lst in range(gi[I_NLISTS]):
        if qh[own, lst] >= 0 or (with_central and qh[m, lst] >= 0):
            return False
    return True


# ----------------------------------------------------------------------------- replicas


@njit(cache=True, error_model="numpy", inline="always")
def set_replica_state(pi, mrep, mn, gi, r, state):
    """Set replica ``r``'s state (``REP_*``), keeping its model's READY list in id order.

    ``mrep`` row ``m`` lists model ``m``'s live replicas and row ``n_models + m`` its READY ones, both
    in increasing id order, ``mn`` their lengths (its further rows: :func:`envs.sim.routing.lc_pick`'s
    index); ``pi[r, Q_RPOS]`` is a READY replica's place in its row. Routing reads the READY row, so
    that counting, indexing and scanning the candidates costs O(1) or O(READY) per arrival, not a
    pass over every live replica's state. Every state change goes through here.
    """
    old = pi[r, Q_STATE]
    if old == state:
        return
    pi[r, Q_STATE] = state
    if old == REP_READY or state == REP_READY:
        gi[I_LC_REBUILD] = 1  # the least-in-flight index's leaves follow the READY list
    row = mn.shape[0] // 2 + pi[r, Q_MODEL]
    n = mn[row]
    if old == REP_READY:  # ordered removal
        for j in range(pi[r, Q_RPOS], n - 1):
            c = mrep[row, j + 1]
            mrep[row, j] = c
            pi[c, Q_RPOS] = j
        pi[r, Q_RPOS] = -1
        mn[row] = n - 1
    elif state == REP_READY:  # ordered insertion (a new replica usually has the highest id: O(1))
        k = n
        while k > 0 and mrep[row, k - 1] > r:
            c = mrep[row, k - 1]
            mrep[row, k] = c
            pi[c, Q_RPOS] = k
            k -= 1
        mrep[row, k] = r
        pi[r, Q_RPOS] = k
        mn[row] = n + 1


@njit(cache=True, error_model="numpy", inline="always")
def lc_mark(pi, mrep, gi, r):
    """Replica ``r``'s requests in flight may have changed: list it for the least-in-flight index to
    refresh at the next routing decision (:func:`envs.sim.routing.lc_pick`; only while one is kept)."""
    if gi[I_LC_ON] != 0 and pi[r, Q_LCMARK] == 0:
        pi[r, Q_LCMARK] = 1
        n = gi[I_LC_NDIRTY]
        mrep[4 * gi[I_NMODELS], n] = r
        gi[I_LC_NDIRTY] = n + 1


@njit(cache=True, error_model="numpy", inline="always")
def _release(pf, pi, mrep, mn, gi, r, t):
    set_replica_state(pi, mrep, mn, gi, r, REP_RELEASED)
    pi[r, Q_VERSION] += 1
    pf[r, P_RELEASE] = t
    m = pi[r, Q_MODEL]
    n = mn[m]
    # ordered removal keeps mrep[m] sorted by id (routing tie-breaks rely on it)
    k = 0
    while k < n and mrep[m, k] != r:
        k += 1
    if k < n:
        for j in range(k, n - 1):
            mrep[m, j] = mrep[m, j + 1]
        mn[m] = n - 1


@njit(cache=True, error_model="numpy", inline="always")
def _iteration_s(pf, r, tokens, kv_tokens):
    """One iteration of replica ``r``: max(compute, memory) + overhead (see envs.sim.perf)."""
    # GEMM kernels tile the token dimension; a part-filled tile costs a full one
    tile = pf[r, P_TILE]
    compute = pf[r, P_CTOK] * (np.ceil(tokens / tile) * tile)
    memory = pf[r, P_WREAD] + pf[r, P_KVTOK] * kv_tokens
    return (compute if compute > memory else memory) + pf[r, P_OVH]


@njit(cache=True, error_model="numpy", inline="always")
def _run_end(pf, r, end, n_iter, n_dec, kv):
    """End of a decode run of ``n_iter`` iterations whose first ends at ``end`` and reads ``kv`` tokens:
    each later iteration reads ``n_dec`` more (summed as per-iteration events would be)."""
    for _ in range(n_iter - 1):
        kv += n_dec
        end = end + _iteration_s(pf, r, n_dec, kv)
    return end


@njit(cache=True, error_model="numpy", inline="always")
def _launch(pf, pi, hp, gi, r, t, end, n_iter, n_dec):
    """Replica ``r`` is busy from ``t`` to ``end`` (``n_iter`` iterations of ``n_dec`` decode tokens
    after the first): the pending ITER_END event."""
    pi[r, Q_SEG] = n_iter
    pi[r, Q_NDEC] = n_dec
    pi[r, Q_BUSY] = 1
    pf[r, P_ITER_START] = t
    pf[r, P_ITER_DUR] = end - t
    heap_push(hp, gi, pi, end, EV_ITER_END, r, pi[r, Q_VERSION])


@njit(cache=True, error_model="numpy", inline="always")
def split_decode_run(pf, pi, hp, gi, r, t):
    """Cut replica ``r``'s multi-iteration decode run at its first iteration boundary after ``t``.

    Called when work arrives for the replica; per-iteration events would have
    let it admit that work at exactly this boundary.
    """
    if pi[r, Q_BUSY] == 0 or pi[r, Q_SEG] <= 1:
        return
    start = pf[r, P_ITER_START]
    n_dec = pi[r, Q_NDEC]
    kv = pi[r, Q_KVSUM]
    end = start + _iteration_s(pf, r, n_dec, kv)
    j = 1
    while end <= t and j < pi[r, Q_SEG]:
        kv += n_dec
        end = end + _iteration_s(pf, r, n_dec, kv)
        j += 1
    if j == pi[r, Q_SEG]:
        return
    pi[r, Q_SEG] = j
    pf[r, P_ITER_DUR] = end - start
    pi[r, Q_VERSION] += 1
    heap_push(hp, gi, pi, end, EV_ITER_END, r, pi[r, Q_VERSION])


@njit(cache=True, error_model="numpy", inline="always")
def _complete(rf, ri, pf, mi, log_done, gi, r, i, t):
    """Request ``i`` completes on replica ``r`` at ``t`` (its replica's latency EWMA updated)."""
    ri[i, R_STATE] = REQ_DONE
    rf[i, R_DONE] = t
    m = ri[i, R_MODEL]
    mi[m, M_INFLIGHT] -= 1
    mi[m, M_RUNNING] -= 1
    log_done[gi[I_NDONE]] = i
    gi[I_NDONE] += 1
    lat = t - rf[i, R_ARR]
    ew = pf[r, P_EWMA]
    pf[r, P_EWMA] = lat if ew < 0 else ew + EWMA_WEIGHT * (lat - ew)


@njit(cache=True, error_model="numpy", inline="always")
def _release_if_drained(pf, pi, qn, mrep, mn, gi, r, t):
    """Release draining replica ``r`` once nothing runs, waits or is in transfer to or from it."""
    if (pi[r, Q_STATE] == REP_DRAINING and pi[r, Q_NRUN] == 0 and qn[gi[I_NMODELS] + r] == 0
            and pi[r, Q_XOUT] == 0 and pi[r, Q_XIN] == 0):  # fmt: skip
        _release(pf, pi, mrep, mn, gi, r, t)
        gi[I_NRELEASED] += 1  # the engine frees the replica's GPUs (Simulator.sync_releases)
