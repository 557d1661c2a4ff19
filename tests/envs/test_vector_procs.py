"""Native vector envs split over worker processes (envs.vector.procs): the in-process env's numbers."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from envs.vector.autoscale import AutoscaleVecEnvV2
from envs.vector.procs import ProcessVectorEnv, merge_infos


def _same(a: Any, b: Any, path: str = "") -> None:
    """``a`` and ``b`` equal key for key, array for array (NaN equal to NaN)."""
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{k}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            _same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert b.dtype == object and len(a) == len(b), path
        for x, y in zip(a, b, strict=True):
            _same(x, y, path + "[]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), path
    else:
        assert a == b or (a != a and b != b), (path, a, b)


def _actions(rng: np.random.Generator, vec: Any) -> np.ndarray:
    space = vec.single_action_space
    if isinstance(space, gym.spaces.Discrete):  # a random valid choice from the masks
        return np.argmax(rng.random((vec.num_envs, space.n)) * vec.action_masks(), axis=1)
    return np.stack([rng.integers(0, space.nvec) for _ in range(vec.num_envs)])


@pytest.mark.parametrize(
    ("env_id", "kwargs", "n_envs", "steps"),
    [
        ("InferGym/Autoscale-v2", {"scenario": "default", "horizon_s": 300}, 5, 45),  # 20-step episodes
        (
            "InferGym/Routing-v2",
            {"scenario": "default", "horizon_s": 15},
            4,
            400,
        ),  # ~280 decisions an episode
        ("InferGym/Placement-v1", {"source": "jobs", "n_jobs": 60}, 3, 130),
    ],
    ids=["autoscale", "routing", "placement"],
)
def test_processes_give_the_in_process_numbers(env_id: str, kwargs: dict, n_envs: int, steps: int) -> None:
    procs = gym.make_vec(
        env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", processes=2, **kwargs
    )
    local = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **kwargs)
    assert type(procs.unwrapped) is ProcessVectorEnv
    assert procs.observation_space == local.observation_space
    assert procs.action_space == local.action_space
    _same(procs.reset(seed=7), local.reset(seed=7))
    rng = np.random.default_rng(1)
    ends = 0
    for _ in range(steps):
        a = _actions(rng, local.unwrapped)
        if hasattr(local.unwrapped, "action_masks"):
            np.testing.assert_array_equal(procs.unwrapped.action_masks(), local.unwrapped.action_masks())
        got, want = procs.step(a), local.step(a)
        _same(got, want)
        ends += int(np.sum(want[2] | want[3]))
    assert ends >= n_envs  # episodes ended (autoreset, final_obs and final_info compared)
    procs.close()
    local.close()


def test_pickled_env_continues_identically_and_close_stops_the_workers() -> None:
    vec = AutoscaleVecEnvV2(3, horizon_s=300, processes=2)
    ref = AutoscaleVecEnvV2(3, horizon_s=300)
    vec.reset(seed=2)
    ref.reset(seed=2)
    rng = np.random.default_rng(0)
    for _ in range(6):
        a = _actions(rng, ref)
        vec.step(a)
        ref.step(a)
    copy = pickle.loads(pickle.dumps(vec))
    for _ in range(25):
        a = _actions(rng, ref)
        _same(copy.step(a), ref.step(a))
    procs = list(vec._procs) + list(copy._procs)
    assert procs and all(p.is_alive() for p in procs)
    vec.close()
    copy.close()
    assert not any(p.is_alive() for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        vec.step(a)


def test_sub_env_access_and_worker_errors() -> None:
    vec = AutoscaleVecEnvV2(4, horizon_s=300, processes=2)  # sub-envs 0-1 here, 2-3 in the worker
    vec.reset(seed=0)
    assert vec.get_sub_attr("n_steps") == [20] * 4
    vec.set_sub_attr("max_step", 3, indices=[1, 3])
    assert vec.get_sub_attr("max_step", [3, 0, 1]) == [
        3,
        AutoscaleVecEnvV2(1, horizon_s=300).envs[0].max_step,
        3,
    ]
    counts = vec.call_sub("_replica_counts", indices=[2])
    assert len(counts) == 1 and counts[0].shape == (1, 3)
    with pytest.raises(AttributeError, match="no_such_method") as err:
        vec.call_sub("no_such_method", indices=[3])
    assert any("worker process" in note for note in err.value.__notes__)
    with pytest.raises(ValueError, match="indices"):
        vec.get_sub_attr("n_steps", [4])
    with pytest.raises(ValueError, match="actions"):
        vec.step(np.zeros((3, 1), np.int64))
    vec.close()


def test_bad_arguments_are_named_errors() -> None:
    with pytest.raises(ValueError, match="processes"):
        AutoscaleVecEnvV2(2, processes=3)
    with pytest.raises(ValueError, match="processes"):
        AutoscaleVecEnvV2(2, processes=0)
    with pytest.raises(ValueError, match="start_method"):
        AutoscaleVecEnvV2(2, processes=2, start_method="teleport")
    with pytest.raises(ValueError, match="horizon_s"):  # the env's own check, before any worker starts
        AutoscaleVecEnvV2(2, processes=2, horizon_s=-1)


def test_sb3_trains_on_the_process_env() -> None:
    from stable_baselines3 import PPO

    from agents.vecenv import NativeVecEnv

    vec = NativeVecEnv(AutoscaleVecEnvV2(4, horizon_s=300, processes=2))
    assert vec.get_attr("n_steps", indices=[0, 3]) == [20, 20]
    model = PPO("MlpPolicy", vec, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(128)
    assert model.num_timesteps == 128
    vec.close()


def test_merge_infos_fills_what_a_share_lacks_as_gymnasium_does() -> None:
    a = {"kpi": {"x": np.array([1.0, 2.0]), "_x": np.ones(2, bool)}, "_kpi": np.ones(2, bool)}
    final_obs = np.empty(1, dtype=object)  # as Gymnasium batches final_obs: one object per sub-env
    final_obs[0] = np.zeros(2)
    b = {
        "kpi": {"x": np.array([3.0]), "_x": np.ones(1, bool)},
        "_kpi": np.ones(1, bool),
        "final_obs": final_obs,
        "_final_obs": np.ones(1, bool),
        "replicas": np.ones((1, 2, 3), np.int64),
    }
    out = merge_infos([a, b], [2, 1])
    np.testing.assert_array_equal(out["kpi"]["x"], [1.0, 2.0, 3.0])
    assert list(out["final_obs"][:2]) == [None, None] and out["final_obs"][2].shape == (2,)
    np.testing.assert_array_equal(out["_final_obs"], [False, False, True])
    assert out["replicas"].shape == (3, 2, 3) and out["replicas"][:2].sum() == 0


def test_a_script_without_the_main_guard_is_told_why_its_worker_died(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text(
        "import gymnasium as gym, envs\n"
        "gym.make_vec('InferGym/Autoscale-v2', num_envs=2, vectorization_mode='vector_entry_point',"
        " processes=2, horizon_s=300)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=Path.cwd()
    )
    assert out.returncode != 0
    assert "worker 1 of ProcessVectorEnv died" in out.stderr and '__name__ == "__main__"' in out.stderr
