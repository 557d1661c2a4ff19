"""``InferGym/Autoscale-v3`` (and v2, v1, v0) as native vector environments: N clusters, their simulations run
in parallel by one compiled call per vector step."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from envs.autoscale import AutoscaleEnv, AutoscaleEnvV0, AutoscaleEnvV1, AutoscaleEnvV2
from envs.sim.batch import StateList, advance_batch
from envs.sim.kernel import advance
from envs.sim.routing import Rule
from envs.vector.base import NativeVectorEnv


class AutoscaleVecEnv(NativeVectorEnv):
    """N ``InferGym/Autoscale-v3`` environments stepped together.

    ``gymnasium.make_vec("InferGym/Autoscale-v3", num_envs=N, vectorization_mode="vector_entry_point",
    **kwargs)`` with the single env's keyword arguments (:class:`~envs.autoscale.AutoscaleEnv`).
    Spaces are the single env's batched; rewards, observations and infos are the single env's,
    sub-env by sub-env, bit for bit.

    ## Stepping

    A step is one control interval of every sub-env, in three parts: each sub-env applies its
    action in Python (replica targets, placement: the single env's code); one call into compiled
    code (:func:`envs.sim.batch.advance_batch`) runs every simulation to its interval's end, the
    simulations spread over all cores with ``numba.prange`` (they share no memory; with one numba
    thread, ``numba.set_num_threads(1)`` as in the grid's workers, the simulations' compiled loops
    are called one after another instead, the same computation without a parallel build to compile
    on first use); each sub-env
    then reads its interval (a compiled read) and builds its observation and reward. The
    simulation is most of a step's cost, so the vector env's rate grows with the cores. A sub-env
    with a fault due within the interval, or a Python router, advances in Python instead (same
    numbers).

    ## Infos

    Batched as Gymnasium's vector envs do (each key with a ``_key`` mask): ``rewards`` and ``kpi``
    (dicts of arrays, the single env's keys), ``replicas`` (``(N, n_models, 3)``) and ``clamped``.
    Autoreset mode ``SAME_STEP`` (:mod:`envs.vector.base`): a sub-env whose episode ended returns
    its reset observation, with ``final_obs`` and ``final_info`` (the single env's last info).

    Pickling: the sub-environments pickle; the vector env is rebuilt from them (``__getstate__``).
    """

    env_class: type[AutoscaleEnv] = AutoscaleEnv

    def __init__(
        self, num_envs: int, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(num_envs, scenario, render_mode, **kwargs)
        n = self.num_envs
        self._states: StateList | None = None
        self._until = np.zeros(n)
        self._codes = np.zeros(n, np.int64)
        self._now = np.zeros(n)
        self._n_released = np.zeros(n, np.int64)

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._states = None
        out = super().reset(seed=seed, options=options)
        self._states = StateList([env.sim for env in self.envs])
        return out

    def _after_reset(self, e: int) -> None:
        if self._states is not None:
            self._states.sync(e, self.envs[e].sim)

    def _step_batch(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], Any]:
        n = self.num_envs
        fast = np.zeros(n, np.bool_)
        started = []
        for e, env in enumerate(self.envs):
            started.append(env._apply_action(actions[e]))
            sim, until = env.sim, env.clock.next_boundary_s
            self._states.sync(e, sim)  # placing replicas may have grown its arrays
            self._until[e] = until
            faults = sim.faults
            fast[e] = (
                (faults is None or faults.next_time_s() > until)
                and sim.python_router is None
                and sim.python_decode_router is None
                and sim.router_spec.rule != Rule.EXTERNAL
                and until >= sim.now
            )
        if fast.any():
            if numba.get_num_threads() > 1:
                advance_batch(self._states.items, fast, self._until, self._codes, self._now, self._n_released)
            else:  # one thread: the loops one after another (the same calls, and no parallel build to compile)
                for e in np.flatnonzero(fast).tolist():
                    advance(*self.envs[e].sim.state.kernel_args(), float(self._until[e]), -1)
        results = []
        for e, env in enumerate(self.envs):
            if fast[e]:
                env.sim.sync_releases()  # what Simulator.advance does after its compiled call
                env.clock.passed()
            else:
                env.clock.advance()
            results.append(env._finish_step(started[e]))
        rewards = np.array([r[1] for r in results], np.float64)
        terminated = np.array([r[2] for r in results], np.bool_)
        truncated = np.array([r[3] for r in results], np.bool_)
        for e, r in enumerate(results):
            self._obs[e] = r[0]
        infos = _batch_infos([r[4] for r in results])
        return rewards, terminated, truncated, infos, lambda e: results[e][4]

    def action_masks(self) -> np.ndarray:
        """``(N, sum(nvec))`` bool: each sub-env's ``action_masks()`` (MaskablePPO's flat layout)."""
        return np.stack([env.action_masks() for env in self.envs])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_states"] = None  # numba typed lists do not pickle: rebuilt below
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._ready:
            self._states = StateList([env.sim for env in self.envs])


class AutoscaleVecEnvV2(AutoscaleVecEnv):
    """N ``InferGym/Autoscale-v2`` environments (v3 without its per-pool features; see :class:`AutoscaleVecEnv`)."""

    env_class = AutoscaleEnvV2


class AutoscaleVecEnvV1(AutoscaleVecEnv):
    """N ``InferGym/Autoscale-v1`` environments (the ``reserve`` engine by default; see :class:`AutoscaleVecEnv`)."""

    env_class = AutoscaleEnvV1


class AutoscaleVecEnvV0(AutoscaleVecEnv):
    """N ``InferGym/Autoscale-v0`` environments (v0's reward; see :class:`AutoscaleVecEnv`)."""

    env_class = AutoscaleEnvV0


def _batch_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """The sub-envs' step infos (same keys) in Gymnasium's batched layout: arrays with ``_key`` masks."""
    n = len(infos)

    def ones() -> np.ndarray:  # one mask per key: an autoreset clears an ended sub-env's entries
        return np.ones(n, np.bool_)

    first = infos[0]
    out: dict[str, Any] = {}
    for group in ("rewards", "kpi"):
        keys = first[group].keys()
        d: dict[str, Any] = {k: np.array([i[group][k] for i in infos], np.float64) for k in keys}
        d.update({"_" + k: ones() for k in keys})
        out[group], out["_" + group] = d, ones()
    out["replicas"], out["_replicas"] = np.stack([i["replicas"] for i in infos]), ones()
    out["clamped"], out["_clamped"] = np.array([i["clamped"] for i in infos], np.int64), ones()
    return out
