"""Results tables: their configs (``experiments/configs/tables/*.yaml``), run options and CSV files.

What :mod:`experiments.reproduce` (which runs a table) and :mod:`experiments.plot` (which draws its
figures, also from the CSV files of an earlier run) both need: loading and validating a table config,
the seeds / scenarios / budgets of a run (:class:`Options`), the gym.make keywords of a scenario, the
grouping of evaluation rows into runs per policy (:class:`PolicyRuns`), and reading and writing the
table's CSV files. This module imports neither of them.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import envs
from envs.sim.config import deep_merge, shipped_scenarios
from envs.sim.config_workload import TRACE_FORMAT_OF_SUFFIX, TRACE_FORMATS
from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail

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
SCENARIO_KEYS = ("scenario", "trace", "split", "env_kwargs", "train_env_kwargs", "eval_env_kwargs")
BASELINE_KEYS = ("name", "spec", "sweep", "select", "env_kwargs", "scenarios")
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
        if (sc or {}).get("scenario") is not None:
            check_choice(f"{where}.scenarios.{s}.scenario", sc["scenario"], shipped_scenarios())
        if (sc or {}).get("trace") is not None:
            check_choice(f"{where}.scenarios.{s}.trace", sc["trace"], TRACE_FORMATS)
    for s in cfg["default_scenarios"]:
        check_choice(f"{where}.default_scenarios", s, list(cfg["scenarios"]))
    for i, b in enumerate(cfg["baselines"]):
        check_keys(f"{where}.baselines[{i}]", b, BASELINE_KEYS, required=("name", "spec"))
        sweep = b.get("sweep") or {}
        if not isinstance(sweep, Mapping) or any(
            not isinstance(v, (list, tuple)) or not v for v in sweep.values()
        ):
            raise fail(
                f"{where}.baselines[{i}].sweep", sweep, "must map parameters to non-empty lists of values"
            )
        for s in b.get("scenarios") or ():
            check_choice(f"{where}.baselines[{i}].scenarios", s, list(cfg["scenarios"]))
        sel = b.get("select", "best")
        if len(sweep) > 1 and sel == "mean_load":
            raise fail(f"{where}.baselines[{i}].select", sel, "sweeps one parameter (a replica count)")
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


def default_dirs(table: str | Path, quick: bool = False) -> tuple[Path, Path]:
    """Default folders: ``results/<table>[-quick]``, ``runs/reproduce/<table>[-quick]``."""
    name = Path(table).stem
    suffix = "-quick" if quick else ""
    return Path(f"results/{name}{suffix}"), Path(f"runs/reproduce/{name}{suffix}")


@dataclass(frozen=True)
class Options:
    """What to run: the table's defaults, narrowed or shrunk by the command line."""

    scenarios: tuple[str, ...]
    eval_seeds: tuple[int, ...]
    calibration_seeds: tuple[int, ...]
    n_agent_seeds: int
    total_timesteps: int | None = None  # None: each agent's own budget
    quick: bool = False
    trace: Mapping[str, str] = field(default_factory=dict)  # trace format -> file (``trace_files``)
    scenario_env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    agents: tuple[str, ...] | None = None  # None: every agent of the table


def resolve_options(
    cfg: Mapping[str, Any],
    *,
    quick: bool = False,
    seeds: int | None = None,
    scenarios: Sequence[str] | None = None,
    trace: str | Sequence[str] | Mapping[str, str] | None = None,
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
    files = trace_files(trace)
    if not scenarios:
        # A trace row needs its trace file; without it the default list skips the row.
        names = [s for s in names if (cfg["scenarios"][s] or {}).get("trace") in (None, *files)]
    for s in names:
        fmt = (cfg["scenarios"][s] or {}).get("trace")
        if fmt is not None and fmt not in files:
            raise fail("trace", sorted(files.values()) or None,
                       f"scenario {s!r} replays a {fmt} trace: give its file with --trace")  # fmt: skip
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
        trace=files,
        scenario_env_kwargs=dict(q.get("scenario_env_kwargs", {})),
        agents=None if agents is None else tuple(agents),
    )


def trace_files(trace: str | Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """The trace files of a run by format (``azure``, ``mooncake``): given as paths, each one's format
    comes from its extension (``.csv`` Azure, ``.jsonl`` Mooncake), as a scenario's
    ``workload.arrival.format`` does; at most one file per format."""
    if trace is None:
        return {}
    if isinstance(trace, Mapping):
        for fmt in trace:
            check_choice("trace", fmt, TRACE_FORMATS)
        return {str(k): str(v) for k, v in trace.items()}
    files: dict[str, str] = {}
    for path in [trace] if isinstance(trace, (str, Path)) else list(trace):
        fmt = TRACE_FORMAT_OF_SUFFIX.get(Path(path).suffix.lower())
        if fmt is None:
            raise fail("trace", str(path), "must end in .csv (an Azure trace) or .jsonl (a Mooncake trace)")
        if fmt in files:
            raise fail("trace", [files[fmt], str(path)], f"name two {fmt} traces; give one per format")
        files[fmt] = str(path)
    return files


def base_scenario(cfg: Mapping[str, Any], scenario: str) -> str:
    """The shipped scenario a table row is made from: its ``scenario`` key, else the row's own name (a
    row such as ``azure-conv-pd`` is ``azure-conv`` with its ``env_kwargs``)."""
    return (cfg["scenarios"][scenario] or {}).get("scenario", scenario)


def scenario_env_kwargs(cfg: Mapping[str, Any], opts: Options, scenario: str, split: str) -> dict[str, Any]:
    """gym.make keywords of a scenario for the ``train`` (calibration + training) or ``eval`` split: the
    row's ``env_kwargs``, then its split's, then what ``--quick`` sets."""
    sc = cfg["scenarios"][scenario] or {}
    kw = deep_merge(sc.get("env_kwargs") or {}, sc.get(f"{split}_env_kwargs") or {})
    kw = deep_merge(kw, dict(opts.scenario_env_kwargs))  # quick wins
    if sc.get("trace"):
        kw = deep_merge(kw, {"workload": {"arrival": {"path": str(opts.trace[sc["trace"]])}}})
    return kw


def spec_string(spec: Mapping[str, Any]) -> str:
    """A baseline spec as the YAML flow mapping :func:`experiments.evaluate.make_policy` parses."""
    return yaml.safe_dump(dict(spec), default_flow_style=True, sort_keys=True).strip()


def selected_agents(cfg: Mapping[str, Any], opts: Options) -> list[Mapping[str, Any]]:
    """The table's agents, narrowed to ``opts.agents`` when given."""
    return [a for a in cfg.get("agents", []) if opts.agents is None or a["name"] in opts.agents]


def value_str(v: Any) -> str:
    """A sweep value as it appears in cell labels and tables (``4``, ``0.6``; a point of a sweep over
    several parameters, a tuple: ``2,0.25``)."""
    if isinstance(v, tuple):
        return ",".join(value_str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def sweep_points(b: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A baseline's calibration sweep as ``(param, values)``: its one parameter and its values, or, for a
    sweep over several parameters, their names joined by commas and every combination (tuples, the
    first parameter varying slowest: the Cartesian grid a design-space search runs)."""
    sweep = b.get("sweep") or {}
    if len(sweep) == 1:
        ((param, values),) = sweep.items()
        return param, list(values)
    return ",".join(sweep), list(itertools.product(*sweep.values()))


def baselines_on(cfg: Mapping[str, Any], scenario: str) -> list[Mapping[str, Any]]:
    """The baselines that run on table row ``scenario``: those whose ``scenarios`` list names it, or
    that have none (they run on every row)."""
    return [b for b in cfg["baselines"] if not b.get("scenarios") or scenario in b["scenarios"]]


def with_params(spec: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with sweep ``params`` set; a dotted name sets a nested key (``prefill.target`` of a
    ``per_pool`` scaler)."""
    out = copy.deepcopy(dict(spec))
    for name, value in params.items():
        *path, key = name.split(".")
        node = out
        for part in path:
            if not isinstance(node.get(part), Mapping):
                raise ConfigError(f"sweep: {name!r} names no mapping {part!r} in the spec {dict(spec)!r}")
            node[part] = dict(node[part])
            node = node[part]
        node[key] = value
    return out


def point_params(b: Mapping[str, Any], value: Any) -> dict[str, Any]:
    """``{parameter: value}`` of a sweep point of baseline ``b`` (see :func:`sweep_points`)."""
    sweep = b.get("sweep") or {}
    if len(sweep) == 1:
        return {next(iter(sweep)): value}
    return dict(zip(sweep, value, strict=True))


# ---------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class PolicyRuns:
    """The runs of one policy on one scenario: one value per run for every KPI.

    ``by_episode`` holds the same scores per run and evaluation episode, shape ``(runs, episodes)``
    with the episodes in the order of ``episode_seeds`` (a baseline: one run, its episodes; an
    agent: one row per training seed), for comparisons paired by episode; empty when the runs were
    not all scored on the same episodes.
    """

    scenario: str
    policy: str
    kind: str  # "baseline" | "agent"
    param: str
    runs: Mapping[str, np.ndarray]
    by_episode: Mapping[str, np.ndarray] = field(default_factory=dict)
    episode_seeds: tuple[int, ...] = ()


def policy_runs(
    cfg: Mapping[str, Any], opts: Options, rows: Sequence[Mapping[str, Any]], chosen
) -> list[PolicyRuns]:
    """Group evaluation rows: a baseline's run is an episode, an agent's run a training seed (its mean)."""
    keys = [k["key"] for k in cfg["kpis"]]
    out = []
    for s in opts.scenarios:
        for b in baselines_on(cfg, s):
            rs = sorted(
                (r for r in rows if r["label"].startswith(f"eval|{s}|{b['name']}|")), key=lambda r: r["seed"]
            )
            chosen_params = point_params(b, chosen[(s, b["name"])]) if b.get("sweep") else {}
            param = ", ".join(f"{p}={value_str(v)}" for p, v in chosen_params.items())
            runs = {k: np.array([float(r[k]) for r in rs if k in r]) for k in keys}
            out.append(PolicyRuns(s, b["name"], "baseline", param, runs, *_by_episode([rs], keys)))
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
            per_run = [rs for _, rs in sorted(by_seed.items())]
            out.append(PolicyRuns(s, a["name"], "agent", f"{steps} steps", runs, *_by_episode(per_run, keys)))
    return out


def _episode_seed(r: Mapping[str, Any]) -> int:
    # a baseline's evaluation cell is one episode: its seed is the episode's
    return int(r["episode_seed"] if "episode_seed" in r else r["seed"])


def _by_episode(
    per_run: Sequence[Sequence[Mapping[str, Any]]], keys: Sequence[str]
) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """``({kpi: scores (runs, episodes)}, episode seeds)`` of runs' evaluation rows when every run was
    scored once on each of the same episodes (and has the KPI); else ``({}, ())``."""
    if not per_run or not per_run[0]:
        return {}, ()
    seeds = tuple(sorted(_episode_seed(r) for r in per_run[0]))
    if len(set(seeds)) != len(seeds) or any(
        tuple(sorted(_episode_seed(r) for r in rs)) != seeds for rs in per_run
    ):
        return {}, ()
    out = {}
    for k in keys:
        if all(k in r for rs in per_run for r in rs):
            out[k] = np.array([[float(r[k]) for r in sorted(rs, key=_episode_seed)] for rs in per_run])
    return out, seeds


def table_parser(module: str, description: str, quick_help: str) -> argparse.ArgumentParser:
    """The argument parser of a table script (``python -m <module>``): its positional ``table`` (a
    shipped name or a YAML path) and ``--quick``; the script adds the rest."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    ap.add_argument("table", help=f"table name ({', '.join(table_names())}) or a table YAML path")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    return ap


def invocation(module: str, argv: Sequence[str] | None) -> str:
    """The command line that ran ``python -m <module>`` with ``argv`` (default: this process's), as a
    table's README records it."""
    return shlex.join(["python", "-m", module, *(argv if argv is not None else sys.argv[1:])])


#: ``trace`` of :func:`runs_from_results` for a caller that builds no env (statistics, bar charts)
STATISTICS_ONLY = {fmt: "(unused)" for fmt in TRACE_FORMATS}


def runs_from_results(
    cfg: Mapping[str, Any],
    results: Path,
    *,
    quick: bool = False,
    trace: str | Sequence[str] | Mapping[str, str] | None = None,
    scenarios: Sequence[str] | None = None,
    total_timesteps: int | None = None,
) -> tuple[Options, list[dict[str, Any]], dict[tuple[str, str], Any], list[PolicyRuns]]:
    """``(options, episode rows, chosen sweep values, runs per policy)`` of a reproduced table's output
    folder (its ``episodes.csv`` and ``sweep.csv``), without rerunning anything.

    Scenarios, agents and evaluation seeds are those of ``episodes.csv`` (``scenarios`` narrows them);
    ``quick`` and ``total_timesteps`` must be what the table was reproduced with, and so must
    ``trace`` when the caller builds envs (:data:`STATISTICS_ONLY` stands in for the trace files of
    one that does not). Episodes made on another env id than the config names are an error."""
    results = Path(results)
    rows = read_episodes(results / "episodes.csv")
    labels = [str(r.get("label", "")).split("|") for r in rows]
    present = {lab[1] for lab in labels if len(lab) > 1 and lab[0] in ("eval", "train")}
    if not present:
        raise ConfigError(f"{results / 'episodes.csv'}: holds no evaluation rows")
    made_on = sorted({str(r["env_id"]) for r in rows if "env_id" in r})
    if made_on and made_on != [cfg["env_id"]]:
        raise ConfigError(
            f"{results / 'episodes.csv'}: made on {', '.join(made_on)}, but the table config {cfg['name']!r} "
            f"now names {cfg['env_id']}: reproduce the table, or pass the config it was made with (a YAML path)"
        )
    for s in scenarios or ():
        check_choice("scenarios", s, sorted(present))
    names = [s for s in cfg["scenarios"] if s in present and (not scenarios or s in scenarios)]
    agents = [
        a["name"]
        for a in cfg["agents"]
        if any(lab[0] == "train" and lab[2:3] == [a["name"]] for lab in labels)
    ]
    n_seeds = len({r["seed"] for r, lab in zip(rows, labels, strict=True) if lab[0] == "eval"})
    opts = resolve_options(cfg, quick=quick, seeds=max(n_seeds, 1), scenarios=names, trace=trace, agents=agents,
                           total_timesteps=total_timesteps)  # fmt: skip
    chosen = read_chosen(cfg, results / "sweep.csv")
    for s in opts.scenarios:
        for b in baselines_on(cfg, s):
            if b.get("sweep") and (s, b["name"]) not in chosen:
                raise ConfigError(f"{results / 'sweep.csv'}: no chosen value of {b['name']} on {s}")
    return opts, rows, chosen, policy_runs(cfg, opts, rows, chosen)


def agent_dirs(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """``{train label: run folder}`` of the trained agents (``run_dir/agents/<cell key>``, as the grid writes)."""
    return {
        r["label"]: run_dir / "agents" / r["key"]
        for r in rows
        if r["label"].startswith("train|") and "key" in r
    }


# ---------------------------------------------------------------------------------------------- CSV files


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Rows to CSV: the union of their keys as columns (first-seen order); dicts and lists as JSON."""
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


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file from :func:`write_csv`, as strings; empty cells (keys a row lacked) dropped."""
    path = Path(path)
    if not path.exists():
        raise fail("csv", str(path), "does not exist (reproduce the table first)")
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]


def read_episodes(path: Path) -> list[dict[str, Any]]:
    """``episodes.csv`` of a reproduced table: one row per evaluation episode, seeds as integers."""
    rows: list[dict[str, Any]] = read_csv(path)
    for r in rows:
        for k in ("seed", "episode_seed"):
            if k in r:
                r[k] = int(r[k])
    return rows


def read_chosen(cfg: Mapping[str, Any], path: Path) -> dict[tuple[str, str], Any]:
    """``{(scenario, baseline): chosen sweep value}`` from a table's ``sweep.csv``, values as in the config.

    A table none of whose baselines sweeps writes no ``sweep.csv``: then ``{}``.
    """
    path = Path(path)
    if not path.exists():
        return {}
    sweeps = {b["name"]: dict([sweep_points(b)]) for b in cfg["baselines"] if b.get("sweep")}
    chosen: dict[tuple[str, str], Any] = {}
    for r in read_csv(path):
        if r.get("chosen") != "True":
            continue
        values = sweeps.get(r["baseline"], {}).get(r["param"])
        if values is None:
            raise fail(
                f"{path.name}: baseline {r['baseline']}", r["param"], "is not a swept parameter of the table"
            )
        match = [v for v in values if str(v) == r["value"] or value_str(v) == r["value"]]
        if not match:
            raise fail(f"{path.name}: {r['baseline']}.{r['param']}", r["value"], f"is not one of {values}")
        chosen[(r["scenario"], r["baseline"])] = match[0]
    return chosen
