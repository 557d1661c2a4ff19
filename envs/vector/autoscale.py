"""``InferGym/Autoscale-v3`` (and v2, v1, v0) as native vector environments: N clusters, their simulations run
in parallel by one compiled call per vector step."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from envs.autoscale import AutoscaleEnv, AutoscaleEnvV0, AutoscaleEnvV1, AutoscaleEnvV2
from envs.sim.batch import advance_at
from envs.sim.routing import Rule
from envs.vector.base import NativeVectorEnv


class AutoscaleVecEnv(NativeVectorEnv):
    """N ``InferGym/Autoscale-v3`` environments stepped together.

    ``gymnasium.make_vec("InferGym/Autoscale-v3", num_envs=N, vectorization_mode="vector_entry_point",
    **kwargs)`` with the single env's keyword arguments (:class:`~envs.autoscale.AutoscaleEnv`).
    Spaces are the single env's batched; rewards, observations and infos are the single env's,
    sub-env by sub-env, bit for bit.

    ## Stepping

    A step is one control interval of every sub-env, in three phases: every sub-env applies its
    action in Python (replica targets, placement: the single env's code); every simulation runs to
    its interval's end in compiled code (:func:`envs.sim.batch.advance_at`, one call per sub-env
    that releases the GIL); then every sub-env reads its interval (a compiled read) and builds its
    observation and reward. With ``k > 1`` numba threads (``numba.get_num_threads()``, the
    machine's cores by default) this thread and ``k - 1`` worker threads run the simulations, each
    taking the next one when done with one. (One compiled call over all simulations with
    ``numba.prange`` was slower here: numba's work-queue threads start in about 100 us a call and
    a static split of the simulations leaves one thread idle while the other finishes a burst.
    Overlapping the Python phases with the simulations was no faster: a worker needs the GIL to
    start and end each call and waits for it while this thread runs Python; see
    ``docs/vector-envs.md``.) With one thread, as in the experiment grid's workers, the simulations
    run in turn on this one.
    The numbers are the same either way: the simulations share no memory. A sub-env with a fault
    due within the interval, or a Python router, advances in Python instead (same numbers).

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
        self._pool: ThreadPoolExecutor | None = None
        self._pool_threads = 0

    def _workers(self) -> ThreadPoolExecutor | None:
        """The threads that help this one run the simulations: one fewer than numba's thread count
        (at most ``max_threads``; None with one thread: this thread runs them all)."""
        threads = min(self._thread_budget(), self.num_envs)
        if threads <= 1:
            return None
        if self._pool is None or self._pool_threads != threads:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="infergym-sim")
            self._pool_threads = threads
        return self._pool

    def _step_batch(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], Any]:
        n = self.num_envs
        fast = np.zeros(n, np.bool_)
        started = []
        jobs = []
        for e, env in enumerate(self.envs):
            started.append(env._apply_action(actions[e]))
            sim, until = env.sim, env.clock.next_boundary_s
            faults = sim.faults
            fast[e] = (
                (faults is None or faults.next_time_s() > until)
                and sim.python_router is None
                and sim.python_decode_router is None
                and sim.router_spec.rule != Rule.EXTERNAL
                and until >= sim.now
            )
            if fast[e]:  # the table is taken after placing: placing may grow the arrays
                jobs.append((e, sim, sim.state.address_table(), float(until)))
        reads = self._simulate(jobs)
        results = []
        for e, env in enumerate(self.envs):
            if fast[e]:
                env.sim.sync_releases()  # what Simulator.advance does after its compiled call
                env.clock.passed()
            else:
                env.clock.advance()
            results.append(env._finish_step(started[e], reads.get(e)))
        rewards = np.array([r[1] for r in results], np.float64)
        terminated = np.array([r[2] for r in results], np.bool_)
        truncated = np.array([r[3] for r in results], np.bool_)
        for e, r in enumerate(results):
            self._obs[e] = r[0]
        infos = _batch_infos([r[4] for r in results])
        return rewards, terminated, truncated, infos, lambda e: results[e][4]

    def _simulate(self, jobs: list[tuple[int, Any, np.ndarray, float]]) -> dict[int, tuple]:
        """Run each ``(sub-env, simulator, address table, until)`` simulation to its ``until`` and compute
        the compiled part of its step's window read (:meth:`~envs.sim.engine.Simulator.precompute_read`):
        on this thread and the worker threads, each taking the next simulation when it is done with
        one (the GIL is released while a simulation runs or its window is read, so they run at once).
        Returns the reads by sub-env."""
        queue = iter(jobs)
        reads: dict[int, tuple] = {}

        def work() -> None:
            for e, sim, table, until in queue:  # next() on a list iterator is atomic under the GIL
                advance_at(table, until)
                reads[e] = sim.precompute_read(sim.window, views=True)

        pool = self._workers()
        if pool is None or len(jobs) < 2:
            work()
            return reads
        helpers = [pool.submit(work) for _ in range(self._pool_threads - 1)]
        try:
            work()
        finally:
            for job in helpers:
                job.result()
        return reads

    def action_masks(self) -> np.ndarray:
        """``(N, sum(nvec))`` bool, all True (MaskablePPO's flat layout): every action is valid (the
        single env clamps replica targets to the model's bounds and counts the clamped replicas)."""
        return np.ones((self.num_envs, int(np.sum(self.single_action_space.nvec))), np.bool_)

    def close_extras(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        super().close_extras(**kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"], state["_pool_threads"] = None, 0  # threads do not pickle: started again on use
        return state


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
