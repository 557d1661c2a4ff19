"""Conformance of every registered InferGym environment (a new id is covered when registered).

Each id gets gymnasium's and stable-baselines3's env checkers, a seeded
two-env rollout compared for exact equality over 200+ steps, a pickle round
trip, a 2-worker SubprocVecEnv, and a random policy over a full episode of
every shipped scenario with no NaN or inf. Superseded versions (which differ from the latest
only by their engine default, reward or features) run the full episode on ``default`` only and
share the latest version's SubprocVecEnv check.
"""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.sim import shipped_scenarios
from tests.paths import AZURE_CONV_TRACE, SCENARIO_TRACES, trace_overrides

IDS = sorted(envs.ENV_IDS)


def _latest(ids: list[str]) -> list[str]:
    """The newest version of every family (``InferGym/Autoscale-v3`` of ``Autoscale-v0..v3``)."""
    newest: dict[str, tuple[int, str]] = {}
    for i in ids:
        family, version = i.rsplit("-v", 1)
        newest[family] = max(newest.get(family, (-1, "")), (int(version), i))
    return sorted(i for _, i in newest.values())


LATEST = _latest(IDS)
SUPERSEDED = [i for i in IDS if i not in LATEST]
TRACE = AZURE_CONV_TRACE
# Short horizons keep rollouts fast; everything else comes from the scenario.
SMALL = {"horizon_s": 300.0}


def make(env_id: str, scenario: str = "default", **kw):
    return gym.make(env_id, scenario=scenario, **{**SMALL, **kw})


def _sample(env, rng: np.random.Generator):
    """A uniformly random action; valid ones only when the env offers a mask."""
    base = env.unwrapped
    if hasattr(base, "action_masks"):
        mask = base.action_masks()
        valid = np.flatnonzero(mask)
        return int(rng.choice(valid)) if len(valid) else 0
    space = env.action_space
    if isinstance(space, gym.spaces.MultiDiscrete):
        return rng.integers(0, space.nvec).astype(space.dtype)
    return int(rng.integers(space.n))


def _rollout(env, seed: int, steps: int):
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    for _ in range(steps):
        obs, reward, term, trunc, info = env.step(_sample(env, rng))
        out.append((obs, reward, term, trunc, info))
        if term or trunc:
            obs, info = env.reset()
            out.append((obs, info))
    return out


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_env_checker(env_id):
    from gymnasium.utils.env_checker import check_env

    env = make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=False)
    assert not unexpected(caught), unexpected(caught)


def unexpected(caught) -> list[str]:
    """Warnings other than gymnasium's notice that a superseded id (Autoscale-v0) is out of date."""
    return [str(w.message) for w in caught if "is out of date" not in str(w.message)]


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_env_checker(env_id):
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(make(env_id).unwrapped, warn=True)
    assert not unexpected(caught), unexpected(caught)


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory_and_different_seeds_differ(env_id):
    a = _rollout(make(env_id), seed=3, steps=220)
    b = _rollout(make(env_id), seed=3, steps=220)
    assert _equal(a, b)
    c = _rollout(make(env_id), seed=4, steps=220)
    assert not _equal(a, c)


@pytest.mark.parametrize("env_id", IDS)
def test_observations_in_space_and_flags(env_id):
    env = make(env_id)
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    truncated = False
    for _ in range(20000):  # Routing-v0 takes one step per request: ~6000 in 300 s of the default
        obs, reward, term, truncated, info = env.step(_sample(env, rng))
        assert obs.dtype == np.float32 and env.observation_space.contains(obs)
        assert np.isfinite(reward)
        assert "rewards" in info and "kpi" in info
        assert np.isclose(reward, env.unwrapped.reward_from_terms(info["rewards"]))
        assert not term, "the horizon end must be truncation, and nothing else ends an episode"
        if truncated:
            break
    assert truncated, "an episode of a 300 s horizon must end"


@pytest.mark.parametrize("env_id", IDS)
def test_pickle_round_trip_continues_identically(env_id):
    env = make(env_id)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for k in range(10):
        out = env.step(_sample(env, rng))
        if out[2] or out[3]:  # stepping past an episode's end raises: start the next one
            env.reset(seed=2 + k)
    clone = pickle.loads(pickle.dumps(env))
    act_rng = np.random.default_rng(7)
    for _ in range(20):
        action = _sample(env, act_rng)
        out = env.step(action)
        assert _equal(out, clone.step(action))
        if out[2] or out[3]:  # stepping past an episode's end is undefined in gymnasium: reset both
            assert _equal(env.reset(), clone.reset())


# One id per environment family (the superseded versions subclass the latest), as each worker
# process pays a few seconds of start-up.
@pytest.mark.parametrize("env_id", LATEST)
def test_subproc_vec_env_two_workers(env_id):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    # "envs:" makes a worker started by forkserver/spawn import the registry before gym.make
    vec = make_vec_env(
        f"envs:{env_id}",
        n_envs=2,
        seed=0,
        vec_env_cls=SubprocVecEnv,
        env_kwargs={"scenario": "default", **SMALL},
    )
    try:
        obs = vec.reset()
        assert obs.shape[0] == 2
        for _ in range(5):
            actions = np.array([vec.action_space.sample() for _ in range(2)])
            if vec.has_attr("action_masks"):
                masks = vec.env_method("action_masks")
                actions = np.array([int(np.flatnonzero(m)[0]) if np.any(m) else 0 for m in masks])
            obs, rewards, dones, infos = vec.step(actions)
            assert np.all(np.isfinite(rewards))
    finally:
        vec.close()


@pytest.mark.parametrize(
    ("env_id", "scenario"),
    [(i, s) for i in LATEST for s in shipped_scenarios()] + [(i, "default") for i in SUPERSEDED],
)
def test_random_policy_full_episode_every_scenario(env_id, scenario):
    kw = trace_overrides(scenario)
    if scenario in SCENARIO_TRACES:
        path = SCENARIO_TRACES[scenario]
        assert path.exists(), f"the trace must be beside the repository at {path}"
    env = make(env_id, scenario, **kw)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    for _ in range(20000):
        obs, reward, term, trunc, info = env.step(_sample(env, rng))
        assert np.all(np.isfinite(obs)) and np.isfinite(reward)
        if term or trunc:
            break
    assert term or trunc


@pytest.mark.parametrize("env_id", IDS)
def test_unknown_kwarg_raises(env_id):
    with pytest.raises(ValueError, match="no_such_argument"):
        gym.make(env_id, scenario="default", no_such_argument=1)


@pytest.mark.parametrize("env_id", IDS)
def test_action_outside_space_raises(env_id):
    env = make(env_id)
    env.reset(seed=0)
    space = env.action_space
    bad = space.nvec + 5 if isinstance(space, gym.spaces.MultiDiscrete) else space.n + 5
    with pytest.raises(ValueError, match="action"):
        env.step(bad)


@pytest.mark.parametrize("env_id", IDS)
def test_render_rgb_array(env_id):
    env = make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        _, _, term, trunc, _ = env.step(_sample(env, rng))
        if term or trunc:  # a short episode may end first; stepping past its end is undefined
            break
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    assert frame.std() > 5, "the frame must show something"


MASKED_IDS = [i for i in IDS if hasattr(make(i).unwrapped, "action_masks")]


def test_only_autoscale_has_no_masks_and_every_action_of_it_is_valid():
    assert set(IDS) - set(MASKED_IDS) == {f"InferGym/Autoscale-v{v}" for v in range(4)}
    env = make("InferGym/Autoscale-v1", action_mode="target")
    env.reset(seed=0)
    base = env.unwrapped
    for action in (env.action_space.nvec - 1, np.zeros_like(env.action_space.nvec)):  # the extremes
        env.step(action)
        for m in range(base.n_models):
            assert base.min_replicas[m] <= base.sim.target[m] <= base.max_replicas[m]


@pytest.mark.parametrize("env_id", MASKED_IDS)
def test_maskable_ppo_trains_with_action_masks(env_id):
    """Every env that can have invalid actions exposes masks that sb3-contrib's MaskablePPO uses."""
    env = make(env_id)
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.wrappers import ActionMasker

    masked = ActionMasker(env, lambda e: e.unwrapped.action_masks())
    model = MaskablePPO("MlpPolicy", masked, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    obs, _ = masked.reset(seed=0)
    for _ in range(50):
        mask = env.unwrapped.action_masks()
        action, _ = model.predict(obs, action_masks=mask, deterministic=True)
        if mask.any():
            assert mask[int(action)], "a masked policy must choose a valid action"
        obs, _, term, trunc, _ = masked.step(int(action))
        if term or trunc:
            obs, _ = masked.reset()
