"""``InferGym/Routing-v0`` as a native vector environment: N routers, one compiled call per vector step."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.routing import LATENCY_UNIT_S, NORMS, SHAPING_CAP_S, RoutingEnv, RoutingEnvV1, RoutingEnvV2
from envs.sim.batch import (
    N_OUT,
    NEED_BOUNDARY,
    NEED_SYNC,
    OUT_COMPLETED,
    OUT_DROPS,
    OUT_E2E,
    OUT_INVALID,
    OUT_LATENCY,
    OUT_NOW,
    OUT_REPLICA,
    OUT_REQUEST,
    OUT_REWARD,
    OUT_SHAPING,
    OUT_SLO,
    ArrayList,
    StateList,
    route_batch,
    route_batch_parallel,
)
from envs.sim.errors import fail
from envs.vector.base import NativeVectorEnv

_TERM_KEYS = ("slo_violations", "drops", "latency", "invalid_actions")
_KPI_KEYS = ("time_s", "requests_completed", "requests_dropped", "slo_violations", "e2e_sum_s")
#: Rows of ``out`` filled from a single env's info, in :func:`_info_values` order.
_ROWS = (
    OUT_SLO,
    OUT_DROPS,
    OUT_LATENCY,
    OUT_INVALID,
    OUT_NOW,
    OUT_COMPLETED,
    OUT_E2E,
    OUT_REPLICA,
    OUT_REQUEST,
)
#: From this many sub-envs on, the compiled step runs them on all cores. Below, one core is faster: a
#: routing step costs about 2 us and starting numba's work-queue threads about 100 us a call
#: (2-core machine, best of three: 32 sub-envs 410 k env-steps/s serial vs 184 k parallel; 256:
#: 538 k vs 498 k; 1,024: 468 k vs 522 k).
PARALLEL_FROM = 512


def _info_values(info: dict[str, Any]) -> tuple[float, ...]:
    r, k = info["rewards"], info["kpi"]
    return (r["slo_violations"], r["drops"], r["latency"], r["invalid_actions"], k["time_s"],
            k["requests_completed"], k["e2e_sum_s"], info["replica"], info["request"])  # fmt: skip


class RoutingVecEnv(NativeVectorEnv):
    """N ``InferGym/Routing-v0`` environments stepped together.

    ``gymnasium.make_vec("InferGym/Routing-v0", num_envs=N, vectorization_mode="vector_entry_point",
    **kwargs)`` with the single env's keyword arguments (:class:`~envs.routing.RoutingEnv`). Spaces
    are the single env's batched (``MultiDiscrete([max_slots] * N)`` actions, ``(N, D)``
    observations); rewards, costs and KPIs are the single env's, sub-env by sub-env, bit for bit.

    ## Stepping

    One call into compiled code (:func:`envs.sim.batch.route_batch`) routes every sub-env's waiting
    request, runs its simulation to its next decision and fills its row of the observation, mask
    and costs. A sub-env that reaches a control boundary (every ``control_interval_s`` of simulated
    time, hundreds of decisions apart) runs its scaler in Python afterwards, as the single env does;
    a sub-env with a fault (``faults``, spot pools) due before its next boundary, or whose episode
    has no decision left, takes the single env's Python step for that step. Both give the same
    numbers: the compiled call is the single env's step, fused (:func:`envs.sim.batch.route_step`).

    ## Infos

    Batched as Gymnasium's vector envs do (each key with a ``_key`` mask): ``rewards`` and ``kpi``
    (dicts of arrays, the single env's keys), ``replica`` and ``request``, and ``shaping`` when it is
    on. Autoreset mode ``SAME_STEP`` (:mod:`envs.vector.base`): a sub-env whose episode ended
    returns its reset observation, with ``final_obs`` and ``final_info`` (which holds the single
    env's last info, ``episode_kpi`` included).

    ``action_masks()`` is ``(N, max_slots)``: each sub-env's mask. Pickling: the sub-environments
    pickle (their simulators do); the vector env is rebuilt from them (``__getstate__``).
    """

    env_class = RoutingEnv

    def __init__(
        self, num_envs: int, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(num_envs, scenario, render_mode, **kwargs)
        n, first = self.num_envs, self.envs[0]
        s = first.max_slots
        self._mask = np.ones((n, s), np.bool_)
        self._slot_rep = np.full((n, s), -1, np.int64)
        self._terms = np.zeros((n, 4))
        self._seen = np.zeros((n, 2), np.int64)
        for e, env in enumerate(self.envs):  # the sub-envs write their rows of the batched arrays
            env._obs, env._mask, env._slot_rep = self._obs[e], self._mask[e], self._slot_rep[e]
            env._terms, env._seen = self._terms[e], self._seen[e]
        self._w = np.array(first._w)
        self._shaping = first.shaping
        self._slo = None
        self._pending = np.full(n, -1, np.int64)
        self._until = np.zeros(n)
        self._fast = np.zeros(n, np.bool_)
        self._phi = np.zeros(n)
        self._synced = np.zeros(n, np.int64)
        self._n_invalid = np.zeros(n, np.int64)
        self._states: StateList | None = None
        self._decisions = None
        self._needs = np.zeros(n, np.int8)
        self._n_slow = np.zeros(1, np.int64)
        self._w = np.array(first._w, np.float64)
        self._route = route_batch_parallel if n >= PARALLEL_FROM else route_batch
        self._act_shape = self.action_space.shape

    # ------------------------------------------------------------------ reset bookkeeping

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._states = None
        out = super().reset(seed=seed, options=options)
        self._states = StateList([env.sim for env in self.envs])
        self._decisions = ArrayList([env.decisions for env in self.envs])
        self._slo = self.envs[0].sim.slo
        for e in range(self.num_envs):
            self._pull(e)
        return out

    def _after_reset(self, e: int) -> None:
        if self._states is not None:  # an autoreset (a full reset rebuilds the lists afterwards)
            self._states.sync(e, self.envs[e].sim)
            self._decisions[e] = self.envs[e].decisions
            self._pull(e)

    def _pull(self, e: int) -> None:
        """Copy sub-env ``e``'s Python-side step state into the batched arrays (after it ran in Python)."""
        env = self.envs[e]
        sim, clock = env.sim, env.clock
        self._states.sync(e, sim)
        self._pending[e] = env._pending
        self._phi[e] = env._phi
        self._n_invalid[e] = env.n_invalid
        self._synced[e] = sim._synced_releases
        until = clock.next_boundary_s
        self._until[e] = until
        faults = sim.faults
        self._fast[e] = env._pending >= 0 and (faults is None or faults.next_time_s() > until)

    def _push(self, e: int) -> None:
        """Copy the batched step state of sub-env ``e`` into it (before it runs in Python)."""
        env = self.envs[e]
        env._pending = int(self._pending[e])
        env._phi = float(self._phi[e])
        env.n_invalid = int(self._n_invalid[e])

    # ------------------------------------------------------------------ the step

    def _step_batch(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], Any]:
        n, env0 = self.num_envs, self.envs[0]
        out = np.zeros((N_OUT, n))
        needs = self._needs
        shaping = self._shaping
        fast = self._fast.copy()  # the Python paths below update self._fast for the next step
        # the parallel build (many sub-envs) only with more than one thread (a ProcessVectorEnv's share
        # may have one); the serial build never asks numba, whose thread count starts its threads
        route = self._route if self._route is route_batch or self._thread_budget() > 1 else route_batch
        n_need = route(self._states.items, self._decisions.items, fast, self._until, actions, self._pending,
                             self._mask, self._slot_rep, self._slo, env0.speed_max, env0.n_models, env0.n_classes,
                             self._seen, self._terms, self._obs, NORMS, self._w, LATENCY_UNIT_S, shaping,
                             SHAPING_CAP_S, self._phi, self._synced, out, needs, self._n_invalid, self._n_slow)  # fmt: skip
        if n_need < 0:  # nothing changed
            raise fail("actions", actions, f"must lie in {self.action_space}")
        truncated = np.zeros(n, np.bool_)
        if n_need:
            for e in np.flatnonzero(needs).tolist():
                sim = self.envs[e].sim
                if needs[e] & NEED_SYNC:
                    sim.sync_releases()
                    self._synced[e] = sim._synced_releases
                if needs[e] & NEED_BOUNDARY:
                    truncated[e] = self._boundary(e, out)
        # the rest take the single env's own step (a fault due in the interval, or nothing to decide)
        slow_infos: dict[int, dict[str, Any]] = {}
        if self._n_slow[0]:
            for e in np.flatnonzero(~fast).tolist():
                env = self.envs[e]
                self._push(e)
                _, r, _, trunc, info = env.step(int(actions[e]))
                slow_infos[e] = info
                truncated[e] = trunc
                out[OUT_REWARD, e] = r
                for row, val in zip(_ROWS, _info_values(info), strict=True):
                    out[row, e] = val
                if shaping > 0.0:
                    out[OUT_SHAPING, e] = info["shaping"]
                self._pull(e)

        # one mask per key (an autoreset clears an ended sub-env's entries): rows of one block, one
        # allocation instead of fifteen
        masks = iter(np.ones((len(_TERM_KEYS) + len(_KPI_KEYS) + 6, n), np.bool_))

        def ones() -> np.ndarray:
            return next(masks)

        infos: dict[str, Any] = {
            "rewards": {"slo_violations": out[OUT_SLO], "drops": out[OUT_DROPS], "latency": out[OUT_LATENCY],
                        "invalid_actions": out[OUT_INVALID], **{"_" + k: ones() for k in _TERM_KEYS}},
            "_rewards": ones(),
            "kpi": {"time_s": out[OUT_NOW], "requests_completed": out[OUT_COMPLETED],
                    "requests_dropped": out[OUT_DROPS], "slo_violations": out[OUT_SLO], "e2e_sum_s": out[OUT_E2E],
                    **{"_" + k: ones() for k in _KPI_KEYS}},
            "_kpi": ones(),
            "replica": out[OUT_REPLICA].astype(np.int64),
            "_replica": ones(),
            "request": out[OUT_REQUEST].astype(np.int64),
            "_request": ones(),
        }  # fmt: skip
        if shaping > 0.0:
            infos["shaping"], infos["_shaping"] = out[OUT_SHAPING], ones()

        def step_info(e: int) -> dict[str, Any]:
            if e in slow_infos:
                return slow_infos[e]
            info = {
                "rewards": {k: float(infos["rewards"][k][e]) for k in _TERM_KEYS},
                "kpi": {k: float(infos["kpi"][k][e]) for k in _KPI_KEYS},
                "replica": int(infos["replica"][e]),
                "request": int(infos["request"][e]),
                "episode_kpi": self.envs[e].sim.episode_kpis(),
            }
            if shaping > 0.0:
                info["shaping"] = float(infos["shaping"][e])
            self._push(e)
            return info

        return out[OUT_REWARD], np.zeros(n, np.bool_), truncated, infos, step_info

    def _boundary(self, e: int, out: np.ndarray) -> bool:
        """Sub-env ``e`` reached its control boundary in the compiled step: run it (and the next
        ones) in Python as the single env does, then its step's reward and info values; returns
        whether its episode ended."""
        env = self.envs[e]
        p = env._past_boundary()
        self._pending[e] = p
        t = self._terms[e]
        inv = float(out[OUT_INVALID, e])
        latency = float(t[2]) / LATENCY_UNIT_S
        w = env._w
        reward = -(0 + w[0] * float(t[0]) + w[1] * float(t[1]) + w[2] * latency + w[3] * inv)
        if self._shaping > 0.0:
            phi = 0.0 if p < 0 else env._potential()  # the end state's potential is 0 (as the single env)
            shaped = self._shaping * (float(self._phi[e]) - phi)
            self._phi[e] = phi
            reward += shaped
            out[OUT_SHAPING, e] = shaped
        out[OUT_REWARD, e] = reward
        out[OUT_SLO, e], out[OUT_DROPS, e], out[OUT_LATENCY, e] = t[0], t[1], latency
        out[OUT_COMPLETED, e], out[OUT_E2E, e] = t[3], t[2]
        out[OUT_NOW, e], out[OUT_REQUEST, e] = env.sim.now, p
        t[:] = 0.0
        if p < 0:
            env._ended = True
        self._pull_boundary(e)
        return p < 0

    def _pull_boundary(self, e: int) -> None:
        """After sub-env ``e`` ran control boundaries: its arrays, release count, interval end and path."""
        env = self.envs[e]
        sim = env.sim
        self._states.sync(e, sim)
        self._synced[e] = sim._synced_releases
        until = env.clock.next_boundary_s
        self._until[e] = until
        faults = sim.faults
        self._fast[e] = self._pending[e] >= 0 and (faults is None or faults.next_time_s() > until)

    def _check_actions(self, actions: Any) -> np.ndarray:
        # an int64 array of the batch's shape (what agents give) goes to the compiled step as it is:
        # the step checks the bounds itself before it changes anything (two numpy reductions less)
        if type(actions) is np.ndarray and actions.dtype == np.int64 and actions.shape == self._act_shape:
            return actions
        return super()._check_actions(actions)

    def action_masks(self) -> np.ndarray:
        """``(N, max_slots)`` bool: True for the slots holding a READY replica (see ``RoutingEnv``)."""
        return self._mask.copy()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_states"] = state["_decisions"] = (
            None  # addresses mean nothing in another process: rebuilt below
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for e, env in enumerate(self.envs):  # pickling copied the rows: point the sub-envs at them again
            env._obs, env._mask, env._slot_rep = self._obs[e], self._mask[e], self._slot_rep[e]
            env._terms, env._seen = self._terms[e], self._seen[e]
            if env.sim is not None:
                buf = env._buf
                buf.obs, buf.mask, buf.slot_rep, buf.terms, buf.seen = (
                    env._obs,
                    env._mask,
                    env._slot_rep,
                    env._terms,
                    env._seen,
                )
        if self._ready:
            self._states = StateList([env.sim for env in self.envs])
            self._decisions = ArrayList([env.decisions for env in self.envs])


class RoutingVecEnvV1(RoutingVecEnv):
    """N ``InferGym/Routing-v1`` environments (the paged engine's per-slot features) stepped together."""

    env_class = RoutingEnvV1


class RoutingVecEnvV2(RoutingVecEnv):
    """N ``InferGym/Routing-v2`` environments (Routing-v1 on the ``paged`` engine by default) stepped together."""

    env_class = RoutingEnvV2
