"""``dynamo_sla``: NVIDIA Dynamo's SLA-based planner, which sizes prefill and decode pools from SLOs.

Sources (ai-dynamo/dynamo): ``docs/architecture/sla_planner.md`` (the algorithm and its profiling),
``components/planner/src/dynamo/planner/utils/planner_core.py`` (``Planner._compute_replica_requirements``:
the formulas below, verbatim in structure), ``.../utils/perf_interpolation.py`` (the profile's
interpolators) and ``.../defaults.py`` (``SLAPlannerDefaults``: the defaults used here).

Every ``adjustment_interval_s`` the planner reads, over the interval that just ended, the number of
requests, their mean input and output lengths (ISL, OSL), mean TTFT and mean inter-token latency
(ITL), predicts the next interval's load, and sets

* prefill replicas ``= ceil(num_req * isl / interval * min(1, p_correction) /
  thpt_per_gpu(isl) / gpus_per_engine)``, with ``p_correction = observed TTFT / profiled TTFT(isl)``
  ("SLA planner assumes the prefill correction factor has linear affect on the prefill throughput
  per GPU as prefill is single-batched");
* decode replicas ``= ceil(num_req * osl / interval / best_thpt_per_gpu(itl_target / d_correction,
  isl + osl / 2) / gpus_per_engine)``, with ``d_correction = observed ITL / profiled ITL(concurrency,
  isl + osl / 2)`` and ``concurrency`` the requests decoding per replica (the planner derives it by
  Little's law from the request count and duration; here it is the pool's mean in-flight requests
  per READY replica);

then at least ``min_endpoint`` each. The TTFT target enters Dynamo only through its profiling (it
chooses the engine configuration that meets it); here the scenario fixes the deployment, so the
prefill rule reads no TTFT target, only the observed TTFT in ``p_correction``. The profile (:class:`envs.sim.profile.ServingProfile`) comes with
the load view, computed from the simulator's own iteration-time model as Dynamo's pre-deployment
profiler measures an idle engine.

Where this differs from Dynamo, as the view cannot express it:

* Load prediction: ``constant`` only (the next interval's load is the last one's, Dynamo's
  ``constant`` predictor); its default ``arima`` is not modelled.
* The GPU budget clamp (``max_gpu_budget``, which scales both pools down together) is left to each
  pool's ``max_replicas``: one scaler instance sees one pool.
* The planner's decisions apply from the next control interval after each adjustment interval; in
  between it holds its last answer, as Dynamo does not act between adjustments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from baselines.scaling.base import (
    Scaler,
    ScalerParams,
    _clamp,
    max_replicas_param,
    register,
)
from envs.sim.errors import fail
from envs.sim.schema import param
from envs.sim.view import ModelLoad


@dataclass(frozen=True)
class DynamoSlaParams(ScalerParams):
    """Parameters of :class:`DynamoSlaScaler`; defaults from Dynamo's ``SLAPlannerDefaults``."""

    itl_s: float = param(0.05, gt=0, doc="inter-token latency target (s); Dynamo's default --itl 0.05 s")
    adjustment_interval_s: float = param(
        180.0, gt=0, doc="seconds between scaling decisions; Dynamo's default --adjustment-interval 180"
    )
    min_endpoint: int = param(1, ge=0, integer=True, doc="replicas of each pool at least; Dynamo's default 1")
    max_replicas: int | None = max_replicas_param(
        doc="upper bound of each pool; null = the pool's max_replicas"
    )
    predictor: str = param(
        "constant", choices=("constant",), doc="load predictor: constant (the last interval's load)"
    )

    def _check(self) -> None:
        if self.max_replicas is not None and self.max_replicas < self.min_endpoint:
            raise fail(
                f"{self.path}.max_replicas",
                self.max_replicas,
                f"must be >= min_endpoint ({self.min_endpoint})",
            )


@register
class DynamoSlaScaler(Scaler):
    """Dynamo's SLA planner for the pool of a disaggregated model (see the module docstring)."""

    name = "dynamo_sla"
    params_cls = DynamoSlaParams
    params: DynamoSlaParams

    def reset(self) -> None:
        self._since = 0.0  # seconds accumulated since the last adjustment
        self._requests = 0.0  # completions in them
        self._arrivals = 0.0
        self._prompt = self._output = 0.0  # token sums of the completions
        self._ttft = self._itl = 0.0  # latency sums (ITL over completions with more than one token)
        self._itl_n = 0.0
        self._concurrency = 0.0  # in-flight per READY replica, time-weighted
        self._last: int | None = None

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        if load.role not in ("prefill", "decode"):
            raise fail(
                p.path,
                "dynamo_sla",
                f"sizes the pools of a disaggregated model; {load.model!r} is aggregated",
            )
        if load.profile is None:
            raise fail(
                p.path, "dynamo_sla", f"needs a serving profile; {load.model!r} has a service-time model"
            )
        dt = load.interval_s
        done = load.completion_rate_per_s * dt
        self._since += dt
        self._requests += done
        self._arrivals += load.arrival_rate_per_s * dt
        self._prompt += load.prompt_tokens_mean * done
        self._output += load.output_tokens_mean * done
        self._ttft += load.ttft_mean_s * done
        if load.tpot_mean_s > 0:  # intervals' mean ITLs, weighted by their completions
            self._itl += load.tpot_mean_s * done
            self._itl_n += done
        self._concurrency += load.in_flight_mean / max(load.replicas_ready, 1) * dt
        if self._last is None:
            self._last = load.target_replicas
        if self._since + 1e-9 < p.adjustment_interval_s:
            return _clamp(self._last, p.min_endpoint, p.max_replicas)
        self._last = self._compute(load)
        last = self._last
        self.reset()  # the next adjustment interval starts
        self._last = last
        return _clamp(last, p.min_endpoint, p.max_replicas)

    def _compute(self, load: ModelLoad) -> int:
        """``_compute_replica_requirements`` for this pool from the adjustment interval's averages."""
        p = self.params
        prof = load.profile
        interval = self._since
        if self._requests <= 0:  # no completions: nothing measured, the planner keeps the pools
            return self._last if self._last is not None else load.target_replicas
        num_req = self._arrivals  # the constant predictor: the next interval's requests = this one's
        isl = self._prompt / self._requests
        osl = self._output / self._requests
        if load.role == "prefill":
            observed_ttft = self._ttft / self._requests
            p_corr = observed_ttft / prof.prefill_s(isl)
            thpt = num_req * isl / interval * min(1.0, p_corr)
            return math.ceil(thpt / prof.prefill_tokens_per_s_per_gpu(isl) / prof.gpus)
        context = isl + osl / 2.0
        concurrency = self._concurrency / interval
        observed_itl = self._itl / self._itl_n if self._itl_n > 0 else 0.0
        d_corr = observed_itl / prof.decode_itl_s(concurrency, context) if observed_itl > 0 else 1.0
        per_gpu = prof.best_decode_tokens_per_s_per_gpu(p.itl_s / d_corr, context)
        return math.ceil(num_req * osl / interval / per_gpu / prof.gpus)
