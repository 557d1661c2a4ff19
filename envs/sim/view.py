"""Read-only snapshots of cluster state that controllers and observation builders read.

The engine owns all mutable state. Controllers (``baselines``) and environment
observation builders only ever see these frozen snapshots, so nothing outside
the engine can change the simulation except through its public commands
(``set_target_replicas``, routing decisions, placement decisions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from envs.sim.profile import ServingProfile


@dataclass(frozen=True)
class ModelLoad:
    """What a scaler sees about one model at a control decision.

    Rates and means cover the control interval that just ended
    (``[now_s - interval_s, now_s)``); counts are instantaneous at ``now_s``.
    ``tick_*`` arrays are the engine's metric samples inside that interval, one
    per ``tick_s`` seconds (the scrape period of a metrics pipeline), oldest first.
    """

    model: str
    now_s: float
    interval_s: float
    replicas_ready: int
    replicas_loading: int
    replicas_draining: int
    target_replicas: int
    arrival_rate_per_s: float
    completion_rate_per_s: float
    in_flight: int
    in_flight_mean: float
    queue_len: int
    utilization: float
    kv_usage: float
    ttft_p99_s: float
    slo_attainment: float
    capacity_rps_per_replica: float
    tick_s: float = 1.0
    tick_in_flight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tick_arrivals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    replicas_noticed: int = 0  #: READY or LOADING replicas on nodes told they will be preempted (spot)
    #: ``aggregated``, or the pool of a disaggregated model it describes (``prefill`` / ``decode``).
    #: Both pools of a model see the model's arrivals, completions and latencies (``arrival_rate_per_s``,
    #: ``completion_rate_per_s``, ``ttft_p99_s``, ``tpot_p99_s``, ``slo_attainment`` and the token means
    #: below); replica counts, ``in_flight``, ``queue_len``, ``utilization``, ``kv_usage`` and
    #: ``kv_transfers_pending`` are the pool's own (a request is in flight at the prefill pool until
    #: its first token, then at the decode pool)
    role: str = "aggregated"
    #: TPOT p99 and mean of the interval's completions with more than one output token, 0 if none
    #: (s/token); TTFT mean of its completions, 0 if none (s)
    tpot_p99_s: float = 0.0
    tpot_mean_s: float = 0.0
    ttft_mean_s: float = 0.0
    #: mean prompt / output tokens of the interval's completions, 0 if none (tokens): the ISL and OSL
    #: a planner such as Dynamo's reads from its metrics
    prompt_tokens_mean: float = 0.0
    output_tokens_mean: float = 0.0
    #: disaggregated pools: KV caches a prefill pool holds for transfers (handed off, not yet read by
    #: the decode replica) or transfers into a decode pool not yet arrived (requests); 0 otherwise
    kv_transfers_pending: int = 0
    #: the deployment's :class:`~envs.sim.profile.ServingProfile` (one replica's prefill and decode
    #: curves, what a planner's pre-deployment profiling gives it); None for a service-time model
    profile: ServingProfile | None = None

    @property
    def replicas_provisioned(self) -> int:
        """Replicas that exist and are billed but are not draining (ready + loading)."""
        return self.replicas_ready + self.replicas_loading


@dataclass(frozen=True)
class RequestView:
    """An arrived request, as a router sees it (sizes in tokens, times in seconds)."""

    id: int
    model: int  #: index into the scenario's models
    request_class: int  #: index into the workload's classes
    arrival_s: float
    prompt_tokens: int
    session: int  #: session key (requests of one conversation share it)


@dataclass(frozen=True)
class ReplicaView:
    """One replica's state at an instant (counts of requests, sizes in tokens, rates per second)."""

    id: int
    model: int
    state: str  #: "loading", "ready", "draining" or "released"
    gpu_type: str
    node: int
    queued: int  #: requests in its own queue
    running: int  #: requests in its running batch
    max_batch: int
    kv_capacity_tokens: int
    kv_reserved_tokens: int  #: reserve: prompt + output of its running requests; paged: KV held by them
    speed_rps: float  #: capacity: saturation throughput of its GPU type (requests/s)
    latency_ewma_s: float  #: EWMA of its completed requests' end-to-end latency; -1 before the first
    allocated_at_s: float
    ready_at_s: float  #: inf while loading
    #: paged engine (``models[].kv_policy: paged``; 0 otherwise): KV blocks free or held only by
    #: the prefix cache (evictable), cached prefix entries, preemptions so far, and the fraction
    #: of the prompt tokens it admitted that came from its prefix cache
    kv_blocks_free: int = 0
    prefix_cache_entries: int = 0
    preemptions: int = 0
    prefix_hit_rate: float = 0.0
    #: disaggregated serving: ``prefill`` or ``decode`` (else ``aggregated``), KV caches it holds for
    #: transfers (prefill) and KV caches on their way to it (decode)
    role: str = "aggregated"
    kv_transfers_out: int = 0
    kv_transfers_in: int = 0

    @property
    def in_flight(self) -> int:
        """Requests queued, running, or (decode replica) admitted with their KV cache still in transfer:
        what the compiled routers count (``envs.sim.routing``)."""
        return self.queued + self.running + self.kv_transfers_in

    @property
    def kv_free_tokens(self) -> int:
        return self.kv_capacity_tokens - self.kv_reserved_tokens


@dataclass(frozen=True)
class RequestTable:
    """Every arrived request, one read-only column each (times in s: NaN until it happens; tokens).

    Output lengths are the workload's and are known only after the request
    finished; a router or policy that reads ``output_tokens`` of a waiting
    request is using an oracle (documented here, not prevented).
    """

    arrival_s: np.ndarray
    admitted_s: np.ndarray  #: NaN until admitted into a batch
    first_token_s: np.ndarray
    finished_s: np.ndarray  #: completion or drop time
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    model: np.ndarray
    request_class: np.ndarray
    replica: np.ndarray  #: replica it was routed to; -1: central queue or not yet routed
    state: np.ndarray  #: codes into ``state_names``
    state_names: tuple[str, ...] = ("future", "queued", "running", "done", "dropped", "transfer")
    #: why a dropped request was dropped, codes into ``drop_reason_names`` (meaningless otherwise)
    drop_reason: np.ndarray | None = None
    drop_reason_names: tuple[str, ...] = ("timeout", "context_length", "kv_capacity", "failure")
    #: paged engine: prompt tokens served from the prefix cache at first admission, times preempted
    cached_prompt_tokens: np.ndarray | None = None
    preemptions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    def is_state(self, name: str) -> np.ndarray:
        """Boolean mask of the requests in state ``name`` (one of :attr:`state_names`)."""
        return self.state == self.state_names.index(name)
