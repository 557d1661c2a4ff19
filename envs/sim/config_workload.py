"""A scenario's workload, validated: the arrival process, request sizes, model mix and request classes with
their SLOs (``workload``; ``docs/scenarios.md``). Part of :mod:`envs.sim.config`, which re-exports
every class."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail
from envs.sim.prefixes import SESSION_KEYS, session_mean_rate, session_params

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
