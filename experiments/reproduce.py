"""Reproduce a results table: calibrate the baselines, train the agents, evaluate all, write table + figures.

A table is a YAML file in ``experiments/configs/tables/`` (env id, scenarios, baselines with the
parameter each one sweeps, agents with their training budget, KPIs). Reproducing it runs two grids
through :mod:`experiments.grid` (local processes or Ray): first every baseline's sweep on the
*calibration* seeds, from which one value per (baseline, scenario) is chosen (the table reports it);
then the calibrated baselines on the *evaluation* seeds, and one agent per training seed
(``train_seed_base + i``) trained and evaluated on the same evaluation seeds. Calibration, training
and evaluation seeds are disjoint. Every episode goes through :func:`experiments.evaluate.evaluate_policy`;
a baseline contributes one run per evaluation episode, an agent one run per training seed (the mean
over its evaluation episodes), and the table gives mean and IQM with 95% stratified-bootstrap CIs
(:mod:`experiments.stats`) plus each agent's probability of improvement over the best baseline.

    python -m experiments.reproduce autoscale --quick --scenarios default
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats as sps

import envs
from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail
from experiments import stats

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLES_DIR = Path(__file__).resolve().parent / "configs" / "tables"
TABLE_KEYS = (
    "description",
    "env_id",
    "select_by",
    "eval_seeds",
    "calibration_seeds",
    "train_seed_base",
    "scenarios",
    "default_scenarios",
    "baselines",
    "agents",
    "quick",
    "kpis",
    "figures",
    "tradeoff",
)
SCENARIO_KEYS = ("trace", "split", "train_env_kwargs", "eval_env_kwargs")
BASELINE_KEYS = ("name", "spec", "sweep", "select", "env_kwargs")
AGENT_KEYS = ("name", "algo", "total_timesteps", "env_kwargs", "train_env_kwargs", "overrides")
QUICK_KEYS = ("eval_seeds", "calibration_seeds", "total_timesteps", "scenario_env_kwargs")
KPI_KEYS = ("key", "label", "fmt", "iqm")
FIGURES = ("episode", "ttft_cdf", "tradeoff", "kpi_bars")


# ---------------------------------------------------------------------------------------------- config


def table_names() -> list[str]:
    """The shipped tables (``experiments/configs/tables/<name>.yaml``)."""
    return sorted(p.stem for p in TABLES_DIR.glob("*.yaml"))


def load_table(name_or_path: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A table config from a shipped name, a YAML path or a dict; unknown keys are errors."""
    if isinstance(name_or_path, Mapping):
        cfg, where = dict(name_or_path), "table"
    else:
        p = Path(name_or_path)
        if not p.suffix:
            check_choice("table", str(name_or_path), table_names())
            p = TABLES_DIR / f"{name_or_path}.yaml"
        cfg, where = yaml.safe_load(p.read_text()) or {}, p.stem
    check_keys(where, cfg, TABLE_KEYS, required=("env_id", "scenarios", "baselines", "kpis"))
    check_choice(f"{where}.env_id", cfg["env_id"], envs.ENV_IDS)
    cfg.setdefault("name", where)
    cfg.setdefault("select_by", "return")
    cfg.setdefault("eval_seeds", 10)
    cfg.setdefault("calibration_seeds", [1000, 1001])
    cfg.setdefault("train_seed_base", 10000)
    cfg.setdefault("agents", [])
    cfg.setdefault("quick", {})
    cfg.setdefault("figures", ["kpi_bars"])
    cfg.setdefault("default_scenarios", list(cfg["scenarios"]))
    check_number(f"{where}.eval_seeds", cfg["eval_seeds"], ge=1, integer=True)
    for s, sc in cfg["scenarios"].items():
        check_keys(f"{where}.scenarios.{s}", sc or {}, SCENARIO_KEYS)
    for s in cfg["default_scenarios"]:
        check_choice(f"{where}.default_scenarios", s, list(cfg["scenarios"]))
    for i, b in enumerate(cfg["baselines"]):
        check_keys(f"{where}.baselines[{i}]", b, BASELINE_KEYS, required=("name", "spec"))
        sweep = b.get("sweep") or {}
        if len(sweep) > 1:
            raise fail(f"{where}.baselines[{i}].sweep", sweep, "sweeps one main parameter")
        sel = b.get("select", "best")
        if not (
            sel in ("best", "mean_load") or (isinstance(sel, Mapping) and set(sel) == {"smallest_meeting"})
        ):
            raise fail(
                f"{where}.baselines[{i}].select",
                sel,
                "must be best, mean_load or {smallest_meeting: {kpi: min}}",
            )
    for i, a in enumerate(cfg["agents"]):
        check_keys(f"{where}.agents[{i}]", a, AGENT_KEYS, required=("name", "algo", "total_timesteps"))
    check_keys(f"{where}.quick", cfg["quick"], QUICK_KEYS)
    for i, k in enumerate(cfg["kpis"]):
        check_keys(f"{where}.kpis[{i}]", k, KPI_KEYS, required=("key",))
    for f in cfg["figures"]:
        check_choice(f"{where}.figures", f, FIGURES)
    return cfg


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


@dataclass(frozen=True)
class Options:
    """What to run: the table's defaults, narrowed or shrunk by the command line."""

    scenarios: tuple[str, ...]
    eval_seeds: tuple[int, ...]
    calibration_seeds: tuple[int, ...]
    n_agent_seeds: int
    total_timesteps: int | None = None  # None: each agent's own budget
    quick: bool = False
    trace: str | None = None
    scenario_env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    agents: tuple[str, ...] | None = None  # None: every agent of the table


def resolve_options(
    cfg: Mapping[str, Any],
    *,
    quick: bool = False,
    seeds: int | None = None,
    scenarios: Sequence[str] | None = None,
    trace: str | None = None,
    total_timesteps: int | None = None,
    agents: Sequence[str] | None = None,
) -> Options:
    """Seeds, scenarios and budgets for a run: table defaults, then ``quick``, then explicit arguments."""
    q = cfg.get("quick", {}) if quick else {}
    n_eval = int(seeds if seeds is not None else q.get("eval_seeds", cfg["eval_seeds"]))
    check_number("seeds", n_eval, ge=1, integer=True)
    calib = tuple(int(s) for s in q.get("calibration_seeds", cfg["calibration_seeds"]))
    eval_seeds = tuple(range(n_eval))
    train_base = int(cfg["train_seed_base"])
    if set(calib) & set(eval_seeds) or train_base < n_eval:
        raise ConfigError(
            f"seeds: calibration {list(calib)}, evaluation 0..{n_eval - 1} and training "
            f"{train_base}.. must be disjoint"
        )
    names = list(scenarios) if scenarios else list(cfg["default_scenarios"])
    for s in names:
        check_choice("scenarios", s, list(cfg["scenarios"]))
    if not scenarios:
        # The trace scenario needs the trace file; without --trace the default list skips it.
        names = [s for s in names if trace or not (cfg["scenarios"][s] or {}).get("trace")]
    for s in names:
        if (cfg["scenarios"][s] or {}).get("trace") and not trace:
            raise fail("trace", None, f"scenario {s!r} replays a trace: give its path with --trace")
    steps = total_timesteps if total_timesteps is not None else q.get("total_timesteps")
    for a in agents or ():
        check_choice("agents", a, [x["name"] for x in cfg.get("agents", [])])
    return Options(
        scenarios=tuple(names),
        eval_seeds=eval_seeds,
        calibration_seeds=calib,
        n_agent_seeds=n_eval,
        total_timesteps=None if steps is None else int(steps),
        quick=quick,
        trace=trace,
        scenario_env_kwargs=dict(q.get("scenario_env_kwargs", {})),
        agents=None if agents is None else tuple(agents),
    )


def scenario_env_kwargs(cfg: Mapping[str, Any], opts: Options, scenario: str, split: str) -> dict[str, Any]:
    """gym.make keywords of a scenario for the ``train`` (calibration + training) or ``eval`` split."""
    sc = cfg["scenarios"][scenario] or {}
    kw = _merge(sc.get(f"{split}_env_kwargs") or {}, dict(opts.scenario_env_kwargs))  # quick wins
    if sc.get("trace"):
        kw = _merge(kw, {"workload": {"arrival": {"path": str(opts.trace)}}})
    return kw


# ---------------------------------------------------------------------------------------------- cells


def _grid():
    from experiments import grid

    return grid


def _freeze(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


def spec_string(spec: Mapping[str, Any]) -> str:
    """A baseline spec as the YAML flow mapping :func:`experiments.evaluate.make_policy` parses."""
    return yaml.safe_dump(dict(spec), default_flow_style=True, sort_keys=True).strip()


def selected_agents(cfg: Mapping[str, Any], opts: Options) -> list[Mapping[str, Any]]:
    """The table's agents, narrowed to ``opts.agents`` when given."""
    return [a for a in cfg.get("agents", []) if opts.agents is None or a["name"] in opts.agents]


def _value_str(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def calibration_cells(cfg: Mapping[str, Any], opts: Options) -> list[Any]:
    """One evaluate cell per (scenario, baseline with a sweep, sweep value, calibration seed)."""
    cells = []
    for s in opts.scenarios:
        kw = scenario_env_kwargs(cfg, opts, s, "train")
        for b in cfg["baselines"]:
            for param, values in (b.get("sweep") or {}).items():
                for v in values:
                    spec = {**b["spec"], param: v}
                    for seed in opts.calibration_seeds:
                        label = f"calib|{s}|{b['name']}|{param}={_value_str(v)}|{seed}"
                        cells.append(_baseline_cell(cfg, s, b, spec, seed, kw, label))
    return cells


def _baseline_cell(
    cfg: Mapping[str, Any],
    scenario: str,
    baseline: Mapping[str, Any],
    spec: Mapping[str, Any],
    seed: int,
    env_kwargs: Mapping[str, Any],
    label: str,
) -> Any:
    """One evaluation episode of a baseline with the given parameters (calibration or evaluation)."""
    return _grid().Cell(
        kind="evaluate",
        env_id=cfg["env_id"],
        scenario=scenario,
        policy=spec_string(spec),
        seed=int(seed),
        env_kwargs=_freeze({**env_kwargs, **(baseline.get("env_kwargs") or {})}),
        params=(),
        label=label,
    )


def evaluation_cells(
    cfg: Mapping[str, Any], opts: Options, chosen: Mapping[tuple[str, str], Any]
) -> list[Any]:
    """Calibrated baselines on the evaluation seeds, and one train cell per (scenario, agent, seed)."""
    Cell = _grid().Cell
    cells = []
    for s in opts.scenarios:
        ev_kw = scenario_env_kwargs(cfg, opts, s, "eval")
        tr_kw = scenario_env_kwargs(cfg, opts, s, "train")
        for b in cfg["baselines"]:
            spec = dict(b["spec"])
            for param in b.get("sweep") or {}:
                spec[param] = chosen[(s, b["name"])]
            for seed in opts.eval_seeds:
                cells.append(_baseline_cell(cfg, s, b, spec, seed, ev_kw, f"eval|{s}|{b['name']}|{seed}"))
        for a in selected_agents(cfg, opts):
            steps = opts.total_timesteps or int(a["total_timesteps"])
            agent_kw = dict(a.get("env_kwargs") or {})
            train_only = dict(a.get("train_env_kwargs") or {})  # e.g. reward shaping: never at evaluation
            for i in range(opts.n_agent_seeds):
                seed = int(cfg["train_seed_base"]) + i
                params = {
                    "total_timesteps": steps,
                    "eval_seeds": tuple(opts.eval_seeds),
                    "eval_env_kwargs": {**ev_kw, **agent_kw},
                    "eval_scenario": s,
                }
                params.update(a.get("overrides") or {})  # the grid reads unknown train params as overrides
                cells.append(
                    Cell(
                        kind="train",
                        env_id=cfg["env_id"],
                        scenario=s,
                        policy=a["algo"],
                        seed=seed,
                        env_kwargs=_freeze({**tr_kw, **agent_kw, **train_only}),
                        params=_freeze(params),
                        label=f"train|{s}|{a['name']}|{seed}",
                    )
                )
    return cells


def run_cells(cells: Sequence[Any], run_dir: Path, **grid_kw: Any) -> list[dict[str, Any]]:
    """Run ``cells`` with :func:`experiments.grid.run_grid`; only the rows of these cells, tagged."""
    rows = _grid().run_grid(list(cells), run_dir, **grid_kw)
    want = {c.label for c in cells}
    out = []
    for r in rows:
        if r.get("label") in want:
            r = dict(r)
            if "gpu_seconds" in r and "gpu_hours" not in r:
                r["gpu_hours"] = float(r["gpu_seconds"]) / 3600.0
            out.append(r)
    return out


# ---------------------------------------------------------------------------------------------- calibration


def _mean_load_replicas(cfg: Mapping[str, Any], opts: Options, scenario: str, rows: Sequence[dict]) -> int:
    """ceil(mean arrival rate of the calibration episodes / one replica's saturation rate), summed over models."""
    import gymnasium as gym

    env = gym.make(cfg["env_id"], scenario=scenario, **scenario_env_kwargs(cfg, opts, scenario, "train"))
    try:
        base = env.unwrapped
        cap = float(np.sum(base.nominal_capacity_rps))
        horizon = float(base.scenario.horizon_s)
    finally:
        env.close()
    rate = float(np.mean([r["requests_arrived"] for r in rows])) / horizon
    return max(1, math.ceil(rate / cap - 1e-9))


def choose_value(
    rows_by_value: Mapping[Any, Sequence[Mapping[str, Any]]],
    select: Any = "best",
    metric: str = "return",
    mean_load: int | None = None,
) -> Any:
    """The sweep value a baseline runs with, from its calibration episodes (``{value: rows}``).

    ``best``: the highest mean ``metric`` (ties: the first value in sweep order).
    ``{smallest_meeting: {kpi: floor}}``: the smallest value whose every calibration episode has
    ``kpi >= floor``; if none does, the best by ``metric``. ``mean_load``: the smallest value
    ``>= mean_load`` (replicas that carry the mean load), else the largest.
    """
    values = list(rows_by_value)
    if not values:
        raise ConfigError("calibration: no sweep values were run")
    if select == "mean_load":
        if mean_load is None:
            raise ConfigError("calibration: select mean_load needs the mean-load replica count")
        above = sorted(v for v in values if v >= mean_load)
        return above[0] if above else max(values)
    if isinstance(select, Mapping):
        ((kpi, floor),) = select["smallest_meeting"].items()
        ok = [v for v in values if all(float(r[kpi]) >= float(floor) for r in rows_by_value[v])]
        if ok:
            return min(ok)
    scores = [float(np.mean([float(r[metric]) for r in rows_by_value[v]])) for v in values]
    return values[int(np.argmax(scores))]


def calibrate(
    cfg: Mapping[str, Any], opts: Options, rows: Sequence[Mapping[str, Any]]
) -> tuple[dict[tuple[str, str], Any], list[dict[str, Any]]]:
    """``{(scenario, baseline): chosen value}`` and a per-value summary of the sweep (for sweep.csv)."""
    chosen: dict[tuple[str, str], Any] = {}
    sweep_rows = []
    for s in opts.scenarios:
        for b in cfg["baselines"]:
            for param, values in (b.get("sweep") or {}).items():
                by_value = {}
                for v in values:
                    prefix = f"calib|{s}|{b['name']}|{param}={_value_str(v)}|"
                    by_value[v] = [r for r in rows if r["label"].startswith(prefix)]
                    if not by_value[v]:
                        raise ConfigError(f"calibration of {b['name']} on {s}: no rows for {param}={v}")
                sel = b.get("select", "best")
                ml = _mean_load_replicas(cfg, opts, s, by_value[values[0]]) if sel == "mean_load" else None
                chosen[(s, b["name"])] = v_star = choose_value(by_value, sel, cfg["select_by"], ml)
                for v in values:
                    rs = by_value[v]
                    sweep_rows.append(
                        {
                            "scenario": s,
                            "baseline": b["name"],
                            "param": param,
                            "value": v,
                            "chosen": v == v_star,
                            "n": len(rs),
                            **{
                                k["key"]: float(np.mean([r[k["key"]] for r in rs]))
                                for k in cfg["kpis"]
                                if all(k["key"] in r for r in rs)
                            },
                        }
                    )
    return chosen, sweep_rows


# ---------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class PolicyRuns:
    """The runs of one policy on one scenario: one value per run for every KPI."""

    scenario: str
    policy: str
    kind: str  # "baseline" | "agent"
    param: str
    runs: Mapping[str, np.ndarray]


def policy_runs(
    cfg: Mapping[str, Any], opts: Options, rows: Sequence[Mapping[str, Any]], chosen
) -> list[PolicyRuns]:
    """Group evaluation rows: a baseline's run is an episode, an agent's run a training seed (its mean)."""
    keys = [k["key"] for k in cfg["kpis"]]
    out = []
    for s in opts.scenarios:
        for b in cfg["baselines"]:
            rs = sorted(
                (r for r in rows if r["label"].startswith(f"eval|{s}|{b['name']}|")), key=lambda r: r["seed"]
            )
            param = ", ".join(f"{p}={_value_str(chosen[(s, b['name'])])}" for p in b.get("sweep") or {})
            runs = {k: np.array([float(r[k]) for r in rs if k in r]) for k in keys}
            out.append(PolicyRuns(s, b["name"], "baseline", param, runs))
        for a in selected_agents(cfg, opts):
            by_seed: dict[str, list] = {}
            for r in rows:
                if r["label"].startswith(f"train|{s}|{a['name']}|"):
                    by_seed.setdefault(r["label"], []).append(r)
            runs = {
                k: np.array([np.mean([float(r[k]) for r in rs]) for _, rs in sorted(by_seed.items())])
                for k in keys
            }
            steps = opts.total_timesteps or int(a["total_timesteps"])
            out.append(PolicyRuns(s, a["name"], "agent", f"{steps} steps", runs))
    return out


def _diff_ci(x: np.ndarray, y: np.ndarray, seed: int = 0) -> stats.Estimate:
    """mean(x) - mean(y) with a 95% percentile bootstrap CI (x and y resampled independently)."""
    point = float(np.mean(x) - np.mean(y))
    if len(x) < 2 or len(y) < 2:
        return stats.Estimate(point, float("nan"), float("nan"))
    res = sps.bootstrap(
        (x, y),
        lambda a, b, axis=-1: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        n_resamples=stats.DEFAULT_RESAMPLES,
        vectorized=True,
        paired=False,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return stats.Estimate(point, float(res.confidence_interval.low), float(res.confidence_interval.high))


def summary_rows(cfg: Mapping[str, Any], groups: Sequence[PolicyRuns]) -> list[dict[str, Any]]:
    """One row per (scenario, policy, KPI): n, mean and IQM with 95% stratified-bootstrap CIs."""
    out = []
    for g in groups:
        for k in cfg["kpis"]:
            x = g.runs.get(k["key"])
            if x is None or len(x) == 0:
                continue
            summ = stats.summarize({g.scenario: x})
            out.append(
                {
                    "scenario": g.scenario,
                    "policy": g.policy,
                    "kind": g.kind,
                    "param": g.param,
                    "kpi": k["key"],
                    "n_runs": len(x),
                    "mean": summ.mean.value,
                    "mean_low": summ.mean.low,
                    "mean_high": summ.mean.high,
                    "iqm": summ.iqm.value,
                    "iqm_low": summ.iqm.low,
                    "iqm_high": summ.iqm.high,
                }
            )
    return out


def improvement_rows(cfg: Mapping[str, Any], groups: Sequence[PolicyRuns]) -> list[dict[str, Any]]:
    """Per scenario and agent: P(agent > best baseline) on ``select_by`` and the mean difference, with CIs."""
    metric = cfg["select_by"]
    out = []
    for s in dict.fromkeys(g.scenario for g in groups):
        base = [g for g in groups if g.scenario == s and g.kind == "baseline" and len(g.runs[metric])]
        if not base:
            continue
        best = max(base, key=lambda g: float(np.mean(g.runs[metric])))
        for a in (g for g in groups if g.scenario == s and g.kind == "agent" and len(g.runs[metric])):
            poi = stats.probability_of_improvement(a.runs[metric], best.runs[metric])
            diff = _diff_ci(a.runs[metric], best.runs[metric])
            losses = [
                g.policy
                for g in base
                if stats.probability_of_improvement(a.runs[metric], g.runs[metric]).high < 0.5
            ]
            out.append(
                {
                    "scenario": s,
                    "agent": a.policy,
                    "best_baseline": best.policy,
                    "best_baseline_param": best.param,
                    "metric": metric,
                    "poi": poi.value,
                    "poi_low": poi.low,
                    "poi_high": poi.high,
                    "diff": diff.value,
                    "diff_low": diff.low,
                    "diff_high": diff.high,
                    "loses_to": ";".join(losses),
                }
            )
    return out


def _verdict(r: Mapping[str, Any]) -> str:
    if not np.isfinite(r["poi_low"]):
        return "too few runs for a CI"
    if r["poi_low"] > 0.5 and r["diff_low"] > 0:
        return "**beats** the best baseline (CI excludes no-improvement)"
    if r["poi_high"] < 0.5:
        return "**loses** to the best baseline (CI excludes no-difference)"
    if r["diff_high"] < 0 or r["diff_low"] > 0:
        side = "worse" if r["diff_high"] < 0 else "better"
        return (
            f"{side} on the mean (difference CI excludes 0), but the P(improvement) CI includes 0.5: "
            "not a clear result at 95%"
        )
    return "not distinguishable from the best baseline at 95%"


# ---------------------------------------------------------------------------------------------- outputs


def _fmt_ci(v: float, lo: float, hi: float, fmt: str) -> str:
    if not np.isfinite(lo):
        return f"{v:{fmt}}"
    return f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def markdown_table(
    cfg: Mapping[str, Any], opts: Options, summary: Sequence[Mapping], improvement: Sequence[Mapping]
) -> str:
    """The table as markdown: one section per scenario, mean [95% CI] per KPI, IQM where asked."""
    lines = [f"# {cfg['name']}", "", " ".join(str(cfg.get("description", "")).split()), ""]
    lines.append(
        f"Mean [95% CI] over runs (stratified bootstrap, {stats.DEFAULT_RESAMPLES} resamples); a baseline "
        f"run is one evaluation episode (seeds {_seed_range(opts.eval_seeds)}), an agent run is one training "
        f"seed (mean over the same evaluation episodes). Baseline parameters were chosen on calibration "
        f"seeds {list(opts.calibration_seeds)}."
        + (" **Quick mode: tiny training budgets.**" if opts.quick else "")
    )
    idx = {(r["scenario"], r["policy"], r["kpi"]): r for r in summary}
    for s in opts.scenarios:
        sc = cfg["scenarios"][s] or {}
        lines += ["", f"## {s}" + (f" ({sc['split']})" if sc.get("split") else ""), ""]
        head = ["policy", "parameter"]
        for k in cfg["kpis"]:
            head.append(f"{k.get('label', k['key'])} mean")
            if k.get("iqm"):
                head.append(f"{k.get('label', k['key'])} IQM")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        pols = list(dict.fromkeys(r["policy"] for r in summary if r["scenario"] == s))
        for p in pols:
            any_row = next(r for r in summary if r["scenario"] == s and r["policy"] == p)
            cells = [p, any_row["param"] or "-"]
            for k in cfg["kpis"]:
                r = idx.get((s, p, k["key"]))
                fmt = k.get("fmt", ".3g")
                cells.append(_fmt_ci(r["mean"], r["mean_low"], r["mean_high"], fmt) if r else "-")
                if k.get("iqm"):
                    cells.append(_fmt_ci(r["iqm"], r["iqm_low"], r["iqm_high"], fmt) if r else "-")
            lines.append("| " + " | ".join(cells) + " |")
        imp = [r for r in improvement if r["scenario"] == s]
        if imp:
            lines.append("")
        for r in imp:
            lines.append(
                f"- {r['agent']} vs best baseline {r['best_baseline']} ({r['best_baseline_param'] or 'no parameter'}) "
                f"on {r['metric']}: P(improvement) = {_fmt_ci(r['poi'], r['poi_low'], r['poi_high'], '.2f')}, "
                f"difference of means = {_fmt_ci(r['diff'], r['diff_low'], r['diff_high'], '.1f')}: "
                f"{_verdict(r)}."
                + (
                    f" Loses (P(improvement) CI below 0.5) to: {r['loses_to'].replace(';', ', ')}."
                    if r["loses_to"]
                    else ""
                )
            )
    return "\n".join(lines) + "\n"


def _seed_range(seeds: Sequence[int]) -> str:
    return f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in r.items()}
            )


def _git_sha() -> str:
    """HEAD's SHA, marked when tracked files had uncommitted changes (the numbers may not match HEAD).

    Changes under ``results/`` do not count: they are this run's (or another table's) outputs.
    """
    import subprocess

    from agents.sb3 import git_sha

    sha = git_sha() or "unknown"
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return f"{sha} (plus uncommitted changes to tracked files)" if dirty else sha


def agent_dirs(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """``{train label: run folder}`` of the trained agents (``run_dir/agents/<cell key>``, as the grid writes)."""
    return {
        r["label"]: run_dir / "agents" / r["key"]
        for r in rows
        if r["label"].startswith("train|") and "key" in r
    }


def write_readme(
    out: Path,
    cfg: Mapping[str, Any],
    opts: Options,
    command: str,
    runtimes_s: Sequence[float],
    run_dir: Path,
    backend: str,
) -> None:
    """``out/README.md``: what made the table (command, git SHA, runtime, seeds, budgets) and the files."""
    sha = _git_sha()
    text = f"""# Results: {cfg["name"]}{" (quick)" if opts.quick else ""}

{" ".join(str(cfg.get("description", "")).split())}

- Command: `{command}`
- Git SHA: `{sha}`
- Runtime: {sum(runtimes_s) / 60:.1f} min wall clock (backend `{backend}`, {len(runtimes_s)} invocation(s) on
  the same run folder: {", ".join(f"{t / 60:.1f}" for t in runtimes_s)} min; a rerun resumes finished cells)
- Scenarios: {", ".join(opts.scenarios)}
- Evaluation seeds: {list(opts.eval_seeds)}; calibration seeds: {list(opts.calibration_seeds)};
  agent training seeds: {[int(cfg["train_seed_base"]) + i for i in range(opts.n_agent_seeds)]}
- Agent training budget: {opts.total_timesteps or ", ".join(f"{a['name']}={a['total_timesteps']}" for a in selected_agents(cfg, opts))} env steps per run
- Config: `experiments/configs/tables/{cfg["name"]}.yaml`

Files: `table.md` / `table.csv` (mean and IQM with 95% stratified-bootstrap CIs per KPI),
`improvement.csv` (probability of improvement of each agent over the best baseline),
`sweep.csv` (every baseline's calibration sweep; `chosen` marks the value used), `episodes.csv`
(one row per evaluation episode), figures `*.png`. Run folders with the trained agents and
their tensorboard logs are under `{run_dir.as_posix()}` (not committed; `tensorboard --logdir {run_dir.as_posix()}`).
"""
    (out / "README.md").write_text(text)


# ---------------------------------------------------------------------------------------------- main


def reproduce(
    table: str | Mapping[str, Any],
    out: str | Path,
    run_dir: str | Path,
    *,
    quick: bool = False,
    seeds: int | None = None,
    scenarios: Sequence[str] | None = None,
    trace: str | None = None,
    total_timesteps: int | None = None,
    agents: Sequence[str] | None = None,
    backend: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    figures: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Run a table end to end and write its outputs to ``out``; returns summary, improvement and paths."""
    t0 = time.perf_counter()
    cfg = load_table(table)
    opts = resolve_options(
        cfg,
        quick=quick,
        seeds=seeds,
        scenarios=scenarios,
        trace=trace,
        total_timesteps=total_timesteps,
        agents=agents,
    )
    out, run_dir = Path(out), Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    grid_kw = dict(backend=backend, workers=workers, ray_address=ray_address, progress=progress)

    calib = calibration_cells(cfg, opts)
    rows_c = run_cells(calib, run_dir, **grid_kw) if calib else []
    chosen, sweep = calibrate(cfg, opts, rows_c)
    rows_e = run_cells(evaluation_cells(cfg, opts, chosen), run_dir, **grid_kw)

    groups = policy_runs(cfg, opts, rows_e, chosen)
    summary = summary_rows(cfg, groups)
    improvement = improvement_rows(cfg, groups)
    md = markdown_table(cfg, opts, summary, improvement)
    (out / "table.md").write_text(md)
    write_csv(summary, out / "table.csv")
    write_csv(improvement, out / "improvement.csv") if improvement else None
    write_csv(sweep, out / "sweep.csv") if sweep else None
    write_csv([{k: v for k, v in r.items() if k != "cell"} for r in rows_e], out / "episodes.csv")
    fig_paths: list[Path] = []
    if figures:
        from experiments import plot

        fig_paths = plot.table_figures(cfg, opts, groups, rows_e, chosen, agent_dirs(run_dir, rows_e), out)
    cmd = command or shlex.join(["python", "-m", "experiments.reproduce", *sys.argv[1:]])
    # A resumed run only redoes what is missing, so the README reports the wall clock of every invocation.
    log = run_dir / "reproduce_runtimes.json"
    runtimes = json.loads(log.read_text()) if log.exists() else []
    runtimes.append(round(time.perf_counter() - t0, 1))
    log.write_text(json.dumps(runtimes) + "\n")
    write_readme(out, cfg, opts, cmd, runtimes, run_dir, backend)
    return {
        "markdown": md,
        "summary": summary,
        "improvement": improvement,
        "chosen": chosen,
        "figures": fig_paths,
        "runtime_s": time.perf_counter() - t0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.reproduce",
        description="Reproduce a results table (calibrated baselines vs trained agents, 95% bootstrap CIs).",
    )
    ap.add_argument("table", help=f"table name ({', '.join(table_names())}) or a table YAML path")
    ap.add_argument("--quick", action="store_true", help="tiny training budgets and 3 evaluation seeds")
    ap.add_argument("--seeds", type=int, default=None, help="evaluation episodes (= agent training seeds)")
    ap.add_argument("--scenarios", nargs="+", default=None, help="restrict to these scenarios of the table")
    ap.add_argument(
        "--trace", default=None, help="Azure LLM trace CSV for trace-replay scenarios (azure-conv)"
    )
    ap.add_argument(
        "--total-timesteps", type=int, default=None, help="override every agent's training budget"
    )
    ap.add_argument("--agents", nargs="+", default=None, help="restrict to these agents of the table")
    ap.add_argument("--backend", choices=("local", "ray"), default="local", help="where the grid cells run")
    ap.add_argument("--ray-address", default=None, help="Ray cluster address (backend ray)")
    ap.add_argument("--workers", type=int, default=2, help="parallel local worker processes")
    ap.add_argument("--out", default=None, help="output folder (default results/<table>[-quick])")
    ap.add_argument("--run-dir", default=None, help="grid run folder: agents, tensorboard logs, results.jsonl "
                    "(default runs/reproduce/<table>[-quick]); rerunning resumes")  # fmt: skip
    ap.add_argument("--no-figures", action="store_true", help="skip the figures")
    args = ap.parse_args(argv)
    name = Path(args.table).stem
    suffix = "-quick" if args.quick else ""
    out = Path(args.out or f"results/{name}{suffix}")
    run_dir = Path(args.run_dir or f"runs/reproduce/{name}{suffix}")
    try:
        res = reproduce(
            args.table,
            out,
            run_dir,
            quick=args.quick,
            seeds=args.seeds,
            scenarios=args.scenarios,
            trace=args.trace,
            total_timesteps=args.total_timesteps,
            agents=args.agents,
            backend=args.backend,
            workers=args.workers,
            ray_address=args.ray_address,
            figures=not args.no_figures,
            command=shlex.join(
                ["python", "-m", "experiments.reproduce", *(argv if argv is not None else sys.argv[1:])]
            ),
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(res["markdown"])
    print(f"wrote {out}/table.md, table.csv, improvement.csv, episodes.csv, README.md")
    for p in res["figures"]:
        print(f"figure: {p}")
    print(f"runtime {res['runtime_s'] / 60:.1f} min; agents and tensorboard logs: {run_dir}/ "
          f"(tensorboard --logdir {run_dir})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
