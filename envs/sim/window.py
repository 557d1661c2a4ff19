"""KPI windows: everything a control step reads about an interval, in one compiled pass.

A control step needs, for the window ``[t0, t1)`` since the previous decision, the interval KPIs
of :mod:`envs.sim.metrics` and every model's :class:`~envs.sim.view.ModelLoad`. Computed with
numpy this took a few dozen calls on short arrays, several times the cost of simulating the
interval itself; :func:`window_stats` computes all of it in one call into preallocated rows.

Bit-identical to the numpy definitions: sums use numpy's pairwise summation
(:func:`pairwise_sum`, the algorithm of ``pairwise_sum_DOUBLE`` in numpy's
``loops_utils.h.src``), percentiles are ``np.percentile``'s linear interpolation on exact order
statistics, and every other value is the same IEEE operation on the same operands. A window's
GPU-seconds and cost are pairwise sums of per-replica products rather than BLAS dot products,
whose accumulation order depends on the build and on memory alignment.

A window's position is a :class:`KpiWindow` cursor owned by its reader: reading a window never
changes the simulation, and two readers (a control loop and a logger, say) keep their own.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.layout import (
    I_NEXT_ARR,
    I_NTICK,
    I_TICK_CAP,
    M_INFLIGHT,
    M_QUEUED,
    P_ALLOC,
    P_BUSY_S,
    P_ITER_START,
    P_READY,
    P_RELEASE,
    P_SPEED,
    Q_BUSY,
    Q_HITTOK,
    Q_KVCAP,
    Q_KVRES,
    Q_MODEL,
    Q_PREEMPT,
    Q_PROMPTTOK,
    Q_RECOMP,
    Q_STATE,
    Q_XIN,
    Q_XOUT,
    R_ADMIT,
    R_ARR,
    R_CLASS,
    R_DONE,
    R_FIRST,
    R_MODEL,
    R_OUTPUT,
    R_PROMPT,
    REP_DRAINING,
    REP_LOADING,
    REP_READY,
)

# Columns of the window row (one per window) written by window_stats.
(W_DONE, W_WAIT_SUM, W_E2E_SUM, W_E2E_P99, W_TTFT_P50, W_TTFT_P99, W_TPOT_SUM, W_TPOT_N, W_MET,
 W_UTIL_NUM, W_UTIL_DEN, W_K0, W_K1, W_GPU_S, W_COST) = range(15)  # fmt: skip
N_W = 15
# Columns of the per-model rows (one per model) written by window_stats when views are asked for.
# Latency, arrival and completion columns describe the served model (both pools of a disaggregated
# model see its arrivals and completions, counted by ``origin``); counts and resources the deployment.
# V_TPOT_P99, V_TPOT_SUM, V_TPOT_N: TPOT p99, sum and count over the completions with more than one
# output token; V_TTFT_SUM: the completions' TTFT summed; V_PROMPT_SUM, V_OUTPUT_SUM: their prompt
# and output tokens summed; V_XFER: KV caches a prefill pool holds for transfers / transfers into a
# decode pool not arrived yet.
(V_READY, V_LOADING, V_DRAINING, V_ARRIVED, V_DONE, V_MET, V_TTFT_P99, V_UTIL_NUM, V_UTIL_DEN, V_KV_CAP,
 V_KV_RES, V_SPEED_SUM, V_SPEED_N, V_TICK_SUM, V_TICK_N, V_IN_FLIGHT, V_QUEUED, V_DROPPED, V_TPOT_P99,
 V_PROMPT_SUM, V_OUTPUT_SUM, V_XFER, V_TTFT_SUM, V_TPOT_SUM, V_TPOT_N) = range(25)  # fmt: skip
N_V = 25

PW_BLOCKSIZE = 128  # numpy's PW_BLOCKSIZE


@njit(cache=True, error_model="numpy", inline="always")
def _block_sum(a, lo, n):
    """numpy's pairwise sum of at most PW_BLOCKSIZE values: 8 accumulators, then the rest in order."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    m = n - (n % 8)
    while i < m:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True, error_model="numpy")
def pairwise_sum(a, lo, n):
    """``a[lo:lo + n].sum()`` exactly as numpy computes it.

    numpy splits a sum of more than ``PW_BLOCKSIZE`` values in two halves (the first a multiple of
    8 long) and adds the halves' sums. The recursion is unrolled onto an explicit stack here:
    numba's on-disk cache cannot hold a recursive function.
    """
    if n <= PW_BLOCKSIZE:
        return _block_sum(a, lo, n)
    f_lo = np.empty(64, np.int64)
    f_n = np.empty(64, np.int64)
    f_phase = np.empty(64, np.int64)  # 0: left half next, 1: right half next, 2: both summed
    f_left = np.empty(64)
    depth = 0
    f_lo[0], f_n[0], f_phase[0] = lo, n, 0
    ret = 0.0
    while depth >= 0:
        fl, fn = f_lo[depth], f_n[depth]
        if fn <= PW_BLOCKSIZE:
            ret = _block_sum(a, fl, fn)
            depth -= 1
            continue
        n2 = fn // 2
        n2 -= n2 % 8
        ph = f_phase[depth]
        if ph == 0:
            f_phase[depth] = 1
            depth += 1
            f_lo[depth], f_n[depth], f_phase[depth] = fl, n2, 0
        elif ph == 1:
            f_left[depth] = ret
            f_phase[depth] = 2
            depth += 1
            f_lo[depth], f_n[depth], f_phase[depth] = fl + n2, fn - n2, 0
        else:
            ret = f_left[depth] + ret
            depth -= 1
    return ret


@njit(cache=True, error_model="numpy")
def _select(a, n, k):
    """Reorder ``a[:n]`` so that ``a[k]`` holds the k-th smallest value (quickselect); returns it."""
    lo, hi = 0, n - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        # median of three as the pivot, moved to a[lo]
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        a[mid], a[lo] = a[lo], a[mid]
        pivot = a[lo]
        i, j = lo + 1, hi
        while True:
            while i <= j and a[i] < pivot:
                i += 1
            while i <= j and a[j] > pivot:
                j -= 1
            if i >= j:
                break
            a[i], a[j] = a[j], a[i]
            i += 1
            j -= 1
        a[lo], a[j] = a[j], a[lo]
        if j == k:
            return a[k]
        if j < k:
            lo = j + 1
        else:
            hi = j - 1
    return a[k]


@njit(cache=True, error_model="numpy")
def percentile(x, n, q, scratch):
    """``np.percentile(x[:n], q)`` (linear interpolation), bit for bit, using ``scratch`` (length >= n).

    The two order statistics around the position are exact, so is the interpolation.
    """
    for j in range(n):
        scratch[j] = x[j]
    pos = q / 100.0 * (n - 1)
    lo = int(pos)
    a = _select(scratch, n, lo)
    b = a
    if lo + 1 < n:
        b = scratch[lo + 1]
        for j in range(lo + 2, n):
            if scratch[j] < b:
                b = scratch[j]
    frac = pos - lo
    if frac >= 0.5:
        return b - (b - a) * (1.0 - frac)  # numpy's _lerp
    return a + (b - a) * frac


@njit(cache=True, error_model="numpy", inline="always")
def _model_sum(values, pi, m, n_rep, scratch):
    """numpy's ``values[:n_rep][model == m].sum()``: the replicas of model ``m``, in id order."""
    n = 0
    for r in range(n_rep):
        if pi[r, Q_MODEL] == m:
            scratch[n] = values[r]
            n += 1
    return pairwise_sum(scratch, 0, n)


@njit(cache=True, error_model="numpy", inline="always")
def _size_sums(ri, done, n, row):
    """Prompt and output tokens of the ``n`` requests ``done``, summed into ``row``."""
    prompt = output = 0
    for j in range(n):
        prompt += ri[done[j], R_PROMPT]
        output += ri[done[j], R_OUTPUT]
    row[V_PROMPT_SUM] = prompt
    row[V_OUTPUT_SUM] = output


@njit(cache=True, error_model="numpy", nogil=True)
def window_stats(rf, ri, pf, pi, mi, mrep, mn, gi, tick_inflight, arrivals, slo, nominal_speed, rep_gpus, rep_usd,
                 n_rep, now, t0, t1, tick_s, done, drops, busy0, views, only, single, origin, win, per_model):  # fmt: skip
    """The KPI window ``[t0, t1)`` given its completed requests ``done`` and dropped ones ``drops``.

    Writes the window row ``win`` (``W_*`` columns) and, when ``views``, the per-model rows
    ``per_model`` (``V_*``; only row ``only`` when ``only >= 0``). ``origin[m]`` is the deployment
    where model ``m``'s requests arrive (a decode pool's prefill pool; else ``m``): a request is
    counted in the arrival, completion and latency columns of every deployment with its origin. Returns ``(busy,
    tick_arrivals)``: every replica's busy seconds so far (the next window's ``busy0``) and,
    when ``views``, arrivals per metrics tick and model inside the window (ticks ``win[W_K0]`` to
    ``win[W_K1] - 1``). ``single``: one model, whose rows are the window's own values.
    """
    n_models = mn.shape[0] // 2  # (its second half: the READY lists)
    # ---- replicas: busy time, allocated and READY time inside [t0, t1)
    busy = np.empty(n_rep)
    diff = np.empty(n_rep)
    alloc_s = np.empty(n_rep)
    ready_s = np.empty(n_rep)
    n0 = min(len(busy0), n_rep)
    for r in range(n_rep):
        b = pf[r, P_BUSY_S]
        if pi[r, Q_BUSY] == 1:
            b += now - pf[r, P_ITER_START]
        busy[r] = b
        diff[r] = b - busy0[r] if r < n0 else b - 0.0
        end = pf[r, P_RELEASE]
        end = end if (end <= t1 or end != end) else t1
        start = pf[r, P_ALLOC]
        start = start if (start >= t0 or start != start) else t0
        span = end - start
        alloc_s[r] = span if (span >= 0.0 or span != span) else 0.0
        start = pf[r, P_READY]
        start = start if (start >= t0 or start != start) else t0
        span = end - start
        ready_s[r] = span if (span >= 0.0 or span != span) else 0.0
    win[W_UTIL_NUM] = pairwise_sum(diff, 0, n_rep)
    win[W_UTIL_DEN] = pairwise_sum(ready_s, 0, n_rep)
    # GPU-seconds and cost: sums of per-replica products, in replica order (not BLAS: its
    # accumulation order depends on the build and the arrays' alignment)
    for r in range(n_rep):
        diff[r] = alloc_s[r] * rep_gpus[r]
    win[W_GPU_S] = pairwise_sum(diff, 0, n_rep)
    for r in range(n_rep):
        diff[r] = alloc_s[r] * rep_usd[r]
    win[W_COST] = pairwise_sum(diff, 0, n_rep)
    # ---- completed requests: latencies, SLOs
    n = len(done)
    ttft = np.empty(n)
    e2e = np.empty(n)
    wait = np.empty(n)
    tpot_multi = np.empty(n)
    tpot_all = np.empty(n)
    met = np.empty(n, np.bool_)
    n_multi = 0
    n_met = 0
    for j in range(n):
        i = done[j]
        arr = rf[i, R_ARR]
        first = rf[i, R_FIRST]
        last = rf[i, R_DONE]
        ttft[j] = first - arr
        e2e[j] = last - arr
        wait[j] = rf[i, R_ADMIT] - arr
        den = ri[i, R_OUTPUT] - 1
        tpot = 0.0
        if den > 0:
            tpot = (last - first) / den
            tpot_multi[n_multi] = tpot
            n_multi += 1
        tpot_all[j] = tpot if den > 0 else -1.0
        c = ri[i, R_CLASS]
        ok = (ttft[j] <= slo[c, 0]) & (tpot <= slo[c, 1]) & (e2e[j] <= slo[c, 2])
        met[j] = ok
        n_met += ok
    win[W_DONE] = n
    win[W_MET] = n_met
    win[W_WAIT_SUM] = pairwise_sum(wait, 0, n)
    win[W_E2E_SUM] = pairwise_sum(e2e, 0, n)
    win[W_TPOT_SUM] = pairwise_sum(tpot_multi, 0, n_multi)
    win[W_TPOT_N] = n_multi
    scratch = np.empty(max(n, n_rep, 1))
    if n > 0:
        win[W_TTFT_P50] = percentile(ttft, n, 50.0, scratch)
        win[W_TTFT_P99] = percentile(ttft, n, 99.0, scratch)
        win[W_E2E_P99] = percentile(e2e, n, 99.0, scratch)
    else:
        win[W_TTFT_P50] = 0.0
        win[W_TTFT_P99] = 0.0
        win[W_E2E_P99] = 0.0
    if not views:
        return busy, np.zeros((n_models, 0), np.float64)
    # ---- per-model scaler views
    a0 = np.searchsorted(arrivals, t0, side="left")
    a1 = gi[I_NEXT_ARR]
    k0 = int(math.floor(t0 / tick_s + 1e-9))
    k1 = min(gi[I_NTICK], gi[I_TICK_CAP])
    nt = k1 - k0 if k1 > k0 else 0
    win[W_K0] = k0
    win[W_K1] = k0 + nt
    tick_arr = np.zeros((n_models, nt))
    if nt > 0:
        # arrivals per tick: those in (edges[j], edges[j + 1]] with edges[0] = t0 and
        # edges[j] = (k0 + j) * tick_s after it (np.diff of np.searchsorted(..., side="right"))
        j = 0
        for a in range(a0, a1):
            t = arrivals[a]
            if t <= t0:
                continue
            while j < nt and t > float(k0 + j + 1) * tick_s:
                j += 1
            if j >= nt:
                break
            tick_arr[ri[a, R_MODEL] if not single else 0, j] += 1.0
    sel = np.empty(max(n, 1))
    tpot_m = np.empty(max(n, 1))
    for m in range(n_models):
        if only >= 0 and m != only:
            continue
        row = per_model[m]
        row[V_DROPPED] = 0.0
        # replicas of the model, in id order (mrep is kept sorted)
        ready = loading = draining = 0
        kv_cap = kv_res = 0
        xfer = 0
        ns = 0
        for k in range(mn[m]):
            r = mrep[m, k]
            xfer += pi[r, Q_XOUT] + pi[r, Q_XIN]
            s = pi[r, Q_STATE]
            if s == REP_READY:
                ready += 1
                kv_cap += pi[r, Q_KVCAP]
                kv_res += pi[r, Q_KVRES]
                scratch[ns] = pf[r, P_SPEED]
                ns += 1
            elif s == REP_LOADING:
                loading += 1
            elif s == REP_DRAINING:
                draining += 1
        row[V_READY] = ready
        row[V_LOADING] = loading
        row[V_DRAINING] = draining
        row[V_XFER] = xfer
        row[V_KV_CAP] = kv_cap
        row[V_KV_RES] = kv_res
        if ns > 0:
            row[V_SPEED_SUM] = pairwise_sum(scratch, 0, ns)
            row[V_SPEED_N] = ns
        else:
            row[V_SPEED_SUM] = nominal_speed[m]
            row[V_SPEED_N] = 1.0
        row[V_IN_FLIGHT] = mi[m, M_INFLIGHT]
        row[V_QUEUED] = mi[m, M_QUEUED]
        tick_sum = 0
        for k in range(k0, k0 + nt):
            tick_sum += tick_inflight[k, m]
        row[V_TICK_SUM] = tick_sum
        row[V_TICK_N] = nt
        if single:
            row[V_ARRIVED] = max(a1 - a0, 0)
            row[V_DONE] = n
            row[V_MET] = n_met
            row[V_TTFT_P99] = win[W_TTFT_P99]
            row[V_TPOT_P99] = percentile(tpot_multi, n_multi, 99.0, sel) if n_multi > 0 else 0.0
            row[V_TPOT_SUM] = win[W_TPOT_SUM]
            row[V_TPOT_N] = n_multi
            row[V_TTFT_SUM] = pairwise_sum(ttft, 0, n)
            _size_sums(ri, done, n, row)
            row[V_UTIL_NUM] = win[W_UTIL_NUM]
            row[V_UTIL_DEN] = win[W_UTIL_DEN]
            row[V_DROPPED] = len(drops)
            continue
        o = origin[m]
        arrived = 0
        for a in range(a0, a1):
            arrived += origin[ri[a, R_MODEL]] == o
        row[V_ARRIVED] = arrived
        for x in drops:
            if origin[ri[x, R_MODEL]] == o:
                row[V_DROPPED] += 1.0
        nm = 0
        met_m = 0
        n_tp = 0
        prompt = output = 0
        for j in range(n):
            i = done[j]
            if origin[ri[i, R_MODEL]] == o:
                scratch[nm] = ttft[j]
                nm += 1
                met_m += met[j]
                prompt += ri[i, R_PROMPT]
                output += ri[i, R_OUTPUT]
                if tpot_all[j] >= 0.0:
                    tpot_m[n_tp] = tpot_all[j]
                    n_tp += 1
        row[V_DONE] = nm
        row[V_MET] = met_m
        row[V_TTFT_P99] = percentile(scratch, nm, 99.0, sel) if nm > 0 else 0.0
        row[V_TPOT_P99] = percentile(tpot_m, n_tp, 99.0, sel) if n_tp > 0 else 0.0
        row[V_TPOT_SUM] = pairwise_sum(tpot_m, 0, n_tp)
        row[V_TPOT_N] = n_tp
        row[V_TTFT_SUM] = pairwise_sum(scratch, 0, nm)
        row[V_PROMPT_SUM] = prompt
        row[V_OUTPUT_SUM] = output
        row[V_UTIL_NUM] = _model_sum(diff, pi, m, n_rep, scratch)
        row[V_UTIL_DEN] = _model_sum(ready_s, pi, m, n_rep, scratch)
    return busy, tick_arr


#: The paged engine's per-replica counters summed into the serving KPIs (Simulator.serving_kpis):
#: preemptions, prompt tokens served from the prefix cache, prompt tokens admitted, recomputed tokens.
SERVING_COUNTERS = (Q_PREEMPT, Q_HITTOK, Q_PROMPTTOK, Q_RECOMP)


#: KV transfers of disaggregated serving, counted from the start: transfers started and arrived, seconds
#: from a decode replica's admission to the cache's arrival summed over those started, seconds the
#: receiving links were busy, bytes moved, requests handed from a prefill to a decode pool.
TRANSFER_COUNTERS = ("started", "arrived", "wait_s", "busy_s", "bytes", "handed_off")
N_TRANSFER_COUNTERS = len(TRANSFER_COUNTERS)


class KpiWindow:
    """A reader's position in the KPI stream: the window it reads next starts here.

    ``t0`` (s) is the window's start; ``done``, ``dropped`` and ``arrived`` count the completion
    log, drop log and arrivals already read; ``busy0`` holds every replica's busy seconds at
    ``t0``; ``serving0``, ``faults0`` and ``transfer0`` the paged engine's, the fault injector's and
    the KV transfers' counters at ``t0``. :meth:`envs.sim.engine.Simulator.read_window` reads from it and moves it on.
    """

    __slots__ = ("arrived", "busy0", "done", "dropped", "faults0", "serving0", "t0", "transfer0")

    def __init__(self) -> None:
        self.t0 = 0.0
        self.done = 0
        self.dropped = 0
        self.arrived = 0
        self.busy0 = np.zeros(0)
        self.serving0 = np.zeros(len(SERVING_COUNTERS), np.int64)  #: the paged engine's counters at t0
        self.faults0: dict[str, float] | None = None  #: the fault counters at t0 (None: all zero)
        #: disaggregated serving's KV-transfer counters at t0 (``Simulator.transfer_counters``)
        self.transfer0 = np.zeros(N_TRANSFER_COUNTERS)

    def __repr__(self) -> str:
        return f"KpiWindow(t0={self.t0!r}, done={self.done}, dropped={self.dropped}, arrived={self.arrived})"
