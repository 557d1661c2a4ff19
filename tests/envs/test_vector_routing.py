"""``InferGym/Routing-v0``'s native vector env (envs.vector.routing): the single env's numbers, batched."""

from __future__ import annotations

import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from envs.vector.routing import RoutingVecEnv
from tests.envs.vector_cases import assert_matches_single, pick_masked

ENV = "InferGym/Routing-v0"
#: Two node failures in a 30 s episode of ~80 decisions: sub-envs take the single env's Python step.
FAULTS = [
    {"at_s": 4.0, "pool": "a100", "nodes": [0], "duration_s": 10.0},
    {"at_s": 12.0, "pool": "a100", "nodes": [1], "duration_s": 5.0},
]


def _masked(rng: np.random.Generator, vec: RoutingVecEnv) -> np.ndarray:
    return pick_masked(rng, vec.action_masks())


def _same_step_info(vinfo: dict, sinfo: dict, i: int) -> None:
    for group in ("rewards", "kpi"):
        for key, val in sinfo[group].items():
            assert vinfo[group][key][i] == val, (group, key, vinfo[group][key][i], val)
    assert vinfo["replica"][i] == sinfo["replica"] and vinfo["request"][i] == sinfo["request"]


@pytest.mark.parametrize(
    ("kwargs", "n_envs", "steps"),
    [
        ({"scenario": "default", "horizon_s": 20}, 5, 900),  # episodes of ~370 decisions: several ends each
        ({"scenario": "heterogeneous", "horizon_s": 12, "control_interval_s": 5, "shaping": 0.5}, 3, 800),
        ({"scenario": "default", "horizon_s": 30, "faults": FAULTS}, 3, 300),  # faults: the Python path
    ],
    ids=["default", "heterogeneous-shaping", "faults"],
)
def test_each_sub_env_is_the_single_env_bit_for_bit(kwargs: dict, n_envs: int, steps: int) -> None:
    ends = assert_matches_single(ENV, kwargs, n_envs, steps, 7, _masked, _same_step_info)
    assert ends >= n_envs


def test_the_parallel_build_is_the_single_env_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    # below PARALLEL_FROM sub-envs the serial build runs; this forces the threaded one
    monkeypatch.setattr("envs.vector.routing.PARALLEL_FROM", 2)
    kwargs = {"scenario": "default", "horizon_s": 20}
    ends = assert_matches_single(ENV, kwargs, 3, 600, 11, _masked, _same_step_info)
    assert ends >= 3


def test_few_sub_envs_never_start_the_thread_pool() -> None:
    # numba caches a compiled function under its name: the serial and parallel builds of one function
    # once shared an entry, so after a process had cached the parallel build, the serial one loaded it
    # and started the threads (about 100 us) on every call. First run (and cache) the parallel build.
    code = (
        "import sys, gymnasium as gym, numpy as np, envs\n"
        "import envs.vector.routing as R\n"
        "from numba.np.ufunc import parallel\n"
        "R.PARALLEL_FROM = int(sys.argv[1])\n"
        "vec = gym.make_vec('InferGym/Routing-v2', num_envs=2, vectorization_mode='vector_entry_point',"
        " scenario='default', horizon_s=20)\n"
        "vec.reset(seed=0)\n"
        "for _ in range(50):\n"
        "    vec.step(np.argmax(vec.unwrapped.action_masks(), axis=1))\n"
        "print(parallel._is_initialized)\n"
    )

    def threads_started(parallel_from: int) -> str:
        out = subprocess.run([sys.executable, "-c", code, str(parallel_from)], capture_output=True, text=True,
                             check=True, timeout=600)  # fmt: skip
        return out.stdout.strip().splitlines()[-1]

    assert threads_started(2) == "True"
    assert threads_started(1_000) == "False"


def test_the_decode_stage_sub_envs_are_the_single_env_bit_for_bit() -> None:
    kwargs = {"scenario": "disaggregated", "horizon_s": 15, "stage": "decode"}
    ends = assert_matches_single("InferGym/Routing-v2", kwargs, 2, 700, 7, _masked, _same_step_info)
    assert ends >= 2


def test_make_vec_builds_the_native_env_with_batched_spaces() -> None:
    vec = gym.make_vec(ENV, num_envs=4, vectorization_mode="vector_entry_point", horizon_s=20)
    single = gym.make(ENV, horizon_s=20)
    assert isinstance(vec.unwrapped, RoutingVecEnv)
    assert vec.single_observation_space == single.observation_space
    assert vec.observation_space.shape == (4, *single.observation_space.shape)
    assert vec.action_space == gym.spaces.MultiDiscrete([single.action_space.n] * 4)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = vec.reset(seed=0)
    assert obs.shape == vec.observation_space.shape and obs.dtype == np.float32
    assert vec.observation_space.contains(obs)
    assert vec.unwrapped.action_masks().shape == (4, single.action_space.n)
    obs, rew, term, trunc, info = vec.step(vec.unwrapped.action_masks().argmax(1))
    assert rew.shape == term.shape == trunc.shape == (4,) and rew.dtype == np.float64
    assert set(info["rewards"]) >= {"slo_violations", "drops", "latency", "invalid_actions", "_latency"}
    assert info["_kpi"].all() and info["kpi"]["time_s"].shape == (4,)


def test_same_seed_same_numbers_and_seed_lists() -> None:
    def run(seed: object) -> list[np.ndarray]:
        vec = RoutingVecEnv(3, horizon_s=20)
        obs, _ = vec.reset(seed=seed)
        out = [obs]
        for _ in range(200):
            obs, rew, *_ = vec.step(vec.action_masks().argmax(1))
            out += [obs, rew]
        return out

    a, b, c = run(3), run(3), run([3, 4, 5])
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    assert not all(np.array_equal(x, y) for x, y in zip(a, run(4), strict=True))


@pytest.mark.parametrize(
    "bad", [np.array([0, 1]), np.array([0, 1, 99]), np.array([0, -1, 0]), np.array([0.5, 0.0, 0.0]), "x"]
)
def test_bad_actions_are_named_errors(bad: object) -> None:
    vec = RoutingVecEnv(3, horizon_s=20)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="actions"):
        vec.step(bad)


def test_bad_arguments_and_order_of_calls() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        RoutingVecEnv(0)
    with pytest.raises(ValueError, match="render_mode"):
        RoutingVecEnv(2, render_mode="rgb_array")
    vec = RoutingVecEnv(2, horizon_s=20)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="seed"):
        vec.reset(seed=[1, 2, 3])


def test_pickled_vector_env_continues_identically() -> None:
    vec = RoutingVecEnv(3, horizon_s=20)
    vec.reset(seed=11)
    for _ in range(150):
        vec.step(vec.action_masks().argmax(1))
    twin = pickle.loads(pickle.dumps(vec))
    for _ in range(400):  # crosses episode ends (autoreset) in both
        a = vec.action_masks().argmax(1)
        np.testing.assert_array_equal(a, twin.action_masks().argmax(1))
        o1, r1, _, t1, _ = vec.step(a)
        o2, r2, _, t2, _ = twin.step(a)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1, t2)
