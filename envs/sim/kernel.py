"""The compiled hot loop of the discrete-event engine.

All simulation state lives in a handful of numpy arrays (struct-of-arrays: one
row per request, one row per replica, linked-list queues, a binary event heap)
so that :func:`advance` can be compiled with numba and process millions of
events per second. :mod:`envs.sim.engine` owns the arrays and is the only
caller; nothing here allocates.

The loop and the functions it calls are compiled without the numba runtime
(``_nrt=False``): the arrays are borrowed from the engine for the duration of a
call, so they need no reference counting. With it, numba updates the counts of
the arrays passed to every inlined helper with atomic instructions, which took
about two thirds of the loop's time. An allocation here is a compile error.

Time model. Events are ordered by ``(time, priority, sequence)``: replica
READY (0) before ITERATION_END (1) before an arrival (2) before a metrics tick
(3); equal keys never happen because the sequence number is unique. Arrivals
are pre-generated and sorted, so they are read from a cursor instead of the heap.

Service model. A replica runs *iterations* (vLLM / Orca continuous batching).
At an iteration start it admits queued requests (oldest first among the heads
of its own queue and its model's central queue; under a priority queue, the
highest-priority class first) while the batch is below
``max_batch`` and the KV cache can reserve ``prompt + output`` tokens for the
request (reservation at admission, so a running request is never preempted).
The iteration runs the prefill of the admitted requests plus one decode token
for every request that was already running; it lasts
``max(c_tok * padded(tokens), w_read + kv_tok * kv_tokens_read) + overhead``
(``padded`` rounds up to the GEMM token tile, as :mod:`envs.sim.perf` does). The
admitted requests get their first token at its end; a request with ``n``
output tokens completes at the end of the ``n``-th iteration counting its
admission. ``per_request`` service (validation models) runs one request per
iteration for its pre-drawn service time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.kvcache import allocate, available_blocks, cdiv, hold, match, publish, release, sync_kv_tokens
from envs.sim.layout import *  # noqa: F403  (the state's field names, defined once there)
from envs.sim.routing import RULE_EXTERNAL, route

INF = np.inf
INT_MAX = np.iinfo(np.int64).max

EWMA_WEIGHT = 0.2  # weight of the newest latency sample in a replica's EWMA (least_time router)

# event types / priorities
EV_READY, EV_ITER_END = 0, 1
PRIO_ARRIVAL = 2

# advance() return codes
STOP_UNTIL, STOP_ROUTE = 0, 1


# ----------------------------------------------------------------------------- heap


@njit(cache=True, error_model="numpy", inline="always")
def _less(ht, hk, a, b):
    return ht[a] < ht[b] or (ht[a] == ht[b] and hk[a] < hk[b])


@njit(cache=True, error_model="numpy", inline="always")
def _swap(ht, hk, hr, hv, a, b):
    ht[a], ht[b] = ht[b], ht[a]
    hk[a], hk[b] = hk[b], hk[a]
    hr[a], hr[b] = hr[b], hr[a]
    hv[a], hv[b] = hv[b], hv[a]


@njit(cache=True, error_model="numpy", inline="always")
def heap_push(ht, hk, hr, hv, gi, pi, t, prio, rep, version):
    n = gi[I_HEAP_N]
    if n >= len(ht):
        n = _heap_compact(ht, hk, hr, hv, gi, pi)
    ht[n] = t
    hk[n] = (prio << 48) | gi[I_SEQ]
    gi[I_SEQ] += 1
    hr[n] = rep
    hv[n] = version
    gi[I_HEAP_N] = n + 1
    while n > 0:
        p = (n - 1) >> 1
        if _less(ht, hk, n, p):
            _swap(ht, hk, hr, hv, n, p)
            n = p
        else:
            break


@njit(cache=True, error_model="numpy", _nrt=False)
def _heap_compact(ht, hk, hr, hv, gi, pi):
    """Drop cancelled events (stale replica version) and rebuild the heap; returns the new size.

    Each replica has at most one live event, so with room for 4 per replica
    compaction always frees space; it is rare (only split decode runs leave
    cancelled events behind faster than they are popped).
    """
    n = 0
    for k in range(gi[I_HEAP_N]):
        if hv[k] == pi[hr[k], Q_VERSION]:
            ht[n], hk[n], hr[n], hv[n] = ht[k], hk[k], hr[k], hv[k]
            n += 1
    for start in range((n - 2) >> 1, -1, -1):  # bottom-up heapify; keys are unique, so order is preserved
        i = start
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and _less(ht, hk, c + 1, c):
                c += 1
            if _less(ht, hk, c, i):
                _swap(ht, hk, hr, hv, c, i)
                i = c
            else:
                break
    gi[I_HEAP_N] = n
    return n


@njit(cache=True, error_model="numpy", inline="always")
def heap_pop(ht, hk, hr, hv, gi):
    n = gi[I_HEAP_N] - 1
    gi[I_HEAP_N] = n
    _swap(ht, hk, hr, hv, 0, n)
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        c = left
        if left + 1 < n and _less(ht, hk, left + 1, left):
            c = left + 1
        if _less(ht, hk, c, i):
            _swap(ht, hk, hr, hv, c, i)
            i = c
        else:
            break
    return n  # index of the popped entry (now just past the heap)


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


# ----------------------------------------------------------------------------- replicas


@njit(cache=True, error_model="numpy", inline="always")
def _run_before(ri, a, b):
    fa, fb = ri[a, R_FINISH], ri[b, R_FINISH]
    return fa < fb or (fa == fb and a < b)


@njit(cache=True, error_model="numpy", inline="always")
def _run_push(run, ri, r, n, i):
    """Add request ``i`` to replica ``r``'s running heap of size ``n``."""
    run[r, n] = i
    while n > 0:
        p = (n - 1) >> 1
        if _run_before(ri, run[r, n], run[r, p]):
            run[r, n], run[r, p] = run[r, p], run[r, n]
            n = p
        else:
            break


@njit(cache=True, error_model="numpy", inline="always")
def _run_sift_down(run, ri, r, n):
    """Remove the top of replica ``r``'s running heap; ``n`` is the size after removal."""
    run[r, 0] = run[r, n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _run_before(ri, run[r, c + 1], run[r, c]):
            c += 1
        if _run_before(ri, run[r, c], run[r, i]):
            run[r, c], run[r, i] = run[r, i], run[r, c]
            i = c
        else:
            break


@njit(cache=True, error_model="numpy", inline="always")
def _release(pf, pi, mrep, mn, r, t):
    pi[r, Q_STATE] = REP_RELEASED
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
def start_iteration(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, ht, hk, hr, hv, gi, log_drop, pc, kc, r,
                    t):  # fmt: skip
    """Admit what fits and start the next iteration of replica ``r`` if there is work."""
    if pi[r, Q_BUSY] != 0:
        return
    if pi[r, Q_PAGED] != 0:
        _start_paged(rf, ri, pf, pi, run, qh, qt, qn, mi, ht, hk, hr, hv, gi, log_drop, pc, kc, r, t)
        return
    state = pi[r, Q_STATE]
    if state != REP_READY and state != REP_DRAINING:
        return
    m = pi[r, Q_MODEL]
    n_models = gi[I_NMODELS]
    own = n_models + r
    n_dec = pi[r, Q_NRUN]
    maxb = pi[r, Q_MAXB]
    per_request = gi[I_SVC_KIND] == SVC_PER_REQUEST
    admitted = 0
    pf_tokens = 0
    svc = 0.0
    n_lists = gi[I_NLISTS]
    by_priority = gi[I_PRIORITY] != 0
    while pi[r, Q_NRUN] < maxb:
        bq, bl, bi = _next_waiting(rf, ri, qh, n_lists, own, m, state == REP_READY, by_priority)
        if bi < 0:
            break
        i = bi
        need = 0 if per_request else ri[i, R_PROMPT] + ri[i, R_OUTPUT]
        expired = rf[i, R_DEADLINE] <= t
        # a request that can never fit on this replica is dropped rather than block the queue forever
        if not expired and need <= pi[r, Q_KVCAP] and pi[r, Q_KVRES] + need > pi[r, Q_KVCAP]:
            break  # head-of-line: wait for KV to free up
        _pop_head(ri, qh, qt, qn, bq, bl, i)
        if expired or need > pi[r, Q_KVCAP]:
            _drop(rf, ri, mi, log_drop, gi, i, t)
            if not expired:
                ri[i, R_REASON] = DROP_KV
            continue
        mi[m, M_QUEUED] -= 1
        mi[m, M_RUNNING] += 1
        pi[r, Q_KVRES] += need
        ri[i, R_STATE] = REQ_RUNNING
        ri[i, R_REPLICA] = r
        rf[i, R_ADMIT] = t
        ri[i, R_FINISH] = pi[r, Q_ITER] + ri[i, R_OUTPUT] - 1
        _run_push(run, ri, r, pi[r, Q_NRUN], i)
        pi[r, Q_NRUN] += 1
        pfl[r, admitted] = i
        admitted += 1
        pf_tokens += ri[i, R_PROMPT]
        svc += rf[i, R_SVC]
    if admitted == 0 and n_dec == 0:
        return
    n_iter = 1
    if per_request:
        end = t + svc
    else:
        end = t + _iteration_s(pf, r, pf_tokens + n_dec, pi[r, Q_KVSUM])
        if admitted == 0 and _queues_empty(qh, gi, m, own, state == REP_READY):
            # Decode-only and nothing to admit: every iteration until the next completion is
            # known now, so one event covers them all. Their boundaries are summed exactly as
            # per-iteration events would; an arrival for this replica splits the run
            # (split_decode_run) at the first boundary after it.
            n_iter = ri[run[r, 0], R_FINISH] - pi[r, Q_ITER] + 1
            end = _run_end(pf, r, end, n_iter, n_dec, pi[r, Q_KVSUM])
    pi[r, Q_NPF] = admitted
    pi[r, Q_PFTOK] = pf_tokens
    _launch(pf, pi, ht, hk, hr, hv, gi, r, t, end, n_iter, n_dec)


@njit(cache=True, error_model="numpy", inline="always")
def _run_end(pf, r, end, n_iter, n_dec, kv):
    """End of a decode run of ``n_iter`` iterations whose first ends at ``end`` and reads ``kv`` tokens:
    each later iteration reads ``n_dec`` more (summed as per-iteration events would be)."""
    for _ in range(n_iter - 1):
        kv += n_dec
        end = end + _iteration_s(pf, r, n_dec, kv)
    return end


@njit(cache=True, error_model="numpy", inline="always")
def _launch(pf, pi, ht, hk, hr, hv, gi, r, t, end, n_iter, n_dec):
    """Replica ``r`` is busy from ``t`` to ``end`` (``n_iter`` iterations of ``n_dec`` decode tokens
    after the first): the pending ITER_END event."""
    pi[r, Q_SEG] = n_iter
    pi[r, Q_NDEC] = n_dec
    pi[r, Q_BUSY] = 1
    pf[r, P_ITER_START] = t
    pf[r, P_ITER_DUR] = end - t
    heap_push(ht, hk, hr, hv, gi, pi, end, EV_ITER_END, r, pi[r, Q_VERSION])


@njit(cache=True, error_model="numpy", inline="always")
def _iteration_s(pf, r, tokens, kv_tokens):
    """One iteration of replica ``r``: max(compute, memory) + overhead (see envs.sim.perf)."""
    # GEMM kernels tile the token dimension; a part-filled tile costs a full one
    tile = pf[r, P_TILE]
    compute = pf[r, P_CTOK] * (np.ceil(tokens / tile) * tile)
    memory = pf[r, P_WREAD] + pf[r, P_KVTOK] * kv_tokens
    return (compute if compute > memory else memory) + pf[r, P_OVH]


@njit(cache=True, error_model="numpy", inline="always")
def _queues_empty(qh, gi, m, own, with_central):
    for lst in range(gi[I_NLISTS]):
        if qh[own, lst] >= 0 or (with_central and qh[m, lst] >= 0):
            return False
    return True


@njit(cache=True, error_model="numpy", inline="always")
def split_decode_run(pf, pi, ht, hk, hr, hv, gi, r, t):
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
    heap_push(ht, hk, hr, hv, gi, pi, end, EV_ITER_END, r, pi[r, Q_VERSION])


@njit(cache=True, error_model="numpy", inline="always")
def _end_iteration(rf, ri, pf, pi, run, pfl, qn, mi, mrep, mn, log_done, gi, pc, kc, r, t):
    if pi[r, Q_PAGED] != 0:
        _end_paged(rf, ri, pf, pi, run, qn, mi, mrep, mn, log_done, gi, pc, kc, r, t)
        return
    pi[r, Q_BUSY] = 0
    pf[r, P_BUSY_S] += pf[r, P_ITER_DUR]
    n_pf = pi[r, Q_NPF]
    for k in range(n_pf):
        rf[pfl[r, k], R_FIRST] = t
    n_iter = pi[r, Q_SEG]
    pi[r, Q_TOKENS] += n_pf + pi[r, Q_NDEC] * n_iter
    pi[r, Q_KVSUM] += pi[r, Q_NDEC] * n_iter + pi[r, Q_PFTOK] + n_pf
    pi[r, Q_NPF] = 0
    pi[r, Q_SEG] = 1
    it = pi[r, Q_ITER] + n_iter - 1  # the last iteration this event covers
    pi[r, Q_ITER] = it + 1
    # run[r, :n] is a min-heap on (finish iteration, request id): completions pop in O(log batch)
    n = pi[r, Q_NRUN]
    while n > 0 and ri[run[r, 0], R_FINISH] == it:
        i = run[r, 0]
        n -= 1
        _run_sift_down(run, ri, r, n)
        ctx = ri[i, R_PROMPT] + ri[i, R_OUTPUT]
        if gi[I_SVC_KIND] != SVC_PER_REQUEST:
            pi[r, Q_KVRES] -= ctx
        pi[r, Q_KVSUM] -= ctx
        _complete(rf, ri, pf, mi, log_done, gi, r, i, t)
    pi[r, Q_NRUN] = n
    _release_if_drained(pf, pi, qn, mrep, mn, gi, r, t)


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
    if pi[r, Q_STATE] == REP_DRAINING and pi[r, Q_NRUN] == 0 and qn[gi[I_NMODELS] + r] == 0:
        _release(pf, pi, mrep, mn, r, t)
        gi[I_NRELEASED] += 1  # the engine frees the replica's GPUs (Simulator.sync_releases)


# ----------------------------------------------------------------------------- paged engine


@njit(cache=True, error_model="numpy", inline="always")
def _enqueue_front(ri, qh, qt, qn, q, i):
    lst = ri[i, R_LIST]
    ri[i, R_NEXT] = qh[q, lst]
    if qh[q, lst] < 0:
        qt[q, lst] = i
    qh[q, lst] = i
    qn[q] += 1


@njit(cache=True, error_model="numpy", inline="always")
def _preempt(rf, ri, pi, run, qh, qt, qn, mi, gi, pc, kc, r):
    """Preempt replica ``r``'s most recently admitted request (vLLM V1 ``Scheduler.schedule``:
    ``self.running.pop()``, recompute mode): its blocks are freed (its prompt's cached entries stay
    cached), it forgets its computed tokens and goes back to the head of the replica's queue; the
    tokens generated so far are kept and recomputed with the prompt when it is admitted again."""
    n = pi[r, Q_NRUN] - 1
    i = run[r, n]
    pi[r, Q_NRUN] = n
    release(ri, pi, pc, kc, r, i)
    ri[i, R_COMPUTED] = 0
    ri[i, R_SCHED] = 0
    ri[i, R_NPREEMPT] += 1
    pi[r, Q_PREEMPT] += 1
    ri[i, R_STATE] = REQ_QUEUED
    m = ri[i, R_MODEL]
    mi[m, M_RUNNING] -= 1
    mi[m, M_QUEUED] += 1
    _enqueue_front(ri, qh, qt, qn, gi[I_NMODELS] + r, i)
    return i


@njit(cache=True, error_model="numpy", inline="always")
def _decode_run_blocks(ri, run, gi, r, n, bt, steps):
    """Blocks replica ``r``'s ``n`` running (decoding) requests need beyond theirs after ``steps`` more tokens."""
    hb = gi[I_HB]
    total = 0
    for k in range(n):
        i = run[r, k]
        total += cdiv(ri[i, R_COMPUTED] + steps - ri[i, R_HELD] * hb, bt) - ri[i, R_BLOCKS]
    return total


@njit(cache=True, error_model="numpy", _nrt=False)
def _start_paged(rf, ri, pf, pi, run, qh, qt, qn, mi, ht, hk, hr, hv, gi, log_drop, pc, kc, r, t):
    """Schedule replica ``r``'s next iteration as vLLM V1's scheduler does (``vllm/v1/core/sched/
    scheduler.py``, ``Scheduler.schedule``): a token budget (``Q_BUDGET``, ``max_num_batched_tokens``)
    goes first to the running requests in admission order (one token each when decoding, the next
    chunk of a prompt being prefilled), allocating their KV blocks and preempting the most recently
    admitted request while a block is missing; then, if nothing was preempted, to waiting requests
    (same order as the reserve engine), each starting after its longest cached prefix, while the
    budget, the batch limit and the blocks last. Without chunked prefill a prompt that does not fit
    the remaining budget waits (the budget is then at least ``max_model_len``, vLLM's rule).
    """
    state = pi[r, Q_STATE]
    if state != REP_READY and state != REP_DRAINING:
        return
    m = pi[r, Q_MODEL]
    own = gi[I_NMODELS] + r
    hb = gi[I_HB]
    bt = pi[r, Q_BT]
    budget = pi[r, Q_BUDGET]
    tokens = 0
    kv_read = 0
    decoding = True  # every running request computes exactly one token (a decode step)
    preempted = False
    steps = INT_MAX  # fewest output tokens left among the running requests (a decode run's length)
    k = 0
    while k < pi[r, Q_NRUN]:
        i = run[r, k]
        if budget <= 0:
            decoding = False  # left out of this iteration (its tokens wait for the budget)
            k += 1
            continue
        c = ri[i, R_COMPUTED]
        left = ri[i, R_OUTPUT] - ri[i, R_GEN]
        if left < steps:
            steps = left
        new = ri[i, R_PROMPT] + ri[i, R_GEN] - c
        if new > budget:
            new = budget
        need = cdiv(c + new - ri[i, R_HELD] * hb, bt) - ri[i, R_BLOCKS]
        ok = allocate(kc, pi, r, need)
        while not ok:
            victim = _preempt(rf, ri, pi, run, qh, qt, qn, mi, gi, pc, kc, r)
            preempted = True
            if victim == i:
                break
            ok = allocate(kc, pi, r, need)
        if not ok:
            break
        if need > 0:
            ri[i, R_BLOCKS] += need
        ri[i, R_SCHED] = new
        budget -= new
        tokens += new
        if new == 1 and ri[i, R_PROMPT] + ri[i, R_GEN] - c == 1:
            kv_read += c + 1  # a decode step attends over its context and its own token (as reserve counts)
        else:
            kv_read += c  # a prefill chunk reads the KV of the tokens before it
            decoding = False
        k += 1
    admitted = 0
    if not preempted:
        n_lists = gi[I_NLISTS]
        by_priority = gi[I_PRIORITY] != 0
        maxb = pi[r, Q_MAXB]
        while budget > 0 and pi[r, Q_NRUN] < maxb:
            bq, bl, bi = _next_waiting(rf, ri, qh, n_lists, own, m, state == REP_READY, by_priority)
            if bi < 0:
                break
            i = bi
            started = not np.isnan(rf[i, R_ADMIT])  # preempted earlier: never times out
            reason = -1
            hit = idle = new = need = total = 0
            if not started and rf[i, R_DEADLINE] <= t:
                reason = DROP_TIMEOUT
            elif ri[i, R_PROMPT] + ri[i, R_OUTPUT] > pi[r, Q_MAXLEN]:
                reason = DROP_CONTEXT  # vLLM rejects prompt + max_tokens > max_model_len
            elif cdiv(ri[i, R_PROMPT] + ri[i, R_OUTPUT], bt) > pi[r, Q_BLKCAP]:
                reason = DROP_KV  # could not finish even alone on this replica
            if reason < 0:
                total = ri[i, R_PROMPT] + ri[i, R_GEN]
                hit, idle = match(ri, pi, pc, kc, gi, r, i, total)
                new = total - hit * hb
                if new > budget:
                    if pi[r, Q_CHUNKED] == 0:
                        break
                    new = budget
                need = cdiv(new, bt)
                if need > available_blocks(pi, r) - idle * pi[r, Q_EB]:
                    break  # head-of-line: wait for blocks to free up
            _pop_head(ri, qh, qt, qn, bq, bl, i)
            if reason >= 0:
                _drop(rf, ri, mi, log_drop, gi, i, t)
                ri[i, R_REASON] = reason
                continue
            hold(ri, pi, pc, kc, r, i, hit)
            allocate(kc, pi, r, need)
            ri[i, R_BLOCKS] = need
            ri[i, R_COMPUTED] = hit * hb
            ri[i, R_SCHED] = new
            if started:
                pi[r, Q_RECOMP] += total - hit * hb
            else:
                rf[i, R_ADMIT] = t
                ri[i, R_HIT] = hit * hb
                pi[r, Q_HITTOK] += hit * hb
                pi[r, Q_PROMPTTOK] += ri[i, R_PROMPT]
            mi[m, M_QUEUED] -= 1
            mi[m, M_RUNNING] += 1
            ri[i, R_STATE] = REQ_RUNNING
            ri[i, R_REPLICA] = r
            run[r, pi[r, Q_NRUN]] = i
            pi[r, Q_NRUN] += 1
            budget -= new
            tokens += new
            kv_read += hit * hb
            admitted += 1
    sync_kv_tokens(pi, r)
    if tokens == 0:
        return
    n_dec = tokens
    end = t + _iteration_s(pf, r, tokens, kv_read)
    n_iter = 1
    if decoding and admitted == 0 and not preempted and _queues_empty(qh, gi, m, own, state == REP_READY):
        # Decode-only with nothing waiting: every iteration up to the next completion, or up to the
        # last one whose blocks are available, is known now; one event covers them (their blocks
        # are allocated when it ends). An arrival for the replica splits the run.
        # ``steps`` came from the walk above (the same requests: none admitted or preempted). Each
        # request holds the blocks of its next token, so ``steps`` more need at most
        # cdiv(steps - 1, bt) more each (ceil(u + v) <= ceil(u) + ceil(v)): within that bound the
        # exact count, a second walk, cannot exceed what is free.
        n = pi[r, Q_NRUN]
        avail = available_blocks(pi, r)
        if (steps > 1 and n * cdiv(steps - 1, bt) > avail
                and _decode_run_blocks(ri, run, gi, r, n, bt, steps) > avail):  # fmt: skip
            lo, hi = 1, steps  # the last step count whose blocks fit: lo fits, hi does not
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if _decode_run_blocks(ri, run, gi, r, n, bt, mid) <= avail:
                    lo = mid
                else:
                    hi = mid
            steps = lo
        n_iter = steps
        end = _run_end(pf, r, end, n_iter, n_dec, kv_read)
    pi[r, Q_KVSUM] = kv_read
    _launch(pf, pi, ht, hk, hr, hv, gi, r, t, end, n_iter, n_dec)


@njit(cache=True, error_model="numpy", _nrt=False)
def _end_paged(rf, ri, pf, pi, run, qn, mi, mrep, mn, log_done, gi, pc, kc, r, t):
    """End replica ``r``'s iteration (or decode run): computed tokens, blocks, published prompt blocks,
    first tokens (the iteration that completes a prefill emits one), completions."""
    pi[r, Q_BUSY] = 0
    pf[r, P_BUSY_S] += pf[r, P_ITER_DUR]
    n_iter = pi[r, Q_SEG]
    pi[r, Q_SEG] = 1
    pi[r, Q_ITER] += n_iter
    hb = gi[I_HB]
    bt = pi[r, Q_BT]
    w = 0
    for k in range(pi[r, Q_NRUN]):
        i = run[r, k]
        s = ri[i, R_SCHED]
        if s == 0:
            run[r, w] = i
            w += 1
            continue
        ri[i, R_SCHED] = 0
        before = ri[i, R_COMPUTED]
        c = before + s + (n_iter - 1)
        ri[i, R_COMPUTED] = c
        need = cdiv(c - ri[i, R_HELD] * hb, bt) - ri[i, R_BLOCKS]
        if need > 0:  # a decode run's later steps (checked to fit when it started)
            allocate(kc, pi, r, need)
            ri[i, R_BLOCKS] += need
        # prompt blocks completed in this iteration become cache entries; a request already past its
        # prompt published them all when it got there
        if before < ri[i, R_PROMPT] and ri[i, R_HELD] * hb < ri[i, R_PROMPT]:
            publish(ri, pi, pc, kc, gi, r, i)
        if c >= ri[i, R_PROMPT] + ri[i, R_GEN]:
            if ri[i, R_GEN] == 0 and np.isnan(rf[i, R_FIRST]):  # rf's row only at the first token
                rf[i, R_FIRST] = t
            ri[i, R_GEN] += n_iter
            pi[r, Q_TOKENS] += n_iter
            if ri[i, R_GEN] >= ri[i, R_OUTPUT]:
                release(ri, pi, pc, kc, r, i)
                _complete(rf, ri, pf, mi, log_done, gi, r, i, t)
                continue
        run[r, w] = i
        w += 1
    pi[r, Q_NRUN] = w
    sync_kv_tokens(pi, r)
    _release_if_drained(pf, pi, qn, mrep, mn, gi, r, t)


# ----------------------------------------------------------------------------- dispatch


@njit(cache=True, error_model="numpy", inline="always")
def dispatch(
    rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, ht, hk, hr, hv, gi, log_drop, pc, kc, i, r, t
):
    """Put arrived request ``i`` in replica ``r``'s queue (or the central queue if r < 0) and wake a server."""
    m = ri[i, R_MODEL]
    ri[i, R_STATE] = REQ_QUEUED
    mi[m, M_QUEUED] += 1
    if r >= 0:
        ri[i, R_REPLICA] = r
        _enqueue(ri, qh, qt, qn, gi[I_NMODELS] + r, i)
        split_decode_run(pf, pi, ht, hk, hr, hv, gi, r, t)
        start_iteration(
            rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, ht, hk, hr, hv, gi, log_drop, pc, kc, r, t
        )
        return
    _enqueue(ri, qh, qt, qn, m, i)
    # busy READY replicas pull from the central queue at their next iteration boundary;
    # wake the lowest-id idle one, if any
    best = -1
    if gi[I_SVC_KIND] == SVC_PER_REQUEST:
        # No decode runs to split, and a busy replica runs exactly one request (max batch 1;
        # a replica leaves mrep only when it runs none): when the model's running requests
        # fill every live replica none is idle, else the first idle READY one in mrep (id
        # order) is the lowest id. Saves the scan of every replica on each arrival.
        if mi[m, M_RUNNING] < mn[m]:
            for k in range(mn[m]):
                c = mrep[m, k]
                if pi[c, Q_STATE] == REP_READY and pi[c, Q_BUSY] == 0:
                    best = c
                    break
    else:
        for k in range(mn[m]):
            c = mrep[m, k]
            if pi[c, Q_STATE] == REP_READY and pi[c, Q_SEG] > 1:
                split_decode_run(pf, pi, ht, hk, hr, hv, gi, c, t)
            if pi[c, Q_STATE] == REP_READY and pi[c, Q_BUSY] == 0 and (best < 0 or c < best):
                best = c
    if best >= 0:
        start_iteration(
            rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, ht, hk, hr, hv, gi, log_drop, pc, kc, best, t
        )


# ----------------------------------------------------------------------------- main loop


@njit(cache=True, error_model="numpy", _nrt=False)
def advance(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, ht, hk, hr, hv, gf, gi,
            log_done, log_drop, tick_inflight, tick_queued, pc, kc, until, route_to):  # fmt: skip
    """Run every event with time <= ``until``.

    Returns ``STOP_UNTIL`` when the clock reached ``until``, or ``STOP_ROUTE``
    when the router is ``external`` and request ``gi[I_PENDING]`` waits for a
    routing decision; the caller passes it back as ``route_to`` (replica id, or
    -1 for the central queue) on the next call.
    """
    n_req = gi[I_NREQ]
    tick_s = gf[G_TICK_S]
    if gi[I_PENDING] >= 0:
        i = gi[I_PENDING]
        gi[I_PENDING] = -1
        gi[I_NEXT_ARR] += 1
        t = rf[i, R_ARR]
        dispatch(
            rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, ht, hk, hr, hv, gi, log_drop, pc, kc, i,
            route_to, t
        )  # fmt: skip
    while True:
        na = gi[I_NEXT_ARR]
        t_arr = rf[na, R_ARR] if na < n_req else INF
        t_heap = ht[0] if gi[I_HEAP_N] > 0 else INF
        t_tick = (gi[I_NTICK] + 1) * tick_s
        t_next = min(t_arr, t_heap, t_tick)
        if t_next > until:
            break
        gf[G_NOW] = t_next
        if t_heap <= t_arr and t_heap <= t_tick:
            k = heap_pop(ht, hk, hr, hv, gi)
            r = hr[k]
            if hv[k] != pi[r, Q_VERSION]:
                continue  # cancelled (replica released or load cancelled)
            ev = hk[k] >> 48
            if ev == EV_ITER_END:
                _end_iteration(rf, ri, pf, pi, run, pfl, qn, mi, mrep, mn, log_done, gi, pc, kc, r, t_heap)
            else:
                pi[r, Q_STATE] = REP_READY
                pf[r, P_READY] = t_heap
            start_iteration(
                rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, ht, hk, hr, hv, gi, log_drop, pc, kc, r,
                t_heap
            )  # fmt: skip
        elif t_arr <= t_tick:
            m = ri[na, R_MODEL]
            mi[m, M_INFLIGHT] += 1
            if gi[I_ROUTER] == RULE_EXTERNAL:
                gi[I_PENDING] = na
                return STOP_ROUTE
            gi[I_NEXT_ARR] = na + 1
            r = route(rf, ri, pf, pi, qn, mi, mrep, mn, gf, gi, pc, kc, na)
            dispatch(
                rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, ht, hk, hr, hv, gi, log_drop, pc, kc, na,
                r, t_arr
            )  # fmt: skip
        else:
            purge_expired(rf, ri, qh, qt, qn, mi, log_drop, gi, t_tick)
            k = gi[I_NTICK]
            if k < gi[I_TICK_CAP]:
                for m in range(gi[I_NMODELS]):
                    tick_inflight[k, m] = mi[m, M_INFLIGHT]
                    tick_queued[k, m] = mi[m, M_QUEUED]
            gi[I_NTICK] = k + 1
    gf[G_NOW] = until
    return STOP_UNTIL
