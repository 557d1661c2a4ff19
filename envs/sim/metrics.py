"""KPIs computed from the engine's request and replica arrays.

The engine logs the id of every request as it completes or is dropped, so the
KPIs of any window are a vectorised (or compiled) computation over a slice of
those logs; nothing here loops over requests in Python. Definitions (all seconds):

============================  =====================================================================
key                           meaning
============================  =====================================================================
``requests_arrived``          requests whose arrival time is in the window
``requests_completed``        requests that finished their last token in the window
``requests_dropped``          requests dropped in the window (queue timeout, or too long for any KV cache)
``requests_unfinished``       requests still waiting or running when the window ends at the horizon (they
                              never finish; 0 in a window that ends before the horizon)
``wait_mean_s``               mean arrival -> admission into a batch, over the completed requests
``e2e_mean_s``/``e2e_p99_s``  arrival -> last token, mean and 99th percentile, completed requests
``ttft_p50_s``/``ttft_p99_s`` arrival -> first token (end of the prefill iteration), completed requests
``tpot_mean_s``               (last token - first token) / (output tokens - 1), completed requests with > 1 token
``slo_attainment``            completed requests meeting every target of their class / (completed + dropped
                              + unfinished); 1.0 when nothing finished in the window
``slo_violations``            (completed + dropped + unfinished) - requests meeting their SLO
``gpu_seconds``               GPU-seconds allocated (cold starts and draining included) in the window
``cost_usd``                  gpu_seconds x the GPU type's $/GPU-hour / 3600
``utilization``               busy time / time READY or DRAINING, over all replicas, in the window (0..1)
============================  =====================================================================

An episode's requests are all accounted for at its horizon: a request still queued or running
then counts as finished and missing its SLO, so a controller that serves nothing cannot look
perfect. Latency KPIs of a window with no completed request are 0.0 (and
``requests_completed`` says so) so observations never hold NaN.
"""

from __future__ import annotations

import numpy as np

from envs.sim import kernel as K

KPI_KEYS = (
    "requests_arrived",
    "requests_completed",
    "requests_dropped",
    "requests_unfinished",
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
    rf: np.ndarray,
    ri: np.ndarray,
    done: np.ndarray,
    n_dropped: int,
    slo: np.ndarray,
    latencies: tuple | None = None,
) -> dict[str, float]:
    """Latency and SLO KPIs of the completed requests ``done`` (ids) plus ``n_dropped`` drops.

    ``slo`` is a ``(n_classes, 3)`` array of (ttft, tpot, e2e) targets, ``inf`` where unset;
    ``latencies`` may pass :func:`request_latencies` of ``done`` plus :func:`slo_met`, already computed.
    """
    n = len(done)
    out = {"requests_completed": float(n), "requests_dropped": float(n_dropped)}
    if n == 0:
        out.update(
            wait_mean_s=0.0, e2e_mean_s=0.0, e2e_p99_s=0.0, ttft_p50_s=0.0, ttft_p99_s=0.0, tpot_mean_s=0.0
        )
        met = 0
    else:
        if latencies is None:
            ttft, tpot, e2e, multi = request_latencies(rf, ri, done)
            met = slo_met(ri, done, ttft, tpot, e2e, slo)
        else:
            ttft, tpot, e2e, multi, met = latencies
        p50, p99 = percentiles(ttft, (50.0, 99.0))
        out.update(
            wait_mean_s=float(np.mean(rf[done, K.R_ADMIT] - rf[done, K.R_ARR])),
            e2e_mean_s=float(np.mean(e2e)),
            e2e_p99_s=percentiles(e2e, (99.0,))[0],
            ttft_p50_s=p50,
            ttft_p99_s=p99,
            tpot_mean_s=float(np.mean(tpot[multi])) if multi.any() else 0.0,
        )
    finished = n + n_dropped
    out["slo_attainment"] = met / finished if finished else 1.0
    out["slo_violations"] = float(finished - met)
    return out


def request_latencies(
    rf: np.ndarray, ri: np.ndarray, done: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ttft, tpot, e2e, has_tpot) of the completed requests ``done``; tpot is 0 where there is one token."""
    f = rf[done]
    arr = f[:, K.R_ARR]
    out_tokens = ri[done, K.R_OUTPUT]
    multi = out_tokens > 1
    tpot = np.zeros(len(done))
    tpot[multi] = (f[multi, K.R_DONE] - f[multi, K.R_FIRST]) / (out_tokens[multi] - 1)
    return f[:, K.R_FIRST] - arr, tpot, f[:, K.R_DONE] - arr, multi


def slo_met(
    ri: np.ndarray, done: np.ndarray, ttft: np.ndarray, tpot: np.ndarray, e2e: np.ndarray, slo: np.ndarray
) -> int:
    """How many of the completed requests ``done`` met every target of their class."""
    target = slo[ri[done, K.R_CLASS]]
    return int(np.count_nonzero((ttft <= target[:, 0]) & (tpot <= target[:, 1]) & (e2e <= target[:, 2])))


def percentiles(x: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(x, q)`` (linear interpolation) for each q, bit for bit, by partial sorting.

    ``np.percentile`` sorts a copy per call; the KPIs of every control
    interval need only two or three order statistics.
    """
    n = len(x)
    pos = [q / 100.0 * (n - 1) for q in qs]
    idx = sorted({min(int(p) + k, n - 1) for p in pos for k in (0, 1)})
    part = np.partition(x, idx)
    out = []
    for p in pos:
        lo = int(p)
        a, b = float(part[lo]), float(part[min(lo + 1, n - 1)])
        frac = p - lo
        out.append(b - (b - a) * (1.0 - frac) if frac >= 0.5 else a + (b - a) * frac)  # numpy's _lerp
    return out


def overlap_s(start: np.ndarray, end: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Length of each interval ``[start, end)`` inside ``[t0, t1)`` (``end`` may be ``inf``)."""
    return np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None)


def latency_percentile(values: np.ndarray, q: float) -> float:
    """Percentile that returns 0.0 on an empty sample (for observations)."""
    return float(np.percentile(values, q)) if len(values) else 0.0
