"""What the native vector environments share: sub-environments, seeding, batched spaces, autoreset.

A native vector env holds N single environments of its id (``envs``) and steps them together: the
subclass's :meth:`NativeVectorEnv._step_batch` moves every sub-environment through the compiled
core in one call and writes the batched observation; this base class checks the actions, resets
the sub-environments whose episode ended and assembles the infos.

Autoreset mode: ``SAME_STEP`` (Gymnasium 1.x, https://gymnasium.farama.org/api/vector/#gymnasium.vector.AutoresetMode
and https://farama.org/Vector-Autoreset-Mode). When sub-env ``i`` ends in a step, that step returns
its reset observation in ``obs[i]``, its last observation in ``infos["final_obs"][i]`` and its
last step's info in ``infos["final_info"]`` (arrays with ``_`` masks, as
``gymnasium.vector.SyncVectorEnv`` builds them); the reset takes no seed, so the sub-env's own
generator continues, exactly as a single env reset without a seed. Sub-env ``i`` of a vector env
reset with ``seed=s`` is the single env reset with ``seed=s + i``: each sub-environment's
trajectory is bit for bit the single env's under the same actions (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.sim.errors import check_number, fail


class NativeVectorEnv(VectorEnv):
    """N sub-environments of one single-env class, stepped by a subclass through the compiled core.

    Subclasses set ``env_class`` and implement ``_step_batch(actions) -> (rewards, terminated,
    truncated, infos, step_infos)``: ``infos`` the batched infos of the step (arrays for every
    sub-env), ``step_infos(e)`` the info dict of sub-env ``e`` as its single env would return it
    (called only for sub-envs whose episode ended, for ``final_info``). They write the batched
    observation into ``self._obs`` and may override ``_after_reset(e)``.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    env_class: type[gym.Env]

    def __new__(cls, num_envs: int = 1, *args: Any, processes: int = 1, **kwargs: Any) -> Any:
        """With ``processes=k > 1``, a :class:`~envs.vector.procs.ProcessVectorEnv` of this class (its
        sub-envs split over ``k`` worker processes; ``threads`` and ``start_method`` go to it too);
        else this class."""
        k = check_number("processes", processes, ge=1, integer=True)
        if k > 1:
            from envs.vector.procs import ProcessVectorEnv

            return ProcessVectorEnv(cls, num_envs, *args, processes=int(k), **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        num_envs: int,
        scenario: Any = "default",
        render_mode: str | None = None,
        processes: int = 1,  # handled by __new__: 1 here
        **kwargs: Any,
    ) -> None:
        self.num_envs = int(check_number("num_envs", num_envs, ge=1, integer=True))
        if render_mode is not None:
            raise fail(
                "render_mode", render_mode, "must be None: the vector envs do not render (use a single env)"
            )
        self.render_mode = None
        first = self.env_class(scenario, **kwargs)
        # copies of an env that has not been reset share nothing mutable and skip its set-up work
        self.envs: list[gym.Env] = [first] + [copy.deepcopy(first) for _ in range(self.num_envs - 1)]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(first.observation_space, self.num_envs)
        self.action_space = batch_space(first.action_space, self.num_envs)
        self._obs = np.zeros((self.num_envs, *first.observation_space.shape), first.observation_space.dtype)
        space = (
            self.action_space
        )  # MultiDiscrete (batched Discrete) or an integer Box (batched MultiDiscrete)
        if isinstance(space, gym.spaces.MultiDiscrete):
            self._act_start, self._act_high = space.start, space.start + space.nvec
        elif isinstance(space, gym.spaces.Box) and space.dtype.kind in "iu":
            self._act_start, self._act_high = space.low, space.high + 1
        else:
            raise TypeError(f"{type(self).__name__}: batched action space {space} is not discrete")
        self._ready = False
        #: the most threads this env's simulations may use (None: numba's thread count); a
        #: :class:`~envs.vector.procs.ProcessVectorEnv` sets it for each share
        self.max_threads: int | None = None

    def _thread_budget(self) -> int:
        """Threads this env's simulations may use: numba's thread count, at most ``max_threads``.
        (A budget of one does not ask numba: asking its thread count starts its threads.)"""
        cap = getattr(self, "max_threads", None)  # (absent from envs pickled before it existed)
        if cap is not None and cap <= 1:
            return 1
        import numba

        return numba.get_num_threads() if cap is None else min(cap, numba.get_num_threads())

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
        """Reset every sub-env: sub-env ``i`` with ``seed + i`` (an int), ``seed[i]`` (a sequence) or none."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        elif isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) == self.num_envs:
            seeds = list(seed)
        else:
            raise fail("seed", seed, f"must be None, an int or a sequence of {self.num_envs} seeds")
        infos: dict[str, Any] = {}
        for e, (env, s) in enumerate(zip(self.envs, seeds, strict=True)):
            obs, info = env.reset(seed=s, options=options)
            self._obs[e] = obs
            infos = self._add_info(infos, info, e)
            self._after_reset(e)
        self._ready = True
        return self._obs.copy(), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}: call reset() before step()")
        rewards, terminated, truncated, infos, step_info = self._step_batch(self._check_actions(actions))
        ended = np.flatnonzero(terminated | truncated)
        for e in ended.tolist():
            env = self.envs[e]
            final_info = step_info(e)
            for key in final_info:  # the top level holds the reset's info for this sub-env
                mask = infos.get("_" + key)
                if mask is not None:
                    mask[e] = False
            infos = self._add_info(infos, {"final_obs": self._obs[e].copy(), "final_info": final_info}, e)
            obs, info = env.reset()
            self._obs[e] = obs
            infos = self._add_info(infos, info, e)
            self._after_reset(e)
        return self._obs.copy(), rewards, terminated, truncated, infos

    def action_masks(self) -> np.ndarray:
        """``(num_envs, n)`` bool: each sub-env's ``action_masks()`` (for sb3-contrib's MaskablePPO)."""
        return np.stack([env.action_masks() for env in self.envs])

    def get_sub_attr(self, name: str, indices: Any = None) -> list[Any]:
        """Attribute ``name`` of sub-envs ``indices`` (None: all), in order."""
        return [getattr(self.envs[i], name) for i in self._indices(indices)]

    def set_sub_attr(self, name: str, value: Any, indices: Any = None) -> None:
        """Set attribute ``name`` of sub-envs ``indices`` (None: all) to ``value``."""
        for i in self._indices(indices):
            setattr(self.envs[i], name, value)

    def call_sub(self, name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        """Call method ``name`` of sub-envs ``indices`` (None: all), in order; their results."""
        return [getattr(self.envs[i], name)(*args, **kwargs) for i in self._indices(indices)]

    def _indices(self, indices: Any) -> list[int]:
        return sub_env_indices(indices, self.num_envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()

    # ------------------------------------------------------------------ for subclasses

    def _check_actions(self, actions: Any) -> np.ndarray:
        """The actions as an integer array in ``action_space``, or a ValueError naming them."""
        a = actions if isinstance(actions, np.ndarray) else np.asarray(actions)
        space = self.action_space
        if a.shape != space.shape or a.dtype.kind not in "iu":
            if a.shape == space.shape and a.dtype.kind == "f" and np.array_equal(a, np.floor(a)):
                a = a.astype(np.int64)  # integral floats, as some agents give
            else:
                raise fail("actions", actions, f"must be an integer array of shape {space.shape}")
        # the bounds of the batched discrete space, in two reductions (space.contains costs 50 us)
        if (a < self._act_start).any() or (a >= self._act_high).any():
            raise fail("actions", actions, f"must lie in {space}")
        return a

    def _after_reset(self, e: int) -> None:
        """Hook: sub-env ``e`` was reset (its simulator is new)."""

    def _step_batch(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={self.num_envs}, scenario={self.envs[0].scenario.name!r})"


def sub_env_indices(indices: Any, n: int) -> list[int]:
    """Sub-env ``indices`` (an int, a sequence of ints, or None: all ``n``) as a list, or a ValueError."""
    idx = range(n) if indices is None else [indices] if isinstance(indices, (int, np.integer)) else indices
    out = [int(i) for i in idx]
    if any(not 0 <= i < n for i in out):
        raise fail("indices", indices, f"must be sub-env indices in [0, {n})")
    return out


def masks(n: int) -> np.ndarray:
    """An all-True ``_key`` mask for ``n`` sub-envs."""
    return np.ones(n, np.bool_)
