"""The FGD fragmentation of the compiled Placement step's rows, kept incrementally (see :mod:`envs.placement.fast`).

FGD (Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation
Gradient Descent", USENIX ATC 2023; the Python model is :class:`envs.placement.fgd.FgdTracker` over
``refresh_fragments``) measures a node's fragment for a task type as the free GPU share it could
not use. Here it is kept as one integer per row, the sum over nodes and offered task types of
count x F_n(type): a node that changed recomputes its part over the offered types
(:func:`fgd_refresh`), an offered job adds its type's F_n over the nodes (:func:`fgd_see`).
Fragments are whole milli-GPU, so this equals the tracker's float sums exactly.
"""

from __future__ import annotations

from numba import njit

from envs.placement.layout import (
    K_COUNT,
    K_CPU,
    K_MEM,
    K_NUM,
    K_THRESHOLD,
    K_TYPESET,
    N64_CPU,
    N64_FGD_CPU,
    N64_FGD_MEM,
    N64_FGD_SEEN,
    N64_FGD_SUM,
    N64_FGD_TOTAL,
    N64_MEM,
    N64_TOTAL,
    N64_TYPE,
    N64_VERSION,
    S_ACTIVE,
    S_FGD,
    S_ITEMS,
    S_U,
)
from envs.sim import jitcache  # noqa: F401  (keys the compiled cache on this package's modules)


@njit(cache=True, _nrt=False)
def fgd_refresh(e, free, n64, tsok, kint, fthr, fge, fsm, work, si):
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
def fgd_see(e, k, n64, tsok, kint, fge, fsm, si):
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
def fgd_value(e, free, n64, tsok, kint, fthr, fge, fsm, work, si):
    """FgdTracker.value(): the FGD fragmentation in milli-GPU over the task types offered so far.

    The sum over nodes and types of count x F_n(type) is kept current as types are offered and
    nodes change; fragments are whole milli-GPU, so the integer sum is the float sum of
    ``col_sum @ counts`` exactly, whatever the order."""
    items = si[e, S_ITEMS]
    if items == 0:
        return 0.0
    fgd_refresh(e, free, n64, tsok, kint, fthr, fge, fsm, work, si)
    return float(si[e, S_FGD]) / float(items)
