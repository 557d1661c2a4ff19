"""An interrupted training run, resumed, ends with the same model bit for bit as one never interrupted.

The interruption is an exception raised from inside ``learn`` (as a kill would stop it) after some
rollouts; resuming calls :func:`agents.sb3.train` again on the same folder with the same arguments.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch as th

import agents.sb3 as S
from agents.checkpoints import latest_checkpoint
from envs.sim.errors import ConfigError

AUTOSCALE = "InferGym/Autoscale-v1"
TINY = ["n_steps=32", "batch_size=16", "n_epochs=2", "policy_kwargs.net_arch=[16]"]
KW = {"n_envs": 2, "overrides": TINY, "env_kwargs": {"horizon_s": 150.0}, "checkpoint_freq": 64,
      "progress_bar": False}  # fmt: skip
TOTAL = 640  # 10 rollouts of 2 x 32 steps; episodes of 10 steps end and restart inside them


class Killed(Exception):
    pass


def params(model) -> list[np.ndarray]:
    sd = model.policy.state_dict()
    return [sd[k].detach().cpu().numpy().copy() for k in sorted(sd)]


def interrupt_after(monkeypatch, steps: int) -> None:
    real = S.KpiLogCallback._on_step

    def on_step(self):
        if self.num_timesteps >= steps:
            raise Killed(steps)
        return real(self)

    monkeypatch.setattr(S.KpiLogCallback, "_on_step", on_step)


@pytest.mark.parametrize("algo, extra", [("ppo", []), ("ppo", ["frame_stack=2"]), ("a2c", [])],
                         ids=["ppo", "ppo-frame-stack", "a2c"])  # fmt: skip
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, algo, extra):
    overrides = (TINY if algo == "ppo" else ["n_steps=32", "policy_kwargs.net_arch=[16]"]) + extra
    kw = {**KW, "overrides": overrides}
    whole = S.train(AUTOSCALE, algo, "bursty", TOTAL, 3, tmp_path / "whole", **kw)
    with monkeypatch.context() as m:
        interrupt_after(m, 300)  # mid-rollout, mid-episode: the last checkpoint is at 256 steps
        with pytest.raises(Killed):
            S.train(AUTOSCALE, algo, "bursty", TOTAL, 3, tmp_path / "cut", **kw)
    assert latest_checkpoint(tmp_path / "cut")[1] == 256
    kept = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").glob("model_*_steps.zip"))
    assert kept == ["model_576_steps.zip", "model_640_steps.zip"]  # the two newest; older ones removed
    th.manual_seed(12345)  # whatever ran in between must not matter
    np.random.seed(999)  # noqa: NPY002
    resumed = S.train(AUTOSCALE, algo, "bursty", TOTAL, 3, tmp_path / "cut", **kw)
    assert resumed.num_timesteps == whole.num_timesteps == TOTAL
    for a, b in zip(params(whole), params(resumed), strict=True):
        assert a.tobytes() == b.tobytes()
    va, vb = whole.get_env(), resumed.get_env()
    assert va.obs_rms.mean.tobytes() == vb.obs_rms.mean.tobytes()


def test_a_truncated_checkpoint_falls_back_and_a_missing_vecnormalize_is_an_error(tmp_path):
    run = tmp_path / "run"
    S.train(AUTOSCALE, "ppo", "default", 256, 0, run, **KW)
    newest, steps = latest_checkpoint(run)
    assert steps == 256
    newest.write_bytes(newest.read_bytes()[:100])  # a kill during a save would leave this
    assert latest_checkpoint(run, needs_vecnormalize=True)[1] == 192
    model = S.train(AUTOSCALE, "ppo", "default", 256, 0, run, **KW)  # resumes from 192
    assert model.num_timesteps == 256
    for p in (run / "checkpoints").glob("model_vecnormalize_*"):
        p.unlink()
    with pytest.raises(ConfigError, match="no checkpoint in checkpoints/ is complete"):
        S.train(AUTOSCALE, "ppo", "default", 512, 0, run, **KW)
