"""ModelLoad views for the scaler tests: quiet defaults, a decode pool's fields, per-tick samples."""

from __future__ import annotations

import numpy as np

from envs.sim.perf import kv_capacity_tokens, replica_coefficients
from envs.sim.profile import ServingProfile
from envs.sim.view import ModelLoad


def make_load(now_s: float = 15.0, **overrides) -> ModelLoad:
    """A ModelLoad with quiet defaults: one ready replica, no traffic, 15 s interval."""
    fields = dict(
        model="m",
        now_s=now_s,
        interval_s=15.0,
        replicas_ready=1,
        replicas_loading=0,
        replicas_draining=0,
        target_replicas=1,
        arrival_rate_per_s=0.0,
        completion_rate_per_s=0.0,
        in_flight=0,
        in_flight_mean=0.0,
        queue_len=0,
        utilization=0.0,
        kv_usage=0.0,
        ttft_p99_s=0.0,
        slo_attainment=1.0,
        capacity_rps_per_replica=10.0,
        tick_s=1.0,
        tick_in_flight=np.zeros(0),
        tick_arrivals=np.zeros(0),
    )
    fields.update(overrides)
    return ModelLoad(**fields)


#: ModelLoad fields of a decode pool with a profile and completions (for the scalers that need them)
POOL_VIEW = {
    "role": "decode",
    "profile": ServingProfile(
        replica_coefficients("a100-80gb", "llama-3-8b", 1),
        1,
        256,
        2048,
        kv_capacity_tokens("a100-80gb", "llama-3-8b", 1),
    ),  # fmt: skip
    "completion_rate_per_s": 4.0,
    "prompt_tokens_mean": 1000.0,
    "output_tokens_mean": 200.0,
    "ttft_mean_s": 0.2,
    "tpot_mean_s": 0.03,
}


def ticks(load_kwargs: dict, concurrency: float, interval_s: float, tick_s: float = 1.0) -> dict:
    """Add per-tick in-flight samples of constant ``concurrency`` to ModelLoad kwargs."""
    n = round(interval_s / tick_s)
    out = dict(load_kwargs)
    out.update(
        interval_s=interval_s,
        tick_s=tick_s,
        tick_in_flight=np.full(n, float(concurrency)),
        in_flight=int(concurrency),
        in_flight_mean=float(concurrency),
    )
    return out
