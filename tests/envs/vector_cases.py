"""Shared checks of the native vector envs: each sub-env against the single env, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)


def pick_masked(rng: np.random.Generator, masks: np.ndarray, p_invalid: float = 0.1) -> np.ndarray:
    """Mostly valid random slots, sometimes any slot (masked actions are part of the contract)."""
    out = np.empty(len(masks), np.int64)
    for i, m in enumerate(masks):
        ok = np.flatnonzero(m)
        out[i] = rng.integers(len(m)) if rng.random() < p_invalid or len(ok) == 0 else rng.choice(ok)
    return out


def assert_matches_single(env_id: str, kwargs: dict[str, Any], n_envs: int, steps: int, seed: int,
                          actions: Callable[[np.random.Generator, Any], np.ndarray],
                          compare_info: Callable[[dict, dict, int], None] | None = None) -> int:  # fmt: skip
    """Step a vector env and ``n_envs`` single envs (seeds ``seed + i``) with the same actions for
    ``steps`` vector steps; every observation, reward, flag, mask and final observation must be equal.
    Returns the number of episode ends seen (the caller asserts there were some)."""
    vec = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **kwargs)
    singles = [gym.make(env_id, **kwargs).unwrapped for _ in range(n_envs)]
    obs, _ = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        o, _ = env.reset(seed=seed + i)
        np.testing.assert_array_equal(obs[i], o)
    rng = np.random.default_rng(seed)
    ends = 0
    has_masks = hasattr(vec.unwrapped, "action_masks") and hasattr(singles[0], "action_masks")
    for t in range(steps):
        a = actions(rng, vec.unwrapped)
        if has_masks:
            vm = vec.unwrapped.action_masks()
            for i, env in enumerate(singles):
                np.testing.assert_array_equal(vm[i], env.action_masks(), err_msg=f"mask step {t} env {i}")
        obs, rew, term, trunc, info = vec.step(a)
        for i, env in enumerate(singles):
            o, r, te, tr, inf = env.step(a[i])
            assert r == rew[i], (t, i, r, rew[i])
            assert te == term[i] and tr == trunc[i], (t, i)
            if compare_info is not None and not (te or tr):
                compare_info(info, inf, i)
            if te or tr:
                ends += 1
                assert info["_final_obs"][i] and info["_final_info"][i]
                np.testing.assert_array_equal(info["final_obs"][i], o, err_msg=f"final obs step {t} env {i}")
                for key, val in inf.get("episode_kpi", {}).items():
                    got = info["final_info"]["episode_kpi"][key][i]
                    assert got == val or (np.isnan(got) and np.isnan(val)), (key, got, val)
                o, reset_info = env.reset()
                for key in set(inf) - set(reset_info):  # the top level holds the reset's info only
                    assert key not in info or not info["_" + key][i], (t, i, key)
                for key in reset_info:
                    assert info["_" + key][i], (t, i, key)
            np.testing.assert_array_equal(obs[i], o, err_msg=f"obs step {t} env {i}")
    vec.close()
    return ends
