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

While the grids run, one progress line (stderr) shows the training steps done over all agents and
workers, steps/s, an ETA and the cells done (see :mod:`experiments.grid`); it is labelled
``calibration`` for the first grid and ``agents+eval`` for the second. A rerun shows the steps of
finished cells and checkpoints as *resumed*. ``--progress-every`` sets the seconds between lines
when stderr is not a terminal (a log file); ``--no-progress`` turns the line off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from envs.sim.errors import ConfigError
from experiments import stats
from experiments.tables import (  # the table config, options and CSV files, shared with experiments.plot
    Options,
    PolicyRuns,
    agent_dirs,
    base_scenario,
    baselines_on,
    default_dirs,
    load_table,
    point_params,
    policy_runs,
    resolve_options,
    scenario_env_kwargs,
    selected_agents,
    spec_string,
    sweep_points,
    table_names,
    value_str,
    with_params,
    write_csv,
)

# ---------------------------------------------------------------------------------------------- cells


def _grid():
    from experiments import grid

    return grid


def _freeze(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


class RuntimeLog:
    """Every invocation's wall clock on a run folder (``reproduce_runtimes.json``, seconds, a list).

    This invocation's entry is appended at the start and rewritten every ``every_s`` seconds by a
    daemon thread, atomically (temporary file + rename), so a run killed mid-way still leaves its
    time to within ``every_s``. :meth:`stop` writes the final value and returns the whole list.
    """

    def __init__(self, path: Path, t0: float, every_s: float = 30.0) -> None:
        self.path, self.t0 = Path(path), t0
        self.runtimes: list[float] = json.loads(self.path.read_text()) if self.path.exists() else []
        self.runtimes.append(0.0)
        self._done = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._tick, args=(every_s,), daemon=True)
        self._thread.start()

    def _write(self) -> None:
        self.runtimes[-1] = round(time.perf_counter() - self.t0, 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.runtimes) + "\n")
        os.replace(tmp, self.path)

    def _tick(self, every_s: float) -> None:
        while not self._done.wait(every_s):
            self._write()

    def stop(self) -> list[float]:
        """Stop updating; the final runtimes (this invocation's last)."""
        if not self._done.is_set():
            self._done.set()
            self._thread.join()
            self._write()
        return list(self.runtimes)


def calibration_cells(cfg: Mapping[str, Any], opts: Options) -> list[Any]:
    """One evaluate cell per (scenario, baseline with a sweep, sweep value, calibration seed)."""
    cells = []
    for s in opts.scenarios:
        kw = scenario_env_kwargs(cfg, opts, s, "train")
        for b in baselines_on(cfg, s):
            if not b.get("sweep"):
                continue
            param, values = sweep_points(b)
            for v in values:
                spec = with_params(b["spec"], point_params(b, v))
                for seed in opts.calibration_seeds:
                    label = f"calib|{s}|{b['name']}|{param}={value_str(v)}|{seed}"
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
        scenario=base_scenario(cfg, scenario),
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
        for b in baselines_on(cfg, s):
            spec = dict(b["spec"])
            if b.get("sweep"):
                spec = with_params(spec, point_params(b, chosen[(s, b["name"])]))
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
                    "eval_scenario": base_scenario(cfg, s),
                }
                params.update(a.get("overrides") or {})  # the grid reads unknown train params as overrides
                cells.append(
                    Cell(
                        kind="train",
                        env_id=cfg["env_id"],
                        scenario=base_scenario(cfg, s),
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

    env = gym.make(
        cfg["env_id"],
        scenario=base_scenario(cfg, scenario),
        **scenario_env_kwargs(cfg, opts, scenario, "train"),
    )
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
        if ok:  # a grid over several parameters: the first point meeting it, in grid order
            return ok[0] if isinstance(ok[0], tuple) else min(ok)
    scores = [float(np.mean([float(r[metric]) for r in rows_by_value[v]])) for v in values]
    return values[int(np.argmax(scores))]


def calibrate(
    cfg: Mapping[str, Any], opts: Options, rows: Sequence[Mapping[str, Any]]
) -> tuple[dict[tuple[str, str], Any], list[dict[str, Any]]]:
    """``{(scenario, baseline): chosen value}`` and a per-value summary of the sweep (for sweep.csv)."""
    chosen: dict[tuple[str, str], Any] = {}
    sweep_rows = []
    for s in opts.scenarios:
        for b in baselines_on(cfg, s):
            if not b.get("sweep"):
                continue
            param, values = sweep_points(b)
            by_value = {}
            for v in values:
                prefix = f"calib|{s}|{b['name']}|{param}={value_str(v)}|"
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
                        "value": value_str(v) if isinstance(v, tuple) else v,
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
    from agents.sb3 import git_sha

    sha = git_sha()
    if sha is None:
        sha_line = "unknown (not run from a git checkout)"
    elif sha.endswith("-dirty"):
        sha_line = f"`{sha}` (tracked files had uncommitted changes: the numbers may not match that commit)"
    else:
        sha_line = f"`{sha}`"
    text = f"""# Results: {cfg["name"]}{" (quick)" if opts.quick else ""}

{" ".join(str(cfg.get("description", "")).split())}

- Command: `{command}`
- Git SHA: {sha_line}
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
    trace: str | Sequence[str] | Mapping[str, str] | None = None,
    total_timesteps: int | None = None,
    agents: Sequence[str] | None = None,
    backend: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    figures: bool = True,
    progress: bool = True,
    command: str | None = None,
    progress_every: float | None = None,
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
    grid_kw = dict(
        backend=backend,
        workers=workers,
        ray_address=ray_address,
        progress=progress,
        progress_every=progress_every,
    )

    # A resumed run only redoes what is missing, so the README reports the wall clock of every
    # invocation, an interrupted one's too (its entry is kept up to date while it runs).
    clock = RuntimeLog(run_dir / "reproduce_runtimes.json", t0)
    try:
        calib = calibration_cells(cfg, opts)
        rows_c = run_cells(calib, run_dir, progress_label="calibration", **grid_kw) if calib else []
        chosen, sweep = calibrate(cfg, opts, rows_c)
        rows_e = run_cells(
            evaluation_cells(cfg, opts, chosen), run_dir, progress_label="agents+eval", **grid_kw
        )
    finally:
        clock.stop()

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
    runtimes = clock.stop()
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
        "--trace",
        nargs="+",
        default=None,
        metavar="FILE",
        help="trace files of the trace-replay rows, one per format: an Azure CSV (.csv) for the azure-conv "
        "rows, a Mooncake JSONL (.jsonl) for the mooncake-conv rows",
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
    ap.add_argument("--no-progress", action="store_true", help="no progress line")
    ap.add_argument("--progress-every", type=float, default=None, metavar="SECONDS",
                    help="seconds between progress lines when stderr is not a terminal (default 30)")  # fmt: skip
    args = ap.parse_args(argv)
    default_out, default_run_dir = default_dirs(args.table, args.quick)
    out = Path(args.out or default_out)
    run_dir = Path(args.run_dir or default_run_dir)
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
            progress=not args.no_progress,
            progress_every=args.progress_every,
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
