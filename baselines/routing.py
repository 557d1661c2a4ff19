"""Classical request routers (load balancers), registered with the core's router API.

Each router is a small class with its registry name, the published source of
its rule and its validated parameters; ``kernel_spec()`` tells the compiled
event loop which :class:`~envs.sim.routing.Rule` to run and, for score-based
routers, which compiled score function (:func:`~envs.sim.routing.score_function`:
lowest score wins, ties to the lowest replica id). A user's score router is exactly
as fast as ``shortest_expected_delay``; ``least_connections`` runs the loop's
``LEAST_IN_FLIGHT`` rule, an index over the replicas' counts in flight that picks
what ``in_flight_score`` would (O(log n) per decision instead of a scan).
:class:`RouterPolicy` evaluates a router through ``InferGym/Routing-v0``'s
action space by asking the engine what the same rule picks for the waiting
request (``Simulator.choose_replica``), so both give the same KPIs.

All routers choose among the READY replicas of the request's model, visited
in increasing replica id; ties go to the lowest id. "In flight" of a replica
is its own queue plus its running batch. Deviations from the cited systems are
stated in each class docstring and in ``docs/baselines-routing.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from baselines.base import ParametrizedController
from envs.sim.errors import fail
from envs.sim.routing import ROUTERS, RouterSpec, Rule, ScoreFunction, score_function
from envs.sim.schema import param, validate

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser (Steele, Lea, Flood, OOPSLA 2014) the engine hashes sessions and replicas with."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


# --------------------------------------------------------------------------------------------------
# Parameters, interface, registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterParams:
    """Base of every router's frozen parameters; ``path`` only names fields in error messages."""

    path: str = field(default="routing", kw_only=True, repr=False, compare=False)


@dataclass(frozen=True)
class AffinityParams(RouterParams):
    """``load_bound_eps``: a replica takes a request only while its in-flight count + 1 stays within
    ``ceil((1 + eps) x (total in flight + 1) / replicas)``.

    Default 0.25: the imbalance factor 1.25 used by the bounded-load balancers
    of liblb (``bounded``: "imbalance_constant ... 1.25") and brpc
    (``c_murmurhash_bl``: ``chash_bounded_load_factor`` 1.25).
    """

    load_bound_eps: float = param(0.25, ge=0, doc="allowed load above the mean, as a fraction")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class PrefixAwareParams(RouterParams):
    """SGLang's cache-aware router's three knobs, defaults as its router documents them."""

    cache_threshold: float = param(
        0.3, ge=0, le=1, doc="prefix match / prompt above which the best match wins"
    )
    balance_abs_threshold: float = param(
        64, ge=0, doc="in-flight spread (max - min) beyond which load decides"
    )
    balance_rel_threshold: float = param(1.5, ge=1, doc="and max > this x min")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class KvAwareParams(RouterParams):
    """Weights of llm-d's scorers (its default scheduling profile: prefix 3, queue 2, KV utilisation 2)."""

    prefix_weight: float = param(3.0, ge=0, doc="weight of the prefix-cache scorer (matched / prompt tokens)")
    queue_weight: float = param(
        2.0, ge=0, doc="weight of the queue scorer ((max - q) / (max - min) in flight)"
    )
    kv_weight: float = param(
        2.0, ge=0, doc="weight of the KV-cache utilisation scorer (1 - KV used / capacity)"
    )

    def __post_init__(self) -> None:
        validate(self)


class Router(ParametrizedController):
    """A request router: a registry name, a source, frozen ``params`` and the rule the loop runs.

    Subclasses set ``rule`` (and ``score`` for :attr:`Rule.SCORE`); parametrised
    ones override :meth:`kernel_spec`.
    """

    name: ClassVar[str]
    source: ClassVar[str]
    rule: ClassVar[Rule]
    score: ClassVar[ScoreFunction | None] = None
    params_cls: ClassVar[type[RouterParams]] = RouterParams

    config_key: ClassVar[str] = "routing"

    def kernel_spec(self) -> RouterSpec:
        """The rule and score function the event loop runs for this router."""
        return RouterSpec(self.rule, self.score)

    def engine_spec(self) -> str | dict[str, Any]:
        """What ``Simulator(router=...)`` and a scenario's ``routing`` entry take for this router."""
        values = {k: getattr(self.params, k) for k in self.param_names()}
        return {"kind": self.name, **values} if values else self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def _register(cls: type[Router]) -> type[Router]:
    ROUTERS.register(cls.name, cls)
    return cls


def build_router(spec: Any, path: str = "routing") -> Any:
    """A router object from a registry name, a ``{"kind": name, **params}`` mapping, or pass one through.

    Unknown kinds, unknown parameters and out-of-range values raise
    :class:`ConfigError` naming ``<path>.<param>`` and the bad value.
    """
    return ROUTERS.build(spec, path)


def make_router(spec: Any, path: str = "routing") -> Any:
    """The engine spec for ``Simulator(router=...)`` from a name, mapping or router object (validated)."""
    r = build_router(spec, path)
    return r.engine_spec() if hasattr(r, "engine_spec") else r


# --------------------------------------------------------------------------------------------------
# Score functions of the score-based routers (compiled; see envs.sim.routing.SCORE_ARGS)
# --------------------------------------------------------------------------------------------------
# ruff: noqa: ARG001  (a score function takes every feature, whether it uses it or not)


@score_function(cache=True)
def in_flight_score(in_flight, queued, running, max_batch, kv_reserved_tokens, kv_capacity_tokens, speed_rps,
                    latency_ewma_s, prompt_tokens, cached_prefix_tokens):  # fmt: skip
    return float(in_flight)


@score_function(cache=True)
def least_time_score(in_flight, queued, running, max_batch, kv_reserved_tokens, kv_capacity_tokens, speed_rps,
                     latency_ewma_s, prompt_tokens, cached_prefix_tokens):  # fmt: skip
    if latency_ewma_s < 0:
        return -1.0 / (1.0 + in_flight)
    return latency_ewma_s * (in_flight + 1.0)


@score_function(cache=True)
def min_load_score(in_flight, queued, running, max_batch, kv_reserved_tokens, kv_capacity_tokens, speed_rps,
                   latency_ewma_s, prompt_tokens, cached_prefix_tokens):  # fmt: skip
    return in_flight / speed_rps


@score_function(cache=True)
def expected_delay_score(in_flight, queued, running, max_batch, kv_reserved_tokens, kv_capacity_tokens,
                         speed_rps, latency_ewma_s, prompt_tokens, cached_prefix_tokens):  # fmt: skip
    return (in_flight + 1.0) / speed_rps


@score_function(cache=True)
def prefix_aware_score(in_flight, queued, running, max_batch, kv_reserved_tokens, kv_capacity_tokens, speed_rps,
                       latency_ewma_s, prompt_tokens, cached_prefix_tokens, min_in_flight, max_in_flight,
                       max_cached_prefix_tokens, prefix_cache_tokens, param0, param1, param2):  # fmt: skip
    # param0 = cache_threshold, param1 = balance_abs_threshold, param2 = balance_rel_threshold
    if max_in_flight - min_in_flight > param1 and max_in_flight > param2 * min_in_flight:
        return float(in_flight)  # imbalanced: the least loaded
    if max_cached_prefix_tokens > param0 * prompt_tokens:
        return -float(cached_prefix_tokens)  # the longest cached prefix
    # the smallest cache, counting the prompts in flight there as cached (SGLang's router inserts a
    # request into the replica's tree when it routes it, before the replica computes it)
    return float(prefix_cache_tokens) + in_flight * float(prompt_tokens)


@score_function(cache=True)
def kv_aware_score(in_flight, queued, running, max_batch, kv_reserved_tokens, kv_capacity_tokens, speed_rps,
                   latency_ewma_s, prompt_tokens, cached_prefix_tokens, min_in_flight, max_in_flight,
                   max_cached_prefix_tokens, prefix_cache_tokens, param0, param1, param2):  # fmt: skip
    # param0..2 = prefix, queue and KV weights; each scorer is in [0, 1], higher is better
    prefix = cached_prefix_tokens / prompt_tokens if prompt_tokens > 0 else 0.0
    spread = max_in_flight - min_in_flight
    queue = (max_in_flight - in_flight) / spread if spread > 0 else 1.0
    kv = 1.0 - kv_reserved_tokens / kv_capacity_tokens if kv_capacity_tokens > 0 else 0.0
    return -(param0 * prefix + param1 * queue + param2 * kv)


# --------------------------------------------------------------------------------------------------
# The routers
# --------------------------------------------------------------------------------------------------


@_register
class RandomRouter(Router):
    """Uniformly random READY replica, from the request's pre-drawn uniform ``U1``: the ``floor(U1 n)``-th."""

    name = "random"
    source = "nginx ngx_http_upstream_module, directive `random` (without `two`); Envoy RANDOM load balancer"
    rule = Rule.RANDOM


@_register
class RoundRobinRouter(Router):
    """Cycle over the READY replicas: the ``(c mod n)``-th, ``c`` = requests of the model routed so far.

    nginx's default balancing. The counter is per model and counts only
    requests that found a READY replica; when the READY set changes the cycle
    continues over the new set (nginx rebuilds its peer list likewise).
    """

    name = "round_robin"
    source = "nginx ngx_http_upstream_module: weighted round-robin is the default method (all weights 1 here)"
    rule = Rule.ROUND_ROBIN


@_register
class WeightedRoundRobinRouter(Router):
    """nginx's smooth weighted round robin with weight = replica capacity (saturation req/s of its GPU type).

    Each pick adds every READY replica's weight to its current weight, takes
    the largest (lowest id on ties) and subtracts the total weight from it, so
    over many requests each replica gets a share proportional to its weight,
    interleaved. A replica's current weight starts at 0 when it is created.
    """

    name = "weighted_round_robin"
    source = (
        "nginx ngx_http_upstream_module `server ... weight=`; smooth weighted round-robin "
        "(ngx_http_upstream_round_robin.c, ngx_http_upstream_get_peer, nginx 1.3.1+)"
    )
    rule = Rule.WEIGHTED_ROUND_ROBIN


@_register
class LeastConnectionsRouter(Router):
    """Fewest requests in flight (queued + running; at a decode replica also the requests whose KV cache
    is in transfer to it, as the connection is open from the moment the request is sent there).

    nginx's ``least_conn`` counts active connections, weighted by ``weight``,
    and breaks ties by weighted round robin; here weights are equal and ties go
    to the lowest replica id. The loop keeps an index of the counts
    (``Rule.LEAST_IN_FLIGHT``): the choice of a scan with ``in_flight_score``, at
    O(log n) per decision.
    """

    name = "least_connections"
    source = "nginx ngx_http_upstream_module, directive `least_conn`"
    rule = Rule.LEAST_IN_FLIGHT


@_register
class LeastTimeRouter(Router):
    """Lowest ``EWMA latency x (in flight + 1)``; replicas with no latency sample yet come first.

    NGINX Plus ``least_time`` picks the least average response time and least
    active connections; its averaging is not documented. Here the average is an
    EWMA (weight 0.2 on the newest sample, a project choice) of the end-to-end
    latency of the requests the replica completed; among unmeasured replicas the
    one with fewest in flight wins (score ``-1 / (1 + in flight)``).
    """

    name = "least_time"
    source = "NGINX Plus ngx_http_upstream_module, directive `least_time` (commercial subscription)"
    rule = Rule.SCORE
    score = least_time_score


@_register
class MinLoadRouter(Router):
    """Lowest ``in flight / capacity``: LVS weighted least-connection (``C_i / W_i``) with W = capacity (req/s)."""

    name = "min_load"
    source = "Linux Virtual Server `wlc` scheduler (ipvsadm(8): weighted least-connection, C_i / W_i)"
    rule = Rule.SCORE
    score = min_load_score


@_register
class ShortestExpectedDelayRouter(Router):
    """Lowest ``(in flight + 1) / capacity``: the expected delay of the new request at that replica.

    Unlike ``min_load``, the ``+ 1`` makes an idle fast replica beat an idle
    slow one, which matters on heterogeneous GPUs.
    """

    name = "shortest_expected_delay"
    source = (
        "Linux Virtual Server `sed` scheduler, (C_i + 1) / U_i (LVS knowledge base, 'Shortest Expected Delay "
        "Scheduling'); analysed as SED routing by Selen, Adan, Kapodistria, van Leeuwaarden, 'Steady-state "
        "analysis of shortest expected delay routing', Queueing Systems 84, 2016"
    )
    rule = Rule.SCORE
    score = expected_delay_score


@_register
class PowerOfTwoRouter(Router):
    """Two distinct uniformly random READY replicas (from the request's ``U1``, ``U2``); fewer in flight wins.

    Ties go to the first pick. The second pick is uniform over the other
    ``n - 1`` replicas; with one READY replica it is the only choice.
    """

    name = "power_of_two"
    source = (
        "Mitzenmacher, 'The Power of Two Choices in Randomized Load Balancing', IEEE TPDS 12(10), 2001; "
        "nginx `random two least_conn`"
    )
    rule = Rule.POWER_OF_TWO


@_register
class AffinityRouter(Router):
    """Session affinity by consistent hashing with bounded loads.

    Replicas sit on a ring at ``splitmix64(id + 1) >> 1``; a request's session
    (one of 1024, drawn uniformly) hashes to ``splitmix64(session)`` and goes to
    the first replica clockwise whose in-flight count + 1 stays within
    ``ceil((1 + eps) (total in flight + 1) / n)``; if none does, to its ring
    successor. One point per replica (no virtual nodes).
    """

    name = "affinity"
    source = (
        "Mirrokni, Thorup, Zadimoghaddam, 'Consistent Hashing with Bounded Loads', SODA 2018; "
        "HAProxy `hash-balance-factor`"
    )
    rule = Rule.CONSISTENT_HASH
    params_cls = AffinityParams
    params: AffinityParams

    def kernel_spec(self) -> RouterSpec:
        return RouterSpec(self.rule, None, load_bound_eps=self.params.load_bound_eps)


@_register
class CentralQueueRouter(Router):
    """Late binding: every request joins its model's central queue; a READY replica pulls from it when it
    has room at an iteration boundary (an idle one is woken at once, lowest id first).
    """

    name = "central_queue"
    source = (
        "late binding: Ousterhout, Wendell, Zaharia, Stoica, 'Sparrow: Distributed, Low Latency "
        "Scheduling', SOSP 2013; one queue for c servers (M/M/c) versus c separate queues"
    )
    rule = Rule.CENTRAL_QUEUE


@_register
class PrefixAwareRouter(Router):
    """SGLang's cache-aware routing rule over the replicas' prefix caches.

    If the load is imbalanced, ``max - min > balance_abs_threshold`` and ``max > balance_rel_threshold
    x min`` (requests in flight), the least loaded replica; else, if the longest cached prefix of the
    request on any replica exceeds ``cache_threshold`` of its prompt, the replica holding it; else
    the replica with the smallest prefix cache, counting each request in flight there as one more
    prompt of this size (SGLang's router adds a request to the replica's tree when it routes it).
    Ties go to the lowest id.

    Deviation: SGLang's router matches against its own radix tree of the requests it routed (an
    approximation of the workers' caches, pruned by ``eviction_interval_secs``); here it reads the
    replicas' actual caches, as a router fed by KV-cache events does (NVIDIA Dynamo's KV router,
    SMG's cache mirror). Prefix matches exist only for workloads with prompt block hashes (Mooncake
    traces, ``sessions``) on ``kv_policy: paged`` replicas; otherwise the rule is least loaded when
    imbalanced and lowest id / smallest cache otherwise.
    """

    name = "prefix_aware"
    source = (
        "SGLang model gateway (sgl-router) `cache_aware` policy: docs 'SGLang Model Gateway', options "
        "--cache-threshold 0.3, --balance-abs-threshold 64, --balance-rel-threshold 1.5 "
        "(sgl-router/src/policies/cache_aware.rs)"
    )
    rule = Rule.SCORE
    score = prefix_aware_score
    params_cls = PrefixAwareParams
    params: PrefixAwareParams

    def kernel_spec(self) -> RouterSpec:
        p = self.params
        return RouterSpec(self.rule, self.score, params=(p.cache_threshold, p.balance_abs_threshold,
                                                        p.balance_rel_threshold))  # fmt: skip


@_register
class KvAwareRouter(Router):
    """llm-d's weighted scorers: the highest ``3 prefix + 2 queue + 2 kv`` wins (weights are parameters).

    ``prefix``: the request's cached prefix on the replica / its prompt (llm-d prefix-cache scorer);
    ``queue``: ``(max - in flight) / (max - min)`` over the model's READY replicas, 1 when all are equal
    (llm-d queue scorer, min-max normalised; it counts waiting requests, here queued + running);
    ``kv``: ``1 - KV held / KV capacity`` (llm-d KV-cache utilisation scorer). Ties to the lowest id.
    """

    name = "kv_aware"
    source = (
        "llm-d inference scheduler: prefix-cache-scorer, queue-scorer, kv-cache-utilization-scorer with "
        "the default profile's weights 3 / 2 / 2 (llm-d/llm-d-inference-scheduler, docs/architecture.md); "
        "NVIDIA Dynamo KV router's overlap-vs-load cost (docs/architecture/kv_cache_routing.md)"
    )
    rule = Rule.SCORE
    score = kv_aware_score
    params_cls = KvAwareParams
    params: KvAwareParams

    def kernel_spec(self) -> RouterSpec:
        p = self.params
        return RouterSpec(self.rule, self.score, params=(p.prefix_weight, p.queue_weight, p.kv_weight))


# --------------------------------------------------------------------------------------------------
# Policy adapter for InferGym/Routing-v0
# --------------------------------------------------------------------------------------------------


class RouterPolicy:
    """A classical router evaluated as a policy through ``InferGym/Routing-v0``.

    An :class:`agents.Policy` by shape (baselines import neither agents nor the
    environments): ``predict(obs, env)`` (or ``act(env)``, also its
    ``__call__``) ignores the observation and ``deterministic``, asks the
    router which replica the engine's router of the same name would pick for
    the env's waiting request (reading ``env.sim``), and returns the slot that
    holds it (``env.slot_replicas``). The env hands over only requests whose
    model has a READY replica, as the engine's routers only count requests
    with a choice, so with no scaling (``scaler="static"``) the episode equals
    ``Simulator(..., router=name)`` run with the same seed, and with the
    scenario's scaler it equals :func:`envs.sim.run_scenario` (the env scales at
    the same control boundaries). The router's own
    state is reset whenever the env starts a new episode (a new simulator).

    ``central_queue`` cannot be expressed in Routing-v0's action space (every
    slot is a replica; a masked action goes to the central queue but is charged
    as invalid), so it is refused.

    Args:
        spec: a router name, ``{"kind": ..., **params}`` mapping or :class:`Router`.
        path: key path named in error messages.
    """

    def __init__(self, spec: str | Mapping[str, Any] | Router, path: str = "policy") -> None:
        self.router = build_router(spec, path)
        if not hasattr(self.router, "kernel_spec"):
            raise fail(path, self.router, "must be a router the event loop runs (with kernel_spec())")
        self.spec = self.router.kernel_spec()
        if self.spec.rule in (Rule.CENTRAL_QUEUE, Rule.EXTERNAL):
            raise fail(
                path,
                self.spec.rule.name.lower(),
                "cannot be run through Routing-v0's action space (every action is a replica); "
                "run it in the engine with Simulator(router='central_queue')",
            )
        self.name = getattr(self.router, "name", type(self.router).__name__)
        self._sim: Any = None

    def reset(self, seed: int | None = None) -> None:
        """Forget the router's state (also done when the env starts a new episode; its round-robin
        counters live in each new episode's simulator). ``seed`` is unused: the random rules read the
        uniforms the simulator drew with each request."""
        self.router.reset()

    def act(self, env: Any) -> int:
        """The slot the in-engine router would choose for the env's waiting request."""
        base = getattr(env, "unwrapped", env)
        sim = base.sim
        if sim is None:
            raise RuntimeError("RouterPolicy: reset the env first")
        if sim is not self._sim:
            self._sim = sim
            self.reset()
        i = base.pending_request
        if i is None:
            return 0  # episode over: the env ignores the action
        r = sim.choose_replica(self.spec)
        slots = base.slot_replicas
        hit = np.flatnonzero(slots == r)
        if r < 0 or len(hit) == 0:
            raise RuntimeError(
                f"RouterPolicy({self.name!r}): replica {r} is in no slot of {slots.tolist()} "
                "(make the env with max_slots >= the model's max_replicas)"
            )
        return int(hit[0])

    def predict(self, obs: Any, env: Any, deterministic: bool = True) -> int:
        """The action for the env's current state (``obs`` is not used)."""
        return self.act(env)

    __call__ = act

    def __repr__(self) -> str:
        return f"RouterPolicy({self.router!r})"
