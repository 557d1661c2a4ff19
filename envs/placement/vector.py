"""``InferGym/Placement-v0`` as a native vector environment: :class:`PlacementVecEnv`, the id's
``vector_entry_point``. On the ``jobs`` source every vector step is one call into the compiled step of
:mod:`envs.placement.fast` for all sub-environments; on the ``llm`` source the sub-environments
(which each run the full simulator) are stepped one after the other."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.placement.base import PlacementEnv, PlacementEnvV0
from envs.placement.layout import (
    KPI_KEYS,
    N_RES,
    N_TERMS,
    R_HAS_SHAPING,
    R_KPI,
    R_REWARD,
    R_SHAPING,
    R_TERMS,
    R_TRUNCATED,
)
from envs.sim.errors import fail
from envs.vector.base import NativeVectorEnv

_KPI_MASK_KEYS = tuple("_" + key for key in KPI_KEYS)


class PlacementVecEnv(NativeVectorEnv):
    """N ``InferGym/Placement-v0`` environments stepped together.

    ## Description

    ``gymnasium.make_vec("InferGym/Placement-v0", num_envs=N, vectorization_mode="vector_entry_point",
    **kwargs)``, or ``PlacementVecEnv(N, scenario="default", render_mode=None, **kwargs)``, with the
    keyword arguments of the single env (:class:`~envs.placement.base.PlacementEnv`; ``source``
    picks the item source). ``envs[i]`` is sub-env ``i``, a single env: its observations, rewards,
    episode ends, action masks and infos are, bit for bit, those of ``gym.make(
    "InferGym/Placement-v0", **kwargs)`` reset with the sub-env's seed and given the same actions
    (tested).

    * ``source="jobs"``: the N sub-envs keep their episodes in the rows of one shared
      :class:`~envs.placement.rows.JobBatch` (:meth:`JobPlacementEnv.bind
      <envs.placement.jobs.JobPlacementEnv.bind>`), and a vector step is ONE call into compiled
      code (:func:`envs.placement.fast.step_rows`) that places every sub-env's waiting job,
      releases the jobs whose deletion time has come, moves to the next job and fills each row's
      mask, cost terms, KPIs, reward and changed observation rows. A single env runs the same
      compiled step on its own batch of one row: one code path. Resets are the sub-envs' own
      (Python and a compiled trace draw, once per episode). All sub-envs place the same number of
      jobs per episode, so their episodes end in the same step.
    * ``source="llm"``: each sub-env runs the scenario's simulator; a vector step is a plain Python
      loop over the N single envs' ``step`` (the simulation, not the loop, is the cost).

    ## Action Space

    ``MultiDiscrete([n_nodes] * N)`` (``batch_space`` of the single env's ``Discrete(n_nodes)``):
    ``step`` takes an integer array of shape ``(N,)``; a wrong shape, a non-integer value or a node
    outside ``[0, n_nodes)`` raises ValueError naming ``actions``. ``action_masks()`` is bool
    ``(N, n_nodes)``, each sub-env's ``action_masks()`` (for sb3-contrib's MaskablePPO); a masked
    action is accepted and rejected as in the single env.

    ## Observation Space

    ``Box(0, 1, (N, D), float32)``: the single env's observation (``single_observation_space``,
    ``D = n_nodes * (7 + T) + 5 + T``) batched; ``step`` and ``reset`` return a fresh array.

    ## Rewards and Infos

    ``rewards`` float64 ``(N,)``, each sub-env's reward (with ``shaping``, the shaped one);
    ``terminations`` (always False) and ``truncations`` bool ``(N,)``. ``infos`` in Gymnasium's vector
    convention (each key with a bool ``_key`` mask of the sub-envs that have it; nested dicts
    likewise): ``rewards`` (the per-step cost terms, ``REWARD_TERMS`` of the source), ``kpi`` (the
    single env's KPIs) and ``shaping`` when it is on; ``reset`` returns ``kpi``.

    ## Autoreset

    ``metadata["autoreset_mode"]`` is ``AutoresetMode.SAME_STEP`` (Gymnasium's vector API,
    https://gymnasium.farama.org/api/vector/#gymnasium.vector.AutoresetMode;
    https://farama.org/Vector-Autoreset-Mode): when sub-env ``i``'s episode ends in a step, that
    step returns its reset observation in ``obs[i]``, its last observation in
    ``infos["final_obs"][i]`` and that step's info in ``infos["final_info"]``, with the masks and
    the top-level entries of sub-env ``i`` (its reset's ``kpi``, no ``rewards``) exactly as
    ``gymnasium.vector.SyncVectorEnv`` builds them in this mode (tested key for key). The reset
    takes no seed: the sub-env's generator continues, as a single env reset without a seed.
    ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (a sequence of N seeds, or None each, is
    also accepted); ``options`` must be empty, as for the single env.

    ## Speed

    Jobs source, default synthetic trace (32 nodes, 1,000 jobs per episode): a vector step costs
    one compiled call of a few microseconds per sub-env plus a fixed Python part (checking the
    actions, assembling the infos), and a reset about a millisecond per sub-env and episode;
    ``docs/vector-envs.md`` gives measured rates. ``render_mode`` must be None (render a single env).

    ## Pickling

    ``pickle.dumps(vec)`` round-trips mid-episode and the copy continues identically (the shared
    batch is plain arrays; the sub-envs keep their generators; the llm source's sub-envs pickle
    with their simulators).

    ## Version History

    * v0: initial version.
    """

    env_class = PlacementEnv

    def __init__(
        self, num_envs: int, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(num_envs, scenario, render_mode, **kwargs)
        first = self.envs[0]
        self.source: str = first.source
        self.reward_terms: tuple[str, ...] = first.REWARD_TERMS
        self._term_mask_keys = tuple("_" + key for key in self.reward_terms)
        self._n_nodes: int = first.n_nodes
        self._all_rows = set(range(self.num_envs))
        self._all_true = np.ones(self.num_envs, np.bool_)
        self._shaping = first.params.shaping > 0.0
        if self.source == "jobs":
            self._batch = first.new_batch(self.num_envs)
            for e, env in enumerate(self.envs):
                env.bind(self._batch, e)
            self._obs = self._batch.obs  # the sub-envs write their observation rows in place

    # ------------------------------------------------------------------ the step

    def _step_batch(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], Any]:
        if self.source != "jobs":
            return self._step_envs(actions)
        n = self.num_envs
        a = actions if actions.dtype == np.int64 and actions.flags.c_contiguous else actions.astype(np.int64)
        res = np.empty((N_RES, n))
        if self._batch.step(0, n, a, res) >= 0:  # the compiled step checks the range first
            raise fail("actions", actions, f"must lie in [0, {self._n_nodes}) (the nodes)")
        rewards, terms, kpi = res[R_REWARD], res[R_TERMS : R_TERMS + N_TERMS], res[R_KPI:]
        truncated = res[R_TRUNCATED] == 1.0
        live = np.ones(n, np.bool_)
        step_infos: dict[int, dict[str, Any]] = {}
        if truncated.any():
            # as SyncVectorEnv: an ended sub-env's step costs are in final_info only
            for e in np.flatnonzero(truncated).tolist():
                step_infos[e] = self._row_info(res[:, e].tolist())
            terms[:, truncated] = 0.0
            res[R_SHAPING, truncated] = 0.0
            live[truncated] = False
        infos: dict[str, Any] = {}
        if step_infos.keys() != self._all_rows:
            infos["rewards"] = self._masked(self.reward_terms, self._term_mask_keys, terms, live)
            infos["_rewards"] = live
        infos["kpi"] = self._masked(KPI_KEYS, _KPI_MASK_KEYS, kpi, self._all_true)
        infos["_kpi"] = self._all_true.copy()
        if self._shaping:
            shaped = (res[R_HAS_SHAPING] != 0.0) & live
            if shaped.any():
                infos["shaping"], infos["_shaping"] = res[R_SHAPING], shaped
        return rewards, np.zeros(n, np.bool_), truncated, infos, step_infos.__getitem__

    def _row_info(self, res: list[float]) -> dict[str, Any]:
        """A sub-env's info of this step from its column of results, as its single env returns it."""
        info: dict[str, Any] = {
            "rewards": dict(zip(self.reward_terms, res[R_TERMS : R_TERMS + N_TERMS], strict=True)),
            "kpi": dict(zip(KPI_KEYS, res[R_KPI:], strict=True)),
        }
        if res[R_HAS_SHAPING]:
            info["shaping"] = res[R_SHAPING]
        return info

    @staticmethod
    def _masked(
        keys: tuple[str, ...], mask_keys: tuple[str, ...], values: np.ndarray, mask: np.ndarray
    ) -> dict:
        """``{key: values[k], "_" + key: mask}``: the keys of one nested dict share a copy of ``mask``."""
        infos = dict(zip(keys, values, strict=True))
        infos.update(dict.fromkeys(mask_keys, mask.copy()))
        return infos

    def _step_envs(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], Any]:
        """The llm source: each sub-env's own step. An ended sub-env's info goes to ``final_info``
        only (the base class resets it), as SyncVectorEnv builds the infos in SAME_STEP mode."""
        n = self.num_envs
        rewards = np.zeros(n)
        terminated, truncated = np.zeros(n, np.bool_), np.zeros(n, np.bool_)
        infos: dict[str, Any] = {}
        ended: dict[int, dict[str, Any]] = {}
        for e, env in enumerate(self.envs):
            self._obs[e], rewards[e], terminated[e], truncated[e], info = env.step(int(actions[e]))
            if terminated[e] or truncated[e]:
                ended[e] = info
            else:
                infos = self._add_info(infos, info, e)
        return rewards, terminated, truncated, infos, ended.__getitem__

    def _check_actions(self, actions: Any) -> np.ndarray:
        if (
            self.source == "jobs"
            and type(actions) is np.ndarray
            and actions.shape == self.action_space.shape
            and actions.dtype.kind in "iu"
        ):
            return actions  # the compiled step checks the range before it steps anything
        if not isinstance(actions, np.ndarray):
            try:
                np.asarray(actions)
            except (TypeError, ValueError):  # ragged nested sequences: numpy's own message names no argument
                raise fail(
                    "actions", actions, f"must be an integer array of shape {self.action_space.shape}"
                ) from None
        return super()._check_actions(actions)

    def action_masks(self) -> np.ndarray:
        """bool ``(N, n_nodes)``: each sub-env's ``action_masks()`` (for sb3-contrib's MaskablePPO)."""
        if self.source == "jobs":
            return self._batch.mask.copy()
        return super().action_masks()


class PlacementVecEnvV0(PlacementVecEnv):
    """N ``InferGym/Placement-v0`` environments (the llm source on the ``reserve`` engine by default)."""

    env_class = PlacementEnvV0
