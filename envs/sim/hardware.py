"""GPU types and model shapes: the hardware and model facts the performance model and engine build on.

``GpuType`` holds spec-sheet figures (memory, dense bf16 TFLOP/s, memory
bandwidth) and an on-demand price; ``ModelSpec`` holds a decoder-only
transformer's shape, from which weight bytes and KV-cache bytes per token are
derived. Both are frozen and validated at construction. ``GPU_PRESETS`` and
``MODEL_PRESETS`` carry public figures with their sources; ``gpu_from_config``
and ``model_from_config`` turn a scenario entry (a preset name, a full mapping,
or ``{"preset": name, <overrides>}``) into a validated object, naming the full
key path of any bad value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from envs.sim.errors import ConfigError, check_keys, check_number, fail

__all__ = [
    "GPU_PRESETS",
    "MODEL_PRESETS",
    "GPU_LINKS",
    "GpuType",
    "ModelSpec",
    "default_links",
    "gpu_from_config",
    "model_from_config",
]


def _check_name(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(path, value, "must be a non-empty string")
    return value


def _set(obj: Any, name: str, value: Any) -> None:
    # Frozen dataclasses: normalise validated values (e.g. 32.0 -> 32) in place.
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class GpuType:
    """One GPU model as a cloud rents it.

    Attributes:
        name: identifier used in scenarios and reports.
        memory_gb: device memory in GB (1e9 bytes), as on the spec sheet.
        bf16_tflops: dense (no structured sparsity) bf16 tensor-core TFLOP/s from the spec sheet.
        memory_bandwidth_gbps: device memory bandwidth in GB/s (1e9 bytes/s).
        usd_per_hour: on-demand price of one GPU for one hour, in US dollars.

    Spec-sheet figures are peaks; ``envs.sim.perf`` scales them by fitted
    efficiency factors.
    """

    name: str
    memory_gb: float
    bf16_tflops: float
    memory_bandwidth_gbps: float
    usd_per_hour: float

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        for field in ("memory_gb", "bf16_tflops", "memory_bandwidth_gbps"):
            _set(self, field, float(check_number(field, getattr(self, field), gt=0)))
        _set(self, "usd_per_hour", float(check_number("usd_per_hour", self.usd_per_hour, ge=0)))

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes."""
        return self.memory_gb * 1e9

    @property
    def flops_per_s(self) -> float:
        """Dense bf16 peak in FLOP/s."""
        return self.bf16_tflops * 1e12

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Peak memory bandwidth in bytes/s."""
        return self.memory_bandwidth_gbps * 1e9


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer (Llama-style: grouped-query attention, gated MLP).

    Attributes:
        name: identifier used in scenarios and reports.
        params: total parameter count (embeddings and LM head included).
        n_layers, hidden_size, n_heads, n_kv_heads, intermediate_size, vocab_size:
            as in the model's Hugging Face ``config.json`` (``num_hidden_layers``,
            ``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``,
            ``intermediate_size``, ``vocab_size``).
        bytes_per_param: bytes per weight and per KV-cache element (2 for bf16/fp16).
        gpus_per_replica: tensor-parallel degree of one serving replica; must divide ``n_heads``.
        load_time_s: cold-start time of a replica in seconds; ``None`` lets the
            engine derive it from weight bytes and storage bandwidth.
        max_context: the longest sequence (prompt + output tokens) the model was trained for,
            ``max_position_embeddings`` in its ``config.json``; a replica's ``max_model_len``
            defaults to it (as vLLM's does).
    """

    name: str
    params: float
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    vocab_size: int
    bytes_per_param: int = 2
    gpus_per_replica: int = 1
    load_time_s: float | None = None
    max_context: int = 4096

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        _set(self, "params", float(check_number("params", self.params, gt=0)))
        for field in (
            "n_layers",
            "hidden_size",
            "n_heads",
            "n_kv_heads",
            "intermediate_size",
            "vocab_size",
            "bytes_per_param",
            "gpus_per_replica",
            "max_context",
        ):
            _set(self, field, check_number(field, getattr(self, field), gt=0, integer=True))
        if self.n_heads % self.n_kv_heads:
            raise fail("n_kv_heads", self.n_kv_heads, f"must divide n_heads ({self.n_heads})")
        if self.hidden_size % self.n_heads:
            raise fail("hidden_size", self.hidden_size, f"must be a multiple of n_heads ({self.n_heads})")
        # Tensor parallelism splits attention heads across GPUs (Megatron-LM style).
        if self.n_heads % self.gpus_per_replica:
            raise fail("gpus_per_replica", self.gpus_per_replica, f"must divide n_heads ({self.n_heads})")
        if self.load_time_s is not None:
            _set(self, "load_time_s", float(check_number("load_time_s", self.load_time_s, ge=0)))

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.n_heads

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights: ``params * bytes_per_param``."""
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies: keys and values for every layer and KV head."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.bytes_per_param


GPU_PRESETS: dict[str, GpuType] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): 80 GB HBM3, 3.35 TB/s, bf16 1,979 TFLOPS with
    # sparsity = 989 dense. Price: AWS EC2 p5.48xlarge on-demand, us-east-1 (2024 list price),
    # $98.32/h for 8 GPUs.
    "h100-sxm-80gb": GpuType("h100-sxm-80gb", 80.0, 989.0, 3350.0, 98.32 / 8),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM 80 GB): 2,039 GB/s, bf16 312 TFLOPS dense.
    # Price: AWS EC2 p4de.24xlarge on-demand, us-east-1 (2024 list price), $40.97/h for 8 GPUs.
    "a100-80gb": GpuType("a100-80gb", 80.0, 312.0, 2039.0, 40.97 / 8),
    # Same datasheet (SXM 40 GB): 1,555 GB/s. Price: AWS EC2 p4d.24xlarge, $32.77/h for 8 GPUs.
    "a100-40gb": GpuType("a100-40gb", 40.0, 312.0, 1555.0, 32.77 / 8),
    # NVIDIA L4 Tensor Core GPU datasheet: 24 GB GDDR6, 300 GB/s, bf16 242 TFLOPS with sparsity
    # = 121 dense. Price: AWS EC2 g6.xlarge on-demand, us-east-1 (2024 list price), $0.8048/h.
    "l4": GpuType("l4", 24.0, 121.0, 300.0, 0.8048),
}


#: Interconnect of one GPU as the clouds whose prices ``GPU_PRESETS`` uses rent it: (NVLink / PCIe GB/s
#: per direction to another GPU of the node, network Gb/s per GPU to other nodes). They move KV caches
#: between disaggregated prefill and decode replicas (:mod:`envs.sim.paged`); a node pool may override
#: them (``nodes[].nvlink_gbps``, ``nodes[].network_gbps``).
#: - H100 SXM: NVLink 4, 900 GB/s per GPU both directions (H100 datasheet); AWS p5.48xlarge: 3,200 Gb/s
#:   EFA for 8 GPUs (https://aws.amazon.com/ec2/instance-types/p5/).
#: - A100 SXM: NVLink 3, 600 GB/s per GPU both directions (A100 datasheet); AWS p4d / p4de.24xlarge:
#:   400 Gb/s EFA for 8 GPUs (https://aws.amazon.com/ec2/instance-types/p4/). An NVIDIA DGX A100 has
#:   8 x 200 Gb/s InfiniBand: ``network_gbps: 200``.
#: - L4: PCIe Gen4 x16, 64 GB/s both directions (L4 datasheet); AWS g6.48xlarge: 100 Gb/s for 8 GPUs
#:   (https://aws.amazon.com/ec2/instance-types/g6/).
GPU_LINKS: dict[str, tuple[float, float]] = {
    "h100-sxm-80gb": (450.0, 400.0),
    "a100-80gb": (300.0, 50.0),
    "a100-40gb": (300.0, 50.0),
    "l4": (32.0, 12.5),
}


def default_links(gpu: GpuType) -> tuple[float, float]:
    """``(nvlink GB/s, network Gb/s)`` per GPU and direction (:data:`GPU_LINKS`); a GPU type not listed
    gets PCIe Gen4 x16 and a 25 Gb/s network share, the figures of a plain cloud GPU instance."""
    return GPU_LINKS.get(gpu.name, (32.0, 25.0))


def default_max_batched_tokens(gpu: GpuType) -> int:
    """vLLM's default token budget per iteration for an OpenAI-compatible server on ``gpu``.

    ``EngineArgs.get_batch_defaults`` (``vllm/engine/arg_utils.py``): 8192 on GPUs of at least
    70 GiB that are not A100s (H100, H200, MI300X), else 2048 (A100 included: larger budgets
    lowered its throughput, vLLM PR #17885).
    """
    return 8192 if gpu.memory_gb * 1e9 >= 70 * 2**30 and "a100" not in gpu.name.lower() else 2048


MODEL_PRESETS: dict[str, ModelSpec] = {
    # Shapes from the Hugging Face config.json of each model; parameter counts are the exact
    # totals of the released bf16 checkpoints (embeddings and untied LM head included).
    # meta-llama/Llama-2-7b-hf
    "llama-2-7b": ModelSpec("llama-2-7b", 6_738_415_616, 32, 4096, 32, 32, 11008, 32000, max_context=4096),
    # meta-llama/Llama-2-13b-hf
    "llama-2-13b": ModelSpec("llama-2-13b", 13_015_864_320, 40, 5120, 40, 40, 13824, 32000, max_context=4096),
    # meta-llama/Meta-Llama-3-8B
    "llama-3-8b": ModelSpec("llama-3-8b", 8_030_261_248, 32, 4096, 32, 8, 14336, 128256, max_context=8192),
    # meta-llama/Llama-2-70b-hf: 138 GB of bf16 weights; 4 x 80 GB leaves ~150 GB for KV at 90%
    # memory use (2 x 80 GB would leave ~6 GB, too little to batch).
    "llama-2-70b": ModelSpec(
        "llama-2-70b", 68_976_648_192, 80, 8192, 64, 8, 28672, 32000, gpus_per_replica=4, max_context=4096
    ),
    # meta-llama/Meta-Llama-3-70B
    "llama-3-70b": ModelSpec(
        "llama-3-70b", 70_553_706_496, 80, 8192, 64, 8, 28672, 128256, gpus_per_replica=4, max_context=8192
    ),
    # meta-llama/Llama-3.1-8B and Llama-3.1-70B: the Llama 3 shapes with a 131,072-token context
    # (config.json max_position_embeddings 131072, RoPE scaling "llama3")
    "llama-3.1-8b": ModelSpec(
        "llama-3.1-8b", 8_030_261_248, 32, 4096, 32, 8, 14336, 128256, max_context=131_072
    ),
    "llama-3.1-70b": ModelSpec(
        "llama-3.1-70b",
        70_553_706_496,
        80,
        8192,
        64,
        8,
        28672,
        128256,
        gpus_per_replica=4,
        max_context=131_072,
    ),
    # codellama/CodeLlama-34b-hf (67.5 GB of bf16 weights); tensor-parallel 2 on A100-80GB, the
    # setup Vidur (Agrawal et al., MLSys 2024) simulates
    "codellama-34b": ModelSpec(
        "codellama-34b",
        33_743_970_304,
        48,
        8192,
        64,
        8,
        22016,
        32000,
        gpus_per_replica=2,
        max_context=16_384,
    ),
}

_T = TypeVar("_T", GpuType, ModelSpec)


def _from_config(value: Any, path: str, cls: type[_T], presets: Mapping[str, _T], kind: str) -> _T:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        if value not in presets:
            raise fail(path, value, f"is not a known {kind} preset (known: {sorted(presets)})")
        return presets[value]
    if not isinstance(value, Mapping):
        raise fail(path, value, f"must be a {kind} preset name or a mapping")
    fields = [f.name for f in dataclasses.fields(cls)]
    if "preset" in value:
        check_keys(path, value, ["preset", *fields])
        preset = value["preset"]
        if not isinstance(preset, str) or preset not in presets:
            raise fail(f"{path}.preset", preset, f"is not a known {kind} preset (known: {sorted(presets)})")
        overrides = {k: v for k, v in value.items() if k != "preset"}
        build = lambda: dataclasses.replace(presets[preset], **overrides)  # noqa: E731
    else:
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        check_keys(path, value, fields, required)
        build = lambda: cls(**value)  # noqa: E731
    try:
        return build()
    except ConfigError as err:
        # Field checks name the bare field ("n_layers: ..."); give it the caller's full key path.
        raise ConfigError(f"{path}.{err}") from None


def gpu_from_config(value: str | Mapping[str, Any] | GpuType, path: str = "gpu") -> GpuType:
    """Build a ``GpuType`` from a preset name, a mapping of every field, or ``{"preset": name, ...overrides}``.

    Errors name the full key path under ``path``, e.g. ``gpus[1].bf16_tflops: -1 must be > 0``.
    """
    return _from_config(value, path, GpuType, GPU_PRESETS, "GPU")


def model_from_config(value: str | Mapping[str, Any] | ModelSpec, path: str = "model") -> ModelSpec:
    """Build a ``ModelSpec`` from a preset name, a mapping of its fields, or ``{"preset": name, ...overrides}``.

    Errors name the full key path under ``path``, e.g. ``models[0].n_layers: -1 must be > 0``.
    """
    return _from_config(value, path, ModelSpec, MODEL_PRESETS, "model")
