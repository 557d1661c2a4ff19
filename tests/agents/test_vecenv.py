"""agents.vecenv: SB3 on the native vector envs gives what DummyVecEnv gives, bit for bit, faster."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th

from agents.sb3 import make_vec, train
from agents.vecenv import NativeVecEnv


@pytest.mark.parametrize(
    ("env_id", "kwargs", "steps"),
    [
        ("InferGym/Autoscale-v1", {"horizon_s": 300}, 60),
        ("InferGym/Routing-v0", {"horizon_s": 20}, 900),
    ],
)
def test_native_backend_steps_like_dummy_vec_env(env_id: str, kwargs: dict, steps: int) -> None:
    native = make_vec(env_id, "default", 3, 4, kwargs, backend="native")
    dummy = make_vec(env_id, "default", 3, 4, kwargs, backend="dummy")
    assert isinstance(native, NativeVecEnv)
    np.testing.assert_array_equal(native.reset(), dummy.reset())
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(steps):
        if env_id.startswith("InferGym/Routing"):
            masks = np.stack(dummy.env_method("action_masks"))
            np.testing.assert_array_equal(np.stack(native.env_method("action_masks")), masks)
            a = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
        else:
            a = np.stack([native.action_space.sample() for _ in range(3)])
        o1, r1, d1, i1 = native.step(a)
        o2, r2, d2, i2 = dummy.step(a)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(d1, d2)
        assert r1.dtype == r2.dtype and o1.dtype == o2.dtype
        for a_info, b_info in zip(i1, i2, strict=True):
            assert a_info["kpi"] == b_info["kpi"]
            if "terminal_observation" in b_info:
                ends += 1
                np.testing.assert_array_equal(a_info["terminal_observation"], b_info["terminal_observation"])
                assert a_info["TimeLimit.truncated"] == b_info["TimeLimit.truncated"]
                assert a_info["episode"]["r"] == b_info["episode"]["r"]
                assert a_info["episode"]["l"] == b_info["episode"]["l"]
                assert a_info["episode_kpi"] == b_info["episode_kpi"] if "episode_kpi" in b_info else True
    assert ends >= 3


@pytest.mark.parametrize(
    ("env_id", "algo", "kwargs"),
    [
        ("InferGym/Autoscale-v1", "ppo", {"horizon_s": 300}),
        ("InferGym/Routing-v0", "maskable_ppo", {"horizon_s": 20}),
    ],
)
def test_training_on_the_native_backend_equals_dummy(tmp_path, env_id: str, algo: str, kwargs: dict) -> None:
    models = []
    for backend in ("native", "dummy"):
        models.append(
            train(
                env_id,
                algo,
                "default",
                256,
                3,
                tmp_path / backend,
                n_envs=2,
                env_kwargs=kwargs,
                overrides=["n_steps=64", "batch_size=64"],
                progress_bar=False,
                backend=backend,
            )  # fmt: skip
        )
    a, b = (m.policy.state_dict() for m in models)
    for key in a:
        assert th.equal(a[key], b[key]), key
