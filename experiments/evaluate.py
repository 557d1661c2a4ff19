"""The one evaluator: run a policy for one full episode per seed and return one row of numbers per episode.

SB3 models, classical controllers and a random policy all go through
:func:`evaluate_policy` as one :class:`agents.Policy` (``reset(seed)``,
``predict(obs, env, deterministic)``), so every number in a table is measured
the same way; a classical controller's adapter comes from its env class
(``controller_policy``).
A row holds the episode return (sum of rewards), the sum of each named reward
term (``reward.<term>``), the episode length and the episode KPIs. KPIs come,
in order of preference, from the env's own episode KPIs on its last step
(``info["episode_kpi"]``), from the simulator (``env.unwrapped.sim.episode_kpis()``:
exact percentiles over every request of the episode), or else from the
per-step ``info["kpi"]`` aggregated by :class:`agents.EpisodeKpis` (totals of
counts and costs, request-weighted attainment and means, worst-step p99);
``kpi_source`` says which. Step KPIs the simulator does not cover (e.g.
Placement's fragmentation) are added from the aggregate. Same env, scenario,
seeds and policy -> identical rows.

    python -m experiments.evaluate --env InferGym/Autoscale-v1 --policy hpa --scenario bursty \\
        --seeds 0 1 2 --out results.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

import envs
from agents import EpisodeKpis, Policy, RandomPolicy, step_kpis_cumulative
from envs.sim.errors import ConfigError, check_choice, fail

__all__ = ["RandomPolicy", "evaluate_policy", "make_policy", "main"]

META_KEYS = ("env_id", "scenario", "policy", "seed", "return", "steps", "kpi_source")


def make_policy(env_id: str, spec: str, seed: int = 0) -> Policy:
    """A policy from a command-line spec: ``random``, a model ``.zip`` / run folder, or a baseline spec.

    Baseline specs are parsed with ``yaml.safe_load`` (a name like ``hpa`` or a mapping like
    ``"{kind: hpa, target_utilization: 0.6}"``) and given to the registered env class's
    ``controller_policy(spec, seed)``, which builds its controller adapter
    (``envs.autoscale.ScalerPolicy``, ``baselines.routing.RouterPolicy``, ``envs.placement.PlacerPolicy``).
    """
    check_choice("env", env_id, envs.ENV_IDS)
    if spec == "random":
        return RandomPolicy(seed)
    path = Path(spec)
    if path.suffix == ".zip" or path.is_dir():
        from agents.sb3 import load_agent

        return load_agent(path)
    env_cls = envs.env_class(env_id)
    if not hasattr(env_cls, "controller_policy"):
        raise fail("policy", spec, f"is no model, and {env_id} has no controller adapter (controller_policy)")
    pol = env_cls.controller_policy(yaml.safe_load(spec), seed=seed)
    if not hasattr(pol, "name"):  # a router adapter keeps its router's name, as in earlier tables
        pol.name = f"{env_id.split('/')[-1].split('-')[0].lower()}:{spec}"
    return pol


def _episode_kpis(
    env: gym.Env, env_id: str, last_info: Mapping[str, Any], agg: EpisodeKpis
) -> tuple[dict[str, float], str]:
    steps = agg.result()
    if "episode_kpi" in last_info:
        exact, source = dict(last_info["episode_kpi"]), "env"
    else:
        sim = getattr(env.unwrapped, "sim", None)
        if sim is None or not hasattr(sim, "episode_kpis"):
            return steps, "steps"
        exact, source = sim.episode_kpis(), "sim"
    out = {k: float(v) for k, v in exact.items()}
    for k, v in steps.items():
        out.setdefault(k, v)
    return out, source


def evaluate_policy(
    env_id: str,
    policy: Policy,
    scenario: Any = "default",
    seeds: Sequence[int] = (0,),
    env_kwargs: Mapping[str, Any] | None = None,
    deterministic: bool = True,
    max_steps: int = 10_000_000,
) -> list[dict[str, Any]]:
    """Run ``policy`` for one full episode per seed (``env.reset(seed=s)``); one row per episode.

    ``policy`` is a :class:`agents.Policy`: ``policy.reset(seed=s)`` follows
    every ``env.reset(seed=s)``, and every action is
    ``policy.predict(obs, env.unwrapped, deterministic=deterministic)``.
    ``max_steps`` guards against an env that never ends (an error, not a
    truncated row).
    """
    check_choice("env_id", env_id, envs.ENV_IDS)
    if not isinstance(policy, Policy):
        raise TypeError(f"{type(policy).__name__} is not an agents.Policy (reset(seed), predict(obs, env))")
    pol = policy
    name = getattr(pol, "name", type(pol).__name__)
    env = gym.make(env_id, scenario=scenario, **dict(env_kwargs or {}))
    base = env.unwrapped
    rows = []
    try:
        for seed in seeds:
            seed = int(seed)
            obs, info = env.reset(seed=seed)
            pol.reset(seed=seed)
            agg = EpisodeKpis(cumulative=step_kpis_cumulative(env_id))
            terms: dict[str, float] = {}
            ret, n = 0.0, 0
            done = False
            while not done:
                if n >= max_steps:
                    raise RuntimeError(
                        f"{env_id}: episode of seed {seed} did not end within {max_steps} steps"
                    )
                action = pol.predict(obs, base, deterministic=deterministic)
                obs, reward, terminated, truncated, info = env.step(action)
                ret += float(reward)
                n += 1
                for k, v in info.get("rewards", {}).items():
                    terms[k] = terms.get(k, 0.0) + float(v)
                if "kpi" in info:
                    agg.add(info["kpi"])
                done = terminated or truncated
            kpis, source = _episode_kpis(env, env_id, info, agg)
            row: dict[str, Any] = {
                "env_id": env_id,
                "scenario": scenario
                if isinstance(scenario, str)
                else getattr(base, "scenario", scenario).name,
                "policy": name,
                "seed": seed,
                "return": ret,
                "steps": n,
                "kpi_source": source,
            }
            row.update({f"reward.{k}": v for k, v in sorted(terms.items())})
            row.update(sorted(kpis.items()))
            rows.append(row)
    finally:
        env.close()
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Rows to CSV; columns are the union of keys (metadata first), missing cells empty."""
    cols = list(META_KEYS)
    for r in rows:
        cols += [k for k in r if k not in cols]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _kv(items: Sequence[str]) -> dict[str, Any]:
    from agents.sb3 import parse_overrides  # the same key=value grammar as hyperparameter overrides

    return parse_overrides(items)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.evaluate",
        description="Evaluate a policy for one episode per seed and write one CSV row per episode.",
    )
    ap.add_argument("--env", required=True, choices=sorted(envs.ENV_IDS), help="environment id")
    ap.add_argument(
        "--policy",
        required=True,
        help="'random', a model .zip or run folder (from experiments.train), or a baseline spec for the env's "
        "controller adapter, e.g. 'hpa' or '{kind: hpa, target_utilization: 0.6}' (YAML)",
    )
    ap.add_argument("--scenario", default="default", help="shipped scenario name or YAML path")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="episode seeds (one episode each)"
    )
    ap.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra gym.make keywords, values parsed as YAML, e.g. horizon_s=600 max_step=4")  # fmt: skip
    ap.add_argument("--stochastic", action="store_true", help="sample SB3 actions instead of taking the mode")
    ap.add_argument(
        "--policy-seed", type=int, default=0, help="seed of the random policy / stochastic controllers"
    )
    ap.add_argument("--out", default=None, help="CSV file to write (default: print only)")
    args = ap.parse_args(argv)
    try:
        policy = make_policy(args.env, args.policy, args.policy_seed)
        rows = evaluate_policy(
            args.env,
            policy,
            args.scenario,
            args.seeds,
            _kv(args.env_kwargs),
            deterministic=not args.stochastic,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_csv(rows, args.out)
    from experiments.stats import mean_ci

    for key in ("return", "slo_attainment", "ttft_p99_s", "cost_usd", "requests_dropped"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            est = mean_ci(np.array(vals, dtype=float))
            print(f"{key:>18}: {est.value:.4g}  95% CI [{est.low:.4g}, {est.high:.4g}]  (n={len(vals)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
