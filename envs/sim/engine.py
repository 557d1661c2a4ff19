"""The simulator: owns the engine state and is the only thing that changes it.

:class:`Simulator` turns a :class:`~envs.sim.config.Scenario` and a seed into
pre-generated request arrays, a GPU cluster (:class:`~envs.sim.cluster.ClusterState`)
and replica arrays, then moves time forward with :meth:`Simulator.advance`,
which runs the compiled event loop of :mod:`envs.sim.kernel`. Between calls
the caller (an environment, a controller loop, :func:`run_scenario`) reads
read-only views and issues commands: :meth:`set_target_replicas`,
:meth:`route` (for the ``external`` router) and placement decisions.

Replica lifecycle: LOADING (cold start; GPUs allocated and billed) -> READY ->
DRAINING (takes no new requests, finishes its queue and batch) -> RELEASED.
A cold start transfers the model's weights from remote storage, whose
bandwidth is shared equally by all transfers in progress, or from the node's
local disk when the node held the model within the cache TTL, then spends the
fixed ``startup_s``. Placement of a new replica asks the scenario's placer;
no room is a recorded placement failure, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from envs.sim import kernel as K
from envs.sim.batch import RoutingBuffers, route_step_at
from envs.sim.clock import ControlClock
from envs.sim.cluster import Allocation, ClusterState, Demand
from envs.sim.config import ModelDeployment, Scenario, load_scenario
from envs.sim.controllers import PLACERS, SCALERS
from envs.sim.errors import ConfigError, fail
from envs.sim.eventq import _release as release_replica
from envs.sim.faults import FaultInjector, fail_replicas
from envs.sim.faults import schedule as fault_schedule
from envs.sim.features import outstanding_work_s, routing_observation
from envs.sim.hardware import GpuType, default_max_batched_tokens
from envs.sim.perf import (
    RooflineParams,
    kv_capacity_tokens,
    replica_coefficients,
    saturation_throughput,
)
from envs.sim.profile import ServingProfile, deployment_profile
from envs.sim.reads import SimulatorReads
from envs.sim.requests import N_SESSIONS, build_requests  # noqa: F401  (N_SESSIONS: public name)
from envs.sim.routing import ROUTERS, PythonRouter, Router, RouterSpec, Rule, hash64, route_once
from envs.sim.state import EngineState, ReplicaRecord
from envs.sim.view import ModelLoad
from envs.sim.window import N_V, N_W, KpiWindow


def _generator(seed: Any) -> np.random.Generator:
    """The simulator's generator: a given ``numpy.random.Generator``, or one seeded by a non-negative int."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise fail("seed", seed, "must be a non-negative integer or a numpy.random.Generator")
    return np.random.default_rng(int(seed))


class Simulator(SimulatorReads):
    """A seeded discrete-event simulation of one scenario.

    Args:
        scenario: a Scenario, shipped name, YAML path or dict.
        seed: seed of the workload generator (or a ``numpy.random.Generator``).
        overrides: deep-merged into the scenario before validation.
        router / placer / scaler: override the scenario's controllers (name, dict or object).
        decode_router: override the scenario's ``decode_routing`` (a disaggregated model's decode
            stage): a name, dict or router object, or ``"external"`` (the loop stops at each
            handoff and :meth:`route` takes the decision, as for arrivals with ``router="external"``).
    """

    def __init__(
        self,
        scenario: Scenario | str | Mapping[str, Any] = "default",
        seed: int | np.random.Generator = 0,
        *,
        overrides: Mapping[str, Any] | None = None,
        router: Any = None,
        placer: Any = None,
        scaler: Any = None,
        decode_router: Any = None,
    ) -> None:
        self.scenario = sc = load_scenario(scenario, overrides)
        self.rng = _generator(seed)
        self.n_models = len(sc.models)
        self.n_classes = len(sc.workload.classes)
        self.per_request = sc.service.kind != "roofline"
        #: some model runs the paged engine (its KPIs: preemptions, prefix_hit_rate, ...)
        self.paged = any(d.kv_policy == "paged" for d in sc.models)
        self.router = ROUTERS.build(
            router if router is not None else sc.routing, "router" if router is not None else "routing"
        )
        if isinstance(self.router, Router):
            self.router_spec: RouterSpec = self.router.kernel_spec()
            self.python_router: PythonRouter | None = None
        else:  # a Python callable router: the loop stops at each arrival and asks it
            self.router_spec = RouterSpec(Rule.EXTERNAL)
            self.python_router = self.router
        self.router_name = str(getattr(self.router, "name", type(self.router).__name__))
        self._decode_router_arg = decode_router
        self.placer = PLACERS.build(placer if placer is not None else sc.placement, "placement")
        scaler_spec = scaler if scaler is not None else sc.scaling
        self.scalers = [SCALERS.build(scaler_spec, "scaling") for _ in range(self.n_models)]
        self._scalers_read_load = any(getattr(s, "reads_load", True) for s in self.scalers)
        self._roofline = self._roofline_params()
        self._build_cluster()
        rf, ri, self.slo, self.prefix = build_requests(sc, self.rng, self.per_request)
        self.n_requests = len(rf) - 1
        self._build_state(rf, ri)
        self.placement_failures = 0
        self.placement_failures_by_model = np.zeros(self.n_models, np.int64)
        self.window = KpiWindow()  #: the default KPI window (interval_kpis, step_views)
        self.faults: FaultInjector | None = None
        if sc.has_faults:
            # a generator of its own, spawned from the workload's: faults leave every other draw as it was
            fault_rng = self.rng.spawn(1)[0]
            pools, start = [], 0
            for pool in sc.nodes:
                pools.append(range(start, start + pool.count))
                start += pool.count
            scripted = [(f.at_s, f.pool, f.nodes, f.duration_s) for f in sc.faults]
            spot = [None if p.spot is None else (p.spot.preemptions_per_hour, p.spot.notice_s, p.spot.down_s)
                    for p in sc.nodes]  # fmt: skip
            crashes = [(d.replica_crash_per_hour, d.max_replicas) for d in sc.models]
            events = fault_schedule(fault_rng, sc.horizon_s, pools, [p.mtbf_s for p in sc.nodes],
                                    [p.mttr_s for p in sc.nodes], scripted, spot, crashes)  # fmt: skip
            self.faults = FaultInjector(events, sc.fault_policy == "requeue")
        for m, dep in enumerate(sc.models):
            for _ in range(dep.replicas):
                self._add_replica(m, None, warm=True)
        self.target = np.array([dep.replicas for dep in sc.models], np.int64)
        for s in self.scalers:
            s.reset()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A score function's entry point is an address in the process that compiled it: refresh it.
        self.__dict__.update(state)
        score = self.router_spec.score
        self.state.gi[K.I_SCORE_FN] = score.address if score is not None else 0
        spec = self.__dict__.get("decode_router_spec")
        if spec is not None:
            self.state.gi[K.I_D_SCORE_FN] = spec.score.address if spec.score is not None else 0

    # ------------------------------------------------------------------ construction

    def _roofline_params(self) -> RooflineParams:
        from envs.sim.perf import DEFAULT_ROOFLINE

        svc = self.scenario.service
        changes = {
            k: getattr(svc, k)
            for k in ("compute_efficiency", "bandwidth_efficiency", "iteration_overhead_s")
            if getattr(svc, k) is not None
        }
        if not changes:
            return DEFAULT_ROOFLINE
        import dataclasses

        return dataclasses.replace(DEFAULT_ROOFLINE, **changes)

    def _build_cluster(self) -> None:
        sc = self.scenario
        self.gpu_types = list(sc.gpu_types)
        names = [g.name for g in self.gpu_types]
        node_type, node_gpus = [], []
        cached = []
        price = []  # per node: the price factor of its pool (spot pools are cheaper)
        self._node_pool = [pool for pool in sc.nodes for _ in range(pool.count)]
        for pool in sc.nodes:
            for _ in range(pool.count):
                price.append(1.0 if pool.spot is None else pool.spot.price_factor)
                node_type.append(names.index(pool.gpu.name))
                node_gpus.append(pool.gpus_per_node)
                cached.append([m for c in pool.cached_models for m in sc.pools_of(c)])
        n = len(node_type)
        big = np.full(n, 1 << 40, np.int64)  # CPU and host memory are not modelled for LLM replicas
        self.cluster = ClusterState(
            names, np.array(node_type), np.array(node_gpus), big, big, n_models=self.n_models
        )
        for node, models in enumerate(cached):
            for m in models:
                self.cluster.touch_cache(node, m, 0.0)
        self._node_price = price
        self._demands: dict[tuple[int, int], Demand] = {}  # (model, GPU type) -> one replica's demand
        self.cluster.node_spot[:] = [pool.spot is not None for pool in sc.nodes for _ in range(pool.count)]
        # per (model, gpu type): kernel coefficients, KV capacity, speed; None where the model does not fit
        self._rep_params: dict[tuple[int, int], tuple[np.ndarray, int, float] | None] = {}
        sizes = sc.workload.sizes
        p_mean = sizes.prompt if sizes.kind == "fixed" else sizes.prompt_mean
        o_mean = sizes.output if sizes.kind == "fixed" else sizes.output_mean
        for m, dep in enumerate(sc.models):
            for g, gpu in enumerate(self.gpu_types):
                if gpu.name not in dep.gpu_types:
                    continue
                if self.per_request:
                    coef = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
                    self._rep_params[m, g] = (coef, 1 << 40, 1.0 / sc.service.mean_s)
                    continue
                try:
                    kv_cap = kv_capacity_tokens(gpu, dep.spec, dep.tensor_parallel, dep.kv_memory_fraction)
                except ConfigError as exc:
                    raise ConfigError(f"models[{m}].{exc}") from None
                coef = np.array(replica_coefficients(gpu, dep.spec, dep.tensor_parallel, self._roofline))
                sat = saturation_throughput(
                    gpu, dep.spec, prompt_tokens=p_mean, output_tokens=o_mean, tensor_parallel=dep.tensor_parallel,
                    max_batch=dep.max_batch, memory_fraction=dep.kv_memory_fraction, params=self._roofline,
                )  # fmt: skip
                self._rep_params[m, g] = (coef, int(kv_cap), float(sat["requests_per_s"]))
        # what a model's scaler sees as per-replica capacity while none is READY: the mean over its GPU types
        speeds = [[v[2] for (mm, _), v in self._rep_params.items() if mm == m and v is not None]
                  for m in range(self.n_models)]  # fmt: skip
        self._nominal_speeds = np.array([float(np.mean(v)) if v else 1.0 for v in speeds])
        self.profiles = [self._profile(m) for m in range(self.n_models)]

    def _profile(self, m: int) -> ServingProfile | None:
        """Deployment ``m``'s serving profile on the first of its GPU types it fits (None for a
        service-time model)."""
        if self.per_request:
            return None
        dep = self.scenario.models[m]
        names = [g.name for g in self.gpu_types]
        for name in dep.gpu_types:
            params = self._rep_params.get((m, names.index(name)))
            if params is not None:
                coef, kv_cap, _ = params
                return deployment_profile(dep, self.gpu_types[names.index(name)], coef, kv_cap)
        return None

    def _build_state(self, rf: np.ndarray, ri: np.ndarray) -> None:
        sc = self.scenario
        n = self.n_requests
        n_ticks = int(math.ceil(sc.horizon_s / sc.tick_s)) + 2
        prefix = self.prefix
        has_ids = len(prefix.ids) > 0
        entries = 0
        for m, dep in enumerate(sc.models):
            if dep.kv_policy != "paged" or not dep.prefix_caching or not has_ids:
                continue
            if prefix.block_tokens % dep.kv_block_tokens:
                raise fail(f"models[{m}].kv_block_tokens", dep.kv_block_tokens,
                           f"must divide the workload's hashed block ({prefix.block_tokens} tokens) for prefix caching")  # fmt: skip
            per_entry = prefix.block_tokens // dep.kv_block_tokens
            for (mm, _), v in self._rep_params.items():
                if mm == m and v is not None:
                    entries = max(entries, v[1] // dep.kv_block_tokens // per_entry)
        self.state = st = EngineState.allocate(
            rf, ri, n_models=self.n_models, n_lists=self.n_classes,
            max_batch=1 if self.per_request else max(d.max_batch for d in sc.models),
            n_ticks=n_ticks, initial_replicas=sum(d.replicas for d in sc.models),
            prefix_ptr=prefix.ptr if has_ids else None, prefix_ids=prefix.ids if has_ids else None,
            cache_entries=entries,
        )  # fmt: skip
        st.gi[K.I_HB] = prefix.block_tokens if has_ids else 0
        st.gf[K.G_TICK_S] = sc.tick_s
        st.gf[K.G_AFFINITY_EPS] = self.router_spec.load_bound_eps
        st.gf[K.G_SCORE_P0 : K.G_SCORE_P2 + 1] = self.router_spec.params
        score = self.router_spec.score
        st.gi[K.I_SCORE_AGG] = int(score is not None and score.aggregates)
        gi = st.gi
        gi[K.I_NREQ] = n
        gi[K.I_PENDING] = -1
        gi[K.I_ROUTER] = int(self.router_spec.rule)
        gi[K.I_SCORE_FN] = self.router_spec.score.address if self.router_spec.score is not None else 0
        gi[K.I_SVC_KIND] = K.SVC_PER_REQUEST if self.per_request else K.SVC_ROOFLINE
        gi[K.I_NLISTS] = self.n_classes
        gi[K.I_PRIORITY] = int(sc.queue == "priority")
        gi[K.I_NMODELS] = self.n_models
        gi[K.I_TICK_CAP] = n_ticks
        gi[K.I_HAND_R] = -1
        self.decode_router_spec: RouterSpec | None = None
        #: a Python router object at the decode stage: the loop stops at each handoff and asks it
        self.python_decode_router: PythonRouter | None = None
        if self._decode_router_arg is not None and sc.decode_routing is None:
            raise fail("decode_router", self._decode_router_arg, "needs a model with serving: disaggregated")
        if sc.decode_routing is not None:
            arg = self._decode_router_arg
            self.decode_router = ROUTERS.build(
                arg if arg is not None else sc.decode_routing,
                "decode_router" if arg is not None else "decode_routing",
            )
            if isinstance(self.decode_router, Router):
                spec = self.decode_router.kernel_spec()
            else:
                spec = RouterSpec(Rule.EXTERNAL)
                self.python_decode_router = self.decode_router
            self.decode_router_spec = spec
            gi[K.I_D_ROUTER] = int(spec.rule)
            gi[K.I_D_SCORE_FN] = spec.score.address if spec.score is not None else 0
            gi[K.I_D_SCORE_AGG] = int(spec.score is not None and spec.score.aggregates)
            st.gf[K.G_D_EPS] = spec.load_bound_eps
            st.gf[K.G_D_P0 : K.G_D_P2 + 1] = spec.params
        self._synced_releases = 0
        # read side (envs.sim.reads): the window row and per-model rows window_stats writes
        self._win = np.zeros(N_W)
        self._per_model = np.zeros((self.n_models, N_V))
        # where each deployment's requests arrive: a decode pool's prefill pool, else itself
        self._origin = np.array(
            [sc.model_index(d.group) if d.role == "decode" else m for m, d in enumerate(sc.models)], np.int64
        )
        self._arrival_times = np.ascontiguousarray(rf[:n, K.R_ARR])
        self._model_names = [d.name for d in sc.models]
        self._loading_remote: list[ReplicaRecord] = []
        self._load_clock = 0.0

    @property
    def n_replicas(self) -> int:
        """Replicas started so far (ids ``0 .. n_replicas - 1``, released ones included)."""
        return self.state.n_replicas

    # ------------------------------------------------------------------ time

    @property
    def now(self) -> float:
        return float(self.state.gf[K.G_NOW])

    def _kernel(self, until: float, route_to: int = -1) -> int:
        faults = self.faults
        while faults is not None and faults.next_time_s() <= until:
            code = K.advance(*self.state.kernel_args(), faults.next_time_s(), int(route_to))
            if code == K.STOP_ROUTE:
                return code  # an arrival before the fault waits for its routing decision first
            route_to = -1
            faults.apply(self)
        return K.advance(*self.state.kernel_args(), float(until), int(route_to))

    def _lose_replicas(self, recs: list[ReplicaRecord], t: float, requeue: bool) -> tuple[int, int]:
        """Replicas ``recs`` are gone with their node at ``t``: requests re-queued or dropped, GPUs freed."""
        st = self.state
        for rec in recs:
            if rec in self._loading_remote:
                self._progress_loads(t)  # may finish (and forget) transfers, this one included
                if rec in self._loading_remote:
                    self._loading_remote.remove(rec)
                self._schedule_remote_loads(t)
        reps = np.array([rec.rid for rec in recs], np.int64)
        n_requeued, n_dropped = fail_replicas(
            *st.kernel_args()[:18], st.log_drop, st.pc, st.kc, reps, float(t), bool(requeue)
        )
        for rec in recs:
            rec.freed = True
            st.live.remove(rec)
            self.cluster.release(rec.alloc)
        return int(n_requeued), int(n_dropped)

    def _block_node(self, node: int) -> Allocation:
        """Take every GPU of a failed node so that nothing is placed there until its repair."""
        d = Demand(num_gpu=int(self.cluster.node_gpus[node]), gpu_type=int(self.cluster.node_gpu_type[node]))
        return self.cluster.allocate(node, d)

    def advance(self, until: float) -> int | None:
        """Run every event up to ``until`` (seconds).

        Returns None when the clock reached ``until``. With the ``external``
        router it may stop earlier, at an arrival, and return that request's id:
        call :meth:`route` with a decision, then ``advance`` again.
        """
        if until < self.now:
            raise ValueError(f"until: {until!r} must be >= the current time {self.now!r}")
        code = self._kernel(until)
        while code == K.STOP_ROUTE:
            decode = self.state.gi[K.I_HAND_R] >= 0
            router = self.python_decode_router if decode else self.python_router
            if router is None:
                break  # an external decision: the caller's
            i = int(self.state.gi[K.I_PENDING])
            m = int(self.state.ri[i, K.R_MODEL])
            r = int(router.choose(self.request_view(i), self.replica_views(m, ready_only=True)))
            self._check_route(i, r, "decode_router.choose" if decode else "router.choose")
            code = self._kernel(until, route_to=r)
        self.sync_releases()
        if code == K.STOP_ROUTE:
            return int(self.state.gi[K.I_PENDING])
        return None

    def choose_replica(self, spec: RouterSpec | Any) -> int:
        """The replica a router's rule picks for the pending request (-1: central queue), without routing it.

        ``spec`` is a :class:`~envs.sim.routing.RouterSpec` or a router object.
        Round-robin style rules advance their counters, which the ``external``
        mode never uses otherwise: replaying a router this way through
        ``InferGym/Routing-v0`` makes exactly its in-loop decisions.
        """
        if not isinstance(spec, RouterSpec):
            spec = spec.kernel_spec()
        i = self.pending_request
        if i is None:
            raise RuntimeError("choose_replica() called with no request waiting for a routing decision")
        addr = spec.score.address if spec.score is not None else 0
        return int(
            route_once(
                self.state.rf,
                self.state.ri,
                self.state.pf,
                self.state.pi,
                self.state.qn,
                self.state.mi,
                self.state.mrep,
                self.state.mn,
                self.state.gf,
                self.state.gi,
                self.state.pc,
                self.state.kc,
                i,
                int(spec.rule),
                addr,
                int(spec.score is not None and spec.score.aggregates),
                float(spec.load_bound_eps),
                *map(float, spec.params),
            )  # fmt: skip
        )

    @property
    def pending_request(self) -> int | None:
        """Id of the request waiting for an external routing decision, if any."""
        p = int(self.state.gi[K.I_PENDING])
        return None if p < 0 else p

    @property
    def pending_stage(self) -> str | None:
        """Which decision the pending request waits for: ``"arrival"`` (the router's), ``"decode"`` (a
        disaggregated model's decode router, after its handoff), or None when none is pending."""
        if self.state.gi[K.I_PENDING] < 0:
            return None
        return "decode" if self.state.gi[K.I_HAND_R] >= 0 else "arrival"

    def route(self, replica: int, until: float | None = None) -> int | None:
        """Send the pending request to ``replica`` (a READY replica of its model), or -1 to the central queue.

        With ``until``, go on running to ``until`` in the same call and return
        what :meth:`advance` would (the next pending request's id, or None): one
        compiled call per routing decision, what ``InferGym/Routing-v0`` steps with.
        """
        i = self.pending_request
        if i is None:
            raise RuntimeError("route() called with no request waiting for a routing decision")
        self._check_route(i, replica, "replica")
        if until is None:
            self._kernel(self.now, route_to=replica)
            self.sync_releases()
            return None
        if until < self.now:
            raise ValueError(f"until: {until!r} must be >= the current time {self.now!r}")
        code = self._kernel(until, route_to=replica)
        self.sync_releases()
        return int(self.state.gi[K.I_PENDING]) if code == K.STOP_ROUTE else None

    # ------------------------------------------------------------------ compiled per-step features

    def routing_observation(self, i: int, speed_max: np.ndarray, seen: np.ndarray, terms: np.ndarray,
                            obs: np.ndarray, mask: np.ndarray, slot_rep: np.ndarray, norms: np.ndarray) -> int:  # fmt: skip
        """Fill ``InferGym/Routing``'s observation, mask and slots for request ``i`` (-1: none) and add
        the costs of requests finished since the caller's cursor ``seen`` to ``terms``; see
        :func:`envs.sim.features.routing_observation`. Returns the number of READY slots."""
        return int(
            routing_observation(
                self.state.rf,
                self.state.ri,
                self.state.pf,
                self.state.pi,
                self.state.qn,
                self.state.mrep,
                self.state.mn,
                self.state.log_done,
                self.state.log_drop,
                self.state.gi,
                self.state.pc,
                self.state.kc,
                self.slo,
                speed_max,
                int(i),
                self.n_models,
                self.n_classes,
                seen,
                terms,
                obs,
                mask,
                slot_rep,
                norms,
            )  # fmt: skip
        )

    def route_and_observe(self, route_to: int, until: float, buf: RoutingBuffers) -> int:
        """One ``InferGym/Routing-v0`` step in one compiled call (:func:`envs.sim.batch.route_step_at`: the state and the buffers cross as two address tables).

        Sends the pending request (if any) to ``route_to`` (a READY replica of its model, or -1: the
        caller checked it), runs to the next arrival that needs a decision and fills ``buf`` for it;
        returns its id, or -1 when the clock reached ``until`` first. Faults due by ``until`` are
        applied on the way, as :meth:`advance` does.
        """
        faults, st = self.faults, self.state
        while True:
            stop = until
            if faults is not None and faults.next_time_s() <= until:
                stop = faults.next_time_s()
            i = route_step_at(st.address_table(), buf.table(self.slo), float(stop), int(route_to), self.n_models,
                              self.n_classes)  # fmt: skip
            if i >= 0 or faults is None or faults.next_time_s() > until:
                self.sync_releases()
                return int(i)
            route_to = -1
            faults.apply(self)

    def outstanding_work_s(self, cap_s: float) -> float:
        """Seconds of queued and running work over all replicas (:func:`envs.sim.features.outstanding_work_s`)."""
        return float(
            outstanding_work_s(
                self.state.pf,
                self.state.pi,
                self.state.qn,
                self.state.mrep,
                self.state.mn,
                self.n_models,
                cap_s,
            )
        )

    def _check_route(self, i: int, replica: Any, what: str) -> None:
        if isinstance(replica, bool) or not isinstance(replica, (int, np.integer)):
            raise ValueError(f"{what}: {replica!r} must be a replica id (int) or -1")
        if replica >= 0:
            if not (replica < self.n_replicas and self.state.pi[replica, K.Q_STATE] == K.REP_READY):
                raise ValueError(f"{what}: {replica!r} is not a READY replica")
            if self.state.pi[replica, K.Q_MODEL] != self.state.ri[i, K.R_MODEL]:
                raise ValueError(
                    f"{what}: {replica!r} does not serve model {int(self.state.ri[i, K.R_MODEL])}"
                )
        elif replica != -1:
            raise ValueError(f"{what}: {replica!r} must be a replica id or -1 (central queue)")

    # ------------------------------------------------------------------ replicas

    def sync_releases(self) -> None:
        """Free the cluster resources of replicas the kernel released (drained)."""
        n = int(self.state.gi[K.I_NRELEASED])
        if n == self._synced_releases:
            return
        self._synced_releases = n
        released = [rep for rep in self.state.live if self.state.pi[rep.rid, K.Q_STATE] == K.REP_RELEASED]
        for rep in released:
            self._free(rep, float(self.state.pf[rep.rid, K.P_RELEASE]))

    def _free(self, rep: ReplicaRecord, t: float) -> None:
        rep.freed = True
        self.state.live.remove(rep)
        self.cluster.release(rep.alloc)
        if self.state.pf[rep.rid, K.P_READY] <= t:  # it finished loading: the weights stay on the node's disk
            self.cluster.touch_cache(rep.alloc.node, rep.model, t)

    def _weights_on_node(self, node: int, m: int, now: float) -> bool:
        """Whether ``node`` holds model ``m``'s weights: a loaded replica there, or a cached copy within the TTL.

        A replica still loading does not count: its transfer has not finished.
        """
        if (
            self.cluster.cached[node, m]
            and now - self.cluster.cached_at[node, m] <= self.scenario.storage.cache_ttl_s
        ):
            return True
        return any(
            r.model == m and r.alloc.node == node and self.state.pf[r.rid, K.P_READY] <= now
            for r in self.state.live
        )

    def replica_demand(self, m: int, gpu_type: int | None = None) -> Demand:
        """What one replica of model ``m`` asks of a node: ``tensor_parallel`` whole GPUs of an allowed type."""
        dep = self.scenario.models[m]
        names = [g.name for g in self.gpu_types]
        if gpu_type is None:
            types = tuple(names.index(g) for g in dep.gpu_types if self._rep_params.get((m, names.index(g))))
        else:
            types = (gpu_type,)
        return Demand(num_gpu=dep.tensor_parallel, gpu_types=types, model=m)

    def _place(self, m: int, gpu_type: int | None, node: int | None,
               capacity: str | None = None) -> tuple[Allocation, int] | None:  # fmt: skip
        if capacity is not None:  # only on-demand or only spot nodes, whatever the placer prefers
            cl = self.cluster
            cl.node_excluded[:] = cl.node_spot if capacity == "on_demand" else ~cl.node_spot
            cl.excluding = True
            try:
                return self._place(m, gpu_type, node)
            finally:
                cl.excluding = False
        dep = self.scenario.models[m]
        names = [g.name for g in self.gpu_types]
        types = [names.index(g) for g in dep.gpu_types] if gpu_type is None else [gpu_type]
        for g in types:
            if self._rep_params.get((m, g)) is None:
                continue
            d = self._demands.get((m, g))
            if d is None:  # Demand validates its fields: build each (model, GPU type) once
                d = self._demands[m, g] = Demand(num_gpu=dep.tensor_parallel, gpu_type=g, model=m)
            if node is None:
                chosen = self.placer.select(self.cluster, d, self.rng)
                if chosen >= 0 and self.cluster.excluding and not self.cluster.fits(chosen, d):
                    chosen = -1  # a placer that cached its choices offered an excluded node
            else:
                chosen = node if 0 <= node < self.cluster.n_nodes and self.cluster.fits(node, d) else -1
            if chosen >= 0:
                return self.cluster.allocate(chosen, d), g
        return None

    def add_replica(self, model: int | str, node: int | None = None, gpu_type: int | None = None) -> bool:
        """Start one new replica of ``model`` (cold start), on ``node`` or where the placer says.

        Returns False, and counts a placement failure, when it does not fit
        (on that node, or anywhere). Used by placement decisions made outside
        the simulator (the Placement environment); scalers use
        :meth:`set_target_replicas`.
        """
        m = self.scenario.model_index(model) if isinstance(model, str) else int(model)
        if (
            self.replicas_of(m)["ready"] + self.replicas_of(m)["loading"]
            >= self.scenario.models[m].max_replicas
        ):
            return False
        ok = self._add_replica(m, gpu_type, node=node)
        if ok:
            self.target[m] = self.replicas_of(m)["ready"] + self.replicas_of(m)["loading"]
        return ok

    def desired_replicas(self, loads: list[ModelLoad | None] | None = None) -> np.ndarray:
        """Every model's scaler target, clamped to its limits, without applying it.

        ``loads`` are the scalers' views (default: :meth:`model_loads`, which moves no window); a
        ``None`` view (a scaler with ``reads_load = False``) and a ``None`` answer keep the target.
        """
        out = np.zeros(self.n_models, np.int64)
        for m, load in enumerate(self.model_loads() if loads is None else loads):
            dep = self.scenario.models[m]
            want = self.scalers[m].desired_replicas(load)
            want = self.target[m] if want is None else want
            out[m] = min(max(int(want), dep.min_replicas), dep.max_replicas)
        return out

    def _add_replica(self, m: int, gpu_type: int | None, warm: bool = False, node: int | None = None,
                     capacity: str | None = None) -> bool:  # fmt: skip
        placed = self._place(m, gpu_type, node, capacity)
        if placed is None:
            self.placement_failures += 1
            self.placement_failures_by_model[m] += 1
            return False
        alloc, g = placed
        state = self.state
        r = state.new_replica_row()
        coef, kv_cap, speed = self._rep_params[m, g]
        dep = self.scenario.models[m]
        now = self.now
        pf, pi = self.state.pf, self.state.pi
        pf[r, K.P_CTOK : K.P_OVH + 1] = coef[:4]
        pf[r, K.P_TILE] = coef[4]
        pf[r, K.P_ALLOC] = now
        pf[r, K.P_READY] = now if warm else math.inf
        pf[r, K.P_RELEASE] = math.inf
        pf[r, K.P_SPEED] = speed
        pf[r, K.P_EWMA] = -1.0
        pi[r, K.Q_MODEL] = m
        pi[r, K.Q_MAXB] = 1 if self.per_request else dep.max_batch
        pi[r, K.Q_KVCAP] = kv_cap
        pi[r, K.Q_HASH] = int(hash64(np.uint64(r + 1)) >> np.uint64(1))
        if dep.kv_policy == "paged":
            self._set_paged(r, dep, kv_cap, self.gpu_types[g])
        if dep.role != "aggregated":
            self._set_role(r, m, dep, alloc.node)
        self.state.mrep[m, self.state.mn[m]] = r
        self.state.mn[m] += 1
        gpu = self.gpu_types[g]
        usd_per_s = dep.tensor_parallel * gpu.usd_per_hour / 3600.0
        if self._node_price[alloc.node] != 1.0:  # a spot node (multiplying by 1.0 would change no bit)
            usd_per_s *= self._node_price[alloc.node]
        rep = ReplicaRecord(r, m, g, alloc, dep.tensor_parallel, usd_per_s)
        self.state.records.append(rep)
        self.state.live.append(rep)
        state.rep_gpus[r] = rep.gpus
        state.rep_usd_per_s[r] = rep.usd_per_s
        node = alloc.node
        st = self.scenario.storage
        local = self._weights_on_node(node, m, now)
        if warm:
            pi[r, K.Q_STATE] = K.REP_READY
            return True
        pi[r, K.Q_STATE] = K.REP_LOADING
        if dep.spec.load_time_s is not None:
            self._push_ready(r, now + dep.spec.load_time_s)
        elif local:
            self._push_ready(r, now + dep.spec.weight_bytes / (st.local_bandwidth_gbps * 1e9) + st.startup_s)
        else:
            self._progress_loads(now)
            rep.remote = True
            rep.load_bytes = dep.spec.weight_bytes
            self._loading_remote.append(rep)
            self._schedule_remote_loads(now)
        return True

    def _set_paged(self, r: int, dep: ModelDeployment, kv_cap: int, gpu: GpuType) -> None:
        """Replica ``r``'s paged-engine settings (see :mod:`envs.sim.kernel` and :mod:`envs.sim.kvcache`)."""
        pi, st = self.state.pi, self.state
        bt = dep.kv_block_tokens
        max_len = dep.max_model_len if dep.max_model_len is not None else dep.spec.max_context
        budget = (
            dep.max_batched_tokens if dep.max_batched_tokens is not None else default_max_batched_tokens(gpu)
        )
        cache = dep.prefix_caching and st.kc.shape[2] > 0
        pi[r, K.Q_PAGED] = 1
        pi[r, K.Q_BT] = bt
        pi[r, K.Q_BLKCAP] = kv_cap // bt
        pi[r, K.Q_MAXLEN] = max_len
        pi[r, K.Q_CHUNKED] = int(dep.chunked_prefill)
        # without chunking a prompt is never split, so the budget holds the longest (vLLM V0's rule)
        pi[r, K.Q_BUDGET] = budget if dep.chunked_prefill else max(budget, max_len)
        pi[r, K.Q_CACHE] = int(cache)
        pi[r, K.Q_EB] = self.prefix.block_tokens // bt if cache else 1
        pi[r, K.Q_LRUH] = pi[r, K.Q_LRUT] = -1

    def _set_role(self, r: int, m: int, dep: ModelDeployment, node: int) -> None:
        """Replica ``r``'s pool role and KV-transfer links (disaggregated serving, :mod:`envs.sim.paged`)."""
        pi, pf = self.state.pi, self.state.pf
        pi[r, K.Q_ROLE] = K.ROLE_PREFILL if dep.role == "prefill" else K.ROLE_DECODE
        pi[r, K.Q_DPOOL] = self.scenario.decode_pool(m)
        pi[r, K.Q_NODE] = node
        pi[r, K.Q_XHEAD] = pi[r, K.Q_XTAIL] = -1
        pool = self._node_pool[node]
        nvl, net = pool.links
        pf[r, K.P_NVL_BPS] = dep.tensor_parallel * nvl
        pf[r, K.P_NET_BPS] = dep.tensor_parallel * net
        pf[r, K.P_NVL_LAT] = pool.nvlink_latency_s
        pf[r, K.P_NET_LAT] = pool.network_latency_s
        pf[r, K.P_KVBYTES] = dep.spec.kv_bytes_per_token

    def _push_ready(self, r: int, t: float) -> None:
        self.state.pi[r, K.Q_VERSION] += 1  # invalidates an earlier READY estimate
        K.heap_push(
            self.state.ht,
            self.state.hk,
            self.state.hr,
            self.state.hv,
            self.state.gi,
            self.state.pi,
            float(t),
            K.EV_READY,
            r,
            self.state.pi[r, K.Q_VERSION],
        )

    def _progress_loads(self, now: float) -> None:
        """Move remote transfers from the last update to ``now`` under equal bandwidth sharing."""
        bw = self.scenario.storage.remote_bandwidth_gbps * 1e9
        t = self._load_clock
        active = [r for r in self._loading_remote if r.load_bytes > 0]
        while active and t < now:
            share = bw / len(active)
            smallest = min(r.load_bytes for r in active)
            dt = min(now - t, smallest / share)
            for r in active:
                r.load_bytes = max(0.0, r.load_bytes - share * dt)
            t += dt
            active = [r for r in active if r.load_bytes > 1e-6]
        self._loading_remote = [r for r in self._loading_remote if r.load_bytes > 1e-6]
        self._load_clock = now

    def _schedule_remote_loads(self, now: float) -> None:
        """(Re)compute every active transfer's finish time assuming no new transfer starts."""
        bw = self.scenario.storage.remote_bandwidth_gbps * 1e9
        startup = self.scenario.storage.startup_s
        active = sorted(self._loading_remote, key=lambda r: (r.load_bytes, r.rid))
        t, done_bytes = now, 0.0
        for k, rep in enumerate(active):
            t += (rep.load_bytes - done_bytes) * (len(active) - k) / bw
            done_bytes = rep.load_bytes
            self._push_ready(rep.rid, t + startup)

    def _remove_replica(self, m: int) -> bool:
        """Take one replica of model ``m`` out of service: cancel a load, else drain a READY one."""
        pi = self.state.pi
        live = [int(r) for r in self.state.mrep[m, : self.state.mn[m]]]
        loading = [r for r in live if pi[r, K.Q_STATE] == K.REP_LOADING]
        now = self.now
        if loading:
            r = max(loading)  # newest load first: it has made the least progress
            self._progress_loads(now)
            release_replica(self.state.pf, pi, self.state.mrep, self.state.mn, r, now)
            rep = self.state.records[r]
            self._free(rep, now)
            if rep in self._loading_remote:
                self._loading_remote.remove(rep)
                self._schedule_remote_loads(now)
            return True
        ready = [r for r in live if pi[r, K.Q_STATE] == K.REP_READY]
        if not ready:
            return False
        # drain the replica with the least work in flight (newest on ties)
        r = min(ready, key=lambda x: (self.state.qn[self.n_models + x] + pi[x, K.Q_NRUN], -x))
        pi[r, K.Q_STATE] = K.REP_DRAINING
        if (pi[r, K.Q_BUSY] == 0 and pi[r, K.Q_NRUN] == 0 and self.state.qn[self.n_models + r] == 0
                and pi[r, K.Q_XOUT] == 0 and pi[r, K.Q_XIN] == 0):  # fmt: skip
            release_replica(self.state.pf, pi, self.state.mrep, self.state.mn, r, now)
            self._free(self.state.records[r], now)
        return True

    def replicas_of(self, m: int) -> dict[str, int]:
        """Counts of model ``m``'s live replicas by state."""
        st = self.state.pi[self.state.mrep[m, : self.state.mn[m]], K.Q_STATE]
        return {
            "ready": int(np.count_nonzero(st == K.REP_READY)),
            "loading": int(np.count_nonzero(st == K.REP_LOADING)),
            "draining": int(np.count_nonzero(st == K.REP_DRAINING)),
        }

    def set_target_replicas(self, model: int | str, n: int, gpu_type: int | str | None = None,
                            capacity: str | None = None) -> int:  # fmt: skip
        """Ask for ``n`` provisioned (READY + LOADING) replicas of ``model``.

        ``n`` is clamped to the deployment's ``[min_replicas, max_replicas]``
        (returned). New replicas go on GPUs of ``gpu_type`` (index or name; default:
        the model's allowed types in order) wherever the placer puts them, on
        ``capacity`` nodes only if given (``"on_demand"`` or ``"spot"``); a
        replica with no room counts as a placement failure. Removal cancels
        loading replicas first, then drains the READY replica with least work.
        """
        m = self.scenario.model_index(model) if isinstance(model, str) else int(model)
        if not 0 <= m < self.n_models:
            raise ValueError(f"model: {model!r} must be in [0, {self.n_models})")
        if isinstance(gpu_type, str):
            names = [g.name for g in self.gpu_types]
            if gpu_type not in names:
                raise ValueError(f"gpu_type: {gpu_type!r} must be one of {names}")
            gpu_type = names.index(gpu_type)
        if capacity not in (None, "on_demand", "spot"):
            raise ValueError(f"capacity: {capacity!r} must be 'on_demand', 'spot' or None")
        counts = self.replicas_of(m)
        return self._set_target(m, n, counts["ready"] + counts["loading"], gpu_type, capacity)

    def _set_target(self, m: int, n: int, have: int, gpu_type: int | None = None,
                    capacity: str | None = None) -> int:  # fmt: skip
        """:meth:`set_target_replicas` for a checked model index ``m`` with ``have`` provisioned replicas."""
        dep = self.scenario.models[m]
        n = int(min(max(int(n), dep.min_replicas), dep.max_replicas))
        self.target[m] = n
        for _ in range(n - have):
            if not self._add_replica(m, gpu_type, capacity=capacity):
                break
        for _ in range(have - n):
            if not self._remove_replica(m):
                break
        return n

    def control_step(self, kpis: bool = True) -> dict[str, float] | None:
        """Close the default KPI window and run the scenario's scalers once (one decision per model).

        The scalers see the window's :class:`~envs.sim.view.ModelLoad` views; the window's KPIs are
        returned. Both come from one read, taken before the decisions. With ``kpis=False`` and only
        scalers that do not read the load (``reads_load = False``), nothing is read and None is
        returned: the window stays open (episode KPIs do not depend on it).
        """
        if not kpis and not self._scalers_read_load:
            n = self.n_models
            for m, want in enumerate(self.desired_replicas([None] * n).tolist()):
                counts = self.replicas_of(m)
                self._set_target(m, want, counts["ready"] + counts["loading"])
            return None
        loads, out = self.step_views()
        for m, (want, load) in enumerate(zip(self.desired_replicas(loads).tolist(), loads, strict=True)):
            self._set_target(m, want, load.replicas_ready + load.replicas_loading)
        return out


def run_scenario(scenario: Scenario | str | Mapping[str, Any] = "default", seed: int = 0, *, overrides: Mapping[str, Any] | None = None,
                 on_interval: Callable[[Simulator, dict[str, float]], None] | None = None) -> dict[str, float]:  # fmt: skip
    """Run a scenario to its horizon with its configured controllers and return the episode KPIs.

    The scalers decide once per ``control_interval_s``; ``on_interval`` (if
    given) sees the simulator and each interval's KPIs. The keys are
    documented in :mod:`envs.sim.metrics`, plus ``requests_in_system`` and
    ``placement_failures``.
    """
    sim = Simulator(scenario, seed, overrides=overrides)
    clock = ControlClock(sim)
    while not clock.done:
        clock.advance()
        kpis = sim.control_step(kpis=on_interval is not None)
        if on_interval is not None:
            on_interval(sim, kpis)
    return sim.episode_kpis()
