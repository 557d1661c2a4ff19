"""The cases of :mod:`experiments.fuzz`: the pools of awkward values, the small valid trace files
they mutate, and :func:`make_case`, which draws one JSON case of a kind from a generator (a random
valid scenario for ``valid``). Running and judging the cases is :mod:`experiments.fuzz`'s job.
"""

from __future__ import annotations

import math
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
