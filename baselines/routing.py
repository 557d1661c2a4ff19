"""Classical request routers (load balancers), as the engine runs them and as policies for Routing-v0.

The simulator runs its routers inside the compiled event loop
(:func:`envs.sim.kernel.route`); a scenario names one in its ``routing`` entry.
This module is the registry of those routers: one small class per router with
its name, the published source of its rule, its validated parameters and a
Python re-implementation of its decision (:meth:`Router.choose`), which reads
the simulator's arrays and changes nothing. :func:`make_router` turns a
scenario-style spec into what ``Simulator(router=...)`` takes, and
:class:`RouterPolicy` evaluates a router through ``InferGym/Routing-v0``'s
action space: for the same seed and no scaling it routes every request to the
replica the in-kernel router picks, so both give the same KPIs.

All routers choose among the READY replicas of the request's model, visited
in increasing replica id (the engine keeps ``mrep[m]`` sorted); ties go to the
lowest id. "In flight" of a replica is its own queue plus its running batch.
Deviations from the cited systems are stated in each class docstring and in
``docs/baselines-routing.md``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from baselines.base import ParametrizedController
from envs.sim import kernel as K
from envs.sim.errors import check_keys, check_number, fail, split_controller_spec

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

    load_bound_eps: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "load_bound_eps",
            float(check_number(f"{self.path}.load_bound_eps", self.load_bound_eps, ge=0)),
        )


class Router(ParametrizedController, abc.ABC):
    """A request router: a registry name, a source, frozen ``params`` and a decision rule.

    ``choose(sim, i)`` returns the replica id the engine's router of the same
    name picks for arrived request ``i`` (or -1: the model's central queue),
    reading the simulator's arrays without changing them. Stateful routers
    (round robin, weighted round robin) keep their own state, which ``reset``
    clears; the engine keeps the same state in its arrays.
    """

    name: ClassVar[str]
    source: ClassVar[str]
    params_cls: ClassVar[type[RouterParams]] = RouterParams

    config_key: ClassVar[str] = "routing"

    def engine_spec(self) -> str | dict[str, Any]:
        """What ``Simulator(router=...)`` and a scenario's ``routing`` entry take for this router."""
        values = {k: getattr(self.params, k) for k in self.param_names()}
        return {"kind": self.name, **values} if values else self.name

    @abc.abstractmethod
    def choose(self, sim: Any, i: int) -> int:
        """Replica id for arrived request ``i`` of simulator ``sim`` (-1: central queue)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


ROUTERS: dict[str, type[Router]] = {}


def _register(cls: type[Router]) -> type[Router]:
    ROUTERS[cls.name] = cls
    return cls


def _ready(sim: Any, m: int) -> list[int]:
    """READY replicas of model ``m`` in increasing id (the engine's candidate order)."""
    reps = sim.mrep[m, : sim.mn[m]]
    return [int(r) for r in reps[sim.pi[reps, K.Q_STATE] == K.REP_READY]]


def _in_flight(sim: Any, r: int) -> int:
    return int(sim.qn[sim.n_models + r] + sim.pi[r, K.Q_NRUN])


def _model(sim: Any, i: int) -> int:
    return int(sim.ri[i, K.R_MODEL])


def build_router(spec: str | Mapping[str, Any] | Router, path: str = "routing") -> Router:
    """A :class:`Router` from a registry name, a ``{"kind": name, **params}`` mapping, or pass one through.

    Unknown kinds, unknown parameters and out-of-range values raise
    :class:`ConfigError` naming ``<path>.<param>`` and the bad value.
    """
    if isinstance(spec, Router):
        return spec
    cls, params = split_controller_spec(spec, path, ROUTERS, "router")
    check_keys(path, params, cls.param_names())
    return cls(path=path, **params)


def make_router(spec: str | Mapping[str, Any] | Router, path: str = "routing") -> str | dict[str, Any]:
    """The engine name / params for ``Simulator(router=...)`` from a name, mapping or :class:`Router`.

    ``"external"`` (decisions come from outside the engine, as in
    ``InferGym/Routing-v0``) is passed through. Errors as :func:`build_router`.
    """
    if spec == "external" or (
        isinstance(spec, Mapping) and spec.get("kind") == "external" and len(spec) == 1
    ):
        return "external"
    return build_router(spec, path).engine_spec()


# --------------------------------------------------------------------------------------------------
# The routers
# --------------------------------------------------------------------------------------------------


@_register
class RandomRouter(Router):
    """Uniformly random READY replica, from the request's pre-drawn uniform ``U1``: the ``floor(U1 n)``-th."""

    name = "random"
    source = "nginx ngx_http_upstream_module, directive `random` (without `two`); Envoy RANDOM load balancer"

    def choose(self, sim: Any, i: int) -> int:
        cands = _ready(sim, _model(sim, i))
        n = len(cands)
        if n == 0:
            return -1
        return cands[min(int(sim.rf[i, K.R_U1] * n), n - 1)]


@_register
class RoundRobinRouter(Router):
    """Cycle over the READY replicas: the ``(c mod n)``-th, ``c`` = requests of the model routed so far.

    nginx's default balancing. The counter is per model and counts only
    requests that found a READY replica; when the READY set changes the cycle
    continues over the new set (nginx rebuilds its peer list likewise).
    """

    name = "round_robin"
    source = "nginx ngx_http_upstream_module: weighted round-robin is the default method (all weights 1 here)"

    def reset(self) -> None:
        self.counter: dict[int, int] = {}

    def choose(self, sim: Any, i: int) -> int:
        m = _model(sim, i)
        cands = _ready(sim, m)
        if not cands:
            return -1
        c = self.counter.get(m, 0)
        self.counter[m] = c + 1
        return cands[c % len(cands)]


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

    def reset(self) -> None:
        self.current: dict[int, float] = {}

    def choose(self, sim: Any, i: int) -> int:
        cands = _ready(sim, _model(sim, i))
        if not cands:
            return -1
        total = 0.0
        best = -1
        cur = self.current
        for r in cands:
            w = float(sim.pf[r, K.P_SPEED])
            cur[r] = cur.get(r, 0.0) + w
            total += w
            if best < 0 or cur[r] > cur[best]:
                best = r
        cur[best] -= total
        return best


class _ScoreRouter(Router):
    """Lowest score wins; ties to the lowest replica id."""

    @abc.abstractmethod
    def score(self, sim: Any, r: int) -> float:
        """The router's score of READY replica ``r`` (lower is better)."""

    def choose(self, sim: Any, i: int) -> int:
        best, bv = -1, math.inf
        for r in _ready(sim, _model(sim, i)):
            v = self.score(sim, r)
            if v < bv:
                best, bv = r, v
        return best


@_register
class LeastConnectionsRouter(_ScoreRouter):
    """Fewest requests in flight (queued + running).

    nginx's ``least_conn`` counts active connections, weighted by ``weight``,
    and breaks ties by weighted round robin; here weights are equal and ties go
    to the lowest replica id.
    """

    name = "least_connections"
    source = "nginx ngx_http_upstream_module, directive `least_conn`"

    def score(self, sim: Any, r: int) -> float:
        return float(_in_flight(sim, r))


@_register
class LeastTimeRouter(_ScoreRouter):
    """Lowest ``EWMA latency x (in flight + 1)``; replicas with no latency sample yet come first.

    NGINX Plus ``least_time`` picks the least average response time and least
    active connections; its averaging is not documented. Here the average is an
    EWMA (weight 0.2 on the newest sample, a project choice) of the end-to-end
    latency of the requests the replica completed; among unmeasured replicas the
    one with fewest in flight wins (score ``-1 / (1 + in flight)``).
    """

    name = "least_time"
    source = "NGINX Plus ngx_http_upstream_module, directive `least_time` (commercial subscription)"

    def score(self, sim: Any, r: int) -> float:
        load = _in_flight(sim, r)
        ew = float(sim.pf[r, K.P_EWMA])
        return -1.0 / (1.0 + load) if ew < 0 else ew * (load + 1.0)


@_register
class MinLoadRouter(_ScoreRouter):
    """Lowest ``in flight / capacity``: LVS weighted least-connection (``C_i / W_i``) with W = capacity (req/s)."""

    name = "min_load"
    source = "Linux Virtual Server `wlc` scheduler (ipvsadm(8): weighted least-connection, C_i / W_i)"

    def score(self, sim: Any, r: int) -> float:
        return _in_flight(sim, r) / float(sim.pf[r, K.P_SPEED])


@_register
class ShortestExpectedDelayRouter(_ScoreRouter):
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

    def score(self, sim: Any, r: int) -> float:
        return (_in_flight(sim, r) + 1.0) / float(sim.pf[r, K.P_SPEED])


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

    def choose(self, sim: Any, i: int) -> int:
        cands = _ready(sim, _model(sim, i))
        n = len(cands)
        if n == 0:
            return -1
        ka = min(int(sim.rf[i, K.R_U1] * n), n - 1)
        a = cands[ka]
        if n == 1:
            return a
        j = min(int(sim.rf[i, K.R_U2] * (n - 1)), n - 2)
        b = cands[j if j < ka else j + 1]
        return a if _in_flight(sim, a) <= _in_flight(sim, b) else b


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
    params_cls = AffinityParams
    params: AffinityParams

    def choose(self, sim: Any, i: int) -> int:
        cands = _ready(sim, _model(sim, i))
        n = len(cands)
        if n == 0:
            return -1
        loads = [_in_flight(sim, r) for r in cands]
        total = 1 + sum(loads)
        bound = math.ceil((1.0 + self.params.load_bound_eps) * total / n)
        key = splitmix64(int(sim.ri[i, K.R_SESSION]))
        ring = sorted(range(n), key=lambda k: int(sim.pi[cands[k], K.Q_HASH]))
        start = 0
        while start < n and int(sim.pi[cands[ring[start]], K.Q_HASH]) < key:
            start += 1
        for step in range(n):
            k = ring[(start + step) % n]
            if loads[k] + 1 <= bound:
                return cands[k]
        return cands[ring[start % n]]


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

    def choose(self, sim: Any, i: int) -> int:
        return -1


# --------------------------------------------------------------------------------------------------
# Policy adapter for InferGym/Routing-v0
# --------------------------------------------------------------------------------------------------


class RouterPolicy:
    """A classical router evaluated as a policy through ``InferGym/Routing-v0``.

    ``predict(obs, env)`` (or ``act(env)``) ignores the observation, asks the
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
        if self.router.name == "central_queue":
            raise fail(
                path,
                "central_queue",
                "cannot be run through Routing-v0's action space (every action is a replica); "
                "run it in the engine with Simulator(router='central_queue')",
            )
        self.name = self.router.name
        self._sim: Any = None

    def reset(self) -> None:
        """Forget the router's state (done automatically at each new episode)."""
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
        r = self.router.choose(sim, i)
        slots = base.slot_replicas
        hit = np.flatnonzero(slots == r)
        if r < 0 or len(hit) == 0:
            raise RuntimeError(
                f"RouterPolicy({self.name!r}): replica {r} is in no slot of {slots.tolist()} "
                "(make the env with max_slots >= the model's max_replicas)"
            )
        return int(hit[0])

    def predict(self, obs: Any, env: Any) -> int:
        """The action for the env's current state (``obs`` is not used)."""
        return self.act(env)

    __call__ = act

    def __repr__(self) -> str:
        return f"RouterPolicy({self.router!r})"
