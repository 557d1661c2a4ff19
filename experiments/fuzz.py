"""Fuzz the public API: every bad input must be a named error, every accepted one must run correctly.

    python -m experiments.fuzz --cases 10000                 # prints counts by outcome
    python -m experiments.fuzz --cases 300 --kinds action azure_trace --out runs/fuzz

Case kinds (each a JSON description, generated from ``--seed``):

* ``override``: one scenario key of a shipped scenario set to a value from a pool of awkward ones
  (negative, zero, huge, integers of hundreds of digits, NaN, strings, lists, mappings, ...);
  accepted scenarios are simulated for a short while and checked.
* ``valid``: a random valid small scenario (hardware, load, routing, queueing, scaling; half of
  them on the paged engine, some with multi-turn sessions and prefix caching) run to
  its horizon, with request conservation and KPI ranges checked at every control interval.
* ``action``: an awkward object given to an environment's ``step``; it must be accepted exactly
  when the action space contains it, and refused with the environment's own message otherwise.
* ``azure_trace`` / ``mooncake_trace`` / ``alibaba_trace``: a small valid trace file with one field
  or line mutated;
  an invalid mutation must be refused naming file and line, a valid one must be read.

Outcomes: ``ok``; ``named_error`` (a ConfigError, ValueError or RuntimeError whose message names
the key, file:line or environment); ``crash`` (any other exception, an unnamed message, or the
process died); ``hang`` (over ``--timeout-s``); ``silently_wrong`` (accepted but invalid, or an
invariant broken). Cases run in worker processes with an address-space limit (``--memory-mib``);
a worker that dies or hangs is replaced. Every crash, hang and silently wrong case is written to
``--out`` as a runnable repro (``python <file>``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

OUTCOMES = ("ok", "named_error", "crash", "hang", "silently_wrong")
KINDS = ("override", "valid", "action", "azure_trace", "mooncake_trace", "alibaba_trace")
SCENARIOS = (
    "default",
    "steady",
    "bursty",
    "spiky",
    "diurnal",
    "heterogeneous",
    "multi-model",
    "disaggregated",
)
OVERRIDE_KEYS = (
    "horizon_s", "control_interval_s", "tick_s", "queue", "routing", "placement", "scaling",
    "nodes", "models", "workload", "reward", "service", "storage",
    "workload.arrival.rate_per_s", "workload.arrival.kind", "workload.sizes", "workload.sizes.prompt_mean",
    "workload.classes", "storage.remote_bandwidth_gbps", "storage.cache_ttl_s", "reward.gpu_cost",
    "scaling.target", "routing.kind", "decode_routing",
)  # fmt: skip
HUGE = {"__int_digits__": 400}  # stands for 10**400 (JSON cannot hold it)
VALUES = (
    -1, 0, 1, 2, 3, 30, 60, 120, 0.25, 0.9, 1e-9, 0.5, 7.5, 1e6, 1e9, 1e300, -1e300, 2**63, -(2**63) - 1, 2**53 + 1, HUGE,
    float("nan"), float("inf"), -float("inf"), True, False, None, "", "x", "1e3", "default", [], [1, 2], [[]],
    {}, {"kind": "poisson"}, {"kind": "x"}, {"a": 1}, [{"gpu": "a100-80gb", "count": 0}],
    [{"name": "llama-3-8b", "replicas": -1}], [{"name": "m", "replicas": 10**6}], "a100-80gb", "static",
    [{"name": "llama-3-8b", "serving": "disaggregated", "prefill": {"replicas": 1}, "decode": {"replicas": 1}}],
    [{"name": "llama-3-8b", "serving": "disaggregated"}], [{"name": "llama-3-8b", "decode": {"replicas": 2}}],
    [{"name": "llama-3-8b", "serving": "disaggregated", "prefill": {"replicas": 10**6}, "decode": {}}],
)  # fmt: skip
ACTIONS = (
    0, 1, 2, 4, -1, 10**6, 2**63, 1.0, 2.5, float("nan"), True, None, "1", [1], [0, 1], [[1], [1, 2]],
    {"__array__": [1], "dtype": "int64"}, {"__array__": [1.0], "dtype": "float64"},
    {"__array__": [[1]], "dtype": "int64"}, {"__array__": 1, "dtype": "int32"}, {"__array__": [9], "dtype": "uint8"},
)  # fmt: skip
ENV_CASES = {
    "InferGym/Autoscale-v3": {"scenario": "default", "horizon_s": 45.0},
    "InferGym/Routing-v2": {"scenario": "default", "horizon_s": 5.0, "control_interval_s": 5.0},
    "InferGym/Placement-v1": {"source": "jobs", "n_jobs": 5},
}
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
AZURE_ROWS = [f"2023-11-16 18:15:{s:02d}.{s * 7919 % 10**7:07d},{100 + 13 * s},{5 + s}" for s in range(20)]
AZURE_FIELD_VALUES = (  # (text, valid?)
    ("-5", False), ("1e3", False), ("abc", False), ("", False), (str(2**63), False), ("9" * 5000, False),
    ("0", True), ("77", True), (" 12", True), ("12.0", False), ("10000001", False), ("9999999", True),
)  # fmt: skip
MOONCAKE_ROWS = [
    {"timestamp": 250 * i, "input_length": 600 + 97 * i, "output_length": 5 + i,
     "hash_ids": list(range(0, -(-(600 + 97 * i) // 512)))}
    for i in range(12)
]  # fmt: skip
MOONCAKE_VALUES = (  # (key, value, valid?) put into one row
    ("input_length", -5, False), ("input_length", 1.5, False), ("input_length", True, False),
    ("input_length", "77", False), ("input_length", None, False), ("input_length", 2**63, False),
    ("input_length", 10**7 + 1, False), ("output_length", 0, True), ("output_length", 9, True),
    ("timestamp", -1, False), ("timestamp", float("nan"), False), ("timestamp+", 0.5, True),
    ("hash_ids", [], False), ("hash_ids", [-1, 2], False), ("hash_ids", "0,1", False),
    ("hash_ids", [0.5, 1], False), ("hash_ids", [True, 1], False), ("extra_key", 1, False),
)  # fmt: skip
ALIBABA_VALUES = (  # (text, valid?) for cpu_milli / memory_mib, read as whole numbers >= 0
    ("-5", False), ("abc", False), ("", False), ("nan", False), ("inf", False), ("1.5", False),
    ("9" * 5000, False), (str(2**63), False), ("12", True), ("12.0", True), ("1e3", True), ("0", True),
    (" 7", True), ("4096", True),
)  # fmt: skip
ALIBABA_PODS = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"
ALIBABA_NODES = "sn,cpu_milli,memory_mib,gpu,model"


# ---------------------------------------------------------------------------------------------- cases


def make_case(kind: str, rng: np.random.Generator, index: int) -> dict[str, Any]:
    """A JSON-serialisable case of ``kind`` (everything :func:`run_case` needs)."""
    case: dict[str, Any] = {"kind": kind, "index": index, "seed": int(rng.integers(0, 2**31))}
    if kind == "override":
        case["scenario"] = SCENARIOS[int(rng.integers(len(SCENARIOS)))]
        case["key"] = OVERRIDE_KEYS[int(rng.integers(len(OVERRIDE_KEYS)))]
        case["value"] = _json_value(VALUES[int(rng.integers(len(VALUES)))])
    elif kind == "valid":
        case["scenario"] = _valid_scenario(rng)
    elif kind == "action":
        case["env_id"] = sorted(ENV_CASES)[int(rng.integers(len(ENV_CASES)))]
        case["action"] = _json_value(ACTIONS[int(rng.integers(len(ACTIONS)))])
        case["steps_before"] = int(rng.integers(0, 3))
    elif kind == "azure_trace":
        row = int(rng.integers(len(AZURE_ROWS)))
        col = int(rng.integers(1, 3))
        text, valid = AZURE_FIELD_VALUES[int(rng.integers(len(AZURE_FIELD_VALUES)))]
        mutation = int(rng.integers(4))
        case.update(row=row, col=col, text=text, mutation=mutation)
        case["valid"] = valid if mutation == 0 else mutation == 3
    elif kind == "mooncake_trace":
        key, value, valid = MOONCAKE_VALUES[int(rng.integers(len(MOONCAKE_VALUES)))]
        mutation = int(rng.integers(4))  # 0: a value set, 1: a key dropped, 2: a line garbled, 3: untouched
        case.update(
            row=int(rng.integers(len(MOONCAKE_ROWS))), key=key, value=_json_value(value), mutation=mutation
        )
        case["valid"] = valid if mutation == 0 else mutation == 3
    else:
        text, valid = ALIBABA_VALUES[int(rng.integers(len(ALIBABA_VALUES)))]
        case.update(row=int(rng.integers(3)), col=int(rng.integers(1, 3)), text=text, valid=valid)
    return case


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return {"__float__": repr(v)}
    return v


def _from_json(v: Any) -> Any:
    if isinstance(v, dict):
        if "__float__" in v:
            return float(v["__float__"])
        if "__int_digits__" in v:
            return 10 ** int(v["__int_digits__"])
        if "__array__" in v:
            return np.asarray(v["__array__"], dtype=v["dtype"])
        return {k: _from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return v


def _valid_scenario(rng: np.random.Generator) -> dict[str, Any]:
    replicas = int(rng.integers(1, 5))
    kind = ["poisson", "onoff", "diurnal"][int(rng.integers(3))]
    arrival: dict[str, Any] = {"kind": kind}
    if kind == "poisson":
        arrival["rate_per_s"] = float(rng.uniform(0.5, 40.0))
    elif kind == "onoff":
        arrival.update(on_rate_per_s=float(rng.uniform(5, 60)), off_rate_per_s=float(rng.uniform(0, 5)),
                       mean_on_s=float(rng.uniform(5, 60)), mean_off_s=float(rng.uniform(5, 120)))  # fmt: skip
    else:
        arrival.update(mean_rate_per_s=float(rng.uniform(1, 30)), amplitude=float(rng.uniform(0, 1)),
                       period_s=float(rng.uniform(60, 600)))  # fmt: skip
    classes = [{"name": f"c{i}", "priority": int(rng.integers(0, 3)), "timeout_s": float(rng.uniform(5, 60)),
                "slo": {"ttft_s": float(rng.uniform(0.2, 5))}} for i in range(int(rng.integers(1, 3)))]  # fmt: skip
    routers = ["round_robin", "random", "least_connections", "power_of_two", "shortest_expected_delay",
               "central_queue", "affinity", "min_load", "least_time", "weighted_round_robin"]  # fmt: skip
    sc = {
        "horizon_s": float(rng.uniform(30, 180)),
        "control_interval_s": 15.0,
        "nodes": [
            {
                "gpu": ["a100-80gb", "h100-sxm-80gb", "l4"][int(rng.integers(3))],
                "count": int(rng.integers(1, 3)),
                "gpus_per_node": 8,
            }
        ],  # fmt: skip
        "models": [
            {
                "name": "llama-3-8b",
                "replicas": replicas,
                "min_replicas": 1,
                "max_replicas": replicas + int(rng.integers(0, 4)),
                "max_batch": int(rng.integers(1, 128)),
            }
        ],  # fmt: skip
        "workload": {"arrival": arrival, "classes": classes},
        "routing": routers[int(rng.integers(len(routers)))],
        "queue": ["fifo", "priority"][int(rng.integers(2))],
        "scaling": ["static", {"kind": "hpa", "metric": "in_flight_per_replica", "target": 8}][
            int(rng.integers(2))
        ],
    }
    if rng.random() < 0.5:  # the paged engine, with a small KV cache half the time (preemptions)
        sc["models"][0].update(
            kv_policy="paged", kv_block_tokens=[16, 32, 64][int(rng.integers(3))],
            max_batched_tokens=int(rng.integers(64, 8192)), chunked_prefill=bool(rng.random() < 0.7),
            prefix_caching=bool(rng.random() < 0.7),
            kv_memory_fraction=(0.75 if sc["nodes"][0]["gpu"] == "l4" else 0.25) if rng.random() < 0.5 else 0.9,
        )  # fmt: skip
        sc["routing"] = [sc["routing"], "prefix_aware", "kv_aware"][int(rng.integers(3))]
        if rng.random() < 0.5:  # multi-turn sessions with prompt block hashes
            sc["workload"]["arrival"] = {"kind": "sessions", "session_rate_per_s": float(rng.uniform(0.1, 3)),
                                         "think_time_s": float(rng.uniform(1, 30)), "block_tokens": 64}  # fmt: skip
            sc["workload"]["sizes"] = {
                "prompt_mean": 200,
                "prompt_p99": 1500,
                "output_mean": 150,
                "output_p99": 600,
            }
        if rng.random() < 0.3:  # disaggregated: the model's per-pool keys split over two pools
            m = sc["models"][0]
            pool_keys = ("replicas", "min_replicas", "max_replicas", "max_batch", "max_batched_tokens",
                         "chunked_prefill", "kv_memory_fraction")  # fmt: skip
            pool = {k: m.pop(k) for k in pool_keys if k in m}
            m.update(
                serving="disaggregated",
                prefill=dict(pool),
                decode={**pool, "max_batch": int(rng.integers(1, 256))},
            )
            sc["decode_routing"] = ["least_connections", "round_robin", "kv_aware", "power_of_two"][
                int(rng.integers(4))
            ]
    return sc


# ---------------------------------------------------------------------------------------------- running


def _named(exc: BaseException, *, names: tuple[str, ...] = ()) -> bool:
    """Whether ``exc`` is a named error: a config/value/runtime error whose message says where."""
    from envs.sim.errors import ConfigError

    if not isinstance(exc, (ConfigError, ValueError, RuntimeError)) or isinstance(exc, MemoryError):
        return False
    msg = str(exc)
    head = msg.split(": ", 1)[0]
    return (
        bool(head)
        and len(head) < 120
        and (" " not in head or any(n in head for n in names))
        or any(msg.startswith(n) for n in names)
    )


def _check_kpis(sim: Any, kpis: dict[str, float] | None) -> str | None:
    """An invariant broken by the simulator's state or an interval's KPIs (None: all hold)."""
    ep = sim.episode_kpis()
    if ep["requests_arrived"] != ep["requests_completed"] + ep["requests_dropped"] + ep["requests_in_system"]:
        return f"conservation: {ep}"
    if sim.in_system() != ep["requests_in_system"] or sim.in_system() < 0:
        return f"in_system {sim.in_system()} vs {ep['requests_in_system']}"
    for k, v in {**ep, **(kpis or {})}.items():
        if not math.isfinite(v):
            return f"{k} = {v}"
    for d in (ep, kpis or {}):
        if not 0.0 <= d.get("slo_attainment", 1.0) <= 1.0 or not 0.0 <= d.get("utilization", 0.0) <= 1.0:
            return f"ratio out of [0, 1]: {d}"
        if any(
            d.get(k, 0.0) < 0 for k in ("gpu_seconds", "cost_usd", "requests_completed", "slo_violations")
        ):
            return f"negative count: {d}"
        if not 0.0 <= d.get("prefix_hit_rate", 0.0) <= 1.0 or d.get("preemptions", 0.0) < 0:
            return f"paged engine KPI out of range: {d}"
    for v in sim.replica_views():  # KV held never exceeds capacity (both engines)
        if v.kv_reserved_tokens > v.kv_capacity_tokens or v.kv_blocks_free < 0:
            return f"replica {v.id}: KV {v.kv_reserved_tokens} of {v.kv_capacity_tokens}, {v.kv_blocks_free} blocks free"
    return None


def run_case(case: dict[str, Any], scratch: Path) -> tuple[str, str]:
    """(outcome, detail) of one case, run in this process."""
    kind = case["kind"]
    try:
        if kind == "selftest":  # the harness checking itself (tests): how each bad outcome looks
            return _selftest(case["mode"])
        if kind == "override":
            return _run_override(case)
        if kind == "valid":
            return _run_valid(case)
        if kind == "action":
            return _run_action(case)
        if kind == "azure_trace":
            return _run_azure(case, scratch)
        if kind == "mooncake_trace":
            return _run_mooncake(case, scratch)
        return _run_alibaba(case, scratch)
    except MemoryError as exc:
        return "crash", f"MemoryError: {exc}"[:300]


def _selftest(mode: str) -> tuple[str, str]:
    if mode == "raise":
        raise KeyError("an unnamed error")
    if mode == "hang":
        time.sleep(3600)
    if mode == "die":
        os._exit(3)
    if mode == "allocate":
        return "ok", str(len(bytearray(2**40)))
    return "ok", ""


def _run_override(case: dict[str, Any]) -> tuple[str, str]:
    from envs.sim import Simulator

    try:
        sim = Simulator(case["scenario"], case["seed"], overrides={case["key"]: _from_json(case["value"])})
    except Exception as exc:  # noqa: BLE001  (the point is to classify every exception)
        return ("named_error" if _named(exc) else "crash"), f"{type(exc).__name__}: {exc}"[:300]
    sim.advance(min(30.0, sim.scenario.horizon_s))
    broken = _check_kpis(sim, sim.interval_kpis())
    return ("silently_wrong", broken) if broken else ("ok", "")


def _run_valid(case: dict[str, Any]) -> tuple[str, str]:
    from envs.sim import Simulator
    from envs.sim.clock import ControlClock

    sim = Simulator(case["scenario"], case["seed"])
    clock = ControlClock(sim)
    while not clock.done:
        clock.advance()
        broken = _check_kpis(sim, sim.control_step())
        if broken:
            return "silently_wrong", broken
    return "ok", ""


def _run_action(case: dict[str, Any]) -> tuple[str, str]:
    import warnings

    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(case["env_id"], **ENV_CASES[case["env_id"]]).unwrapped
    env.reset(seed=case["seed"])
    for _ in range(case["steps_before"]):
        a = (
            int(np.flatnonzero(env.action_masks())[0])
            if hasattr(env, "action_masks")
            else env.action_space.sample()
        )
        if env.step(a)[3]:
            env.reset(seed=case["seed"])
    action = _from_json(case["action"])
    try:
        contained = bool(env.action_space.contains(action)) and bool(
            np.all(np.mod(np.asarray(action), 1) == 0)
        )
    except Exception:  # noqa: BLE001
        contained = False
    names = tuple(c.__name__ for c in type(env).__mro__)  # a version's class errors as its base names it
    try:
        env.step(action)
    except Exception as exc:  # noqa: BLE001
        if contained:
            return "silently_wrong", f"refused an action the space contains: {exc}"[:300]
        named = isinstance(exc, ValueError) and str(exc).startswith(names)
        return ("named_error" if named else "crash"), f"{type(exc).__name__}: {exc}"[:300]
    if not contained:
        return "silently_wrong", f"accepted {action!r}, not in {env.action_space}"
    return "ok", ""


def _read_expect(case: dict[str, Any], read: Any, path: Path) -> tuple[str, str]:
    try:
        read()
    except Exception as exc:  # noqa: BLE001
        named = _named(exc, names=(path.name,)) and path.name in str(exc)
        if case["valid"]:
            return "silently_wrong", f"refused a valid file: {exc}"[:300]
        return ("named_error" if named else "crash"), f"{type(exc).__name__}: {exc}"[:300]
    return ("ok", "") if case["valid"] else ("silently_wrong", "accepted an invalid file")


def _run_azure(case: dict[str, Any], scratch: Path) -> tuple[str, str]:
    from envs.sim.workload import read_azure_trace

    rows = list(AZURE_ROWS)
    r, m = case["row"], case["mutation"]
    if m == 0:  # a token count replaced
        fields = rows[r].split(",")
        fields[case["col"]] = case["text"]
        rows[r] = ",".join(fields)
    elif m == 1:  # a column dropped
        rows[r] = ",".join(rows[r].split(",")[:2])
    elif m == 2:  # a timestamp garbled
        rows[r] = "2023-13-45 99:99:99" + rows[r][19:]
    # m == 3: untouched (valid)
    path = scratch / f"azure-{case['index']}.csv"
    path.write_text("\n".join([AZURE_HEADER, *rows]) + "\n")
    return _read_expect(case, lambda: read_azure_trace(path), path)


def _run_mooncake(case: dict[str, Any], scratch: Path) -> tuple[str, str]:
    from envs.sim.prefixes import read_mooncake_trace

    rows = [dict(r) for r in MOONCAKE_ROWS]
    r, m = case["row"], case["mutation"]
    lines = [json.dumps(x) for x in rows]
    if m == 0:  # one value set (a length change keeps hash_ids consistent unless hash_ids is the key)
        row = rows[r]
        value = _from_json(case["value"])
        if case["key"] == "timestamp+":  # a fractional millisecond on the row's own time (still sorted)
            row["timestamp"] += value
        else:
            row[case["key"]] = value
        if (
            case["key"] == "input_length"
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value <= 10**7
        ):
            row["hash_ids"] = list(range(-(-value // 512)))
        lines[r] = json.dumps(row)
    elif m == 1:  # a key dropped
        del rows[r]["output_length"]
        lines[r] = json.dumps(rows[r])
    elif m == 2:  # a line cut short
        lines[r] = lines[r][: len(lines[r]) // 2]
    path = scratch / f"mooncake-{case['index']}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return _read_expect(case, lambda: read_mooncake_trace(path), path)


def _run_alibaba(case: dict[str, Any], scratch: Path) -> tuple[str, str]:
    from envs.sim.jobtrace import read_alibaba_trace

    pods = [f"pod-{i},{1000 * (i + 1)},{2048},1,{500 + 100 * i},,LS,Running,{10 * i},{10 * i + 100},{10 * i + 1}"
            for i in range(3)]  # fmt: skip
    fields = pods[case["row"]].split(",")
    fields[case["col"]] = case["text"]
    pods[case["row"]] = ",".join(fields)
    pods_path, nodes_path = scratch / f"pods-{case['index']}.csv", scratch / f"nodes-{case['index']}.csv"
    pods_path.write_text("\n".join([ALIBABA_PODS, *pods]) + "\n")
    nodes_path.write_text(f"{ALIBABA_NODES}\nnode-0,96000,393216,8,V100M32\n")
    return _read_expect(case, lambda: read_alibaba_trace(pods_path, nodes_path), pods_path)


# ---------------------------------------------------------------------------------------------- workers


def worker(memory_mib: int, scratch: str) -> None:
    """Read one JSON case per line on stdin, answer one JSON result per line on stdout."""
    import resource

    limit = memory_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    for line in sys.stdin:
        case = json.loads(line)
        t0 = time.perf_counter()
        try:
            outcome, detail = run_case(case, Path(scratch))
        except Exception as exc:  # noqa: BLE001
            outcome, detail = "crash", f"{type(exc).__name__}: {exc}"[:300]
        out.write(json.dumps({"outcome": outcome, "detail": detail, "s": time.perf_counter() - t0}) + "\n")
        out.flush()


class Worker:
    def __init__(self, memory_mib: int, scratch: Path) -> None:
        cmd = [sys.executable, "-m", "experiments.fuzz", "--worker", "--memory-mib", str(memory_mib),
               "--scratch", str(scratch)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        self.case: dict[str, Any] | None = None
        self.started = 0.0

    def send(self, case: dict[str, Any]) -> None:
        self.case, self.started = case, time.monotonic()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run(cases: list[dict[str, Any]], workers: int, timeout_s: float, memory_mib: int, scratch: Path,
        progress: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """Run every case in ``workers`` processes; one result dict per case, in order."""
    scratch.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any] | None] = [None] * len(cases)
    todo = list(range(len(cases)))[::-1]
    pool = [Worker(memory_mib, scratch) for _ in range(min(workers, len(cases)))]
    idle = list(pool)
    busy: list[tuple[Worker, int]] = []
    done = 0
    while todo or busy:
        while idle and todo:
            w, i = idle.pop(), todo.pop()
            w.send(cases[i])
            busy.append((w, i))
        ready, _, _ = select.select([w.proc.stdout for w, _ in busy], [], [], 0.2)
        still = []
        for w, i in busy:
            if w.proc.stdout in ready:
                line = w.proc.stdout.readline()
                if line:
                    results[i] = json.loads(line)
                    idle.append(w)
                else:  # the worker died with the case (a segfault, the memory limit, ...)
                    code = w.proc.wait()
                    results[i] = {"outcome": "crash", "detail": f"worker died (exit {code})", "s": 0.0}
                    idle.append(Worker(memory_mib, scratch))
                done += 1
            elif time.monotonic() - w.started > timeout_s:
                w.kill()
                results[i] = {"outcome": "hang", "detail": f"over {timeout_s} s", "s": timeout_s}
                idle.append(Worker(memory_mib, scratch))
                done += 1
            else:
                still.append((w, i))
        busy = still
        if progress and done and done % 100 == 0:
            print(f"\r{done}/{len(cases)} cases", end="", file=sys.stderr, flush=True)
    for w in idle:
        w.proc.stdin.close()
        w.kill()
    if progress:
        print(file=sys.stderr)
    return [{**c, **r} for c, r in zip(cases, results, strict=True)]


def write_repro(result: dict[str, Any], out: Path) -> Path:
    """A runnable script that re-runs one case in this process and prints its outcome."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['outcome']}-{result['kind']}-{result['index']}.py"
    case = {k: result[k] for k in result if k not in ("outcome", "detail", "s")}
    path.write_text(
        f"# {result['outcome']}: {result['detail']}\n"
        "import json, sys, tempfile\nfrom pathlib import Path\n"
        "from experiments.fuzz import run_case\n"
        f"case = json.loads({json.dumps(json.dumps(case))})\n"
        "print(run_case(case, Path(tempfile.mkdtemp())))\n"
    )
    return path


def main(argv: list[str] | None = None) -> dict[str, int]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=500, help="number of cases (spread evenly over --kinds)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the case generator")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="case kinds to run")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="a case running longer is a hang")
    ap.add_argument("--memory-mib", type=int, default=6144, help="address-space limit of a worker (MiB)")
    ap.add_argument(
        "--out", default="runs/fuzz", help="folder for repros of crashes, hangs, silent acceptances"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.memory_mib, args.scratch)
        return {}
    if args.cases < 1 or args.workers < 1 or args.timeout_s <= 0 or args.memory_mib < 512:
        ap.error("--cases and --workers must be >= 1, --timeout-s > 0, --memory-mib >= 512")
    rng = np.random.default_rng(args.seed)
    cases = [make_case(args.kinds[i % len(args.kinds)], rng, i) for i in range(args.cases)]
    out = Path(args.out)
    t0 = time.perf_counter()
    results = run(cases, args.workers, args.timeout_s, args.memory_mib, out / "scratch")
    counts = Counter(r["outcome"] for r in results)
    by_kind = Counter((r["kind"], r["outcome"]) for r in results)
    print(f"{len(results)} cases in {time.perf_counter() - t0:.0f} s (seed {args.seed})")
    print(f"{'kind':<16}" + "".join(f"{o:>16}" for o in OUTCOMES))
    for kind in args.kinds:
        print(f"{kind:<16}" + "".join(f"{by_kind[kind, o]:>16}" for o in OUTCOMES))
    print(f"{'all':<16}" + "".join(f"{counts[o]:>16}" for o in OUTCOMES))
    bad = [r for r in results if r["outcome"] in ("crash", "hang", "silently_wrong")]
    for r in bad:
        print(f"  {r['outcome']}: {write_repro(r, out / 'repro')}  {r['detail'][:160]}")
    (out / "summary.json").write_text(json.dumps({o: counts[o] for o in OUTCOMES}) + "\n")
    return {o: counts[o] for o in OUTCOMES}


if __name__ == "__main__":
    counts = main()
    sys.exit(1 if any(counts.get(o, 0) for o in ("crash", "hang", "silently_wrong")) else 0)
