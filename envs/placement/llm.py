"""Placement-v0's ``llm`` source: the items are the replicas an LLM scenario's autoscaler asks for while
the :class:`~envs.sim.engine.Simulator` serves the scenario's requests, so a placement changes the
service the following requests get (cold starts from cached weights, capacity per GPU type) and the
episode pays the resulting SLO violations and GPU cost besides the cluster-level terms."""

from __future__ import annotations

from collections import deque

import numpy as np

from envs.placement.base import PlacementEnv, PlacementEnvV0
from envs.placement.items import Item
from envs.placement.params import LLM_FALLBACK_SCALER
from envs.sim.clock import ControlClock
from envs.sim.cluster import Demand
from envs.sim.controllers import SCALERS
from envs.sim.engine import Simulator
from envs.sim.errors import fail


class LlmPlacementEnv(PlacementEnv):
    """Place the replicas an LLM scenario's autoscaler asks for (``source="llm"``, the default).

    ## Description

    The scenario's LLM service runs in the simulator with the scenario's router. At each control
    interval the scaler (argument ``scaler``; default the scenario's ``scaling``, and
    ``LLM_FALLBACK_SCALER`` = HPA on 48 in-flight requests per replica when that is ``static``) is
    asked for its desired replicas; every replica beyond the provisioned ones is one step
    (``Simulator.add_replica(model, node=action)``; its demand is
    ``Simulator.replica_demand(model)``), scale-downs are applied directly. While nothing waits, the
    simulation runs interval by interval. The replicas the scenario starts with are placed by the
    scenario's placer before the first step. The cluster model, masks and costs are those of
    :class:`~envs.placement.base.PlacementEnv`.

    ## Action Space

    As :class:`~envs.placement.base.PlacementEnv`: ``Discrete(n_nodes)`` over the scenario's nodes.
    A masked node is still handed to the simulator, which rejects the replica and counts a
    placement failure.

    ## Observation Space

    As :class:`~envs.placement.base.PlacementEnv` (the table there), with T = the scenario's GPU
    types. Node feature ``3 + T`` is 1 where the waiting replica's model weights are on the node's
    disk within ``scenario.storage.cache_ttl_s``; CPU and memory are not modelled, so the nodes' free
    CPU and memory features are 1 and the item's CPU and memory features 0.

    ## Rewards

    The terms of :class:`~envs.placement.base.PlacementEnv`, plus two over the control intervals
    the simulation ran after this step (0 while more items wait at the same instant):

    * ``slo_violations``: sum over those intervals of each interval's 1 - ``slo_attainment`` (a
      fraction of requests per interval);
    * ``gpu_cost``: US dollars of GPU time allocated in them (``cost_usd``).

    With ``shaping`` the start state's potential is above 0 (the initial replicas are placed).

    ## Starting State

    The scenario's initial replicas, placed by its placer, and the simulation run to the first
    control interval where a replica is wanted. If none is wanted before the horizon, the first
    observation is already the final one.

    ## Episode End

    ``truncated`` on the step after which no replica remains to place before the horizon
    ``scenario.horizon_s`` (the scaler is not asked at the horizon itself); never ``terminated``.

    ## Arguments

    ``gym.make("InferGym/Placement-v0", scenario="default", source="llm", scaler=None, shaping=0.0,
    render_mode=None, **scenario_keys)``: ``scaler`` is a scaler name or ``{"kind": ..., **params}``
    mapping (default: see Description). The scenario's router must be a built-in one (not
    ``external``).

    ## Version History

    * v0: initial version (part of ``PlacementEnv`` until the sources became classes; same dynamics).
    """

    source = "llm"
    REWARD_TERMS = (*PlacementEnv.REWARD_TERMS, "slo_violations", "gpu_cost")

    def _setup_source(self) -> int:
        sc = self.scenario
        if sc.routing.kind == "external":
            raise fail(
                "routing", "external", "needs an external router (the Routing env); pick a built-in one"
            )
        self._scaler_spec = self.params.scaler
        if self._scaler_spec is None:
            self._scaler_spec = LLM_FALLBACK_SCALER if sc.scaling.kind == "static" else sc.scaling.as_config()
        # Fail at construction, not at the first reset (names resolve through the core's registry).
        SCALERS.build(self._scaler_spec, "scaler")
        self.type_names = tuple(g.name for g in sc.gpu_types)
        self._max_gpus = max(pool.gpus_per_node for pool in sc.nodes)
        self._max_cpu = self._max_mem = 1  # replicas ask for no CPU or memory
        return sum(pool.count for pool in sc.nodes)

    def _start_episode(self) -> None:
        sc = self.scenario
        self.sim = sim = Simulator(sc, seed=self.np_random, scaler=self._scaler_spec)
        keys = []
        for m in range(sim.n_models):
            d = sim.replica_demand(m)
            keys.append((d.num_gpu, d.gpu_milli, d.cpu_milli, d.memory_mib, d.gpu_types, m))
        self._llm_items, types = self._encoder.episode_items(keys)
        self._prepare_cluster(sim.cluster, types)
        self._ttl_s = sc.storage.cache_ttl_s
        self.clock = ControlClock(sim)
        self._pending: deque[int] = deque()  # models of the replicas wanted, one entry per replica
        self._done = False
        self._advance()
        self.now_s = sim.now
        self._set_item(self._waiting())

    def _waiting(self) -> Item | None:
        return self._llm_items[self._pending[0]] if self._pending else None

    def _advance(self) -> tuple[float, float]:
        """Run control intervals until a replica is wanted or the horizon; (sum of 1 - SLO attainment,
        GPU cost in $) over the intervals run."""
        sim = self.sim
        slo_violations = cost = 0.0
        while not self._pending and not self._done:
            self.clock.advance()
            at_horizon = self.clock.at_last_boundary
            loads, kpis = sim.step_views()
            # Requests left in the system at the horizon are not charged here: how many replicas
            # serve is the scaler's decision, not this agent's (Autoscale-v1 charges them).
            finished = kpis["requests_completed"] + kpis["requests_dropped"]
            missed = kpis["slo_violations"] - kpis["requests_unfinished"]
            slo_violations += 1.0 - ((finished - missed) / finished if finished else 1.0)
            cost += kpis["cost_usd"]
            if at_horizon:
                self._done = True
                break
            for m, (w, load) in enumerate(zip(sim.desired_replicas(loads).tolist(), loads, strict=True)):
                have = load.replicas_ready + load.replicas_loading
                if w > have:
                    self._pending.extend([m] * (w - have))
                elif w < have:
                    sim.set_target_replicas(m, w)
        return slo_violations, cost

    def _place(self, node: int, demand: Demand) -> bool:
        # A masked node is still handed to the simulator, which rejects it and counts the failure.
        return self.sim.add_replica(self._pending.popleft(), node=node)

    def _next_item(self, terms: dict[str, float]) -> None:
        if not self._pending:
            terms["slo_violations"], terms["gpu_cost"] = self._advance()
        self.now_s = self.sim.now
        self._set_item(self._waiting())

    def _weights_cached(self) -> np.ndarray | float:
        d = self.pending_demand
        if d is None or d.model < 0:
            return 0.0
        c, m = self.cluster, d.model
        return c.cached[:, m] & (self.now_s - c.cached_at[:, m] <= self._ttl_s)

    def _source_label(self) -> str:
        return f"replicas of scenario {self.scenario.name!r}"


class LlmPlacementEnvV0(LlmPlacementEnv, PlacementEnvV0):
    """``InferGym/Placement-v0``'s llm source: :class:`LlmPlacementEnv` on the ``reserve`` engine wherever a
    model does not set ``kv_policy`` (``VERSION`` and ``MODEL_DEFAULTS`` from :class:`PlacementEnvV0`)."""

    source = "llm"
