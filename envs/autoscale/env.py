"""``InferGym/Autoscale-v3``: the agent is the replica autoscaler of an LLM inference cluster.

One step is one control interval of the scenario (``control_interval_s``,
15 s simulated by default): the agent changes each model's replica count
(and, where a model may run on several GPU types, picks the type of the
replicas it adds), the simulator runs the interval with the scenario's router
and placer, and the agent pays for SLO misses, drops, GPU dollars and failed
placements. :class:`~envs.autoscale.policy.ScalerPolicy` runs a classical
scaler from ``baselines`` (HPA, KPA, ...) through the same action space, so
learned and classical scaling are measured by the same loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.autoscale.observation import (
    DEFAULT_TPOT_SCALE_S,
    MODEL_FEATURES,
    POOL_FEATURES,
    TIME_FEATURES,
    AutoscaleObservation,
)
from envs.autoscale.render import render_episode
from envs.common import RESERVE_ENGINE, check_action, split_kwargs, weighted_reward
from envs.sim.clock import ControlClock
from envs.sim.config import Scenario
from envs.sim.engine import Simulator
from envs.sim.errors import check_choice, check_number, fail
from envs.sim.view import ModelLoad

if TYPE_CHECKING:
    from envs.autoscale.policy import ScalerPolicy

ENV_PARAMS = ("max_step", "action_mode", "router", "placer")
#: How Autoscale reads its per-model action components (see the class docstring).
ACTION_MODES = ("delta", "target")
#: The cost terms of ``info["rewards"]`` (weights: the scenario's ``reward`` block).
REWARD_KEYS = ("slo_violations", "drops", "gpu_cost", "placement_failures", "unfinished")

#: What the capacity component of a spot scenario's action means, by value.
CAPACITY_CHOICES: tuple[str | None, ...] = (None, "on_demand", "spot")


class AutoscaleEnv(AutoscaleObservation, gym.Env):
    """The replica autoscaler of a simulated GPU inference cluster.

    ## Description

    A cluster of GPU nodes serves one or more LLMs (the scenario: hardware,
    models, workload, SLOs). Requests arrive, the scenario's router spreads them
    over READY replicas, which run continuous batching. Each step the agent
    sets how many replicas every model should have. A new replica is placed
    by the scenario's placer and cold-starts (LOADING: GPUs allocated and
    billed, weights transferred, then startup) before it serves; a removed
    replica DRAINS (finishes its work, takes no new requests) and is then
    released. Too few replicas means queues, SLO misses and drops (requests time
    out in the queue); too many costs GPU dollars. One step is one control
    interval (``control_interval_s`` of simulated time, 15 s by default): the
    action is applied with ``Simulator.set_target_replicas``, then the simulator
    runs to the end of the interval (never past the horizon).

    ## Action Space

    ``MultiDiscrete([2k+1] * n_models + [n_types_j for each hybrid model j])``
    with ``k = max_step`` (default 2) in the default ``action_mode="delta"``;
    ``MultiDiscrete([N_m - L_m + 1 for each model m] + [n_types_j ...])`` in
    ``action_mode="target"`` (``L_m``, ``N_m``: the model's ``min_replicas``,
    ``max_replicas``); in a scenario with a spot pool, ``+ [3] * n_models`` (capacity, below).

    * Component ``m < n_models``, ``action_mode="target"``: value ``a`` sets model
      ``m``'s provisioned replicas (READY + LOADING) to ``L_m + a``, whatever they
      are now; ``max_step`` is not used. Everything else (removal order, placement
      failures, hybrid components) is as below. A policy then maps a state to a
      replica count, as a classical scaler does, instead of to a change that depends
      on replicas still loading: on ``bursty`` this made PPO learn in a fraction of
      the steps (see ``results/``).
    * Component ``m < n_models``, ``action_mode="delta"``: value ``a`` changes model ``m``'s provisioned
      replicas (READY + LOADING; draining ones do not count) by ``a - k``, so
      ``0..2k`` means ``-k..+k`` and ``a == k`` holds. The new target is
      ``provisioned + (a - k)``, then clamped to the deployment's
      ``[min_replicas, max_replicas]``; clamping is the only consequence of
      asking for too many or too few (no mask, no penalty besides what the
      cluster does), and ``info["clamped"]`` counts the replicas asked for
      beyond the limits. Removal follows the engine: LOADING replicas are
      cancelled first (newest first), then the READY replica with the least work
      in flight drains (newest on ties). An added replica that fits nowhere
      is a placement failure (a cost term); the target then drops to what was
      provisioned at the next step, so "hold" never retries a failed placement.
    * Capacity (scenarios with a spot pool only): after the hybrid components, one
      per model choosing where that model's ADDED replicas go this step: 0 = wherever
      the placer puts them, 1 = on-demand nodes only, 2 = spot nodes only
      (:data:`CAPACITY_CHOICES`); none there is a placement failure.
    * Hybrid (vertical) scaling: for every model whose ``gpu_types`` lists more
      than one GPU type (e.g. scenario ``heterogeneous``), one more component,
      in model order, chooses the GPU type of the replicas that model ADDS this
      step, as an index into that model's ``gpu_types`` list. It has no effect
      on removals (above) or when the model does not grow. A type where the
      model does not fit, or with no free GPUs, gives placement failures.

    ## Observation Space

    ``Box(float32)`` of ``15 * n_models + sum(n_types_j) + 3`` values (and the blocks below for
    scenarios with faults or paged models): a block of 15 per model (offset ``15 m``; a
    disaggregated model's prefill and decode pools are two models here, as in the action), then
    for each hybrid model the replicas per
    allowed GPU type, then three time features. Per-model rates and
    percentiles cover the interval that just ended (all zero right after
    reset); counts are at the decision time. Every value is clipped to the
    bounds below. Notation: ``N`` = the model's ``max_replicas``, ``B`` = its
    ``max_batch``, ``C`` = its nominal capacity (saturation throughput of one
    replica at the scenario's mean request sizes, averaged over its GPU types,
    req/s), ``c`` = the mean capacity of its READY replicas (``C`` when none),
    ``S`` = the smallest TTFT target of the scenario's request classes (1 s if
    no class sets one), ``T`` = the smallest TPOT target (0.1 s/token if none). Arrival, completion
    and latency features of a disaggregated model's pools are the model's (both pools see its
    arrivals and its finished requests' TTFT, TPOT and SLO attainment); queue, in-flight, replica,
    utilization and KV features are the pool's own (:class:`~envs.sim.view.ModelLoad`).

    | index | feature (model m)   | raw quantity (unit)                                    | scaled as             | min | max |
    |-------|---------------------|--------------------------------------------------------|-----------------------|-----|-----|
    | 0     | arrival_rate        | arrivals in the interval / its length (req/s)          | / (N C)               | 0   | 4   |
    | 1     | load_ratio          | arrival rate (req/s) vs READY capacity (req/s)         | rate / (max(ready,1) c) | 0 | 16  |
    | 2     | queue_len           | requests waiting for a batch slot (requests)           | log1p(x) / log1p(N B) | 0   | 4   |
    | 3     | in_flight           | requests queued or running (requests)                  | log1p(x) / log1p(N B) | 0   | 4   |
    | 4     | replicas_ready      | READY replicas (replicas)                              | / N                   | 0   | 1   |
    | 5     | replicas_loading    | LOADING replicas, cold starts in progress (replicas)   | / N                   | 0   | 1   |
    | 6     | replicas_draining   | DRAINING replicas (replicas)                           | / N                   | 0   | 4   |
    | 7     | replicas_unplaced   | target - (READY + LOADING): failed placements (replicas) | / N                 | 0   | 1   |
    | 8     | utilization         | busy time / READY time of the model's replicas (s/s)   | as is                 | 0   | 1   |
    | 9     | kv_usage            | KV cache in use / capacity, READY replicas (tokens/tokens; paged: blocks held by running requests, reserve: prompt + output reserved) | as is | 0 | 1 |
    | 10    | ttft_p99            | TTFT p99 of the interval, 0 if nothing completed (s)   | / S                   | 0   | 32  |
    | 11    | slo_attainment      | finished requests meeting their SLO, 1 if none (fraction) | as is              | 0   | 1   |
    | 12    | arrival_trend       | rate - previous interval's rate, 0 at step 1 (req/s)   | / (N C)               | -4  | 4   |
    | 13    | tpot_p99            | TPOT p99 of the interval's finished requests with more than one output token, 0 if none (s/token) | / T | 0 | 32 |
    | 14    | kv_transfers_pending | disaggregated pools: KV caches a prefill pool holds for transfers, or transfers into a decode pool not yet arrived; 0 otherwise (requests) | log1p(x) / log1p(N B) | 0 | 4 |

    Features 13 and 14 are new in v3 (:data:`POOL_FEATURES`); v2 and older have the first 13.

    Then for each hybrid model, for each of its allowed GPU types in order:
    provisioned (READY + LOADING) replicas on that type / N, in ``[0, 1]``.
    Then, only in a scenario with faults (``faults``, ``nodes[].mtbf_s`` or ``spot``,
    ``replica_crash_per_hour``), for each node pool in order: its GPUs on nodes that are up / its
    GPUs, and its GPUs on nodes under a preemption notice / its GPUs, both in ``[0, 1]``.
    Then, only for models served by the paged engine (``models[].kv_policy: paged``), in model order:
    the interval's prefix hit rate (prompt tokens served from the prefix caches / prompt tokens of
    the requests first admitted in it, 0 if none; in ``[0, 1]``) and its preemptions
    (``log1p(x) / log1p(N B)``, in ``[0, 4]``); ``info["kpi"]`` then carries ``prefix_hit_rate``,
    ``preemptions``, ``recomputed_tokens`` and ``requests_rejected``.
    Last, with ``t`` the simulated time in seconds:

    | index  | feature                          | value                                                  | min | max |
    |--------|----------------------------------|--------------------------------------------------------|-----|-----|
    | -3, -2 | time_of_day_sin, time_of_day_cos | sin, cos of 2 pi (t + phase_s) / period_s for a diurnal workload, else 0 | -1 | 1 |
    | -1     | horizon_elapsed                  | t / horizon_s                                          | 0   | 1   |

    ``load_ratio`` against 1.0 is what a good controller needs: above 1 the
    READY replicas cannot keep up with the arrivals. The names are in
    :data:`MODEL_FEATURES` and :data:`TIME_FEATURES`.

    ## Rewards

    ``reward = -(w_slo * slo_violations + w_drops * drops + w_cost * gpu_cost
    + w_pf * placement_failures + w_unf * unfinished)``, weights from the scenario's
    ``reward`` block (defaults :data:`envs.sim.config.DEFAULT_REWARD`: 10, 10, 0.02,
    0.1, 20). The terms, all costs over the step's interval ``[t0, t1)``:

    * ``slo_violations`` (requests per arrived request): requests that finished
      in the interval (completed or dropped) and missed their SLO / max(1,
      requests arrived in the interval).
    * ``drops`` (fraction): dropped requests / max(1, arrived requests).
    * ``gpu_cost`` ($/hour): dollars of allocated GPUs (LOADING, READY and
      DRAINING replicas) in the interval / (t1 - t0) * 3600.
    * ``placement_failures`` (count): replicas asked for this step that fit nowhere.
    * ``unfinished`` (requests per arrived request): 0 except at the last step,
      where it is the requests still waiting or running at the horizon / the
      episode's mean arrivals per interval (at least 1).

    Every request is charged once, in units of an interval's arrivals: 10 if it
    completed late, 20 (10 + 10) if it was dropped (it also missed its SLO) and
    20 if it was never served. Serving nothing therefore always costs more than
    serving, except for the GPU dollars of replicas that complete nothing.

    ``info["rewards"]`` holds the terms; ``reward_from_terms(terms)`` recomputes
    the reward. ``info["kpi"]`` holds the interval KPIs of
    ``Simulator.interval_kpis`` (keys in :mod:`envs.sim.metrics`) plus
    ``replicas_ready`` and ``target_replicas`` (summed over models) and
    ``replicas_ready/<model>``, ``target_replicas/<model>``. ``info["replicas"]``
    is an ``(n_models, 3)`` int64 array of READY, LOADING, DRAINING replicas;
    ``info["clamped"]`` the replicas requested beyond the limits this step.

    ## Starting State

    The scenario's initial replicas, READY (warm) on nodes chosen by the placer,
    empty queues, at time 0; the first action is taken then, before any
    interval was observed. Arrivals, request sizes and the placer's random
    choices are drawn from the env's seeded generator at reset.

    ## Episode End

    ``truncated`` is True when the simulated time reaches ``horizon_s`` (the
    last interval may be shorter). ``terminated`` is always False: nothing ends
    an autoscaling task early. Stepping before ``reset`` or after the horizon
    raises ``RuntimeError``.

    ## Arguments

    ``gymnasium.make("InferGym/Autoscale-v3", scenario="default", render_mode=None, max_step=2,
    action_mode="delta", router=None, placer=None, **scenario_overrides)``

    * ``scenario``: shipped name, YAML path, dict or Scenario.
    * ``max_step``: largest replica change per model per step (integer >= 1). A
      value at least ``max_replicas`` makes every reachable target one step away.
    * ``action_mode``: ``"delta"`` (a change of at most ``max_step``) or
      ``"target"`` (the replica count itself); see Action Space.
    * ``router`` / ``placer``: override the scenario's ``routing`` / ``placement``
      controllers (name or ``{"kind": ..., **params}``). The scenario's
      ``scaling`` controller is not used: the agent is the scaler (see
      :class:`ScalerPolicy` to run it as a policy). The ``external`` router is
      not supported (it would need routing decisions).
    * any other keyword is a top-level scenario key (``horizon_s``,
      ``workload``, ...) deep-merged into the scenario.

    ## Version History

    * v3: two more features per model, ``tpot_p99`` (against the TPOT target) and
      ``kv_transfers_pending``, so an agent scaling a disaggregated model's prefill and decode
      pools sees each pool's own latency target and the KV caches between them. Still
      registered, v2 is v3 with the 13 features of before (:class:`AutoscaleEnvV2`).
    * v2: models that do not set ``kv_policy`` run the ``paged`` engine (KV blocks allocated as tokens
      are computed, preemption, chunked prefill, prefix caching), the simulator's default since it
      landed; the observation has the paged block when a model is paged. Still registered, v1 and v0
      fill in ``kv_policy: reserve`` (:class:`AutoscaleEnvV1`).
    * v1: requests still in the system at the horizon are charged (the ``unfinished`` term) and
      ``slo_violations`` is per arrived request instead of per finished one; in v0, a policy that
      served nothing scored 0, better than any that served.
    * v0: initial version (``action_mode`` and ``dwell_shape`` arrivals added before any release);
      still registered, as :class:`AutoscaleEnvV0`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    #: the per-model observation block: (name, low, high) per feature, in order
    model_features: ClassVar[tuple[tuple[str, float, float], ...]] = MODEL_FEATURES + POOL_FEATURES
    #: ``models[]`` keys this version fills in where the scenario leaves them out (older versions keep
    #: the engine they were made with)
    MODEL_DEFAULTS: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any) -> None:
        self.scenario, own = split_kwargs(scenario, kwargs, ENV_PARAMS, "AutoscaleEnv", self.MODEL_DEFAULTS)
        sc: Scenario = self.scenario
        if render_mode is not None:
            check_choice("render_mode", render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.max_step = int(check_number("max_step", own.get("max_step", 2), ge=1, integer=True))
        self.action_mode = check_choice("action_mode", own.get("action_mode", "delta"), ACTION_MODES)
        self.router = own.get("router")
        self.placer = own.get("placer")
        # A throw-away simulator over one interval validates router and placer now (not at the
        # first reset) and gives the nominal replica capacities.
        probe = Simulator(
            sc, 0, overrides={"horizon_s": sc.control_interval_s}, router=self.router, placer=self.placer
        )
        if probe.router_name == "external":
            raise fail(
                "router" if self.router is not None else "routing",
                "external",
                "is not supported by AutoscaleEnv",
            )
        self.n_models = n = len(sc.models)
        self.model_names = [d.name for d in sc.models]
        self._kpi_keys = [(f"replicas_ready/{name}", f"target_replicas/{name}") for name in self.model_names]
        self.min_replicas = np.array([d.min_replicas for d in sc.models], np.int64)
        self.max_replicas = np.array([d.max_replicas for d in sc.models], np.int64)
        self._lo = [int(v) for v in self.min_replicas]
        self._hi = [int(v) for v in self.max_replicas]
        self._inv_n = [1.0 / v for v in self._hi]
        self.nominal_capacity_rps = np.array([probe._nominal_speed(m) for m in range(n)])
        self._inv_nc = [1.0 / (self._hi[m] * self.nominal_capacity_rps[m]) for m in range(n)]
        self._inv_log_nb = [1.0 / math.log1p(d.max_replicas * d.max_batch) for d in sc.models]
        targets = [c.slo.ttft_s for c in sc.workload.classes if c.slo.ttft_s is not None]
        self.ttft_target_s = float(min(targets)) if targets else 1.0
        targets = [c.slo.tpot_s for c in sc.workload.classes if c.slo.tpot_s is not None]
        self.tpot_target_s = float(min(targets)) if targets else DEFAULT_TPOT_SCALE_S
        self._pool_features = len(self.model_features) > len(MODEL_FEATURES)
        gpu_names = [g.name for g in sc.gpu_types]
        # hybrid models: (model index, global GPU type index of each allowed type)
        self.hybrid = [
            (m, [gpu_names.index(g) for g in d.gpu_types])
            for m, d in enumerate(sc.models)
            if len(d.gpu_types) > 1
        ]
        arr = sc.workload.arrival
        self._diurnal = (arr.params["period_s"], arr.params["phase_s"]) if arr.kind == "diurnal" else None
        self.n_steps = int(math.ceil(sc.horizon_s / sc.control_interval_s - 1e-9))

        # spot scenarios: per model, the capacity its added replicas go to (any, on-demand, spot)
        self.capacity_choice = any(p.spot is not None for p in sc.nodes)
        # fault scenarios: per node pool, the share of its GPUs up and under a preemption notice
        self._pool_nodes: list[np.ndarray] = []
        if sc.has_faults:
            start = 0
            for pool in sc.nodes:
                self._pool_nodes.append(np.arange(start, start + pool.count))
                start += pool.count
        # paged-engine models (kv_policy: paged): per model, the interval's prefix hit rate and preemptions
        self._paged = [m for m, d in enumerate(sc.models) if d.kv_policy == "paged"]
        per_model = (
            [2 * self.max_step + 1] * n
            if self.action_mode == "delta"
            else [hi - lo + 1 for lo, hi in zip(self._lo, self._hi, strict=True)]
        )
        capacity = [len(CAPACITY_CHOICES)] * n if self.capacity_choice else []
        self.action_space = spaces.MultiDiscrete(per_model + [len(t) for _, t in self.hybrid] + capacity)
        self._act_shape = self.action_space.shape
        self._act_nvec = self.action_space.nvec.tolist()
        lo = (
            [f[1] for f in self.model_features] * n
            + [0.0] * sum(len(t) for _, t in self.hybrid)
            + [0.0] * (2 * len(self._pool_nodes))
            + [0.0] * (2 * len(self._paged))
            + [f[1] for f in TIME_FEATURES]
        )
        hi = (
            [f[2] for f in self.model_features] * n
            + [1.0] * sum(len(t) for _, t in self.hybrid)
            + [1.0] * (2 * len(self._pool_nodes))
            + [1.0, 4.0] * len(self._paged)
            + [f[2] for f in TIME_FEATURES]
        )
        self._obs_low = np.array(lo, np.float32)
        self._obs_high = np.array(hi, np.float32)
        self.observation_space = spaces.Box(self._obs_low, self._obs_high, dtype=np.float32)

        self.sim: Simulator | None = None
        self.model_loads: list[ModelLoad] = []
        self._step = 0

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.sim = Simulator(self.scenario, seed=self.np_random, router=self.router, placer=self.placer)
        self.clock = ControlClock(self.sim)
        self._step = 0
        self._arrived = 0.0  # requests arrived so far this episode
        self._prev_rate: list[float] | None = None
        self._serving_prev = np.zeros((self.n_models, 3), np.int64)
        self.model_loads = self._scaler_views()
        n, h = self.n_models, self.n_steps + 1
        self._hist = {
            "t": np.zeros(h),
            "arrival": np.zeros((h, n)),
            "capacity": np.zeros((h, n)),
            "ready": np.zeros((h, n)),
            "loading": np.zeros((h, n)),
            "ttft_p99": np.zeros((h, n)),
            "reward": np.zeros(h),
        }
        self._record()
        obs = self._observation()
        return obs, {"replicas": self._replica_counts()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        started = self._apply_action(action)
        self.clock.advance()
        return self._finish_step(started)

    def _apply_action(self, action: Any) -> tuple[int, int, float]:
        """The first half of a step: check ``action`` and set every model's target (placing or removing
        replicas). Returns what :meth:`_finish_step` needs: placement failures so far, clamped
        replicas, the interval's start time."""
        a = self._action_values(action)
        sim = self.sim
        if sim is None:
            raise RuntimeError("AutoscaleEnv: call reset() before step()")
        if self._step >= self.n_steps:
            raise RuntimeError("AutoscaleEnv: the episode reached its horizon; call reset()")
        n, k = self.n_models, self.max_step
        failures0 = sim.placement_failures
        gpu_of = {m: types[int(a[n + j])] for j, (m, types) in enumerate(self.hybrid)}
        first = n + len(self.hybrid)
        capacity_of = (
            [CAPACITY_CHOICES[int(a[first + m])] for m in range(n)] if self.capacity_choice else [None] * n
        )
        clamped = 0
        for m in range(n):
            load = self.model_loads[m]
            have = load.replicas_ready + load.replicas_loading
            want = have + int(a[m]) - k if self.action_mode == "delta" else self._lo[m] + int(a[m])
            got = min(max(want, self._lo[m]), self._hi[m])
            clamped += abs(want - got)
            if got != have or sim.target[m] != got:
                sim.set_target_replicas(m, got, gpu_of.get(m), capacity_of[m])
        self._step += 1
        return failures0, clamped, sim.now

    def _finish_step(
        self, started: tuple[int, int, float], precomputed: tuple | None = None
    ) -> tuple[np.ndarray, float, bool, bool, dict]:
        """The second half of a step, once the simulation reached the interval's end: read the
        interval, compute the reward and the observation. ``precomputed``: the read's compiled part
        (:meth:`~envs.sim.engine.Simulator.precompute_read`), if already computed."""
        failures0, clamped, t0 = started
        sim = self.sim
        dt = sim.now - t0
        self.model_loads, kpi = sim.step_views(precomputed)
        self._arrived += kpi["requests_arrived"]
        terms = self._terms(kpi, dt, float(sim.placement_failures - failures0))
        reward = self.reward_from_terms(terms)
        ready_total = target_total = 0
        for (ready_key, target_key), load in zip(self._kpi_keys, self.model_loads, strict=True):
            kpi[ready_key] = float(load.replicas_ready)
            kpi[target_key] = float(load.target_replicas)
            ready_total += load.replicas_ready
            target_total += load.target_replicas
        kpi["replicas_ready"] = float(ready_total)
        kpi["target_replicas"] = float(target_total)
        self._record(reward)
        obs = self._observation()
        truncated = self._step >= self.n_steps
        info = {"rewards": terms, "kpi": kpi, "replicas": self._replica_counts(), "clamped": int(clamped)}
        return obs, reward, False, truncated, info

    def _terms(self, kpi: Mapping[str, float], dt: float, placement_failures: float) -> dict[str, float]:
        """The step's cost terms (see Rewards): every request is charged per arrived request, whether
        it missed its SLO, was dropped or was never served by the horizon."""
        arrived = max(1.0, kpi["requests_arrived"])
        unfinished = kpi["requests_unfinished"]
        per_interval = max(1.0, self._arrived / self._step)
        return {
            "slo_violations": (kpi["slo_violations"] - unfinished) / arrived,
            "drops": kpi["requests_dropped"] / arrived,
            "gpu_cost": kpi["cost_usd"] / dt * 3600.0,
            "placement_failures": placement_failures,
            "unfinished": unfinished / per_interval,
        }

    def _action_values(self, action: Any) -> list[int]:
        """The action's components as ints, or ValueError (``check_action``) if it is not in the space."""
        # An integer array of the right shape (what agents and action_space.sample() give) is
        # checked in plain Python: the generic check costs as much as the rest of the step's Python.
        if type(action) is np.ndarray and action.dtype.kind in "iu" and action.shape == self._act_shape:
            vals = action.tolist()
            if all(0 <= v < hi for v, hi in zip(vals, self._act_nvec, strict=True)):
                return vals
        return check_action(self.action_space, action, "AutoscaleEnv").tolist()

    def reward_from_terms(self, terms: Mapping[str, float]) -> float:
        """Reward of a step from its cost terms: minus their sum weighted by the scenario's ``reward``."""
        return weighted_reward(terms, self.scenario.reward)

    @classmethod
    def controller_policy(cls, spec: Any, seed: int = 0) -> ScalerPolicy:
        """The adapter that runs the classical scaler ``spec`` (a name, a ``{"kind": ...}`` mapping, or
        None for the scenario's own) through this action space. ``seed`` is unused: scalers draw no
        random numbers."""
        from envs.autoscale.policy import ScalerPolicy

        return ScalerPolicy(spec)

    # ------------------------------------------------------------------ scaler views and adapters

    def _scaler_views(self) -> list[ModelLoad]:
        """Each model's :class:`ModelLoad` over the current KPI window (before ``interval_kpis`` moves it on)."""
        return self.sim.model_loads()

    def scaler_action(
        self, desired_replicas: Sequence[int], gpu_types: Sequence[int] | None = None
    ) -> np.ndarray:
        """The action that moves every model toward ``desired_replicas`` (provisioned = ready + loading).

        In ``action_mode="delta"`` the change is clipped to ``[-max_step, max_step]``, so a
        controller run through this action space is a rate-limited version of itself; with
        ``max_step >= max_replicas`` the clip never binds. In ``action_mode="target"`` the
        action is the target itself (clamped to the limits). ``gpu_types`` gives, per
        hybrid model, the index into its allowed types (default 0).
        """
        if len(desired_replicas) != self.n_models:
            raise ValueError(
                f"desired_replicas: {list(desired_replicas)!r} must have {self.n_models} entries"
            )
        k = self.max_step
        act = np.zeros(len(self.action_space.nvec), np.int64)
        for m, load in enumerate(self.model_loads):
            if self.action_mode == "target":
                act[m] = min(max(int(desired_replicas[m]), self._lo[m]), self._hi[m]) - self._lo[m]
                continue
            delta = int(desired_replicas[m]) - (load.replicas_ready + load.replicas_loading)
            act[m] = min(max(delta, -k), k) + k
        if gpu_types is not None:
            if len(gpu_types) != len(self.hybrid):
                raise ValueError(f"gpu_types: {list(gpu_types)!r} must have {len(self.hybrid)} entries")
            act[self.n_models : self.n_models + len(self.hybrid)] = gpu_types
        return act  # capacity components (spot scenarios) stay 0: the placer's choice

    # ------------------------------------------------------------------ rendering

    def render(self) -> np.ndarray | None:
        """Draw the episode so far: load vs capacity, replicas, TTFT p99 vs SLO (``rgb_array`` mode)."""
        if self.render_mode is None:
            gym.logger.warn(
                "AutoscaleEnv.render() called without a render_mode; pass render_mode='rgb_array'"
            )
            return None
        return render_episode(self)


class AutoscaleEnvV2(AutoscaleEnv):
    """``InferGym/Autoscale-v2``: :class:`AutoscaleEnv` (v3) with the 13 per-model features of before v3
    (:data:`MODEL_FEATURES`, without ``tpot_p99`` and ``kv_transfers_pending``); kept to reproduce results
    made with it. Use ``InferGym/Autoscale-v3``."""

    model_features = MODEL_FEATURES


class AutoscaleEnvV1(AutoscaleEnvV2):
    """``InferGym/Autoscale-v1``: :class:`AutoscaleEnvV2` on the ``reserve`` engine wherever a model does not
    set ``kv_policy`` (KV for prompt + output reserved at admission, whole prefills, no prefix cache), the
    simulator's default when v1 was made; kept to reproduce results made with it. Use ``InferGym/Autoscale-v3``."""

    MODEL_DEFAULTS = RESERVE_ENGINE


class AutoscaleEnvV0(AutoscaleEnvV1):
    """``InferGym/Autoscale-v0``: :class:`AutoscaleEnv` with the reward of v0, kept to reproduce results made with it.

    Requests still waiting or running at the horizon cost nothing: there is no ``unfinished``
    term and the last step's ``slo_violations`` term counts only requests that finished. A policy
    that serves nothing (``min_replicas: 0``, no class timeout) therefore scores 0, better than any
    policy that serves. The ``reserve`` engine by default, as v1. Use ``InferGym/Autoscale-v3``.
    """

    def _terms(self, kpi: Mapping[str, float], dt: float, placement_failures: float) -> dict[str, float]:
        finished = kpi["requests_completed"] + kpi["requests_dropped"]
        missed = kpi["slo_violations"] - kpi["requests_unfinished"]
        return {
            "slo_violations": missed / finished if finished > 0 else 0.0,
            "drops": kpi["requests_dropped"] / max(1.0, kpi["requests_arrived"]),
            "gpu_cost": kpi["cost_usd"] / dt * 3600.0,
            "placement_failures": placement_failures,
        }
