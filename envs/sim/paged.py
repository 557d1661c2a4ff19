"""The ``paged`` serving engine (vLLM V1), and disaggregated prefill and decode on top of it.

A replica's KV cache is paged: fixed-size blocks allocated as tokens are computed, preemption by
recompute when a block is missing, a per-iteration token budget shared by decodes and prefill chunks
(chunked prefill), and a prefix cache of prompt blocks (:mod:`envs.sim.kvcache`). The scheduler
follows ``vllm/v1/core/sched/scheduler.py`` (see :func:`_start_paged`).

Disaggregated serving (Splitwise, Patel et al., ISCA 2024; DistServe, Zhong et al., OSDI 2024;
vLLM's ``NixlConnector``, ``vllm/distributed/kv_transfer/kv_connector/v1/nixl_connector.py``): a
replica of a model's prefill pool runs a request until its prompt is computed and its first token
emitted, then hands it to the decode pool (:func:`_end_paged`; the loop routes it with the decode
router). It keeps the request's KV blocks until they are read. A decode replica admits the request
by allocating blocks for the prompt's KV (it takes no batch slot or token budget while the cache is
in flight: vLLM's ``WAITING_FOR_REMOTE_KVS``) and pulls the cache over the link between the two
replicas (:func:`_start_transfer`); when it has arrived the prefill replica frees its blocks and the
request decodes like any other (:func:`finish_transfer`).

Links. A transfer moves ``prompt tokens x kv_bytes_per_token`` bytes at the bandwidth of the slower
end: ``tensor_parallel`` x the per-GPU NVLink bandwidth within a node, x the per-GPU network share
across nodes (``nodes[].nvlink_gbps`` / ``network_gbps``; every GPU of a replica moves its own heads'
shard). Each replica's outgoing and incoming links carry one transfer at a time, in order (a
transfer starts when both are free), the first-come-first-served counterpart of splitwise-sim's
links (``Mutinifni/splitwise-sim``, ``interconnect.py``: time = size / free bandwidth); it gives the
same link utilisation and backlog as fair sharing. A transfer into a replica completes no earlier
than the one before it (in-order delivery), so a replica's transfers form a FIFO list with one
pending event. Splitwise and Mooncake overlap the transfer with the prefill layer by layer; this
model does not (it is the serialized transfer Splitwise uses for short prompts).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.eventq import (
    EV_XFER,
    INT_MAX,
    _complete,
    _drop,
    _enqueue_front,
    _iteration_s,
    _launch,
    _next_waiting,
    _pop_head,
    _queues_empty,
    _release_if_drained,
    _run_end,
    heap_push,
    lc_mark,
)  # fmt: skip
from envs.sim.kvcache import allocate, available_blocks, cdiv, hold, match, publish, release, sync_kv_tokens
from envs.sim.layout import *  # noqa: F403  (the state's field names, defined once there)
from envs.sim.ptrs import prefetch


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


@njit(cache=True, error_model="numpy", inline="always")
def _join_batch(ri, pi, run, mi, m, r, i):
    """Waiting request ``i`` of model ``m`` joins replica ``r``'s running batch (its last place)."""
    mi[m, M_QUEUED] -= 1
    mi[m, M_RUNNING] += 1
    ri[i, R_STATE] = REQ_RUNNING
    ri[i, R_REPLICA] = r
    run[r, pi[r, Q_NRUN]] = i
    pi[r, Q_NRUN] += 1


@njit(cache=True, error_model="numpy", _nrt=False)
def _start_paged(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r, t):
    """Schedule replica ``r``'s next iteration as vLLM V1's scheduler does (``vllm/v1/core/sched/
    scheduler.py``, ``Scheduler.schedule``): a token budget (``Q_BUDGET``, ``max_num_batched_tokens``)
    goes first to the running requests in admission order (one token each when decoding, the next
    chunk of a prompt being prefilled), allocating their KV blocks and preempting the most recently
    admitted request while a block is missing; then, if nothing was preempted, to waiting requests
    (same order as the reserve engine), each starting after its longest cached prefix, while the
    budget, the batch limit and the blocks last. Without chunked prefill a prompt that does not fit
    the remaining budget waits (the budget is then at least ``max_model_len``, vLLM's rule).

    A decode replica of a disaggregated model admits a handed-off request in two steps: blocks for the
    prompt's KV and the start of its transfer (no batch slot, no budget), then, once the cache has
    arrived, a batch slot for its decode steps (see the module docstring).
    """
    lc_mark(pi, mrep, gi, r)  # admissions, preemptions and drops move its count in flight
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
            if ri[i, R_KVSRC] != 0 or ri[i, R_BLOCKS] != 0:  # a handed-off request (disaggregated)
                code = _admit_handed_off(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi,
                                         log_drop, pc, kc, r, t, bq, bl, i, budget)  # fmt: skip
                if code < 0:
                    break  # head-of-line: wait for blocks to free up
                if code > 0:  # admitted to the batch for a decode step (``code`` tokens)
                    budget -= code
                    tokens += code
                    kv_read += ri[i, R_COMPUTED] + code
                    admitted += 1
                continue
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
            _join_batch(ri, pi, run, mi, m, r, i)
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
    _launch(pf, pi, hp, gi, r, t, end, n_iter, n_dec)


@njit(cache=True, error_model="numpy", _nrt=False)
def _end_paged(rf, ri, pf, pi, run, pfl, qn, mi, mrep, mn, log_done, gi, pc, kc, r, t):
    """End replica ``r``'s iteration (or decode run): computed tokens, blocks, published prompt blocks,
    first tokens (the iteration that completes a prefill emits one), completions. A prefill-pool
    replica hands each request whose first token it emitted to the decode pool: it leaves the batch
    holding its blocks and is listed in ``pfl[r, :Q_NHAND]`` for the loop to route."""
    pi[r, Q_BUSY] = 0
    pf[r, P_BUSY_S] += pf[r, P_ITER_DUR]
    n_iter = pi[r, Q_SEG]
    pi[r, Q_SEG] = 1
    pi[r, Q_ITER] += n_iter
    hb = gi[I_HB]
    bt = pi[r, Q_BT]
    for k in range(pi[r, Q_NRUN]):  # the batch's rows, scattered among the requests in flight: fetch
        prefetch(ri, run[r, k], 0)  # them all at once, the walk below then finds them in the cache
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
            if pi[r, Q_ROLE] == ROLE_PREFILL:  # its KV stays here until the decode replica has read it
                ri[i, R_PBLOCKS] = ri[i, R_BLOCKS]
                ri[i, R_PHELD] = ri[i, R_HELD]
                ri[i, R_BLOCKS] = 0
                ri[i, R_HELD] = 0
                ri[i, R_KVSRC] = r + 1
                pi[r, Q_XOUT] += 1
                pfl[r, pi[r, Q_NHAND]] = i
                pi[r, Q_NHAND] += 1
                continue
        run[r, w] = i
        w += 1
    pi[r, Q_NRUN] = w
    sync_kv_tokens(pi, r)
    _release_if_drained(pf, pi, qn, mrep, mn, gi, r, t)


# ----------------------------------------------------------------------------- disaggregated serving


@njit(cache=True, error_model="numpy", inline="always")
def _free_source(ri, pi, pc, kc, i):
    """Free the blocks (and cache references) request ``i`` holds on the prefill replica that computed its
    prompt; returns that replica."""
    p = ri[i, R_KVSRC] - 1
    blocks, held = ri[i, R_BLOCKS], ri[i, R_HELD]  # its blocks on the decode side, if any
    ri[i, R_BLOCKS] = ri[i, R_PBLOCKS]
    ri[i, R_HELD] = ri[i, R_PHELD]
    release(ri, pi, pc, kc, p, i)
    ri[i, R_BLOCKS] = blocks
    ri[i, R_HELD] = held
    ri[i, R_PBLOCKS] = 0
    ri[i, R_PHELD] = 0
    ri[i, R_KVSRC] = 0
    pi[p, Q_XOUT] -= 1
    sync_kv_tokens(pi, p)
    return p


@njit(cache=True, error_model="numpy", inline="always")
def _start_transfer(rf, ri, pf, pi, hp, gi, p, d, i, t):
    """Start moving request ``i``'s prompt KV from prefill replica ``p`` to decode replica ``d`` at ``t``."""
    nbytes = ri[i, R_PROMPT] * pf[d, P_KVBYTES]
    if pi[p, Q_NODE] == pi[d, Q_NODE]:
        bw = min(pf[p, P_NVL_BPS], pf[d, P_NVL_BPS])
        lat = max(pf[p, P_NVL_LAT], pf[d, P_NVL_LAT])
    else:
        bw = min(pf[p, P_NET_BPS], pf[d, P_NET_BPS])
        lat = max(pf[p, P_NET_LAT], pf[d, P_NET_LAT])
    start = max(t, pf[p, P_XOUT_FREE], pf[d, P_XIN_FREE])
    busy = nbytes / bw
    pf[p, P_XOUT_FREE] = start + busy
    pf[d, P_XIN_FREE] = start + busy
    end = start + busy + lat
    tail = pi[d, Q_XTAIL]
    if tail >= 0 and rf[tail, R_SVC] > end:
        end = rf[tail, R_SVC]  # in-order delivery: never before the transfer ahead of it
    rf[i, R_SVC] = end
    pf[d, P_XWAIT_S] += end - t
    pf[d, P_XBUSY_S] += busy
    pf[d, P_XBYTES] += nbytes
    pi[d, Q_XIN] += 1
    ri[i, R_NEXT] = -1
    if tail < 0:
        pi[d, Q_XHEAD] = i
        heap_push(hp, gi, pi, end, EV_XFER, d, -1)
    else:
        ri[tail, R_NEXT] = i
    pi[d, Q_XTAIL] = i


@njit(cache=True, error_model="numpy", _nrt=False)
def _admit_handed_off(rf, ri, pf, pi, run, qh, qt, qn, mi, mrep, mn, hp, gi, log_drop, pc, kc, r, t,
                      bq, bl, i, budget):  # fmt: skip
    """Decode replica ``r`` takes waiting request ``i`` of a disaggregated model (the head of list ``bl``
    of queue ``bq``). Its KV still on the prefill replica: blocks for it and the transfer's start (0),
    or a drop when the request can never fit here. Its KV here (after the transfer, or never preempted
    since): a batch slot for its next decode token (that token count). -1: blocks are missing."""
    bt = pi[r, Q_BT]
    if ri[i, R_KVSRC] != 0:
        reason = -1
        if ri[i, R_PROMPT] + ri[i, R_OUTPUT] > pi[r, Q_MAXLEN]:
            reason = DROP_CONTEXT
        elif cdiv(ri[i, R_PROMPT] + ri[i, R_OUTPUT], bt) > pi[r, Q_BLKCAP]:
            reason = DROP_KV
        need = cdiv(ri[i, R_PROMPT], bt)
        if reason < 0 and need > available_blocks(pi, r):
            return -1
        _pop_head(ri, qh, qt, qn, bq, bl, i)
        if reason >= 0:
            p = _free_source(ri, pi, pc, kc, i)
            _release_if_drained(pf, pi, qn, mrep, mn, gi, p, t)
            _drop(rf, ri, mi, log_drop, gi, i, t)
            ri[i, R_REASON] = reason
            return 0
        allocate(kc, pi, r, need)
        ri[i, R_BLOCKS] = need
        ri[i, R_HELD] = 0
        ri[i, R_COMPUTED] = ri[i, R_PROMPT]
        ri[i, R_STATE] = REQ_TRANSFER
        ri[i, R_REPLICA] = r
        mi[ri[i, R_MODEL], M_QUEUED] -= 1
        _start_transfer(rf, ri, pf, pi, hp, gi, ri[i, R_KVSRC] - 1, r, i, t)
        return 0
    c = ri[i, R_COMPUTED]
    new = ri[i, R_PROMPT] + ri[i, R_GEN] - c
    if new > budget:
        new = budget
    need = cdiv(c + new, bt) - ri[i, R_BLOCKS]
    if need > available_blocks(pi, r):
        return -1
    _pop_head(ri, qh, qt, qn, bq, bl, i)
    allocate(kc, pi, r, need)
    if need > 0:
        ri[i, R_BLOCKS] += need
    ri[i, R_SCHED] = new
    _join_batch(ri, pi, run, mi, ri[i, R_MODEL], r, i)
    return new


@njit(cache=True, error_model="numpy", inline="always")
def finish_transfer(rf, ri, pf, pi, qh, qt, qn, mi, hp, gi, pc, kc, d):
    """The KV transfer at the head of decode replica ``d``'s list has arrived: the prefill replica frees
    its blocks and the request waits at the head of ``d``'s queue for a batch slot. Returns the prefill
    replica (the loop releases it if it was draining)."""
    i = pi[d, Q_XHEAD]
    nxt = ri[i, R_NEXT]
    pi[d, Q_XHEAD] = nxt
    if nxt < 0:
        pi[d, Q_XTAIL] = -1
    else:
        heap_push(hp, gi, pi, rf[nxt, R_SVC], EV_XFER, d, -1)
    pi[d, Q_XIN] -= 1
    pi[d, Q_XN] += 1
    rf[i, R_SVC] = 0.0
    p = _free_source(ri, pi, pc, kc, i)
    ri[i, R_STATE] = REQ_QUEUED
    mi[ri[i, R_MODEL], M_QUEUED] += 1
    _enqueue_front(ri, qh, qt, qn, gi[I_NMODELS] + d, i)
    return p
