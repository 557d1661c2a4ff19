"""Figures for the reproduced tables: one episode per policy, TTFT CDFs, cost-vs-SLO trade-offs, KPI bars.

:func:`table_figures` is what :mod:`experiments.reproduce` calls; the other functions draw one
figure each from plain data (per-run KPI arrays, or per-interval traces recorded by
:func:`record_episode`) and can be used on their own. Error bars are the same 95% bootstrap CIs
as the tables (:func:`experiments.stats.mean_ci`). Figures are written with the non-interactive
Agg backend, so no display is needed. The command line redraws a reproduced table's figures from
its ``episodes.csv`` and ``sweep.csv`` (and its trained agents, for the episode figures) without
rerunning the grid; give it the table and ``--quick`` as given to :mod:`experiments.reproduce`:

    python -m experiments.plot autoscale --quick
    python -m experiments.plot autoscale --quick --figures kpi_bars tradeoff --out /tmp/figs
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from agents import Policy  # noqa: E402
from envs.sim.errors import ConfigError, check_choice  # noqa: E402
from experiments import stats, tables  # noqa: E402

DPI = 110


def record_episode(
    env_id: str, policy: Policy, scenario: str, seed: int, env_kwargs: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """One episode of ``policy`` (deterministic actions); per-step arrays of the env's step KPIs (and Autoscale's interval history).

    Keys: ``t_s`` (simulated time at each step end), every numeric ``info["kpi"]`` key, and for
    Autoscale-v1 ``arrival_rate_per_s``, ``capacity_rps``, ``replicas_ready``, ``replicas_loading``
    and ``ttft_p99_s`` per control interval (summed / maxed over models).
    """
    env = gym.make(env_id, scenario=scenario, **dict(env_kwargs or {}))
    try:
        base = env.unwrapped
        obs, _ = env.reset(seed=int(seed))
        policy.reset(seed=int(seed))
        steps: list[dict[str, float]] = []
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy.predict(obs, base, deterministic=True))
            steps.append({k: float(v) for k, v in info.get("kpi", {}).items() if np.isscalar(v)})
            done = terminated or truncated
        keys = sorted({k for s in steps for k in s})
        out = {k: np.array([s.get(k, np.nan) for s in steps]) for k in keys}
        hist = getattr(base, "_hist", None)  # Autoscale-v1 keeps what render() draws
        if hist is not None:
            n = len(steps) + 1
            roles = np.array([d.role for d in base.scenario.models])
            out["t_s"] = hist["t"][1:n]
            # both pools of a disaggregated model see its arrivals: count them once
            out["arrival_rate_per_s"] = hist["arrival"][1:n][:, roles != "decode"].sum(axis=1)
            # saturation capacity is an aggregated replica's; a pool's has no such number
            agg = roles == "aggregated"
            out["capacity_rps"] = (
                hist["capacity"][1:n][:, agg].sum(axis=1) if agg.any() else np.full(n - 1, np.nan)
            )
            out["replicas_ready"] = hist["ready"][1:n].sum(axis=1)
            out["replicas_loading"] = hist["loading"][1:n].sum(axis=1)
            if not agg.all():
                live = hist["ready"][1:n] + hist["loading"][1:n]
                out["replicas_prefill"] = live[:, roles == "prefill"].sum(axis=1)
                out["replicas_decode"] = live[:, roles == "decode"].sum(axis=1)
            out["ttft_p99_s"] = hist["ttft_p99"][1:n].max(axis=1)
            out["ttft_target_s"] = np.full(n - 1, float(base.ttft_target_s))
        else:
            out.setdefault("t_s", np.arange(1, len(steps) + 1, dtype=float))
        return out
    finally:
        env.close()


def plot_episode(traces: Mapping[str, Mapping[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """Load vs replicas and TTFT p99 over one episode, one line per policy (the same episode seed)."""
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    first = next(iter(traces.values()))
    t_min = first["t_s"] / 60.0
    axes[0].plot(t_min, first["arrival_rate_per_s"], color="k", lw=1.0, label="arrival rate")
    pools = "replicas_prefill" in first
    for k, (name, tr) in enumerate(traces.items()):
        tm = tr["t_s"] / 60.0
        c = f"C{k % 10}"
        if np.isfinite(tr["capacity_rps"]).any():
            axes[0].plot(tm, tr["capacity_rps"], color=c, lw=0.9, alpha=0.8, label=f"{name} capacity")
        if pools:  # a disaggregated model: each pool's replicas
            axes[1].step(tm, tr["replicas_prefill"], where="post", color=c, lw=1.0, label=f"{name} prefill")
            axes[1].step(
                tm, tr["replicas_decode"], where="post", color=c, ls="--", lw=1.0, label=f"{name} decode"
            )
        else:
            axes[1].step(
                tm, tr["replicas_ready"] + tr["replicas_loading"], where="post", color=c, lw=1.0, label=name
            )
        axes[2].plot(tm, np.maximum(tr["ttft_p99_s"], 1e-3), color=c, lw=0.8, label=name)
    axes[2].axhline(float(first["ttft_target_s"][0]), color="r", ls="--", lw=1, label="TTFT SLO")
    axes[0].set_ylabel("req/s")
    axes[0].set_title(
        "arrival rate (black)" + ("" if pools else " vs saturation capacity of READY replicas"), fontsize=9
    )
    axes[1].set_ylabel("replicas (ready+loading)")
    if pools:
        axes[1].set_title("replicas per pool: prefill (solid), decode (dashed)", fontsize=9)
    axes[2].set_ylabel("TTFT p99 per interval (s)")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("simulated time (min)")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_ttft_cdf(traces: Mapping[str, Mapping[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """Empirical CDF of the per-interval TTFT p99 over one episode, one curve per policy."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, tr in traces.items():
        x = np.sort(np.maximum(tr["ttft_p99_s"], 1e-3))
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=name)
    first = next(iter(traces.values()))
    if "ttft_target_s" in first:
        ax.axvline(float(first["ttft_target_s"][0]), color="r", ls="--", lw=1, label="TTFT SLO")
    ax.set_xscale("log")
    ax.set_xlabel("TTFT p99 of a control interval (s)")
    ax.set_ylabel("fraction of intervals")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _ci(x: np.ndarray) -> tuple[float, float, float]:
    if len(x) < 2:
        return float(np.mean(x)), 0.0, 0.0
    e = stats.mean_ci(x)
    return e.value, e.value - e.low, e.high - e.value


def plot_tradeoff(
    runs: Mapping[str, Mapping[str, np.ndarray]], x: str, y: str, path: Path, title: str = ""
) -> Path:
    """Mean ``y`` against mean ``x`` per policy with 95% CI error bars (``runs[policy][kpi]`` = per-run values)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, r in runs.items():
        if x not in r or y not in r or not len(r[x]):
            continue
        mx, lx, hx = _ci(r[x])
        my, ly, hy = _ci(r[y])
        ax.errorbar(mx, my, xerr=[[lx], [hx]], yerr=[[ly], [hy]], fmt="o", capsize=3, label=name)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_kpi_bars(
    runs: Mapping[str, Mapping[str, np.ndarray]], kpis: Sequence[str], path: Path, title: str = ""
) -> Path:
    """One panel per KPI: mean per policy with 95% CI error bars."""
    fig, axes = plt.subplots(1, len(kpis), figsize=(3.2 * len(kpis), 3.6), squeeze=False)
    names = list(runs)
    for ax, k in zip(axes[0], kpis, strict=True):
        vals = [_ci(runs[n][k]) if k in runs[n] and len(runs[n][k]) else (np.nan, 0, 0) for n in names]
        ax.bar(
            range(len(names)),
            [v[0] for v in vals],
            yerr=[[v[1] for v in vals], [v[2] for v in vals]],
            capsize=3,
            color=[f"C{i}" for i in range(len(names))],
        )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(k, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def table_figures(
    cfg: Mapping[str, Any],
    opts: tables.Options,
    groups: Sequence[tables.PolicyRuns],
    rows: Sequence[Mapping[str, Any]],
    chosen: Mapping[tuple[str, str], Any],
    agent_dirs: Mapping[str, Path],
    out: Path,
) -> list[Path]:
    """The figures a table config asks for, per scenario, into ``out``; the paths written."""
    from experiments.evaluate import make_policy

    paths: list[Path] = []
    figs = cfg.get("figures", [])
    kpis = [k["key"] for k in cfg["kpis"]]
    for s in opts.scenarios:
        runs = {g.policy: g.runs for g in groups if g.scenario == s}
        if "tradeoff" in figs:
            t = cfg.get("tradeoff") or {"x": "cost_usd", "y": "slo_attainment"}
            paths.append(
                plot_tradeoff(
                    runs, t["x"], t["y"], out / f"tradeoff_{s}.png", f"{cfg['name']} / {s}: mean, 95% CI"
                )
            )
        if "kpi_bars" in figs:
            paths.append(
                plot_kpi_bars(runs, kpis, out / f"kpis_{s}.png", f"{cfg['name']} / {s}: mean, 95% CI")
            )
        if "episode" in figs or "ttft_cdf" in figs:
            seed = int(opts.eval_seeds[0])
            ev_kw = tables.scenario_env_kwargs(cfg, opts, s, "eval")
            traces = {}
            for b in tables.baselines_on(cfg, s):
                spec = dict(b["spec"])
                if b.get("sweep"):
                    spec = tables.with_params(spec, tables.point_params(b, chosen[(s, b["name"])]))
                pol = make_policy(cfg["env_id"], tables.spec_string(spec))
                traces[b["name"]] = record_episode(
                    cfg["env_id"],
                    pol,
                    tables.base_scenario(cfg, s),
                    seed,
                    {**ev_kw, **(b.get("env_kwargs") or {})},
                )
            for a in cfg.get("agents", []):
                label = f"train|{s}|{a['name']}|{int(cfg['train_seed_base'])}"
                if label in agent_dirs and agent_dirs[label].exists():
                    from agents.sb3 import load_agent

                    traces[a["name"]] = record_episode(
                        cfg["env_id"],
                        load_agent(agent_dirs[label]),
                        tables.base_scenario(cfg, s),
                        seed,
                        {**ev_kw, **(a.get("env_kwargs") or {})},
                    )
            if "episode" in figs:
                paths.append(
                    plot_episode(
                        traces, out / f"episode_{s}.png", f"{cfg['name']} / {s}: evaluation seed {seed}"
                    )
                )
            if "ttft_cdf" in figs:
                paths.append(
                    plot_ttft_cdf(
                        traces, out / f"ttft_cdf_{s}.png", f"{cfg['name']} / {s}: evaluation seed {seed}"
                    )
                )
    return paths


# ---------------------------------------------------------------------------------------------- main


def figures_from_csv(
    table: str | Path | Mapping[str, Any],
    results: str | Path,
    run_dir: str | Path | None = None,
    *,
    quick: bool = False,
    trace: str | Sequence[str] | Mapping[str, str] | None = None,
    scenarios: Sequence[str] | None = None,
    figures: Sequence[str] | None = None,
    out: str | Path | None = None,
) -> list[Path]:
    """Redraw a reproduced table's figures from ``results/episodes.csv`` and ``results/sweep.csv``.

    Scenarios, agents and evaluation seeds are those of ``episodes.csv`` (``scenarios`` narrows them);
    ``quick`` and ``trace`` must be what the table was reproduced with (the episode figures rerun one
    evaluation episode per policy with the same gym.make keywords; the other figures need no trace).
    ``figures`` (default: the table's) go to ``out`` (default ``results``); trained agents are read
    from ``run_dir/agents`` when it exists.
    """
    cfg = tables.load_table(table)
    if figures is not None:
        for f in figures:
            check_choice("figures", f, tables.FIGURES)
        cfg = {**cfg, "figures": list(figures)}
    if trace is None and not {"episode", "ttft_cdf"} & set(cfg["figures"]):
        # only the episode figures build envs, so only they need the replayed trace files
        trace = tables.STATISTICS_ONLY
    results = Path(results)
    opts, rows, chosen, groups = tables.runs_from_results(
        cfg, results, quick=quick, trace=trace, scenarios=scenarios
    )
    dirs = tables.agent_dirs(Path(run_dir), rows) if run_dir is not None else {}
    out = Path(out) if out is not None else results
    out.mkdir(parents=True, exist_ok=True)
    return table_figures(cfg, opts, groups, rows, chosen, dirs, out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = tables.table_parser(
        "experiments.plot",
        "Redraw the figures of a reproduced table from its episodes.csv and sweep.csv "
        "(no grid is rerun; the episode figures replay one evaluation episode per policy).",
        "the table was reproduced with --quick (its default folders and quick env settings)",
    )
    ap.add_argument(
        "--trace",
        nargs="+",
        default=None,
        metavar="FILE",
        help="trace files of the trace-replay rows, one per format: an Azure CSV (.csv) for the azure-conv "
        "rows, a Mooncake JSONL (.jsonl) for the mooncake-conv rows",
    )
    ap.add_argument("--scenarios", nargs="+", default=None, help="only these scenarios of episodes.csv")
    ap.add_argument("--figures", nargs="+", choices=tables.FIGURES, default=None, metavar="FIGURE",
                    help=f"which figures to draw, of {list(tables.FIGURES)} (default: the table's figures)")  # fmt: skip
    ap.add_argument("--results", default=None,
                    help="the reproduced table's output folder (default results/<table>[-quick])")  # fmt: skip
    ap.add_argument("--run-dir", default=None,
                    help="its grid run folder, for the trained agents (default runs/reproduce/<table>[-quick])")  # fmt: skip
    ap.add_argument("--out", default=None, help="folder for the figures (default: the results folder)")
    args = ap.parse_args(argv)
    default_results, default_run_dir = tables.default_dirs(args.table, args.quick)
    try:
        paths = figures_from_csv(
            args.table,
            Path(args.results or default_results),
            Path(args.run_dir or default_run_dir),
            quick=args.quick,
            trace=args.trace,
            scenarios=args.scenarios,
            figures=args.figures,
            out=args.out,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"figure: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
