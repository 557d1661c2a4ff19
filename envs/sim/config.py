"""Scenario configuration: frozen, validated dataclasses and the YAML/dict loader.

A scenario is everything a simulation needs besides the seed: the hardware
(node pools of GPUs), the models deployed and their limits, the service-time
model, the workload (arrival process, request sizes, model mix, request
classes with SLOs), the controllers (router, placer, scaler), storage for cold
starts, the control interval, the horizon and the reward weights. It can be
given as a shipped name (``envs/scenarios/<name>.yaml``), a YAML path or a
dict, plus overrides that are deep-merged on top. Unknown keys and
out-of-range values raise :class:`~envs.sim.errors.ConfigError` naming the key
path and the value, e.g. ``workload.arrival.rate_per_s: -3 must be > 0``.
The full schema is documented in ``docs/scenarios.md``.

The parts of a scenario are validated in their own modules, re-exported here:
:mod:`envs.sim.config_cluster` (node pools, spot, scripted faults, storage),
:mod:`envs.sim.config_models` (deployments and their engines, the service model,
controller specs) and :mod:`envs.sim.config_workload` (arrivals, sizes, classes, SLOs).
This module holds :class:`Scenario`, the loader and the reward and size bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envs.sim.config_cluster import MAX_NODES, NodePool, ScriptedFault, SpotSpec, StorageSpec
from envs.sim.config_models import ControllerSpec, ModelDeployment, ServiceSpec, default_kv_policy
from envs.sim.config_workload import ARRIVAL_KEYS, ArrivalSpec, RequestClass, SizeSpec, Slo, Workload
from envs.sim.controllers import PLACERS, SCALERS
from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail
from envs.sim.hardware import GpuType
from envs.sim.routing import ROUTERS

__all__ = [
    "ARRIVAL_KEYS",
    "DEFAULT_REWARD",
    "MAX_NODES",
    "MAX_TICKS",
    "REWARD_TERMS",
    "ROUTERS",
    "ArrivalSpec",
    "ControllerSpec",
    "ModelDeployment",
    "NodePool",
    "RequestClass",
    "Scenario",
    "ScriptedFault",
    "ServiceSpec",
    "SizeSpec",
    "Slo",
    "SpotSpec",
    "StorageSpec",
    "Workload",
    "copy_config",
    "deep_merge",
    "default_kv_policy",
    "load_scenario",
    "shipped_scenarios",
]

#: What happens to the requests on a failed replica (``fault_policy``; :mod:`envs.sim.faults`).
FAULT_POLICIES = ("requeue", "drop")
#: Size bound (as ``config_cluster.MAX_NODES``): metric ticks over the horizon (two int64 per tick and model).
MAX_TICKS = 5_000_000

# Reward terms of all environments (each env documents the ones it produces and their units).
REWARD_TERMS = frozenset(
    {"slo_violations", "drops", "gpu_cost", "placement_failures", "fragmented_gpus", "gpus_in_use", "invalid_actions",
     "latency", "unfinished"}
)  # fmt: skip
# SLO terms weigh 10: one percent of requests missing their SLO costs about as much as running
# one more A100 replica ($4/h x 0.02 = 0.08 per step), the trade operators make; with a weight of 1
# starving the service was the cheapest policy.
DEFAULT_REWARD = {
    "slo_violations": 10.0,
    "drops": 10.0,
    "gpu_cost": 0.02,
    "placement_failures": 0.1,
    "fragmented_gpus": 0.1,
    "gpus_in_use": 0.01,
    "invalid_actions": 1.0,
    "latency": 0.1,
    # a request still in the system at the horizon costs a drop plus an SLO miss (Autoscale-v1)
    "unfinished": 20.0,
}


SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"


def shipped_scenarios() -> list[str]:
    """Names of the scenarios that ship with the package."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


# ----------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Scenario:
    """A complete, validated simulation setting. Build with :func:`load_scenario`."""

    name: str
    description: str
    horizon_s: float
    control_interval_s: float
    tick_s: float
    nodes: tuple[NodePool, ...]
    models: tuple[ModelDeployment, ...]
    service: ServiceSpec
    workload: Workload
    routing: ControllerSpec
    placement: ControllerSpec
    scaling: ControllerSpec
    queue: str
    storage: StorageSpec
    reward: Mapping[str, float]
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)
    faults: tuple[ScriptedFault, ...] = ()
    fault_policy: str = "requeue"
    #: the router of the decode stage of disaggregated models (None: no model is disaggregated)
    decode_routing: ControllerSpec | None = None

    @property
    def has_faults(self) -> bool:
        """Whether any node can fail (a scripted fault or a pool with ``mtbf_s``)."""
        return (
            bool(self.faults)
            or any(p.mtbf_s is not None or p.spot is not None for p in self.nodes)
            or any(m.replica_crash_per_hour > 0 for m in self.models)
        )

    KEYS = frozenset(
        {"name", "description", "horizon_s", "control_interval_s", "tick_s", "nodes", "models", "service",
         "workload", "routing", "placement", "scaling", "queue", "storage", "reward", "faults", "fault_policy",
         "decode_routing"}
    )  # fmt: skip

    @classmethod
    def from_config(cls, raw: Any) -> Scenario:
        check_keys("", raw, cls.KEYS, required={"models", "workload"})
        horizon = float(check_number("horizon_s", raw.get("horizon_s", 3600.0), gt=0))
        interval = float(check_number("control_interval_s", raw.get("control_interval_s", 15.0), gt=0))
        if interval > horizon:
            raise fail("control_interval_s", interval, f"must be <= horizon_s ({horizon})")
        tick = float(check_number("tick_s", raw.get("tick_s", 1.0), gt=0))
        if tick > interval:
            raise fail("tick_s", tick, f"must be <= control_interval_s ({interval})")
        if horizon / tick > MAX_TICKS:
            raise fail(
                "tick_s", tick, f"gives {horizon / tick:.3g} metric ticks over horizon_s ({horizon}); the simulator "
                f"keeps at most {MAX_TICKS:.0e} in memory: raise tick_s or shorten horizon_s",
            )  # fmt: skip
        service = ServiceSpec.from_config(raw.get("service", "roofline"), "service")
        nodes_raw = raw.get("nodes", [{"gpu": "a100-80gb", "count": 2, "gpus_per_node": 8}])
        if not isinstance(nodes_raw, (list, tuple)) or not nodes_raw:
            raise fail("nodes", nodes_raw, "must be a non-empty list of node pools")
        nodes = tuple(NodePool.from_config(n, f"nodes[{i}]") for i, n in enumerate(nodes_raw))
        if sum(n.count for n in nodes) > MAX_NODES:
            raise fail(
                "nodes", [n.count for n in nodes], f"hold more than {MAX_NODES} nodes in all (counts shown)"
            )
        pool_gpus = tuple(n.gpu.name for n in nodes)
        models_raw = raw["models"]
        if not isinstance(models_raw, (list, tuple)) or not models_raw:
            raise fail("models", models_raw, "must be a non-empty list of model deployments")
        # A disaggregated model is two deployments: its prefill pool keeps the model's index (the
        # workload's requests arrive there) and its decode pool follows every model of the list.
        entries: list[ModelDeployment] = []
        decode_pools: list[ModelDeployment] = []
        paths: list[str] = []
        decode_paths: list[str] = []
        for i, m in enumerate(models_raw):
            deps = ModelDeployment.deployments_from_config(m, f"models[{i}]", pool_gpus, service.kind)
            entries.append(deps[0])
            decode_pools.extend(deps[1:])
            paths.append(f"models[{i}]" + (".prefill" if len(deps) > 1 else ""))
            decode_paths.extend(f"models[{i}].decode" for _ in deps[1:])
        models = tuple(entries + decode_pools)
        for path, m in zip(paths + decode_paths, models, strict=True):
            gpus = sum(n.count * n.gpus_per_node for n in nodes if n.gpu.name in m.gpu_types)
            if m.replicas * m.tensor_parallel > gpus:
                raise fail(
                    f"{path}.replicas", m.replicas,
                    f"x tensor_parallel {m.tensor_parallel} GPUs do not fit in the {gpus} GPUs of the node pools "
                    f"it may use {list(m.gpu_types)}",
                )  # fmt: skip
        names = [m.served_name for m in entries]
        every = [m.name for m in models] + [m.group for m in entries if m.group]
        if len(set(every)) != len(every):
            raise fail("models", names, "must have distinct names")
        for i, n in enumerate(nodes):
            for j, c in enumerate(n.cached_models):
                if c not in names:
                    raise fail(f"nodes[{i}].cached_models[{j}]", c, f"must be one of the models {names}")
        workload = Workload.from_config(raw["workload"], "workload", names)
        routing = ControllerSpec.from_config(raw.get("routing", "least_connections"), "routing")
        placement = ControllerSpec.from_config(raw.get("placement", "first_fit"), "placement")
        scaling = ControllerSpec.from_config(raw.get("scaling", "static"), "scaling")
        # Names and parameters are checked by the registries now, not when a simulator is built.
        for registry, spec in ((ROUTERS, routing), (PLACERS, placement), (SCALERS, scaling)):
            registry.validate(spec, registry.config_key)
        decode_routing = None
        if decode_pools:
            decode_routing = ControllerSpec.from_config(raw.get("decode_routing", "least_connections"),
                                                        "decode_routing")  # fmt: skip
            ROUTERS.validate(decode_routing, "decode_routing")
            if decode_routing.kind == "external":
                raise fail("decode_routing", decode_routing.kind,
                           "must be a router that decides (a rule, a score router or a Python router); "
                           "Simulator(decode_router='external') leaves the decisions to the caller")  # fmt: skip
        elif raw.get("decode_routing") is not None:
            raise fail("decode_routing", raw["decode_routing"], "needs a model with serving: disaggregated")
        queue = check_choice("queue", raw.get("queue", "fifo"), ("fifo", "priority"))
        storage = StorageSpec.from_config(raw.get("storage", {}), "storage")
        faults_raw = raw.get("faults", [])
        if not isinstance(faults_raw, (list, tuple)):
            raise fail("faults", faults_raw, "must be a list of {at_s, pool, nodes, duration_s}")
        faults = tuple(ScriptedFault.from_config(f, f"faults[{i}]", nodes) for i, f in enumerate(faults_raw))
        fault_policy = check_choice("fault_policy", raw.get("fault_policy", "requeue"), FAULT_POLICIES)
        reward_raw = raw.get("reward", DEFAULT_REWARD)
        if not isinstance(reward_raw, Mapping):
            raise fail("reward", reward_raw, "must be a mapping of reward term name to weight")
        check_keys("reward", reward_raw, REWARD_TERMS)
        reward = {
            **DEFAULT_REWARD,
            **{str(k): float(check_number(f"reward.{k}", v, ge=0)) for k, v in reward_raw.items()},
        }
        name = str(raw.get("name", "custom"))
        return cls(
            name, str(raw.get("description", "")), horizon, interval, tick, nodes, models, service, workload,
            routing, placement, scaling, queue, storage, reward, raw=copy_config(dict(raw)), faults=faults,
            fault_policy=fault_policy, decode_routing=decode_routing,
        )  # fmt: skip

    def with_model_defaults(self, defaults: Mapping[str, Any]) -> Scenario:
        """This scenario with ``defaults`` (``models[]`` keys) filled in for every model that does not set
        them, validated again; ``self`` when nothing changes. An environment version made before a default
        changed uses this to keep its dynamics (``{"kv_policy": "reserve"}``, see ``envs/``)."""
        models = self.raw.get("models")
        if not isinstance(models, (list, tuple)) or all(all(k in m for k in defaults) for m in models):
            return self  # (a validated scenario's models are mappings)
        return Scenario.from_config({**self.raw, "models": [{**defaults, **m} for m in models]})

    @property
    def gpu_types(self) -> tuple[GpuType, ...]:
        """Distinct GPU types of the node pools, in order of first appearance."""
        seen: dict[str, GpuType] = {}
        for n in self.nodes:
            seen.setdefault(n.gpu.name, n.gpu)
        return tuple(seen.values())

    @property
    def disaggregated(self) -> bool:
        """Whether some model runs separate prefill and decode pools."""
        return any(m.role == "decode" for m in self.models)

    @property
    def served_models(self) -> tuple[str, ...]:
        """The models the workload's requests ask for (a disaggregated model's name, not its pools')."""
        return tuple(m.served_name for m in self.models if m.role != "decode")

    def model_index(self, name: str) -> int:
        """The deployment of ``name``: a deployment's own name, or a disaggregated model's name (its prefill
        pool, where its requests arrive)."""
        for i, m in enumerate(self.models):
            if m.name == name:
                return i
        for i, m in enumerate(self.models):
            if m.group == name:
                return i
        raise ConfigError(f"model: {name!r} must be one of {[m.name for m in self.models]}")

    def pools_of(self, name: str) -> list[int]:
        """Every deployment serving model ``name``: itself, or a disaggregated model's two pools."""
        out = [i for i, m in enumerate(self.models) if m.name == name or m.group == name]
        if not out:
            raise ConfigError(f"model: {name!r} must be one of {list(self.served_models)}")
        return out

    def decode_pool(self, m: int) -> int:
        """The decode pool of prefill pool ``m`` (-1 when ``m`` is not a prefill pool)."""
        if self.models[m].role != "prefill":
            return -1
        return next(
            i for i, d in enumerate(self.models) if d.role == "decode" and d.group == self.models[m].group
        )


def _check_overrides(overrides: Any) -> None:
    """``overrides`` must be a mapping or None (no overrides); anything else is a ConfigError naming it."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise fail(
            "overrides", overrides, "must be a mapping of keys to values (dotted keys allowed) or None"
        )


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in; mappings merge, everything else replaces.

    A mapping whose ``kind`` differs from the one it overrides replaces it whole (``{"kind": "poisson",
    "rate_per_s": 10}`` over an ``onoff`` arrival keeps none of the on/off keys); of the same kind, or
    without one, it merges.

    A key written with dots (``"workload.arrival.rate_per_s"``) addresses a nested key, at any depth and
    whether or not ``base`` already has the enclosing mappings. Neither argument is modified: the
    result's mappings, lists and tuples are copies (:func:`copy_config`). ``overrides=None`` means no
    overrides (a copy of ``base``); an ``overrides`` that is not a mapping raises
    :class:`ConfigError` naming ``overrides``.
    """
    _check_overrides(overrides)
    out = copy_config(base)
    for key, value in (overrides or {}).items():
        if isinstance(key, str) and "." in key:
            head, rest = key.split(".", 1)
            value = {rest: value}
            key = head
        if isinstance(value, Mapping):
            # merge into the existing mapping, or into {} so dotted keys at any depth expand the same way;
            # a mapping of another ``kind`` (an arrival process, a controller) starts afresh: the old
            # kind's parameters mean nothing to the new one
            cur = out.get(key)
            if not isinstance(cur, Mapping) or (
                "kind" in value and cur.get("kind", value["kind"]) != value["kind"]
            ):
                cur = {}
            out[key] = deep_merge(cur, value)
        else:
            out[key] = copy_config(value)
    return out


def copy_config(value: Any) -> Any:
    """A copy of a config value: mappings, lists and tuples copied all the way down; anything else
    (numbers, strings, and controller objects passed in a scenario dict) kept as it is, so a router
    or scaler object given by the user is the one the simulator calls."""
    if isinstance(value, Mapping):
        return {k: copy_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copy_config(v) for v in value)
    return value


def load_scenario(
    spec: str | Path | Mapping[str, Any] | Scenario = "default", overrides: Mapping[str, Any] | None = None
) -> Scenario:
    """Build a validated :class:`Scenario` from a shipped name, a YAML path, a dict or a Scenario.

    ``overrides`` (a mapping, dotted keys allowed, or None for none) are deep-merged on top.
    """
    _check_overrides(overrides)
    if isinstance(spec, Scenario):
        if not overrides:
            return spec
        raw: Mapping[str, Any] = spec.raw
    elif isinstance(spec, Mapping):
        raw = spec
    elif isinstance(spec, (str, Path)):
        path = Path(spec)
        if str(spec) in shipped_scenarios():
            path = SCENARIO_DIR / f"{spec}.yaml"
        elif not (path.suffix in (".yaml", ".yml") and path.exists()):
            raise ConfigError(
                f"scenario: {str(spec)!r} must be a shipped scenario name {shipped_scenarios()} "
                "or the path of an existing .yaml file"
            )
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"scenario: {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(f"scenario: {str(path)!r} must hold a mapping at the top level")
        raw = dict(raw)
        raw.setdefault("name", path.stem)
    else:
        raise fail("scenario", spec, "must be a scenario name, a YAML path, a mapping or a Scenario")
    if overrides:
        raw = deep_merge(raw, overrides)
    return Scenario.from_config(raw)
