"""SB3 glue: hyperparameter files and overrides, train -> checkpoint -> resume -> evaluate, masked agents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.sb3 import SB3Policy, latest_checkpoint, load_agent, load_hyperparams, parse_overrides, train
from envs.sim.errors import ConfigError
from experiments.evaluate import evaluate_policy
from experiments.train import main as train_main
from experiments.train import parse_args

AUTOSCALE = "InferGym/Autoscale-v1"
TINY = ["n_steps=64", "batch_size=64", "n_epochs=2", "policy_kwargs.net_arch=[16, 16]"]


def test_hyperparams_default_env_entry_and_overrides():
    hp = load_hyperparams("ppo", AUTOSCALE)
    assert hp["n_steps"] == 64 and hp["n_envs"] == 8, "the env entry overrides the default"
    assert hp["n_epochs"] == 10 and hp["vecnormalize"] == {"norm_obs": True, "norm_reward": False}
    assert load_hyperparams("ppo", "InferGym/Routing-v0")["n_steps"] == 1024
    assert "n_envs" not in load_hyperparams("ppo", "InferGym/Routing-v0")  # train() steps 2 copies
    hp = load_hyperparams("ppo", AUTOSCALE, ["learning_rate=1e-3", "policy_kwargs.net_arch=[8]"])
    assert hp["learning_rate"] == 1e-3 and hp["policy_kwargs"] == {"net_arch": [8], "activation_fn": "tanh"}


def test_overrides_are_yaml_never_eval_and_unknown_keys_fail():
    assert parse_overrides(["a=[1, 2]", "b.c=true", "d=__import__('os')"]) == {
        "a": [1, 2],
        "b": {"c": True},
        "d": "__import__('os')",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["n_steps"])
    with pytest.raises(ConfigError, match="hyperparams.n_stepz"):
        load_hyperparams("ppo", AUTOSCALE, ["n_stepz=3"])
    with pytest.raises(ConfigError, match="activation_fn"):
        load_hyperparams("ppo", AUTOSCALE, ["policy_kwargs.activation_fn=sigmoid"])
    with pytest.raises(ConfigError, match="algo"):
        load_hyperparams("sac", AUTOSCALE)


def test_dqn_rejects_multidiscrete(tmp_path):
    with pytest.raises(ConfigError, match="Discrete"):
        train(
            AUTOSCALE, "dqn", "default", 64, 0, tmp_path, overrides=["learning_starts=8"], progress_bar=False
        )


def test_train_checkpoint_resume_and_evaluate(tmp_path):
    run = tmp_path / "run"
    kw = {"n_envs": 2, "overrides": TINY, "env_kwargs": {"horizon_s": 120.0}, "checkpoint_freq": 128,
          "progress_bar": False}  # fmt: skip
    model = train(AUTOSCALE, "ppo", "default", 256, 0, run, **kw)
    assert model.num_timesteps == 256
    assert latest_checkpoint(run)[1] == 256
    assert (run / "checkpoints" / "model_vecnormalize_128_steps.pkl").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["hyperparams"]["n_steps"] == 64 and record["config"]["seed"] == 0
    assert "stable-baselines3" in record["versions"] and "git_sha" in record
    # interruption: the first run stopped at 256; asking for 512 continues from the checkpoint
    model = train(AUTOSCALE, "ppo", "default", 512, 0, run, **kw)
    assert model.num_timesteps == 512
    record = json.loads((run / "run.json").read_text())
    assert [s["from_timesteps"] for s in record["sessions"]] == [0, 256]
    assert [s["to_timesteps"] for s in record["sessions"]] == [256, 512]
    assert [p.name for p in (run / "tb").iterdir()] == ["run_1"], "the tensorboard curve continues"
    # a different config in the same folder is refused
    with pytest.raises(ConfigError, match="another config"):
        train(AUTOSCALE, "ppo", "bursty", 512, 0, run, **kw)

    agent = load_agent(run)
    assert isinstance(agent, SB3Policy) and agent.vecnormalize is not None and not agent.vecnormalize.training
    assert agent.model.num_timesteps == 512
    # the same agent on another scenario, through the one evaluator, deterministically
    a = evaluate_policy(AUTOSCALE, agent, "bursty", [0, 1], {"horizon_s": 120.0})
    b = evaluate_policy(AUTOSCALE, load_agent(run / "checkpoints" / "model_512_steps.zip"), "bursty", [0, 1],
                        {"horizon_s": 120.0})  # fmt: skip
    strip = [{k: v for k, v in r.items() if k != "policy"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "policy"} for r in b]
    assert len(a) == 2 and a[0]["steps"] == 8 and a[0]["return"] != a[1]["return"]
    assert all(np.isfinite(r["return"]) for r in a)


def test_frame_stack_trains_and_evaluates_with_the_same_stacking(tmp_path):
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    with pytest.raises(ConfigError, match="hyperparams.frame_stack: 0 must be >= 1"):
        load_hyperparams("ppo", AUTOSCALE, ["frame_stack=0"])
    env_kwargs = {"horizon_s": 120.0}
    train(AUTOSCALE, "ppo", "bursty", 128, 0, tmp_path, n_envs=1, overrides=[*TINY, "frame_stack=3"],
          env_kwargs=env_kwargs, progress_bar=False)  # fmt: skip
    agent = load_agent(tmp_path)
    assert agent.frame_stack == 3 and agent.model.observation_space.shape == (3 * 16,)
    # the evaluator's stacking is SB3's VecFrameStack, step for step and across episodes
    vec = VecFrameStack(DummyVecEnv([lambda: gym.make(AUTOSCALE, scenario="bursty", **env_kwargs)]), 3)
    env = gym.make(AUTOSCALE, scenario="bursty", **env_kwargs)
    for episode in range(2):
        vec.seed(episode)
        expected = vec.reset()[0]
        obs, _ = env.reset(seed=episode)
        agent.reset()
        for _ in range(8):
            assert np.array_equal(agent._stacked(obs), expected)
            action = env.action_space.sample()
            obs, *_ = env.step(action)
            expected = vec.step(action[None])[0][0]
    rows = evaluate_policy(AUTOSCALE, agent, "bursty", [0, 0], env_kwargs)
    assert rows[0]["return"] == rows[1]["return"], "reset() forgets the previous episode's frames"


def test_maskable_ppo_on_routing_uses_masks(tmp_path):
    env_kwargs = {"horizon_s": 20.0}
    train("InferGym/Routing-v0", "maskable_ppo", "default", 128, 1, tmp_path, n_envs=1, overrides=TINY,
          env_kwargs=env_kwargs, progress_bar=False)  # fmt: skip
    agent = load_agent(tmp_path / "model.zip")
    assert agent.masked
    rows = evaluate_policy("InferGym/Routing-v0", agent, "default", [0], env_kwargs)
    assert rows[0]["reward.invalid_actions"] == 0.0, "a masked policy never picks a masked replica"
    with pytest.raises(ConfigError, match="action_masks"):
        train(AUTOSCALE, "maskable_ppo", "default", 64, 0, tmp_path / "x", progress_bar=False)


def test_train_cli_parses_typed_args_and_runs(tmp_path, capsys):
    args = parse_args(
        ["--env", AUTOSCALE, "--algo", "a2c", "--run-dir", "r", "--hp", "n_steps=8", "--seed", "3"]
    )
    assert args.seed == 3 and args.hp == ("n_steps=8",) and args.n_envs is None and args.scenario == "default"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("env: InferGym/Routing-v0\nalgo: maskable_ppo\nseed: 5\nenv_kwargs: {horizon_s: 60}\n")
    args = parse_args(["--config", str(cfg), "--run-dir", "r", "--seed", "6"])
    assert (args.env, args.algo, args.seed, args.env_kwargs) == (
        "InferGym/Routing-v0",
        "maskable_ppo",
        6,
        ("horizon_s=60",),
    )
    cfg.write_text("env: InferGym/Routing-v0\nalgoo: ppo\n")
    with pytest.raises(ConfigError, match="algoo"):
        parse_args(["--config", str(cfg), "--run-dir", "r"])
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "--total-timesteps" in capsys.readouterr().out
    rc = train_main(["--env", AUTOSCALE, "--algo", "a2c", "--run-dir", str(tmp_path), "--total-timesteps", "32",
                     "--hp", "n_steps=8", "--env-kwargs", "horizon_s=60", "--no-progress-bar"])  # fmt: skip
    assert rc == 0 and (tmp_path / "model.zip").exists()
    assert json.loads((tmp_path / "run.json").read_text())["sessions"][0]["command"].startswith(
        "python -m experiments.train"
    )
    assert (
        train_main(["--env", AUTOSCALE, "--algo", "a2c", "--run-dir", str(tmp_path / "y"), "--hp", "bogus=1"])
        == 2
    )


def test_n_envs_comes_from_the_hyperparameters_unless_the_caller_names_it(tmp_path):
    tiny = ["n_steps=8", "batch_size=16", "n_epochs=1", "policy_kwargs.net_arch=[8]"]
    kw = {"env_kwargs": {"horizon_s": 120.0}, "progress_bar": False}
    model = train(AUTOSCALE, "ppo", "default", 64, 0, tmp_path / "a", overrides=tiny, **kw)
    assert model.n_envs == 8  # ppo.yaml's Autoscale entry
    config = json.loads((tmp_path / "a" / "run.json").read_text())["config"]
    assert config["n_envs"] == 8 and config["hyperparams"]["n_envs"] == 8
    model = train(AUTOSCALE, "ppo", "default", 32, 0, tmp_path / "b", n_envs=2, overrides=tiny, **kw)
    config = json.loads((tmp_path / "b" / "run.json").read_text())["config"]
    assert model.n_envs == 2 and config["n_envs"] == 2 and config["hyperparams"]["n_envs"] == 2
    with pytest.raises(ConfigError, match="hyperparams.n_envs"):
        load_hyperparams("ppo", AUTOSCALE, ["n_envs=0"])
