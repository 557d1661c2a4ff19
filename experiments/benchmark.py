"""Speed benchmark: the simulator against SimPy, the LLM scenario, and env steps per second.

Prints tables, then one JSON line (the last line of output). The headline is what users run:
``run_scenario_<name>_requests_per_s`` against ``bare_loop_<name>_requests_per_s`` (one ``advance``
per control interval, no controllers) and their ratio ``run_scenario_<name>_vs_bare``; then
``mmc_requests_per_s``, ``simpy_mmc_requests_per_s``, ``mmc_speedup_vs_simpy``,
``llm_requests_per_s`` and ``<env>_steps_per_s`` for every environment. Every
number is measured in this run on this machine, single process, after a
warm-up run that loads the compiled kernels. ``*_requests_per_s`` divide the
simulated requests by the wall time of the simulation itself
(``Simulator.advance``); the ``*_e2e_*`` variants also include building the
scenario and generating its workload.

    python -m experiments.benchmark            # full sizes (about a minute)
    python -m experiments.benchmark --quick    # small sizes, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np

from envs.sim import Simulator


@dataclass
class Args:
    """Benchmark settings (all have defaults)."""

    mmc_requests: int = field(
        default=400_000, metadata={"help": "simulated requests in the M/M/c run (>= 200k)"}
    )
    simpy_requests: int = field(
        default=100_000, metadata={"help": "requests in the SimPy run of the same model"}
    )
    env_steps: int = field(default=3_000, metadata={"help": "steps per environment timing"})
    repeats: int = field(
        default=3, metadata={"help": "timed repeats; the best (least disturbed) is reported"}
    )
    quick: bool = field(
        default=False, metadata={"help": "tiny sizes for a smoke test (numbers not meaningful)"}
    )


MMC_SERVERS = 8
MMC_RHO = 0.8


def mmc_scenario(n_requests: int) -> dict:
    """The M/M/c validation workload: 8 replicas, utilisation 0.8, exponential service of mean 1 s."""
    rate = MMC_RHO * MMC_SERVERS
    return {
        "name": "mmc-benchmark",
        "service": {"kind": "exponential", "mean_s": 1.0},
        "nodes": [{"gpu": "a100-80gb", "count": 1, "gpus_per_node": MMC_SERVERS}],
        "models": [{"name": "m", "replicas": MMC_SERVERS, "max_replicas": MMC_SERVERS}],
        "routing": "central_queue",
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": rate}, "classes": [{"name": "c"}]},
        "horizon_s": n_requests / rate,
        "control_interval_s": 60.0,
    }


def time_simulation(scenario, seed: int = 0) -> dict[str, float]:
    t0 = time.perf_counter()
    sim = Simulator(scenario, seed)
    t1 = time.perf_counter()
    sim.advance(sim.scenario.horizon_s)
    t2 = time.perf_counter()
    kpis = sim.episode_kpis()
    n = kpis["requests_arrived"]
    return {"requests": n, "sim_s": t2 - t1, "e2e_s": t2 - t0, "rps": n / (t2 - t1), "e2e_rps": n / (t2 - t0),
            "wait_mean_s": kpis["wait_mean_s"]}  # fmt: skip


def end_to_end(scenario: str, seed: int = 0) -> dict[str, float]:
    """``run_scenario`` (its controllers every control interval) against the bare loop on the same scenario.

    The bare loop builds the same simulator and calls ``advance`` once per control interval with no
    controller, no views and no KPIs: the cost of the simulation itself. Both include building the
    simulator and its workload, as a user's call does.
    """
    from envs.sim import run_scenario

    t0 = time.perf_counter()
    sim = Simulator(scenario, seed)
    sc = sim.scenario
    n_steps = int(np.ceil(sc.horizon_s / sc.control_interval_s - 1e-9))
    for k in range(1, n_steps + 1):
        sim.advance(min(k * sc.control_interval_s, sc.horizon_s))
    t1 = time.perf_counter()
    kpis = run_scenario(scenario, seed)
    t2 = time.perf_counter()
    n = kpis["requests_arrived"]
    return {"requests": n, "intervals": n_steps, "bare_rps": n / (t1 - t0), "e2e_rps": n / (t2 - t1),
            "rps": n / (t2 - t1), "ratio": (t1 - t0) / (t2 - t1)}  # fmt: skip


def best_of(fn, repeats: int) -> dict[str, float]:
    runs = [fn() for _ in range(repeats)]
    return max(runs, key=lambda r: r["rps"])


def simpy_mmc(n_requests: int, seed: int = 0) -> dict[str, float]:
    from experiments.simpy_ref import simpy_central_queue

    rng = np.random.default_rng(seed)
    rate = MMC_RHO * MMC_SERVERS
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n_requests))
    service = rng.exponential(1.0, n_requests)
    t0 = time.perf_counter()
    out = simpy_central_queue(arrivals, service, MMC_SERVERS)
    dt = time.perf_counter() - t0
    return {"requests": n_requests, "sim_s": dt, "rps": n_requests / dt, "wait_mean_s": out["wait_mean_s"]}


def env_steps_per_s(env_id: str, steps: int, seed: int = 0, **env_kwargs) -> float:
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)

    env = gym.make(env_id, scenario="default", **env_kwargs)
    base = env.unwrapped
    rng = np.random.default_rng(seed)
    masked = hasattr(base, "action_masks")

    def act():
        if masked:
            valid = np.flatnonzero(base.action_masks())
            return int(valid[rng.integers(len(valid))]) if len(valid) else 0
        return env.action_space.sample()

    env.action_space.seed(seed)
    env.reset(seed=seed)
    for _ in range(min(200, steps)):  # warm-up: compiled kernels, caches
        _, _, term, trunc, _ = env.step(act())
        if term or trunc:
            env.reset()
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        _, _, term, trunc, _ = env.step(act())
        done += 1
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, f in Args.__dataclass_fields__.items():
        if f.type == "bool":
            parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=f.metadata["help"])
        else:
            parser.add_argument(
                f"--{name.replace('_', '-')}", type=int, default=f.default, help=f.metadata["help"]
            )
    args = Args(**vars(parser.parse_args(argv)))
    if args.quick:
        args = Args(mmc_requests=20_000, simpy_requests=5_000, env_steps=200, repeats=1, quick=True)

    time_simulation(mmc_scenario(2_000))  # warm-up: load compiled kernels
    time_simulation({"name": "warm", **{"horizon_s": 60.0}, "models": [{"name": "llama-3-8b", "replicas": 1}],
                     "workload": {"arrival": {"kind": "poisson", "rate_per_s": 5}}})  # fmt: skip
    print(
        f"{'end to end (what users run)':<36} {'run_scenario req/s':>19} {'bare loop req/s':>16} {'ratio':>6}"
    )
    result: dict = {}
    for name in ("default", "bursty"):
        e2e = best_of(lambda name=name: end_to_end(name), args.repeats)
        print(f"{'run_scenario(' + repr(name) + ')':<36} {e2e['e2e_rps']:>19,.0f} {e2e['bare_rps']:>16,.0f} "
              f"{e2e['ratio']:>6.2f}")  # fmt: skip
        result[f"run_scenario_{name}_requests_per_s"] = round(e2e["e2e_rps"])
        result[f"bare_loop_{name}_requests_per_s"] = round(e2e["bare_rps"])
        result[f"run_scenario_{name}_vs_bare"] = round(e2e["ratio"], 3)
    print()
    mmc = best_of(lambda: time_simulation(mmc_scenario(args.mmc_requests)), args.repeats)
    ref = best_of(lambda: simpy_mmc(args.simpy_requests), 1)
    llm = best_of(lambda: time_simulation("default"), args.repeats)
    rows = [
        ("M/M/c (c=8, rho=0.8), InferGym", mmc),
        ("M/M/c (c=8, rho=0.8), SimPy", ref),
        ("LLM `default` scenario, InferGym", llm),
    ]
    print(f"{'workload':<36} {'requests':>10} {'sim s':>8} {'requests/s':>12} {'mean wait s':>12}")
    for name, r in rows:
        print(
            f"{name:<36} {int(r['requests']):>10} {r['sim_s']:>8.3f} {r['rps']:>12,.0f} {r['wait_mean_s']:>12.4f}"
        )
    result |= {
        "mmc_requests_per_s": round(mmc["rps"]),
        "mmc_e2e_requests_per_s": round(mmc["e2e_rps"]),
        "simpy_mmc_requests_per_s": round(ref["rps"]),
        "mmc_speedup_vs_simpy": round(mmc["rps"] / ref["rps"], 1),
        "llm_requests_per_s": round(llm["rps"]),
        "llm_e2e_requests_per_s": round(llm["e2e_rps"]),
    }
    print()
    print(f"{'environment':<36} {'steps/s':>12}")
    # Placement-v0 is timed on its job-trace source (one step = one placement decision, the
    # env's own work); with the LLM source a step also simulates the traffic until the
    # scaler asks for the next replica, so it is reported separately.
    for key, env_id, kwargs, label in (
        ("autoscale", "InferGym/Autoscale-v1", {}, ""),
        ("routing", "InferGym/Routing-v0", {}, ""),
        ("placement", "InferGym/Placement-v0", {"source": "jobs"}, " (jobs)"),
        ("placement_llm", "InferGym/Placement-v0", {"source": "llm"}, " (llm)"),
    ):
        n = args.env_steps if key != "placement_llm" else max(20, args.env_steps // 20)
        sps = max(env_steps_per_s(env_id, n, **kwargs) for _ in range(args.repeats))
        result[f"{key}_steps_per_s"] = round(sps)
        print(f"{env_id + label:<36} {sps:>12,.0f}")
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    print()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
