"""A scenario's deployments, validated: each model's replicas, limits and serving engine, the service-time
model, and the controller specs that name a registered router, placer or scaler (``models``,
``service``, ``routing`` / ``placement`` / ``scaling``; ``docs/scenarios.md``). Part of
:mod:`envs.sim.config`, which re-exports every class."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envs.sim.errors import check_choice, check_keys, check_number, fail
from envs.sim.hardware import ModelSpec, model_from_config

#: How a replica holds KV memory (``models[].kv_policy``; see :mod:`envs.sim.kernel`).
KV_POLICIES = ("reserve", "paged")
#: How a model is served (``models[].serving``): every replica runs both phases of a request, or a
#: prefill pool computes the prompt's KV cache and hands the request to a decode pool
#: (:mod:`envs.sim.paged`; Splitwise, ISCA 2024; DistServe, OSDI 2024).
SERVING_MODES = ("aggregated", "disaggregated")
#: A replica's role: both phases, or one pool of a disaggregated model.
ROLES = ("aggregated", "prefill", "decode")
#: What a disaggregated model sets per pool (``models[].prefill`` / ``models[].decode``); the rest of
#: the model's keys (spec, kv_policy, kv_block_tokens, max_model_len, prefix_caching) hold for both.
POOL_KEYS = frozenset(
    {"replicas", "min_replicas", "max_replicas", "gpu_types", "tensor_parallel", "max_batch", "kv_memory_fraction",
     "max_batched_tokens", "chunked_prefill"}
)  # fmt: skip


def default_kv_policy(service_kind: str) -> str:
    """``models[].kv_policy`` when a model does not set it: ``paged`` (vLLM V1's engine: blocks, chunked
    prefill, prefix caching) for the ``roofline`` service, ``reserve`` for the validation services, which
    serve one request at a time and hold no KV."""
    return "paged" if service_kind == "roofline" else "reserve"


@dataclass(frozen=True)
class ModelDeployment:
    """One model served by the cluster, with its replica limits and engine settings."""

    name: str
    spec: ModelSpec
    replicas: int
    min_replicas: int
    max_replicas: int
    gpu_types: tuple[str, ...]
    tensor_parallel: int
    max_batch: int
    kv_memory_fraction: float
    replica_crash_per_hour: float = 0.0  #: crashes of one READY replica per hour (Poisson); 0: never
    kv_policy: str = "paged"  #: ``paged`` or ``reserve``; see :func:`default_kv_policy`
    kv_block_tokens: int = 16  #: tokens per KV block (paged; vLLM's default block size)
    max_batched_tokens: int | None = None  #: tokens per iteration (paged); None: vLLM's default per GPU
    chunked_prefill: bool = True  #: split long prompts over iterations (paged)
    prefix_caching: bool = True  #: reuse cached prompt blocks (paged)
    max_model_len: int | None = None  #: longest prompt + output (paged); None: the model's max_context
    role: str = "aggregated"  #: :data:`ROLES`; a pool of a disaggregated model is one deployment
    group: str = ""  #: the model's name in the scenario for a pool (``name`` is ``<group>:<role>``)

    @property
    def served_name(self) -> str:
        """The model's name as the workload knows it (the group of a pool)."""
        return self.group or self.name

    @classmethod
    def deployments_from_config(
        cls, raw: Any, path: str, pool_gpus: tuple[str, ...], service_kind: str
    ) -> tuple[ModelDeployment, ...]:
        """``models[i]``: one deployment, or a disaggregated model's prefill and decode pools.

        ``serving: disaggregated`` takes a ``prefill`` and a ``decode`` mapping of :data:`POOL_KEYS`;
        the pools are named ``<name>:prefill`` and ``<name>:decode``. The decode pool receives every
        request's KV cache from the prefill pool, so it caches no prefixes of its own.
        """
        if not isinstance(raw, Mapping):
            raise fail(path, raw, "must be a mapping of model deployment keys")
        serving = check_choice(f"{path}.serving", raw.get("serving", "aggregated"), SERVING_MODES)
        if serving == "aggregated":
            for key in ("prefill", "decode"):
                if key in raw:
                    raise fail(f"{path}.{key}", raw[key], "needs serving: disaggregated")
            return (
                cls.from_config(
                    {k: v for k, v in raw.items() if k != "serving"}, path, pool_gpus, service_kind
                ),
            )
        shared = {k: v for k, v in raw.items() if k not in ("serving", "prefill", "decode")}
        for key in shared:
            if key in POOL_KEYS:
                raise fail(f"{path}.{key}", shared[key],
                           f"is set per pool with serving: disaggregated ({path}.prefill.{key}, {path}.decode.{key})")  # fmt: skip
        if service_kind != "roofline":
            raise fail(f"{path}.serving", serving, f"needs service.kind roofline (got {service_kind})")
        base = cls.from_config(shared, path, pool_gpus, service_kind)  # the shared keys, named as written
        if base.kv_policy != "paged":
            raise fail(f"{path}.kv_policy", base.kv_policy, "must be paged with serving: disaggregated "
                       "(the decode pool allocates KV blocks for the transferred cache)")  # fmt: skip
        pools = []
        for role in ("prefill", "decode"):
            pool = raw.get(role)
            if not isinstance(pool, Mapping):
                raise fail(
                    f"{path}.{role}", pool, f"must be a mapping of the {role} pool's keys {sorted(POOL_KEYS)}"
                )
            check_keys(f"{path}.{role}", pool, POOL_KEYS)
            merged = {"spec": base.name, **shared, **pool, "name": f"{base.name}:{role}"}
            if role == "decode":
                merged["prefix_caching"] = False
            dep = cls.from_config(merged, f"{path}.{role}", pool_gpus, service_kind)
            pools.append(dataclasses.replace(dep, role=role, group=base.name))
        return tuple(pools)

    @classmethod
    def from_config(
        cls, raw: Any, path: str, pool_gpus: tuple[str, ...], service_kind: str
    ) -> ModelDeployment:
        allowed = {
            "name", "spec", "replicas", "min_replicas", "max_replicas", "gpu_types",
            "tensor_parallel", "max_batch", "kv_memory_fraction", "replica_crash_per_hour", "kv_policy",
            "kv_block_tokens", "max_batched_tokens", "chunked_prefill", "prefix_caching", "max_model_len",
        }  # fmt: skip
        check_keys(path, raw, allowed, required={"name"})
        name = raw["name"]
        if not isinstance(name, str) or not name:
            raise fail(f"{path}.name", name, "must be a non-empty string")
        if service_kind == "roofline":
            spec = model_from_config(raw.get("spec", name), f"{path}.spec")
        else:
            # Validation service models do not use the model's physics; any spec will do.
            spec = model_from_config(raw.get("spec", "llama-2-7b"), f"{path}.spec")
        replicas = int(check_number(f"{path}.replicas", raw.get("replicas", 1), ge=0, integer=True))
        lo = int(check_number(f"{path}.min_replicas", raw.get("min_replicas", 0), ge=0, integer=True))
        hi = int(
            check_number(
                f"{path}.max_replicas", raw.get("max_replicas", max(replicas, 1) * 4), ge=1, integer=True
            )
        )
        if lo > hi:
            raise fail(f"{path}.min_replicas", lo, f"must be <= max_replicas ({hi})")
        if not lo <= replicas <= hi:
            raise fail(
                f"{path}.replicas", replicas, f"must be within [min_replicas, max_replicas] = [{lo}, {hi}]"
            )
        gpu_types = raw.get("gpu_types", list(pool_gpus))
        if isinstance(gpu_types, str):
            gpu_types = [gpu_types]
        if not isinstance(gpu_types, (list, tuple)) or not gpu_types:
            raise fail(f"{path}.gpu_types", gpu_types, "must be a non-empty list of GPU type names")
        for i, g in enumerate(gpu_types):
            if g not in pool_gpus:
                raise fail(
                    f"{path}.gpu_types[{i}]", g, f"must be a GPU type of a node pool {sorted(set(pool_gpus))}"
                )
        tp = int(
            check_number(
                f"{path}.tensor_parallel",
                raw.get("tensor_parallel", spec.gpus_per_replica),
                ge=1,
                le=64,
                integer=True,
            )
        )
        max_batch = int(
            check_number(f"{path}.max_batch", raw.get("max_batch", 256), ge=1, le=4096, integer=True)
        )
        frac = float(
            check_number(f"{path}.kv_memory_fraction", raw.get("kv_memory_fraction", 0.9), gt=0, le=1)
        )
        crash = float(
            check_number(f"{path}.replica_crash_per_hour", raw.get("replica_crash_per_hour", 0.0), ge=0)
        )
        policy = check_choice(
            f"{path}.kv_policy", raw.get("kv_policy", default_kv_policy(service_kind)), KV_POLICIES
        )
        block = int(
            check_number(
                f"{path}.kv_block_tokens", raw.get("kv_block_tokens", 16), ge=1, le=4096, integer=True
            )
        )
        budget = raw.get("max_batched_tokens")
        if budget is not None:
            budget = int(check_number(f"{path}.max_batched_tokens", budget, ge=1, le=1 << 22, integer=True))
        flags = {}
        for key in ("chunked_prefill", "prefix_caching"):
            flags[key] = raw.get(key, True)
            if not isinstance(flags[key], bool):
                raise fail(f"{path}.{key}", flags[key], "must be true or false")
        max_len = raw.get("max_model_len")
        if max_len is not None:
            max_len = int(
                check_number(f"{path}.max_model_len", max_len, ge=1, le=spec.max_context, integer=True)
            )
        if policy == "reserve":
            # reserve is the engine without blocks, chunks or a prefix cache: those settings cannot apply
            for key in ("kv_block_tokens", "max_batched_tokens", "max_model_len"):
                if raw.get(key) is not None:
                    raise fail(f"{path}.{key}", raw[key], "is only used with kv_policy: paged")
            for key in ("chunked_prefill", "prefix_caching"):
                if raw.get(key) is True:
                    raise fail(
                        f"{path}.{key}",
                        True,
                        f"needs kv_policy: paged (reserve has neither; {path}."
                        f"kv_policy is {policy!r}{'' if 'kv_policy' in raw else ' by default'})",
                    )
                flags[key] = False
        elif service_kind != "roofline":
            raise fail(f"{path}.kv_policy", policy, f"needs service.kind roofline (got {service_kind})")
        return cls(name, spec, replicas, lo, hi, tuple(dict.fromkeys(gpu_types)), tp, max_batch, frac, crash,
                   policy, block, budget, flags["chunked_prefill"], flags["prefix_caching"], max_len)  # fmt: skip


@dataclass(frozen=True)
class ServiceSpec:
    """How long a replica takes to serve work.

    ``roofline``: the LLM iteration model of :mod:`envs.sim.perf` (continuous
    batching). ``exponential`` / ``deterministic``: one request at a time with
    the given mean service time, for checking the engine against queueing theory.
    """

    kind: str = "roofline"
    mean_s: float = 1.0
    compute_efficiency: float | None = None
    bandwidth_efficiency: float | None = None
    iteration_overhead_s: float | None = None

    @classmethod
    def from_config(cls, raw: Any, path: str) -> ServiceSpec:
        if isinstance(raw, str):
            raw = {"kind": raw}
        check_keys(
            path,
            raw,
            {"kind", "mean_s", "compute_efficiency", "bandwidth_efficiency", "iteration_overhead_s"},
        )
        kind = check_choice(
            f"{path}.kind", raw.get("kind", "roofline"), ("roofline", "exponential", "deterministic")
        )
        mean = float(check_number(f"{path}.mean_s", raw.get("mean_s", 1.0), gt=0))
        extra = {}
        for key, bounds in (
            ("compute_efficiency", {"gt": 0, "le": 1.0}),
            ("bandwidth_efficiency", {"gt": 0, "le": 1.0}),
            ("iteration_overhead_s", {"ge": 0, "le": 10.0}),
        ):
            v = raw.get(key)
            extra[key] = None if v is None else float(check_number(f"{path}.{key}", v, **bounds))
        return cls(kind, mean, **extra)


@dataclass(frozen=True)
class ControllerSpec:
    """A controller by registry name plus its parameters (validated by the controller itself)."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    obj: Any = None  #: a controller object given in the scenario dict instead of a name

    @classmethod
    def from_config(cls, raw: Any, path: str) -> ControllerSpec:
        if isinstance(raw, str):
            return cls(raw, {})
        if raw is not None and not isinstance(raw, (Mapping, list, tuple, int, float, bool)):
            return cls(str(getattr(raw, "name", type(raw).__name__)), {}, obj=raw)
        if not isinstance(raw, Mapping) or "kind" not in raw or not isinstance(raw["kind"], str):
            raise fail(
                path, raw, "must be a controller name or a mapping with a 'kind' name and its parameters"
            )
        return cls(raw["kind"], {k: v for k, v in raw.items() if k != "kind"})

    def as_config(self) -> Any:
        """What a registry builds from: the object, the bare name, or ``{"kind": ..., **params}``."""
        if self.obj is not None:
            return self.obj
        return {"kind": self.kind, **self.params} if self.params else self.kind
