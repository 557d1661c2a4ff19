"""Hyperparameter search for the SB3 agents: sample configurations, train and score each, keep the best.

A search is a YAML file (see ``experiments/configs/search/``): the algorithm, env id, scenario,
training budget, evaluation seeds and a ``space`` of hyperparameters, each with one distribution
(``loguniform: [lo, hi]``, ``uniform: [lo, hi]``, ``randint: [lo, hi]`` (hi excluded),
``choice: [...]`` or ``grid: [...]``; dotted keys reach nested values, e.g.
``policy_kwargs.net_arch``). Each trial trains with :func:`agents.sb3.train` (the sampled values
as hyperparameter overrides, over ``agents/hyperparams/<algo>.yaml`` and the file's fixed ``hp``)
into its own folder and scores the agent by its mean evaluation return over ``eval_seeds``. Every
trial uses the same training ``seed``, so trials differ only in their hyperparameters and a
trial is reproducible from its row. Trials run as Ray Tune trials (Tune's random / grid search,
``BasicVariantGenerator`` seeded with ``search_seed``; ``search: optuna`` when optuna is installed)
or one after another in this process (``--backend local``). The output folder gets::

    <out>/trials.csv              every trial: status, score, score_std, sampled values, run folder
    <out>/best_hyperparams.yaml   ``default`` + the env id's entry with the best values merged in
    <out>/search.json             the resolved search config
    <out>/ray_results/search/trial_<i>/agent/   the trial folders (Ray backend), beside Tune's state
    <out>/trials/trial_<i>/       the trial folders (local backend)

``best_hyperparams.yaml`` has the format of ``agents/hyperparams/<algo>.yaml``; train with it via
``python -m experiments.train ... --hyperparams <out>/best_hyperparams.yaml``.

    python -m experiments.tune_hparams --config experiments/configs/search/ppo_autoscale.yaml \\
        --trials 16 --budget 100000 --backend ray --ray-address auto --out runs/search-ppo-autoscale
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import inspect
import itertools
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import envs
from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail
from experiments.grid_ray import move_aside, start_ray, stop_ray

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")
SEARCHERS = ("random", "optuna")
BACKENDS = ("ray", "local")
EXPERIMENT = "search"
TRIALS_CSV = "trials.csv"
BEST_FILE = "best_hyperparams.yaml"


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a dotted key and its distribution."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def __post_init__(self) -> None:
        path = f"space.{self.key}"
        check_choice(f"{path} distribution", self.kind, DISTRIBUTIONS)
        if self.kind in ("choice", "grid"):
            if len(self.args) == 0:
                raise fail(f"{path}.{self.kind}", list(self.args), "must be a non-empty list")
            return
        if len(self.args) != 2:
            raise fail(f"{path}.{self.kind}", list(self.args), "must be [low, high]")
        lo = check_number(f"{path}.{self.kind}[0]", self.args[0], integer=self.kind == "randint")
        hi = check_number(f"{path}.{self.kind}[1]", self.args[1], integer=self.kind == "randint")
        if self.kind == "loguniform":
            check_number(f"{path}.loguniform[0]", lo, gt=0)
        if not hi > lo:
            raise fail(f"{path}.{self.kind}[1]", hi, f"must be > low ({lo})")

    def sample(self, rng: np.random.Generator) -> Any:
        """A value drawn with ``rng`` (the local backend's sampler; grid params are enumerated instead)."""
        if self.kind == "uniform":
            return float(rng.uniform(self.args[0], self.args[1]))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.args[0]), math.log(self.args[1]))))
        if self.kind == "randint":
            return int(rng.integers(self.args[0], self.args[1]))
        return copy.deepcopy(self.args[int(rng.integers(len(self.args)))])

    def tune_domain(self) -> Any:
        from ray import tune

        a = self.args
        return {
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "randint": lambda: tune.randint(int(a[0]), int(a[1])),
            "choice": lambda: tune.choice(list(a)),
            "grid": lambda: tune.grid_search(list(a)),
        }[self.kind]()


@dataclass(frozen=True)
class SearchConfig:
    """A hyperparameter search: what to train, how long, how to score it, and the space to sample."""

    algo: str
    env_id: str
    space: tuple[Param, ...]
    scenario: str = "default"
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    hp: Mapping[str, Any] = field(default_factory=dict)
    total_timesteps: int = 50_000
    eval_seeds: tuple[int, ...] = (10_000, 10_001, 10_002)
    seed: int = 0
    search_seed: int = 0
    trials: int = 8
    n_envs: int | None = None  # None: the hyperparameters' n_envs (agents.sb3.train)
    search: str = "random"

    def __post_init__(self) -> None:
        from agents.sb3 import _RESERVED, ALGOS, algo_class

        check_choice("algo", self.algo, ALGOS)
        check_choice("env_id", self.env_id, envs.ENV_IDS)
        if not isinstance(self.scenario, str):
            raise fail("scenario", self.scenario, "must be a shipped scenario name or a YAML path")
        for key in ("env_kwargs", "hp"):
            if not isinstance(getattr(self, key), Mapping):
                raise fail(key, getattr(self, key), "must be a mapping")
        check_number("total_timesteps", self.total_timesteps, gt=0, integer=True)
        if not isinstance(self.eval_seeds, tuple) or not self.eval_seeds:
            raise fail("eval_seeds", self.eval_seeds, "must be a non-empty list of integers")
        for i, s in enumerate(self.eval_seeds):
            check_number(f"eval_seeds[{i}]", s, ge=0, integer=True)
        check_number("seed", self.seed, ge=0, integer=True)
        check_number("search_seed", self.search_seed, ge=0, integer=True)
        check_number("trials", self.trials, ge=1, integer=True)
        if self.n_envs is not None:
            check_number("n_envs", self.n_envs, ge=1, integer=True)
        check_choice("search", self.search, SEARCHERS)
        if not self.space:
            raise fail("space", {}, "must name at least one hyperparameter")
        allowed = (set(inspect.signature(algo_class(self.algo).__init__).parameters) - _RESERVED) | {
            "vecnormalize"
        }
        keys = [p.key for p in self.space]
        for p in self.space:
            top = p.key.split(".")[0]
            if top not in allowed:
                raise ConfigError(
                    f"space.{p.key}: unknown {self.algo} hyperparameter (allowed: {sorted(allowed)})"
                )
            for other in keys:
                if other != p.key and other.startswith(p.key + "."):
                    raise fail(f"space.{other}", other, f"lies inside space.{p.key}, which is also searched")
        if self.search == "optuna":
            for p in self.space:
                if p.kind == "grid":
                    raise fail(
                        f"space.{p.key}", "grid", "cannot be enumerated by search: optuna; use `choice`"
                    )
                if p.kind == "choice" and any(isinstance(v, (list, dict)) for v in p.args):
                    raise fail(f"space.{p.key}.choice", list(p.args), "must hold scalars for search: optuna")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["space"] = {p.key: {p.kind: list(p.args)} for p in self.space}
        d["eval_seeds"] = list(self.eval_seeds)
        d["env_kwargs"], d["hp"] = dict(self.env_kwargs), dict(self.hp)
        return d


_CONFIG_KEYS = {f.name for f in dataclasses.fields(SearchConfig)}


def parse_space(raw: Any) -> tuple[Param, ...]:
    """``{key: {distribution: args}}`` -> params, with errors naming ``space.<key>``."""
    check_keys("space", raw, raw if isinstance(raw, Mapping) else ())
    out = []
    for key, spec in raw.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise fail("space", key, "keys must be hyperparameter names (dotted for nested values)")
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise fail(f"space.{key}", spec, f"must be a mapping with exactly one of {list(DISTRIBUTIONS)}")
        ((kind, args),) = spec.items()
        check_choice(f"space.{key}", kind, DISTRIBUTIONS)
        if not isinstance(args, list):
            raise fail(f"space.{key}.{kind}", args, "must be a list")
        out.append(Param(key, kind, tuple(args)))
    return tuple(out)


def search_config_from_dict(raw: Any) -> SearchConfig:
    """A :class:`SearchConfig` from a parsed YAML mapping; unknown keys are errors."""
    check_keys("", raw, _CONFIG_KEYS, required=("algo", "env_id", "space"))
    kw = dict(raw)
    kw["space"] = parse_space(kw["space"])
    if "eval_seeds" in kw:
        seeds = kw["eval_seeds"]
        if not isinstance(seeds, list):
            raise fail("eval_seeds", seeds, "must be a non-empty list of integers")
        kw["eval_seeds"] = tuple(seeds)
    for key in ("env_kwargs", "hp"):
        if key in kw and kw[key] is None:
            kw[key] = {}
        if key in kw and not isinstance(kw[key], Mapping):
            raise fail(key, kw[key], "must be a mapping")
    return SearchConfig(**kw)


def load_search_config(path: str | Path) -> SearchConfig:
    """Read and validate a search YAML file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise fail("config", str(path), f"is not valid YAML ({exc})") from None
    return search_config_from_dict(raw if raw is not None else {})


# ---------------------------------------------------------------------------------------------- trials


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"policy_kwargs.net_arch": [32]}`` -> ``{"policy_kwargs": {"net_arch": [32]}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _plain(value: Any) -> Any:
    """numpy scalars (Tune samples them) -> Python numbers, so YAML and JSON stay plain."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def trial_overrides(cfg: SearchConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameter overrides of a trial: the fixed ``hp``, then the sampled values."""
    from envs.sim.config import deep_merge

    return deep_merge(nest(cfg.hp), nest(_plain(dict(params))))


def run_trial(cfg: SearchConfig, params: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Train with ``params`` into ``run_dir`` and score: mean (and std) evaluation return over ``eval_seeds``."""
    from agents.sb3 import load_agent, train
    from experiments.evaluate import evaluate_policy

    train(
        cfg.env_id,
        cfg.algo,
        cfg.scenario,
        cfg.total_timesteps,
        cfg.seed,
        run_dir,
        n_envs=cfg.n_envs,
        overrides=trial_overrides(cfg, params),
        env_kwargs=dict(cfg.env_kwargs),
        checkpoint_freq=max(cfg.total_timesteps, 1),
        progress_bar=False,
        command=f"experiments.tune_hparams trial {json.dumps(_plain(dict(params)))}",
    )
    rows = evaluate_policy(
        cfg.env_id,
        load_agent(run_dir),
        cfg.scenario,
        seeds=cfg.eval_seeds,
        env_kwargs=dict(cfg.env_kwargs),
    )
    returns = [float(r["return"]) for r in rows]
    return {"score": float(np.mean(returns)), "score_std": float(np.std(returns)), "returns": returns}


def _ray_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    cfg = search_config_from_dict(config["search"])
    params = dict(config["hp"])
    result = run_trial(cfg, params, Path(tune.get_context().get_trial_dir()) / "agent")
    tune.report({"score": result["score"], "score_std": result["score_std"], "returns": result["returns"]})


def _local_param_sets(cfg: SearchConfig) -> list[dict[str, Any]]:
    """Grid params enumerated (cartesian product), the others sampled ``trials`` times per grid point."""
    rng = np.random.default_rng(cfg.search_seed)
    grid = [p for p in cfg.space if p.kind == "grid"]
    out = []
    for point in itertools.product(*[p.args for p in grid]) if grid else [()]:
        for _ in range(cfg.trials):
            params = {p.key: p.sample(rng) for p in cfg.space if p.kind != "grid"}
            params.update({p.key: copy.deepcopy(v) for p, v in zip(grid, point, strict=True)})
            out.append({p.key: params[p.key] for p in cfg.space})
    return out


def _run_local(cfg: SearchConfig, out: Path) -> list[dict[str, Any]]:
    rows = []
    for i, params in enumerate(_local_param_sets(cfg)):
        run_dir = out / "trials" / f"trial_{i:05d}"
        try:
            result = run_trial(cfg, params, run_dir)
        except Exception as exc:  # recorded like a failed Ray trial; the other trials still run
            rows.append(_row(f"trial_{i:05d}", f"error: {exc!r}"[:200], None, params, run_dir, out))
            continue
        rows.append(_row(f"trial_{i:05d}", "ok", result, params, run_dir, out))
    return rows


def _row(
    trial: str,
    status: str,
    result: Mapping[str, Any] | None,
    params: Mapping[str, Any],
    run_dir: Path,
    out: Path,
) -> dict[str, Any]:
    try:
        where = str(Path(run_dir).resolve().relative_to(out.resolve()))
    except ValueError:
        where = str(run_dir)
    return {
        "trial": trial,
        "status": status,
        "score": None if result is None else result.get("score"),
        "score_std": None if result is None else result.get("score_std"),
        "params": _plain(dict(params)),
        "run_dir": where,
    }


def _trial_dirname(trial: Any) -> str:
    """``trial_00003`` (Tune's trial id is ``<experiment id>_<index>``): short, ordered, no sampled values."""
    return "trial_" + str(trial.trial_id).rsplit("_", 1)[-1]


def _run_ray(
    cfg: SearchConfig, out: Path, ray_address: str | None, workers: int, max_retries: int
) -> list[dict]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        from ray import tune
        from ray.tune.search import BasicVariantGenerator
    except ImportError as exc:
        raise fail("backend", "ray", f"needs Ray Tune: pip install 'infergym[ray]' ({exc})") from None
    if cfg.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            # metric and mode come from TuneConfig; giving them here too is an error in Tune
            searcher: Any = OptunaSearch(seed=cfg.search_seed)
        except (ImportError, AssertionError) as exc:
            raise fail("search", "optuna", f"needs optuna installed ({exc})") from None
    else:
        searcher = BasicVariantGenerator(random_state=cfg.search_seed)

    started, temp_dir = start_ray(ray_address, workers)
    storage = (out / "ray_results").resolve()
    exp_dir = storage / EXPERIMENT
    try:
        # a search is not resumed: its sampler state would have to match; keep the old one aside
        move_aside(exp_dir)
        tuner = tune.Tuner(
            tune.with_resources(_ray_trainable, {"cpu": 1}),
            param_space={"search": cfg.to_dict(), "hp": {p.key: p.tune_domain() for p in cfg.space}},
            tune_config=tune.TuneConfig(
                metric="score",
                mode="max",
                num_samples=cfg.trials,
                search_alg=searcher,
                max_concurrent_trials=workers if not ray_address else None,
                reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                storage_path=str(storage),
                name=EXPERIMENT,
                failure_config=tune.FailureConfig(max_failures=max_retries),
                verbose=0,
            ),
        )
        results = tuner.fit()
        rows = []
        for res in results:
            params = (res.config or {}).get("hp", {})
            trial = Path(res.path).name
            if res.error is not None or "score" not in (res.metrics or {}):
                rows.append(_row(trial, f"error: {res.error!r}"[:200], None, params, Path(res.path), out))
            else:
                rows.append(_row(trial, "ok", res.metrics, params, Path(res.path) / "agent", out))
        # trial_<zero-padded index>: the name orders them as sampled
        rows.sort(key=lambda r: r["trial"])
        return rows
    finally:
        stop_ray(started, temp_dir)


# ---------------------------------------------------------------------------------------------- results


def best_hyperparams(cfg: SearchConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """A hyperparameter table like ``agents/hyperparams/<algo>.yaml``: the shipped ``default`` and the
    env id's shipped entry with the fixed ``hp`` and the best ``params`` merged in."""
    from agents.sb3 import HYPERPARAMS_DIR
    from envs.sim.config import deep_merge

    shipped = yaml.safe_load((HYPERPARAMS_DIR / f"{cfg.algo}.yaml").read_text()) or {}
    entry = deep_merge(shipped.get(cfg.env_id) or {}, trial_overrides(cfg, params))
    return {"default": copy.deepcopy(shipped["default"]), cfg.env_id: entry}


def hyperparams_file_overrides(path: str | Path, algo: str, env_id: str) -> dict[str, Any]:
    """Resolved hyperparameters of ``env_id`` in a table file (``default`` merged with the env id's entry).

    Given as ``overrides`` to :func:`agents.sb3.train` / :func:`agents.sb3.load_hyperparams`, they replace
    the shipped values key by key (a key the file lacks keeps its shipped value).
    """
    from agents.sb3 import load_hyperparams
    from envs.sim.config import deep_merge

    name = Path(path).name
    try:
        table = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise fail("hyperparams", str(path), f"is not valid YAML ({exc})") from None
    check_keys(name, table, {"default", *envs.ENV_IDS}, required=("default",))
    hp = deep_merge(table["default"] or {}, table.get(env_id) or {})
    load_hyperparams(algo, env_id, hp)  # validates the keys against the algorithm
    return hp


def write_trials_csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], path: Path) -> None:
    """One row per trial: trial, status, score, score_std, one column per searched key (JSON for lists)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trial", "status", "score", "score_std", *keys, "run_dir"])
        for r in rows:
            vals = [r["params"].get(k) for k in keys]
            w.writerow(
                [r["trial"], r["status"], r["score"], r["score_std"]]
                + [json.dumps(v) if isinstance(v, (list, dict)) else v for v in vals]
                + [r["run_dir"]]
            )


def run_search(
    cfg: SearchConfig,
    out: str | Path,
    *,
    backend: str = "ray",
    ray_address: str | None = None,
    workers: int = 2,
    max_retries: int = 0,
) -> dict[str, Any]:
    """Run every trial, write ``trials.csv``, ``best_hyperparams.yaml`` and ``search.json`` under ``out``.

    Returns ``{"best": row, "rows": [row, ...], "best_file": path}``; a row has ``trial``,
    ``status``, ``score``, ``score_std``, ``params`` and ``run_dir`` (relative to ``out``).
    Raises RuntimeError when no trial finished.
    """
    check_choice("backend", backend, BACKENDS)
    check_number("workers", workers, ge=1, integer=True)
    check_number("max_retries", max_retries, ge=0, integer=True)
    if backend == "local" and cfg.search != "random":
        raise fail("search", cfg.search, "needs --backend ray")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if backend == "ray":
        rows = _run_ray(cfg, out, ray_address, workers, max_retries)
    else:
        rows = _run_local(cfg, out)
    keys = [p.key for p in cfg.space]
    write_trials_csv(rows, keys, out / TRIALS_CSV)
    done = [r for r in rows if r["status"] == "ok"]
    if not done:
        raise RuntimeError(f"no trial of the search finished; see {out / TRIALS_CSV}")
    best = max(done, key=lambda r: r["score"])  # max keeps the first of equal scores
    table = best_hyperparams(cfg, best["params"])
    header = (
        f"# Best of {len(done)} trials ({cfg.algo} on {cfg.env_id}, scenario {cfg.scenario!r}, "
        f"{cfg.total_timesteps} steps, seed {cfg.seed}): {best['trial']}\n"
        f"# mean return {best['score']:.6g} (std {best['score_std']:.6g}) over eval seeds "
        f"{list(cfg.eval_seeds)}; env_kwargs {dict(cfg.env_kwargs)}.\n"
        "# Format of agents/hyperparams/<algo>.yaml; train with experiments.train --hyperparams <this file>.\n"
    )
    best_file = out / BEST_FILE
    best_file.write_text(header + yaml.safe_dump(_plain(table), sort_keys=False, default_flow_style=None))
    return {"best": best, "rows": rows, "best_file": best_file}


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.tune_hparams", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--config", required=True, help="search YAML (e.g. experiments/configs/search/ppo_autoscale.yaml)"
    )
    ap.add_argument("--trials", type=int, default=None, help="samples (per grid point); overrides `trials`")
    ap.add_argument(
        "--budget", type=int, default=None, help="training steps per trial; overrides `total_timesteps`"
    )
    ap.add_argument(
        "--backend", choices=BACKENDS, default="ray", help="ray: Tune trials; local: one by one here"
    )
    ap.add_argument(
        "--ray-address", default=None, help="address of a running cluster (`auto`); default: local Ray"
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="CPUs of a local Ray = trials at once (default: 2)"
    )
    ap.add_argument("--max-retries", type=int, default=0, help="retries of a failing trial (default: 0)")
    ap.add_argument("--out", default=None, help="output folder (default: runs/search-<config name>)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_search_config(args.config)
        changes = {}
        if args.trials is not None:
            changes["trials"] = args.trials
        if args.budget is not None:
            changes["total_timesteps"] = args.budget
        cfg = dataclasses.replace(cfg, **changes)
        out = Path(args.out) if args.out else Path("runs") / f"search-{Path(args.config).stem}"
        res = run_search(
            cfg,
            out,
            backend=args.backend,
            ray_address=args.ray_address,
            workers=args.workers,
            max_retries=args.max_retries,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = res["best"]
    print(f"{len(res['rows'])} trials -> {out / TRIALS_CSV}")
    print(f"best: {best['trial']} mean return {best['score']:.6g} (std {best['score_std']:.6g})")
    for key, value in best["params"].items():
        print(f"  {key}: {value}")
    print(f"best hyperparameters -> {res['best_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
