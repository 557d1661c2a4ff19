"""Roofline model of one continuous-batching iteration of an LLM replica, calibrated on measured A100 profiles.

Under vLLM/Orca-style continuous batching one iteration runs, as one forward
pass, the prefill of newly admitted requests plus one decode token for every
running request. Its time is ``max(compute, memory) + overhead``: compute is
about ``2 x params`` FLOPs per token in the batch, memory is one read of all
weights plus the KV cache of the running requests; both are spec-sheet peaks
scaled by efficiency factors fitted to Vidur's per-layer A100 operator timings
(Agrawal et al., "Vidur: A Large-Scale Simulation Framework for LLM Inference",
MLSys 2024). ``replica_coefficients`` reduces a (GPU, model, tensor-parallel)
triple to the few numbers the compiled engine loop uses; every other function
here is built on it, so the engine and this module cannot disagree.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from envs.sim.errors import ConfigError, check_number, fail
from envs.sim.hardware import GpuType, ModelSpec, gpu_from_config, model_from_config

__all__ = [
    "DEFAULT_ROOFLINE",
    "LAYER_OPS",
    "LayerProfile",
    "ReplicaCoefficients",
    "RooflineParams",
    "fit_roofline_to_profiles",
    "iteration_time_s",
    "kv_capacity_tokens",
    "layer_time_s",
    "load_layer_profiles",
    "padded_tokens",
    "replica_coefficients",
    "saturation_throughput",
]


@dataclass(frozen=True)
class RooflineParams:
    """Efficiency factors and overheads that turn spec-sheet peaks into iteration times.

    Attributes:
        compute_efficiency: fraction of spec dense bf16 FLOP/s that large GEMMs achieve.
        bandwidth_efficiency: fraction of spec memory bandwidth that weight/KV reads achieve.
        iteration_overhead_s: fixed cost per iteration beyond the per-layer kernels
            (scheduler, sampling); not visible in the operator profiles, so 0 by default.
        layer_overhead_s: fixed cost per transformer layer per iteration: launch and
            tail latency of the ~9 kernels a layer runs, plus the small element-wise ops.
        token_tile: GEMM row-tile size in tokens. cuBLAS/CUTLASS bf16 kernels on Ampere
            tile the token dimension by 128 rows; a partly filled tile costs a full one,
            which the profiles show as steps in time every 128 tokens. ``1`` disables it.
        tp_allreduce_s: latency of one tensor-parallel all-reduce of a small message.
            Megatron-style tensor parallelism does two all-reduces per layer; their
            bandwidth-proportional part is ignored (a few percent on NVLink).
    """

    compute_efficiency: float
    bandwidth_efficiency: float
    iteration_overhead_s: float = 0.0
    layer_overhead_s: float = 0.0
    token_tile: int = 1
    tp_allreduce_s: float = 0.0

    def __post_init__(self) -> None:
        for field in ("compute_efficiency", "bandwidth_efficiency"):
            object.__setattr__(self, field, float(check_number(field, getattr(self, field), gt=0, le=1)))
        for field in ("iteration_overhead_s", "layer_overhead_s", "tp_allreduce_s"):
            object.__setattr__(self, field, float(check_number(field, getattr(self, field), ge=0)))
        object.__setattr__(
            self, "token_tile", check_number("token_tile", self.token_tile, ge=1, integer=True)
        )


# Fitted once, offline, with ``fit_roofline_to_profiles`` on the three Vidur A100-80GB profiles
# (Llama-2-7B, Llama-3-8B, Llama-2-70B ``mlp.csv``; Agrawal et al., MLSys 2024; Vidur commit
# 7d47513): every tensor-parallel-1 row with 1..4096 tokens (783 rows), measured time = sum of
# the per-layer operator medians (LAYER_OPS), scipy.optimize.least_squares on
# log(predicted/measured) over (compute_efficiency, bandwidth_efficiency, layer_overhead_s) with
# token_tile fixed at 128. Result: max |relative error| 17.5%, RMS 5.4%. Without the 128-token
# tile no max/smooth-max form gets under 21% (the measured steps are up to 1.45x).
# tp_allreduce_s is not in the profiles: ~10 us is the small-message (<= 32 KiB) latency of
# vLLM's custom all-reduce measured on H100 at tp 2/4/8 (sgl-project/sglang PR #2904).
DEFAULT_ROOFLINE = RooflineParams(
    compute_efficiency=0.6852,
    bandwidth_efficiency=0.7078,
    iteration_overhead_s=0.0,
    layer_overhead_s=48.4e-6,
    token_tile=128,
    tp_allreduce_s=10e-6,
)


class ReplicaCoefficients(NamedTuple):
    """The numbers that fix one replica's iteration time; the engine loop uses exactly these.

    For an iteration with ``batch_tokens = prefill_tokens + decode_seqs > 0`` and
    ``kv_tokens`` KV-cache tokens read by the decoding requests::

        padded = ceil(batch_tokens / token_tile) * token_tile
        time_s = max(compute_s_per_token * padded,
                     weight_read_s + kv_read_s_per_token * kv_tokens) + overhead_s

    and ``time_s = 0`` when ``batch_tokens == 0`` (no iteration runs).
    """

    compute_s_per_token: float
    weight_read_s: float
    kv_read_s_per_token: float
    overhead_s: float
    token_tile: int

    def iteration_time_s(self, batch_tokens: float, kv_tokens: float) -> float:
        """Time of one iteration (see the class docstring for the formula)."""
        if batch_tokens <= 0:
            return 0.0
        compute = self.compute_s_per_token * padded_tokens(batch_tokens, self.token_tile)
        memory = self.weight_read_s + self.kv_read_s_per_token * kv_tokens
        return max(compute, memory) + self.overhead_s


def padded_tokens(tokens: float, token_tile: int) -> float:
    """Tokens rounded up to a whole number of GEMM row tiles."""
    return math.ceil(tokens / token_tile) * token_tile


def _resolve(gpu: Any, model: Any, tensor_parallel: Any) -> tuple[GpuType, ModelSpec, int]:
    gpu = gpu_from_config(gpu, "gpu")
    model = model_from_config(model, "model")
    if tensor_parallel is None:
        tensor_parallel = model.gpus_per_replica
    tp = check_number("tensor_parallel", tensor_parallel, ge=1, integer=True)
    if model.n_heads % tp:
        raise fail("tensor_parallel", tp, f"must divide n_heads ({model.n_heads}) of model {model.name!r}")
    return gpu, model, tp


def _kv_shards(model: ModelSpec, tp: int) -> int:
    # With more GPUs than KV heads each head is replicated rather than split (vLLM does this).
    return min(tp, model.n_kv_heads)


def replica_coefficients(
    gpu: str | GpuType,
    model: str | ModelSpec,
    tensor_parallel: int | None = None,
    params: RooflineParams | None = None,
) -> ReplicaCoefficients:
    """Reduce (GPU, model, tensor-parallel degree) to the iteration-time coefficients.

    ``tensor_parallel=None`` uses ``model.gpus_per_replica``. Weights, FLOPs and KV
    heads split evenly over the ``tensor_parallel`` GPUs; the per-layer overhead does
    not shrink, and tensor parallelism adds two all-reduces per layer. FLOPs count
    ``2 x params`` per token, including embedding and LM head (a 2-7% overestimate for
    the presets); attention's quadratic prefill FLOPs are left out (a few percent for
    prompts of a few thousand tokens).
    """
    gpu, model, tp = _resolve(gpu, model, tensor_parallel)
    p = params or DEFAULT_ROOFLINE
    flops = tp * gpu.flops_per_s * p.compute_efficiency
    bandwidth = tp * gpu.bandwidth_bytes_per_s * p.bandwidth_efficiency
    kv_bytes_per_gpu = model.kv_bytes_per_token / _kv_shards(model, tp)
    allreduces = 2 * model.n_layers if tp > 1 else 0
    return ReplicaCoefficients(
        compute_s_per_token=2.0 * model.params / flops,
        weight_read_s=model.weight_bytes / bandwidth,
        kv_read_s_per_token=kv_bytes_per_gpu / (gpu.bandwidth_bytes_per_s * p.bandwidth_efficiency),
        overhead_s=p.iteration_overhead_s
        + model.n_layers * p.layer_overhead_s
        + allreduces * p.tp_allreduce_s,
        token_tile=p.token_tile,
    )


def iteration_time_s(
    gpu: str | GpuType,
    model: str | ModelSpec,
    *,
    prefill_tokens: float = 0,
    decode_seqs: float = 0,
    kv_tokens_read: float = 0,
    tensor_parallel: int | None = None,
    params: RooflineParams | None = None,
) -> float:
    """Seconds for one iteration that prefills ``prefill_tokens`` and decodes one token for ``decode_seqs`` requests.

    ``kv_tokens_read`` is the total context (KV-cache tokens) the decoding requests
    attend to. No tokens means no iteration: 0.0. See ``ReplicaCoefficients`` for the formula.
    """
    prefill_tokens = check_number("prefill_tokens", prefill_tokens, ge=0)
    decode_seqs = check_number("decode_seqs", decode_seqs, ge=0)
    kv_tokens_read = check_number("kv_tokens_read", kv_tokens_read, ge=0)
    coeffs = replica_coefficients(gpu, model, tensor_parallel, params)
    return coeffs.iteration_time_s(prefill_tokens + decode_seqs, kv_tokens_read)


def kv_capacity_tokens(
    gpu: str | GpuType,
    model: str | ModelSpec,
    tensor_parallel: int | None = None,
    memory_fraction: float = 0.9,
) -> int:
    """KV-cache tokens one replica can hold: ``(tp * memory * memory_fraction - weight_bytes) / kv_bytes_per_token``.

    ``memory_fraction`` is the share of device memory the server may use (vLLM's
    ``gpu_memory_utilization``, default 0.9). When ``tensor_parallel`` exceeds the
    model's KV heads, heads are replicated and a token costs proportionally more.
    Raises ``ConfigError`` if the weights alone do not fit.
    """
    gpu, model, tp = _resolve(gpu, model, tensor_parallel)
    memory_fraction = check_number("memory_fraction", memory_fraction, gt=0, le=1)
    usable = tp * gpu.memory_bytes * memory_fraction
    free = usable - model.weight_bytes
    if free <= 0:
        raise fail(
            "tensor_parallel",
            tp,
            f"is too small: model {model.name!r} weights ({model.weight_bytes / 1e9:.1f} GB) do not fit in "
            f"{tp} x {gpu.name} at memory_fraction {memory_fraction} ({usable / 1e9:.1f} GB)",
        )
    bytes_per_token = model.kv_bytes_per_token * tp / _kv_shards(model, tp)
    return int(free // bytes_per_token)


def saturation_throughput(
    gpu: str | GpuType,
    model: str | ModelSpec,
    *,
    prompt_tokens: float,
    output_tokens: float,
    tensor_parallel: int | None = None,
    max_batch: int = 256,
    memory_fraction: float = 0.9,
    params: RooflineParams | None = None,
) -> dict[str, float]:
    """Steady-state maximum request rate of one replica serving requests of these mean sizes.

    Derivation (mean-value, continuous batching kept full): a request holds
    ``P + D`` tokens of KV (prompt ``P``, output ``D``) for its lifetime, so the
    running batch is ``b = min(max_batch, kv_capacity / (P + D))``. A request is in
    the batch for ``D`` iterations (its prefill iteration emits the first token),
    so each iteration admits ``b / D`` requests and finishes as many. One iteration
    admits ``b / D`` requests on average; the number ``k`` admitted in one iteration
    is taken as Poisson(``b / D``). An iteration with ``k`` admissions carries ``k``
    prefills of ``P`` tokens plus ``b - k`` decode tokens and reads ``b (P + D/2)``
    KV tokens (mean context of a decoding request); its time is the
    ``ReplicaCoefficients`` formula. With ``tau`` the mean over ``k``,
    ``requests_per_s = b / (D tau)``. ``tau / b`` falls as ``b`` grows, so the rate
    rises with ``max_batch`` and falls with ``D``.

    Returns ``requests_per_s``, ``batch_size`` (mean running requests),
    ``iteration_s``, ``tokens_per_s`` (prompt + output tokens processed) and
    ``output_tokens_per_s``.
    """
    prompt_tokens = check_number("prompt_tokens", prompt_tokens, ge=0)
    output_tokens = check_number("output_tokens", output_tokens, ge=1)
    max_batch = check_number("max_batch", max_batch, ge=1)
    capacity = kv_capacity_tokens(gpu, model, tensor_parallel, memory_fraction)
    per_request = prompt_tokens + output_tokens
    if capacity < per_request:
        raise fail(
            "prompt_tokens + output_tokens",
            per_request,
            f"exceeds the replica's KV capacity of {capacity} tokens",
        )
    coeffs = replica_coefficients(gpu, model, tensor_parallel, params)
    batch = min(float(max_batch), capacity / per_request)
    kv_tokens = batch * (prompt_tokens + output_tokens / 2)
    memory = coeffs.weight_read_s + coeffs.kv_read_s_per_token * kv_tokens
    # Prefills arrive in iterations unevenly: an iteration with k prefills is compute-bound
    # while a decode-only one is memory-bound, so average the iteration time over
    # k ~ Poisson(b / D) rather than taking the max of the mean compute and mean memory
    # (which overestimates throughput by up to ~30 % at small max_batch).
    lam = batch / output_tokens
    k = np.arange(0, int(lam + 10 * math.sqrt(lam) + 12))
    log_pmf = k * math.log(lam) - lam - np.array([math.lgamma(x + 1) for x in k])
    pmf = np.exp(log_pmf)
    tokens = k * prompt_tokens + np.maximum(batch - k, 0.0)
    tile = coeffs.token_tile
    compute = coeffs.compute_s_per_token * np.ceil(tokens / tile) * tile
    times = np.maximum(compute, memory) + coeffs.overhead_s
    iteration = float(np.dot(pmf, times) / pmf.sum())
    rate = lam / iteration
    return {
        "requests_per_s": rate,
        "batch_size": batch,
        "iteration_s": iteration,
        "tokens_per_s": rate * per_request,
        "output_tokens_per_s": rate * output_tokens,
    }


# ---------------------------------------------------------------------------------------------
# Calibration against per-layer operator profiles (Vidur ``mlp.csv`` format)
# ---------------------------------------------------------------------------------------------

# Everything one transformer layer runs outside attention's softmax(QK)V. ``emb`` (the token
# embedding lookup) runs once per forward pass, not per layer, so it is excluded.
LAYER_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
_SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp")


class LayerProfile(NamedTuple):
    """One profile row: a layer shape, a token count and the measured layer time."""

    source: str
    num_tokens: int
    tensor_parallel: int
    n_embd: int
    n_head: int
    n_kv_head: int
    n_expanded_embd: int
    use_gated_mlp: bool
    measured_s: float


def _layer_weight_params(n_embd: int, n_head: int, n_kv_head: int, n_expanded_embd: int, gated: bool) -> int:
    head_dim = n_embd // n_head
    qkv = n_embd * (n_head + 2 * n_kv_head) * head_dim
    out = n_embd * n_embd
    mlp = (3 if gated else 2) * n_embd * n_expanded_embd
    return qkv + out + mlp


def layer_time_s(
    gpu: str | GpuType,
    *,
    n_embd: int,
    n_head: int,
    n_kv_head: int,
    n_expanded_embd: int,
    num_tokens: float,
    use_gated_mlp: bool = True,
    tensor_parallel: int = 1,
    bytes_per_param: int = 2,
    params: RooflineParams | None = None,
) -> float:
    """Predicted time of ONE layer's linear and element-wise ops (the ``LAYER_OPS`` sum) for ``num_tokens`` tokens.

    Same roofline as ``replica_coefficients``, with the layer's weights (QKV
    ``hidden x (n_head + 2 n_kv_head) x head_dim``, output ``hidden x hidden``, gated
    MLP ``3 x hidden x intermediate``) in place of the model's and ``layer_overhead_s``
    as the overhead; tensor parallelism splits the weights (profiles exclude communication).
    """
    gpu = gpu_from_config(gpu, "gpu")
    p = params or DEFAULT_ROOFLINE
    weights = (
        _layer_weight_params(n_embd, n_head, n_kv_head, n_expanded_embd, use_gated_mlp) / tensor_parallel
    )
    coeffs = ReplicaCoefficients(
        compute_s_per_token=2.0 * weights / (gpu.flops_per_s * p.compute_efficiency),
        weight_read_s=weights * bytes_per_param / (gpu.bandwidth_bytes_per_s * p.bandwidth_efficiency),
        kv_read_s_per_token=0.0,
        overhead_s=p.layer_overhead_s,
        token_tile=p.token_tile,
    )
    return coeffs.iteration_time_s(num_tokens, 0.0)


def load_layer_profiles(
    paths: Iterable[str | PathLike[str]],
    *,
    tensor_parallel: int = 1,
    min_tokens: int = 1,
    max_tokens: int = 4096,
) -> list[LayerProfile]:
    """Read Vidur-format ``mlp.csv`` files; keep rows with this tensor-parallel degree and token range.

    The measured time of a row is the sum of ``time_stats.<op>.median`` (milliseconds)
    over ``LAYER_OPS``, converted to seconds.
    """
    rows: list[LayerProfile] = []
    for path in paths:
        path = Path(path)
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            needed = [f"time_stats.{op}.median" for op in LAYER_OPS]
            needed += [*_SHAPE_COLUMNS, "num_tokens", "num_tensor_parallel_workers"]
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path.name}: missing profile columns {missing}")
            for row in reader:
                tokens = int(row["num_tokens"])
                tp = int(row["num_tensor_parallel_workers"])
                if tp != tensor_parallel or not min_tokens <= tokens <= max_tokens:
                    continue
                rows.append(
                    LayerProfile(
                        source=path.name,
                        num_tokens=tokens,
                        tensor_parallel=tp,
                        n_embd=int(row["n_embd"]),
                        n_head=int(row["n_head"]),
                        n_kv_head=int(row["n_kv_head"]),
                        n_expanded_embd=int(row["n_expanded_embd"]),
                        use_gated_mlp=row["use_gated_mlp"].strip().lower() == "true",
                        measured_s=sum(float(row[f"time_stats.{op}.median"]) for op in LAYER_OPS) * 1e-3,
                    )
                )
    return rows


def fit_roofline_to_profiles(
    paths: Iterable[str | PathLike[str]],
    *,
    gpu: str | GpuType = "a100-80gb",
    token_tile: int = 128,
    min_tokens: int = 1,
    max_tokens: int = 4096,
    base: RooflineParams | None = None,
) -> tuple[RooflineParams, dict[str, Any]]:
    """Fit compute/bandwidth efficiency and per-layer overhead to tensor-parallel-1 profile rows.

    Minimises the squared log ratio predicted/measured (relative error, symmetric in
    over- and under-prediction) with ``scipy.optimize.least_squares``; ``token_tile``
    is held fixed. Fields not fitted (``iteration_overhead_s``, ``tp_allreduce_s``) are
    taken from ``base`` (default ``DEFAULT_ROOFLINE``). The report holds ``rows``,
    ``max_abs_rel_error``, ``rms_rel_error`` and ``max_abs_rel_error_by_source``.
    """
    from scipy.optimize import least_squares

    gpu = gpu_from_config(gpu, "gpu")
    base = base or DEFAULT_ROOFLINE
    rows = load_layer_profiles(paths, tensor_parallel=1, min_tokens=min_tokens, max_tokens=max_tokens)
    if not rows:
        raise ConfigError(f"paths: no tensor-parallel-1 rows with {min_tokens}..{max_tokens} tokens to fit")
    weights = np.array(
        [
            _layer_weight_params(r.n_embd, r.n_head, r.n_kv_head, r.n_expanded_embd, r.use_gated_mlp)
            for r in rows
        ],
        dtype=float,
    )
    tokens = np.array([r.num_tokens for r in rows], dtype=float)
    padded = np.ceil(tokens / token_tile) * token_tile
    measured = np.array([r.measured_s for r in rows])

    def predict(x: np.ndarray) -> np.ndarray:
        compute_eff, bandwidth_eff, overhead_us = x
        compute = 2.0 * weights * padded / (gpu.flops_per_s * compute_eff)
        memory = 2.0 * weights / (gpu.bandwidth_bytes_per_s * bandwidth_eff)
        return np.maximum(compute, memory) + overhead_us * 1e-6

    # Overhead in microseconds keeps the three unknowns on similar scales for the solver.
    result = least_squares(
        lambda x: np.log(predict(x) / measured),
        x0=[0.7, 0.7, 10.0],
        bounds=([1e-3, 1e-3, 0.0], [1.0, 1.0, 1e4]),
    )
    compute_eff, bandwidth_eff, overhead_us = (float(v) for v in result.x)
    fitted = RooflineParams(
        compute_efficiency=compute_eff,
        bandwidth_efficiency=bandwidth_eff,
        iteration_overhead_s=base.iteration_overhead_s,
        layer_overhead_s=overhead_us * 1e-6,
        token_tile=token_tile,
        tp_allreduce_s=base.tp_allreduce_s,
    )
    errors = predict(result.x) / measured - 1.0
    by_source: dict[str, float] = {}
    for row, err in zip(rows, errors, strict=True):
        by_source[row.source] = max(by_source.get(row.source, 0.0), abs(float(err)))
    report: Mapping[str, Any] = {
        "rows": len(rows),
        "max_abs_rel_error": float(np.max(np.abs(errors))),
        "rms_rel_error": float(np.sqrt(np.mean(errors**2))),
        "max_abs_rel_error_by_source": by_source,
    }
    return fitted, dict(report)
