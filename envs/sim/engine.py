"""The simulator: owns the engine state and is the only thing that changes it.

:class:`Simulator` turns a :class:`~envs.sim.config.Scenario` and a seed into
pre-generated request arrays, a GPU cluster (:class:`~envs.sim.cluster.ClusterState`)
and replica arrays, then moves time forward with :meth:`Simulator.advance`,
which runs the compiled event loop of :mod:`envs.sim.kernel`. Between calls
the caller (an environment, a controller loop, :func:`run_scenario`) reads
read-only views and issues commands: :meth:`set_target_replicas`,
:meth:`route` (for the ``external`` router) and placement decisions.

The simulator is assembled from mixins, one job each: this module builds it and
moves time; :mod:`envs.sim.replicas` is the replica lifecycle (placement, cold
starts, draining); :mod:`envs.sim.route_api` takes routing decisions from outside
the loop; :mod:`envs.sim.reads` reads views and KPIs without changing anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from envs.sim import kernel as K
from envs.sim.clock import ControlClock
from envs.sim.cluster import Allocation, ClusterState, Demand
from envs.sim.config import Scenario, load_scenario
from envs.sim.controllers import PLACERS, SCALERS
from envs.sim.errors import ConfigError, fail
from envs.sim.faults import FaultInjector, fail_replicas
from envs.sim.faults import schedule as fault_schedule
from envs.sim.perf import (
    RooflineParams,
    kv_capacity_tokens,
    replica_coefficients,
    saturation_throughput,
)
from envs.sim.profile import ServingProfile, deployment_profile
from envs.sim.reads import SimulatorReads
from envs.sim.replicas import ReplicaLifecycle
from envs.sim.requests import N_SESSIONS, build_requests  # noqa: F401  (N_SESSIONS: public name)
from envs.sim.route_api import RouteAPI
from envs.sim.routing import ROUTERS, PythonRouter, Router, RouterSpec, Rule
from envs.sim.state import EngineState, ReplicaRecord
from envs.sim.window import N_V, N_W, KpiWindow


def _generator(seed: Any) -> np.random.Generator:
    """The simulator's generator: a given ``numpy.random.Generator``, or one seeded by a non-negative int."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise fail("seed", seed, "must be a non-negative integer or a numpy.random.Generator")
    return np.random.default_rng(int(seed))


class Simulator(RouteAPI, ReplicaLifecycle, SimulatorReads):
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
        # caches added after a simulator may have been pickled (a checkpoint from an earlier version)
        self.__dict__.setdefault("_templates", {})
        self.__dict__.setdefault("_stats_calls", 0)
        if "_type_order" not in self.__dict__:
            names = [g.name for g in self.gpu_types]
            self._type_order = [tuple(names.index(g) for g in d.gpu_types) for d in self.scenario.models]
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
        # (model, GPU type) -> a new replica's pf and pi rows and USD/s (ReplicaLifecycle._replica_template)
        self._templates: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]] = {}
        # per model: its GPU types' indices, in the order its deployment lists them (placement tries them so)
        self._type_order = [tuple(names.index(g) for g in dep.gpu_types) for dep in sc.models]
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
        # the least-in-flight index is kept while the arrivals' or the decode stage's router runs it
        rules = {
            self.router_spec.rule,
            None if self.decode_router_spec is None else self.decode_router_spec.rule,
        }
        gi[K.I_LC_ON] = int(Rule.LEAST_IN_FLIGHT in rules)
        gi[K.I_LC_REBUILD] = 1
        self._synced_releases = 0
        # read side (envs.sim.reads): the window row and per-model rows window_stats writes
        self._win = np.zeros(N_W)
        self._stats_calls = 0  # calls of _stats (its buffers' writes), for precompute_read's validity
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
            *st.kernel_args()[:15], st.log_drop, st.pc, st.kc, reps, float(t), bool(requeue), self._origin
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
