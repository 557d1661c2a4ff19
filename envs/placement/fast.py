"""The compiled step of Placement-v0's ``jobs`` source, for one environment or N at once.

:class:`JobBatch` holds the state of E job-placement episodes ("rows") in stacked arrays: the
cluster's free resources per node and GPU (the arrays of :class:`~envs.sim.cluster.ClusterState`,
one row per episode), the episode's jobs, the heap of live jobs by deletion time, the incremental
FGD fragmentation, the observation and the action mask. :func:`step_rows` runs one step of every
row in one compiled call: apply the action (the cluster's default GPUs: lowest-index idle GPUs
for whole-GPU jobs, the best-fitting GPU for a share), release the jobs whose deletion time has
come, advance to the next job, and fill its mask, the cost terms, the KPIs, the reward and the
observation rows that changed. The single env (:class:`~envs.placement.jobs.JobPlacementEnv`)
is a batch of one row; the vector env (:class:`~envs.placement.vector.PlacementVecEnv`) a batch
of N. A Python call into compiled code costs about 0.1 us per array argument, so the state is a
few stacked arrays rather than arrays per episode.

Every number is the one the cluster model gives (``ClusterState.feasible``, ``allocate``,
``release``, ``fragmented_gpus``, ``gpus_in_use``): the same float64 operations in the same order.
The FGD fragmentation is kept incrementally (:mod:`envs.placement.fragments`). The tests replay
the Python cluster model against this code bit for bit.

The synthetic trace of a reset is drawn here too (:func:`draw_synthetic_jobs`): the per-job loop of
:func:`envs.sim.jobtrace.synthetic_job_trace`, compiled, drawing the same numbers from the same
generator (numba's ``np.random.Generator`` support shares the generator's state and algorithms).

The arrays' layout is :mod:`envs.placement.layout`; the episodes' drawing and encoding is
:mod:`envs.placement.episodes`; the container of the rows is :class:`envs.placement.rows.JobBatch`.
numba's on-disk cache is keyed on the four compiled modules together (:mod:`envs.sim.jitcache`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.placement.fragments import fgd_refresh, fgd_see, fgd_value
from envs.placement.layout import (
    F_NOW,
    F_PHI,
    GPU_MILLI,
    J_COL,
    J_CPU,
    J_HEAP,
    J_MEM,
    J_MILLI,
    J_NODE,
    J_NUM,
    J_TYPESET,
    JF_CREATE,
    JF_DELETE,
    JF_HEAP,
    K_COUNT,
    N32_COUNT,
    N32_FULL,
    N32_MAXF,
    N64_CPU,
    N64_CPU_CAP,
    N64_FGD_SEEN,
    N64_FGD_SUM,
    N64_GPUS,
    N64_MEM,
    N64_MEM_CAP,
    N64_OBS_SEEN,
    N64_TOTAL,
    N64_TYPE,
    N64_VERSION,
    N_NODE_BASE,
    N_TERMS,
    R_HAS_SHAPING,
    R_KPI,
    R_REWARD,
    R_SHAPING,
    R_TERMS,
    R_TRUNCATED,
    S_ACTIVE,
    S_ANY,
    S_ENDED,
    S_FAILURES,
    S_FGD,
    S_FREE,
    S_HEAP,
    S_HIST,
    S_IDLE,
    S_INVALID,
    S_ITEMS,
    S_JOB,
    S_LIVE,
    S_N,
    S_PLACED,
    S_TOTAL,
    S_USED,
    W_COMPENSATED,
    W_SHAPING,
    W_TERMS,
)
from envs.sim import jitcache  # noqa: F401  (keys the compiled cache on this package's layout, step and episodes)


# ------------------------------------------------------------------ compiled pieces
@njit(cache=True, _nrt=False)
def _refresh_node(e, n, free, n32, n64, si):
    """ClusterState._refresh: the node's GPU aggregates and the cluster sums after a change."""
    full = 0
    total = 0
    top = -1
    present = False
    for g in range(free.shape[2]):
        f = free[e, n, g]
        if f >= 0:
            present = True
            if f == GPU_MILLI:
                full += 1
            total += f
            if f > top:
                top = f
    if present:
        si[e, S_IDLE] += full - n32[e, N32_FULL, n]
        si[e, S_FREE] += total - n64[e, N64_TOTAL, n]
        n32[e, N32_FULL, n] = full
        n32[e, N32_MAXF, n] = top
        n64[e, N64_TOTAL, n] = total
    n64[e, N64_VERSION, n] += 1


@njit(cache=True, _nrt=False)
def _allocate(e, n, j, free, n32, n64, jint, agpus, si):
    """ClusterState.allocate(n, demand of job j) with the default GPUs; records them for release."""
    num = jint[e, j, J_NUM]
    milli = jint[e, j, J_MILLI]
    if num > 0:
        if milli < GPU_MILLI:  # a share: the GPU with the least free that fits, lowest index on ties
            best = -1
            best_free = GPU_MILLI + 1
            for g in range(free.shape[2]):
                f = free[e, n, g]
                if f >= milli and f < best_free:
                    best = g
                    best_free = f
            free[e, n, best] -= milli
            agpus[e, j, 0] = best
        else:  # whole GPUs: the lowest-index idle ones
            taken = 0
            for g in range(free.shape[2]):
                if taken == num:
                    break
                if free[e, n, g] == GPU_MILLI:
                    free[e, n, g] = 0
                    agpus[e, j, taken] = g
                    taken += 1
    n64[e, N64_CPU, n] -= jint[e, j, J_CPU]
    n64[e, N64_MEM, n] -= jint[e, j, J_MEM]
    if n32[e, N32_COUNT, n] == 0:
        si[e, S_USED] += 1
    n32[e, N32_COUNT, n] += 1
    si[e, S_LIVE] += 1
    jint[e, j, J_NODE] = n
    _refresh_node(e, n, free, n32, n64, si)


@njit(cache=True, _nrt=False)
def _release(e, j, free, n32, n64, jint, agpus, si):
    """ClusterState.release of what _allocate took for job j."""
    n = jint[e, j, J_NODE]
    num = jint[e, j, J_NUM]
    if num > 0:
        milli = jint[e, j, J_MILLI]
        if milli < GPU_MILLI:
            free[e, n, agpus[e, j, 0]] += milli
        else:
            for q in range(num):
                free[e, n, agpus[e, j, q]] += milli
    n64[e, N64_CPU, n] += jint[e, j, J_CPU]
    n64[e, N64_MEM, n] += jint[e, j, J_MEM]
    n32[e, N32_COUNT, n] -= 1
    si[e, S_LIVE] -= 1
    if n32[e, N32_COUNT, n] == 0:
        si[e, S_USED] -= 1
    _refresh_node(e, n, free, n32, n64, si)


@njit(cache=True, _nrt=False)
def _heap_less(jf, jint, e, a, b):
    ka = jf[e, a, JF_HEAP]
    kb = jf[e, b, JF_HEAP]
    return ka < kb or (ka == kb and jint[e, a, J_HEAP] < jint[e, b, J_HEAP])


@njit(cache=True, _nrt=False)
def _heap_push(e, j, jf, jint, si):
    """Push job j keyed (deletion time, j) on the row's heap (slots jf[:, JF_HEAP], jint[:, J_HEAP])."""
    key = jf[e, j, JF_DELETE]
    i = si[e, S_HEAP]
    si[e, S_HEAP] = i + 1
    while i > 0:
        p = (i - 1) >> 1
        kp = jf[e, p, JF_HEAP]
        if kp < key or (kp == key and jint[e, p, J_HEAP] < j):
            break
        jf[e, i, JF_HEAP] = kp
        jint[e, i, J_HEAP] = jint[e, p, J_HEAP]
        i = p
    jf[e, i, JF_HEAP] = key
    jint[e, i, J_HEAP] = j


@njit(cache=True, _nrt=False)
def _heap_pop(e, jf, jint, si):
    """Pop the job with the earliest deletion time."""
    top = jint[e, 0, J_HEAP]
    n = si[e, S_HEAP] - 1
    si[e, S_HEAP] = n
    if n > 0:
        key = jf[e, n, JF_HEAP]
        job = jint[e, n, J_HEAP]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            r = c + 1
            if r < n and _heap_less(jf, jint, e, r, c):
                c = r
            kc = jf[e, c, JF_HEAP]
            if kc < key or (kc == key and jint[e, c, J_HEAP] < job):
                jf[e, i, JF_HEAP] = kc
                jint[e, i, J_HEAP] = jint[e, c, J_HEAP]
                i = c
            else:
                break
        jf[e, i, JF_HEAP] = key
        jint[e, i, J_HEAP] = job
    return top


@njit(cache=True, _nrt=False)
def _set_mask(e, j, n32, n64, jint, tsok, mask, si):
    """ClusterState.feasible(demand of job j) into mask[e]; whether any node fits."""
    num = jint[e, j, J_NUM]
    milli = jint[e, j, J_MILLI]
    cpu = jint[e, j, J_CPU]
    mem = jint[e, j, J_MEM]
    ts = jint[e, j, J_TYPESET]
    typed = num > 0 and ts != 0
    share = milli < GPU_MILLI
    some = False
    for n in range(mask.shape[1]):
        ok = n64[e, N64_CPU, n] >= cpu and n64[e, N64_MEM, n] >= mem
        if ok and num > 0:
            if typed and not tsok[e, ts, n64[e, N64_TYPE, n]]:
                ok = False
            elif share:
                ok = n32[e, N32_MAXF, n] >= milli
            else:
                ok = n32[e, N32_FULL, n] >= num
        mask[e, n] = ok
        some = some or ok
    si[e, S_ANY] = 1 if some else 0


@njit(cache=True, _nrt=False)
def _next_job(e, i, free, n32, n64, jint, jf, agpus, tsok, kint, fge, fsm, mask, si, sf):
    """Make job i wait (none past the end), releasing first the jobs whose deletion time has come."""
    si[e, S_JOB] = i
    if i >= si[e, S_N]:
        mask[e, :] = True
        si[e, S_ANY] = 0
        return
    now = jf[e, i, JF_CREATE]
    while si[e, S_HEAP] > 0 and jf[e, 0, JF_HEAP] <= now:
        _release(e, _heap_pop(e, jf, jint, si), free, n32, n64, jint, agpus, si)
    sf[e, F_NOW] = now
    si[e, S_ITEMS] += 1
    fgd_see(e, jint[e, i, J_COL], n64, tsok, kint, fge, fsm, si)
    _set_mask(e, i, n32, n64, jint, tsok, mask, si)


@njit(cache=True, _nrt=False)
def _fill_obs(e, n32, n64, inv, jint, jitem, obs, si, n_types):
    """The node rows whose version moved since the last observation (the float64 operations of
    ``JobPlacementEnv``'s row update, stored as float32), and the waiting job's features."""
    n_nodes = n32.shape[2]
    node_dim = N_NODE_BASE + n_types
    for n in range(n_nodes):
        version = n64[e, N64_VERSION, n]
        if version == n64[e, N64_OBS_SEEN, n]:
            continue
        n64[e, N64_OBS_SEEN, n] = version
        b = n * node_dim
        obs[e, b] = n32[e, N32_FULL, n] * inv[e, 0, n]
        obs[e, b + 1] = n64[e, N64_TOTAL, n] * inv[e, 1, n]
        top = n32[e, N32_MAXF, n]
        if top < 0:
            top = 0
        obs[e, b + 2] = top * (1.0 / GPU_MILLI)
        obs[e, b + 4 + n_types] = 1.0 if n32[e, N32_COUNT, n] > 0 else 0.0
        obs[e, b + 5 + n_types] = n64[e, N64_CPU, n] * inv[e, 2, n]
        obs[e, b + 6 + n_types] = n64[e, N64_MEM, n] * inv[e, 3, n]
    start = n_nodes * node_dim
    j = si[e, S_JOB]
    if j < si[e, S_N]:
        for q in range(jitem.shape[2]):
            obs[e, start + q] = jitem[e, j, q]
    else:
        for q in range(jitem.shape[2]):
            obs[e, start + q] = 0.0


@njit(cache=True, _nrt=False)
def _python_sum(x0, x1, x2, x3, compensated):
    """sum([x0, x1, x2, x3]) as CPython computes it (plain left to right before 3.12, Neumaier after)."""
    if not compensated:
        return ((x0 + x1) + x2) + x3
    f = x0
    c = 0.0
    for x in (x1, x2, x3):
        t = f + x
        if abs(f) >= abs(x):
            c += (f - t) + x
        else:
            c += (x - t) + f
        f = t
    if c != 0.0 and np.isfinite(c):
        f += c
    return f


@njit(cache=True, _nrt=False)
def _kpi_fill(e, free, n64, tsok, kint, fthr, fge, fsm, work, si, sf, res, c):
    """The KPIs of row e's state into res[R_KPI:, c]; returns (fragmented GPUs, GPUs in use)."""
    idle = si[e, S_IDLE]
    frag_gpus = (si[e, S_FREE] - GPU_MILLI * idle) / GPU_MILLI
    in_use = si[e, S_TOTAL] - idle
    res[R_KPI + 0, c] = sf[e, F_NOW]
    res[R_KPI + 1, c] = float(si[e, S_ITEMS])
    res[R_KPI + 2, c] = float(si[e, S_PLACED])
    res[R_KPI + 3, c] = float(si[e, S_FAILURES])
    res[R_KPI + 4, c] = float(si[e, S_INVALID])
    res[R_KPI + 5, c] = frag_gpus
    res[R_KPI + 6, c] = fgd_value(e, free, n64, tsok, kint, fthr, fge, fsm, work, si)
    res[R_KPI + 7, c] = float(in_use)
    res[R_KPI + 8, c] = float(si[e, S_USED])
    res[R_KPI + 9, c] = float(si[e, S_LIVE])
    return frag_gpus, in_use


@njit(cache=True, _nrt=False)
def _potential(e, w, res, c, si):
    """PlacementEnv._potential of row e from its KPIs in res[R_KPI:, c]."""
    level = w[W_TERMS + 2] * (res[R_KPI + 6, c] / GPU_MILLI) + w[W_TERMS + 3] * res[R_KPI + 7, c]
    return w[W_SHAPING] * level / max(si[e, S_TOTAL], 1)


@njit(cache=True, _nrt=False)
def _record(e, hist, si, sf, frag_gpus, in_use):
    h = si[e, S_HIST]
    if h < hist.shape[1]:
        hist[e, h, 0] = sf[e, F_NOW]
        hist[e, h, 1] = frag_gpus
        hist[e, h, 2] = in_use
        si[e, S_HIST] = h + 1


@njit(cache=True, _nrt=False)
def kpi_row(free, n64, tsok, kint, fthr, fge, fsm, work, si, sf, e, res):
    """The KPIs of row e's state now, into res[R_KPI:, 0]."""
    _kpi_fill(e, free, n64, tsok, kint, fthr, fge, fsm, work, si, sf, res, 0)


@njit(cache=True, _nrt=False)
def observe_row(n32, n64, inv, jint, jitem, obs, si, e):
    """Bring row e's observation up to date (the node rows whose version differs from what it shows)."""
    _fill_obs(
        e, n32, n64, inv, jint, jitem, obs, si, (obs.shape[1] - jitem.shape[2]) // n32.shape[2] - N_NODE_BASE
    )


@njit(cache=True, _nrt=False)
def start_row(free, n32, n64, inv, obs, mask, jint, jf, jitem, tsok, agpus, kint, fthr, fge, fsm, work, si,
              sf, hist, w, e, res):  # fmt: skip
    """Begin row e's episode, whose jobs, node capacities, types and normalisers are loaded: an empty
    cluster, the first job waiting; the first observation, its KPIs (res[R_KPI:, 0]) and shaping
    potential (res[R_SHAPING, 0])."""
    n_types = tsok.shape[2] - 1
    for n in range(free.shape[1]):
        gpus = n64[e, N64_GPUS, n]
        for g in range(free.shape[2]):
            free[e, n, g] = GPU_MILLI if g < gpus else -1
        n32[e, N32_FULL, n] = gpus
        n32[e, N32_MAXF, n] = GPU_MILLI if gpus > 0 else -1
        n32[e, N32_COUNT, n] = 0
        n64[e, N64_CPU, n] = n64[e, N64_CPU_CAP, n]
        n64[e, N64_MEM, n] = n64[e, N64_MEM_CAP, n]
        n64[e, N64_TOTAL, n] = gpus * GPU_MILLI
        n64[e, N64_VERSION, n] = 0
        n64[e, N64_OBS_SEEN, n] = -1
        n64[e, N64_FGD_SEEN, n] = -1
        n64[e, N64_FGD_SUM, n] = 0
    total = 0
    for n in range(free.shape[1]):
        total += n64[e, N64_GPUS, n]
    kint[e, K_COUNT, :] = 0
    for key in (S_JOB, S_PLACED, S_FAILURES, S_INVALID, S_ITEMS, S_LIVE, S_USED, S_HEAP, S_ANY, S_HIST, S_ENDED,
                S_ACTIVE, S_FGD):  # fmt: skip
        si[e, key] = 0
    si[e, S_IDLE] = total
    si[e, S_FREE] = total * GPU_MILLI
    si[e, S_TOTAL] = total
    # the observation: zeros, each node's GPU-type one-hot, then the state's rows
    node_dim = N_NODE_BASE + n_types
    obs[e, :] = 0.0
    for n in range(free.shape[1]):
        t = n64[e, N64_TYPE, n]
        if t < n_types:
            obs[e, n * node_dim + 3 + t] = 1.0
    sf[e, F_NOW] = jf[e, 0, JF_CREATE] if si[e, S_N] > 0 else 0.0
    fgd_refresh(e, free, n64, tsok, kint, fthr, fge, fsm, work, si)  # every node, nothing offered yet
    _next_job(e, 0, free, n32, n64, jint, jf, agpus, tsok, kint, fge, fsm, mask, si, sf)
    frag_gpus, in_use = _kpi_fill(e, free, n64, tsok, kint, fthr, fge, fsm, work, si, sf, res, 0)
    _record(e, hist, si, sf, frag_gpus, in_use)
    sf[e, F_PHI] = _potential(e, w, res, 0, si) if w[W_SHAPING] > 0.0 else 0.0
    res[R_SHAPING, 0] = sf[e, F_PHI]
    _fill_obs(e, n32, n64, inv, jint, jitem, obs, si, n_types)


@njit(cache=True, _nrt=False)
def step_rows(free, n32, n64, inv, obs, mask, jint, jf, jitem, tsok, agpus, kint, fthr, fge, fsm, work, si,
              sf, hist, w, lo, hi, actions, res):  # fmt: skip
    """One step of rows lo .. hi - 1: row e places its waiting job on node actions[e - lo].

    Writes into res[:, e - lo] the reward, truncated (1.0) or not, the shaping term and whether
    the step has one (not the step of an episode that had no job at all), the cost terms
    (REWARD_TERMS order) and the KPIs (KPI_KEYS order). A row whose episode ended is left alone
    (res[R_TRUNCATED] = -1). Returns -1, or the first row whose action is not a node, and then
    steps nothing.
    """
    n_types = tsok.shape[2] - 1
    for e in range(lo, hi):
        if actions[e - lo] < 0 or actions[e - lo] >= mask.shape[1]:
            return e
    for e in range(lo, hi):
        c = e - lo
        for q in range(N_TERMS):
            res[R_TERMS + q, c] = 0.0
        if si[e, S_ENDED] != 0:
            res[R_REWARD, c] = 0.0
            res[R_TRUNCATED, c] = -1.0
            res[R_SHAPING, c] = 0.0
            res[R_HAS_SHAPING, c] = 0.0
            continue
        j = si[e, S_JOB]
        if j >= si[e, S_N]:  # no job at all in this episode: the step ends it, costs nothing
            si[e, S_ENDED] = 1
            _kpi_fill(e, free, n64, tsok, kint, fthr, fge, fsm, work, si, sf, res, c)
            res[R_REWARD, c] = 0.0
            res[R_TRUNCATED, c] = 1.0
            res[R_SHAPING, c] = 0.0
            res[R_HAS_SHAPING, c] = 0.0
            _fill_obs(e, n32, n64, inv, jint, jitem, obs, si, n_types)
            continue
        node = actions[c]
        if mask[e, node]:
            _allocate(e, node, j, free, n32, n64, jint, agpus, si)
            if jf[e, j, JF_DELETE] < np.inf:
                _heap_push(e, j, jf, jint, si)
            si[e, S_PLACED] += 1
        else:
            si[e, S_FAILURES] += 1
            res[R_TERMS + 0, c] = 1.0
            if si[e, S_ANY] != 0:
                si[e, S_INVALID] += 1
                res[R_TERMS + 1, c] = 1.0
        # the level costs right after the placement, before the clock moves on
        idle = si[e, S_IDLE]
        total_gpus = max(si[e, S_TOTAL], 1)
        res[R_TERMS + 2, c] = ((si[e, S_FREE] - GPU_MILLI * idle) / GPU_MILLI) / total_gpus
        res[R_TERMS + 3, c] = (si[e, S_TOTAL] - idle) / total_gpus
        _next_job(e, j + 1, free, n32, n64, jint, jf, agpus, tsok, kint, fge, fsm, mask, si, sf)
        frag_gpus, in_use = _kpi_fill(e, free, n64, tsok, kint, fthr, fge, fsm, work, si, sf, res, c)
        _record(e, hist, si, sf, frag_gpus, in_use)
        truncated = si[e, S_JOB] >= si[e, S_N]
        si[e, S_ENDED] = 1 if truncated else 0
        reward = -_python_sum(
            w[W_TERMS] * res[R_TERMS + 0, c],
            w[W_TERMS + 1] * res[R_TERMS + 1, c],
            w[W_TERMS + 2] * res[R_TERMS + 2, c],
            w[W_TERMS + 3] * res[R_TERMS + 3, c],
            w[W_COMPENSATED] != 0.0,
        )
        if w[W_SHAPING] > 0.0:
            phi = 0.0 if truncated else _potential(e, w, res, c, si)
            shaped = sf[e, F_PHI] - phi
            sf[e, F_PHI] = phi
            reward += shaped
            res[R_SHAPING, c] = shaped
            res[R_HAS_SHAPING, c] = 1.0
        else:
            res[R_SHAPING, c] = 0.0
            res[R_HAS_SHAPING, c] = 0.0
        res[R_REWARD, c] = reward
        res[R_TRUNCATED, c] = 1.0 if truncated else 0.0
        _fill_obs(e, n32, n64, inv, jint, jitem, obs, si, n_types)
    return -1
