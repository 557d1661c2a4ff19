"""``InferGym/Autoscale-v3``/``-v2``/``-v1``/``-v0``'s native vector envs (envs.vector.autoscale): the single env's numbers."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

from envs.vector.autoscale import AutoscaleVecEnv, AutoscaleVecEnvV0, AutoscaleVecEnvV1, AutoscaleVecEnvV2
from tests.envs.vector_cases import assert_matches_single

FAULTS = [{"at_s": 100.0, "pool": "a100", "nodes": [0], "duration_s": 200.0}]


def _random(rng: np.random.Generator, vec: AutoscaleVecEnv) -> np.ndarray:
    return np.stack([rng.integers(0, s.nvec) for s in [vec.single_action_space] * vec.num_envs])


def _same_step_info(vinfo: dict, sinfo: dict, i: int) -> None:
    for group in ("rewards", "kpi"):
        for key, val in sinfo[group].items():
            got = vinfo[group][key][i]
            assert got == val or (np.isnan(got) and np.isnan(val)), (group, key, got, val)
    np.testing.assert_array_equal(vinfo["replicas"][i], sinfo["replicas"])
    assert vinfo["clamped"][i] == sinfo["clamped"]


@pytest.mark.parametrize(
    ("env_id", "kwargs", "n_envs", "steps"),
    [
        ("InferGym/Autoscale-v3", {"scenario": "default", "horizon_s": 300}, 3, 50),  # 20-step episodes
        ("InferGym/Autoscale-v2", {"scenario": "bursty", "horizon_s": 240, "action_mode": "target"}, 2, 40),
        ("InferGym/Autoscale-v0", {"scenario": "multi-model", "horizon_s": 150}, 2, 25),
        ("InferGym/Autoscale-v2", {"scenario": "default", "horizon_s": 450, "faults": FAULTS}, 2, 40),
        ("InferGym/Autoscale-v1", {"scenario": "default", "horizon_s": 300}, 2, 25),
        ("InferGym/Autoscale-v3", {"scenario": "disaggregated", "horizon_s": 300}, 2, 25),
        ("InferGym/Autoscale-v3", {"scenario": "disaggregated", "horizon_s": 300, "faults": FAULTS}, 2, 25),
    ],
    ids=[
        "default",
        "bursty-target",
        "v0-multi-model",
        "faults",
        "v1-reserve",
        "v3-disaggregated",
        "v3-disaggregated-faults",
    ],
)
def test_each_sub_env_is_the_single_env_bit_for_bit(
    env_id: str, kwargs: dict, n_envs: int, steps: int
) -> None:
    ends = assert_matches_single(env_id, kwargs, n_envs, steps, 5, _random, _same_step_info)
    assert ends >= n_envs


def test_make_vec_builds_the_native_envs_with_batched_spaces() -> None:
    for env_id, cls in (
        ("InferGym/Autoscale-v3", AutoscaleVecEnv),
        ("InferGym/Autoscale-v2", AutoscaleVecEnvV2),
        ("InferGym/Autoscale-v1", AutoscaleVecEnvV1),
        ("InferGym/Autoscale-v0", AutoscaleVecEnvV0),
    ):
        vec = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", horizon_s=300)
        single = gym.make(env_id, horizon_s=300)
        assert type(vec.unwrapped) is cls
        assert vec.single_action_space == single.action_space
        assert vec.observation_space.shape == (3, *single.observation_space.shape)
        obs, _ = vec.reset(seed=0)
        assert vec.observation_space.contains(obs)
        obs, rew, term, trunc, info = vec.step(vec.action_space.sample())
        assert rew.shape == (3,) and info["kpi"]["requests_arrived"].shape == (3,)
        assert info["replicas"].shape == (3, 1, 3)


def test_pickled_vector_env_continues_identically() -> None:
    vec = AutoscaleVecEnv(2, horizon_s=300)
    vec.reset(seed=2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        vec.step(_random(rng, vec))
    twin = pickle.loads(pickle.dumps(vec))
    for _ in range(30):  # crosses an episode end
        a = _random(rng, vec)
        o1, r1, _, t1, _ = vec.step(a)
        o2, r2, _, t2, _ = twin.step(a)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1, t2)


def test_bad_actions_are_named_errors() -> None:
    vec = AutoscaleVecEnv(2, horizon_s=300)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="actions"):
        vec.step(np.full((2, 1), 99))
    with pytest.raises(ValueError, match="actions"):
        vec.step(np.zeros(2, np.int64))


def test_action_masks_allow_every_action() -> None:
    """Autoscale has no invalid action (targets are clamped): MaskablePPO's flat masks are all True."""
    vec = AutoscaleVecEnv(3, scenario="spot", horizon_s=300)
    masks = vec.action_masks()
    assert masks.shape == (3, int(vec.single_action_space.nvec.sum())) and masks.dtype == np.bool_
    assert masks.all()


def test_a_step_reads_each_window_once() -> None:
    """The window's compiled read runs after each simulation (on its thread) and the step uses it: one
    read per sub-env and step, none repeated in the step's Python phase (a sub-env with a fault due
    in the interval advances in Python and reads its window there, also once)."""
    vec = gym.make_vec("InferGym/Autoscale-v2", num_envs=3, vectorization_mode="vector_entry_point",
                       scenario="default", horizon_s=300, faults=[{**FAULTS[0], "at_s": 60.0}])  # fmt: skip
    vec.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(15):
        sims = [env.sim for env in vec.unwrapped.envs]
        calls = [sim._stats_calls for sim in sims]
        vec.step(_random(rng, vec.unwrapped))
        for sim, before in zip(sims, calls, strict=True):
            assert sim._stats_calls - before == 1
    vec.close()


def test_one_thread_steps_the_simulations_in_turn_with_the_same_numbers() -> None:
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        ends = assert_matches_single(
            "InferGym/Autoscale-v2", {"horizon_s": 300}, 2, 30, 9, _random, _same_step_info
        )
    finally:
        numba.set_num_threads(before)
    assert ends >= 2


@pytest.mark.skipif(
    __import__("numba").config.NUMBA_NUM_THREADS < 2, reason="the worker threads need numba threads >= 2"
)
def test_worker_threads_run_the_simulations_with_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    import numba

    import envs.vector.autoscale as VA

    threads: set[str] = set()
    advance_at = VA.advance_at

    def spy(table: np.ndarray, until: float) -> int:
        threads.add(__import__("threading").current_thread().name)
        return advance_at(table, until)

    monkeypatch.setattr(VA, "advance_at", spy)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        ends = assert_matches_single(
            "InferGym/Autoscale-v2", {"scenario": "bursty", "horizon_s": 300, "action_mode": "target"}, 4, 45, 3,
            _random, _same_step_info,
        )  # fmt: skip
    finally:
        numba.set_num_threads(before)
    assert ends >= 4
    assert any(name.startswith("infergym-sim") for name in threads), threads  # a worker ran some
