"""What a reproduced table reports: the summary and improvement rows, the markdown table and the README.

:func:`summary_rows` turns each policy's runs into mean and IQM with stratified-bootstrap CIs per KPI
(:mod:`experiments.stats`); :func:`improvement_rows` gives each agent's probability of improvement
over the best calibrated baseline and the difference of means, with a verdict that reads both
intervals; :func:`markdown_table` and :func:`write_readme` write ``table.md`` and the table's
README. :mod:`experiments.reproduce` runs the cells and calls these; ``python -m experiments.report``
(:func:`report_from_csv`) recomputes a reproduced table's statistics from its CSV files.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from envs.sim.errors import ConfigError
from experiments import stats, tables
from experiments.tables import Options, PolicyRuns, selected_agents

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
    """Per scenario and agent: P(agent > best baseline) on ``select_by`` and the mean difference, with CIs
    (paired by evaluation episode where the runs allow it: :func:`compare`)."""
    metric = cfg["select_by"]
    out = []
    for s in dict.fromkeys(g.scenario for g in groups):
        base = [g for g in groups if g.scenario == s and g.kind == "baseline" and len(g.runs[metric])]
        if not base:
            continue
        best = max(base, key=lambda g: float(np.mean(g.runs[metric])))
        for a in (g for g in groups if g.scenario == s and g.kind == "agent" and len(g.runs[metric])):
            against = {g.policy: compare(a, g, metric) for g in base}  # each bootstrap once
            poi, diff, paired = against[best.policy]
            losses = [p for p, (p_imp, _, _) in against.items() if p_imp.high < 0.5]
            out.append(
                {
                    "scenario": s,
                    "agent": a.policy,
                    "best_baseline": best.policy,
                    "best_baseline_param": best.param,
                    "metric": metric,
                    "paired": paired,
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


def compare(a: PolicyRuns, b: PolicyRuns, metric: str) -> tuple[stats.Estimate, stats.Estimate, bool]:
    """``(P(a > b), mean(a) - mean(b), paired)`` on ``metric``, each estimate with a 95% CI.

    Paired by evaluation episode (:func:`experiments.stats.paired_comparison`) when both policies'
    runs were scored on the same episodes, as a table's are; otherwise unpaired (runs resampled
    independently: :func:`experiments.stats.probability_of_improvement` and a bootstrap of the
    difference of means).
    """
    xa, xb = a.by_episode.get(metric), b.by_episode.get(metric)
    if xa is not None and xb is not None and a.episode_seeds == b.episode_seeds:
        res = stats.paired_comparison(xa, xb)
        return res.p_improvement, res.difference, True
    poi = stats.probability_of_improvement(a.runs[metric], b.runs[metric])
    return poi, _diff_ci(a.runs[metric], b.runs[metric]), False


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
        f"seeds {list(opts.calibration_seeds)}. An agent is compared with a baseline on the same evaluation "
        f"episodes (paired): P(improvement) is how often a training seed's agent beats the baseline on an "
        f"episode, and the CIs of the comparisons resample training seeds and episodes (multiway bootstrap)."
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
                f"on {r['metric']}{'' if r.get('paired', True) else ' (unpaired: not all on the same episodes)'}: "
                f"P(improvement) = {_fmt_ci(r['poi'], r['poi_low'], r['poi_high'], '.2f')}, "
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


def revision_line(revisions: Sequence[str | None], end: str | None) -> str:
    """The README's git revision: ``end`` (HEAD when the table was written) when every invocation
    started there, else the revisions the invocations started at (what ran) and ``end``."""
    started = list(dict.fromkeys(r for r in revisions if r))  # distinct, in order
    dirty = any(r.endswith("-dirty") for r in [*started, end or ""])
    note = " (tracked files had uncommitted changes: the numbers may not match that commit)" if dirty else ""
    if not started or started == [end]:
        return f"`{end}`{note}" if end is not None else "unknown (not run from a git checkout)"
    names = ", ".join(f"`{r}`" for r in started)
    what = "the run started there" if len(started) == 1 else "the revisions its invocations started at"
    return f"{names} ({what}; HEAD was `{end}` when it ended){note}"


def write_readme(
    out: Path,
    cfg: Mapping[str, Any],
    opts: Options,
    command: str,
    runtimes_s: Sequence[float],
    run_dir: Path,
    backend: str,
    revisions: Sequence[str | None] = (),
) -> None:
    """``out/README.md``: what made the table (command, git SHA, runtime, seeds, budgets) and the files.

    ``revisions``: the git revision each invocation on the run folder started at (None where not
    recorded); the README names them when they differ from the revision at the end."""
    from agents.sb3 import git_sha

    sha_line = revision_line(revisions, git_sha())
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


def report_from_csv(
    table: str | Path | Mapping[str, Any],
    results: str | Path,
    *,
    quick: bool = False,
    total_timesteps: int | None = None,
    out: str | Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Recompute a reproduced table's statistics from its ``episodes.csv`` and ``sweep.csv`` and write
    ``table.md``, ``table.csv`` and ``improvement.csv`` to ``out`` (default: the results folder).

    Nothing is simulated or trained: this is how a table follows a change of the statistics. The
    figures are left as they are; so is the README (command, revision and runtime of the run), but
    for one line naming ``command`` and the revision that recomputed the statistics, when given."""
    cfg = tables.load_table(table)
    results = Path(results)
    opts, _, _, groups = tables.runs_from_results(
        cfg, results, quick=quick, trace=tables.STATISTICS_ONLY, total_timesteps=total_timesteps
    )
    summary = summary_rows(cfg, groups)
    improvement = improvement_rows(cfg, groups)
    md = markdown_table(cfg, opts, summary, improvement)
    dest = Path(out) if out is not None else results
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "table.md").write_text(md)
    tables.write_csv(summary, dest / "table.csv")
    if improvement:
        tables.write_csv(improvement, dest / "improvement.csv")
    if command is not None and (dest / "README.md").exists():
        note_recomputed(dest / "README.md", command)
    return {"markdown": md, "summary": summary, "improvement": improvement}


RECOMPUTED = "- Statistics recomputed from `episodes.csv`"


def note_recomputed(readme: Path, command: str) -> None:
    """Say in a table's README (below its ``Config`` line) that its statistics were recomputed, by
    which command and at which revision; replaces an earlier such line."""
    from agents.sb3 import git_sha

    line = f"{RECOMPUTED} by `{command}` at revision `{git_sha()}` (nothing rerun)"
    lines = [ln for ln in readme.read_text().splitlines() if not ln.startswith(RECOMPUTED)]
    at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("- Config:")), len(lines))
    lines.insert(at, line)
    readme.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = tables.table_parser(
        "experiments.report",
        "Recompute a reproduced table's statistics (table.md, table.csv, improvement.csv) from its "
        "episodes.csv and sweep.csv; nothing is rerun.",
        "the table was reproduced with --quick",
    )
    ap.add_argument("--total-timesteps", type=int, default=None,
                    help="the training budget the table was reproduced with, if it was overridden (the agents' rows name it)")  # fmt: skip
    ap.add_argument("--results", default=None,
                    help="the reproduced table's output folder (default results/<table>[-quick])")  # fmt: skip
    ap.add_argument("--out", default=None, help="where to write (default: the results folder)")
    args = ap.parse_args(argv)
    results = Path(args.results or tables.default_dirs(args.table, args.quick)[0])
    try:
        res = report_from_csv(
            args.table,
            results,
            quick=args.quick,
            total_timesteps=args.total_timesteps,
            out=args.out,
            command=tables.invocation("experiments.report", argv),
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
