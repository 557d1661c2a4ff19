"""The one evaluator: determinism, KPI aggregation, masks, controller adapters and the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from agents import EpisodeKpis, RandomPolicy
from envs.sim.errors import ConfigError
from experiments.evaluate import evaluate_policy, main, make_policy

AUTOSCALE = "InferGym/Autoscale-v1"
SHORT = {"horizon_s": 300.0}


class _StepCounter:
    """A dummy policy that always scales by 0 and records how it was called."""

    name = "hold"

    def __init__(self) -> None:
        self.resets = 0

    def reset(self, seed=None) -> None:
        self.resets += 1

    def predict(self, obs, env, deterministic=True):
        return np.full(env.action_space.shape, env.max_step, dtype=np.int64)


def test_same_seeds_give_identical_rows_and_seeds_differ():
    a = evaluate_policy(AUTOSCALE, RandomPolicy(1), "default", [0, 1], SHORT)
    b = evaluate_policy(AUTOSCALE, RandomPolicy(1), "default", [0, 1], SHORT)
    assert a == b
    assert a[0]["return"] != a[1]["return"], "two seeds must give two episodes"
    # a reused policy object gives the same numbers: its stream restarts from (seed, episode seed)
    pol = RandomPolicy(1)
    evaluate_policy(AUTOSCALE, pol, "default", [5], SHORT)
    assert evaluate_policy(AUTOSCALE, pol, "default", [0, 1], SHORT) == a
    assert evaluate_policy(AUTOSCALE, RandomPolicy(2), "default", [0], SHORT)[0]["return"] != a[0]["return"]


def test_row_contents_return_terms_and_simulator_kpis():
    (row,) = evaluate_policy(AUTOSCALE, RandomPolicy(0), "bursty", [3], SHORT)
    assert row["env_id"] == AUTOSCALE and row["scenario"] == "bursty" and row["seed"] == 3
    assert row["steps"] == 20, "300 s / 15 s control interval"
    assert row["kpi_source"] == "sim"
    terms = {k: v for k, v in row.items() if k.startswith("reward.")}
    assert set(terms) == {
        "reward.slo_violations",
        "reward.drops",
        "reward.gpu_cost",
        "reward.placement_failures",
        "reward.unfinished",
    }
    assert row["return"] <= 0.0 and row["reward.gpu_cost"] > 0.0
    # the simulator's episode counts equal the sum of the per-interval counts
    assert (
        row["requests_arrived"]
        == row["requests_completed"] + row["requests_dropped"] + row["requests_in_system"]
    )
    assert 0.0 <= row["slo_attainment"] <= 1.0 and row["ttft_p99_s"] >= row["ttft_p50_s"] > 0.0


def test_dummy_policy_is_reset_once_per_episode_and_holds_replicas():
    pol = _StepCounter()
    rows = evaluate_policy(AUTOSCALE, pol, "default", [0, 1, 2], SHORT)
    assert pol.resets == 3 and len(rows) == 3
    # holding 4 replicas for 300 s costs exactly 4 x 300 GPU-seconds (default: 1 GPU per replica)
    assert all(r["gpu_seconds"] == pytest.approx(4 * 300.0) for r in rows)
    assert all(r["replicas_ready"] == 4.0 for r in rows)


def test_random_policy_respects_action_masks():
    rows = evaluate_policy("InferGym/Routing-v0", RandomPolicy(0), "default", [0], {"horizon_s": 60.0})
    assert rows[0]["reward.invalid_actions"] == 0.0
    assert rows[0]["kpi_source"] == "env" and rows[0]["steps"] == rows[0]["requests_arrived"]


def test_controller_adapters_through_the_evaluator():
    hpa = evaluate_policy(AUTOSCALE, make_policy(AUTOSCALE, "hpa"), "bursty", [0], SHORT)[0]
    assert hpa["policy"] == "autoscale:hpa" and hpa["kpi_source"] == "sim"
    placer = make_policy("InferGym/Placement-v0", "best_fit")
    row = evaluate_policy("InferGym/Placement-v0", placer, "default", [0], SHORT)[0]
    assert row["reward.invalid_actions"] == 0.0, "a placer chooses feasible nodes"
    assert row["placed"] == row["items"], "Placement's cumulative step KPIs keep their last value"
    router = make_policy("InferGym/Routing-v0", "least_connections")
    row = evaluate_policy("InferGym/Routing-v0", router, "default", [0], {"horizon_s": 60.0})[0]
    assert row["reward.invalid_actions"] == 0.0 and row["requests_completed"] > 0
    with pytest.raises(ConfigError, match="env"):
        make_policy("InferGym/Nope-v0", "random")


def test_episode_kpis_aggregation_rules():
    agg = EpisodeKpis()
    agg.add({"requests_completed": 10, "requests_dropped": 0, "slo_attainment": 1.0, "ttft_p99_s": 1.0, "cost_usd": 2.0,
             "utilization": 0.2, "time_s": 15.0})  # fmt: skip
    agg.add({"requests_completed": 20, "requests_dropped": 10, "slo_attainment": 0.5, "ttft_p99_s": 4.0, "cost_usd": 3.0,
             "utilization": 0.6, "time_s": 30.0})  # fmt: skip
    out = agg.result()
    assert out["requests_completed"] == 30 and out["requests_dropped"] == 10 and out["cost_usd"] == 5.0
    assert out["slo_attainment"] == pytest.approx((10 * 1.0 + 30 * 0.5) / 40)
    assert out["ttft_p99_s"] == 4.0 and out["ttft_p99_s_step_mean"] == pytest.approx((10 + 80) / 30)
    assert out["utilization"] == pytest.approx(0.4) and out["time_s"] == 30.0
    cum = EpisodeKpis(cumulative=True)
    cum.add({"placed": 1.0})
    cum.add({"placed": 3.0})
    assert cum.result() == {"placed": 3.0}


def test_cli_writes_one_row_per_seed(tmp_path, capsys):
    out = tmp_path / "res.csv"
    rc = main(["--env", AUTOSCALE, "--policy", "random", "--seeds", "0", "1", "--env-kwargs", "horizon_s=300",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["seed"] for r in rows] == ["0", "1"] and float(rows[0]["return"]) < 0
    assert "slo_attainment" in capsys.readouterr().out
    assert main(["--env", AUTOSCALE, "--policy", "random", "--env-kwargs", "bogus_key=1"]) == 2
    with pytest.raises(SystemExit):
        main(["--help"])


@pytest.mark.parametrize("env_id", ["InferGym/Placement-v0", "InferGym/Placement-v1"])
def test_placement_episode_kpis_are_the_last_steps_levels(env_id):
    # Placement's info["kpi"] holds counts and levels so far: an episode's are its last step's
    # (Placement-v1 had been left out and got step averages: items 25.5 for 50 jobs)
    from agents import step_kpis_cumulative

    assert step_kpis_cumulative(env_id) and not step_kpis_cumulative(AUTOSCALE)
    policy = make_policy(env_id, "first_fit")
    row = evaluate_policy(env_id, policy, "default", [0], {"source": "jobs", "n_jobs": 50})[0]
    assert row["items"] == 50.0 and row["placed"] + row["failures"] == 50.0
