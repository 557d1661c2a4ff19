"""Hyperparameter search: search-space validation, a tiny real search on Ray, and its best file used for training."""

from __future__ import annotations

import copy
import csv
import json
import shutil

import pytest
import yaml

import agents.sb3 as sb3
from envs.sim.errors import ConfigError
from experiments import train as train_cli
from experiments.tune_hparams import (
    hyperparams_file_overrides,
    load_search_config,
    main,
    run_search,
    run_trial,
    search_config_from_dict,
)
from tests.paths import REPO

AUTOSCALE = "InferGym/Autoscale-v1"
TINY = {
    "algo": "ppo",
    "env_id": AUTOSCALE,
    "env_kwargs": {"horizon_s": 60.0},
    "total_timesteps": 128,
    "eval_seeds": [100, 101],
    "trials": 2,
    "n_envs": 1,
    "search_seed": 3,
    "hp": {"batch_size": 32, "n_epochs": 1, "policy_kwargs": {"net_arch": [16]}},
    "space": {
        "learning_rate": {"loguniform": [1e-4, 1e-2]},
        "n_steps": {"choice": [32, 64]},
        "gamma": {"uniform": [0.9, 0.99]},
    },
}


def with_(path: str, value) -> dict:
    """TINY with ``path`` (a top-level key, or ``space.<key>``) set to ``value``; ``None`` deletes it."""
    raw = copy.deepcopy(TINY)
    node, key = (raw["space"], path.removeprefix("space.")) if path.startswith("space.") else (raw, path)
    if value is None:
        del node[key]
    else:
        node[key] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("budget", 5, "budget: unknown key"),
        ("algo", None, "algo: required key is missing"),
        ("algo", "sac", "algo: 'sac' must be one of"),
        ("total_timesteps", 0, "total_timesteps: 0 must be > 0"),
        ("eval_seeds", [], "eval_seeds: () must be a non-empty list"),
        ("eval_seeds", [1, -2], "eval_seeds[1]: -2 must be >= 0"),
        ("search", "hyperopt", "search: 'hyperopt' must be one of"),
        ("space", {}, "space: {} must name at least one"),
        ("space.learning_rate", {"logunif": [1e-4, 1e-2]}, "space.learning_rate: 'logunif' must be one of"),
        (
            "space.learning_rate",
            {"loguniform": [0, 1e-2]},
            "space.learning_rate.loguniform[0]: 0 must be > 0",
        ),
        (
            "space.learning_rate",
            {"loguniform": [1e-2, 1e-4]},
            "space.learning_rate.loguniform[1]: 0.0001 must be >",
        ),
        ("space.gamma", {"uniform": [0.9]}, "space.gamma.uniform: [0.9] must be [low, high]"),
        ("space.gamma", {"uniform": [0.9, "x"]}, "space.gamma.uniform[1]: 'x' must be a number"),
        ("space.n_steps", {"choice": []}, "space.n_steps.choice: [] must be a non-empty list"),
        ("space.n_steps", {"randint": [32, 64.5]}, "space.n_steps.randint[1]: 64.5 must be an integer"),
        ("space.n_steps", {"choice": [32], "grid": [64]}, "space.n_steps: {'choice'"),
        ("space.n_stepz", {"choice": [32]}, "space.n_stepz: unknown ppo hyperparameter"),
        ("space.tau", {"uniform": [0.1, 0.9]}, "space.tau: unknown ppo hyperparameter"),
    ],
)
def test_search_config_errors_name_the_key_path(path, value, message):
    with pytest.raises(ConfigError) as exc:
        search_config_from_dict(with_(path, value))
    assert message in str(exc.value)


def test_nested_space_key_inside_another_and_optuna_grid_are_rejected():
    raw = with_("space.policy_kwargs", {"choice": [{"net_arch": [8]}]})
    raw["space"]["policy_kwargs.net_arch"] = {"choice": [[8]]}
    with pytest.raises(
        ConfigError, match=r"space\.policy_kwargs\.net_arch: .* lies inside space\.policy_kwargs"
    ):
        search_config_from_dict(raw)
    raw = with_("space.n_steps", {"grid": [32, 64]})
    raw["search"] = "optuna"
    with pytest.raises(ConfigError, match="space.n_steps: 'grid' cannot be enumerated by search: optuna"):
        search_config_from_dict(raw)
    raw = with_("space.policy_kwargs.net_arch", {"choice": [[8], [16]]})
    raw["search"] = "optuna"
    with pytest.raises(
        ConfigError, match=r"space.policy_kwargs.net_arch.choice: \[\[8\], \[16\]\] must hold"
    ):
        search_config_from_dict(raw)


def test_shipped_search_configs_are_valid():
    files = sorted((REPO / "experiments" / "configs" / "search").glob("*.yaml"))
    assert files, "at least one example search space"
    for f in files:
        cfg = load_search_config(f)
        assert cfg.space and cfg.trials >= 1


def test_tiny_ray_search_writes_best_file_that_trains(tmp_path, local_ray, monkeypatch):
    cfg = search_config_from_dict(TINY)
    out = tmp_path / "search"
    res = run_search(cfg, out, backend="ray")

    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial"] for r in rows] == ["trial_00000", "trial_00001"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert set(rows[0]) == {
        "trial",
        "status",
        "score",
        "score_std",
        "learning_rate",
        "n_steps",
        "gamma",
        "run_dir",
    }
    for r in rows:
        assert 1e-4 <= float(r["learning_rate"]) <= 1e-2
        assert int(r["n_steps"]) in (32, 64)
        assert 0.9 <= float(r["gamma"]) <= 0.99
        assert (out / r["run_dir"] / "model.zip").exists(), "each trial trains into its own folder"
    scores = [float(r["score"]) for r in rows]
    best = res["best"]
    assert best["score"] == max(scores)
    assert (out / "ray_results" / "search").is_dir()
    # reproducible: the best trial retrained outside Ray scores exactly the same
    assert run_trial(cfg, best["params"], tmp_path / "again")["score"] == best["score"]

    table = yaml.safe_load((out / "best_hyperparams.yaml").read_text())
    assert set(table) == {"default", AUTOSCALE}
    shipped = yaml.safe_load((sb3.HYPERPARAMS_DIR / "ppo.yaml").read_text())
    assert table["default"] == shipped["default"]
    entry = table[AUTOSCALE]
    assert entry["learning_rate"] == pytest.approx(best["params"]["learning_rate"])
    assert entry["n_steps"] == best["params"]["n_steps"]
    assert entry["batch_size"] == 32 and entry["policy_kwargs"] == {"net_arch": [16]}

    # the file is a drop-in agents/hyperparams/ppo.yaml ...
    hp_dir = tmp_path / "hp"
    hp_dir.mkdir()
    shutil.copy(out / "best_hyperparams.yaml", hp_dir / "ppo.yaml")
    monkeypatch.setattr(sb3, "HYPERPARAMS_DIR", hp_dir)
    resolved = sb3.load_hyperparams("ppo", AUTOSCALE)
    assert resolved["gamma"] == pytest.approx(best["params"]["gamma"])
    assert resolved["policy_kwargs"] == {"net_arch": [16], "activation_fn": "tanh"}
    monkeypatch.undo()
    # ... and, given to the shipped table as overrides, resolves to the same values
    assert (
        sb3.load_hyperparams(
            "ppo", AUTOSCALE, hyperparams_file_overrides(out / "best_hyperparams.yaml", "ppo", AUTOSCALE)
        )
        == resolved
    )

    # experiments.train --hyperparams trains with it (64 steps)
    run_dir = tmp_path / "retrain"
    argv = ["--env", AUTOSCALE, "--algo", "ppo", "--run-dir", str(run_dir), "--total-timesteps", "64",
            "--n-envs", "1", "--env-kwargs", "horizon_s=60", "--no-progress-bar",
            "--hyperparams", str(out / "best_hyperparams.yaml"), "--hp", "n_epochs=2"]  # fmt: skip
    assert train_cli.main(argv) == 0
    used = json.loads((run_dir / "run.json").read_text())["config"]["hyperparams"]
    assert used["learning_rate"] == pytest.approx(best["params"]["learning_rate"])
    assert used["n_steps"] == best["params"]["n_steps"] and used["n_epochs"] == 2
    assert (run_dir / "model.zip").exists()


def test_cli_local_backend_overrides_trials_and_budget(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "trials": 5, "total_timesteps": 10_000}))
    out = tmp_path / "out"
    argv = [
        "--config",
        str(config),
        "--backend",
        "local",
        "--trials",
        "2",
        "--budget",
        "64",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best: trial_0000" in printed and "learning_rate:" in printed
    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial"] for r in rows] == ["trial_00000", "trial_00001"]
    assert rows[0]["learning_rate"] != rows[1]["learning_rate"], "two different samples"
    assert json.loads((out / "search.json").read_text())["total_timesteps"] == 64
    table = yaml.safe_load((out / "best_hyperparams.yaml").read_text())
    best = max(rows, key=lambda r: float(r["score"]))
    assert table[AUTOSCALE]["learning_rate"] == pytest.approx(float(best["learning_rate"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "trails": 2}))
    assert main(["--config", str(bad), "--out", str(out)]) == 2
    assert "trails: unknown key" in capsys.readouterr().err


def test_local_failing_trial_is_recorded_and_the_best_is_among_the_others(tmp_path):
    # n_steps=1 with one env: SB3 PPO refuses a rollout buffer of one step
    cfg = search_config_from_dict({**TINY, "trials": 1, "space": {"n_steps": {"grid": [1, 32]}}})
    res = run_search(cfg, tmp_path / "out", backend="local")
    assert [r["params"]["n_steps"] for r in res["rows"]] == [1, 32]
    assert res["rows"][0]["status"].startswith("error: AssertionError")
    assert res["best"]["trial"] == "trial_00001"
    assert (
        yaml.safe_load((tmp_path / "out" / "best_hyperparams.yaml").read_text())[AUTOSCALE]["n_steps"] == 32
    )
    only_bad = search_config_from_dict({**TINY, "trials": 1, "space": {"n_steps": {"grid": [1]}}})
    with pytest.raises(RuntimeError, match="no trial of the search finished"):
        run_search(only_bad, tmp_path / "bad", backend="local")
