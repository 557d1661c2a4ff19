"""A deployment's serving profile: what a pre-deployment profiling run measures of one replica.

Planners that size prefill and decode pools from SLOs, such as NVIDIA Dynamo's SLA planner, do not
model the engine: they profile it once, offline, and interpolate. Dynamo's profiler
(``docs/architecture/sla_planner.md``, "Pre-Deployment Profiling", ai-dynamo/dynamo) measures

* prefill: TTFT and throughput per GPU against the input length at batch size 1 ("prefills are
  usually done with batch size=1 and only the ISL (excluding prefix cache hit) affects the
  iteration time");
* decode: inter-token latency and throughput per GPU against the active KV usage and the context
  length ("ITL ... depends on both the context length and the real-time load").

:class:`ServingProfile` gives the same curves for a simulated replica, computed from the iteration
time model the engine itself runs (:class:`envs.sim.perf.ReplicaCoefficients`) instead of measured:
the profile of a planner is as exact here as a profiling run on an idle engine can be. The
simulator hands each deployment's profile to its scaler in :attr:`envs.sim.view.ModelLoad.profile`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envs.sim.hardware import GpuType, default_max_batched_tokens
from envs.sim.perf import ReplicaCoefficients


@dataclass(frozen=True)
class ServingProfile:
    """One replica of a deployment, on its first allowed GPU type, as a profiling run sees it.

    Attributes:
        coefficients: the iteration time model of the replica (seconds; see ``ReplicaCoefficients``).
        gpus: GPUs per replica (its tensor-parallel degree).
        max_batch: most requests in its running batch.
        token_budget: most tokens scheduled per iteration (vLLM ``max_num_batched_tokens``); a
            prompt longer than this is prefilled in chunks of it.
        kv_capacity_tokens: KV-cache capacity of the replica (tokens).
    """

    coefficients: ReplicaCoefficients
    gpus: int
    max_batch: int
    token_budget: int
    kv_capacity_tokens: int

    def prefill_s(self, prompt_tokens: float) -> float:
        """Seconds to prefill ``prompt_tokens`` alone (batch size 1, no prefix hit): TTFT on an idle
        replica. Chunks of ``token_budget`` tokens, each reading the KV of the tokens before it, as
        the paged engine schedules them."""
        n = max(int(math.ceil(prompt_tokens)), 1)
        done, total = 0, 0.0
        while done < n:
            chunk = min(self.token_budget, n - done)
            total += self.coefficients.iteration_time_s(chunk, done)
            done += chunk
        return total

    def prefill_tokens_per_s_per_gpu(self, prompt_tokens: float) -> float:
        """Prefill throughput per GPU at batch size 1 (tokens/s/GPU): Dynamo's ``thpt_per_gpu(isl)``."""
        n = max(int(math.ceil(prompt_tokens)), 1)
        return n / self.prefill_s(n) / self.gpus

    def max_concurrency(self, context_tokens: float) -> int:
        """Most requests of ``context_tokens`` that decode together: the batch limit or the KV capacity."""
        per_request = max(int(math.ceil(context_tokens)), 1)
        return max(1, min(self.max_batch, self.kv_capacity_tokens // per_request))

    def decode_itl_s(self, concurrency: float, context_tokens: float) -> float:
        """Inter-token latency (s) of ``concurrency`` requests decoding together, each attending over
        ``context_tokens``: one iteration of that many tokens reading their KV."""
        c = max(float(concurrency), 1.0)
        return self.coefficients.iteration_time_s(c, c * (context_tokens + 1.0))

    def best_decode_tokens_per_s_per_gpu(self, itl_s: float, context_tokens: float) -> float:
        """Decode throughput per GPU (tokens/s/GPU) at the largest concurrency whose inter-token
        latency meets ``itl_s`` at this context length; at concurrency 1 if none does. Dynamo's
        ``find_best_throughput_per_gpu(itl, context_length)``, which scans its (KV usage, context)
        grid from the highest KV usage down for the first point that meets the ITL."""
        lo, hi = 1, self.max_concurrency(context_tokens)
        if self.decode_itl_s(hi, context_tokens) <= itl_s:
            lo = hi
        else:  # ITL grows with the concurrency: the largest c with ITL(c) <= itl_s, or 1
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self.decode_itl_s(mid, context_tokens) <= itl_s:
                    lo = mid
                else:
                    hi = mid
        return lo / self.decode_itl_s(lo, context_tokens) / self.gpus


def deployment_profile(
    dep: Any, gpu: GpuType, coef: Sequence[float], kv_capacity_tokens: int
) -> ServingProfile:
    """The profile of one replica of deployment ``dep`` (a ``ModelDeployment``) on ``gpu``, from its kernel
    coefficients ``coef`` (``compute_s_per_token, weight_read_s, kv_read_s_per_token, overhead_s,
    token_tile``) and KV capacity: the token budget the engine gives it (vLLM's default for the GPU when
    ``max_batched_tokens`` is unset; whole prompts when it does not chunk prefills)."""
    budget = dep.max_batched_tokens if dep.max_batched_tokens is not None else default_max_batched_tokens(gpu)
    max_len = dep.max_model_len if dep.max_model_len is not None else dep.spec.max_context
    if dep.kv_policy != "paged" or not dep.chunked_prefill:
        budget = max(budget, max_len)  # whole prompts in one iteration
    coefficients = ReplicaCoefficients(*(float(c) for c in coef[:4]), int(coef[4]))
    return ServingProfile(coefficients, dep.tensor_parallel, dep.max_batch, budget, int(kv_capacity_tokens))
