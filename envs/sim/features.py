"""Compiled per-step features of the Routing environment, read from the engine state.

Part of the core because they read the state arrays directly (once per
routed request, where a handful of numpy calls would cost more than the
simulation itself); ``envs.routing`` calls them through
:meth:`envs.sim.engine.Simulator.routing_observation` and
:meth:`~envs.sim.engine.Simulator.outstanding_work_s`, and documents the
observation they fill.
"""

from __future__ import annotations

from numba import njit

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.kvcache import available_blocks, match
from envs.sim.layout import (
    I_HB,
    I_NDONE,
    I_NDROP,
    P_EWMA,
    P_SPEED,
    Q_BLKCAP,
    Q_KVCAP,
    Q_KVRES,
    Q_MAXB,
    Q_NRUN,
    Q_PAGED,
    Q_PREEMPT,
    Q_STATE,
    Q_XIN,
    R_ARR,
    R_CLASS,
    R_DONE,
    R_FIRST,
    R_MODEL,
    R_OUTPUT,
    R_PROMPT,
    REP_LOADING,
    REP_READY,
)  # fmt: skip


@njit(cache=True, error_model="numpy")
def routing_observation(rf, ri, pf, pi, qn, mrep, mn, log_done, log_drop, gi, pc, kc, slo, speed_max, i, n_models,
                        n_classes, seen, terms, obs, mask, slot_rep, norms):  # fmt: skip
    """Add the costs of requests finished since the last call to ``terms``; fill obs/mask/slots for request ``i``.

    Compiled because it runs once per step and a handful of numpy calls on
    small arrays would cost more than the simulation itself. The SLO test is
    the one of :func:`envs.sim.metrics.request_kpis`, so the per-step costs
    add up to the episode KPIs. ``norms`` is (prompt tokens per unit, prompt feature bound, load feature bound, latency s per unit). Returns the number
    of READY slots (0 when ``i < 0``: no request waiting).
    """
    prompt_unit, request_high, load_high, latency_unit = norms[0], norms[1], norms[2], norms[3]
    nd = gi[I_NDONE]
    for k in range(seen[0], nd):
        j = log_done[k]
        arr = rf[j, R_ARR]
        ttft = rf[j, R_FIRST] - arr
        e2e = rf[j, R_DONE] - arr
        n_out = ri[j, R_OUTPUT]
        tpot = (rf[j, R_DONE] - rf[j, R_FIRST]) / (n_out - 1) if n_out > 1 else 0.0
        c = ri[j, R_CLASS]
        if not (ttft <= slo[c, 0] and tpot <= slo[c, 1] and e2e <= slo[c, 2]):
            terms[0] += 1.0
        terms[2] += e2e
        terms[3] += 1.0
    seen[0] = nd
    nx = gi[I_NDROP]
    terms[0] += nx - seen[1]  # a dropped request never meets its SLO
    terms[1] += nx - seen[1]
    seen[1] = nx
    obs[:] = 0.0
    mask[:] = False
    slot_rep[:] = -1
    if i < 0:
        return 0
    m = ri[i, R_MODEL]
    obs[m] = 1.0
    obs[n_models] = min(ri[i, R_PROMPT] / prompt_unit, request_high)
    obs[n_models + 1 + ri[i, R_CLASS]] = 1.0
    base = n_models + 1 + n_classes
    n_slots = mask.shape[0]
    n_feat = (obs.shape[0] - base) // n_slots if n_slots > 0 else 0
    s = 0
    n_ready = 0
    for k in range(mn[m]):
        r = mrep[m, k]
        st = pi[r, Q_STATE]
        if st != REP_READY and st != REP_LOADING:
            continue  # DRAINING replicas take no new requests and hold no slot
        if s >= n_slots:
            break
        o = base + n_feat * s
        slot_rep[s] = r
        if st == REP_READY:
            obs[o] = 1.0
            mask[s] = True
            n_ready += 1
        else:
            obs[o + 1] = 1.0
        maxb = pi[r, Q_MAXB]
        q = qn[n_models + r] + pi[r, Q_XIN]  # a decode replica's caches in transfer wait there too
        run = pi[r, Q_NRUN]
        obs[o + 2] = min(q / maxb, load_high)
        obs[o + 3] = min(run / maxb, 1.0)
        cap = pi[r, Q_KVCAP]
        obs[o + 4] = min(max(1.0 - pi[r, Q_KVRES] / cap, 0.0), 1.0) if cap > 0 else 0.0
        obs[o + 5] = min(pf[r, P_SPEED] / speed_max[m], 1.0)
        ew = pf[r, P_EWMA]
        obs[o + 6] = 0.0 if ew < 0.0 else min(ew / latency_unit, load_high)
        obs[o + 7] = min((q + run) / maxb, load_high)
        if n_feat > 8:  # Routing-v1: the paged engine's state (0 for reserve replicas)
            if pi[r, Q_PAGED] != 0:
                prompt = ri[i, R_PROMPT]
                hit = match(ri, pi, pc, kc, gi, r, i, prompt)[0] * gi[I_HB] if gi[I_HB] > 0 else 0
                obs[o + 8] = hit / prompt if prompt > 0 else 0.0
                blocks = pi[r, Q_BLKCAP]
                obs[o + 9] = available_blocks(pi, r) / blocks if blocks > 0 else 0.0
                obs[o + 10] = min(pi[r, Q_PREEMPT] / maxb, load_high)
        s += 1
    return n_ready


@njit(cache=True, error_model="numpy")
def outstanding_work_s(pf, pi, qn, mrep, mn, n_models, cap_s):
    """Outstanding work of the cluster in seconds: ``sum over replicas, k = 1..n of min(k / mu, cap_s)``.

    ``n`` is the replica's requests in flight (queued + running) and ``mu`` its
    capacity (saturation req/s): ``k / mu`` is when the ``k``-th of them would
    finish, served one after another at rate ``mu``, capped at ``cap_s`` so
    that an overloaded replica's potential grows linearly, not quadratically.
    Adding one request to a replica raises it by ``min((n + 1) / mu, cap_s)``,
    the score of shortest expected delay. The potential of the ``shaping``
    reward term (see ``RoutingEnv``).
    """
    total = 0.0
    for m in range(n_models):
        for k in range(mn[m]):
            r = mrep[m, k]
            n = qn[n_models + r] + pi[r, Q_NRUN]
            if n > 0:
                mu = pf[r, P_SPEED]
                j = min(n, int(cap_s * mu))  # the first j requests finish before the cap
                total += j * (j + 1.0) / (2.0 * mu) + (n - j) * cap_s
    return total
