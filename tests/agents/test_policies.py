"""agents.policies.SlotPolicy: one scorer shared by every slot, trained and loaded through agents.sb3."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch as th

import envs  # noqa: F401 - registers the ids
from agents.policies import SlotPolicy
from agents.sb3 import load_agent, train
from envs.sim.errors import ConfigError
from experiments.evaluate import evaluate_policy

TINY = {"n_steps": 64, "batch_size": 64, "n_epochs": 1}
SLOT = {**TINY, "policy": "SlotPolicy", "vecnormalize": {"norm_obs": False, "norm_reward": False}}


def _policy(env: gym.Env, **kw) -> SlotPolicy:
    return SlotPolicy(
        env.observation_space, env.action_space, lambda _: 3e-4, layout=env.unwrapped.obs_layout, **kw
    )


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [("InferGym/Routing-v0", {"scenario": "heterogeneous", "horizon_s": 30.0}),
     ("InferGym/Placement-v0", {"source": "jobs", "n_jobs": 50})],
)  # fmt: skip
def test_permuting_the_slots_permutes_the_logits_and_keeps_the_value(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    th.manual_seed(0)
    pol = _policy(env)
    lay = env.unwrapped.obs_layout
    rng = np.random.default_rng(0)
    obs = rng.random((3, env.observation_space.shape[0])).astype(np.float32)
    perm = rng.permutation(lay["n_slots"])
    s0, d = lay["slots_start"], lay["slot_dim"]
    permuted = obs.copy()
    block = obs[:, s0 : s0 + lay["n_slots"] * d].reshape(3, lay["n_slots"], d)
    permuted[:, s0 : s0 + lay["n_slots"] * d] = block[:, perm].reshape(3, -1)
    with th.no_grad():
        logits, value = pol.mlp_extractor(th.as_tensor(obs))
        logits_p, value_p = pol.mlp_extractor(th.as_tensor(permuted))
        v, v_p = pol.value_net(value).numpy(), pol.value_net(value_p).numpy()
    np.testing.assert_allclose(logits_p.numpy(), logits.numpy()[:, perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v_p, v, rtol=1e-5, atol=1e-6)
    # a near-uniform first policy: the score head starts with a small gain
    assert float(logits.abs().max()) < 0.5


def test_bad_layouts_name_the_field():
    env = gym.make("InferGym/Routing-v0", horizon_s=30.0)
    lay = env.unwrapped.obs_layout
    with pytest.raises(ConfigError, match=r"layout\.n_slots: 3 must equal the number of actions"):
        SlotPolicy(env.observation_space, env.action_space, lambda _: 3e-4, layout={**lay, "n_slots": 3})
    with pytest.raises(ConfigError, match=r"does not fit an observation"):
        SlotPolicy(env.observation_space, env.action_space, lambda _: 3e-4, layout={**lay, "slot_dim": 99})
    with pytest.raises(ConfigError, match=r"layout: None must be a mapping"):
        SlotPolicy(env.observation_space, env.action_space, lambda _: 3e-4, layout=None)
    with pytest.raises(ConfigError, match=r"net_arch"):
        _policy(env, net_arch=[0])


def test_slot_policy_trains_saves_loads_and_evaluates(tmp_path):
    kw = {"horizon_s": 20.0, "shaping": 1.0}
    train("InferGym/Routing-v0", "maskable_ppo", "heterogeneous", 128, 0, tmp_path, n_envs=1, overrides=SLOT,
          env_kwargs=kw, progress_bar=False)  # fmt: skip
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["hyperparams"]["policy"] == "SlotPolicy"
    agent = load_agent(tmp_path)
    assert isinstance(agent.model.policy, SlotPolicy) and agent.masked
    assert (
        agent.model.policy.layout
        == gym.make("InferGym/Routing-v0", scenario="heterogeneous").unwrapped.obs_layout
    )
    rows = evaluate_policy("InferGym/Routing-v0", agent, "heterogeneous", [0, 1], {"horizon_s": 20.0})
    again = evaluate_policy(
        "InferGym/Routing-v0", load_agent(tmp_path), "heterogeneous", [0, 1], {"horizon_s": 20.0}
    )
    assert [r["return"] for r in rows] == [r["return"] for r in again]
    assert all(r["reward.invalid_actions"] == 0.0 for r in rows)


def test_slot_policy_is_refused_where_it_cannot_work(tmp_path):
    with pytest.raises(ConfigError, match=r"frame_stack: 2 must be 1 with SlotPolicy"):
        train("InferGym/Routing-v0", "maskable_ppo", "default", 64, 0, tmp_path / "a",
              overrides={**SLOT, "frame_stack": 2}, env_kwargs={"horizon_s": 20.0}, progress_bar=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"policy: 'SlotPolicy' is a MaskablePPO policy"):
        train("InferGym/Routing-v0", "ppo", "default", 64, 0, tmp_path / "b", overrides=SLOT,
              env_kwargs={"horizon_s": 20.0}, progress_bar=False)  # fmt: skip
