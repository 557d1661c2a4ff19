"""KPIs computed from the engine's request and replica arrays.

The engine logs the id of every request as it completes or is dropped, so the
KPIs of any window are a vectorised computation over a slice of those logs;
nothing here loops over requests in Python. Definitions (all seconds):

============================  =====================================================================
key                           meaning
============================  =====================================================================
``requests_arrived``          requests whose arrival time is in the window
``requests_completed``        requests that finished their last token in the window
``requests_dropped``          requests dropped in the window (queue timeout, or too long for any KV cache)
``wait_mean_s``               mean arrival -> admission into a batch, over the completed requests
``e2e_mean_s``/``e2e_p99_s``  arrival -> last token, mean and 99th percentile, completed requests
``ttft_p50_s``/``ttft_p99_s`` arrival -> first token (end of the prefill iteration), completed requests
``tpot_mean_s``               (last token - first token) / (output tokens - 1), completed requests with > 1 token
``slo_attainment``            completed requests meeting every target of their class / (completed + dropped);
                              1.0 when nothing finished in the window
``slo_violations``            (completed + dropped) - requests meeting their SLO
``gpu_seconds``               GPU-seconds allocated (cold starts and draining included) in the window
``cost_usd``                  gpu_seconds x the GPU type's $/GPU-hour / 3600
``utilization``               busy time / time READY or DRAINING, over all replicas, in the window (0..1)
============================  =====================================================================

Latency KPIs of a window with no completed request are 0.0 (and
``requests_completed`` says so) so observations never hold NaN.
"""

from __future__ import annotations

import numpy as np

from envs.sim import kernel as K

KPI_KEYS = (
    "requests_arrived",
    "requests_completed",
    "requests_dropped",
    "wait_mean_s",
    "e2e_mean_s",
    "e2e_p99_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_mean_s",
    "slo_attainment",
    "slo_violations",
    "gpu_seconds",
    "cost_usd",
    "utilization",
)


def request_kpis(
    rf: np.ndarray, ri: np.ndarray, done: np.ndarray, n_dropped: int, slo: np.ndarray
) -> dict[str, float]:
    """Latency and SLO KPIs of the completed requests ``done`` (ids) plus ``n_dropped`` drops.

    ``slo`` is a ``(n_classes, 3)`` array of (ttft, tpot, e2e) targets, ``inf`` where unset.
    """
    n = len(done)
    out = {"requests_completed": float(n), "requests_dropped": float(n_dropped)}
    if n == 0:
        out.update(
            wait_mean_s=0.0, e2e_mean_s=0.0, e2e_p99_s=0.0, ttft_p50_s=0.0, ttft_p99_s=0.0, tpot_mean_s=0.0
        )
        met = 0
    else:
        f = rf[done]
        arr = f[:, K.R_ARR]
        ttft = f[:, K.R_FIRST] - arr
        e2e = f[:, K.R_DONE] - arr
        out_tokens = ri[done, K.R_OUTPUT]
        multi = out_tokens > 1
        tpot = np.zeros(n)
        tpot[multi] = (f[multi, K.R_DONE] - f[multi, K.R_FIRST]) / (out_tokens[multi] - 1)
        ttft_sorted = np.sort(ttft)
        p50, p99 = sorted_percentile(ttft_sorted, 50.0), sorted_percentile(ttft_sorted, 99.0)
        out.update(
            wait_mean_s=float(np.mean(f[:, K.R_ADMIT] - arr)),
            e2e_mean_s=float(np.mean(e2e)),
            e2e_p99_s=sorted_percentile(np.sort(e2e), 99.0),
            ttft_p50_s=float(p50),
            ttft_p99_s=float(p99),
            tpot_mean_s=float(np.mean(tpot[multi])) if multi.any() else 0.0,
        )
        target = slo[ri[done, K.R_CLASS]]
        met = int(np.count_nonzero((ttft <= target[:, 0]) & (tpot <= target[:, 1]) & (e2e <= target[:, 2])))
    finished = n + n_dropped
    out["slo_attainment"] = met / finished if finished else 1.0
    out["slo_violations"] = float(finished - met)
    return out


def sorted_percentile(x: np.ndarray, q: float) -> float:
    """``np.percentile(x, q)`` (linear interpolation) of an already sorted non-empty array, without re-sorting."""
    pos = q / 100.0 * (len(x) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(x) - 1)
    frac = pos - lo
    a, b = float(x[lo]), float(x[hi])
    # numpy's _lerp: exact at both ends
    return b - (b - a) * (1.0 - frac) if frac >= 0.5 else a + (b - a) * frac


def overlap_s(start: np.ndarray, end: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Length of each interval ``[start, end)`` inside ``[t0, t1)`` (``end`` may be ``inf``)."""
    return np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None)


def latency_percentile(values: np.ndarray, q: float) -> float:
    """Percentile that returns 0.0 on an empty sample (for observations)."""
    return float(np.percentile(values, q)) if len(values) else 0.0
