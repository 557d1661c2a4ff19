"""The read side of the simulator: KPI windows, scaler views and state snapshots.

A mixin of :class:`envs.sim.engine.Simulator`, kept apart from the code that
changes the state: nothing here writes the engine's arrays. Its methods read
the arrays through the names of :mod:`envs.sim.layout` and return the frozen
views of :mod:`envs.sim.view` or plain dicts of KPIs (keys in
:mod:`envs.sim.metrics`). Window cursors (``_window_t0``, ``_seen_*``) move
only in :meth:`SimulatorReads.interval_kpis` / ``step_views``, which the
control loop calls once per interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.sim import kernel as K
from envs.sim.metrics import REPLICA_COLUMNS, WINDOW_COLUMNS, percentiles, replica_window, request_window
from envs.sim.view import ModelLoad, ReplicaView, RequestTable, RequestView


class SimulatorReads:
    """Views and KPIs of a :class:`~envs.sim.engine.Simulator` (see the module docstring)."""

    # set by Simulator
    rf: np.ndarray
    ri: np.ndarray
    pf: np.ndarray
    pi: np.ndarray
    gi: np.ndarray
    scenario: Any

    def model_loads(self) -> list[ModelLoad]:
        """Every model's scaler view over the current KPI window (from the last :meth:`interval_kpis` to now).

        Call before :meth:`interval_kpis`, which moves the window on (:meth:`step_views` does both).
        """
        nd, nx = int(self.gi[K.I_NDONE]), int(self.gi[K.I_NDROP])
        t0 = self._window_t0
        rw = self._replica_window(t0, self.now, self._prev_busy)
        return self._model_views(t0, self.log_done[self._seen_done : nd], self._drops_per_model(nx), rw)

    def _drops_per_model(self, nx: int) -> list[int]:
        """Requests of each model dropped since the window start (``nx``: drops logged so far)."""
        if self.n_models == 1:
            return [nx - self._seen_drop]
        drops = self.log_drop[self._seen_drop : nx]
        return np.bincount(self.ri[drops, K.R_MODEL], minlength=self.n_models).tolist()

    def request_view(self, i: int) -> RequestView:
        """Arrived request ``i``: what a router knows of it (not its output length)."""
        if not 0 <= i < int(self.gi[K.I_NEXT_ARR]) + int(self.gi[K.I_PENDING] >= 0):
            raise ValueError(f"request: {i!r} has not arrived")
        ri = self.ri[i]
        return RequestView(int(i), int(ri[K.R_MODEL]), int(ri[K.R_CLASS]), float(self.rf[i, K.R_ARR]),
                           int(ri[K.R_PROMPT]), int(ri[K.R_SESSION]))  # fmt: skip

    def requests(self) -> RequestTable:
        """The arrived requests as named read-only columns (a copy: later events do not change it)."""
        n = int(self.gi[K.I_NEXT_ARR])
        rf, ri = self.rf[:n], self.ri[:n]

        def col(a: np.ndarray) -> np.ndarray:
            out = a.copy()
            out.flags.writeable = False
            return out

        return RequestTable(
            arrival_s=col(rf[:, K.R_ARR]), admitted_s=col(rf[:, K.R_ADMIT]), first_token_s=col(rf[:, K.R_FIRST]),
            finished_s=col(rf[:, K.R_DONE]), prompt_tokens=col(ri[:, K.R_PROMPT]), output_tokens=col(ri[:, K.R_OUTPUT]),
            model=col(ri[:, K.R_MODEL]), request_class=col(ri[:, K.R_CLASS]), replica=col(ri[:, K.R_REPLICA]),
            state=col(ri[:, K.R_STATE]), state_names=K.REQUEST_STATE_NAMES,
        )  # fmt: skip

    def provisioned_by_gpu_type(self, m: int) -> dict[int, int]:
        """Model ``m``'s LOADING or READY replicas counted by GPU type index."""
        counts: dict[int, int] = {}
        for r in self.mrep[m, : self.mn[m]].tolist():
            if self.pi[r, K.Q_STATE] <= K.REP_READY:
                g = self.replicas[r].gpu_type
                counts[g] = counts.get(g, 0) + 1
        return counts

    def replica_view(self, r: int) -> ReplicaView:
        """Replica ``r`` (any replica ever started) as a read-only snapshot."""
        if not 0 <= r < self.n_replicas:
            raise ValueError(f"replica: {r!r} must be in [0, {self.n_replicas})")
        pi, pf, rep = self.pi[r], self.pf[r], self.replicas[r]
        return ReplicaView(
            id=int(r), model=int(pi[K.Q_MODEL]), state=K.REPLICA_STATE_NAMES[int(pi[K.Q_STATE])],
            gpu_type=self.gpu_types[rep.gpu_type].name, node=int(rep.alloc.node),
            queued=int(self.qn[self.n_models + r]), running=int(pi[K.Q_NRUN]), max_batch=int(pi[K.Q_MAXB]),
            kv_capacity_tokens=int(pi[K.Q_KVCAP]), kv_reserved_tokens=int(pi[K.Q_KVRES]),
            speed_rps=float(pf[K.P_SPEED]), latency_ewma_s=float(pf[K.P_EWMA]),
            allocated_at_s=float(pf[K.P_ALLOC]), ready_at_s=float(pf[K.P_READY]),
        )  # fmt: skip

    def replica_views(self, model: int | None = None, *, ready_only: bool = False) -> tuple[ReplicaView, ...]:
        """Live replicas (loading, ready, draining) of ``model`` (or of all models), in increasing id."""
        models = range(self.n_models) if model is None else (int(model),)
        ids = sorted(int(r) for m in models for r in self.mrep[m, : self.mn[m]])
        if ready_only:
            ids = [r for r in ids if self.pi[r, K.Q_STATE] == K.REP_READY]
        return tuple(self.replica_view(r) for r in ids)

    # ------------------------------------------------------------------ views and KPIs
    #
    # A control step reads one KPI window twice, through the scalers' views (model_loads) and the
    # interval KPIs. The arrays involved are short (requests of one interval, replicas ever
    # started), so numpy's per-call overhead, not arithmetic, is the cost: the pieces both reads
    # need are computed once (step_views, and _latencies memoised per slice) with few calls. Every
    # float comes from the same numpy operations on arrays of the same length and order as in
    # envs.sim.metrics (request_kpis, overlap_s), so the values are bit-identical to those.

    _tick_grid: np.ndarray | None = None  # tick boundaries j * tick_s, built at the first view
    _arrivals: tuple[np.ndarray, np.ndarray] | None = None  # (rf, its arrival column), built then too

    def _latencies(self, done: np.ndarray) -> tuple:
        """Per-request values of the completed requests ``done``, memoised for the window being read.

        ``(ttft, tpot, e2e, has_tpot, met, model, wait, pct)``: the arrays of
        :func:`~envs.sim.metrics.request_latencies`, the bool mask whose count is
        :func:`~envs.sim.metrics.slo_met`, the requests' models, their waits (admission -
        arrival), and ``(ttft p50, ttft p99, e2e p99)`` (None when ``done`` is empty). Scaler
        views and interval KPIs read the same window within one control step; the completion
        log only grows, so (count, first id, last id) of a slice of it identifies the slice.
        """
        n = len(done)
        key = (n, int(done[0]) if n else -1, int(done[-1]) if n else -1)
        if self._lat_key == key:
            return self._lat_val
        if n == 0:
            e = np.zeros(0)
            val = (e, e, e, np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, np.int64), e, None)
        else:
            ttft, tpot, e2e, multi, met, model, wait = request_window(
                self.rf, self.ri, done, self.slo, WINDOW_COLUMNS
            )
            pct = (*percentiles(ttft, (50.0, 99.0)), percentiles(e2e, (99.0,))[0])
            val = (ttft, tpot, e2e, multi, met, model, wait, pct)
        self._lat_key, self._lat_val = key, val
        return val

    def busy_s(self) -> np.ndarray:
        """Busy seconds of every replica so far (the iteration in progress counted up to now)."""
        k = self.n_replicas
        busy = self.pf[:k, K.P_BUSY_S].copy()
        on = self.pi[:k, K.Q_BUSY] == 1
        busy[on] += self.now - self.pf[:k, K.P_ITER_START][on]
        return busy

    def _replica_window(self, t0: float, t1: float, busy0: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per replica: (busy seconds so far (:meth:`busy_s`), busy seconds since ``busy0``, allocated
        and READY seconds inside ``[t0, t1)``)."""
        return replica_window(
            self.pf, self.pi, self.n_replicas, self.now, float(t0), float(t1), busy0, REPLICA_COLUMNS
        )

    def _window_kpis(
        self, done: np.ndarray, n_dropped: int, n_arrived: int, rw: tuple[np.ndarray, ...]
    ) -> dict[str, float]:
        """KPIs of a window from its finished requests and its :meth:`_replica_window` ``rw``."""
        ttft, tpot, e2e, multi, met, _, wait, pct = self._latencies(done)
        n = len(done)
        out = {"requests_arrived": float(n_arrived), "requests_completed": float(n),
               "requests_dropped": float(n_dropped)}  # fmt: skip
        if n == 0:
            out.update(wait_mean_s=0.0, e2e_mean_s=0.0, e2e_p99_s=0.0, ttft_p50_s=0.0, ttft_p99_s=0.0,
                       tpot_mean_s=0.0)  # fmt: skip
            n_met = 0
        else:
            n_met = int(np.count_nonzero(met))
            tm = tpot[multi]
            # x.sum() / n is np.mean(x), bit for bit
            out.update(
                wait_mean_s=float(wait.sum() / n),
                e2e_mean_s=float(e2e.sum() / n),
                e2e_p99_s=pct[2],
                ttft_p50_s=pct[0],
                ttft_p99_s=pct[1],
                tpot_mean_s=float(tm.sum() / len(tm)) if len(tm) else 0.0,
            )
        finished = n + n_dropped
        out["slo_attainment"] = n_met / finished if finished else 1.0
        out["slo_violations"] = float(finished - n_met)
        _, diff, alloc_s, ready_s = rw
        out["gpu_seconds"] = float(np.dot(alloc_s, self._rep_gpus))
        out["cost_usd"] = float(np.dot(alloc_s, self._rep_usd))
        tot = ready_s.sum()
        out["utilization"] = float(min(1.0, diff.sum() / tot)) if tot > 0 else 0.0
        return out

    def window_kpis(
        self, t0: float, t1: float, done: np.ndarray, n_dropped: int, n_arrived: int, busy0: np.ndarray
    ) -> dict[str, float]:
        """KPIs over ``[t0, t1)`` given the requests that finished in it."""
        return self._window_kpis(done, n_dropped, n_arrived, self._replica_window(t0, t1, busy0))

    def episode_kpis(self) -> dict[str, float]:
        """KPIs from time 0 to now (see :mod:`envs.sim.metrics` for definitions)."""
        nd, nx = int(self.gi[K.I_NDONE]), int(self.gi[K.I_NDROP])
        out = self.window_kpis(0.0, self.now, self.log_done[:nd], nx, int(self.gi[K.I_NEXT_ARR]), np.zeros(0))
        out["requests_in_system"] = (
            out["requests_arrived"] - out["requests_completed"] - out["requests_dropped"]
        )
        out["placement_failures"] = float(self.placement_failures)
        return out

    def interval_kpis(self) -> dict[str, float]:
        """KPIs since the previous call (or the start) up to now; advances the window."""
        return self._interval(False)[1]

    def step_views(self) -> tuple[list[ModelLoad], dict[str, float]]:
        """:meth:`model_loads`, then :meth:`interval_kpis` (which advances the window), in one pass.

        The same values as the two calls in that order, for less work: what a control step reads.
        """
        return self._interval(True)

    def _interval(self, views: bool) -> tuple[list[ModelLoad] | None, dict[str, float]]:
        t0, t1 = self._window_t0, self.now
        nd, nx, na = int(self.gi[K.I_NDONE]), int(self.gi[K.I_NDROP]), int(self.gi[K.I_NEXT_ARR])
        done = self.log_done[self._seen_done : nd]
        rw = self._replica_window(t0, t1, self._prev_busy)
        loads = self._model_views(t0, done, self._drops_per_model(nx), rw) if views else None
        out = self._window_kpis(done, nx - self._seen_drop, na - self._seen_arr, rw)
        self._window_t0, self._seen_done, self._seen_drop, self._seen_arr = t1, nd, nx, na
        self._prev_busy = rw[0]
        return loads, out

    def in_system(self) -> int:
        """Requests arrived but neither completed nor dropped (waiting for routing, queued or running)."""
        pending = int(self.gi[K.I_PENDING] >= 0)
        return int(self.gi[K.I_NEXT_ARR] + pending - self.gi[K.I_NDONE] - self.gi[K.I_NDROP])

    def model_load(self, m: int, t0: float, done: np.ndarray, n_dropped: int, busy0: np.ndarray) -> ModelLoad:
        """The scaler's view of model ``m`` over ``[t0, now)``, given the requests ``done`` (of any
        model) that completed in it and ``n_dropped`` drops of model ``m``.

        It holds just two request KPIs, TTFT p99 and SLO attainment, with the definitions of
        :func:`~envs.sim.metrics.request_kpis` and bit-identical values.
        """
        drops = [0] * self.n_models
        drops[m] = n_dropped
        rw = self._replica_window(t0, self.now, busy0)
        return self._model_views(t0, done, drops, rw, only=m)[0]

    def _model_views(
        self, t0: float, done: np.ndarray, n_drop: list[int], rw: tuple[np.ndarray, ...], only: int = -1
    ) -> list[ModelLoad]:
        """The :class:`ModelLoad` of every model (or of model ``only`` if >= 0) over ``[t0, now)``."""
        now = self.now
        dt = max(now - t0, 1e-9)
        pi, pf, rf = self.pi, self.pf, self.rf
        single = self.n_models == 1  # every request and replica is model 0's: no per-model masks
        ttft, _, _, _, met, req_model, _, pct = self._latencies(done)
        _, diff, _, ready_s = rw
        arrivals = self._arrivals
        if arrivals is None or arrivals[0] is not rf:
            # A contiguous copy of the (never changing) arrival column: searchsorted on the strided
            # column would copy all of it at every call.
            arrivals = self._arrivals = (rf, np.ascontiguousarray(rf[: self.n_requests, K.R_ARR]))
        a0 = int(np.searchsorted(arrivals[1], t0, side="left"))
        a1 = int(self.gi[K.I_NEXT_ARR])
        arr_t = arrivals[1][a0:a1]
        tick_s = self.scenario.tick_s
        k0 = int(math.floor(t0 / tick_s + 1e-9))
        k1 = min(int(self.gi[K.I_NTICK]), int(self.gi[K.I_TICK_CAP]))
        edges = None
        if k1 > k0:
            grid = self._tick_grid
            if grid is None:  # grid[j] = j * tick_s, the values (np.arange(k0, k1) + 1) * tick_s would give
                grid = self._tick_grid = np.arange(int(self.gi[K.I_TICK_CAP]) + 1) * tick_s
            if grid[k0] == t0:
                edges = grid[k0 : k1 + 1]
            else:
                edges = np.concatenate([[t0], grid[k0 + 1 : k1 + 1]])
        if single:
            util_num, util_den = diff.sum(), ready_s.sum()
        else:
            rep_model = pi[: self.n_replicas, K.Q_MODEL]
            arr_model = self.ri[a0:a1, K.R_MODEL]
        targets = self.target.tolist()
        out = []
        for m in range(self.n_models) if only < 0 else (only,):
            if single:
                n = len(done)
                ttft_p99 = pct[1] if n else 0.0
                n_met = int(np.count_nonzero(met)) if n else 0
                arrived = max(a1 - a0, 0)
                arr_m = arr_t
            else:
                sel = req_model == m
                n = int(np.count_nonzero(sel))
                ttft_p99 = percentiles(ttft[sel], (99.0,))[0] if n else 0.0
                n_met = int(np.count_nonzero(met & sel)) if n else 0
                mine_arr = arr_model == m
                arrived = int(np.count_nonzero(mine_arr))
                arr_m = arr_t[mine_arr]
                mine = rep_model == m
                util_num, util_den = diff[mine].sum(), ready_s[mine].sum()
            finished = n + n_drop[m]
            ticks = self.tick_inflight[k0:k1, m].astype(float)
            if edges is not None:
                tick_arr = np.diff(np.searchsorted(arr_m, edges, side="right")).astype(float)
            else:
                tick_arr = np.zeros(0)
            reps = self.mrep[m, : self.mn[m]]
            state, kv_cap, kv_res = pi[reps][:, (K.Q_STATE, K.Q_KVCAP, K.Q_KVRES)].T.tolist()
            speed = pf[reps, K.P_SPEED].tolist()
            n_ready = n_loading = n_draining = cap = res = 0
            speeds = []
            for i, s in enumerate(state):
                if s == K.REP_READY:
                    n_ready += 1
                    cap += kv_cap[i]
                    res += kv_res[i]
                    speeds.append(speed[i])
                elif s == K.REP_LOADING:
                    n_loading += 1
                elif s == K.REP_DRAINING:
                    n_draining += 1
            if not speeds:
                speeds = [self._nominal_speed(m)]
            if len(speeds) < 8:  # numpy sums fewer than 8 floats left to right, as this loop does
                tot = 0.0
                for v in speeds:
                    tot += v
            else:
                tot = np.array(speeds).sum()
            in_flight, queued = self.mi[m, (K.M_INFLIGHT, K.M_QUEUED)].tolist()
            out.append(
                ModelLoad(
                    model=self.scenario.models[m].name,
                    now_s=now,
                    interval_s=dt,
                    replicas_ready=n_ready,
                    replicas_loading=n_loading,
                    replicas_draining=n_draining,
                    target_replicas=targets[m],
                    arrival_rate_per_s=arrived / dt,
                    completion_rate_per_s=n / dt,
                    in_flight=in_flight,
                    in_flight_mean=float(ticks.sum() / len(ticks)) if len(ticks) else float(in_flight),
                    queue_len=queued,
                    utilization=float(min(1.0, util_num / util_den)) if util_den > 0 else 0.0,
                    kv_usage=res / cap if cap > 0 and not self.per_request else 0.0,
                    ttft_p99_s=ttft_p99,
                    slo_attainment=n_met / finished if finished else 1.0,
                    capacity_rps_per_replica=float(tot / len(speeds)),
                    tick_s=tick_s,
                    tick_in_flight=ticks,
                    tick_arrivals=tick_arr,
                )
            )
        return out

    def _nominal_speed(self, m: int) -> float:
        vals = [v[2] for (mm, _), v in self._rep_params.items() if mm == m and v is not None]
        return float(np.mean(vals)) if vals else 1.0
