"""``InferGym/Routing-v0`` / ``-v1``: the agent is the request router (load balancer) of an LLM inference cluster.

One step is one arriving request: the agent picks which READY replica of the
request's model serves it, the simulator runs until the next arrival that
needs a decision, and the agent pays for the requests that finished in
between (SLO misses, drops, latency) and for masked choices. Replica counts
come from a scaler (the scenario's ``scaling`` controller, or the ``scaler``
argument) applied every control interval, placement from the scenario's
placer. ``baselines.routing.RouterPolicy`` (built by
:meth:`RoutingEnv.controller_policy`) runs the classical routers through this
action space, so learned and classical routing are measured by the same loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from baselines.routing import RouterPolicy
from envs.common import RESERVE_ENGINE, check_action, split_kwargs, weighted_reward
from envs.sim.batch import AUTO_TO_CENTRAL, MASKED_TO_CENTRAL, RoutingBuffers
from envs.sim.clock import ControlClock
from envs.sim.config import ControllerSpec, Scenario
from envs.sim.controllers import SCALERS
from envs.sim.engine import Simulator
from envs.sim.errors import check_choice, check_number, fail

ENV_PARAMS = ("max_slots", "scaler", "shaping", "stage")
#: Which routing decision the agent makes (the ``stage`` argument).
STAGES = ("prefill", "decode")
REWARD_KEYS = ("slo_violations", "drops", "latency", "invalid_actions")

#: Normalisers of the observation (project choices, documented in the class docstring).
PROMPT_UNIT_TOKENS = 4096.0  # prompt tokens per observation unit; the lognormal sizes cap at 32768 = 8 units
LATENCY_UNIT_S = 10.0  # seconds per unit of the EWMA-latency feature and of the ``latency`` cost term
REQUEST_HIGH = 8.0  # bound of the prompt-size feature
LOAD_HIGH = 8.0  # bound of the queue and in-flight features (in units of max_batch)
SHAPING_CAP_S = 10.0  # cap of one request's term in the shaping potential (s)

#: Per-slot observation features, in order: (name, low, high).
SLOT_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("ready", 0.0, 1.0),
    ("loading", 0.0, 1.0),
    ("queue_len", 0.0, LOAD_HIGH),
    ("running", 0.0, 1.0),
    ("kv_free", 0.0, 1.0),
    ("speed", 0.0, 1.0),
    ("latency_ewma", 0.0, LOAD_HIGH),
    ("in_flight", 0.0, LOAD_HIGH),
)
N_SLOT_FEATURES = len(SLOT_FEATURES)

#: Routing-v1's per-slot features: v0's, then the paged engine's (0 on ``kv_policy: reserve`` replicas).
SLOT_FEATURES_V1: tuple[tuple[str, float, float], ...] = (
    *SLOT_FEATURES,
    ("prefix_match", 0.0, 1.0),
    ("kv_blocks_free", 0.0, 1.0),
    ("preemptions", 0.0, LOAD_HIGH),
)

# Codes of ``RoutingEnv.decisions`` for requests that did not go to a replica chosen by the agent.
NOT_DECIDED = -3  # AUTO_TO_CENTRAL = -1 and MASKED_TO_CENTRAL = -2: envs.sim.batch


#: Normalisers passed to the compiled observation (envs.sim.features.routing_observation), in its order.
NORMS = np.array([PROMPT_UNIT_TOKENS, REQUEST_HIGH, LOAD_HIGH, LATENCY_UNIT_S])


class RoutingEnv(gym.Env):
    """The request router of a simulated GPU inference cluster.

    ## Description

    A cluster of GPU nodes serves one or more LLMs (the scenario: hardware,
    models, workload, SLOs). Each step one request has arrived and waits for
    a routing decision: the agent sends it to one READY replica of the
    request's model, where it joins that replica's queue; replicas run
    continuous batching (a request is admitted into the running batch when the
    batch and the KV cache have room). The simulator then runs until the next
    arrival that needs a decision. Between arrivals, at every control interval
    boundary (``control_interval_s``) the scaler (``scaler`` argument, default
    the scenario's ``scaling``) sets each model's replica count; new replicas
    are placed by the scenario's placer and cold-start (LOADING) before they can
    be chosen. The scenario's ``routing`` entry is ignored: the agent is the
    router. A decision's effect shows in the cost of requests that finish
    later, so the reward credit is delayed (by the queueing plus service time
    of the routed request, typically seconds = tens of steps).

    Disaggregated models (``models[].serving: disaggregated``) are routed twice:
    an arriving request to a replica of the prefill pool, then, at its first
    token, the handed-off request to a replica of the decode pool (where its KV
    cache is sent). ``stage="prefill"`` (the default) makes the agent the
    router of arrivals (the prefill choice; for aggregated models, the only
    one) with the scenario's ``decode_routing`` at the decode stage;
    ``stage="decode"`` makes it the decode router, the choice of where each
    transferred KV cache goes, with the scenario's ``routing`` for arrivals.
    At the decode stage "the request's model" below is its decode pool and a
    step starts at a handoff instead of an arrival.

    An arrival whose model has no READY replica in the visible slots is not a
    decision (there is nothing to choose): it goes to the model's central
    queue, from which the first replica with room pulls it at an iteration
    boundary, and no step is taken for it. The same holds for the in-kernel
    routers, so the two run alike.

    ## Action Space

    ``Discrete(N)``, ``N = max_slots`` (default: the largest ``max_replicas`` of
    the scenario's models). Slot ``j`` is the ``j``-th replica, in increasing
    replica id, among the LIVE replicas (LOADING or READY; a DRAINING replica
    takes no new requests and holds no slot) of the waiting request's model.
    Ids are never reused and new replicas get larger ids, so a replica keeps
    its slot until a replica with a smaller id of the same model leaves (then
    the later ones move down by one). Since a model never has more than
    ``max_replicas`` live replicas, the default ``N`` shows them all; a smaller
    ``N`` hides replicas past slot ``N - 1``.

    ``action_masks()`` is True exactly for the slots holding a READY replica
    (when no request is waiting, at the end of an episode, every slot is True
    and the action is ignored). A masked action (empty slot or a LOADING
    replica) is carried out as late binding: the request joins the model's
    central queue, from which any READY replica pulls it at its next iteration
    boundary, and the ``invalid_actions`` cost term of the step is 1.
    ``info["replica"]`` is the replica id the request went to (-1: central
    queue); ``env.decisions[request id]`` keeps it for the episode
    (``-2``: masked action, ``-1``: no choice, ``-3``: not yet decided).

    ## Observation Space

    ``Box(float32)`` of ``n_models + 1 + n_classes + 8 N`` values: the waiting
    request, then 8 features for each slot (slot ``j`` at offset
    ``n_models + 1 + n_classes + 8 j``; an empty slot is all zeros). Every value
    is clipped to the bounds below. ``B`` is the replica's ``max_batch`` (1 for
    the per-request validation service models).

    | index               | meaning                                                  | min | max | unit |
    |---------------------|----------------------------------------------------------|-----|-----|------|
    | 0 .. n_models-1     | one-hot of the request's model                           | 0   | 1   | 1 |
    | n_models            | prompt tokens / 4096                                     | 0   | 8   | 1 |
    | n_models+1 ..       | one-hot of the request's class (n_classes values)        | 0   | 1   | 1 |

    | slot offset | meaning                                                              | min | max | unit |
    |-------------|----------------------------------------------------------------------|-----|-----|------|
    | 0           | 1 if the replica is READY (can be chosen)                            | 0   | 1   | 1 |
    | 1           | 1 if the replica is LOADING (cold start)                             | 0   | 1   | 1 |
    | 2           | requests waiting at the replica (its queue; at a decode replica also | 0   | 8   | 1 |
    |             | the KV caches in transfer to it) / B                                 |     |     |   |
    | 3           | requests in its running batch / B                                    | 0   | 1   | 1 |
    | 4           | free fraction of its KV cache (1 - reserved / capacity)              | 0   | 1   | 1 |
    | 5           | its capacity (saturation req/s of its GPU type) / fastest type's     | 0   | 1   | 1 |
    | 6           | EWMA (weight 0.2) of its end-to-end latency / 10 s; 0 until measured | 0   | 8   | 1 |
    | 7           | requests in flight (waiting + running) / B                           | 0   | 8   | 1 |

    ``InferGym/Routing-v1`` adds three features per slot (11 in all), from the paged engine
    (``models[].kv_policy: paged``; all 0 for ``reserve`` replicas):

    | slot offset | meaning                                                              | min | max | unit |
    |-------------|----------------------------------------------------------------------|-----|-----|------|
    | 8           | the waiting request's prompt tokens in the replica's prefix cache / prompt tokens | 0 | 1 | 1 |
    | 9           | KV blocks free or held only by the prefix cache / KV blocks          | 0   | 1   | 1 |
    | 10          | preemptions on the replica so far / B                                | 0   | 8   | 1 |

    Output lengths are not observed: a real router does not know them. Feature
    5 uses the fastest GPU type the model may run on in this scenario. After
    the last decision of an episode (no request waiting) the observation is
    all zeros.

    ## Rewards

    ``reward = -(w_slo * slo_violations + w_drops * drops + w_lat * latency +
    w_inv * invalid_actions)`` with the scenario's ``reward`` weights (defaults
    :data:`envs.sim.config.DEFAULT_REWARD`: 10, 10, 0.1, 1.0). The terms are
    costs of the requests that FINISHED (completed or dropped) since the
    previous step, whichever decision sent them (delayed credit):

    * ``slo_violations`` (count): finished requests that missed their class's
      SLO (TTFT, TPOT, end-to-end targets); a dropped request always counts.
    * ``drops`` (count): requests dropped (queue timeout, or too long for the
      KV cache).
    * ``latency`` (units of 10 s): sum of the end-to-end latency (arrival to
      last token) of the completed requests / 10 s.
    * ``invalid_actions`` (count, 0 or 1): the action was masked.

    Every finished request is charged exactly once, so over an episode the
    terms add up to the episode's ``slo_violations``, ``requests_dropped`` and
    ``e2e_mean_s * requests_completed / 10``. About one request finishes per
    step, so the terms are O(1).

    Optional potential-based shaping for training (Ng, Harada & Russell, ICML
    1999), off by default: with ``shaping = c > 0`` the reward also gets
    ``c * (Phi(s) - Phi(s'))``, where ``Phi`` is the cluster's outstanding work
    in seconds, ``sum over replicas and k = 1..n of min(k / mu, 10 s)`` (``n``
    requests in flight, ``mu`` the replica's capacity in req/s), and ``Phi = 0``
    after the last step. Routing a request to a replica costs at once
    ``c min((n + 1) / mu, 10 s)`` (the shortest-expected-delay score), paid back as the replica works its
    queue off, so a decision's consequence shows in its own step instead of
    tens of steps later. The terms telescope: an episode's shaped return equals
    its unshaped return (``Phi`` is 0 at reset, when no request is in flight).
    The shaping term is ``info["shaping"]``; it is not among
    ``info["rewards"]``. This is the undiscounted form of Ng et al.'s
    ``gamma Phi(s') - Phi(s)``, so for a discounted learner the optimal policy
    is kept only approximately; in exchange the episode return is exact.
    Evaluate with ``shaping=0`` (the default), so every policy is scored on the
    same reward.

    ``info["rewards"]`` holds the terms; ``reward_from_terms(terms)`` recomputes
    the reward (without shaping). ``info["kpi"]`` holds the step's KPIs: ``time_s`` (simulated
    time of the next decision), ``requests_completed``, ``requests_dropped``,
    ``slo_violations`` and ``e2e_sum_s`` over the requests finished in the
    step. On the last step of an episode ``info["episode_kpi"]`` holds
    ``Simulator.episode_kpis()`` (keys in :mod:`envs.sim.metrics`).
    ``info["replica"]`` and ``info["request"]`` (the next waiting request, -1 at
    the end) are also given.

    ## Starting State

    The scenario's initial replicas, READY (warm) on nodes chosen by the placer,
    empty queues, time at the first arrival. Arrivals, request sizes, classes,
    sessions and the placer's random choices are drawn from the env's seeded
    generator at reset.

    ## Episode End

    ``truncated`` is True when the simulation reaches ``horizon_s`` with no
    further arrival (the last step runs the queues on to the horizon).
    ``terminated`` is always False: nothing ends a routing task early.

    ## Arguments

    ``gymnasium.make("InferGym/Routing-v0", scenario="default", render_mode=None, max_slots=None,
    scaler=None, shaping=0.0, stage="prefill", **scenario_overrides)``

    * ``scenario``: shipped name, YAML path, dict or Scenario.
    * ``max_slots``: number of slots ``N`` (integer >= 1; default the largest
      ``max_replicas`` of the scenario's models).
    * ``scaler``: the replica scaler applied every control interval, a name or
      ``{"kind": ..., **params}`` of ``baselines.scaling`` (default: the
      scenario's ``scaling``; ``"static"`` keeps the scenario's replica counts).
    * ``shaping``: weight ``c >= 0`` of the potential-based shaping term, reward
      units per second of outstanding work (default 0: off; see Rewards).
    * ``stage``: ``"prefill"`` (route arriving requests) or ``"decode"`` (route the requests a
      disaggregated model's prefill pool hands off; needs such a model). See Description.
    * any other keyword is a top-level scenario key (``horizon_s``,
      ``workload``, ...) deep-merged into the scenario.

    ## Version History

    * v2: models that do not set ``kv_policy`` run the ``paged`` engine (the simulator's default since
      it landed); features as v1 (:class:`RoutingEnvV2`).
    * v1: adds the paged engine's per-slot features (prefix match, free KV blocks, preemptions);
      dynamics and rewards as v0.
    * v0: initial version (8 features per slot), still registered.

    v1 and v0 fill in ``kv_policy: reserve`` for models that do not set it (the engine they were
    made with).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    slot_features = SLOT_FEATURES  #: this version's per-slot features (name, low, high)
    #: ``models[]`` keys this version fills in where the scenario leaves them out
    MODEL_DEFAULTS: ClassVar[Mapping[str, Any]] = RESERVE_ENGINE

    def __init__(self, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any) -> None:
        self.scenario, own = split_kwargs(scenario, kwargs, ENV_PARAMS, "RoutingEnv", self.MODEL_DEFAULTS)
        sc: Scenario = self.scenario
        if render_mode is not None:
            check_choice("render_mode", render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        spec = own.get("scaler")
        if spec is None:
            spec = sc.scaling.as_config()
        elif isinstance(spec, ControllerSpec):
            spec = spec.as_config()
        if not isinstance(spec, (str, Mapping)):
            # an instance would be shared by every model's scaling loop; names and mappings also pickle
            raise fail("scaler", spec, "must be a scaler name or a mapping with 'kind' and its parameters")
        # Built here only to report a bad one as ``scaler.<param>`` now rather than at the first reset.
        SCALERS.build(spec, "scaler")
        self.scaler = spec
        self.stage = check_choice("stage", own.get("stage", "prefill"), STAGES)
        if self.stage == "decode" and not sc.disaggregated:
            raise fail("stage", "decode", "needs a model with serving: disaggregated")
        # the agent's stage is external; the other stage keeps the scenario's router
        self._routers = {"router": "external"} if self.stage == "prefill" else {"decode_router": "external"}
        self.n_models = len(sc.models)
        self.n_classes = len(sc.workload.classes)
        default_slots = max(d.max_replicas for d in sc.models)
        self.max_slots = int(
            check_number("max_slots", own.get("max_slots", default_slots), ge=1, integer=True)
        )
        # A throw-away simulator over one interval gives each model's fastest replica capacity.
        probe = Simulator(sc, 0, overrides={"horizon_s": sc.control_interval_s}, scaler=spec, **self._routers)
        # the stage the agent does not route runs in the event loop (a Python router there would stop it)
        if self.stage == "decode" and probe.python_router is not None:
            raise fail("routing", probe.router_name, "must be a rule or score router with stage='decode'")
        if self.stage == "prefill" and probe.python_decode_router is not None:
            raise fail(
                "decode_routing", type(probe.decode_router).__name__, "must be a rule or score router here"
            )
        self.speed_max = np.array(
            [
                max(v[2] for (m, _), v in probe._rep_params.items() if m == mm and v is not None)
                for mm in range(self.n_models)
            ],
            np.float64,
        )
        self._req_dim = self.n_models + 1 + self.n_classes
        n_feat = len(self.slot_features)
        low = np.zeros(self._req_dim + n_feat * self.max_slots, np.float32)
        high = np.ones_like(low)
        high[self.n_models] = REQUEST_HIGH
        high[self._req_dim :] = np.tile([f[2] for f in self.slot_features], self.max_slots)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.max_slots)
        self._w = [float(sc.reward.get(k, 0.0)) for k in REWARD_KEYS]
        self.shaping = float(check_number("shaping", own.get("shaping", 0.0), ge=0.0))
        self._phi = 0.0
        self.sim: Simulator | None = None
        self._obs = np.zeros(low.shape, np.float32)
        self._mask = np.ones(self.max_slots, bool)
        self._slot_rep = np.full(self.max_slots, -1, np.int64)
        self._terms = np.zeros(4)
        self._seen = np.zeros(2, np.int64)
        self._pending = -1
        self.decisions = np.zeros(0, np.int64)

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.sim = sim = Simulator(self.scenario, seed=self.np_random, scaler=self.scaler, **self._routers)
        self.clock = ControlClock(sim)
        self._seen[:] = 0
        self._terms[:] = 0.0
        self.decisions = np.full(sim.n_requests + 1, NOT_DECIDED, np.int64)
        self._buf = RoutingBuffers(self.speed_max, NORMS, self._seen, self._terms, self._obs, self._mask,
                                   self._slot_rep, self.decisions)  # fmt: skip
        self.n_invalid = 0
        self._ended = False
        self._pending = self._run(-1)
        self._phi = self._potential() if self.shaping > 0.0 else 0.0
        return self._obs.copy(), {"request": self._pending, "time_s": sim.now}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if type(action) is int or isinstance(action, np.integer):
            a = int(action)
            if not 0 <= a < self.max_slots:
                check_action(self.action_space, action, "RoutingEnv")  # raises, naming the action
        else:
            a = int(check_action(self.action_space, action, "RoutingEnv"))
        sim = self.sim
        if sim is None:
            raise RuntimeError("RoutingEnv: call reset() before step()")
        i = self._pending
        invalid = False
        rep = -1
        if i >= 0:
            invalid = not self._mask[a]
            if invalid:
                self.decisions[i] = MASKED_TO_CENTRAL
                self.n_invalid += 1
            else:
                rep = int(self._slot_rep[a])
                self.decisions[i] = rep
            self._pending = self._run(rep)
        elif self._ended:
            raise RuntimeError("RoutingEnv: the episode reached its horizon; call reset()")
        # else: the episode had no decision at all (reset already ran to the horizon): this step ends it
        t = self._terms
        slo, drops, e2e, done = t.tolist()  # Python floats, as float(t[k]) would give, in one call
        latency, inv = e2e / LATENCY_UNIT_S, 1.0 if invalid else 0.0
        terms = {"slo_violations": slo, "drops": drops, "latency": latency, "invalid_actions": inv}
        kpi = {
            "time_s": sim.now,
            "requests_completed": done,
            "requests_dropped": drops,
            "slo_violations": slo,
            "e2e_sum_s": e2e,
        }
        t.fill(0.0)
        truncated = self._pending < 0
        self._ended = truncated
        info = {"rewards": terms, "kpi": kpi, "replica": rep, "request": self._pending}
        if truncated:
            info["episode_kpi"] = sim.episode_kpis()
        # weighted_reward(terms, weights) inlined (same sum, same order, so the same float)
        w = self._w
        reward = -(0 + w[0] * slo + w[1] * drops + w[2] * latency + w[3] * inv)
        if self.shaping > 0.0:
            phi = 0.0 if truncated else self._potential()  # the end state's potential is 0 (Ng et al.)
            info["shaping"] = shaped = self.shaping * (self._phi - phi)
            self._phi = phi
            reward += shaped
        return self._obs.copy(), reward, False, truncated, info

    def reward_from_terms(self, terms: Mapping[str, float]) -> float:
        """Reward of a step from its cost terms: minus their sum weighted by the scenario's ``reward``."""
        return weighted_reward(terms, self.scenario.reward)

    def action_masks(self) -> np.ndarray:
        """True for the slots holding a READY replica of the waiting request's model (see Action Space)."""
        return self._mask.copy()

    @classmethod
    def controller_policy(cls, spec: Any, seed: int = 0) -> RouterPolicy:
        """The adapter that runs the classical router ``spec`` (a name or a ``{"kind": ...}`` mapping)
        through this action space. ``seed`` is unused: the random rules read the
        uniforms the simulator drew with each request."""
        return RouterPolicy(spec)

    # ------------------------------------------------------------------ state for policies

    @property
    def pending_request(self) -> int | None:
        """Id of the request waiting for this step's decision (None at the end of an episode)."""
        return None if self._pending < 0 else self._pending

    @property
    def obs_layout(self) -> dict[str, int]:
        """Where the per-slot features sit in the observation (for slot-structured policies)."""
        return {"slots_start": self._req_dim, "n_slots": self.max_slots, "slot_dim": len(self.slot_features)}

    @property
    def slot_replicas(self) -> np.ndarray:
        """Replica id held by each slot for the waiting request's model (-1: empty slot)."""
        return self._slot_rep.copy()

    # ------------------------------------------------------------------ simulation

    def _run(self, route_to: int) -> int:
        """Route the waiting request (if any) to ``route_to`` and run to the next arrival with a choice.

        Returns that request's id, or -1 at the horizon. Control boundaries
        crossed on the way run the scaler (``Simulator.control_step``: desired
        replicas, then the KPI window rolls). Arrivals with no READY replica in
        a slot go to the central queue without a decision.

        Speed: one compiled call per step (``Simulator.route_and_observe`` routes, runs to the
        next arrival with a choice and fills the observation), plus a few at control boundaries.
        """
        nxt = self.sim.route_and_observe(route_to, self.clock.next_boundary_s, self._buf)
        return nxt if nxt >= 0 else self._past_boundary()

    def _past_boundary(self) -> int:
        """The clock is at the interval's end with no decision due: run control boundaries until an
        arrival with a choice (its id) or the horizon (-1, the final observation filled)."""
        sim, clock = self.sim, self.clock
        while True:
            if clock.next_boundary_s >= clock.horizon_s:
                sim.routing_observation(-1, self.speed_max, self._seen, self._terms, self._obs, self._mask,
                                        self._slot_rep, NORMS)  # fmt: skip
                self._mask[:] = True  # nothing to route: any action is accepted and ignored
                return -1
            sim.control_step(kpis=False)  # nothing here reads the interval KPIs
            clock.passed()
            nxt = sim.route_and_observe(-1, clock.next_boundary_s, self._buf)
            if nxt >= 0:
                return nxt

    def _potential(self) -> float:
        """The shaping potential of the current state (``Simulator.outstanding_work_s``), in seconds."""
        return self.sim.outstanding_work_s(SHAPING_CAP_S)

    # ------------------------------------------------------------------ rendering

    def render(self) -> np.ndarray | None:
        """Draw the episode so far: requests in flight per replica, decisions, cumulative costs."""
        if self.render_mode is None:
            gym.logger.warn("RoutingEnv.render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8.0, 7.0), dpi=80)
        canvas = FigureCanvasAgg(fig)
        axes = fig.subplots(3, 1, sharex=True)
        sim = self.sim
        if sim is None:
            fig.suptitle("InferGym/Routing (call reset() first)")
        else:
            self._draw(axes, sim)
            fig.suptitle(
                f"InferGym/Routing, scenario {self.scenario.name!r}: t = {sim.now:.1f} s, "
                f"{int(np.count_nonzero(self.decisions >= MASKED_TO_CENTRAL))} decisions",
                fontsize=11,
            )
        fig.tight_layout()
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()

    def _draw(self, axes: Any, sim: Simulator) -> None:
        now = max(sim.now, 1e-9)
        req = sim.requests()
        n_arr = len(req)
        dec = self.decisions[:n_arr]
        finished = req.is_state("done") | req.is_state("dropped")
        end = np.where(finished, req.finished_s, np.inf)
        start = np.where(dec >= 0, req.arrival_s, req.admitted_s)
        grid = np.linspace(0.0, now, 200)
        for r in range(sim.n_replicas):
            mine = req.replica == r
            s = np.sort(start[mine & np.isfinite(start)])
            e = np.sort(end[mine])
            inflight = np.searchsorted(s, grid, side="right") - np.searchsorted(e, grid, side="right")
            rep = sim.replica_view(r)
            label = f"r{r} {sim.scenario.models[rep.model].name} ({rep.gpu_type})"
            axes[0].plot(grid, inflight, lw=1, label=label if r < 12 else None)
        central = dec < 0
        cs = np.sort(req.arrival_s[central])
        ce = np.sort(np.where(np.isnan(req.admitted_s[central]), end[central], req.admitted_s[central]))
        queued = np.searchsorted(cs, grid, side="right") - np.searchsorted(ce, grid, side="right")
        if len(cs):
            axes[0].plot(grid, queued, "k--", lw=1, label="central queue")
        axes[0].set_ylabel("requests")
        axes[0].set_title("requests in flight per replica (queued + running)", fontsize=10)
        chosen = dec >= 0
        axes[1].scatter(req.arrival_s[chosen], dec[chosen], s=4, c="C0", label="routed to replica")
        for code, color, label in ((MASKED_TO_CENTRAL, "C3", "masked action: central queue"),
                                   (AUTO_TO_CENTRAL, "C7", "no READY replica: central queue")):  # fmt: skip
            sel = dec == code
            if sel.any():
                axes[1].scatter(
                    req.arrival_s[sel], np.full(int(sel.sum()), -1), s=12, marker="x", c=color, label=label
                )
        axes[1].set_ylabel("replica id")
        axes[1].set_title("routing decisions (-1: central queue)", fontsize=10)
        fin = np.flatnonzero(finished)
        order = fin[np.argsort(end[fin], kind="stable")]
        t_fin = end[order]
        dropped = req.is_state("dropped")[order]
        arr = req.arrival_s[order]
        ttft = req.first_token_s[order] - arr
        e2e = end[order] - arr
        n_out = req.output_tokens[order]
        tpot = np.where(n_out > 1, (end[order] - req.first_token_s[order]) / np.maximum(n_out - 1, 1), 0.0)
        target = sim.slo[req.request_class[order]]
        met = ~dropped & (ttft <= target[:, 0]) & (tpot <= target[:, 1]) & (e2e <= target[:, 2])
        axes[2].step(t_fin, np.cumsum(~met), where="post", label="SLO violations")
        axes[2].step(t_fin, np.cumsum(dropped), where="post", label="drops")
        inv = np.sort(req.arrival_s[dec == MASKED_TO_CENTRAL])
        axes[2].step(inv, np.arange(1, len(inv) + 1), where="post", label="masked actions")
        axes[2].set_ylabel("count")
        axes[2].set_title("cumulative costs", fontsize=10)
        axes[2].set_xlabel("simulated time (s)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.set_xlim(0.0, now)
            ax.legend(fontsize=7, loc="upper left")


class RoutingEnvV1(RoutingEnv):
    """``InferGym/Routing-v1``: Routing-v0 with the paged engine's features in every slot (see :class:`RoutingEnv`)."""

    slot_features = SLOT_FEATURES_V1


class RoutingEnvV2(RoutingEnvV1):
    """``InferGym/Routing-v2``: Routing-v1 on the ``paged`` engine wherever a model does not set ``kv_policy``."""

    MODEL_DEFAULTS = {}


__all__ = [
    "RoutingEnv",
    "RoutingEnvV1",
    "RoutingEnvV2",
    "SLOT_FEATURES",
    "SLOT_FEATURES_V1",
    "REWARD_KEYS",
    "LATENCY_UNIT_S",
    "PROMPT_UNIT_TOKENS",
]
