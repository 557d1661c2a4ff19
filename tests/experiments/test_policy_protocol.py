"""One policy protocol (``agents.Policy``) for everything the evaluator runs.

Every registered InferGym id builds its classical controller's adapter through its env class
(``controller_policy``, found from the registry's entry point); the adapter, the random policy and
the SB3 wrapper all have ``reset(seed=None)`` and ``predict(obs, env, deterministic=True)``, and the
evaluator runs an adapter exactly as a hand-written loop over that protocol does.
"""

from __future__ import annotations

import inspect

import gymnasium as gym
import pytest

import envs
from agents import Policy, RandomPolicy
from experiments.evaluate import evaluate_policy, make_policy

# A controller spec per registered id, with env arguments that keep an episode short.
CONTROLLERS = {
    "InferGym/Autoscale-v3": ("dynamo_sla", {"scenario": "disaggregated", "horizon_s": 60.0}),
    "InferGym/Autoscale-v2": ("hpa", {"horizon_s": 60.0}),
    "InferGym/Autoscale-v1": ("hpa", {"horizon_s": 60.0}),
    "InferGym/Autoscale-v0": ("hpa", {"horizon_s": 60.0}),
    "InferGym/Routing-v0": ("least_connections", {"horizon_s": 15.0}),
    "InferGym/Routing-v1": ("kv_aware", {"horizon_s": 15.0}),
    "InferGym/Routing-v2": ("prefix_aware", {"horizon_s": 15.0}),
    "InferGym/Placement-v1": ("fgd", {"source": "llm", "horizon_s": 120.0}),
    "InferGym/Placement-v0": ("best_fit", {"source": "jobs", "n_nodes": 8, "n_jobs": 20}),
}


def _shape(cls: type, name: str) -> list[tuple[str, object, object]]:
    """(name, kind, default) of each parameter of ``cls.name``: the protocol's part of a signature."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(getattr(cls, name)).parameters.values()]


def assert_protocol(cls: type) -> None:
    for name in ("reset", "predict"):
        assert _shape(cls, name) == _shape(Policy, name), f"{cls.__name__}.{name}"


def run_by_hand(env_id: str, policy: Policy, env_kwargs: dict, seed: int) -> tuple[float, int]:
    """An episode driven through the protocol alone: the evaluator must give the same numbers."""
    env = gym.make(env_id, **{"scenario": "default", **env_kwargs})
    obs, _ = env.reset(seed=seed)
    policy.reset(seed=seed)
    ret, steps, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(
            policy.predict(obs, env.unwrapped, deterministic=True)
        )
        ret += float(reward)
        steps += 1
        done = terminated or truncated
    return ret, steps


def test_every_registered_id_has_a_case_here():
    assert set(CONTROLLERS) == set(envs.ENV_IDS), "give a new id a controller spec in CONTROLLERS"


@pytest.mark.parametrize("env_id", sorted(envs.ENV_IDS))
def test_controller_adapter_satisfies_the_protocol_and_runs_through_the_evaluator(env_id):
    spec, env_kwargs = CONTROLLERS[env_id]
    env_cls = envs.env_class(env_id)
    assert isinstance(gym.make(env_id, **env_kwargs).unwrapped, env_cls)
    adapter = env_cls.controller_policy(spec, seed=0)
    assert isinstance(adapter, Policy)
    assert_protocol(type(adapter))
    rest = {k: v for k, v in env_kwargs.items() if k != "scenario"}
    scenario = env_kwargs.get("scenario", "default")
    (row,) = evaluate_policy(env_id, make_policy(env_id, spec), scenario, [3], rest)
    assert row["steps"] >= 1
    assert (row["return"], row["steps"]) == run_by_hand(env_id, adapter, env_kwargs, seed=3)


def test_random_policy_and_the_sb3_wrapper_have_the_same_signature():
    from agents.sb3 import SB3Policy

    assert_protocol(RandomPolicy)
    assert_protocol(SB3Policy)
    assert isinstance(RandomPolicy(0), Policy)


def test_the_evaluator_refuses_what_is_not_a_policy():
    with pytest.raises(TypeError, match="agents.Policy"):
        evaluate_policy("InferGym/Autoscale-v1", object(), "default", [0], {"horizon_s": 30.0})
