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
READY (0) before ITERATION_END (1) before a KV transfer's arrival (2) before an
arrival before a metrics tick; equal keys never happen because the sequence
number is unique. Arrivals are pre-generated and sorted, so they are read from
a cursor instead of the heap.

Engines. This module holds the loop, dispatch and the ``reserve`` engine
described below; the ``paged`` engine (vLLM V1: blocks, chunked prefill, prefix
caching, preemption) and disaggregated prefill and decode are in
:mod:`envs.sim.paged`; the event heap, the request queues and the replica
helpers both use are in :mod:`envs.sim.eventq`.

Service model (``reserve``). A replica runs *iterations* (vLLM / Orca continuous batching).
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

from numba import njit

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.eventq import *  # noqa: F403  (the heap, the queues and the replica helpers; re-exported)
from envs.sim.eventq import (
    EV_ITER_END,
    EV_XFER,
    _complete,
    _drop,
    _enqueue,
    _iteration_s,
    _launch,
    _next_waiting,
    _pop_head,
    _queues_empty,
    _release_if_drained,
    _run_end,
    heap_pop,
    lc_mark,
    purge_expired,
    split_decode_run,
)  # fmt: skip
from envs.sim.layout import *  # noqa: F403  (the state's field names, defined once there)
from envs.sim.paged import _end_paged, _start_paged, finish_transfer
from envs.sim.ptrs import prefetch
from envs.sim.routing import RULE_EXTERNAL, route, route_once

# advance() return codes
STOP_UNTIL, STOP_ROUTE = 0, 1


# ----------------------------------------------------------------------------- reserve engine


# A replica's running requests, run[r, :n], form a binary min-heap of ``finish << 32 | id``
# (``finish``: the replica iteration at whose end the request completes; layout.RUN_ID_MASK): the
# order is (finish, id) and the heap never reads the requests' rows, which at a thousand replicas
# are out of the core's caches by the time the request completes.


@njit(cache=True, error_model="numpy", inline="always")
def _run_push(run, r, n, key):
    """Add ``key`` (``finish << 32 | id``) to replica ``r``'s running heap of size ``n``."""
    while n > 0:
        p = (n - 1) >> 1
        up = run[r, p]
        if key < up:
            run[r, n] = up
            n = p
        else:
            break
    run[r, n] = key


@njit(cache=True, error_model="numpy", inline="always")
def _run_sift_down(run, r, n):
    """Remove the top of replica ``r``'s running heap; ``n`` is the size after removal."""
    key = run[r, n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        kc = run[r, c]
        if c + 1 < n and run[r, c + 1] < kc:
            c += 1
            kc = run[r, c]
        if kc < key:
            run[r, i] = kc
            i = c
        else:
            break
    run[r, i] = key


@njit(cache=True, error_model="numpy", inline="always")
def start_iteration(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r, t):
    """Admit what fits and start the next iteration of replica ``r`` if there is work."""
    lc_mark(pi, mrep, gi, r)  # work was queued for it, or it admits some: its count in flight moves
    if pi[r, Q_BUSY] != 0:
        return
    if pi[r, Q_PAGED] != 0:
        _start_paged(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r, t)
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
        fin = pi[r, Q_ITER] + ri[i, R_OUTPUT] - 1  # the iteration at whose end it completes
        _run_push(run, r, pi[r, Q_NRUN], (fin << 32) | i)
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
            n_iter = (run[r, 0] >> 32) - pi[r, Q_ITER] + 1
            end = _run_end(pf, r, end, n_iter, n_dec, pi[r, Q_KVSUM])
    pi[r, Q_NPF] = admitted
    pi[r, Q_PFTOK] = pf_tokens
    _launch(pf, pi, hp, gi, r, t, end, n_iter, n_dec)


@njit(cache=True, error_model="numpy", inline="always")
def _end_iteration(rf, ri, pf, pi, run, pfl, qn, mi, mrep, mn, log_done, gi, pc, kc, r, t):
    lc_mark(pi, mrep, gi, r)  # completions (and handoffs) leave its batch
    if pi[r, Q_PAGED] != 0:
        _end_paged(rf, ri, pf, pi, run, pfl, qn, mi, mrep, mn, log_done, gi, pc, kc, r, t)
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
    # completions pop from the running heap in O(log batch)
    n = pi[r, Q_NRUN]
    while n > 0 and (run[r, 0] >> 32) == it:
        i = run[r, 0] & RUN_ID_MASK
        n -= 1
        _run_sift_down(run, r, n)
        ctx = ri[i, R_PROMPT] + ri[i, R_OUTPUT]
        if gi[I_SVC_KIND] != SVC_PER_REQUEST:
            pi[r, Q_KVRES] -= ctx
        pi[r, Q_KVSUM] -= ctx
        _complete(rf, ri, pf, mi, log_done, gi, r, i, t)
    pi[r, Q_NRUN] = n
    _release_if_drained(pf, pi, qn, mrep, mn, gi, r, t)


# ----------------------------------------------------------------------------- dispatch


@njit(cache=True, error_model="numpy", inline="always")
def _wake_for_central(pf, pi, mrep, mn, hp, gi, m, t):
    """Model ``m``'s READY replica that should take a request just put in its central queue: the
    lowest-id idle one (-1: none; busy ones pull it at their next boundary, decode runs cut there)."""
    best = -1
    row = gi[I_NMODELS] + m  # the model's READY replicas, in id order
    for k in range(mn[row]):
        c = mrep[row, k]
        if pi[c, Q_SEG] > 1:
            split_decode_run(pf, pi, hp, gi, c, t)
        if pi[c, Q_BUSY] == 0 and best < 0:
            best = c
    return best


@njit(cache=True, error_model="numpy", inline="always")
def dispatch(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, i, r, t):
    """Put arrived request ``i`` in replica ``r``'s queue (or the central queue if r < 0) and wake a server."""
    m = ri[i, R_MODEL]
    ri[i, R_STATE] = REQ_QUEUED
    mi[m, M_QUEUED] += 1
    if r >= 0:
        ri[i, R_REPLICA] = r
        _enqueue(ri, qh, qt, qn, gi[I_NMODELS] + r, i)
        split_decode_run(pf, pi, hp, gi, r, t)
        start_iteration(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r, t)
        return
    _enqueue(ri, qh, qt, qn, m, i)
    # busy READY replicas pull from the central queue at their next iteration boundary;
    # wake the lowest-id idle one, if any
    best = -1
    if gi[I_SVC_KIND] == SVC_PER_REQUEST:
        # No decode runs to split, and a busy replica runs exactly one request (max batch 1;
        # a replica leaves mrep only when it runs none): when the model's running requests
        # fill every live replica none is idle, else the first idle one of its READY list (id
        # order) is the lowest id. Saves the scan of every replica on each arrival.
        if mi[m, M_RUNNING] < mn[m]:
            row = gi[I_NMODELS] + m
            for k in range(mn[row]):
                c = mrep[row, k]
                if pi[c, Q_BUSY] == 0:
                    best = c
                    break
    else:
        best = _wake_for_central(pf, pi, mrep, mn, hp, gi, m, t)
    if best >= 0:
        start_iteration(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, best, t)


@njit(cache=True, error_model="numpy", inline="always")
def _move_to_decode(ri, mi, i, d):
    """Handed-off request ``i`` counted out of its prefill pool and into decode pool ``d``."""
    m = ri[i, R_MODEL]
    mi[m, M_INFLIGHT] -= 1
    mi[m, M_RUNNING] -= 1
    mi[m, M_HANDOUT] += 1
    ri[i, R_MODEL] = d
    mi[d, M_INFLIGHT] += 1
    mi[d, M_HANDIN] += 1


@njit(cache=True, error_model="numpy", _nrt=False)
def hand_to(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, i, to, t):
    """Dispatch handed-off request ``i`` (counted in its decode pool) to decode replica ``to``, or to
    the pool's central queue if ``to < 0``: ``dispatch`` for a pool that runs the paged engine."""
    d = ri[i, R_MODEL]
    ri[i, R_STATE] = REQ_QUEUED
    mi[d, M_QUEUED] += 1
    if to >= 0:
        ri[i, R_REPLICA] = to
        _enqueue(ri, qh, qt, qn, gi[I_NMODELS] + to, i)
        lc_mark(pi, mrep, gi, to)
        split_decode_run(pf, pi, hp, gi, to, t)
    else:
        _enqueue(ri, qh, qt, qn, d, i)
        to = _wake_for_central(pf, pi, mrep, mn, hp, gi, d, t)
    if to >= 0 and pi[to, Q_BUSY] == 0:
        _start_paged(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, to, t)


@njit(cache=True, error_model="numpy", _nrt=False)
def hand_off(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gf, gi, log_drop, pc, kc, r, t):
    """Prefill replica ``r``'s requests that got their first token at ``t`` move to their model's decode
    pool: counted out of one pool and into the other, routed by the decode router, dispatched. Not
    inlined in the loop (as ``transfer_arrived``): each inlined copy of the dispatch path adds minutes
    to the core's compilation.

    With the ``external`` decode router, the first request is moved and left pending instead
    (``gi[I_PENDING]``, ``gi[I_HAND_R] = r``): returns True, and the loop stops for its decision
    (:func:`advance` takes it, and those of the others, on the next calls)."""
    d = pi[r, Q_DPOOL]
    if gi[I_D_ROUTER] == RULE_EXTERNAL:
        i = pfl[r, 0]
        _move_to_decode(ri, mi, i, d)
        gi[I_HAND_R] = r
        gi[I_HAND_K] = 0
        gi[I_PENDING] = i
        return True
    for k in range(pi[r, Q_NHAND]):
        i = pfl[r, k]
        _move_to_decode(ri, mi, i, d)
        to = route_once(rf, ri, pf, pi, qn, mi, mrep, mn, gf, gi, pc, kc, i, gi[I_D_ROUTER], gi[I_D_SCORE_FN],
                        gi[I_D_SCORE_AGG], gf[G_D_EPS], gf[G_D_P0], gf[G_D_P1], gf[G_D_P2])  # fmt: skip
        hand_to(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, i, to, t)
    pi[r, Q_NHAND] = 0
    return False


@njit(cache=True, error_model="numpy", _nrt=False)
def resume_hand_off(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc,
                    route_to, t):  # fmt: skip
    """The external decision ``route_to`` for the pending handed-off request; then the next one is
    left pending (returns True), or, the list done, the prefill replica's next iteration starts."""
    r = gi[I_HAND_R]
    k = gi[I_HAND_K]
    hand_to(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, pfl[r, k],
            route_to, t)  # fmt: skip
    k += 1
    if k < pi[r, Q_NHAND]:
        i = pfl[r, k]
        _move_to_decode(ri, mi, i, pi[r, Q_DPOOL])
        gi[I_HAND_K] = k
        gi[I_PENDING] = i
        return True
    pi[r, Q_NHAND] = 0
    gi[I_HAND_R] = -1
    gi[I_PENDING] = -1
    start_iteration(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r, t)
    return False


@njit(cache=True, error_model="numpy", _nrt=False)
def transfer_arrived(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, d,
                     t):  # fmt: skip
    """The KV cache at the head of decode replica ``d``'s transfer list arrived at ``t``: the request
    waits for a batch slot there; the prefill replica's freed blocks may let it admit work (or release
    it, if it was draining). Not inlined in the loop: the aggregated engines never call it. An event
    whose transfer is gone (the list lost its head to a failed prefill replica, or ``d`` itself
    failed: :func:`envs.sim.faults.fail_replicas`) finds a head due later, or none, and does nothing."""
    h = pi[d, Q_XHEAD]
    if h < 0 or rf[h, R_SVC] > t:
        return
    p = finish_transfer(rf, ri, pf, pi, qh, qt, qn, mi, hp, gi, pc, kc, d)
    lc_mark(pi, mrep, gi, d)
    _release_if_drained(pf, pi, qn, mrep, mn, gi, p, t)
    split_decode_run(pf, pi, hp, gi, d, t)
    for r in (d, p):  # both pools run the paged engine (start_iteration's other branch never applies)
        if pi[r, Q_BUSY] == 0:
            _start_paged(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r, t)


# ----------------------------------------------------------------------------- main loop

#: arrivals ahead of the cursor whose rows the loop asks the CPU to fetch (:func:`_prefetch_arrival`)
ARRIVALS_AHEAD = 8


@njit(cache=True, error_model="numpy", inline="always")
def _prefetch_replica(pf, pi, run, hp, gi):
    """Fetch the rows of the replica whose event is next in the heap while this one runs. At a
    thousand replicas they have left the core's caches since its last event; fetched now, its
    misses overlap this event's work instead of stalling the next one (hints: no value changes)."""
    if gi[I_HEAP_N] > 0:
        r = int(hp[1, H_REP])
        for c in range(0, N_PI, 8):
            prefetch(pi, r, c)
        prefetch(pi, r, N_PI - 1)
        for c in range(0, N_PF, 8):
            prefetch(pf, r, c)
        prefetch(pf, r, N_PF - 1)
        prefetch(run, r, 0)


@njit(cache=True, error_model="numpy", inline="always")
def _prefetch_arrival(rf, ri, gi):
    """Fetch the rows of the request ``ARRIVALS_AHEAD`` arrivals ahead (read in arrival order)."""
    na = gi[I_NEXT_ARR] + ARRIVALS_AHEAD
    prefetch(rf, na, 0)
    for c in range(0, N_RI, 8):
        prefetch(ri, na, c)


@njit(cache=True, error_model="numpy", _nrt=False)
def advance(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gf, gi,
            log_done, log_drop, tick_inflight, tick_queued, pc, kc, until, route_to):  # fmt: skip
    """Run every event with time <= ``until``.

    Returns ``STOP_UNTIL`` when the clock reached ``until``, or ``STOP_ROUTE``
    when the router is ``external`` and request ``gi[I_PENDING]`` waits for a
    routing decision; the caller passes it back as ``route_to`` (replica id, or
    -1 for the central queue) on the next call. With the ``external`` decode
    router (disaggregated serving) it stops the same way for each request a
    prefill replica hands off (``gi[I_HAND_R] >= 0`` then), at the handoff's time.
    """
    n_req = gi[I_NREQ]
    tick_s = gf[G_TICK_S]
    if gi[I_HAND_R] >= 0:  # a handed-off request waits for its external decode-stage decision
        if resume_hand_off(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc,
                           kc, route_to, gf[G_NOW]):  # fmt: skip
            return STOP_ROUTE
    elif gi[I_PENDING] >= 0:
        i = gi[I_PENDING]
        gi[I_PENDING] = -1
        gi[I_NEXT_ARR] += 1
        t = rf[i, R_ARR]
        dispatch(
            rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, i,
            route_to, t
        )  # fmt: skip
    while True:
        na = gi[I_NEXT_ARR]
        t_arr = rf[na, R_ARR] if na < n_req else INF
        t_heap = hp[1, H_T] if gi[I_HEAP_N] > 0 else INF
        t_tick = (gi[I_NTICK] + 1) * tick_s
        t_next = min(t_arr, t_heap, t_tick)
        if t_next > until:
            break
        gf[G_NOW] = t_next
        if t_heap <= t_arr and t_heap <= t_tick:
            k = heap_pop(hp, gi)
            _prefetch_replica(pf, pi, run, hp, gi)
            r = int(hp[k, H_REP])
            ev = int(hp[k, H_KEY]) >> 48
            if ev == EV_XFER:  # a KV cache reached decode replica r (disaggregated serving)
                transfer_arrived(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop,
                                 pc, kc, r, t_heap)  # fmt: skip
                continue
            if int(hp[k, H_VER]) != pi[r, Q_VERSION]:
                continue  # cancelled (replica released or load cancelled)
            if ev == EV_ITER_END:
                _end_iteration(rf, ri, pf, pi, run, pfl, qn, mi, mrep, mn, log_done, gi, pc, kc, r, t_heap)
                if pi[r, Q_NHAND] > 0 and hand_off(rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gf, gi, log_drop, pc, kc, r, t_heap):  # fmt: skip
                    return STOP_ROUTE  # an external decode-stage decision is due
            else:
                set_replica_state(pi, mrep, mn, gi, r, REP_READY)
                pf[r, P_READY] = t_heap
            start_iteration(
                rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r,
                t_heap
            )  # fmt: skip
        elif t_arr <= t_tick:
            m = ri[na, R_MODEL]
            mi[m, M_INFLIGHT] += 1
            if gi[I_ROUTER] == RULE_EXTERNAL:
                gi[I_PENDING] = na
                return STOP_ROUTE
            gi[I_NEXT_ARR] = na + 1
            _prefetch_arrival(rf, ri, gi)
            r = route(rf, ri, pf, pi, qn, mi, mrep, mn, gf, gi, pc, kc, na)
            dispatch(
                rf, ri, pf, pi, run, pfl, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, na,
                r, t_arr
            )  # fmt: skip
        else:
            dropped = gi[I_NDROP]
            purge_expired(rf, ri, qh, qt, qn, mi, log_drop, gi, t_tick)
            if gi[I_NDROP] != dropped:
                gi[I_LC_REBUILD] = 1  # timed-out requests left replica queues
            k = gi[I_NTICK]
            if k < gi[I_TICK_CAP]:
                for m in range(gi[I_NMODELS]):
                    tick_inflight[k, m] = mi[m, M_INFLIGHT]
                    tick_queued[k, m] = mi[m, M_QUEUED]
            gi[I_NTICK] = k + 1
    gf[G_NOW] = until
    return STOP_UNTIL
