"""Stable-Baselines3 on InferGym's native vector environments.

SB3 trains on its own ``VecEnv`` interface, not on Gymnasium's ``VectorEnv``
(https://stable-baselines3.readthedocs.io/en/master/guide/vec_envs.html). :class:`NativeVecEnv` adapts
one :class:`envs.vector.NativeVectorEnv` (``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``)
to it, so PPO, A2C, DQN and MaskablePPO step N simulations per call through the compiled core instead
of N Python ``env.step`` calls through ``DummyVecEnv``.

It gives what ``make_vec_env`` + ``DummyVecEnv`` give, bit for bit: sub-env ``i`` seeded ``seed + i`` at
the first reset, reset without a seed when its episode ends, ``terminal_observation`` and
``TimeLimit.truncated`` in the info of an ending step (SB3's convention, from the vector env's
``SAME_STEP`` ``final_obs``), and ``info["episode"] = {"r", "l", "t"}`` as SB3's ``Monitor`` writes it.
So a model trained through it equals the model trained through ``DummyVecEnv`` with the same seed
(tested). Per-env infos carry the step's ``kpi`` (read by :class:`agents.sb3.KpiLogCallback`) and, at
an episode's end, everything the single env's last info held.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from envs.vector import NativeVectorEnv
from envs.vector.procs import ProcessVectorEnv


class NativeVecEnv(VecEnv):
    """SB3's ``VecEnv`` over a native InferGym vector env (see the module docstring)."""

    def __init__(self, vector_env: NativeVectorEnv | ProcessVectorEnv) -> None:
        if not isinstance(vector_env, (NativeVectorEnv, ProcessVectorEnv)):
            raise TypeError(f"vector_env: {vector_env!r} must be an InferGym native vector env")
        self.vector_env = vector_env
        super().__init__(
            vector_env.num_envs, vector_env.single_observation_space, vector_env.single_action_space
        )
        self._actions: np.ndarray | None = None
        self._ep_return = np.zeros(self.num_envs)
        self._ep_length = np.zeros(self.num_envs, np.int64)
        self._ep_start = [time.time()] * self.num_envs
        self._t_start = time.time()

    # ------------------------------------------------------------------ SB3 VecEnv API

    def reset(self) -> np.ndarray:
        seeds = self._seeds
        seed: Any = None if all(s is None for s in seeds) else list(seeds)
        options = self._options[0] if self._options and self._options[0] else None
        obs, _ = self.vector_env.reset(seed=seed, options=options)
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._ep_start = [time.time()] * self.num_envs
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, rewards, terminated, truncated, infos = self.vector_env.step(self._actions)
        dones = terminated | truncated
        self._ep_return += rewards
        self._ep_length += 1
        kpi = infos.get("kpi")
        keys = [k for k in kpi if not k.startswith("_")] if kpi is not None else []
        cols = [kpi[k].tolist() for k in keys] if kpi is not None else []
        out: list[dict[str, Any]] = [
            {"kpi": dict(zip(keys, vals, strict=True))} for vals in zip(*cols, strict=True)
        ]
        if not keys:
            out = [{} for _ in range(self.num_envs)]
        if dones.any():
            final_obs, final_info = infos["final_obs"], infos["final_info"]
            for e in np.flatnonzero(dones).tolist():
                info = _unbatch(final_info, e)
                info["terminal_observation"] = final_obs[e]
                info["TimeLimit.truncated"] = bool(truncated[e] and not terminated[e])
                now = time.time()
                # Monitor's record (stable_baselines3.common.monitor.Monitor.step): rounded as it rounds
                info["episode"] = {
                    "r": round(float(self._ep_return[e]), 6),
                    "l": int(self._ep_length[e]),
                    "t": round(now - self._t_start, 6),
                }
                self._ep_return[e] = 0.0
                self._ep_length[e] = 0
                self._ep_start[e] = now
                out[e] = info
        return obs, rewards.astype(np.float32), dones, out

    def close(self) -> None:
        self.vector_env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    # sub-env access goes through the vector env's own methods: its sub-envs may live in worker
    # processes (envs.vector.procs)
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return self.vector_env.get_sub_attr(attr_name, list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        self.vector_env.set_sub_attr(attr_name, value, list(self._get_indices(indices)))

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        idx = list(self._get_indices(indices))
        if method_name == "action_masks" and not method_args and not method_kwargs:
            masks = self.vector_env.action_masks()  # one batched call (MaskablePPO asks every step)
            return [masks[i] for i in idx]
        return self.vector_env.call_sub(method_name, *method_args, indices=idx, **method_kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        # Monitor's statistics are written by this adapter itself, so evaluate_policy trusts "episode"
        from stable_baselines3.common.monitor import Monitor

        return [wrapper_class is Monitor for _ in self._get_indices(indices)]

    def _get_indices(self, indices: Any) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices


def _unbatch(batched: dict[str, Any], e: int) -> dict[str, Any]:
    """Sub-env ``e``'s entries of a batched info dict (the ``_key`` masks say which it has)."""
    out: dict[str, Any] = {}
    for key, val in batched.items():
        if key.startswith("_"):
            continue
        mask = batched.get("_" + key)
        if mask is not None and not mask[e]:
            continue
        if isinstance(val, dict):
            out[key] = _unbatch(val, e)
        else:
            item = val[e]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out


def make_native_vec(
    env_id: str, scenario: Any, n_envs: int, seed: int, env_kwargs: dict[str, Any] | None = None
) -> NativeVecEnv:
    """``n_envs`` sub-envs of ``env_id``'s native vector env, seeded ``seed + i`` at the first reset."""
    vector_env = gym.make_vec(
        env_id,
        num_envs=n_envs,
        vectorization_mode="vector_entry_point",
        scenario=scenario,
        **(env_kwargs or {}),
    )
    vec = NativeVecEnv(vector_env.unwrapped)
    vec.seed(seed)
    return vec
