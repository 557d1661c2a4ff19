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
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.sim import Simulator
from envs.sim.config import load_scenario


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
    trace: str = field(
        default=str(
            Path(__file__).resolve().parents[2] / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
        ),
        metadata={"help": "Azure LLM conversation trace (CSV) for Vidur's setup; skipped if missing"},
    )
    mooncake: str = field(
        default=str(
            Path(__file__).resolve().parents[2]
            / "shared"
            / "traces"
            / "mooncake_conversation_trace_first30min.jsonl"
        ),
        metadata={
            "help": "Mooncake conversation trace (JSONL) for the mooncake-conv scenario; skipped if missing"
        },
    )
    curve_requests: int = field(
        default=200_000, metadata={"help": "requests per run of the cost-per-request curve"}
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


def _bare(scenario, seed: int, schedule: list[list[int]] | None) -> float:
    """Seconds to build ``scenario`` and run it with one ``advance`` per control interval and nothing else.

    With ``schedule`` (targets per interval and model, as the scenario's scalers set them), the
    replica changes are applied at the same boundaries without any controller, view or KPI.
    """
    t0 = time.perf_counter()
    sim = Simulator(scenario, seed)
    sc = sim.scenario
    n_steps = int(np.ceil(sc.horizon_s / sc.control_interval_s - 1e-9))
    have = [d.replicas for d in sc.models]
    for k in range(1, n_steps + 1):
        sim.advance(min(k * sc.control_interval_s, sc.horizon_s))
        if schedule is not None:
            for m, want in enumerate(schedule[k - 1]):
                if want != have[m]:
                    sim.set_target_replicas(m, want)
                    have[m] = want
    return time.perf_counter() - t0


def end_to_end(scenario, seed: int = 0) -> dict[str, float]:
    """``run_scenario`` (its controllers every control interval) against the bare loop on the same scenario.

    Two bare loops, both building the same simulator and its workload as a user's call does:
    ``bare`` applies the replica targets the scalers chose, at the same boundaries, with no
    controller, view or KPI (the same simulation: the difference is what the control step costs);
    ``fixed`` keeps the initial fleet (the literal "one advance per interval"; for a scenario
    whose scaler changes the fleet it simulates a different system, so its ratio mixes the control
    step's cost with a different amount of simulated work).
    """
    from envs.sim import run_scenario

    schedule: list[list[int]] = []
    run_scenario(scenario, seed, on_interval=lambda sim, _k: schedule.append(sim.target.tolist()))
    t_fixed = _bare(scenario, seed, None)
    t_bare = _bare(scenario, seed, schedule)
    t1 = time.perf_counter()
    kpis = run_scenario(scenario, seed)
    t_run = time.perf_counter() - t1
    n = kpis["requests_arrived"]
    return {"requests": n, "intervals": len(schedule), "bare_rps": n / t_bare, "fixed_rps": n / t_fixed,
            "e2e_rps": n / t_run, "rps": n / t_run, "ratio": t_bare / t_run, "fixed_ratio": t_fixed / t_run}  # fmt: skip


def vidur_scenario(trace: Path) -> dict:
    """Vidur's setup (Agrawal et al., MLSys 2024): CodeLlama-34B, tensor-parallel 2 on A100-80GB, 4 replicas,
    round robin, the Azure conversation trace replayed with its own request sizes."""
    return {
        "name": "vidur-codellama-34b",
        "horizon_s": 3600.0,
        "control_interval_s": 15.0,
        "nodes": [{"name": "a100", "gpu": "a100-80gb", "count": 1, "gpus_per_node": 8}],
        "models": [
            {
                "name": "codellama-34b",
                "spec": "codellama-34b",
                "replicas": 4,
                "min_replicas": 4,
                "max_replicas": 4,
                "tensor_parallel": 2,
            }
        ],  # fmt: skip
        "workload": {"arrival": {"kind": "trace", "path": str(trace)}, "sizes": {"kind": "trace"}},
        "routing": "round_robin",
        "scaling": "static",
    }


def fleet_scenario(replicas: int, router: str, requests: int) -> dict:
    """``replicas`` Llama-3-8B replicas (one A100 each) at 4 req/s per replica, ``requests`` requests in all."""
    rate = 4.0 * replicas
    horizon = requests / rate
    return {
        "name": f"fleet-{replicas}",
        "horizon_s": horizon,
        "control_interval_s": min(15.0, horizon),
        "nodes": [{"name": "a100", "gpu": "a100-80gb", "count": max(1, replicas // 8), "gpus_per_node": 8}],
        "models": [
            {"name": "llama-3-8b", "replicas": replicas, "min_replicas": replicas, "max_replicas": replicas}
        ],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": rate}},
        "routing": router,
        "scaling": "static",
    }


def cost_curve(sizes: tuple[int, ...], router: str, requests: int, rounds: int = 3) -> dict[int, float]:
    """Microseconds of simulation per request at each fleet size: the best of ``rounds`` runs, each round
    running every size once, so that a slow spell of a shared machine does not fall on one size only."""
    out = dict.fromkeys(sizes, math.inf)
    for _ in range(rounds):
        for n in sizes:
            r = time_simulation(fleet_scenario(n, router, requests))
            out[n] = min(out[n], 1e6 * r["sim_s"] / r["requests"])
    return out


def autoscale_vs_bare(scenario: str, steps: int, seed: int = 0, repeats: int = 3) -> dict[str, float]:
    """``Autoscale-v2`` steps/s (holding the fleet) against the bare loop's control intervals/s on the same
    scenario; both build a new simulator per episode. Best of ``repeats`` for each."""
    import envs  # noqa: F401  (registers the ids)
    from envs.autoscale import AutoscaleEnv

    env = AutoscaleEnv(scenario)
    hold = np.array([env.max_step] * env.n_models, np.int64)
    env.reset(seed=seed)
    for _ in range(50):
        env.step(hold)
    env_sps = 0.0
    for _ in range(repeats):
        done, t0 = 0, time.perf_counter()
        env.reset(seed=seed)
        while done < steps:
            truncated = env.step(hold)[3]
            done += 1
            if truncated:
                env.reset(seed=seed)
        env_sps = max(env_sps, steps / (time.perf_counter() - t0))
    sim = Simulator(scenario, seed)
    n_int = int(np.ceil(sim.scenario.horizon_s / sim.scenario.control_interval_s - 1e-9))
    bare_ips = max(n_int / _bare(scenario, seed, None) for _ in range(repeats))
    return {"env_steps_per_s": env_sps, "bare_intervals_per_s": bare_ips, "ratio": env_sps / bare_ips}


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
    """``env.step`` calls per second of ``gym.make(env_id)`` on ``default`` under a random valid policy
    (episode resets included, the policy's own time excluded)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)

    env = gym.make(env_id, scenario="default", **env_kwargs)
    base = env.unwrapped
    masked = hasattr(base, "action_masks")
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)

    def act():
        if masked:
            valid = np.flatnonzero(base.action_masks())
            return int(valid[rng.integers(len(valid))]) if len(valid) else 0
        return env.action_space.sample()

    env.reset(seed=seed)
    for _ in range(min(200, steps)):  # warm-up: compiled kernels, caches
        _, _, term, trunc, _ = env.step(act())
        if term or trunc:
            env.reset()
    # Only env.step and env.reset are timed: the random policy (reading the mask, drawing a valid
    # action) costs about as much as a Routing step and is the policy's time, not the env's.
    clock = time.perf_counter
    spent = 0.0
    for _ in range(steps):
        a = act()
        t0 = clock()
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
        spent += clock() - t0
    return steps / spent


def vector_vs_single(
    env_id: str, n_envs: int, steps: int, seed: int = 0, vector_kwargs: dict | None = None, **env_kwargs
) -> dict[str, float]:
    """Env-steps/s of ``env_id``'s native vector env with ``n_envs`` sub-envs and of ``n_envs`` single
    envs stepped one after another, on the same work: the same seeds and the same actions (drawn up
    front: random valid slots where there are masks, uniform components otherwise), so both runs
    simulate the same trajectories; ``steps`` vector steps each, after a warm-up run of both.

    ``vector`` and ``single`` time the steps (and the single envs' resets, which the vector env does
    inside its step); ``*_with_draw`` also time the random policy's choice from the masks between
    steps (``argmax`` of uniform draws times ``action_masks()``), as an agent's loop would.
    ``vector_kwargs`` go to the vector env only (``{"processes": 2}``: :mod:`envs.vector.procs`)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)

    kwargs = {"scenario": "default", **env_kwargs}
    vec = gym.make_vec(
        env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **kwargs, **(vector_kwargs or {})
    )
    singles = [gym.make(env_id, **kwargs).unwrapped for _ in range(n_envs)]
    space = vec.single_action_space
    rng = np.random.default_rng(seed)
    masked = isinstance(space, gym.spaces.Discrete)
    draws = (
        rng.random((steps, n_envs, space.n))
        if masked
        else rng.integers(0, space.nvec, (steps, n_envs, *space.shape))
    )
    clock = time.perf_counter

    def run_vector(k: int) -> tuple[float, float]:
        vec.reset(seed=seed)
        base = vec.unwrapped
        stepping = 0.0
        t0 = clock()
        for t in range(k):
            a = np.argmax(draws[t] * base.action_masks(), axis=1) if masked else draws[t]
            t1 = clock()
            vec.step(a)
            stepping += clock() - t1
        return stepping, clock() - t0

    def run_single(k: int) -> tuple[float, float]:
        for i, env in enumerate(singles):
            env.reset(seed=seed + i)
        stepping = 0.0
        t0 = clock()
        for t in range(k):
            for i, env in enumerate(singles):
                a = int(np.argmax(draws[t, i] * env.action_masks())) if masked else draws[t, i]
                t1 = clock()
                if env.step(a)[3]:
                    env.reset()
                stepping += clock() - t1
        return stepping, clock() - t0

    warm = max(1, steps // 10)
    run_vector(warm)
    run_single(warm)
    (v, v_all), (s, s_all) = run_vector(steps), run_single(steps)
    vec.close()
    work = steps * n_envs
    return {
        "vector": work / v,
        "single": work / s,
        "ratio": s / v,
        "vector_with_draw": work / v_all,
        "single_with_draw": work / s_all,
        "ratio_with_draw": s_all / v_all,
    }


def training_steps_per_s(backend: str, n_envs: int, steps: int, scenario: str = "bursty", **hp) -> float:
    """PPO on ``Autoscale-v2``/``scenario`` end to end (rollouts and updates, VecNormalize, the table's
    frame stack of 12 and target actions), env-steps/s over ``steps`` steps after one warm-up rollout,
    from a fresh policy (its random replica targets move the fleet every step: the slow start of a
    run; trained policies step about twice as fast)."""
    import torch as th
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize

    from agents.sb3 import _model_kwargs, load_hyperparams, make_vec

    params = load_hyperparams("ppo", "InferGym/Autoscale-v2", [f"{k}={v}" for k, v in hp.items()])
    th.set_num_threads(1)
    vec = make_vec("InferGym/Autoscale-v2", scenario, n_envs, 0, {"action_mode": "target"}, backend=backend)
    vec = VecNormalize(VecFrameStack(vec, 12), **params["vecnormalize"])
    model = PPO(env=vec, seed=0, verbose=0, **_model_kwargs(params))
    rollout = params["n_steps"] * n_envs
    model.learn(rollout)  # warm-up: compiled kernels, the first episode's set-up
    t0 = time.perf_counter()
    model.learn(max(rollout, steps), reset_num_timesteps=False)
    out = (model.num_timesteps - rollout) / (time.perf_counter() - t0)
    vec.close()
    return out


def rollout_ceiling_steps_per_s(n_envs: int, steps: int, scenario: str = "bursty", seed: int = 0) -> float:
    """The env as PPO's rollouts see it, with no policy and no updates: the native vector env of
    ``n_envs`` ``Autoscale-v2``/``scenario`` envs (target actions) under the table's frame stack of 12
    and VecNormalize, stepped with uniformly random actions (which, like a fresh policy's, move the
    fleet every step). No trainer on this env can step faster; it is the bound of
    :func:`training_steps_per_s`."""
    from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize

    from agents.sb3 import make_vec

    vec = make_vec(
        "InferGym/Autoscale-v2", scenario, n_envs, seed, {"action_mode": "target"}, backend="native"
    )
    vec = VecNormalize(VecFrameStack(vec, 12), norm_reward=False)  # as ppo.yaml's vecnormalize
    rng = np.random.default_rng(seed)
    nvec = vec.action_space.nvec

    def act() -> np.ndarray:
        return rng.integers(0, nvec, size=(n_envs, len(nvec)))

    vec.reset()
    for _ in range(64):  # warm-up: compiled kernels, the first episode's set-up
        vec.step(act())
    t0 = time.perf_counter()
    for _ in range(max(1, steps // n_envs)):
        vec.step(act())
    out = max(1, steps // n_envs) * n_envs / (time.perf_counter() - t0)
    vec.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, f in Args.__dataclass_fields__.items():
        flag = f"--{name.replace('_', '-')}"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            kind = str if f.type == "str" else int
            parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"])
    args = Args(**vars(parser.parse_args(argv)))
    if args.quick:
        args = Args(mmc_requests=20_000, simpy_requests=5_000, env_steps=200, repeats=1, quick=True,
                    trace=args.trace, curve_requests=5_000)  # fmt: skip

    time_simulation(mmc_scenario(2_000))  # warm-up: load compiled kernels
    time_simulation({"name": "warm", **{"horizon_s": 60.0}, "models": [{"name": "llama-3-8b", "replicas": 1}],
                     "workload": {"arrival": {"kind": "poisson", "rate_per_s": 5}}})  # fmt: skip
    print(f"{'end to end (what users run)':<36} {'run_scenario req/s':>19} {'bare loop req/s':>16} {'ratio':>6}"
          f" {'fixed fleet req/s':>18} {'ratio':>6}")  # fmt: skip
    result: dict = {}
    cases: list[tuple[str, object]] = [("default", "default"), ("bursty", "bursty")]
    if Path(args.trace).is_file():
        cases.append(("vidur", vidur_scenario(Path(args.trace))))
    else:
        print(f"(Vidur's setup skipped: no trace at {args.trace}; pass --trace)")
    # the reserve engine (the default before the paged engine) on default's workload, and the Mooncake
    # replay with prefix caching
    cases.append(("default_reserve", load_scenario("default").with_model_defaults({"kv_policy": "reserve"})))
    if Path(args.mooncake).is_file():
        cases.append(("mooncake", load_scenario("mooncake-conv", {"workload.arrival.path": args.mooncake})))
    else:
        print(f"(mooncake-conv skipped: no trace at {args.mooncake}; pass --mooncake)")
    for name, scenario in cases:
        e2e = best_of(lambda scenario=scenario: end_to_end(scenario), args.repeats)
        label = "run_scenario(" + {"vidur": "vidur: codellama-34b tp2", "default_reserve": "'default', reserve",
                                   "mooncake": "'mooncake-conv'"}.get(name, repr(name)) + ")"  # fmt: skip
        print(f"{label:<36} {e2e['e2e_rps']:>19,.0f} {e2e['bare_rps']:>16,.0f} {e2e['ratio']:>6.2f}"
              f" {e2e['fixed_rps']:>18,.0f} {e2e['fixed_ratio']:>6.2f}")  # fmt: skip
        result[f"run_scenario_{name}_requests_per_s"] = round(e2e["e2e_rps"])
        result[f"bare_loop_{name}_requests_per_s"] = round(e2e["bare_rps"])
        result[f"run_scenario_{name}_vs_bare"] = round(e2e["ratio"], 3)
        result[f"run_scenario_{name}_vs_fixed_fleet"] = round(e2e["fixed_ratio"], 3)
    a = autoscale_vs_bare("default", args.env_steps, repeats=args.repeats)
    print(f"{'Autoscale-v2 default, steps/s':<36} {a['env_steps_per_s']:>19,.0f} {a['bare_intervals_per_s']:>16,.0f}"
          f" {a['ratio']:>6.2f}   (bare: control intervals/s)")  # fmt: skip
    result["autoscale_default_steps_per_s"] = round(a["env_steps_per_s"])
    result["bare_loop_default_intervals_per_s"] = round(a["bare_intervals_per_s"])
    result["autoscale_default_vs_bare"] = round(a["ratio"], 3)
    print()
    sizes = (8, 64, 512, 1024, 4096) if not args.quick else (8, 64)
    print(f"{'us per request at N replicas':<36} " + " ".join(f"{n:>8}" for n in sizes) + f" {'N_max/8':>8}")
    for router in ("least_connections", "power_of_two"):
        curve = cost_curve(sizes, router, args.curve_requests)
        growth = curve[sizes[-1]] / curve[8]
        print(f"{router:<36} " + " ".join(f"{curve[n]:>8.3f}" for n in sizes) + f" {growth:>8.2f}")
        for n in sizes:
            result[f"us_per_request_{router}_{n}"] = round(curve[n], 4)
        if 1024 in curve:
            result[f"us_per_request_{router}_1024_vs_8"] = round(curve[1024] / curve[8], 2)
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
    # Placement-v1 is timed on its job-trace source (one step = one placement decision, the
    # env's own work); with the LLM source a step also simulates the traffic until the
    # scaler asks for the next replica, so it is reported separately.
    for key, env_id, kwargs, label in (
        ("autoscale", "InferGym/Autoscale-v2", {}, ""),
        ("routing", "InferGym/Routing-v2", {}, ""),
        ("placement", "InferGym/Placement-v1", {"source": "jobs"}, " (jobs)"),
        ("placement_llm", "InferGym/Placement-v1", {"source": "llm"}, " (llm)"),
    ):
        n = args.env_steps if key != "placement_llm" else max(20, args.env_steps // 20)
        sps = max(env_steps_per_s(env_id, n, **kwargs) for _ in range(args.repeats))
        result[f"{key}_steps_per_s"] = round(sps)
        print(f"{env_id + label:<36} {sps:>12,.0f}")
    print()
    n_vec = 32
    print(f"{'native vector env, ' + str(n_vec) + ' sub-envs':<36} {'env-steps/s':>12} {'single envs':>12} {'ratio':>6}"
          f"{'with policy draw':>30}   (same seeds and actions)")  # fmt: skip
    for key, env_id, kwargs, label, vec_kwargs in (
        ("autoscale", "InferGym/Autoscale-v2", {}, "", {}),
        # the same sub-envs in two shares, this process's and a worker process's (envs.vector.procs)
        ("autoscale_processes2", "InferGym/Autoscale-v2", {}, ", 2 processes", {"processes": 2}),
        ("routing", "InferGym/Routing-v2", {}, "", {}),
        ("placement", "InferGym/Placement-v1", {"source": "jobs"}, " (jobs)", {}),
    ):
        steps = max(10, args.env_steps // (20 if key.startswith("autoscale") else 2))
        try:
            r = max((vector_vs_single(env_id, n_vec, steps, vector_kwargs=vec_kwargs, **kwargs)
                     for _ in range(args.repeats)), key=lambda x: x["ratio"])  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (a vector env not built yet must not hide the other numbers)
            print(f"{env_id + label:<36} not available: {exc}")
            continue
        result[f"{key}_vector{n_vec}_steps_per_s"] = round(r["vector"])
        result[f"{key}_single{n_vec}_steps_per_s"] = round(r["single"])
        result[f"{key}_vector{n_vec}_vs_single"] = round(r["ratio"], 2)
        result[f"{key}_vector{n_vec}_with_draw_steps_per_s"] = round(r["vector_with_draw"])
        result[f"{key}_vector{n_vec}_with_draw_vs_single"] = round(r["ratio_with_draw"], 2)
        print(f"{env_id + label:<36} {r['vector']:>12,.0f} {r['single']:>12,.0f} {r['ratio']:>6.2f}"
              f"{r['vector_with_draw']:>16,.0f} {r['single_with_draw']:>8,.0f} {r['ratio_with_draw']:>4.2f}")  # fmt: skip
    print()
    print(f"{'PPO training, Autoscale-v2 bursty':<36} {'env-steps/s':>12}")
    t_steps = 4_096 if args.quick else 40_960
    for label, backend, n_envs, hp in (
        # round 1's settings (2 envs x 256 steps, minibatches of 64), before the defaults moved to 8 x 64
        ("DummyVecEnv, 2 envs (round 1)", "dummy", 2, {"n_steps": 256, "batch_size": 64}),
        # what the autoscale table's PPO runs (experiments/configs/tables/autoscale.yaml; ppo.yaml's defaults)
        ("native, 8 envs, the table's PPO", "native", 8, {"n_steps": 64, "batch_size": 256}),
    ):
        tps = training_steps_per_s(backend, n_envs, t_steps, **hp)
        result[f"ppo_train_{backend}_{n_envs}_steps_per_s"] = round(tps)
        print(f"{label:<36} {tps:>12,.0f}")
    # the bound of any trainer: the same env and wrappers stepped with random actions, no policy
    ceiling = rollout_ceiling_steps_per_s(8, t_steps)
    result["autoscale_bursty_native8_random_steps_per_s"] = round(ceiling)
    result["ppo_train_native_8_vs_env"] = round(result["ppo_train_native_8_steps_per_s"] / ceiling, 2)
    print(f"{'env alone, 8 envs, random actions':<36} {ceiling:>12,.0f}")
    print(f"{'PPO / env alone':<36} {result['ppo_train_native_8_vs_env']:>12.2f}")
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    print()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
