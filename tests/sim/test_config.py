"""Scenario loading and validation: shipped scenarios, overrides, YAML, defaults and error messages.

Every bad setting must raise :class:`~envs.sim.errors.ConfigError` whose message
names the full key path and the bad value (``docs/scenarios.md``); the property
tests mutate a valid scenario at random places and check exactly that, through
:class:`~envs.sim.Simulator` so the controllers' own parameter checks are covered.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines.placement import PLACERS
from baselines.scaling import SCALERS
from envs.sim import ConfigError, Scenario, Simulator, load_scenario, run_scenario, shipped_scenarios
from envs.sim import kernel as K
from envs.sim.config import ARRIVAL_KEYS, DEFAULT_REWARD, ROUTERS, deep_merge
from envs.sim.hardware import GPU_PRESETS, MODEL_PRESETS
from envs.sim.metrics import KPI_KEYS
from tests.paths import AZURE_CONV_TRACE, REPO, trace_overrides

TRACE = AZURE_CONV_TRACE
TRACE_OVERRIDE = {"workload": {"arrival": {"path": str(TRACE)}}}
HYPOTHESIS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def overrides_for(name: str) -> dict:
    return trace_overrides(name)


def test_dwell_shape_is_validated_and_defaults_to_memoryless():
    assert load_scenario("spiky").workload.arrival.params["dwell_shape"] == 1.0
    assert load_scenario("bursty").workload.arrival.params["dwell_shape"] == 16.0
    onoff = {"kind": "onoff", "on_rate_per_s": 5, "mean_on_s": 10, "mean_off_s": 20}
    mmpp = {"kind": "mmpp", "rates_per_s": [1, 5], "mean_dwell_s": [10, 20]}
    for arrival in (onoff, mmpp):
        raw = {"service": {"kind": "exponential", "mean_s": 1.0}, "models": [{"name": "m", "replicas": 1}],
               "workload": {"arrival": {**arrival, "dwell_shape": 0}}}  # fmt: skip
        with pytest.raises(ConfigError, match=r"workload\.arrival\.dwell_shape: 0 must be > 0"):
            load_scenario(raw)


# ----------------------------------------------------------------------------- shipped scenarios


def test_the_shipped_scenarios_are_the_documented_ones():
    expected = {
        "azure-conv",
        "mooncake-conv",
        "disaggregated",
        "bursty",
        "default",
        "diurnal",
        "heterogeneous",
        "multi-model",
        "spiky",
        "spot",
        "steady",
    }
    assert set(shipped_scenarios()) == expected
    docs = (REPO / "docs" / "scenarios.md").read_text()
    for name in expected:
        assert f"`{name}`" in docs, f"{name} missing from docs/scenarios.md"


@pytest.mark.parametrize("name", shipped_scenarios())
def test_every_shipped_scenario_loads_and_runs(name: str):
    sc = load_scenario(name, overrides_for(name))
    assert isinstance(sc, Scenario)
    assert sc.name == name
    assert sc.description
    assert sc.horizon_s >= 1800 and sc.control_interval_s == 15
    # a short run exercises the controllers the scenario names
    kpis = run_scenario(name, 0, overrides={**overrides_for(name), "horizon_s": 60})
    assert set(KPI_KEYS) <= set(kpis)
    assert kpis["requests_arrived"] > 0 and kpis["requests_completed"] > 0


def test_azure_conv_replays_the_trace_sizes():
    # variation none: every seed replays the trace's own rows (the shipped scenario bootstraps sizes)
    over = {**TRACE_OVERRIDE, "horizon_s": 300, "workload.arrival.variation": "none"}
    sim = Simulator("azure-conv", 0, overrides=over)
    assert sim.scenario.workload.arrival.kind == "trace"
    assert sim.scenario.workload.sizes.kind == "trace"
    # the first trace row is 374 prompt and 44 output tokens at t=0
    assert sim.state.rf[0, K.R_ARR] == 0.0
    assert (int(sim.state.ri[0, K.R_PROMPT]), int(sim.state.ri[0, K.R_OUTPUT])) == (374, 44)


def test_azure_conv_without_a_trace_path_says_how_to_give_one():
    with pytest.raises(ConfigError) as err:
        load_scenario("azure-conv")
    msg = str(err.value)
    assert msg.startswith("workload.arrival.path: None must be the path of an Azure LLM inference trace CSV")
    assert "AzureLLMInferenceTrace_conv.csv" in msg


def test_a_missing_trace_file_names_the_key_and_the_path():
    with pytest.raises(ConfigError) as err:
        Simulator("azure-conv", 0, overrides={"workload.arrival.path": "no/such/trace.csv"})
    assert "workload.arrival.path" in str(err.value)
    assert "no/such/trace.csv" in str(err.value)


# ----------------------------------------------------------------------------- sources and overrides


def test_dotted_and_nested_overrides_merge_into_the_scenario():
    base = load_scenario("default")
    dotted = load_scenario(
        "default", {"workload.arrival.rate_per_s": 7, "models": [{"name": "llama-3-8b", "replicas": 2}]}
    )
    assert dotted.workload.arrival.params == {"rate_per_s": 7.0}
    assert dotted.workload.sizes == base.workload.sizes  # siblings of the overridden key stay
    assert dotted.workload.classes == base.workload.classes
    assert (
        dotted.models[0].replicas == 2 and dotted.models[0].max_replicas == 8
    )  # lists replace, defaults apply
    nested = load_scenario("default", {"workload": {"arrival": {"rate_per_s": 7}}, "storage.startup_s": 5})
    assert nested.workload.arrival == dotted.workload.arrival
    assert nested.storage.startup_s == 5.0 and nested.storage.cache_ttl_s == base.storage.cache_ttl_s
    # a Scenario plus overrides re-validates its raw settings
    again = load_scenario(base, {"horizon_s": 60})
    assert again.horizon_s == 60.0 and base.horizon_s == 3600.0
    assert load_scenario(base) is base


@pytest.mark.parametrize("bad", [[], 0, [("horizon_s", 60)], "horizon_s=60", 1.5])
def test_overrides_that_are_not_a_mapping_raise_naming_overrides(bad):
    for spec in ("default", load_scenario("default"), {"models": [{"name": "llama-3-8b"}]}):
        with pytest.raises(ConfigError, match=r"^overrides: .* must be a mapping"):
            load_scenario(spec, bad)
    with pytest.raises(ConfigError, match=r"^overrides: .* must be a mapping"):
        deep_merge({"horizon_s": 60}, bad)
    # None means no overrides
    assert load_scenario("default", None) == load_scenario("default") == load_scenario("default", {})
    assert deep_merge({"a": {"b": 1}}, None) == {"a": {"b": 1}}


def test_deep_merge_expands_dotted_keys_at_any_depth_and_copies():
    base = {"a": {"b": {"c": 1, "d": [1, 2]}}, "x": 1}
    over = {"a.b.c": 2, "n.m.k": 3, "x": {"y.z": 4}, "a": {"e.f": 5}}
    out = deep_merge(base, over)
    assert out == {
        "a": {"b": {"c": 2, "d": [1, 2]}, "e": {"f": 5}},
        "x": {"y": {"z": 4}},
        "n": {"m": {"k": 3}},
    }
    out["a"]["b"]["d"].append(3)  # a deep copy: the inputs are untouched
    assert base == {"a": {"b": {"c": 1, "d": [1, 2]}}, "x": 1}
    assert over == {"a.b.c": 2, "n.m.k": 3, "x": {"y.z": 4}, "a": {"e.f": 5}}
    assert deep_merge({"a": {"b": 1}}, {"a": 3, "k": None}) == {"a": 3, "k": None}  # non-mappings replace


def test_an_override_of_another_kind_replaces_the_mapping_and_one_of_the_same_kind_merges():
    base = {"s": {"kind": "hpa", "target": 48, "metric": "m"}}
    assert deep_merge(base, {"s": {"kind": "kpa"}}) == {"s": {"kind": "kpa"}}
    assert deep_merge(base, {"s.kind": "kpa"}) == {"s": {"kind": "kpa"}}  # dotted: the same rule
    assert deep_merge(base, {"s": {"kind": "hpa", "target": 8}}) == {
        "s": {"kind": "hpa", "target": 8, "metric": "m"}
    }
    assert deep_merge(base, {"s": {"target": 8}}) == {"s": {"kind": "hpa", "target": 8, "metric": "m"}}
    assert deep_merge({"s": {"a": 1}}, {"s": {"kind": "x"}}) == {
        "s": {"a": 1, "kind": "x"}
    }  # no kind to differ
    # as a user writes it: bursty's on/off arrivals become a Poisson process, its HPA a KPA
    sc = load_scenario(
        "bursty", {"workload": {"arrival": {"kind": "poisson", "rate_per_s": 10}}, "scaling.kind": "kpa"}
    )
    assert sc.workload.arrival.kind == "poisson" and sc.scaling.kind == "kpa"


def test_yaml_path_loads_and_names_the_scenario_after_the_file(tmp_path: Path):
    raw = {
        "models": [{"name": "llama-2-7b", "replicas": 2}],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 3}},
        "horizon_s": 120,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    for spec in (path, str(path)):
        sc = load_scenario(spec, {"horizon_s": 60})
        assert sc.name == "tiny" and sc.horizon_s == 60.0 and sc.models[0].spec.name == "llama-2-7b"
    assert load_scenario(path) == load_scenario({**raw, "name": "tiny"})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("models: [unclosed", "is not valid YAML"),
        ("- just\n- a list\n", "must hold a mapping at the top level"),
    ],
)
def test_bad_yaml_files_raise_config_errors(tmp_path: Path, content: str, match: str):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_scenario(path)


def test_unknown_scenario_names_list_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"scenario: 'nope' must be a shipped scenario name \['azure-conv'"):
        load_scenario("nope")
    with pytest.raises(ConfigError, match=r"scenario: 3 must be a scenario name"):
        load_scenario(3)  # type: ignore[arg-type]


def test_minimal_scenario_gets_the_documented_defaults():
    sc = load_scenario(
        {"models": [{"name": "llama-3-8b"}], "workload": {"arrival": {"kind": "poisson", "rate_per_s": 1}}}
    )
    assert (sc.name, sc.horizon_s, sc.control_interval_s, sc.tick_s) == ("custom", 3600.0, 15.0, 1.0)
    assert [(n.gpu.name, n.count, n.gpus_per_node, n.cached_models) for n in sc.nodes] == [
        ("a100-80gb", 2, 8, ())
    ]
    m = sc.models[0]
    assert (m.replicas, m.min_replicas, m.max_replicas, m.tensor_parallel, m.max_batch, m.kv_memory_fraction) == (
        1, 0, 4, 1, 256, 0.9
    )  # fmt: skip
    assert m.gpu_types == ("a100-80gb",)
    assert sc.service.kind == "roofline" and sc.queue == "fifo"
    assert (sc.routing.kind, sc.placement.kind, sc.scaling.kind) == (
        "least_connections",
        "first_fit",
        "static",
    )
    assert dataclasses.astuple(sc.storage) == (2.0, 8.0, 3600.0, 20.0)
    assert sc.workload.sizes.kind == "lognormal" and sc.workload.model_mix == {"llama-3-8b": 1.0}
    (cls,) = sc.workload.classes
    assert (cls.name, cls.share, cls.priority, cls.timeout_s) == ("interactive", 1.0, 0, math.inf)
    assert (cls.slo.ttft_s, cls.slo.tpot_s, cls.slo.e2e_s) == (2.0, 0.2, None)
    assert dict(sc.reward) == DEFAULT_REWARD
    with pytest.raises(dataclasses.FrozenInstanceError):
        sc.horizon_s = 1.0  # type: ignore[misc]


# ----------------------------------------------------------------------------- error messages


BASE: dict[str, Any] = {
    "horizon_s": 60,
    "control_interval_s": 15,
    "tick_s": 1,
    "nodes": [{"name": "a", "gpu": "a100-80gb", "count": 1, "gpus_per_node": 8, "cached_models": ["llama-3-8b"]}],
    "models": [
        {"name": "llama-3-8b", "replicas": 1, "min_replicas": 1, "max_replicas": 4, "tensor_parallel": 1,
         "max_batch": 64, "kv_memory_fraction": 0.9, "gpu_types": ["a100-80gb"]}
    ],
    "service": {
        "kind": "roofline", "mean_s": 1.0, "compute_efficiency": 0.7, "bandwidth_efficiency": 0.7,
        "iteration_overhead_s": 0.0,
    },
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 2.0},
        "sizes": {"kind": "lognormal", "prompt_mean": 500, "prompt_p99": 2000, "output_mean": 100, "output_p99": 400},
        "model_mix": {"llama-3-8b": 1.0},
        "classes": [
            {"name": "c", "share": 1.0, "priority": 0, "timeout_s": 30, "slo": {"ttft_s": 2.0, "tpot_s": 0.2, "e2e_s": 60}}
        ],
    },
    "routing": {"kind": "affinity", "load_bound_eps": 0.25},
    "placement": "first_fit",
    "scaling": {"kind": "hpa", "metric": "in_flight_per_replica", "target": 8},
    "queue": "fifo",
    "storage": {"remote_bandwidth_gbps": 2, "local_bandwidth_gbps": 8, "cache_ttl_s": 3600, "startup_s": 20},
    "reward": {"gpu_cost": 0.02},
}  # fmt: skip

# (key path, lower bound kind): "gt0" must be > 0, "ge0" >= 0, "ge1" >= 1 (integers where int=True)
NUMERIC_KEYS: list[tuple[tuple[Any, ...], str, bool]] = [
    (("horizon_s",), "gt0", False),
    (("control_interval_s",), "gt0", False),
    (("tick_s",), "gt0", False),
    (("nodes", 0, "count"), "ge1", True),
    (("nodes", 0, "gpus_per_node"), "ge1", True),
    (("models", 0, "replicas"), "ge0", True),
    (("models", 0, "min_replicas"), "ge0", True),
    (("models", 0, "max_replicas"), "ge1", True),
    (("models", 0, "tensor_parallel"), "ge1", True),
    (("models", 0, "max_batch"), "ge1", True),
    (("models", 0, "kv_memory_fraction"), "gt0", False),
    (("service", "mean_s"), "gt0", False),
    (("service", "compute_efficiency"), "gt0", False),
    (("service", "bandwidth_efficiency"), "gt0", False),
    (("service", "iteration_overhead_s"), "ge0", False),
    (("workload", "arrival", "rate_per_s"), "gt0", False),
    (("workload", "sizes", "prompt_mean"), "ge1", False),
    (("workload", "sizes", "output_p99"), "ge1", False),
    (("workload", "model_mix", "llama-3-8b"), "ge0", False),
    (("workload", "classes", 0, "share"), "gt0", False),
    (("workload", "classes", 0, "priority"), "ge0", True),
    (("workload", "classes", 0, "timeout_s"), "gt0", False),
    (("workload", "classes", 0, "slo", "ttft_s"), "gt0", False),
    (("workload", "classes", 0, "slo", "e2e_s"), "gt0", False),
    (("routing", "load_bound_eps"), "ge0", False),
    (("scaling", "target"), "gt0", False),
    (("storage", "remote_bandwidth_gbps"), "gt0", False),
    (("storage", "local_bandwidth_gbps"), "gt0", False),
    (("storage", "cache_ttl_s"), "ge0", False),
    (("storage", "startup_s"), "ge0", False),
    (("reward", "gpu_cost"), "ge0", False),
]
MAPPING_KEYS: list[tuple[Any, ...]] = [
    (),
    ("nodes", 0),
    ("models", 0),
    ("service",),
    ("workload",),
    ("workload", "arrival"),
    ("workload", "sizes"),
    ("workload", "classes", 0),
    ("workload", "model_mix"),
    ("workload", "classes", 0, "slo"),
    ("routing",),
    ("scaling",),
    ("storage",),
    ("reward",),
]
STRUCTURE_KEYS: list[tuple[Any, ...]] = [
    ("nodes",), ("models",), ("service",), ("workload",), ("workload", "arrival"), ("workload", "sizes"),
    ("workload", "model_mix"), ("workload", "classes"), ("workload", "classes", 0), ("storage",), ("reward",),
    ("routing",), ("scaling",), ("placement",), ("queue",), ("nodes", 0, "gpu"), ("nodes", 0, "cached_models"),
    ("models", 0, "spec"), ("models", 0, "gpu_types"), ("workload", "arrival", "kind"), ("workload", "sizes", "kind"),
]  # fmt: skip
# Strings some of those keys accept (preset and controller names, kinds); a random string must not be one.
VALID_NAMES = (
    set(GPU_PRESETS) | set(MODEL_PRESETS) | set(ROUTERS) | set(SCALERS) | set(PLACERS) | set(ARRIVAL_KEYS)
    | {"fifo", "priority", "roofline", "exponential", "deterministic", "lognormal", "fixed", "trace"}
)  # fmt: skip


def key_path(keys: tuple[Any, ...]) -> str:
    """``("workload", "classes", 0, "slo")`` -> ``workload.classes[0].slo``."""
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


def with_value(keys: tuple[Any, ...], value: Any) -> dict:
    raw = copy.deepcopy(BASE)
    node = raw
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return raw


def build(raw: dict) -> Simulator:
    return Simulator(raw, 0)


def assert_config_error(raw: dict, *fragments: str) -> str:
    """Loading ``raw`` raises ConfigError (and nothing else) whose message holds every fragment."""
    with pytest.raises(ConfigError) as err:
        build(raw)
    msg = str(err.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def test_the_base_scenario_of_the_property_tests_is_valid():
    sim = build(copy.deepcopy(BASE))
    assert sim.scenario.routing.kind == "affinity" and sim.scenario.scaling.kind == "hpa"


def bad_numbers(bound: str, integer: bool) -> st.SearchStrategy:
    limit = {"gt0": 0, "ge0": 0, "ge1": 1}[bound]
    below = st.floats(max_value=limit, exclude_max=bound != "gt0", allow_nan=False, allow_infinity=False)
    below_int = st.integers(max_value=limit if bound == "gt0" else limit - 1)
    out = below | below_int | st.just(math.nan)
    if integer:
        out = out | st.floats(0.01, 100.0).filter(lambda x: not x.is_integer())
    return out


@HYPOTHESIS
@given(data=st.data())
def test_out_of_range_numbers_name_the_key_and_the_value(data: st.DataObject):
    keys, bound, integer = data.draw(st.sampled_from(NUMERIC_KEYS))
    value = data.draw(bad_numbers(bound, integer))
    assert_config_error(with_value(keys, value), key_path(keys), repr(value))


@pytest.mark.parametrize(
    ("keys", "bound", "integer"), NUMERIC_KEYS, ids=[key_path(k[0]) for k in NUMERIC_KEYS]
)
def test_every_numeric_key_rejects_its_boundary_value(keys: tuple[Any, ...], bound: str, integer: bool):
    # the largest invalid value below each bound: 0 where > 0 is required, -1 (or 0 for >= 1) else
    value = {"gt0": 0, "ge0": -1, "ge1": 0}[bound]
    msg = assert_config_error(with_value(keys, value), key_path(keys), repr(value))
    assert msg.startswith(key_path(keys) + ":")
    assert_config_error(with_value(keys, "7"), key_path(keys), "'7' must be a number")


@HYPOTHESIS
@given(extra=st.integers(1, 100))
def test_replicas_above_max_replicas_name_the_key_and_the_value(extra: int):
    value = BASE["models"][0]["max_replicas"] + extra
    assert_config_error(
        with_value(("models", 0, "replicas"), value), "models[0].replicas", repr(value), "[1, 4]"
    )


WRONG_TYPES = (
    st.text(max_size=8).filter(lambda s: s not in VALID_NAMES)
    | st.booleans()
    | st.lists(st.integers(), min_size=1, max_size=2)
    | st.dictionaries(st.sampled_from(["x", "y"]), st.integers(), min_size=1, max_size=1)
)


def value_named(msg: str, value: Any) -> bool:
    """The message shows the bad value: itself, or the offending element / key of a container."""
    if repr(value) in msg:
        return True
    if isinstance(value, list):
        return repr(value[0]) in msg
    if isinstance(value, dict):
        return any(f".{k}: unknown key" in msg for k in value)
    return False


@HYPOTHESIS
@given(data=st.data())
def test_numbers_of_the_wrong_type_name_the_key_and_the_value(data: st.DataObject):
    keys, _, _ = data.draw(st.sampled_from(NUMERIC_KEYS))
    value = data.draw(WRONG_TYPES)
    assert_config_error(with_value(keys, value), key_path(keys), repr(value))


@HYPOTHESIS
@given(data=st.data())
def test_structures_of_the_wrong_type_name_the_key_and_the_value(data: st.DataObject):
    keys = data.draw(st.sampled_from(STRUCTURE_KEYS))
    value = data.draw(WRONG_TYPES | st.integers())
    # where a key takes a bare string (a controller, GPU preset or kind name), the message names
    # the key it is read as, e.g. `service.kind`, which starts with the key path
    msg = assert_config_error(with_value(keys, value), key_path(keys))
    assert value_named(msg, value), f"{value!r} not shown in {msg!r}"


@HYPOTHESIS
@given(data=st.data())
def test_unknown_keys_at_any_depth_are_errors_naming_their_path(data: st.DataObject):
    keys = data.draw(st.sampled_from(MAPPING_KEYS))
    name = "x_" + data.draw(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10)
    )
    value = data.draw(st.integers() | st.text(max_size=4) | st.none())
    msg = assert_config_error(with_value((*keys, name), value), key_path((*keys, name)), "unknown key")
    assert msg.startswith(key_path((*keys, name)) + ":")


MINI: dict[str, Any] = {
    "models": [{"name": "llama-3-8b"}],
    "workload": {"arrival": {"kind": "poisson", "rate_per_s": 2.0}},
    "horizon_s": 60,
}


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"models": [{"name": "llama-3-8b", "min_replicas": 3, "max_replicas": 2}]}, ["models[0].min_replicas: 3", "<= max_replicas (2)"]),
        ({"control_interval_s": 120}, ["control_interval_s: 120.0 must be <= horizon_s (60.0)"]),
        ({"tick_s": 20}, ["tick_s: 20.0 must be <= control_interval_s (15.0)"]),
        ({"workload.model_mix": {"other": 1.0}}, ["workload.model_mix.other: unknown key"]),
        ({"workload.model_mix": {"llama-3-8b": 0.0}}, ["workload.model_mix", "must give some model a weight > 0"]),
        ({"workload.sizes": {"kind": "trace"}}, ["workload.sizes.kind: 'trace' needs workload.arrival.kind: trace"]),
        ({"workload.sizes": {"prompt_mean": 500, "prompt_p99": 400}}, ["workload.sizes.prompt_p99: 400.0 must be > prompt_mean"]),
        ({"workload.classes": [{"name": "a"}, {"name": "a"}]}, ["workload.classes: ['a', 'a'] must have distinct names"]),
        ({"workload.classes": []}, ["workload.classes: [] must be a non-empty list"]),
        ({"workload.classes": [{"share": 1}]}, ["workload.classes[0].name: required key is missing"]),
        ({"workload.classes": [{"name": "a", "priority": 16}]}, ["workload.classes[0].priority: 16 must be <= 15"]),
        ({"models": [{"name": "m", "spec": "llama-3-8b"}] * 2, "workload.model_mix": {"m": 1}}, ["models: ['m', 'm'] must have distinct names"]),
        ({"nodes": [{"gpu": "a100-80gb", "cached_models": ["other"]}]}, ["nodes[0].cached_models[0]: 'other' must be one of the models"]),
        ({"models": [{"name": "llama-3-8b", "gpu_types": ["h100-sxm-80gb"]}]}, ["models[0].gpu_types[0]: 'h100-sxm-80gb' must be a GPU type"]),
        ({"nodes": [{"gpu": "a101"}]}, ["nodes[0].gpu: 'a101' is not a known GPU preset"]),
        ({"nodes": [{"gpu": {"preset": "a100-80gb", "memory_gb": -1}}]}, ["nodes[0].gpu.memory_gb: -1 must be > 0"]),
        ({"models": [{"name": "x", "spec": {"preset": "llama-2-7b", "n_layers": 0}}], "workload.model_mix": {"x": 1}},
         ["models[0].spec.n_layers: 0 must be > 0"]),
        ({"workload.arrival": {"kind": "mmpp", "rates_per_s": [1, 2], "mean_dwell_s": [5, 5, 5]}},
            ["workload.arrival.mean_dwell_s: [5, 5, 5] must have as many entries as rates_per_s (2)"]),
        ({"workload.arrival": {"kind": "mmpp", "rates_per_s": [0, 0], "mean_dwell_s": [5, 5]}}, ["workload.arrival.rates_per_s: [0, 0] must have at least one rate > 0"]),
        ({"workload.arrival": {"kind": "poisson", "mean_on_s": 5}}, ["workload.arrival.mean_on_s: unknown key"]),
        ({"workload.arrival": {"kind": "diurnal", "mean_rate_per_s": 5, "amplitude": 1.5}}, ["workload.arrival.amplitude: 1.5 must be <= 1"]),
        ({"routing": "telepathy"}, ["routing: 'telepathy' must be one of"]),
        ({"queue": "lifo"}, ["queue: 'lifo' must be one of ['fifo', 'priority']"]),
        ({"reward": {"latency": -1}}, ["reward.latency: -1 must be >= 0"]),
    ],
)  # fmt: skip
def test_cross_field_and_structural_errors(changes: dict, fragments: list[str]):
    raw = copy.deepcopy(MINI)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    assert_config_error(raw, *fragments)


def test_missing_required_keys_are_named():
    assert_config_error({"workload": MINI["workload"]}, "models: required key is missing")
    assert_config_error({"models": MINI["models"]}, "workload: required key is missing")
    assert_config_error(
        {**MINI, "workload": {"arrival": {"rate_per_s": 5}}}, "workload.arrival.kind: required key is missing"
    )
    assert_config_error({**MINI, "models": [{"replicas": 1}]}, "models[0].name: required key is missing")


def test_model_names_must_be_non_empty_strings():
    for bad in ("", 5, None):
        assert_config_error({**MINI, "models": [{"name": bad}]}, "models[0].name", repr(bad))


def test_a_model_too_big_for_its_gpus_names_the_key_path():
    # checked when the simulator sizes the KV cache; the message must still read as a key path
    assert_config_error(
        {**MINI, "models": [{"name": "llama-2-70b", "tensor_parallel": 1}]},
        "models[0].tensor_parallel: 1 is too small",
    )


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"scaling": {"kind": "hpa", "target": -1}}, r"scaling\.target: -1 must be > 0"),
        ({"scaling": "hpaa"}, r"scaling: 'hpaa' must be one of"),
        ({"placement": {"kind": "fgd", "increase_step": 0}}, r"placement\.increase_step: 0 must be >= 1"),
        (
            {"routing": {"kind": "affinity", "load_bound_eps": -2}},
            r"routing\.load_bound_eps: -2 must be >= 0",
        ),
    ],
)
def test_controller_names_and_parameters_are_checked_when_the_scenario_loads(over, match):
    with pytest.raises(ConfigError, match=match):
        load_scenario("default", over)
