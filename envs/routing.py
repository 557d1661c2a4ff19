"""``InferGym/Routing-v0``: the agent is the request router (load balancer) of an LLM inference cluster.

One step is one arriving request: the agent picks which READY replica of the
request's model serves it, the simulator runs until the next arrival that
needs a decision, and the agent pays for the requests that finished in
between (SLO misses, drops, latency) and for masked choices. Replica counts
come from a scaler (the scenario's ``scaling`` controller, or the ``scaler``
argument) applied every control interval, placement from the scenario's
placer. ``baselines.routing.RouterPolicy`` runs the classical routers through
this action space, so learned and classical routing are measured by the same
loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numba import njit

from envs.common import check_action, split_kwargs, weighted_reward
from envs.sim import kernel as K
from envs.sim.config import ControllerSpec, Scenario
from envs.sim.engine import Simulator
from envs.sim.errors import check_choice, check_number, fail

ENV_PARAMS = ("max_slots", "scaler", "shaping")
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

# Codes of ``RoutingEnv.decisions`` for requests that did not go to a replica chosen by the agent.
NOT_DECIDED, MASKED_TO_CENTRAL, AUTO_TO_CENTRAL = -3, -2, -1


# The engine's array layout, passed to ``_observe`` at run time: numba's on-disk cache is keyed on this
# file only, so column numbers compiled in as constants would go stale if the kernel renumbered them.
_LAYOUT_NAMES = (
    "R_ARR", "R_FIRST", "R_DONE", "R_OUTPUT", "R_CLASS", "R_MODEL", "R_PROMPT", "Q_STATE", "Q_MAXB", "Q_NRUN",
    "Q_KVCAP", "Q_KVRES", "P_SPEED", "P_EWMA", "I_NDONE", "I_NDROP", "REP_READY", "REP_LOADING",
)  # fmt: skip
LAYOUT = np.array([getattr(K, name) for name in _LAYOUT_NAMES], np.int64)


@njit(cache=True)
def _observe(rf, ri, pf, pi, qn, mrep, mn, log_done, log_drop, gi, slo, lay, speed_max, i, n_models, n_classes,
             seen, terms, obs, mask, slot_rep):  # fmt: skip
    """Add the costs of requests finished since the last call to ``terms``; fill obs/mask/slots for request ``i``.

    Compiled because it runs once per step and a handful of numpy calls on
    small arrays would cost more than the simulation itself. The SLO test is
    the one of :func:`envs.sim.metrics.request_kpis`, so the per-step costs
    add up to the episode KPIs. ``lay`` is :data:`LAYOUT`. Returns the number
    of READY slots (0 when ``i < 0``: no request waiting).
    """
    r_arr = lay[0]
    r_first = lay[1]
    r_done = lay[2]
    r_output = lay[3]
    r_class = lay[4]
    r_model = lay[5]
    r_prompt = lay[6]
    q_state = lay[7]
    q_maxb = lay[8]
    q_nrun = lay[9]
    q_kvcap = lay[10]
    q_kvres = lay[11]
    p_speed = lay[12]
    p_ewma = lay[13]
    i_ndone = lay[14]
    i_ndrop = lay[15]
    rep_ready = lay[16]
    rep_loading = lay[17]
    nd = gi[i_ndone]
    for k in range(seen[0], nd):
        j = log_done[k]
        arr = rf[j, r_arr]
        ttft = rf[j, r_first] - arr
        e2e = rf[j, r_done] - arr
        n_out = ri[j, r_output]
        tpot = (rf[j, r_done] - rf[j, r_first]) / (n_out - 1) if n_out > 1 else 0.0
        c = ri[j, r_class]
        if not (ttft <= slo[c, 0] and tpot <= slo[c, 1] and e2e <= slo[c, 2]):
            terms[0] += 1.0
        terms[2] += e2e
        terms[3] += 1.0
    seen[0] = nd
    nx = gi[i_ndrop]
    terms[0] += nx - seen[1]  # a dropped request never meets its SLO
    terms[1] += nx - seen[1]
    seen[1] = nx
    obs[:] = 0.0
    mask[:] = False
    slot_rep[:] = -1
    if i < 0:
        return 0
    m = ri[i, r_model]
    obs[m] = 1.0
    obs[n_models] = min(ri[i, r_prompt] / PROMPT_UNIT_TOKENS, REQUEST_HIGH)
    obs[n_models + 1 + ri[i, r_class]] = 1.0
    base = n_models + 1 + n_classes
    n_slots = mask.shape[0]
    s = 0
    n_ready = 0
    for k in range(mn[m]):
        r = mrep[m, k]
        st = pi[r, q_state]
        if st != rep_ready and st != rep_loading:
            continue  # DRAINING replicas take no new requests and hold no slot
        if s >= n_slots:
            break
        o = base + N_SLOT_FEATURES * s
        slot_rep[s] = r
        if st == rep_ready:
            obs[o] = 1.0
            mask[s] = True
            n_ready += 1
        else:
            obs[o + 1] = 1.0
        maxb = pi[r, q_maxb]
        q = qn[n_models + r]
        run = pi[r, q_nrun]
        obs[o + 2] = min(q / maxb, LOAD_HIGH)
        obs[o + 3] = min(run / maxb, 1.0)
        cap = pi[r, q_kvcap]
        obs[o + 4] = min(max(1.0 - pi[r, q_kvres] / cap, 0.0), 1.0) if cap > 0 else 0.0
        obs[o + 5] = min(pf[r, p_speed] / speed_max[m], 1.0)
        ew = pf[r, p_ewma]
        obs[o + 6] = 0.0 if ew < 0.0 else min(ew / LATENCY_UNIT_S, LOAD_HIGH)
        obs[o + 7] = min((q + run) / maxb, LOAD_HIGH)
        s += 1
    return n_ready


@njit(cache=True)
def _potential(pf, pi, qn, mrep, mn, lay, n_models, cap_s):
    """Outstanding work of the cluster in seconds: ``sum over replicas, k = 1..n of min(k / mu, cap_s)``.

    ``n`` is the replica's requests in flight (queued + running) and ``mu`` its
    capacity (saturation req/s): ``k / mu`` is when the ``k``-th of them would
    finish, served one after another at rate ``mu``, capped at ``cap_s`` so
    that an overloaded replica's potential grows linearly, not quadratically.
    Adding one request to a replica raises it by ``min((n + 1) / mu, cap_s)``,
    the score of shortest expected delay. The potential of the ``shaping``
    reward term (see ``RoutingEnv``).
    """
    q_nrun = lay[9]
    p_speed = lay[12]
    total = 0.0
    for m in range(mrep.shape[0]):
        for k in range(mn[m]):
            r = mrep[m, k]
            n = qn[n_models + r] + pi[r, q_nrun]
            if n > 0:
                mu = pf[r, p_speed]
                j = min(n, int(cap_s * mu))  # the first j requests finish before the cap
                total += j * (j + 1.0) / (2.0 * mu) + (n - j) * cap_s
    return total


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
    | 2           | requests in the replica's own queue / B                              | 0   | 8   | 1 |
    | 3           | requests in its running batch / B                                    | 0   | 1   | 1 |
    | 4           | free fraction of its KV cache (1 - reserved / capacity)              | 0   | 1   | 1 |
    | 5           | its capacity (saturation req/s of its GPU type) / fastest type's     | 0   | 1   | 1 |
    | 6           | EWMA (weight 0.2) of its end-to-end latency / 10 s; 0 until measured | 0   | 8   | 1 |
    | 7           | requests in flight (queued + running) / B                            | 0   | 8   | 1 |

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
    scaler=None, shaping=0.0, **scenario_overrides)``

    * ``scenario``: shipped name, YAML path, dict or Scenario.
    * ``max_slots``: number of slots ``N`` (integer >= 1; default the largest
      ``max_replicas`` of the scenario's models).
    * ``scaler``: the replica scaler applied every control interval, a name or
      ``{"kind": ..., **params}`` of ``baselines.scaling`` (default: the
      scenario's ``scaling``; ``"static"`` keeps the scenario's replica counts).
    * ``shaping``: weight ``c >= 0`` of the potential-based shaping term, reward
      units per second of outstanding work (default 0: off; see Rewards).
    * any other keyword is a top-level scenario key (``horizon_s``,
      ``workload``, ...) deep-merged into the scenario.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any) -> None:
        self.scenario, own = split_kwargs(scenario, kwargs, ENV_PARAMS, "RoutingEnv")
        sc: Scenario = self.scenario
        if render_mode is not None:
            check_choice("render_mode", render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        spec = own.get("scaler")
        if spec is None:
            spec = sc.scaling.as_config() if sc.scaling.params else sc.scaling.kind
        elif isinstance(spec, ControllerSpec):
            spec = spec.as_config() if spec.params else spec.kind
        if not isinstance(spec, (str, Mapping)):
            # an instance would be shared by every model's scaling loop; names and mappings also pickle
            raise fail("scaler", spec, "must be a scaler name or a mapping with 'kind' and its parameters")
        # envs sits above baselines; resolve the scaler like the engine resolves controllers (a plugin),
        # here only to report a bad one as ``scaler.<param>`` now rather than at the first reset.
        importlib.import_module("baselines.scaling").make_scaler(spec, "scaler")
        self.scaler = spec
        self.n_models = len(sc.models)
        self.n_classes = len(sc.workload.classes)
        default_slots = max(d.max_replicas for d in sc.models)
        self.max_slots = int(
            check_number("max_slots", own.get("max_slots", default_slots), ge=1, integer=True)
        )
        # A throw-away simulator over one interval gives each model's fastest replica capacity.
        probe = Simulator(
            sc, 0, overrides={"horizon_s": sc.control_interval_s}, router="external", scaler=spec
        )
        self.speed_max = np.array(
            [
                max(v[2] for (m, _), v in probe._rep_params.items() if m == mm and v is not None)
                for mm in range(self.n_models)
            ],
            np.float64,
        )
        self._req_dim = self.n_models + 1 + self.n_classes
        low = np.zeros(self._req_dim + N_SLOT_FEATURES * self.max_slots, np.float32)
        high = np.ones_like(low)
        high[self.n_models] = REQUEST_HIGH
        high[self._req_dim :] = np.tile([f[2] for f in SLOT_FEATURES], self.max_slots)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.max_slots)
        self._w = [float(sc.reward.get(k, 0.0)) for k in REWARD_KEYS]
        self.shaping = float(check_number("shaping", own.get("shaping", 0.0), ge=0.0))
        self._phi = 0.0
        self._interval_s = sc.control_interval_s
        self._horizon_s = sc.horizon_s
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
        self.sim = sim = Simulator(self.scenario, seed=self.np_random, router="external", scaler=self.scaler)
        self._cache_arrays()
        self._k = 1  # index of the next control boundary
        self._until = min(self._interval_s, self._horizon_s)
        self._seen[:] = 0
        self._terms[:] = 0.0
        self.decisions = np.full(sim.n_requests + 1, NOT_DECIDED, np.int64)
        self.n_invalid = 0
        self._ended = False
        self._draining = False
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
        terms = {
            "slo_violations": float(t[0]),
            "drops": float(t[1]),
            "latency": float(t[2]) / LATENCY_UNIT_S,
            "invalid_actions": 1.0 if invalid else 0.0,
        }
        kpi = {
            "time_s": sim.now,
            "requests_completed": float(t[3]),
            "requests_dropped": float(t[1]),
            "slo_violations": float(t[0]),
            "e2e_sum_s": float(t[2]),
        }
        t[:] = 0.0
        truncated = self._pending < 0
        self._ended = truncated
        info = {"rewards": terms, "kpi": kpi, "replica": rep, "request": self._pending}
        if truncated:
            info["episode_kpi"] = sim.episode_kpis()
        # weighted_reward(terms, weights) inlined (same sum, same order, so the same float)
        w = self._w
        reward = -(
            0 + w[0] * terms["slo_violations"] + w[1] * terms["drops"] + w[2] * terms["latency"]
            + w[3] * terms["invalid_actions"]
        )  # fmt: skip
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

    # ------------------------------------------------------------------ state for policies

    @property
    def pending_request(self) -> int | None:
        """Id of the request waiting for this step's decision (None at the end of an episode)."""
        return None if self._pending < 0 else self._pending

    @property
    def obs_layout(self) -> dict[str, int]:
        """Where the per-slot features sit in the observation (for slot-structured policies)."""
        return {"slots_start": self._req_dim, "n_slots": self.max_slots, "slot_dim": N_SLOT_FEATURES}

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

        Speed: this is ``Simulator.route`` + ``Simulator.advance`` fused into one
        compiled call per step (``_kernel``; the mask has already checked that the
        replica is READY and serves the request's model). The engine's
        Python-side release bookkeeping (``_sync_releases``: free the GPUs of
        drained replicas) only has work while a replica is DRAINING, which
        starts only at a control step, so it runs only then.
        """
        sim = self.sim
        gi = sim.gi
        h = self._horizon_s
        code = sim._kernel(self._until, route_to)
        while True:
            if self._draining:
                self._sync()
            if code == K.STOP_ROUTE:
                i = int(gi[K.I_PENDING])
                n_ready = _observe(*self._arrays, self.speed_max, i, self.n_models, self.n_classes, self._seen,
                                   self._terms, self._obs, self._mask, self._slot_rep)  # fmt: skip
                if n_ready > 0:
                    return i
                self.decisions[i] = AUTO_TO_CENTRAL
                code = sim._kernel(self._until, -1)
                continue
            if self._until >= h:
                _observe(*self._arrays, self.speed_max, -1, self.n_models, self.n_classes, self._seen,
                         self._terms, self._obs, self._mask, self._slot_rep)  # fmt: skip
                self._mask[:] = True  # nothing to route: any action is accepted and ignored
                sim.sync_releases()
                return -1
            sim.sync_releases()
            sim.control_step()
            self._cache_arrays()  # a scale-up may have grown (replaced) the replica arrays
            self._sync()
            self._k += 1
            self._until = min(self._k * self._interval_s, h)
            code = sim._kernel(self._until, -1)

    def _potential(self) -> float:
        """The shaping potential of the current state (:func:`_potential`), in seconds."""
        sim = self.sim
        return float(
            _potential(sim.pf, sim.pi, sim.qn, sim.mrep, sim.mn, LAYOUT, self.n_models, SHAPING_CAP_S)
        )

    def _cache_arrays(self) -> None:
        sim = self.sim
        self._arrays = (
            sim.rf, sim.ri, sim.pf, sim.pi, sim.qn, sim.mrep, sim.mn, sim.log_done, sim.log_drop, sim.gi, sim.slo,
            LAYOUT,
        )  # fmt: skip

    def _sync(self) -> None:
        sim = self.sim
        sim.sync_releases()
        self._draining = bool(np.any(sim.pi[: sim.n_replicas, K.Q_STATE] == K.REP_DRAINING))

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
            fig.suptitle("InferGym/Routing-v0 (call reset() first)")
        else:
            self._draw(axes, sim)
            fig.suptitle(
                f"InferGym/Routing-v0, scenario {self.scenario.name!r}: t = {sim.now:.1f} s, "
                f"{int(np.count_nonzero(self.decisions >= MASKED_TO_CENTRAL))} decisions",
                fontsize=11,
            )
        fig.tight_layout()
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()

    def _draw(self, axes: Any, sim: Simulator) -> None:
        now = max(sim.now, 1e-9)
        n_arr = int(sim.gi[K.I_NEXT_ARR])
        rf, ri = sim.rf[:n_arr], sim.ri[:n_arr]
        dec = self.decisions[:n_arr]
        state = ri[:, K.R_STATE]
        finished = (state == K.REQ_DONE) | (state == K.REQ_DROPPED)
        end = np.where(finished, rf[:, K.R_DONE], np.inf)
        start = np.where(dec >= 0, rf[:, K.R_ARR], rf[:, K.R_ADMIT])
        grid = np.linspace(0.0, now, 200)
        gpu_names = [g.name for g in sim.gpu_types]
        for r in range(sim.n_replicas):
            mine = ri[:, K.R_REPLICA] == r
            s = np.sort(start[mine & np.isfinite(start)])
            e = np.sort(end[mine])
            inflight = np.searchsorted(s, grid, side="right") - np.searchsorted(e, grid, side="right")
            rep = sim.replicas[r]
            label = f"r{r} {sim.scenario.models[rep.model].name} ({gpu_names[rep.gpu_type]})"
            axes[0].plot(grid, inflight, lw=1, label=label if r < 12 else None)
        central = dec < 0
        cs = np.sort(rf[central, K.R_ARR])
        ce = np.sort(np.where(np.isnan(rf[central, K.R_ADMIT]), end[central], rf[central, K.R_ADMIT]))
        queued = np.searchsorted(cs, grid, side="right") - np.searchsorted(ce, grid, side="right")
        if len(cs):
            axes[0].plot(grid, queued, "k--", lw=1, label="central queue")
        axes[0].set_ylabel("requests")
        axes[0].set_title("requests in flight per replica (queued + running)", fontsize=10)
        chosen = dec >= 0
        axes[1].scatter(rf[chosen, K.R_ARR], dec[chosen], s=4, c="C0", label="routed to replica")
        for code, color, label in ((MASKED_TO_CENTRAL, "C3", "masked action: central queue"),
                                   (AUTO_TO_CENTRAL, "C7", "no READY replica: central queue")):  # fmt: skip
            sel = dec == code
            if sel.any():
                axes[1].scatter(
                    rf[sel, K.R_ARR], np.full(int(sel.sum()), -1), s=12, marker="x", c=color, label=label
                )
        axes[1].set_ylabel("replica id")
        axes[1].set_title("routing decisions (-1: central queue)", fontsize=10)
        fin = np.flatnonzero(finished)
        order = fin[np.argsort(end[fin], kind="stable")]
        t_fin = end[order]
        dropped = state[order] == K.REQ_DROPPED
        arr = rf[order, K.R_ARR]
        ttft = rf[order, K.R_FIRST] - arr
        e2e = end[order] - arr
        n_out = ri[order, K.R_OUTPUT]
        tpot = np.where(n_out > 1, (end[order] - rf[order, K.R_FIRST]) / np.maximum(n_out - 1, 1), 0.0)
        target = sim.slo[ri[order, K.R_CLASS]]
        met = ~dropped & (ttft <= target[:, 0]) & (tpot <= target[:, 1]) & (e2e <= target[:, 2])
        axes[2].step(t_fin, np.cumsum(~met), where="post", label="SLO violations")
        axes[2].step(t_fin, np.cumsum(dropped), where="post", label="drops")
        inv = np.sort(rf[dec == MASKED_TO_CENTRAL, K.R_ARR])
        axes[2].step(inv, np.arange(1, len(inv) + 1), where="post", label="masked actions")
        axes[2].set_ylabel("count")
        axes[2].set_title("cumulative costs", fontsize=10)
        axes[2].set_xlabel("simulated time (s)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.set_xlim(0.0, now)
            ax.legend(fontsize=7, loc="upper left")


__all__ = ["RoutingEnv", "SLOT_FEATURES", "REWARD_KEYS", "LATENCY_UNIT_S", "PROMPT_UNIT_TOKENS"]
