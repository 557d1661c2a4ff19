"""The read side of the simulator: KPI windows, scaler views and state snapshots.

A mixin of :class:`envs.sim.engine.Simulator`, kept apart from the code that
changes the state: nothing here writes the engine's arrays. Its methods read
the arrays through the names of :mod:`envs.sim.layout` and return the frozen
views of :mod:`envs.sim.view` or plain dicts of KPIs (keys in
:mod:`envs.sim.metrics`). A KPI window's position is a
:class:`~envs.sim.window.KpiWindow` that belongs to its reader; the
simulator's own, ``window``, serves :meth:`SimulatorReads.interval_kpis` and
``step_views``, which the control loop calls once per interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.sim import kernel as K
from envs.sim import window as WS
from envs.sim.view import ModelLoad, ReplicaView, RequestTable, RequestView
from envs.sim.window import KpiWindow, window_stats

_NO_IDS = np.zeros(0, np.int64)
ROLE_NAMES = ("aggregated", "prefill", "decode")  # by layout.ROLE_*
_NO_COUNTERS = np.zeros(len(WS.SERVING_COUNTERS), np.int64)
_SERVING_COLUMNS = np.array(WS.SERVING_COUNTERS, np.int64)
_BY_MODEL_COLUMNS = np.array([K.Q_HITTOK, K.Q_PROMPTTOK, K.Q_PREEMPT], np.int64)
_NO_BUSY = np.zeros(0)


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
        """Every model's scaler view over the default window (from the last :meth:`interval_kpis` to now).

        Call before :meth:`interval_kpis`, which moves the window on (:meth:`step_views` does both).
        """
        return self.read_window(self.window, views=True, move=False)[0]

    def request_view(self, i: int) -> RequestView:
        """Arrived request ``i``: what a router knows of it (not its output length)."""
        if not 0 <= i < int(self.state.gi[K.I_NEXT_ARR]) + int(self.state.gi[K.I_PENDING] >= 0):
            raise ValueError(f"request: {i!r} has not arrived")
        ri = self.state.ri[i]
        return RequestView(int(i), int(ri[K.R_MODEL]), int(ri[K.R_CLASS]), float(self.state.rf[i, K.R_ARR]),
                           int(ri[K.R_PROMPT]), int(ri[K.R_SESSION]))  # fmt: skip

    def requests(self) -> RequestTable:
        """The arrived requests as named read-only columns (a copy: later events do not change it)."""
        n = int(self.state.gi[K.I_NEXT_ARR])
        rf, ri = self.state.rf[:n], self.state.ri[:n]

        def col(a: np.ndarray) -> np.ndarray:
            out = a.copy()
            out.flags.writeable = False
            return out

        return RequestTable(
            arrival_s=col(rf[:, K.R_ARR]), admitted_s=col(rf[:, K.R_ADMIT]), first_token_s=col(rf[:, K.R_FIRST]),
            finished_s=col(rf[:, K.R_DONE]), prompt_tokens=col(ri[:, K.R_PROMPT]), output_tokens=col(ri[:, K.R_OUTPUT]),
            model=col(ri[:, K.R_MODEL]), request_class=col(ri[:, K.R_CLASS]), replica=col(ri[:, K.R_REPLICA]),
            state=col(ri[:, K.R_STATE]), state_names=K.REQUEST_STATE_NAMES, drop_reason=col(ri[:, K.R_REASON]),
            drop_reason_names=K.DROP_REASON_NAMES, cached_prompt_tokens=col(ri[:, K.R_HIT]),
            preemptions=col(ri[:, K.R_NPREEMPT]),
        )  # fmt: skip

    def provisioned_by_gpu_type(self, m: int) -> dict[int, int]:
        """Model ``m``'s LOADING or READY replicas counted by GPU type index."""
        counts: dict[int, int] = {}
        for r in self.state.mrep[m, : self.state.mn[m]].tolist():
            if self.state.pi[r, K.Q_STATE] <= K.REP_READY:
                g = self.state.records[r].gpu_type
                counts[g] = counts.get(g, 0) + 1
        return counts

    def replica_view(self, r: int) -> ReplicaView:
        """Replica ``r`` (any replica ever started) as a read-only snapshot."""
        if not 0 <= r < self.n_replicas:
            raise ValueError(f"replica: {r!r} must be in [0, {self.n_replicas})")
        pi, pf, rep = self.state.pi[r], self.state.pf[r], self.state.records[r]
        return ReplicaView(
            id=int(r), model=int(pi[K.Q_MODEL]), state=K.REPLICA_STATE_NAMES[int(pi[K.Q_STATE])],
            gpu_type=self.gpu_types[rep.gpu_type].name, node=int(rep.alloc.node),
            queued=int(self.state.qn[self.n_models + r]), running=int(pi[K.Q_NRUN]), max_batch=int(pi[K.Q_MAXB]),
            kv_capacity_tokens=int(pi[K.Q_KVCAP]), kv_reserved_tokens=int(pi[K.Q_KVRES]),
            speed_rps=float(pf[K.P_SPEED]), latency_ewma_s=float(pf[K.P_EWMA]),
            allocated_at_s=float(pf[K.P_ALLOC]), ready_at_s=float(pf[K.P_READY]),
            kv_blocks_free=int(pi[K.Q_BLKCAP] - pi[K.Q_BLKPRIV] - (pi[K.Q_ENTRIES] - pi[K.Q_LRUN]) * pi[K.Q_EB]),
            prefix_cache_entries=int(pi[K.Q_ENTRIES]), preemptions=int(pi[K.Q_PREEMPT]),
            prefix_hit_rate=float(pi[K.Q_HITTOK] / pi[K.Q_PROMPTTOK]) if pi[K.Q_PROMPTTOK] > 0 else 0.0,
            role=ROLE_NAMES[int(pi[K.Q_ROLE])], kv_transfers_out=int(pi[K.Q_XOUT]), kv_transfers_in=int(pi[K.Q_XIN]),
        )  # fmt: skip

    def replica_views(self, model: int | None = None, *, ready_only: bool = False) -> tuple[ReplicaView, ...]:
        """Live replicas (loading, ready, draining) of ``model`` (or of all models), in increasing id."""
        models = range(self.n_models) if model is None else (int(model),)
        ids = sorted(int(r) for m in models for r in self.state.mrep[m, : self.state.mn[m]])
        if ready_only:
            ids = [r for r in ids if self.state.pi[r, K.Q_STATE] == K.REP_READY]
        return tuple(self.replica_view(r) for r in ids)

    # ------------------------------------------------------------------ views and KPIs
    #
    # A control step reads one KPI window through the scalers' views and the interval KPIs. Both
    # come from one compiled pass (envs.sim.window.window_stats) whose values are bit-identical to
    # the numpy definitions of envs.sim.metrics; only the two dot products stay in numpy.

    def busy_s(self) -> np.ndarray:
        """Busy seconds of every replica so far (the iteration in progress counted up to now)."""
        k = self.n_replicas
        busy = self.state.pf[:k, K.P_BUSY_S].copy()
        on = self.state.pi[:k, K.Q_BUSY] == 1
        busy[on] += self.now - self.state.pf[:k, K.P_ITER_START][on]
        return busy

    def _stats(self, t0: float, t1: float, done: np.ndarray, drops: np.ndarray, busy0: np.ndarray,
               views: bool, only: int = -1) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Run :func:`~envs.sim.window.window_stats`; returns (busy, tick_arrivals) and fills
        ``self._win`` and ``self._per_model`` (a :meth:`precompute_read`'s result is void after another call)."""
        self._stats_calls += 1
        return window_stats(
            self.state.rf, self.state.ri, self.state.pf, self.state.pi, self.state.mi, self.state.mrep, self.state.mn, self.state.gi, self.state.tick_inflight,
            self._arrival_times, self.slo, self._nominal_speeds, self.state.rep_gpus, self.state.rep_usd_per_s, self.n_replicas, self.now, float(t0), float(t1),
            self.scenario.tick_s, done, drops, busy0, views, only, self.n_models == 1, self._origin, self._win, self._per_model,
        )  # fmt: skip

    def _window_kpis(self, n_dropped: int, n_arrived: int, n_unfinished: int = 0) -> dict[str, float]:
        """The KPI dict of the window whose row :meth:`_stats` just wrote; ``n_unfinished`` requests
        still in the system at the horizon count as finished, missing their SLO (module docstring)."""
        w = self._win
        n = int(w[WS.W_DONE])
        out = {"requests_arrived": float(n_arrived), "requests_completed": float(n),
               "requests_dropped": float(n_dropped), "requests_unfinished": float(n_unfinished)}  # fmt: skip
        if n == 0:
            out.update(wait_mean_s=0.0, e2e_mean_s=0.0, e2e_p99_s=0.0, ttft_p50_s=0.0, ttft_p99_s=0.0,
                       tpot_mean_s=0.0)  # fmt: skip
            n_met = 0
        else:
            n_met = int(w[WS.W_MET])
            n_tpot = int(w[WS.W_TPOT_N])
            out.update(
                wait_mean_s=float(w[WS.W_WAIT_SUM] / n),
                e2e_mean_s=float(w[WS.W_E2E_SUM] / n),
                e2e_p99_s=float(w[WS.W_E2E_P99]),
                ttft_p50_s=float(w[WS.W_TTFT_P50]),
                ttft_p99_s=float(w[WS.W_TTFT_P99]),
                tpot_mean_s=float(w[WS.W_TPOT_SUM] / n_tpot) if n_tpot else 0.0,
            )
        finished = n + n_dropped + n_unfinished
        out["slo_attainment"] = n_met / finished if finished else 1.0
        out["slo_violations"] = float(finished - n_met)
        out["gpu_seconds"] = float(w[WS.W_GPU_S])
        out["cost_usd"] = float(w[WS.W_COST])
        tot = w[WS.W_UTIL_DEN]
        out["utilization"] = float(min(1.0, w[WS.W_UTIL_NUM] / tot)) if tot > 0 else 0.0
        return out

    def window_kpis(
        self, t0: float, t1: float, done: np.ndarray, n_dropped: int, n_arrived: int, busy0: np.ndarray
    ) -> dict[str, float]:
        """KPIs over ``[t0, t1)`` given the requests that finished in it."""
        self._stats(t0, t1, np.asarray(done, np.int64), _NO_IDS, busy0, False)
        return self._window_kpis(n_dropped, n_arrived)

    def episode_kpis(self) -> dict[str, float]:
        """KPIs from time 0 to now (see :mod:`envs.sim.metrics` for definitions).

        At the horizon, the requests still in the system count against ``slo_attainment``
        (``requests_unfinished``); before it they may still finish and are not counted.
        """
        nd, nx = int(self.state.gi[K.I_NDONE]), int(self.state.gi[K.I_NDROP])
        self._stats(0.0, self.now, self.state.log_done[:nd], _NO_IDS, _NO_BUSY, False)
        out = self._window_kpis(nx, int(self.state.gi[K.I_NEXT_ARR]), self._unfinished_at_horizon())
        out["requests_in_system"] = (
            out["requests_arrived"] - out["requests_completed"] - out["requests_dropped"]
        )
        out["placement_failures"] = float(self.placement_failures)
        if self.paged:
            out.update(self._serving_kpis(_NO_COUNTERS, self.state.log_drop[:nx]))
        if self.faults is not None:
            out.update(self.faults.kpis(self))
        if self.scenario.disaggregated:
            out.update(self._transfer_kpis(np.zeros(WS.N_TRANSFER_COUNTERS), 0.0))
        return out

    def transfer_counters(self) -> np.ndarray:
        """Disaggregated serving's KV-transfer counters so far (``window.TRANSFER_COUNTERS``)."""
        n = self.n_replicas
        pf, pi = self.state.pf[:n], self.state.pi[:n]
        return np.array([
            pi[:, K.Q_XN].sum() + pi[:, K.Q_XIN].sum(), pi[:, K.Q_XN].sum(), pf[:, K.P_XWAIT_S].sum(),
            pf[:, K.P_XBUSY_S].sum(), pf[:, K.P_XBYTES].sum(), self.state.mi[:, K.M_HANDOUT].sum(),
        ], np.float64)  # fmt: skip

    def _transfer_kpis(self, since: np.ndarray, t0: float, now: np.ndarray | None = None) -> dict[str, float]:
        """KV-transfer KPIs from the counters ``since`` (at ``t0``) to ``now`` (default: read them).

        ``kv_link_utilization`` is the receiving links' busy seconds over the decode replicas' seconds
        of service in the window (a transfer's busy time counts when it starts).
        """
        c = (self.transfer_counters() if now is None else now) - since
        n = self.n_replicas
        pf, pi = self.state.pf[:n], self.state.pi[:n]
        t1 = self.now
        dec = pi[:, K.Q_ROLE] == K.ROLE_DECODE
        live = np.clip(np.minimum(pf[dec, K.P_RELEASE], t1) - np.maximum(pf[dec, K.P_READY], t0), 0.0, None)
        replica_s = float(live.sum())
        return {
            "requests_handed_off": float(c[5]),
            "kv_transfers": float(c[1]),
            "kv_transfer_mean_s": float(c[2] / c[0]) if c[0] > 0 else 0.0,
            "kv_transfer_gb": float(c[4] / 1e9),
            "kv_link_utilization": float(c[3] / replica_s) if replica_s > 0 else 0.0,
        }

    def serving_counters(self) -> np.ndarray:
        """The paged engine's counters summed over every replica so far (``window.SERVING_COUNTERS``)."""
        return self.state.pi[: self.n_replicas, _SERVING_COLUMNS].sum(axis=0)

    def serving_counters_by_model(self) -> np.ndarray:
        """Per model (rows), the paged engine's prompt tokens served from the prefix cache, prompt tokens
        admitted and preemptions so far (columns), summed over its replicas (released ones included)."""
        pi = self.state.pi[: self.n_replicas]
        if self.n_models == 1:
            return pi[:, _BY_MODEL_COLUMNS].sum(axis=0, keepdims=True)
        out = np.zeros((self.n_models, 3), np.int64)
        np.add.at(out, pi[:, K.Q_MODEL], pi[:, _BY_MODEL_COLUMNS])
        return out

    def _serving_kpis(
        self, since: np.ndarray, drops: np.ndarray, now: np.ndarray | None = None
    ) -> dict[str, float]:
        """Paged-engine KPIs from the counters ``since`` (a window's start) to ``now`` (default: read
        them); ``drops``: the window's dropped request ids (for the rejections)."""
        c = (self.serving_counters() if now is None else now) - since
        reasons = self.state.ri[drops, K.R_REASON]
        rejected = np.count_nonzero((reasons == K.DROP_CONTEXT) | (reasons == K.DROP_KV))
        return {
            "preemptions": float(c[0]),
            "prefix_hit_rate": float(c[1] / c[2]) if c[2] > 0 else 0.0,
            "recomputed_tokens": float(c[3]),
            "requests_rejected": float(rejected),
        }

    def interval_kpis(self) -> dict[str, float]:
        """KPIs of the default window (since the previous call, or the start, up to now); moves it on."""
        return self.read_window(self.window, views=False)[1]

    def step_views(self, precomputed: tuple | None = None) -> tuple[list[ModelLoad], dict[str, float]]:
        """:meth:`model_loads`, then :meth:`interval_kpis` (which moves the default window on), in one
        pass (``precomputed``: see :meth:`read_window`)."""
        loads, kpis = self.read_window(self.window, views=True, precomputed=precomputed)
        return loads, kpis  # type: ignore[return-value]

    def read_window(
        self, window: KpiWindow, *, views: bool, move: bool = True, precomputed: tuple | None = None
    ) -> tuple[list[ModelLoad] | None, dict[str, float]]:
        """The window from ``window``'s position to now: every model's :class:`ModelLoad` (if ``views``)
        and the interval KPIs. ``move`` sets the cursor to now (the next read starts here).
        ``precomputed``: :meth:`precompute_read`'s result for this read (used if still valid).

        Reading changes nothing in the simulation; the cursor is the caller's (the simulator's own,
        :attr:`window`, serves :meth:`interval_kpis`, :meth:`model_loads` and :meth:`step_views`).
        """
        t0, t1 = window.t0, self.now
        gi = self.state.gi
        nd, nx, na = int(gi[K.I_NDONE]), int(gi[K.I_NDROP]), int(gi[K.I_NEXT_ARR])
        drops = self.state.log_drop[window.dropped : nx]
        if precomputed is not None and precomputed[0] == self._read_key(window, views):
            busy, tick_arr = precomputed[1]  # computed by precompute_read at this same point
        else:
            done = self.state.log_done[window.done : nd]
            busy, tick_arr = self._stats(t0, t1, done, drops, window.busy0, views)
        out = self._window_kpis(nx - window.dropped, na - window.arrived, self._unfinished_at_horizon())
        if self.paged:
            counters = self.serving_counters()
            out.update(self._serving_kpis(window.serving0, drops, counters))
        if self.faults is not None:
            out.update(self.faults.kpis(self, t0, window.faults0))
        if self.scenario.disaggregated:
            transfers = self.transfer_counters()
            out.update(self._transfer_kpis(window.transfer0, t0, transfers))
        loads = self._model_views(t0, tick_arr) if views else None
        if move:
            window.t0, window.done, window.dropped, window.arrived, window.busy0 = t1, nd, nx, na, busy
            if self.paged:
                window.serving0 = counters
            if self.faults is not None:
                window.faults0 = self.faults.counts()
            if self.scenario.disaggregated:
                window.transfer0 = transfers
        return loads, out

    def _read_key(self, window: KpiWindow, views: bool) -> tuple:
        """What a read of ``window`` now depends on: the window and its cursor, ``views``, the clock,
        the replicas, the buffers ``_stats`` writes and the completion, drop and arrival counts."""
        gi = self.state.gi
        return (window, id(window.busy0), window.t0, window.done, window.dropped, views, self.now,
                self.n_replicas, self._stats_calls, int(gi[K.I_NDONE]), int(gi[K.I_NDROP]),
                int(gi[K.I_NEXT_ARR]))  # fmt: skip

    def precompute_read(self, window: KpiWindow, *, views: bool) -> tuple:
        """The compiled part of :meth:`read_window` (``window``, ``views``), computed now; pass it to
        that read as ``precomputed`` to skip computing it again (same numbers). It is valid until the
        simulation or ``window`` changes or another read runs; a void one is recomputed. The
        Autoscale vector env runs it on the thread that ran the simulation, so that it runs on
        several threads at once (:func:`~envs.sim.window.window_stats` releases the GIL)."""
        gi = self.state.gi
        done = self.state.log_done[window.done : int(gi[K.I_NDONE])]
        drops = self.state.log_drop[window.dropped : int(gi[K.I_NDROP])]
        stats = self._stats(window.t0, self.now, done, drops, window.busy0, views)
        return (self._read_key(window, views), stats)  # the key after the call: _stats counts it

    def _unfinished_at_horizon(self) -> int:
        """Requests in the system once the horizon is reached (they will never finish), else 0."""
        return self.in_system() if self.now >= self.scenario.horizon_s else 0

    def in_system(self) -> int:
        """Requests arrived but neither completed nor dropped (waiting for routing, queued or running)."""
        pending = int(self.state.gi[K.I_PENDING] >= 0)
        return int(
            self.state.gi[K.I_NEXT_ARR] + pending - self.state.gi[K.I_NDONE] - self.state.gi[K.I_NDROP]
        )

    def model_load(self, m: int, t0: float, done: np.ndarray, n_dropped: int, busy0: np.ndarray) -> ModelLoad:
        """The scaler's view of model ``m`` over ``[t0, now)``, given the requests ``done`` (of any
        model) that completed in it and ``n_dropped`` drops of model ``m``."""
        _, tick_arr = self._stats(t0, self.now, np.asarray(done, np.int64), _NO_IDS, busy0, True, only=m)
        self._per_model[m, WS.V_DROPPED] = n_dropped
        return self._model_views(t0, tick_arr, only=m)[0]

    def _model_views(self, t0: float, tick_arr: np.ndarray, only: int = -1) -> list[ModelLoad]:
        """The :class:`ModelLoad` of every model (or of model ``only``) from the rows :meth:`_stats` wrote."""
        now = self.now
        dt = max(now - t0, 1e-9)
        k0, k1 = int(self._win[WS.W_K0]), int(self._win[WS.W_K1])
        targets = self.target.tolist()
        rows = self._per_model.tolist()
        per_request = self.per_request
        noticed = self._noticed_per_model() if self.faults is not None else None
        out = []
        for m in range(self.n_models) if only < 0 else (only,):
            (ready, loading, draining, arrived, n, n_met, ttft_p99, util_num, util_den, kv_cap, kv_res,
             speed_sum, speed_n, tick_sum, tick_n, in_flight, queued, dropped, tpot_p99, prompt_sum,
             output_sum, xfer, ttft_sum, tpot_sum, tpot_n) = rows[m]  # fmt: skip
            n = int(n)
            finished = n + int(dropped)
            kv_cap, kv_res = int(kv_cap), int(kv_res)
            out.append(
                ModelLoad(
                    model=self._model_names[m],
                    now_s=now,
                    interval_s=dt,
                    replicas_ready=int(ready),
                    replicas_loading=int(loading),
                    replicas_draining=int(draining),
                    target_replicas=targets[m],
                    arrival_rate_per_s=int(arrived) / dt,
                    completion_rate_per_s=n / dt,
                    in_flight=int(in_flight),
                    in_flight_mean=tick_sum / tick_n if tick_n else float(in_flight),
                    queue_len=int(queued),
                    utilization=float(min(1.0, util_num / util_den)) if util_den > 0 else 0.0,
                    kv_usage=kv_res / kv_cap if kv_cap > 0 and not per_request else 0.0,
                    ttft_p99_s=ttft_p99,
                    slo_attainment=int(n_met) / finished if finished else 1.0,
                    capacity_rps_per_replica=speed_sum / int(speed_n),
                    tick_s=self.scenario.tick_s,
                    tick_in_flight=self.state.tick_inflight[k0:k1, m].astype(float),
                    tick_arrivals=tick_arr[m],
                    replicas_noticed=0 if noticed is None else noticed[m],
                    role=self.scenario.models[m].role,
                    tpot_p99_s=tpot_p99,
                    ttft_mean_s=ttft_sum / n if n else 0.0,
                    tpot_mean_s=tpot_sum / tpot_n if tpot_n else 0.0,
                    prompt_tokens_mean=prompt_sum / n if n else 0.0,
                    output_tokens_mean=output_sum / n if n else 0.0,
                    kv_transfers_pending=int(xfer),
                    profile=self.profiles[m],
                )
            )
        return out

    def _noticed_per_model(self) -> list[int]:
        """Per model: its READY or LOADING replicas on nodes under a preemption notice."""
        out = [0] * self.n_models
        flags = self.cluster.node_noticed
        if flags.any():
            pi = self.state.pi
            for rec in self.state.live:
                if flags[rec.alloc.node] and pi[rec.rid, K.Q_STATE] <= K.REP_READY:
                    out[rec.model] += 1
        return out

    def _nominal_speed(self, m: int) -> float:
        """Model ``m``'s mean saturation throughput over its allowed GPU types (req/s)."""
        return float(self._nominal_speeds[m])
