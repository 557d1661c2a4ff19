"""Actions: accepted exactly when the Gymnasium space contains them, refused with the env's message; every
env raises on a step after its episode ended (as Gymnasium's order enforcing does)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)

CASES = {
    "InferGym/Autoscale-v1": {"scenario": "default", "horizon_s": 45.0},
    "InferGym/Routing-v0": {"scenario": "default", "horizon_s": 2.0, "control_interval_s": 1.0},
    "InferGym/Placement-v0": {"source": "jobs", "n_jobs": 5},
}
NAMES = {"InferGym/Autoscale-v1": "AutoscaleEnv", "InferGym/Routing-v0": "RoutingEnv",
         "InferGym/Placement-v0": "PlacementEnv"}  # fmt: skip
BAD = [1.0, np.float64(1.0), np.array([1.0]), [[1, 2], [3]], "x", None, object(), -1, 10**6, [1, 2, 3]]


def make(env_id: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(env_id, **CASES[env_id]).unwrapped


def valid_action(env):
    if hasattr(env, "action_masks"):
        return int(np.flatnonzero(env.action_masks())[0])
    return np.full(env.action_space.shape, env.max_step, np.int64)


@pytest.mark.parametrize("env_id", sorted(CASES))
@pytest.mark.parametrize("action", BAD, ids=lambda a: type(a).__name__ + repr(a)[:12])
def test_actions_outside_the_space_are_refused_by_name(env_id, action):
    env = make(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"^{NAMES[env_id]}: action .* is not in the action space"):
        env.step(action)


@pytest.mark.parametrize("env_id", sorted(CASES))
def test_what_the_space_contains_is_accepted(env_id):
    env = make(env_id)
    env.reset(seed=0)
    a = valid_action(env)
    assert env.action_space.contains(a)
    env.step(a)
    if isinstance(a, np.ndarray):  # a plain list of ints is contained too
        assert env.action_space.contains(a.tolist())
        env.step(a.tolist())
    else:
        env.step(np.int64(int(np.flatnonzero(env.action_masks())[0])))


@pytest.mark.parametrize("env_id", sorted(CASES))
def test_stepping_after_the_end_or_before_reset_raises(env_id):
    env = make(env_id)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0 if not isinstance(env.action_space, gym.spaces.MultiDiscrete) else np.zeros(1, np.int64))
    env.reset(seed=0)
    truncated, steps = False, 0
    while not truncated:
        truncated = env.step(valid_action(env))[3]
        steps += 1
        assert steps < 10_000
    with pytest.raises(RuntimeError, match="reset"):
        env.step(valid_action(env) if not hasattr(env, "action_masks") else 0)
