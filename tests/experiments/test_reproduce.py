"""experiments.reproduce: a tiny table end to end, baseline calibration, and table numbers from experiments.stats.

Also the table configs (experiments.tables) and redrawing a reproduced table's figures from its CSV
files (experiments.plot).
"""

from __future__ import annotations

import csv
import io
import shutil
import sys

import numpy as np
import pytest
import yaml

from envs.sim.errors import ConfigError
from experiments import plot, report, reproduce, stats, tables

TINY = {
    "description": "smoke table",
    "env_id": "InferGym/Autoscale-v1",
    "eval_seeds": 2,
    "calibration_seeds": [1000],
    "train_seed_base": 10000,
    "scenarios": {
        "default": {
            "train_env_kwargs": {"horizon_s": 240},
            "eval_env_kwargs": {"horizon_s": 240},
        }
    },
    "baselines": [
        {
            "name": "hpa",
            "spec": {"kind": "hpa", "metric": "in_flight_per_replica"},
            "sweep": {"target": [4, 64]},
            "env_kwargs": {"max_step": 16},
        }
    ],
    "agents": [
        {
            "name": "ppo",
            "algo": "ppo",
            "total_timesteps": 256,
            "overrides": {"n_steps": 64, "batch_size": 64, "n_epochs": 1},
        }
    ],
    "kpis": [
        {"key": "return", "label": "reward", "fmt": ".2f", "iqm": True},
        {"key": "slo_attainment", "fmt": ".3f"},
        {"key": "cost_usd", "fmt": ".2f"},
    ],
    "figures": ["episode", "ttft_cdf", "tradeoff", "kpi_bars"],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stderr", err)  # the grids' progress lines
        res = reproduce.reproduce(
            TINY, root / "out", root / "run", workers=2, progress_every=600, command="pytest tiny table"
        )
    (root / "progress.txt").write_text(err.getvalue())
    return root, res


def test_tiny_table_end_to_end_writes_table_csv_figures_readme(tiny):
    root, res = tiny
    out = root / "out"
    md = (out / "table.md").read_text()
    assert "| hpa | target=" in md and "| ppo | 256 steps |" in md
    assert "P(improvement)" in md
    with open(out / "table.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["policy"], r["kpi"]) for r in rows} >= {
        ("hpa", "return"),
        ("ppo", "return"),
        ("ppo", "cost_usd"),
    }
    for name in ("episode_default.png", "ttft_cdf_default.png", "tradeoff_default.png", "kpis_default.png"):
        assert (out / name).stat().st_size > 1000, name
    readme = (out / "README.md").read_text()
    assert "pytest tiny table" in readme and "Git SHA" in readme
    # the agent was trained in the grid's run folder, with tensorboard logs
    assert list((root / "run" / "agents").glob("*/tb/run_1"))


def test_tiny_table_shows_each_grids_progress_line_with_the_agents_training_steps(tiny):
    root, _ = tiny
    lines = (root / "progress.txt").read_text().splitlines()
    # the warm-up (compiling once before the workers), then every 600 s the first and last line of
    # each grid. Calibration: 2 sweep values x 1 seed; then 2 evaluation episodes of hpa and 2 agents
    # (one per training seed) of 256 steps each
    assert lines[0].startswith("warm-up: compiling the simulator")
    assert [ln.split(" | ")[0] for ln in lines[1:]] == [
        "calibration: ETA ?",
        "calibration: ETA 0:00",
        "agents+eval: steps 0/512 (0%)",
        "agents+eval: steps 512/512 (100%)",
    ]
    assert " | cells 2/2 | " in lines[2] and " | cells 0/4 | " in lines[3] and " | cells 4/4 | " in lines[4]


def test_table_numbers_are_the_stats_helpers_on_the_episode_returns(tiny):
    root, res = tiny
    with open(root / "out" / "episodes.csv") as fh:
        eps = [r for r in csv.DictReader(fh) if r["label"].startswith("eval|default|hpa|")]
    returns = np.array([float(r["return"]) for r in sorted(eps, key=lambda r: int(r["seed"]))])
    assert len(returns) == 2
    row = next(r for r in res["summary"] if r["policy"] == "hpa" and r["kpi"] == "return")
    ref = stats.mean_ci(returns)
    assert (row["mean"], row["mean_low"], row["mean_high"]) == pytest.approx(tuple(ref))
    assert row["iqm"] == pytest.approx(stats.iqm(returns))
    # the agent's run is one training seed, scored as the mean over its evaluation episodes
    ppo = next(r for r in res["summary"] if r["policy"] == "ppo" and r["kpi"] == "return")
    assert ppo["n_runs"] == 2


def test_agents_are_compared_with_baselines_paired_by_evaluation_episode(tiny):
    root, res = tiny
    cfg = tables.load_table(TINY)
    opts, rows, _, groups = tables.runs_from_results(cfg, root / "out", trace=tables.STATISTICS_ONLY)
    hpa = next(g for g in groups if g.policy == "hpa")
    ppo = next(g for g in groups if g.policy == "ppo")
    assert hpa.episode_seeds == ppo.episode_seeds == (0, 1)
    assert hpa.by_episode["return"].shape == (1, 2) and ppo.by_episode["return"].shape == (2, 2)
    # a row per training seed, a column per episode; the run's score is its row's mean
    np.testing.assert_allclose(ppo.by_episode["return"].mean(axis=1), ppo.runs["return"])
    (imp,) = res["improvement"]
    assert imp["paired"] is True
    ref = stats.paired_comparison(ppo.by_episode["return"], hpa.by_episode["return"])
    assert (imp["poi"], imp["poi_low"], imp["poi_high"]) == pytest.approx(tuple(ref.p_improvement))
    assert (imp["diff"], imp["diff_low"], imp["diff_high"]) == pytest.approx(tuple(ref.difference))
    # runs not scored on the same episodes fall back to the unpaired statistics
    partial = [r for r in rows if not (r["label"].startswith("train|") and r["episode_seed"] == 1
                                       and r["label"].endswith("|10000"))]  # fmt: skip
    groups = tables.policy_runs(cfg, opts, partial, res["chosen"])
    assert next(g for g in groups if g.policy == "ppo").by_episode == {}
    assert report.improvement_rows(cfg, groups)[0]["paired"] is False


def test_report_recomputes_the_table_from_its_csv_files(tiny, tmp_path):
    root, res = tiny
    path = tmp_path / "table.yaml"  # a dict config is named "table"
    path.write_text(yaml.safe_dump(TINY))
    assert report.main([str(path), "--results", str(root / "out"), "--out", str(tmp_path / "re")]) == 0
    assert (tmp_path / "re" / "table.md").read_text() == (root / "out" / "table.md").read_text()
    assert (tmp_path / "re" / "improvement.csv").read_text() == (root / "out" / "improvement.csv").read_text()
    # in place, the README keeps the run's provenance and gains one line saying what recomputed it
    shutil.copytree(root / "out", tmp_path / "copy")
    before = (tmp_path / "copy" / "README.md").read_text()
    for _ in range(2):
        assert report.main([str(path), "--results", str(tmp_path / "copy")]) == 0
    after = (tmp_path / "copy" / "README.md").read_text().splitlines()
    (line,) = [ln for ln in after if ln.startswith(report.RECOMPUTED)]
    assert "python -m experiments.report" in line and "--results" in line
    assert [ln for ln in after if ln != line] == before.splitlines()
    assert report.main([str(path), "--results", str(tmp_path / "nothing")]) == 2
    # statistics under a config naming another env than the episodes were made on: refused
    path.write_text(yaml.safe_dump({**TINY, "env_id": "InferGym/Autoscale-v2"}))
    with pytest.raises(ConfigError, match="made on InferGym/Autoscale-v1, but the table config"):
        report.report_from_csv(path, root / "out", out=tmp_path / "re2")


def test_calibration_uses_only_calibration_seeds_and_the_chosen_value_is_reported(tiny):
    root, res = tiny
    chosen = res["chosen"][("default", "hpa")]
    assert chosen in (4, 64)
    with open(root / "out" / "sweep.csv") as fh:
        sweep = list(csv.DictReader(fh))
    assert {int(r["value"]) for r in sweep} == {4, 64}
    best = max(sweep, key=lambda r: float(r["return"]))
    assert int(best["value"]) == chosen and best["chosen"] == "True"
    assert f"target={chosen}" in (root / "out" / "table.md").read_text()


def _fake(values):
    return [{"return": v, "slo_attainment": s, "requests_arrived": 0} for v, s in values]


def test_choose_value_picks_the_best_mean_of_the_selection_metric():
    by_value = {
        8: _fake([(-10.0, 1.0), (-30.0, 1.0)]),  # mean -20
        16: _fake([(-12.0, 1.0), (-14.0, 0.9)]),  # mean -13: best
        32: _fake([(-5.0, 1.0), (-40.0, 1.0)]),  # best single episode, mean -22.5
    }
    assert reproduce.choose_value(by_value, "best", "return") == 16
    # ties go to the first value in sweep order
    assert reproduce.choose_value({1: _fake([(0.0, 1)]), 2: _fake([(0.0, 1)])}) == 1


def test_choose_value_smallest_meeting_and_mean_load_rules():
    by_value = {
        2: _fake([(-1.0, 0.80), (-1.0, 0.995)]),
        4: _fake([(-9.0, 0.991), (-9.0, 0.999)]),
        8: _fake([(-20.0, 1.0), (-20.0, 1.0)]),
    }
    rule = {"smallest_meeting": {"slo_attainment": 0.99}}
    assert reproduce.choose_value(by_value, rule) == 4
    # nobody meets the floor: fall back to the best by the metric
    assert reproduce.choose_value(by_value, {"smallest_meeting": {"slo_attainment": 1.01}}) == 2
    assert reproduce.choose_value(by_value, "mean_load", mean_load=3) == 4
    assert reproduce.choose_value(by_value, "mean_load", mean_load=99) == 8


def test_seeds_must_be_disjoint_and_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="disjoint"):
        tables.resolve_options(tables.load_table({**TINY, "calibration_seeds": [1]}))
    with pytest.raises(ConfigError, match="colour"):
        tables.load_table({**TINY, "colour": "red"})
    with pytest.raises(ConfigError, match="trace"):
        tables.resolve_options(tables.load_table("autoscale"), scenarios=["azure-conv"])


def test_shipped_tables_load_and_quick_shrinks_them():
    for name in tables.table_names():
        cfg = tables.load_table(name)
        opts = tables.resolve_options(cfg, quick=True)
        assert len(opts.eval_seeds) == 3 and opts.total_timesteps is not None
        assert not set(opts.calibration_seeds) & set(opts.eval_seeds)
    full = tables.resolve_options(tables.load_table("autoscale"))
    assert "azure-conv" not in full.scenarios  # skipped without --trace
    with_trace = tables.resolve_options(tables.load_table("autoscale"), trace="t.csv")
    assert with_trace.scenarios == ("steady", "diurnal", "bursty", "spot", "azure-conv")


def test_each_trace_row_gets_the_file_of_its_format():
    cfg = tables.load_table("autoscale-pd")
    rows = ("azure-conv", "azure-conv-pd", "mooncake-conv", "mooncake-conv-pd")
    azure_only = tables.resolve_options(cfg, trace="a.csv")
    assert "azure-conv-pd" in azure_only.scenarios and "mooncake-conv" not in azure_only.scenarios
    both = tables.resolve_options(cfg, trace=["a.csv", "m.jsonl"])
    assert set(rows) <= set(both.scenarios)
    for row, path in zip(rows, ("a.csv", "a.csv", "m.jsonl", "m.jsonl"), strict=True):
        for split in ("train", "eval"):
            kw = tables.scenario_env_kwargs(cfg, both, row, split)
            assert kw["workload"]["arrival"]["path"] == path
    with pytest.raises(ConfigError, match=r"trace.*mooncake-conv.*mooncake trace"):
        tables.resolve_options(cfg, scenarios=["mooncake-conv"], trace="a.csv")
    with pytest.raises(ConfigError, match=r"trace: 'm\.txt'.*\.csv.*\.jsonl"):
        tables.resolve_options(cfg, trace=["m.txt"])
    with pytest.raises(ConfigError, match="two azure traces"):
        tables.resolve_options(cfg, trace=["a.csv", "b.csv"])
    bad = {k: v for k, v in cfg.items() if k != "name"}
    bad["scenarios"] = {**cfg["scenarios"], "azure-conv": {**cfg["scenarios"]["azure-conv"], "trace": True}}
    with pytest.raises(ConfigError, match=r"scenarios\.azure-conv\.trace"):
        tables.load_table(bad)


def test_agent_train_env_kwargs_reach_training_only():
    cfg = tables.load_table("routing")
    opts = tables.resolve_options(cfg, quick=True, seeds=1)
    cells = [c for c in reproduce.evaluation_cells(cfg, opts, {}) if c.kind == "train"]
    by_agent = {c.label.split("|")[2]: c for c in cells}
    shaped, plain = by_agent["maskable_ppo_slot"], by_agent["maskable_ppo"]
    assert dict(shaped.env_kwargs)["shaping"] == 1.0 and "shaping" not in dict(plain.env_kwargs)
    assert "shaping" not in dict(shaped.params)["eval_env_kwargs"]
    bad = {k: v for k, v in cfg.items() if k != "name"}
    bad["agents"] = [{**cfg["agents"][0], "train_kwargs": {}}]
    with pytest.raises(ConfigError, match=r"agents\[0\].*train_kwargs"):
        tables.load_table(bad)


@pytest.mark.parametrize(
    ("poi", "diff", "expected"),
    [
        ((0.6, 0.9), (1.0, 3.0), "**beats**"),
        ((0.0, 0.3), (-3.0, -1.0), "**loses**"),
        ((0.0, 0.6), (-2.3, -0.1), "worse on the mean"),
        ((0.4, 1.0), (0.1, 2.0), "better on the mean"),
        ((0.2, 0.8), (-1.0, 1.0), "not distinguishable"),
        ((float("nan"), float("nan")), (0.0, 0.0), "too few runs"),
    ],
)
def test_verdict_reads_both_confidence_intervals(poi, diff, expected):
    row = {"poi_low": poi[0], "poi_high": poi[1], "diff_low": diff[0], "diff_high": diff[1]}
    assert expected in report._verdict(row)


def test_plot_redraws_the_figures_from_the_csv_files(tiny, tmp_path):
    root, res = tiny
    cfg = tables.load_table(TINY)
    rows = tables.read_episodes(root / "out" / "episodes.csv")
    chosen = tables.read_chosen(cfg, root / "out" / "sweep.csv")
    assert chosen == res["chosen"]
    # the runs rebuilt from episodes.csv give the same table as the reproduce run
    opts = tables.resolve_options(cfg, seeds=2)
    assert report.summary_rows(cfg, tables.policy_runs(cfg, opts, rows, chosen)) == res["summary"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    figs = tmp_path / "figs"
    argv = [str(path), "--results", str(root / "out"), "--run-dir", str(root / "run"), "--out", str(figs)]
    assert plot.main([*argv, "--figures", "kpi_bars", "tradeoff", "episode"]) == 0
    for name in ("kpis_default.png", "tradeoff_default.png", "episode_default.png"):
        assert (figs / name).stat().st_size > 1000, name
    assert not (figs / "ttft_cdf_default.png").exists()
    assert plot.main([*argv[:1], "--results", str(tmp_path / "nothing")]) == 2


def test_a_sweep_over_two_parameters_calibrates_on_their_grid(tmp_path):
    pd = {
        "name": "pd",
        "spec": {"kind": "pd_ratio"},
        "sweep": {"requests_per_s_per_replica": [2.0, 4.0], "prefill_fraction": [0.25, 0.5, 0.75]},
    }
    cfg = tables.load_table({**TINY, "baselines": [TINY["baselines"][0], pd]})
    opts = tables.resolve_options(cfg)
    cells = [c for c in reproduce.calibration_cells(cfg, opts) if "|pd|" in c.label]
    assert len(cells) == 6 * len(opts.calibration_seeds)  # the 2 x 3 grid, per calibration seed
    assert cells[1].label == "calib|default|pd|requests_per_s_per_replica,prefill_fraction=2,0.5|1000"
    assert cells[1].policy == tables.spec_string(
        {"kind": "pd_ratio", "requests_per_s_per_replica": 2.0, "prefill_fraction": 0.5}
    )
    # calibration rows: the point (4.0, 0.25) scores best
    rows = [
        {"label": c.label, "return": -1.0 if "=4,0.25|" in c.label else -5.0, "slo_attainment": 1.0}
        for c in reproduce.calibration_cells(cfg, opts)
    ]
    chosen, sweep = reproduce.calibrate(cfg, opts, rows)
    assert chosen[("default", "pd")] == (4.0, 0.25)
    evals = [
        c for c in reproduce.evaluation_cells(cfg, opts, chosen) if c.label.startswith("eval|default|pd|")
    ]
    assert evals[0].policy == tables.spec_string(
        {"kind": "pd_ratio", "requests_per_s_per_replica": 4.0, "prefill_fraction": 0.25}
    )
    # sweep.csv round trip: the chosen point is read back as the same tuple
    tables.write_csv(sweep, tmp_path / "sweep.csv")
    assert tables.read_chosen(cfg, tmp_path / "sweep.csv")[("default", "pd")] == (4.0, 0.25)
    with pytest.raises(ConfigError, match=r"baselines\[1\]\.select: 'mean_load' sweeps one parameter"):
        tables.load_table({**TINY, "baselines": [TINY["baselines"][0], {**pd, "select": "mean_load"}]})
    with pytest.raises(
        ConfigError, match=r"baselines\[1\]\.sweep: .* must map parameters to non-empty lists"
    ):
        tables.load_table(
            {**TINY, "baselines": [TINY["baselines"][0], {**pd, "sweep": {"prefill_fraction": []}}]}
        )


def test_rows_built_on_a_shipped_scenario_and_baselines_limited_to_some_rows():
    cfg = tables.load_table("autoscale-pd")
    opts = tables.resolve_options(cfg, quick=True)
    assert opts.scenarios == ("code", "code-pd")  # the trace rows need --trace
    assert (
        tables.base_scenario(cfg, "code-pd") == "steady"
        and tables.base_scenario(cfg, "azure-conv") == "azure-conv"
    )
    assert [b["name"] for b in tables.baselines_on(cfg, "code")] == ["hpa"]
    assert [b["name"] for b in tables.baselines_on(cfg, "code-pd")] == [
        "hpa",
        "pd-ratio",
        "pool-hpa",
        "dynamo-sla",
    ]
    cells = reproduce.calibration_cells(cfg, opts)
    assert {c.label.split("|")[2] for c in cells if c.label.startswith("calib|code|")} == {"hpa"}
    pool = [c for c in cells if "|pool-hpa|" in c.label]
    assert len(pool) == 4 * 4 * len(opts.calibration_seeds)
    spec = yaml.safe_load(pool[0].policy)  # a dotted sweep parameter sets the nested key
    assert spec["prefill"] == {"kind": "hpa", "metric": "in_flight_per_replica", "target": 2}
    assert spec["decode"] == {"kind": "hpa", "metric": "kv_usage", "target": 0.2}
    assert cfg["baselines"][2]["spec"]["prefill"] == {
        "kind": "hpa",
        "metric": "in_flight_per_replica",
    }  # unchanged
    env = dict(pool[0].env_kwargs)
    assert pool[0].scenario == "steady" and env["models"][0]["serving"] == "disaggregated"
    with pytest.raises(ConfigError, match=r"sweep: 'decode\.x\.target' names no mapping 'x'"):
        tables.with_params({"kind": "per_pool", "decode": {"kind": "hpa"}}, {"decode.x.target": 1})
    bad = {**TINY, "baselines": [{**TINY["baselines"][0], "scenarios": ["nowhere"]}]}
    with pytest.raises(ConfigError, match=r"baselines\[0\]\.scenarios: 'nowhere' must be one of"):
        tables.load_table(bad)
    with pytest.raises(ConfigError, match=r"scenarios\.default\.scenario: 'nowhere' must be one of"):
        tables.load_table({**TINY, "scenarios": {"default": {"scenario": "nowhere"}}})


def test_runtime_log_keeps_an_interrupted_invocations_time(tmp_path):
    import json
    import time

    path = tmp_path / "reproduce_runtimes.json"
    path.write_text("[120.0]\n")  # an earlier invocation
    t0 = time.perf_counter() - 5.0
    log = reproduce.RuntimeLog(path, t0, every_s=0.02)
    time.sleep(0.2)
    # while it runs (or after a kill), the file already holds this invocation's time so far
    first, running = json.loads(path.read_text())
    assert first == 120.0 and running >= 5.0
    final = log.stop()
    assert final[0] == 120.0 and final[1] >= running and json.loads(path.read_text()) == final
    assert log.stop() == final  # idempotent


def test_episode_figure_of_a_disaggregated_model_counts_arrivals_once_and_draws_each_pool(tmp_path):
    from envs.autoscale import ScalerPolicy

    tr = plot.record_episode(
        "InferGym/Autoscale-v3", ScalerPolicy("static"), "disaggregated", 0, {"horizon_s": 120}
    )
    arrived = tr["requests_arrived"] / np.diff(np.concatenate([[0.0], tr["t_s"]]))
    np.testing.assert_allclose(tr["arrival_rate_per_s"], arrived)  # the model's rate, not twice it
    assert (tr["replicas_prefill"] == 2).all() and (tr["replicas_decode"] == 2).all()
    assert np.isnan(tr["capacity_rps"]).all()
    assert plot.plot_episode({"static": tr}, tmp_path / "ep.png").stat().st_size > 0


def test_runtime_log_records_the_revision_each_invocation_started_at(tmp_path):
    import json
    import time

    path = tmp_path / "reproduce_runtimes.json"
    path.write_text("[120.0]\n")  # an earlier invocation, from before revisions were recorded
    log = reproduce.RuntimeLog(path, time.perf_counter(), every_s=60.0, revision="abc")
    log.stop()
    assert json.loads((tmp_path / "reproduce_revisions.json").read_text()) == [None, "abc"]
    log = reproduce.RuntimeLog(path, time.perf_counter(), every_s=60.0, revision="def")
    assert log.stop()[0] == 120.0 and log.revisions == [None, "abc", "def"]


def test_readme_names_the_revision_a_run_started_at_when_head_moved():
    from experiments.report import revision_line

    assert revision_line(["abc"], "abc") == "`abc`"
    assert revision_line([], "abc") == "`abc`"  # nothing recorded: HEAD at the end
    assert revision_line([None], None) == "unknown (not run from a git checkout)"
    assert revision_line(["abc"], "def") == "`abc` (the run started there; HEAD was `def` when it ended)"
    line = revision_line(["abc", None, "def", "abc"], "def")
    assert line.startswith("`abc`, `def` (the revisions its invocations started at; HEAD was `def`")
    assert "uncommitted changes" in revision_line(["abc-dirty"], "abc-dirty")
    assert "uncommitted changes" in revision_line(["abc"], "def-dirty")
