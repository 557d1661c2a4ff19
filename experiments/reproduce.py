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

import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.sim.errors import ConfigError
from experiments.report import improvement_rows, markdown_table, summary_rows, write_readme
from experiments.tables import (  # the table config, options and CSV files, shared with experiments.plot
    Options,
    agent_dirs,
    base_scenario,
    baselines_on,
    default_dirs,
    invocation,
    load_table,
    point_params,
    policy_runs,
    resolve_options,
    scenario_env_kwargs,
    selected_agents,
    spec_string,
    sweep_points,
    table_parser,
    value_str,
    with_params,
    write_csv,
)
from experiments.warmup import warm_up

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

    def __init__(self, path: Path, t0: float, every_s: float = 30.0, revision: str | None = None) -> None:
        self.path, self.t0 = Path(path), t0
        self.runtimes: list[float] = json.loads(self.path.read_text()) if self.path.exists() else []
        self.runtimes.append(0.0)
        # the git revision each invocation started at (None: not recorded), in a file beside the times
        self.revisions_path = self.path.with_name("reproduce_revisions.json")
        known = json.loads(self.revisions_path.read_text()) if self.revisions_path.exists() else []
        self.revisions: list[str | None] = (known + [None] * len(self.runtimes))[: len(self.runtimes) - 1]
        self.revisions.append(revision)
        tmp = self.revisions_path.with_name(self.revisions_path.name + ".tmp")
        tmp.write_text(json.dumps(self.revisions) + "\n")
        os.replace(tmp, self.revisions_path)  # atomic, as the runtimes
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
    # the revision that runs is the one at the start: commits made while a long run goes on are not in it
    from agents.sb3 import git_sha

    clock = RuntimeLog(run_dir / "reproduce_runtimes.json", t0, revision=git_sha())
    try:
        if backend == "local" and opts.scenarios:  # compile once here, not in every worker at once
            first = opts.scenarios[0]
            trains = bool(cfg.get("agents")) and (opts.agents is None or len(opts.agents) > 0)
            if progress:
                print("warm-up: compiling the simulator if numba's cache is empty (minutes on a fresh clone)",
                      file=sys.stderr, flush=True)  # fmt: skip
            warm_up(cfg["env_id"], base_scenario(cfg, first), scenario_env_kwargs(cfg, opts, first, "train"),
                    vector=trains)  # fmt: skip
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
    cmd = command or invocation("experiments.reproduce", None)
    runtimes = clock.stop()
    write_readme(out, cfg, opts, cmd, runtimes, run_dir, backend, revisions=clock.revisions)
    return {
        "markdown": md,
        "summary": summary,
        "improvement": improvement,
        "chosen": chosen,
        "figures": fig_paths,
        "runtime_s": time.perf_counter() - t0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = table_parser(
        "experiments.reproduce",
        "Reproduce a results table (calibrated baselines vs trained agents, 95% bootstrap CIs).",
        "tiny training budgets and 3 evaluation seeds",
    )
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
            command=invocation("experiments.reproduce", argv),
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
