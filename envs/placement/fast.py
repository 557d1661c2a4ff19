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
The FGD fragmentation (Weng et al., "Beware of Fragmentation", USENIX ATC 2023; ``FgdTracker``,
``refresh_fragments``) is kept as one integer, the sum over nodes and offered task types of count x
F_n(type): a node that changed recomputes its part over the offered types, an offered job adds its
type's F_n over the nodes. Fragments are whole milli-GPU, so this equals the tracker's float sums
exactly. The tests replay the Python cluster model against this code bit for bit.

The synthetic trace of a reset is drawn here too (:func:`draw_synthetic_jobs`): the per-job loop of
:func:`envs.sim.jobtrace.synthetic_job_trace`, compiled, drawing the same numbers from the same
generator (numba's ``np.random.Generator`` support shares the generator's state and algorithms).

This module's compiled functions call only each other (numba's on-disk cache is keyed on this
file alone; see :mod:`envs.sim.jitcache`).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numba import njit

GPU_MILLI = 1000  # = envs.sim.cluster.GPU_MILLI (a compile-time constant here)

# ------------------------------------------------------------------ layout of the stacked arrays
# si[e, :] (int64): the row's counters and cluster sums
S_JOB = 0  # index of the waiting job (== S_N: none waits)
S_N = 1  # jobs in the episode
S_PLACED = 2
S_FAILURES = 3
S_INVALID = 4
S_ITEMS = 5  # jobs offered so far (the waiting one included)
S_IDLE = 6  # ClusterState.idle_gpus
S_FREE = 7  # ClusterState.free_gpu_milli
S_LIVE = 8  # ClusterState.live_allocations
S_USED = 9  # ClusterState.nodes_in_use()
S_HEAP = 10  # live jobs in the heap
S_TOTAL = 11  # GPUs of the cluster
S_ANY = 12  # the waiting job fits some node
S_HIST = 13  # rows of the history
S_ENDED = 14  # the episode ended
S_K = 15  # FGD task types of the episode
S_U = 16  # distinct per-GPU thresholds of those types
S_G = 17  # GPU slots per node of this episode's cluster
S_ACTIVE = 18  # task types offered so far: types 0 .. S_ACTIVE - 1 (numbered by first appearance)
S_FGD = 19  # sum over nodes and task types of offered count x fragment (milli-GPU)
N_SI = 20
# sf[e, :] (float64)
F_NOW = 0
F_PHI = 1
N_SF = 2
# n32[e, :, n] (int32, ClusterState's int32 node arrays) and n64[e, :, n] (int64)
N32_FULL, N32_MAXF, N32_COUNT = 0, 1, 2  # gpu_full_free, gpu_max_free, node_alloc_count
N64_CPU, N64_MEM, N64_TOTAL, N64_VERSION = 0, 1, 2, 3  # cpu_free_milli, mem_free_mib, gpu_free_total, version
N64_TYPE, N64_OBS_SEEN, N64_FGD_SEEN = 4, 5, 6  # GPU type (T: none), versions the observation and FGD show
N64_CPU_CAP, N64_MEM_CAP, N64_GPUS = 7, 8, 9  # node CPU, memory, GPUs
# what the node's FGD fragment was last computed from (free GPU milli, CPU, memory) and its weighted sum
N64_FGD_TOTAL, N64_FGD_CPU, N64_FGD_MEM, N64_FGD_SUM = 10, 11, 12, 13
N_N32, N_N64 = 3, 14
# jint[e, j, :] (int64): the job's demand, its FGD column, and what placing it took
J_NUM, J_MILLI, J_CPU, J_MEM, J_TYPESET, J_COL, J_NODE, J_HEAP = range(8)
N_JINT = 8
# jf[e, j, :] (float64)
JF_CREATE, JF_DELETE, JF_HEAP = 0, 1, 2
N_JF = 3
# kint[e, :, k] (int64, one row per field: the loop over types reads each field contiguously): an FGD
# task type and how many jobs of it were offered
K_NUM, K_THRESHOLD, K_CPU, K_MEM, K_TYPESET, K_COUNT = range(6)
K_MILLI_KEY = K_COUNT  # while encoding an episode: the type's gpu_milli (counts start at 0 in start_row)
N_KINT = 6
# w[:] (float64): shared parameters
W_TERMS = 0  # 4 weights, in REWARD_TERMS order
W_SHAPING = 4
W_COMPENSATED = 5  # 1.0: sum the reward terms as CPython >= 3.12's sum() does
N_W = 6
# res[:, c] (float64): what a step gives, per stepped row c
R_REWARD, R_TRUNCATED, R_SHAPING, R_HAS_SHAPING = 0, 1, 2, 3  # truncated: 1.0 (-1.0: the row had ended)
R_TERMS = 4  # the 4 cost terms, in REWARD_TERMS order
R_KPI = 8  # the KPIs, in KPI_KEYS order
N_TERMS = 4
KPI_KEYS = (
    "time_s",
    "items",
    "placed",
    "failures",
    "invalid_actions",
    "fragmented_gpus",
    "fgd_fragmentation_milli",
    "gpus_in_use",
    "nodes_in_use",
    "live_allocations",
)
N_KPI = len(KPI_KEYS)
N_RES = R_KPI + N_KPI
N_NODE_BASE = 7  # = envs.placement.params.N_NODE_BASE
N_ITEM_BASE = 5  # = envs.placement.params.N_ITEM_BASE

#: ``weighted_reward`` sums the four terms with Python's ``sum``, which compensates rounding from
#: CPython 3.12 on (Neumaier); the compiled reward sums them the same way.
COMPENSATED_SUM = sys.version_info >= (3, 12)


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
def _fgd_refresh(e, free, n64, tsok, kint, fthr, fge, fsm, work, si):
    """Recompute the fragments of the nodes whose version moved: per threshold t (ascending), the
    node's GPUs with at least t free and the free milli on the others; then the node's sum over the
    offered task types of count x fragment, and the row's total (si[e, S_FGD])."""
    n_thr = si[e, S_U]
    n_active = si[e, S_ACTIVE]
    num, threshold, need_cpu = kint[e, K_NUM], kint[e, K_THRESHOLD], kint[e, K_CPU]
    need_mem, typeset, count = kint[e, K_MEM], kint[e, K_TYPESET], kint[e, K_COUNT]
    for n in range(free.shape[1]):
        version = n64[e, N64_VERSION, n]
        if version == n64[e, N64_FGD_SEEN, n]:
            continue
        n64[e, N64_FGD_SEEN, n] = version
        # the node's free shares, sorted, and their prefix sums
        m = 0
        for g in range(free.shape[2]):
            f = free[e, n, g]
            if f < 0:
                continue
            q = m
            while q > 0 and work[0, q - 1] > f:
                work[0, q] = work[0, q - 1]
                q -= 1
            work[0, q] = f
            m += 1
        acc = 0
        for q in range(m):
            work[1, q] = acc
            acc += work[0, q]
        work[1, m] = acc
        p = 0
        for u in range(n_thr):
            thr = fthr[e, u]
            while p < m and work[0, p] < thr:
                p += 1
            fge[e, n, u] = m - p
            fsm[e, n, u] = work[1, p]
        n64[e, N64_FGD_TOTAL, n] = n64[e, N64_TOTAL, n]
        n64[e, N64_FGD_CPU, n] = n64[e, N64_CPU, n]
        n64[e, N64_FGD_MEM, n] = n64[e, N64_MEM, n]
        total = n64[e, N64_TOTAL, n]
        cpu = n64[e, N64_CPU, n]
        mem = n64[e, N64_MEM, n]
        allowed = tsok[e, :, n64[e, N64_TYPE, n]]
        at_least, stranded = fge[e, n], fsm[e, n]
        weighted = 0
        for k in range(n_active):  # sum of count x F_n(k), without branches (about twice as fast)
            u = threshold[k]
            fits = (num[k] > 0) & (cpu >= need_cpu[k]) & (mem >= need_mem[k]) & allowed[typeset[k]]
            fits &= at_least[u] >= num[k]
            weighted += count[k] * (stranded[u] if fits else total)
        si[e, S_FGD] += weighted - n64[e, N64_FGD_SUM, n]
        n64[e, N64_FGD_SUM, n] = weighted


@njit(cache=True, _nrt=False)
def _fgd_see(e, k, n64, tsok, kint, fge, fsm, si):
    """One more offered job of task type k (FgdTracker.see): every node's sum gains its F_n(k), from
    what the node's fragments were last computed from (the N64_FGD_* rows, fge, fsm)."""
    if kint[e, K_COUNT, k] == 0:  # types are numbered by first appearance: k is the next one
        si[e, S_ACTIVE] += 1
    kint[e, K_COUNT, k] += 1
    num = kint[e, K_NUM, k]
    cpu = kint[e, K_CPU, k]
    mem = kint[e, K_MEM, k]
    allowed = tsok[e, kint[e, K_TYPESET, k]]
    u = kint[e, K_THRESHOLD, k]
    total, free_cpu, free_mem = n64[e, N64_FGD_TOTAL], n64[e, N64_FGD_CPU], n64[e, N64_FGD_MEM]
    node_type, sums = n64[e, N64_TYPE], n64[e, N64_FGD_SUM]
    added = 0
    for n in range(n64.shape[2]):
        fits = (num > 0) & (free_cpu[n] >= cpu) & (free_mem[n] >= mem) & allowed[node_type[n]]
        fits &= fge[e, n, u] >= num
        f = fsm[e, n, u] if fits else total[n]
        sums[n] += f
        added += f
    si[e, S_FGD] += added


@njit(cache=True, _nrt=False)
def _fgd_value(e, free, n64, tsok, kint, fthr, fge, fsm, work, si):
    """FgdTracker.value(): the FGD fragmentation in milli-GPU over the task types offered so far.

    The sum over nodes and types of count x F_n(type) is kept current as types are offered and
    nodes change; fragments are whole milli-GPU, so the integer sum is the float sum of
    ``col_sum @ counts`` exactly, whatever the order."""
    items = si[e, S_ITEMS]
    if items == 0:
        return 0.0
    _fgd_refresh(e, free, n64, tsok, kint, fthr, fge, fsm, work, si)
    return float(si[e, S_FGD]) / float(items)


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
    _fgd_see(e, jint[e, i, J_COL], n64, tsok, kint, fge, fsm, si)
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
    res[R_KPI + 6, c] = _fgd_value(e, free, n64, tsok, kint, fthr, fge, fsm, work, si)
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
    _fgd_refresh(e, free, n64, tsok, kint, fthr, fge, fsm, work, si)  # every node, nothing offered yet
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


# ------------------------------------------------------------------ episodes
SHARE, WHOLE, CPU_ONLY = 0, 1, 2  # kinds of synthetic pod shapes


@njit(cache=True)
def draw_synthetic_jobs(rng, kinds, kind_code, kind_gpus, req_count, req, lo10, hi10, spec_share, node_trace_type,
                        node_gpus, node_cpu, node_mem, trace_to_env, num, milli, cpu, mem, typeset):  # fmt: skip
    """The per-job loop of ``synthetic_job_trace``, drawing the same numbers from ``rng`` in the same
    order: job i of pod kind ``kinds[i]`` gets its (cpu, memory) request, its share (``lo10``..``hi10``
    x 10 milli) and, with probability ``spec_share`` for GPU jobs, one or two GPU types among those
    of the nodes that can host it (``Generator.choice(hosts, size, replace=False)``: Floyd's
    sampling and the shuffle that follows, with the same bounded draws). ``typeset[i]`` is the
    bit set of the allowed types in the environment's numbering (``trace_to_env``)."""
    n_trace_types = len(trace_to_env)
    present = np.zeros(n_trace_types, np.bool_)
    hosts = np.empty(n_trace_types, np.int64)
    chosen = np.empty(max(n_trace_types, 1), np.int64)
    for i in range(len(kinds)):
        k = kinds[i]
        r = rng.integers(0, req_count[k])
        c = req[k, r, 0]
        m = req[k, r, 1]
        n_gpu = kind_gpus[k]
        if kind_code[k] == SHARE:
            g = rng.integers(lo10, hi10 + 1) * 10
        elif n_gpu > 0:
            g = GPU_MILLI
        else:
            g = 0
        bits = 0
        if n_gpu > 0 and rng.random() < spec_share:
            present[:] = False
            for n in range(len(node_trace_type)):
                t = node_trace_type[n]
                if t >= 0 and node_gpus[n] >= n_gpu and node_cpu[n] >= c and node_mem[n] >= m:
                    present[t] = True
            h = 0
            for t in range(n_trace_types):
                if present[t]:
                    hosts[h] = t
                    h += 1
            if h > 0:
                size = min(h, rng.integers(1, 3))
                for jj in range(h - size, h):  # Floyd's algorithm, as numpy's choice(replace=False)
                    val = rng.integers(0, jj + 1)
                    pos = jj - (h - size)
                    seen = False
                    for q in range(pos):
                        if chosen[q] == val:
                            seen = True
                    chosen[pos] = jj if seen else val
                for q in range(size - 1, 0, -1):  # numpy shuffles the sample afterwards
                    x = rng.integers(0, q + 1)
                    tmp = chosen[q]
                    chosen[q] = chosen[x]
                    chosen[x] = tmp
                for q in range(size):
                    bits |= 1 << trace_to_env[hosts[chosen[q]]]
        num[i] = n_gpu
        milli[i] = g
        cpu[i] = c
        mem[i] = m
        typeset[i] = bits


@njit(cache=True)
def _slot(table, mask, h, key_of, rows, key):
    """Open addressing: the slot of ``key`` (a row of ``rows`` matching ``key_of``) or of an empty one."""
    i = h & mask
    while table[i] >= 0:
        r = table[i]
        same = True
        for q in range(len(key)):
            if rows[r, key_of[q]] != key[q]:
                same = False
                break
        if same:
            return i
        i = (i + 1) & mask
    return i


@njit(cache=True)
def encode_jobs(num, milli, cpu, mem, typeset, tsok, max_gpus, max_cpu, max_mem, jint, jitem, kint, fthr):
    """The episode's job table: ``jint[j]`` = (num_gpu, gpu_milli, cpu_milli, memory_mib, type set,
    FGD column), ``jitem[j]`` the item features (``ItemEncoder.encode``), and the FGD task types
    (``kint[k]`` = num_gpu, threshold index, cpu, memory, type set; ``fthr`` the thresholds) in
    order of first appearance (``Demand.task_type``: a CPU-only job's type ignores its GPU fields).
    Returns (task types, thresholds)."""
    n_types = tsok.shape[1] - 1
    size = 1
    while size < 2 * len(num) + 2:
        size *= 2
    types_at = np.full(size, -1, np.int64)  # hash slot -> task type (a row of kint)
    thr_at = np.full(size, -1, np.int64)  # hash slot -> threshold index
    type_key = np.array([K_NUM, K_MILLI_KEY, K_CPU, K_MEM, K_TYPESET])
    thr_key = np.array([0])
    key = np.empty(5, np.int64)
    one = np.empty(1, np.int64)
    k_count = 0
    u_count = 0
    for j in range(len(num)):
        g = num[j]
        gm = milli[j] if g > 0 else 0
        ts = typeset[j] if g > 0 else 0
        key[0], key[1], key[2], key[3], key[4] = g, gm, cpu[j], mem[j], ts
        h = (((g * 1000003 + gm) * 1000003 + cpu[j]) * 1000003 + mem[j]) * 1000003 + ts
        slot = _slot(types_at, size - 1, h ^ (h >> 29), type_key, kint, key)
        col = types_at[slot]
        if col < 0:
            col = k_count
            types_at[slot] = col
            k_count += 1
            u = -1
            if g > 0:
                one[0] = gm
                tslot = _slot(thr_at, size - 1, gm * 1000003, thr_key, fthr.reshape((-1, 1)), one)
                u = thr_at[tslot]
                if u < 0:
                    u = u_count
                    thr_at[tslot] = u
                    fthr[u] = gm
                    u_count += 1
            kint[col, K_NUM] = g
            kint[col, K_MILLI_KEY] = gm
            kint[col, K_THRESHOLD] = u
            kint[col, K_CPU] = cpu[j]
            kint[col, K_MEM] = mem[j]
            kint[col, K_TYPESET] = ts
        jint[j, J_NUM] = g
        jint[j, J_MILLI] = milli[j]
        jint[j, J_CPU] = cpu[j]
        jint[j, J_MEM] = mem[j]
        jint[j, J_TYPESET] = typeset[j]
        jint[j, J_COL] = col
        vec = jitem[j]
        vec[:] = 0.0
        vec[0] = 1.0
        if max_gpus:
            vec[1] = min(g / max_gpus, 1.0)
        vec[2] = milli[j] / GPU_MILLI if g > 0 else 0.0
        if typeset[j] != 0:
            for t in range(n_types):
                if tsok[typeset[j], t]:
                    vec[3 + t] = 1.0
        vec[3 + n_types] = min(cpu[j] / max(max_cpu, 1), 1.0)
        vec[4 + n_types] = min(mem[j] / max(max_mem, 1), 1.0)
    return k_count, u_count


class JobEpisode:
    """What one episode of the jobs source places: its cluster's nodes and its jobs, encoded.

    Node arrays (``node_type`` the environment's GPU type index, -1 none; ``node_gpus``,
    ``node_cpu``, ``node_mem``; ``node_names``) and job tables (see :func:`encode_jobs`): ``jint``
    int64[n, 6], ``jtime`` float64[n, 2] (creation, deletion), ``jitem`` float32[n, item_dim],
    ``tsok`` bool[S, T + 1] (type set s allows GPU type t; row 0, no constraint, allows every type;
    column T, a node without GPUs, none), ``typesets`` (the type indices of each set), ``kint`` and
    ``fthr`` (the FGD task types; thresholds ascending). Treated as read-only: a file trace's
    episode is built once.
    """

    __slots__ = ("fthr", "jint", "jitem", "jtime", "kint", "node_cpu", "node_gpus", "node_mem", "node_names",
                 "node_type", "tsok", "typesets")  # fmt: skip

    def __init__(self, node_type, node_gpus, node_cpu, node_mem, node_names, num, milli, cpu, mem, typeset,
                 creation, deletion, tsok, typesets, max_gpus, max_cpu, max_mem):  # fmt: skip
        self.node_type = np.asarray(node_type, np.int64)
        self.node_gpus = np.asarray(node_gpus, np.int64)
        self.node_cpu = np.asarray(node_cpu, np.int64)
        self.node_mem = np.asarray(node_mem, np.int64)
        self.node_names = tuple(node_names)
        self.tsok = tsok
        self.typesets = typesets
        n = len(num)
        n_types = tsok.shape[1] - 1
        self.jint = np.zeros((n, 6), np.int64)
        self.jitem = np.zeros((n, N_ITEM_BASE + n_types), np.float32)
        kint = np.zeros((n, N_KINT), np.int64)
        fthr = np.zeros(n, np.int64)
        k, u = encode_jobs(
            np.asarray(num, np.int64), np.asarray(milli, np.int64), np.asarray(cpu, np.int64),
            np.asarray(mem, np.int64), np.asarray(typeset, np.int64), tsok, int(max_gpus), int(max_cpu),
            int(max_mem), self.jint, self.jitem, kint, fthr,
        )  # fmt: skip
        # thresholds ascending (the fragment sweep walks a node's sorted free shares once)
        order = np.argsort(fthr[:u], kind="stable")
        rank = np.empty(u, np.int64)
        rank[order] = np.arange(u)
        self.kint, self.fthr = kint[:k].copy(), fthr[:u][order]
        gpu = self.kint[:, K_NUM] > 0
        self.kint[gpu, K_THRESHOLD] = rank[self.kint[gpu, K_THRESHOLD]]
        self.kint[~gpu, K_THRESHOLD] = 0  # unused for CPU-only types, but read (as an index)
        self.kint[:, K_COUNT] = 0
        self.jtime = np.empty((n, 2))
        self.jtime[:, 0] = creation
        self.jtime[:, 1] = deletion

    def __getstate__(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class JobBatch:
    """The state of E jobs-source episodes ("rows") in stacked arrays, stepped by :func:`step_rows`.

    Built for one environment configuration: ``n_nodes`` nodes of at most ``gpu_slots`` GPUs, at
    most ``n_jobs`` jobs per episode, ``n_types`` GPU types, ``n_sets`` type sets, item features of
    ``item_dim``; ``weights`` the four reward weights (``REWARD_TERMS`` order) and ``shaping``. The
    observation rows (``obs``, float32[E, D]) and masks (``mask``, bool[E, n_nodes]) are written in
    place by every call. :meth:`load` starts an episode in a row; :meth:`step` steps every row;
    :meth:`cluster_view` is a :class:`~envs.sim.cluster.ClusterState` over a row's arrays.
    """

    def __init__(self, rows: int, n_nodes: int, gpu_slots: int, n_jobs: int, n_types: int, n_sets: int,
                 item_dim: int, weights: Any, shaping: float) -> None:  # fmt: skip
        e, n, g, j = rows, n_nodes, gpu_slots, n_jobs
        self.rows, self.n_nodes, self.n_jobs = e, n, j
        self.free = np.full((e, n, g), -1, np.int32)
        self.n32 = np.zeros((e, N_N32, n), np.int32)
        self.n64 = np.zeros((e, N_N64, n), np.int64)
        self.inv = np.zeros((e, 4, n))
        self.obs = np.zeros((e, n * (N_NODE_BASE + n_types) + item_dim), np.float32)
        self.mask = np.ones((e, n), np.bool_)
        self.jint = np.zeros((e, j, N_JINT), np.int64)
        self.jf = np.zeros((e, j, N_JF))
        self.jitem = np.zeros((e, j, item_dim), np.float32)
        self.tsok = np.zeros((e, n_sets, n_types + 1), np.bool_)
        self.agpus = np.zeros((e, j, g), np.int64)
        self.si = np.zeros((e, N_SI), np.int64)
        self.si[:, S_ENDED] = 1
        self.sf = np.zeros((e, N_SF))
        self.hist = np.zeros((e, j + 1, 3))
        self.w = np.zeros(N_W)
        self.w[W_TERMS : W_TERMS + N_TERMS] = weights
        self.w[W_SHAPING] = shaping
        self.w[W_COMPENSATED] = 1.0 if COMPENSATED_SUM else 0.0
        self.work = np.zeros((2, g + 1), np.int64)  # a node's sorted free shares and their prefix sums
        self.kint = None
        self._alloc_fgd(8, 8)

    def _alloc_fgd(self, k_cap: int, u_cap: int) -> None:
        """(Re)allocate the FGD arrays for ``k_cap`` task types and ``u_cap`` thresholds, keeping rows."""
        e, n = self.rows, self.n_nodes
        kint = np.zeros((e, N_KINT, k_cap), np.int64)
        fthr = np.zeros((e, u_cap), np.int64)
        fge = np.zeros((e, n, u_cap), np.int64)
        fsm = np.zeros((e, n, u_cap), np.int64)
        if getattr(self, "kint", None) is not None:
            k0, u0 = self.kint.shape[2], self.fthr.shape[1]
            kint[:, :, :k0], fthr[:, :u0] = self.kint, self.fthr
            fge[:, :, :u0], fsm[:, :, :u0] = self.fge, self.fsm
        self.kint, self.fthr, self.fge, self.fsm = kint, fthr, fge, fsm
        self._args = None
        self.generation = (
            getattr(self, "generation", 0) + 1
        )  # callers holding the arrays rebuild their tuples

    @property
    def args(self) -> tuple[np.ndarray, ...]:
        """The arrays :func:`step_rows` and :func:`start_row` take, in their order."""
        if self._args is None:
            self._args = (self.free, self.n32, self.n64, self.inv, self.obs, self.mask, self.jint, self.jf,
                          self.jitem, self.tsok, self.agpus, self.kint, self.fthr, self.fge, self.fsm, self.work,
                          self.si, self.sf, self.hist, self.w)  # fmt: skip
        return self._args

    def load(self, e: int, ep: JobEpisode, res: np.ndarray) -> None:
        """Start episode ``ep`` in row ``e``: its KPIs go to ``res[R_KPI:, 0]``, its shaping potential
        to ``res[R_SHAPING, 0]``, its first observation and mask to ``obs[e]`` and ``mask[e]``."""
        n = len(ep.jint)
        k, u = len(ep.kint), len(ep.fthr)
        if k > self.kint.shape[2] or u > self.fthr.shape[1]:
            self._alloc_fgd(max(k, 2 * self.kint.shape[2]), max(u, 2 * self.fthr.shape[1]))
        n64 = self.n64[e]
        n_types = self.tsok.shape[2] - 1
        n64[N64_TYPE] = np.where(ep.node_type >= 0, ep.node_type, n_types)
        n64[N64_CPU_CAP] = ep.node_cpu
        n64[N64_MEM_CAP] = ep.node_mem
        n64[N64_GPUS] = ep.node_gpus
        # the observation's normalisers, as PlacementEnv._prepare_cluster computes them
        gpus = ep.node_gpus.astype(np.float64)
        has = gpus > 0
        inv_gpus = np.where(has, 1.0 / np.where(has, gpus, 1.0), 0.0)
        inv = self.inv[e]
        inv[0] = inv_gpus
        inv[1] = inv_gpus / GPU_MILLI
        inv[2] = np.where(ep.node_cpu > 0, 1.0 / np.maximum(ep.node_cpu, 1), 0.0)
        inv[3] = np.where(ep.node_mem > 0, 1.0 / np.maximum(ep.node_mem, 1), 0.0)
        self.jint[e, :n, :6] = ep.jint
        self.jf[e, :n, :2] = ep.jtime
        self.jitem[e, :n] = ep.jitem
        self.tsok[e, : len(ep.tsok)] = ep.tsok
        self.kint[e, :, :k] = ep.kint.T
        self.fthr[e, :u] = ep.fthr
        si = self.si[e]
        si[S_N], si[S_K], si[S_U] = n, k, u
        si[S_G] = int(ep.node_gpus.max()) if len(ep.node_gpus) else 0
        start_row(*self.args, e, res)

    def step(self, lo: int, hi: int, actions: np.ndarray, res: np.ndarray) -> int:
        """One step of rows ``lo`` .. ``hi - 1`` (see :func:`step_rows`): -1, or the first row whose
        action is out of range (nothing was stepped then)."""
        return step_rows(*self.args, lo, hi, actions, res)

    def kpi(self, e: int, res: np.ndarray) -> None:
        """Row ``e``'s KPIs now into ``res[R_KPI:, 0]``."""
        kpi_row(self.free, self.n64, self.tsok, self.kint, self.fthr, self.fge, self.fsm, self.work, self.si, self.sf,
                e, res)  # fmt: skip

    def cluster_view(self, e: int, type_names: tuple[str, ...], ep: JobEpisode) -> Any:
        """A ``ClusterState`` of row ``e``'s episode whose free-resource arrays are the row's own (it
        follows the steps); its sums are set from the row by :meth:`sync_cluster`."""
        from envs.sim.cluster import ClusterState

        c = ClusterState(
            type_names, ep.node_type, ep.node_gpus, ep.node_cpu, ep.node_mem, node_names=ep.node_names
        )
        g = c.gpu_free_milli.shape[1]
        c.gpu_free_milli = self.free[e, :, :g]
        c.cpu_free_milli = self.n64[e, N64_CPU]
        c.mem_free_mib = self.n64[e, N64_MEM]
        c.gpu_free_total = self.n64[e, N64_TOTAL]
        c.version = self.n64[e, N64_VERSION]
        c.gpu_full_free = self.n32[e, N32_FULL]
        c.gpu_max_free = self.n32[e, N32_MAXF]
        c.node_alloc_count = self.n32[e, N32_COUNT]
        return self.sync_cluster(e, c)

    def sync_cluster(self, e: int, c: Any) -> Any:
        """Set the cluster-wide sums of ``c`` (a :meth:`cluster_view`) from row ``e``."""
        si = self.si[e]
        c.idle_gpus, c.free_gpu_milli, c.live_allocations, c._nodes_used = (
            si[S_IDLE].item(), si[S_FREE].item(), si[S_LIVE].item(), si[S_USED].item()
        )  # fmt: skip
        return c

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_args"] = None
        return state
