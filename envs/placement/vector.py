"""``InferGym/Placement-v0`` as a native vector environment: :class:`PlacementVecEnv`, the id's
``vector_entry_point``. On the ``jobs`` source every vector step is one call into the compiled step of
:mod:`envs.placement.fast` for all sub-environments; on the ``llm`` source the sub-environments
(which each run the full simulator) are stepped one after the other."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.placement.base import PlacementEnv
from envs.placement.fast import (
    KPI_KEYS,
    N_KPI,
    N_OUT,
    N_TERMS,
    O_HAS_SHAPING,
    O_REWARD,
    O_SHAPING,
    O_TRUNCATED,
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
      :class:`~envs.placement.fast.JobBatch` (:meth:`JobPlacementEnv.bind
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
        a = np.ascontiguousarray(actions, dtype=np.int64)
        terms, kpi, out = np.empty((N_TERMS, n)), np.empty((N_KPI, n)), np.empty((N_OUT, n))
        if self._batch.step(0, n, a, terms, kpi, out) >= 0:  # the compiled step checks the range first
            raise fail("actions", actions, f"must lie in [0, {self._n_nodes}) (the nodes)")
        rewards = out[O_REWARD]
        truncated = out[O_TRUNCATED] == 1.0
        shaped = out[O_HAS_SHAPING] != 0.0
        infos: dict[str, Any] = {}
        if truncated.any():
            # as SyncVectorEnv: an ended sub-env's step costs are in final_info only
            step_infos = {e: self._row_info(e, terms, kpi, out) for e in np.flatnonzero(truncated).tolist()}
            terms[:, truncated] = 0.0
            out[O_SHAPING, truncated] = 0.0
            shaped &= ~truncated
        else:
            step_infos = {}
        live = ~truncated
        if live.any():
            infos["rewards"] = self._masked(self.reward_terms, self._term_mask_keys, terms, live)
            infos["_rewards"] = live
        infos["kpi"] = self._masked(KPI_KEYS, _KPI_MASK_KEYS, kpi, np.ones(n, np.bool_))
        infos["_kpi"] = np.ones(n, np.bool_)
        if shaped.any():
            infos["shaping"], infos["_shaping"] = out[O_SHAPING], shaped
        return rewards, np.zeros(n, np.bool_), truncated, infos, step_infos.__getitem__

    def _row_info(self, e: int, terms: np.ndarray, kpi: np.ndarray, out: np.ndarray) -> dict[str, Any]:
        """Sub-env ``e``'s info of this step, as its single env returns it."""
        info: dict[str, Any] = {
            "rewards": dict(zip(self.reward_terms, terms[:, e].tolist(), strict=True)),
            "kpi": dict(zip(KPI_KEYS, kpi[:, e].tolist(), strict=True)),
        }
        if out[O_HAS_SHAPING, e]:
            info["shaping"] = out[O_SHAPING, e].item()
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
