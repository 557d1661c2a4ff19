"""The requests of one simulation, drawn up front: arrival times, sizes, models, classes, deadlines.

:func:`build_requests` turns a scenario's workload and a generator into the request rows of
:class:`~envs.sim.state.EngineState` (columns of :mod:`envs.sim.layout`) and their prompt prefixes
(:class:`~envs.sim.prefixes.PrefixBlocks`), replaying a trace (:mod:`envs.sim.workload`,
:mod:`envs.sim.prefixes`) or drawing a synthetic process. Trace files are parsed once per content.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from envs.sim import layout as K
from envs.sim import prefixes as P
from envs.sim import workload as W
from envs.sim.config import Scenario
from envs.sim.errors import ConfigError, fail
from envs.sim.state import aligned_zeros

N_SESSIONS = 1024  # affinity keys: requests draw a session id uniformly from this many sessions


def _cached_trace(
    path: str, fmt: str, start_s: float, duration_s: float | None, time_scale: float
) -> W.Trace:
    """The trace at ``path`` in format ``fmt`` (``azure`` or ``mooncake``), parsed once per content:
    the cache key holds the format and the file's size and modification time, so a file changed on
    disk is read again."""
    st = os.stat(path)
    return _read_trace(path, fmt, st.st_size, st.st_mtime_ns, start_s, duration_s, time_scale)


@functools.lru_cache(maxsize=8)
def _read_trace(path: str, fmt: str, _size: int, _mtime_ns: int, start_s: float, duration_s: float | None,
                time_scale: float) -> W.Trace:  # fmt: skip
    reader = P.read_mooncake_trace if fmt == "mooncake" else W.read_azure_trace
    return reader(path, start_s=start_s, duration_s=duration_s, time_scale=time_scale)


def _trace_variation(tr: W.Trace, p: Mapping[str, Any], horizon_s: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The replayed requests of one seed: arrival times re-based to 0, and for each the trace row
    whose sizes (prompt, output tokens and prompt prefix) it takes.

    ``none``: the trace's first ``horizon_s`` seconds, the same for every seed. ``bootstrap_sizes``:
    the same arrival times, each with a (prompt, output) pair drawn with replacement from those
    rows (the trace's own joint size distribution). ``offset``: the rows of
    ``[u, u + horizon_s)`` with ``u`` uniform in ``[0, max_offset_s]`` (default: the trace's span
    beyond the horizon), re-based to 0.
    """
    t = tr.arrival_s
    variation = p.get("variation", "none")
    if variation == "offset":
        room = float(t[-1]) - horizon_s if len(t) else 0.0
        span = room if p.get("max_offset_s") is None else p["max_offset_s"]
        if not span > 0:
            raise fail("workload.arrival.variation", "offset",
                       f"needs a trace longer than horizon_s ({horizon_s} s; it spans {float(t[-1]):.6g} s)")  # fmt: skip
        u = float(rng.uniform(0.0, span))
        rows = np.flatnonzero((t >= u) & (t < u + horizon_s))
        return t[rows] - u, rows
    rows = np.flatnonzero(t < horizon_s)
    t = t[rows]
    if variation == "bootstrap_sizes" and len(t):
        rows = rows[rng.integers(0, len(t), size=len(t))]
    return t, rows


def build_requests(
    sc: Scenario, rng: np.random.Generator, per_request: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, P.PrefixBlocks]:
    """``(rf, ri, slo, prefix)``: the request rows (one per request plus a sentinel row), the
    classes' (ttft, tpot, e2e) targets, ``inf`` where unset, and the requests' prompt block hashes
    (one entry per request, in row order). ``per_request``: validation service models (one output
    token each).

    ``prefix`` comes from a ``sessions`` workload or a trace with prefixes (Mooncake) replayed with
    ``sizes.kind: trace`` (a request of ``bootstrap_sizes`` takes the prefix of the row it takes
    its sizes from); otherwise (synthetic sizes, Azure traces) it is empty: no request shares a
    prefix with another."""
    wl = sc.workload
    arr = wl.arrival
    h = sc.horizon_s
    p = arr.params
    prompt = output = prefix = None
    if arr.kind == "poisson":
        t = W.poisson_arrivals(rng, p["rate_per_s"], h)
    elif arr.kind == "mmpp":
        t = W.mmpp_arrivals(rng, p["rates_per_s"], p["mean_dwell_s"], h, dwell_shape=p["dwell_shape"])
    elif arr.kind == "onoff":
        t = W.mmpp_arrivals(
            rng,
            (p["on_rate_per_s"], p["off_rate_per_s"]),
            (p["mean_on_s"], p["mean_off_s"]),
            h,
            start_state=0,
            dwell_shape=p["dwell_shape"],
        )
    elif arr.kind == "diurnal":
        t = W.diurnal_arrivals(rng, p["mean_rate_per_s"], p["amplitude"], p["period_s"], h, p["phase_s"])
    elif arr.kind == "sessions":
        t, prompt, output, prefix = P.session_requests(rng, p, wl.sizes, h)
    else:
        if not Path(p["path"]).is_file():
            raise fail("workload.arrival.path", p["path"], "is not an existing file")
        try:
            tr = _cached_trace(p["path"], p["format"], p["start_s"], p["duration_s"], p["time_scale"])
        except ConfigError as exc:
            raise ConfigError(f"workload.arrival: {exc}") from None
        t, rows = _trace_variation(tr, p, h, rng)
        if wl.sizes.kind == "trace":
            prompt = np.maximum(tr.prompt_tokens[rows], 1)
            output = np.maximum(tr.output_tokens[rows], 1)
            if tr.prefix is not None:
                prefix = tr.prefix.select(rows)
    n = len(t)
    if prompt is None:
        sz = wl.sizes
        if sz.kind == "fixed":
            prompt = np.full(n, sz.prompt, np.int64)
            output = np.full(n, sz.output, np.int64)
        else:
            prompt = W.sample_lengths(rng, n, sz.prompt_mean, sz.prompt_p99, 1, sz.prompt_max)
            output = W.sample_lengths(rng, n, sz.output_mean, sz.output_p99, 1, sz.output_max)
    if per_request:
        output = np.ones(n, np.int64)
    names = list(sc.served_models)  # a disaggregated model's requests arrive at its prefill pool
    mix = np.array([wl.model_mix.get(nm, 0.0) for nm in names])
    model = rng.choice(len(names), size=n, p=mix / mix.sum()) if len(names) > 1 else np.zeros(n, np.int64)
    shares = np.array([c.share for c in wl.classes])
    cls = (
        rng.choice(len(shares), size=n, p=shares / shares.sum()) if len(shares) > 1 else np.zeros(n, np.int64)
    )
    u = rng.random((n, 2))
    session = rng.integers(0, N_SESSIONS, size=n)
    if sc.service.kind == "exponential":
        svc = rng.exponential(sc.service.mean_s, size=n)
    else:
        svc = np.full(n, sc.service.mean_s)
    timeout = np.array([c.timeout_s for c in wl.classes])
    prio_rank = np.argsort(np.argsort([c.priority for c in wl.classes], kind="stable"), kind="stable")
    rf = np.full((n + 1, K.N_RF), np.nan)  # +1: a sentinel row keeps n == 0 arrays non-empty
    rf[:n, K.R_ARR] = t
    rf[:n, K.R_SVC] = svc
    rf[:n, K.R_U1] = u[:, 0]
    rf[:n, K.R_U2] = u[:, 1]
    rf[:n, K.R_DEADLINE] = t + timeout[cls]
    ri = aligned_zeros((n + 1, K.N_RI), np.int64)
    ri[:n, K.R_PROMPT] = prompt
    ri[:n, K.R_OUTPUT] = output
    ri[:n, K.R_MODEL] = model
    ri[:n, K.R_CLASS] = cls
    ri[:n, K.R_LIST] = prio_rank[cls]  # one queue list per class, ordered by priority
    ri[:n, K.R_PRIO] = np.array([c.priority for c in wl.classes])[cls]
    ri[:, K.R_REPLICA] = -1
    ri[:, K.R_NEXT] = -1
    ri[:n, K.R_SESSION] = session
    slo = np.array(
        [
            [math.inf if v is None else v for v in (c.slo.ttft_s, c.slo.tpot_s, c.slo.e2e_s)]
            for c in wl.classes
        ]
    )
    if prefix is None:
        prefix = P.PrefixBlocks.empty(n)
    return rf, ri, slo, prefix
