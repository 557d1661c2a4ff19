"""rl-zoo3 (optional extra ``zoo``): agents/hyperparams/zoo/*.yml train through ``rl_zoo3.train``.

Each case runs the README's command in a subprocess with a tiny budget and checks that the model
and its VecNormalize statistics were written and load; then it trains the same algorithm, env and
seed with :func:`agents.sb3.train` (the project's own hyperparameter table) and checks that both
runs end with the same weights, bit for bit: the zoo file is a faithful translation.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch as th

from agents.sb3 import load_agent, train
from tests.paths import REPO

pytest.importorskip(
    "rl_zoo3",
    reason="rl_zoo3 is not installed (optional extra: pip install -e '.[zoo]'; make setup installs it)",
)

import stable_baselines3 as sb3  # noqa: E402

# a whole number of rollouts: PPO one (n_steps 64 x 8 envs), A2C 5 (5 x 8)
STEPS = {"ppo": 512, "a2c": 200}


def zoo_train(algo: str, env_id: str, log_folder, seed: int = 0) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", env_id, "--gym-packages", "envs",
        "-conf", f"agents/hyperparams/zoo/{algo}.yml", "-n", str(STEPS[algo]), "--log-folder", str(log_folder),
        "--eval-freq", "-1", "--seed", str(seed), "--num-threads", "1", "--device", "cpu",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("algo", "env_id"),
    [("ppo", "InferGym/Autoscale-v0"), ("ppo", "InferGym/Autoscale-v2"), ("a2c", "InferGym/Autoscale-v1")],
)
def test_zoo_train_writes_a_loadable_model_equal_to_ours(tmp_path, algo, env_id):
    proc = zoo_train(algo, env_id, tmp_path / "zoo")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = env_id.replace("/", "-")  # rl-zoo3's folder and file names
    run = tmp_path / "zoo" / algo / f"{name}_1"
    zip_path = run / f"{name}.zip"
    assert zip_path.exists(), sorted(p.name for p in run.iterdir())
    vn_path = run / name / "vecnormalize.pkl"
    assert vn_path.exists(), "normalize: in the zoo file must reach VecNormalize"

    cls = {"ppo": sb3.PPO, "a2c": sb3.A2C}[algo]
    zoo = cls.load(zip_path, device="cpu")
    assert zoo.num_timesteps == STEPS[algo]
    layers = zoo.policy.mlp_extractor.policy_net
    assert [m.out_features for m in layers if isinstance(m, th.nn.Linear)] == [64, 64]
    assert isinstance(layers[1], th.nn.Tanh)

    ours = train(env_id, algo, "default", STEPS[algo], 0, tmp_path / "ours", progress_bar=False)
    a, b = ours.policy.state_dict(), zoo.policy.state_dict()
    assert a.keys() == b.keys()
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a if not th.equal(a[k], b[k])}
    assert not diff, f"zoo and agents.sb3.train differ (same seed, hyperparameters): {diff}"
    with open(vn_path, "rb") as fh:
        zoo_vn = pickle.load(fh)
    with open(tmp_path / "ours" / "vecnormalize.pkl", "rb") as fh:
        our_vn = pickle.load(fh)
    assert np.array_equal(zoo_vn.obs_rms.mean, our_vn.obs_rms.mean) and not zoo_vn.norm_reward

    if algo == "ppo":  # the project's evaluator reads the statistics beside the zip (README: rl-zoo3)
        shutil.copy(vn_path, run / "vecnormalize.pkl")
        agent = load_agent(zip_path)
        assert agent.vecnormalize is not None and not agent.vecnormalize.training
