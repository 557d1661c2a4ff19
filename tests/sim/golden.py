"""Golden numbers of the simulator: episode KPIs and env trajectories that must not move.

``tests/sim/golden.json`` holds, for every shipped scenario x every in-kernel router x 3 seeds,
the KPIs of :func:`envs.sim.run_scenario` on the ``reserve`` engine (filled in for every model that
does not set ``kv_policy``: the records predate ``paged`` as the default and pin the reserve engine
bit for bit), the KPIs of every shipped scenario as shipped (its own router, the default engine) for
2 seeds, and for each environment a 200-step trajectory under seeded random (valid) actions
(observation digest, rewards, terminations, KPI digest). A change
to the engine that moves any of them is a change in numbers and must be deliberate: regenerate
with ``python tests/sim/golden.py --write`` and list the difference in the change's notes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE = ROOT.parent / "shared" / "traces" / "mooncake_conversation_trace_first30min.jsonl"
GOLDEN = Path(__file__).with_name("golden.json")
SEEDS = (0, 1, 2)
ROUTERS = (
    "random", "round_robin", "weighted_round_robin", "least_connections", "least_time", "min_load",
    "power_of_two", "shortest_expected_delay", "affinity", "central_queue",
)  # fmt: skip
#: (env id, kwargs, steps): the trajectories recorded.
ENV_CASES: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("InferGym/Autoscale-v2", {"scenario": "default"}, 200),
    ("InferGym/Autoscale-v2", {"scenario": "bursty", "action_mode": "target", "horizon_s": 900}, 200),
    ("InferGym/Autoscale-v2", {"scenario": "disaggregated", "horizon_s": 900}, 200),
    ("InferGym/Autoscale-v3", {"scenario": "disaggregated", "horizon_s": 900}, 200),
    ("InferGym/Routing-v2", {"scenario": "default", "horizon_s": 20}, 600),
    ("InferGym/Placement-v1", {"source": "llm", "scenario": "bursty"}, 200),
    ("InferGym/Autoscale-v0", {"scenario": "default"}, 200),
    ("InferGym/Autoscale-v0", {"scenario": "bursty", "action_mode": "target"}, 200),
    ("InferGym/Autoscale-v0", {"scenario": "multi-model", "horizon_s": 600}, 200),
    ("InferGym/Autoscale-v1", {"scenario": "bursty", "action_mode": "target", "horizon_s": 900}, 200),
    ("InferGym/Routing-v0", {"scenario": "default", "horizon_s": 20}, 600),
    ("InferGym/Routing-v0", {"scenario": "heterogeneous", "horizon_s": 30}, 600),
    ("InferGym/Placement-v0", {"source": "llm", "scenario": "bursty"}, 200),
    ("InferGym/Placement-v0", {"source": "jobs"}, 400),
)


def scenario_overrides(name: str) -> dict[str, Any]:
    path = {"azure-conv": TRACE, "mooncake-conv": MOONCAKE}.get(name)
    return {} if path is None else {"workload.arrival.path": str(path)}


#: seeds of the shipped scenarios on the default engine
DEFAULT_ENGINE_SEEDS = (0, 1)


def scenario_kpis(name: str, router: str, seed: int) -> dict[str, float]:
    """Episode KPIs of ``name`` with ``router`` on the reserve engine where a model does not choose (a
    disaggregated scenario, which needs the paged engine, on the paged engine)."""
    from envs.sim import load_scenario, run_scenario

    sc = load_scenario(name, {**scenario_overrides(name), "routing": router})
    if sc.disaggregated:
        return run_scenario(sc, seed)
    return run_scenario(sc.with_model_defaults({"kv_policy": "reserve"}), seed)


def default_engine_kpis(name: str, seed: int) -> dict[str, float]:
    """Episode KPIs of the shipped scenario ``name`` as it ships (its router, the default engine)."""
    from envs.sim import run_scenario

    return run_scenario(name, seed, overrides=scenario_overrides(name) or None)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


def env_trajectory(env_id: str, kwargs: dict[str, Any], steps: int, seed: int = 0) -> dict[str, Any]:
    """A seeded trajectory under random valid actions; episodes that end are reset with seed + k."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)

    env = gym.make(env_id, **kwargs)
    rng = np.random.default_rng(1000 + seed)
    obs, info = env.reset(seed=seed)
    obs_list, rewards, ends, kpis = [obs], [], [], []
    episode = 0
    base = env.unwrapped
    for _ in range(steps):
        if hasattr(base, "action_masks"):
            mask = np.asarray(base.action_masks(), bool)
            valid = np.flatnonzero(mask)
            action = int(rng.choice(valid)) if len(valid) else 0
        else:
            space = env.action_space
            if isinstance(space, gym.spaces.Discrete):
                action = int(rng.integers(space.n))
            else:
                action = rng.integers(space.nvec)
        obs, reward, terminated, truncated, info = env.step(action)
        obs_list.append(obs)
        rewards.append(float(reward))
        ends.append(int(terminated) + 2 * int(truncated))
        kpi = info.get("kpi", {})
        kpis.append([float(kpi[k]) for k in sorted(kpi)])
        if terminated or truncated:
            episode += 1
            obs, info = env.reset(seed=seed + episode)
            obs_list.append(obs)
    env.close()
    return {
        "obs": _digest(*obs_list),
        "rewards": rewards,
        "ends": ends,
        "kpi": _digest(*[np.asarray(k, float) for k in kpis]),
    }


def case_key(env_id: str, kwargs: dict[str, Any]) -> str:
    return env_id + " " + json.dumps(kwargs, sort_keys=True)


def record() -> dict[str, Any]:
    from envs.sim.config import shipped_scenarios

    out: dict[str, Any] = {"run_scenario": {}, "default_engine": {}, "envs": {}}
    for name in shipped_scenarios():
        for router in ROUTERS:
            for seed in SEEDS:
                out["run_scenario"][f"{name}/{router}/{seed}"] = scenario_kpis(name, router, seed)
        for seed in DEFAULT_ENGINE_SEEDS:
            out["default_engine"][f"{name}/{seed}"] = default_engine_kpis(name, seed)
    for env_id, kwargs, steps in ENV_CASES:
        out["envs"][case_key(env_id, kwargs)] = env_trajectory(env_id, kwargs, steps)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    data = record()
    if "--write" in sys.argv:
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN} ({len(data['run_scenario'])} scenario runs, {len(data['envs'])} trajectories)")
    else:
        old = json.loads(GOLDEN.read_text())
        bad = [k for part in data for k in data[part] if data[part][k] != old.get(part, {}).get(k)]
        print("identical" if not bad else f"{len(bad)} differ: {bad[:10]}")
