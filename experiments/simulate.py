"""Simulate a scenario with its configured controllers and print its KPI table.

    python -m experiments.simulate                       # the built-in `default` scenario, seed 0
    python -m experiments.simulate --scenario bursty --seeds 0 1 2
    python -m experiments.simulate --scenario azure-conv --trace path/to/AzureLLMInferenceTrace_conv.csv
    python -m experiments.simulate --scenario my.yaml --set horizon_s=600 --set routing=power_of_two

One column per seed plus the mean; ``--json`` also writes the numbers to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from envs.sim import ConfigError, load_scenario, run_scenario, shipped_scenarios
from envs.sim.metrics import KPI_KEYS


def parse_set(items: list[str]) -> dict:
    """``key.path=value`` pairs (value parsed as YAML) -> an overrides mapping."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set: {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="default", help=f"shipped name {shipped_scenarios()} or a YAML path")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="workload seeds (one run each)")
    p.add_argument(
        "--trace",
        default=None,
        help="trace file of the trace-replay scenarios (azure-conv: Azure CSV; mooncake-conv: Mooncake JSONL)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="scenario override, repeatable"
    )
    p.add_argument("--json", default=None, help="also write the KPIs to this JSON file")
    args = p.parse_args(argv)
    try:
        overrides = parse_set(args.set)
        if args.trace:
            overrides["workload.arrival.path"] = args.trace
        sc = load_scenario(args.scenario, overrides or None)
    except ConfigError as exc:
        p.exit(2, f"error: {exc}\n")
    print(f"scenario {sc.name!r}: {sc.description}")
    print(
        f"horizon {sc.horizon_s:g} s, control interval {sc.control_interval_s:g} s, router {sc.routing.kind}, "
        f"placer {sc.placement.kind}, scaler {sc.scaling.kind}"
    )
    results: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        kpis = run_scenario(sc, seed)
        for key, val in kpis.items():
            results.setdefault(key, []).append(val)
    wall = time.perf_counter() - t0
    cols = [f"seed {s}" for s in args.seeds] + (["mean"] if len(args.seeds) > 1 else [])
    print()
    print(f"| {'KPI':<20} | " + " | ".join(f"{c:>12}" for c in cols) + " |")
    print(f"|{'-' * 22}|" + "|".join("-" * 14 for _ in cols) + "|")
    keys = list(KPI_KEYS) + [k for k in results if k not in KPI_KEYS]
    for key in keys:
        vals = results[key] + ([float(np.mean(results[key]))] if len(args.seeds) > 1 else [])
        print(f"| {key:<20} | " + " | ".join(f"{v:>12.4g}" for v in vals) + " |")
    n = sum(results["requests_arrived"])
    print(f"\nsimulated {n:,.0f} requests in {wall:.2f} s wall time ({n / wall:,.0f} requests/s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"scenario": sc.name, "seeds": args.seeds, "kpis": results}, indent=2)
        )
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
