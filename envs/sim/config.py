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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envs.sim.controllers import PLACERS, SCALERS
from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail
from envs.sim.hardware import GpuType, ModelSpec, gpu_from_config, model_from_config
from envs.sim.prefixes import SESSION_KEYS, session_mean_rate, session_params
from envs.sim.routing import ROUTERS

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"


def shipped_scenarios() -> list[str]:
    """Names of the scenarios that ship with the package."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


# ----------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class SpotSpec:
    """A spot / preemptible pool: cheaper GPUs that the provider takes back after a notice.

    ``notice_s`` defaults to AWS's two-minute interruption notice
    (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html);
    GCP gives 30 s (https://cloud.google.com/compute/docs/instances/spot#preemption-process).
    """

    price_factor: float  #: spot price / on-demand price of the pool's GPUs
    preemptions_per_hour: float  #: per node (Poisson)
    down_s: float  #: mean seconds until a reclaimed node's capacity can be had again (exponential)
    notice_s: float = 120.0

    @classmethod
    def from_config(cls, raw: Any, path: str) -> SpotSpec:
        check_keys(path, raw, {"price_factor", "preemptions_per_hour", "down_s", "notice_s"},
                   required={"price_factor", "preemptions_per_hour", "down_s"})  # fmt: skip
        return cls(
            float(check_number(f"{path}.price_factor", raw["price_factor"], gt=0, le=1)),
            float(check_number(f"{path}.preemptions_per_hour", raw["preemptions_per_hour"], gt=0)),
            float(check_number(f"{path}.down_s", raw["down_s"], gt=0)),
            float(check_number(f"{path}.notice_s", raw.get("notice_s", 120.0), ge=0)),
        )


@dataclass(frozen=True)
class NodePool:
    """``count`` identical nodes, each with ``gpus_per_node`` GPUs of one type."""

    name: str
    gpu: GpuType
    count: int
    gpus_per_node: int = 8
    cached_models: tuple[str, ...] = ()
    mtbf_s: float | None = None  #: mean time between failures of one node (exponential); None: never fails
    mttr_s: float | None = None  #: mean time to repair a failed node (exponential); required with mtbf_s
    spot: SpotSpec | None = None  #: a spot / preemptible pool (None: on-demand)

    @classmethod
    def from_config(cls, raw: Any, path: str) -> NodePool:
        check_keys(path, raw, {"name", "gpu", "count", "gpus_per_node", "cached_models", "mtbf_s", "mttr_s", "spot"},
                   required={"gpu"})  # fmt: skip
        gpu = gpu_from_config(raw["gpu"], f"{path}.gpu")
        count = int(check_number(f"{path}.count", raw.get("count", 1), ge=1, integer=True))
        if count > MAX_NODES:
            raise fail(
                f"{path}.count", count, f"must be <= {MAX_NODES} (the nodes one simulation holds in memory)"
            )
        per_node = int(
            check_number(f"{path}.gpus_per_node", raw.get("gpus_per_node", 8), ge=1, le=64, integer=True)
        )
        cached = raw.get("cached_models", [])
        if not isinstance(cached, (list, tuple)) or not all(isinstance(c, str) for c in cached):
            raise fail(f"{path}.cached_models", cached, "must be a list of model names")
        mtbf = raw.get("mtbf_s")
        mttr = raw.get("mttr_s")
        if mtbf is not None:
            mtbf = float(check_number(f"{path}.mtbf_s", mtbf, gt=0))
            if mttr is None:
                raise fail(
                    f"{path}.mttr_s", None, "is required with mtbf_s (mean seconds a failed node stays down)"
                )
        if mttr is not None:
            mttr = float(check_number(f"{path}.mttr_s", mttr, gt=0))
        spot = None if raw.get("spot") is None else SpotSpec.from_config(raw["spot"], f"{path}.spot")
        return cls(str(raw.get("name", gpu.name)), gpu, count, per_node, tuple(cached), mtbf, mttr, spot)


@dataclass(frozen=True)
class ScriptedFault:
    """``nodes`` (offsets within pool ``pool``) fail at ``at_s`` and come back ``duration_s`` later."""

    at_s: float
    pool: int
    nodes: tuple[int, ...]
    duration_s: float

    @classmethod
    def from_config(cls, raw: Any, path: str, pools: tuple[NodePool, ...]) -> ScriptedFault:
        check_keys(path, raw, {"at_s", "pool", "nodes", "duration_s"}, required={"at_s", "pool"})
        at = float(check_number(f"{path}.at_s", raw["at_s"], ge=0))
        names = [p.name for p in pools]
        pool = raw["pool"]
        if isinstance(pool, str):
            if pool not in names:
                raise fail(f"{path}.pool", pool, f"must be a node pool name {names} or index")
            pool = names.index(pool)
        else:
            pool = int(check_number(f"{path}.pool", pool, ge=0, lt=len(pools), integer=True))
        count = pools[pool].count
        nodes = raw.get("nodes", 1)
        if isinstance(nodes, (list, tuple)):
            if not nodes or len(set(nodes)) != len(nodes):
                raise fail(f"{path}.nodes", nodes, "must be a non-empty list of distinct node offsets")
            offsets = tuple(
                int(check_number(f"{path}.nodes[{i}]", k, ge=0, lt=count, integer=True))
                for i, k in enumerate(nodes)
            )
        else:
            n = int(check_number(f"{path}.nodes", nodes, ge=1, le=count, integer=True))
            offsets = tuple(range(n))  # the pool's first n nodes
        dur = float(check_number(f"{path}.duration_s", raw.get("duration_s", math.inf), gt=0))
        return cls(at, pool, offsets, dur)


FAULT_POLICIES = ("requeue", "drop")


@dataclass(frozen=True)
class Slo:
    """Latency targets of a request class; ``None`` means no target on that metric.

    A completed request attains its SLO when every set target holds; a dropped
    request never does.
    """

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    @classmethod
    def from_config(cls, raw: Any, path: str) -> Slo:
        check_keys(path, raw, {"ttft_s", "tpot_s", "e2e_s"})
        vals = {}
        for key in ("ttft_s", "tpot_s", "e2e_s"):
            v = raw.get(key)
            vals[key] = None if v is None else float(check_number(f"{path}.{key}", v, gt=0))
        return cls(**vals)


@dataclass(frozen=True)
class RequestClass:
    """A class of requests (e.g. ``interactive``, ``batch``) with its SLO and priority.

    ``priority`` 0 is served first when the scenario's queue is ``priority``;
    ``timeout_s`` is the longest a request may wait in a queue before it is
    dropped (``inf`` = never).
    """

    name: str
    share: float
    priority: int
    slo: Slo
    timeout_s: float

    @classmethod
    def from_config(cls, raw: Any, path: str) -> RequestClass:
        check_keys(path, raw, {"name", "share", "priority", "slo", "timeout_s"}, required={"name"})
        share = float(check_number(f"{path}.share", raw.get("share", 1.0), gt=0))
        prio = int(check_number(f"{path}.priority", raw.get("priority", 0), ge=0, le=15, integer=True))
        timeout = raw.get("timeout_s")
        if timeout is None or (isinstance(timeout, float) and timeout == math.inf):
            timeout = math.inf
        else:
            timeout = float(check_number(f"{path}.timeout_s", timeout, gt=0))
        return cls(str(raw["name"]), share, prio, Slo.from_config(raw.get("slo", {}), f"{path}.slo"), timeout)


#: How a replica holds KV memory (``models[].kv_policy``; see :mod:`envs.sim.kernel`).
KV_POLICIES = ("reserve", "paged")


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


ARRIVAL_KEYS = {
    "poisson": {"rate_per_s"},
    "mmpp": {"rates_per_s", "mean_dwell_s", "dwell_shape"},
    "onoff": {"on_rate_per_s", "off_rate_per_s", "mean_on_s", "mean_off_s", "dwell_shape"},
    "diurnal": {"mean_rate_per_s", "amplitude", "period_s", "phase_s"},
    "trace": {"path", "format", "start_s", "duration_s", "time_scale", "variation", "max_offset_s"},
    "sessions": set(SESSION_KEYS),
}
#: How a trace replay differs between seeds (``workload.arrival.variation``; see docs/scenarios.md).
TRACE_VARIATIONS = ("none", "bootstrap_sizes", "offset")
#: Trace file formats (``workload.arrival.format``) and the one a file extension implies.
TRACE_FORMATS = ("azure", "mooncake")
TRACE_FORMAT_OF_SUFFIX = {".csv": "azure", ".jsonl": "mooncake"}


@dataclass(frozen=True)
class ArrivalSpec:
    """The arrival process; ``params`` holds the validated keys of its ``kind``."""

    kind: str
    params: Mapping[str, Any]

    @classmethod
    def from_config(cls, raw: Any, path: str) -> ArrivalSpec:
        check_keys(path, raw, set().union(*ARRIVAL_KEYS.values()) | {"kind"}, required={"kind"})
        kind = check_choice(f"{path}.kind", raw["kind"], ARRIVAL_KEYS)
        check_keys(path, raw, ARRIVAL_KEYS[kind] | {"kind"})
        p = {k: v for k, v in raw.items() if k != "kind"}
        if kind == "poisson":
            p["rate_per_s"] = float(check_number(f"{path}.rate_per_s", p.get("rate_per_s"), gt=0))
        elif kind == "mmpp":
            rates, dwell = p.get("rates_per_s"), p.get("mean_dwell_s")
            for key, seq in (("rates_per_s", rates), ("mean_dwell_s", dwell)):
                if not isinstance(seq, (list, tuple)) or len(seq) < 2:
                    raise fail(f"{path}.{key}", seq, "must be a list of at least 2 numbers")
            if len(rates) != len(dwell):
                raise fail(
                    f"{path}.mean_dwell_s", dwell, f"must have as many entries as rates_per_s ({len(rates)})"
                )
            p["rates_per_s"] = tuple(
                float(check_number(f"{path}.rates_per_s[{i}]", r, ge=0)) for i, r in enumerate(rates)
            )
            p["mean_dwell_s"] = tuple(
                float(check_number(f"{path}.mean_dwell_s[{i}]", d, gt=0)) for i, d in enumerate(dwell)
            )
            if not any(r > 0 for r in p["rates_per_s"]):
                raise fail(f"{path}.rates_per_s", rates, "must have at least one rate > 0")
            p["dwell_shape"] = float(check_number(f"{path}.dwell_shape", p.get("dwell_shape", 1.0), gt=0))
        elif kind == "onoff":
            p["on_rate_per_s"] = float(check_number(f"{path}.on_rate_per_s", p.get("on_rate_per_s"), gt=0))
            p["off_rate_per_s"] = float(
                check_number(f"{path}.off_rate_per_s", p.get("off_rate_per_s", 0.0), ge=0)
            )
            p["mean_on_s"] = float(check_number(f"{path}.mean_on_s", p.get("mean_on_s"), gt=0))
            p["mean_off_s"] = float(check_number(f"{path}.mean_off_s", p.get("mean_off_s"), gt=0))
            p["dwell_shape"] = float(check_number(f"{path}.dwell_shape", p.get("dwell_shape", 1.0), gt=0))
        elif kind == "diurnal":
            p["mean_rate_per_s"] = float(
                check_number(f"{path}.mean_rate_per_s", p.get("mean_rate_per_s"), gt=0)
            )
            p["amplitude"] = float(check_number(f"{path}.amplitude", p.get("amplitude", 0.5), ge=0, le=1))
            p["period_s"] = float(check_number(f"{path}.period_s", p.get("period_s", 86400.0), gt=0))
            p["phase_s"] = float(check_number(f"{path}.phase_s", p.get("phase_s", 0.0)))
        elif kind == "sessions":
            p = session_params(p, path)
        else:  # trace
            tpath = p.get("path")
            if not isinstance(tpath, (str, Path)) or not str(tpath):
                raise fail(
                    f"{path}.path",
                    tpath,
                    "must be the path of an Azure LLM inference trace CSV "
                    "(TIMESTAMP,ContextTokens,GeneratedTokens), e.g. AzureLLMInferenceTrace_conv.csv "
                    "from the Azure Public Dataset, or of a Mooncake trace JSONL (timestamp, input_length, "
                    "output_length, hash_ids), e.g. conversation_trace.jsonl from kvcache-ai/Mooncake "
                    "FAST25-release/traces",
                )
            p["path"] = str(tpath)
            fmt = p.get("format")
            if fmt is None:
                fmt = TRACE_FORMAT_OF_SUFFIX.get(Path(p["path"]).suffix.lower())
                if fmt is None:
                    raise ConfigError(
                        f"{path}.format: required for {p['path']!r}, whose extension is neither .csv "
                        f"(format azure) nor .jsonl (format mooncake); one of {list(TRACE_FORMATS)}"
                    )
            p["format"] = check_choice(f"{path}.format", fmt, TRACE_FORMATS)
            p["start_s"] = float(check_number(f"{path}.start_s", p.get("start_s", 0.0), ge=0))
            dur = p.get("duration_s")
            p["duration_s"] = None if dur is None else float(check_number(f"{path}.duration_s", dur, gt=0))
            p["time_scale"] = float(check_number(f"{path}.time_scale", p.get("time_scale", 1.0), gt=0))
            p["variation"] = check_choice(f"{path}.variation", p.get("variation", "none"), TRACE_VARIATIONS)
            off = p.get("max_offset_s")
            if off is not None and p["variation"] != "offset":
                raise fail(f"{path}.max_offset_s", off, "is only used with variation: offset")
            p["max_offset_s"] = (
                None if off is None else float(check_number(f"{path}.max_offset_s", off, gt=0))
            )
        return cls(kind, p)

    @property
    def mean_rate_per_s(self) -> float | None:
        """Long-run mean arrival rate of a synthetic process (None for traces).

        For ``sessions``: ``session_rate_per_s * turns_mean``, approximate (an upper bound that
        ignores sessions ended early by ``max_context_tokens`` or the horizon).
        """
        p = self.params
        if self.kind == "poisson":
            return p["rate_per_s"]
        if self.kind == "mmpp":
            return sum(r * d for r, d in zip(p["rates_per_s"], p["mean_dwell_s"], strict=True)) / sum(
                p["mean_dwell_s"]
            )
        if self.kind == "onoff":
            on, off = p["mean_on_s"], p["mean_off_s"]
            return (p["on_rate_per_s"] * on + p["off_rate_per_s"] * off) / (on + off)
        if self.kind == "diurnal":
            return p["mean_rate_per_s"]
        if self.kind == "sessions":
            return session_mean_rate(p)
        return None


@dataclass(frozen=True)
class SizeSpec:
    """Request sizes in tokens: ``lognormal`` fitted to a mean and p99, ``fixed``, or ``trace``."""

    kind: str = "lognormal"
    prompt_mean: float = 1155.0
    prompt_p99: float = 4100.0
    output_mean: float = 211.0
    output_p99: float = 600.0
    prompt_max: int = 32768
    output_max: int = 4096
    prompt: int = 512
    output: int = 128

    @classmethod
    def from_config(cls, raw: Any, path: str) -> SizeSpec:
        keys = {"kind", "prompt_mean", "prompt_p99", "output_mean", "output_p99", "prompt_max", "output_max",
                "prompt", "output"}  # fmt: skip
        check_keys(path, raw, keys)
        kind = check_choice(f"{path}.kind", raw.get("kind", "lognormal"), ("lognormal", "fixed", "trace"))
        d = cls()
        vals: dict[str, Any] = {"kind": kind}
        for key in ("prompt_mean", "prompt_p99", "output_mean", "output_p99"):
            vals[key] = float(check_number(f"{path}.{key}", raw.get(key, getattr(d, key)), ge=1))
        for key in ("prompt_max", "output_max", "prompt", "output"):
            vals[key] = int(check_number(f"{path}.{key}", raw.get(key, getattr(d, key)), ge=1, integer=True))
        for which in ("prompt", "output"):
            if vals[f"{which}_p99"] <= vals[f"{which}_mean"]:
                raise fail(
                    f"{path}.{which}_p99",
                    vals[f"{which}_p99"],
                    f"must be > {which}_mean ({vals[f'{which}_mean']})",
                )
        return cls(**vals)


@dataclass(frozen=True)
class Workload:
    """Arrivals, sizes, the share of each model and the request classes."""

    arrival: ArrivalSpec
    sizes: SizeSpec
    model_mix: Mapping[str, float]
    classes: tuple[RequestClass, ...]

    @classmethod
    def from_config(cls, raw: Any, path: str, model_names: list[str]) -> Workload:
        check_keys(path, raw, {"arrival", "sizes", "model_mix", "classes"}, required={"arrival"})
        arrival = ArrivalSpec.from_config(raw["arrival"], f"{path}.arrival")
        sizes = SizeSpec.from_config(raw.get("sizes", {}), f"{path}.sizes")
        if sizes.kind == "trace" and arrival.kind != "trace":
            raise fail(f"{path}.sizes.kind", "trace", "needs workload.arrival.kind: trace")
        mix_raw = raw.get("model_mix", {m: 1.0 for m in model_names})
        check_keys(f"{path}.model_mix", mix_raw, model_names)
        mix = {m: float(check_number(f"{path}.model_mix.{m}", w, ge=0)) for m, w in mix_raw.items()}
        if sum(mix.values()) <= 0:
            raise fail(f"{path}.model_mix", mix_raw, "must give some model a weight > 0")
        classes_raw = raw.get("classes", [{"name": "interactive", "slo": {"ttft_s": 2.0, "tpot_s": 0.2}}])
        if not isinstance(classes_raw, (list, tuple)) or not classes_raw:
            raise fail(f"{path}.classes", classes_raw, "must be a non-empty list of request classes")
        classes = tuple(
            RequestClass.from_config(c, f"{path}.classes[{i}]") for i, c in enumerate(classes_raw)
        )
        names = [c.name for c in classes]
        if len(set(names)) != len(names):
            raise fail(f"{path}.classes", names, "must have distinct names")
        return cls(arrival, sizes, mix, classes)


@dataclass(frozen=True)
class StorageSpec:
    """Where replica weights come from at a cold start.

    Remote storage bandwidth is shared equally by the loads in progress
    (processor sharing); a node that held the model within ``cache_ttl_s``
    loads it from its local disk instead. ``startup_s`` is the fixed part of a
    cold start (container start, engine init, graph capture).
    """

    remote_bandwidth_gbps: float = 2.0
    local_bandwidth_gbps: float = 8.0
    cache_ttl_s: float = 3600.0
    startup_s: float = 20.0

    @classmethod
    def from_config(cls, raw: Any, path: str) -> StorageSpec:
        d = cls()
        check_keys(path, raw, {"remote_bandwidth_gbps", "local_bandwidth_gbps", "cache_ttl_s", "startup_s"})
        return cls(
            float(
                check_number(
                    f"{path}.remote_bandwidth_gbps",
                    raw.get("remote_bandwidth_gbps", d.remote_bandwidth_gbps),
                    gt=0,
                )
            ),
            float(
                check_number(
                    f"{path}.local_bandwidth_gbps",
                    raw.get("local_bandwidth_gbps", d.local_bandwidth_gbps),
                    gt=0,
                )
            ),
            float(check_number(f"{path}.cache_ttl_s", raw.get("cache_ttl_s", d.cache_ttl_s), ge=0)),
            float(check_number(f"{path}.startup_s", raw.get("startup_s", d.startup_s), ge=0)),
        )


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


# Reward terms of all environments (each env documents the ones it produces and their units).
#: Size bounds: what one simulation holds in memory on a machine of a few GiB (errors say so).
MAX_NODES = 20_000  # nodes over all pools (cluster and replica arrays grow with them)
MAX_TICKS = 5_000_000  # metric ticks over the horizon (two int64 per tick and model)

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
         "workload", "routing", "placement", "scaling", "queue", "storage", "reward", "faults", "fault_policy"}
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
        models = tuple(
            ModelDeployment.from_config(m, f"models[{i}]", pool_gpus, service.kind)
            for i, m in enumerate(models_raw)
        )
        for i, m in enumerate(models):
            gpus = sum(n.count * n.gpus_per_node for n in nodes if n.gpu.name in m.gpu_types)
            if m.replicas * m.tensor_parallel > gpus:
                raise fail(
                    f"models[{i}].replicas", m.replicas,
                    f"x tensor_parallel {m.tensor_parallel} GPUs do not fit in the {gpus} GPUs of the node pools "
                    f"it may use {list(m.gpu_types)}",
                )  # fmt: skip
        names = [m.name for m in models]
        if len(set(names)) != len(names):
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
            fault_policy=fault_policy,
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

    def model_index(self, name: str) -> int:
        for i, m in enumerate(self.models):
            if m.name == name:
                return i
        raise ConfigError(f"model: {name!r} must be one of {[m.name for m in self.models]}")


def _check_overrides(overrides: Any) -> None:
    """``overrides`` must be a mapping or None (no overrides); anything else is a ConfigError naming it."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise fail(
            "overrides", overrides, "must be a mapping of keys to values (dotted keys allowed) or None"
        )


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in; mappings merge, everything else replaces.

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
            # merge into the existing mapping, or into {} so dotted keys at any depth expand the same way
            out[key] = deep_merge(out[key] if isinstance(out.get(key), Mapping) else {}, value)
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
