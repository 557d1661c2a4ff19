"""The Autoscale environment's observation (features, scaling, clipping) and its episode history.

A mixin of :class:`envs.autoscale.env.AutoscaleEnv`, which owns the attributes it reads (the
simulator, the last interval's :class:`~envs.sim.view.ModelLoad` views, the scales computed at
construction); the features and their scales are documented in the env's docstring
(Observation Space).
"""

from __future__ import annotations

import math

import numpy as np

#: Per-model observation features, in order: (name, low, high).
MODEL_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("arrival_rate", 0.0, 4.0),
    ("load_ratio", 0.0, 16.0),
    ("queue_len", 0.0, 4.0),
    ("in_flight", 0.0, 4.0),
    ("replicas_ready", 0.0, 1.0),
    ("replicas_loading", 0.0, 1.0),
    ("replicas_draining", 0.0, 4.0),
    ("replicas_unplaced", 0.0, 1.0),
    ("utilization", 0.0, 1.0),
    ("kv_usage", 0.0, 1.0),
    ("ttft_p99", 0.0, 32.0),
    ("slo_attainment", 0.0, 1.0),
    ("arrival_trend", -4.0, 4.0),
)
#: Per-model features v3 adds after :data:`MODEL_FEATURES` (see the class docstring).
POOL_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("tpot_p99", 0.0, 32.0),
    ("kv_transfers_pending", 0.0, 4.0),
)
#: TPOT scale of ``tpot_p99`` when no request class sets a TPOT target (s/token)
DEFAULT_TPOT_SCALE_S = 0.1
TIME_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("time_of_day_sin", -1.0, 1.0),
    ("time_of_day_cos", -1.0, 1.0),
    ("horizon_elapsed", 0.0, 1.0),
)


class AutoscaleObservation:
    """Builds :class:`~envs.autoscale.env.AutoscaleEnv`'s observation and records its episode (for
    ``render``) from the views of the interval that just ended."""

    def _replica_counts(self) -> np.ndarray:
        return np.array(
            [[ld.replicas_ready, ld.replicas_loading, ld.replicas_draining] for ld in self.model_loads],
            np.int64,
        )

    def _observation(self) -> np.ndarray:
        sim = self.sim
        # the reset window is empty, so the first interval has no previous rate to compare with
        first = self._prev_rate is None or self._step <= 1
        rates = [ld.arrival_rate_per_s for ld in self.model_loads]
        prev = rates if first else self._prev_rate
        self._prev_rate = rates
        s_inv = 1.0 / self.ttft_target_s
        t_inv = 1.0 / self.tpot_target_s
        pool = self._pool_features
        vals: list[float] = []
        for m, ld in enumerate(self.model_loads):
            inv_n, inv_nc, inv_lnb = self._inv_n[m], self._inv_nc[m], self._inv_log_nb[m]
            rate = rates[m]
            have = ld.replicas_ready + ld.replicas_loading
            vals += (
                rate * inv_nc,
                rate / (max(ld.replicas_ready, 1) * ld.capacity_rps_per_replica),
                math.log1p(ld.queue_len) * inv_lnb,
                math.log1p(ld.in_flight) * inv_lnb,
                ld.replicas_ready * inv_n,
                ld.replicas_loading * inv_n,
                ld.replicas_draining * inv_n,
                max(ld.target_replicas - have, 0) * inv_n,
                ld.utilization,
                ld.kv_usage,
                ld.ttft_p99_s * s_inv,
                ld.slo_attainment,
                (rate - prev[m]) * inv_nc,
            )
            if pool:
                vals += (ld.tpot_p99_s * t_inv, math.log1p(ld.kv_transfers_pending) * inv_lnb)
        if self.hybrid:
            for m, types in self.hybrid:
                counts = sim.provisioned_by_gpu_type(m)
                vals += (counts.get(g, 0) * self._inv_n[m] for g in types)
        if self._pool_nodes:
            cluster, down = sim.cluster, sim.faults.blocked
            for nodes in self._pool_nodes:
                gpus = cluster.node_gpus[nodes]
                total = float(gpus.sum())
                up = sum(int(cluster.node_gpus[n]) for n in nodes if n not in down)
                vals += (up / total, float(gpus[cluster.node_noticed[nodes]].sum()) / total)
        if self._paged:
            # per model: prompt tokens from the prefix cache, prompt tokens, preemptions since the last step
            counts = sim.serving_counters_by_model()
            hit, prompt, pre = (counts - self._serving_prev).T
            self._serving_prev = counts
            for m in self._paged:
                vals += (
                    hit[m] / prompt[m] if prompt[m] > 0 else 0.0,
                    math.log1p(pre[m]) * self._inv_log_nb[m],
                )
        now = sim.now
        if self._diurnal is not None:
            period, phase = self._diurnal
            ang = 2.0 * math.pi * (now + phase) / period
            vals += (math.sin(ang), math.cos(ang))
        else:
            vals += (0.0, 0.0)
        vals.append(now / self.scenario.horizon_s)
        obs = np.array(vals, np.float32)
        # the ufuncs directly: np.clip's argument handling costs more than the clipping
        np.maximum(obs, self._obs_low, out=obs)
        return np.minimum(obs, self._obs_high, out=obs)

    def _record(self, reward: float = 0.0) -> None:
        h, i = self._hist, self._step
        h["t"][i] = self.sim.now
        h["reward"][i] = reward
        for m, ld in enumerate(self.model_loads):
            h["arrival"][i, m] = ld.arrival_rate_per_s if i > 0 else 0.0
            h["capacity"][i, m] = ld.replicas_ready * ld.capacity_rps_per_replica
            h["ready"][i, m] = ld.replicas_ready
            h["loading"][i, m] = ld.replicas_loading
            h["ttft_p99"][i, m] = ld.ttft_p99_s
