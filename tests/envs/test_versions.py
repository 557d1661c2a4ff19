"""Env versions and the engine default: the latest ids run ``kv_policy: paged`` unless a model says
otherwise; the superseded ids keep the ``reserve`` engine they were made with, so their numbers do
not move (their trajectories are also pinned in ``tests/sim/golden.json``)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.placement import JobPlacementEnvV0, LlmPlacementEnv, LlmPlacementEnvV0
from envs.sim import load_scenario, run_scenario

SHORT = {"horizon_s": 120.0}
#: id -> the kv_policy a model that does not set one runs
ENGINE_BY_ID = {
    "InferGym/Autoscale-v3": "paged",
    "InferGym/Autoscale-v2": "paged",
    "InferGym/Autoscale-v1": "reserve",
    "InferGym/Autoscale-v0": "reserve",
    "InferGym/Routing-v2": "paged",
    "InferGym/Routing-v1": "reserve",
    "InferGym/Routing-v0": "reserve",
    "InferGym/Placement-v1": "paged",
    "InferGym/Placement-v0": "reserve",
}


def test_every_registered_id_is_listed():
    assert set(ENGINE_BY_ID) == set(envs.ENV_IDS)


@pytest.mark.parametrize(("env_id", "policy"), sorted(ENGINE_BY_ID.items()))
def test_engine_default_by_version(env_id, policy):
    env = gym.make(env_id, scenario="default", **SHORT)
    assert [m.kv_policy for m in env.unwrapped.scenario.models] == [policy]
    # a model that chooses its engine keeps it in every version
    chosen = "reserve" if policy == "paged" else "paged"
    models = [{"name": "llama-3-8b", "replicas": 2, "kv_policy": chosen}]
    env = gym.make(env_id, scenario="default", models=models, **SHORT)
    assert [m.kv_policy for m in env.unwrapped.scenario.models] == [chosen]


def test_simulator_default_is_paged_for_roofline_and_reserve_for_validation_services():
    assert [m.kv_policy for m in load_scenario("default").models] == ["paged"]
    sc = load_scenario("default", {"service": {"kind": "exponential", "mean_s": 1.0}})
    assert [m.kv_policy for m in sc.models] == ["reserve"]


def test_with_model_defaults_fills_only_unset_keys_and_reproduces_the_explicit_scenario():
    sc = load_scenario("default")
    reserve = sc.with_model_defaults({"kv_policy": "reserve"})
    assert reserve.models[0].kv_policy == "reserve" and sc.models[0].kv_policy == "paged"
    assert reserve.with_model_defaults({"kv_policy": "reserve"}) is reserve  # nothing left to fill
    explicit = load_scenario("default", {"models": [{**sc.raw["models"][0], "kv_policy": "reserve"}]})
    assert run_scenario(reserve, seed=3, overrides={"horizon_s": 300}) == run_scenario(
        explicit, seed=3, overrides={"horizon_s": 300}
    )


def test_reserve_option_on_a_paged_default_names_the_default():
    with pytest.raises(ValueError, match=r"kv_policy is 'reserve'\)"):
        load_scenario(
            "default", {"models": [{"name": "llama-3-8b", "kv_policy": "reserve", "prefix_caching": True}]}
        )


def test_autoscale_versions_differ_only_by_engine_on_a_scenario_that_fixes_it():
    """v2 and v1 have the same reward; with every model's engine set they step identically."""
    models = [
        {"name": "llama-3-8b", "replicas": 2, "min_replicas": 1, "max_replicas": 8, "kv_policy": "paged"}
    ]
    out = []
    for env_id in ("InferGym/Autoscale-v2", "InferGym/Autoscale-v1"):
        env = gym.make(env_id, scenario="default", models=models, **SHORT)
        obs, _ = env.reset(seed=5)
        rows = [obs]
        for k in range(8):
            obs, reward, *_ = env.step(np.array([k % 3]))
            rows += [obs, np.array([reward])]
        out.append(np.concatenate([r.ravel() for r in rows]))
    np.testing.assert_array_equal(out[0], out[1])


def test_placement_versions_pick_their_source_classes_and_pickle():
    v0 = gym.make("InferGym/Placement-v0", source="llm", scenario="bursty", **SHORT).unwrapped
    v1 = gym.make("InferGym/Placement-v1", source="llm", scenario="bursty", **SHORT).unwrapped
    jobs = gym.make("InferGym/Placement-v0", source="jobs").unwrapped
    assert type(v0) is LlmPlacementEnvV0 and type(v1) is LlmPlacementEnv and type(jobs) is JobPlacementEnvV0
    v0.reset(seed=0)
    clone = pickle.loads(pickle.dumps(v0))
    assert type(clone) is LlmPlacementEnvV0 and clone.scenario.models[0].kv_policy == "reserve"
    action = int(np.flatnonzero(v0.action_masks())[0])
    a, b = v0.step(action), clone.step(action)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


@pytest.mark.parametrize(("env_id", "policy"), [("InferGym/Autoscale-v1", "reserve"), ("InferGym/Routing-v2", "paged"),
                                                 ("InferGym/Placement-v0", "reserve")])  # fmt: skip
def test_native_vector_envs_keep_their_versions_engine(env_id, policy):
    vec = gym.make_vec(
        env_id, num_envs=2, vectorization_mode="vector_entry_point", scenario="default", **SHORT
    )
    assert {m.kv_policy for e in vec.unwrapped.envs for m in e.scenario.models} == {policy}
    vec.close()


def _trajectory(env_id: str, steps: int, **kwargs) -> list:
    env = gym.make(env_id, **kwargs).unwrapped
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=4)
    out = [obs]
    for _ in range(steps):
        valid = np.flatnonzero(env.action_masks())
        obs, reward, term, trunc, info = env.step(int(rng.choice(valid)) if len(valid) else 0)
        out += [obs, reward, term, trunc, sorted(info["kpi"].items())]
        if term or trunc:
            obs, _ = env.reset(seed=5)
            out.append(obs)
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b, strict=True)
    )


def test_routing_v2_is_v1_where_every_model_names_its_engine():
    """The committed routing-prefix table (Routing-v1 on ``mooncake-conv``, whose model sets
    ``kv_policy: paged``) holds for Routing-v2: the versions step identically there."""
    models = [{"name": "llama-3-8b", "replicas": 3, "kv_policy": "paged"}]
    kw = {"scenario": "default", "models": models, "horizon_s": 20.0}
    assert _same(_trajectory("InferGym/Routing-v1", 300, **kw), _trajectory("InferGym/Routing-v2", 300, **kw))


def test_placement_v1_jobs_source_is_v0s():
    """Jobs do not use the serving engine: the committed placement tables (jobs source) hold for v1."""
    kw = {"source": "jobs", "n_nodes": 8, "n_jobs": 60}
    assert _same(
        _trajectory("InferGym/Placement-v0", 150, **kw), _trajectory("InferGym/Placement-v1", 150, **kw)
    )
