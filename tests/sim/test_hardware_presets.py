"""GPU and model presets carry the expected derived values; bad configs fail naming key path and value."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.sim.errors import ConfigError
from envs.sim.hardware import (
    GPU_PRESETS,
    MODEL_PRESETS,
    GpuType,
    gpu_from_config,
    model_from_config,
)

HYPOTHESIS = settings(derandomize=True, max_examples=40, deadline=None)


def test_required_presets_exist_and_are_named_by_their_key():
    for name in ("h100-sxm-80gb", "a100-80gb", "l4"):
        assert name in GPU_PRESETS
    for name in ("llama-2-7b", "llama-3-8b", "llama-2-70b"):
        assert name in MODEL_PRESETS
    for key, gpu in GPU_PRESETS.items():
        assert gpu.name == key
    for key, model in MODEL_PRESETS.items():
        assert model.name == key


def test_kv_bytes_per_token_of_presets():
    assert MODEL_PRESETS["llama-2-7b"].kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524288
    assert MODEL_PRESETS["llama-3-8b"].kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072
    assert MODEL_PRESETS["llama-2-70b"].kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327680


def test_head_dim_and_weight_bytes():
    model = MODEL_PRESETS["llama-2-7b"]
    assert model.head_dim == 128
    assert model.weight_bytes == 6_738_415_616 * 2
    assert MODEL_PRESETS["llama-2-70b"].head_dim == 128


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_preset_param_counts_match_their_shapes(name):
    """Llama layout: per layer QKV + out proj + gated MLP + 2 norms; embedding, LM head, final norm."""
    m = MODEL_PRESETS[name]
    h = m.hidden_size
    per_layer = h * (m.n_heads + 2 * m.n_kv_heads) * m.head_dim + h * h + 3 * h * m.intermediate_size + 2 * h
    assert m.params == m.n_layers * per_layer + 2 * m.vocab_size * h + h


def test_70b_preset_leaves_kv_room_on_80gb_gpus():
    model = MODEL_PRESETS["llama-2-70b"]
    usable = model.gpus_per_replica * GPU_PRESETS["a100-80gb"].memory_bytes * 0.9
    assert usable - model.weight_bytes > 0.5 * model.weight_bytes


def test_gpu_derived_units():
    gpu = GPU_PRESETS["a100-80gb"]
    assert gpu.memory_bytes == 80e9
    assert gpu.flops_per_s == 312e12
    assert gpu.bandwidth_bytes_per_s == 2039e9
    # Spec-sheet ordering the performance model relies on.
    h100, l4 = GPU_PRESETS["h100-sxm-80gb"], GPU_PRESETS["l4"]
    assert h100.flops_per_s > gpu.flops_per_s > l4.flops_per_s
    assert h100.bandwidth_bytes_per_s > gpu.bandwidth_bytes_per_s > l4.bandwidth_bytes_per_s


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GPU_PRESETS["l4"].memory_gb = 48.0  # type: ignore[misc]


def test_from_config_forms():
    assert gpu_from_config("l4") is GPU_PRESETS["l4"]
    assert model_from_config(MODEL_PRESETS["llama-3-8b"]) is MODEL_PRESETS["llama-3-8b"]
    cheap = gpu_from_config({"preset": "a100-80gb", "usd_per_hour": 1.5})
    assert cheap.usd_per_hour == 1.5 and cheap.bf16_tflops == 312.0 and cheap.name == "a100-80gb"
    full = gpu_from_config(
        {"name": "x", "memory_gb": 48, "bf16_tflops": 181, "memory_bandwidth_gbps": 864, "usd_per_hour": 1}
    )
    assert full == GpuType("x", 48.0, 181.0, 864.0, 1.0)
    tiny = model_from_config(
        {
            "name": "tiny",
            "params": 1e6,
            "n_layers": 2,
            "hidden_size": 64,
            "n_heads": 4,
            "n_kv_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 100,
        }
    )
    assert tiny.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2
    assert tiny.gpus_per_replica == 1 and tiny.load_time_s is None
    slow = model_from_config({"preset": "llama-2-7b", "load_time_s": 30})
    assert slow.load_time_s == 30.0 and slow.n_layers == 32


def test_unknown_preset_lists_known_names():
    with pytest.raises(ConfigError) as err:
        gpu_from_config("v100", "nodes[1].gpu")
    msg = str(err.value)
    assert msg.startswith("nodes[1].gpu: 'v100'")
    assert "a100-80gb" in msg and "l4" in msg
    with pytest.raises(ConfigError, match=r"models\[0\]\.preset: 'gpt-5'.*llama-2-7b"):
        model_from_config({"preset": "gpt-5"}, "models[0]")


def test_unknown_and_missing_keys():
    with pytest.raises(ConfigError, match=r"gpu\.tflops: unknown key"):
        gpu_from_config({"preset": "l4", "tflops": 1})
    with pytest.raises(ConfigError, match=r"model\.colour: unknown key"):
        model_from_config({"name": "m", "colour": "red"})
    with pytest.raises(ConfigError, match=r"gpu\.memory_gb: required key is missing"):
        gpu_from_config({"name": "x"})
    with pytest.raises(ConfigError, match=r"model: 7 must be"):
        model_from_config(7)


def test_dataclass_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^n_layers: 0 must be > 0"):
        dataclasses.replace(MODEL_PRESETS["llama-2-7b"], n_layers=0)
    with pytest.raises(ConfigError, match=r"^bf16_tflops: -1 must be > 0"):
        GpuType("x", 1, -1, 1, 1)


def test_shape_consistency_checks():
    with pytest.raises(ConfigError, match=r"models\[2\]\.n_kv_heads: 5 must divide n_heads \(32\)"):
        model_from_config({"preset": "llama-2-7b", "n_kv_heads": 5}, "models[2]")
    with pytest.raises(ConfigError, match=r"model\.hidden_size: 4100 must be a multiple of n_heads"):
        model_from_config({"preset": "llama-2-7b", "hidden_size": 4100})
    with pytest.raises(ConfigError, match=r"model\.gpus_per_replica: 3 must divide n_heads"):
        model_from_config({"preset": "llama-2-7b", "gpus_per_replica": 3})
    with pytest.raises(ConfigError, match=r"gpu\.name: '' must be a non-empty string"):
        gpu_from_config({"preset": "l4", "name": ""})


_not_a_positive_number = st.one_of(
    st.floats(max_value=0.0, allow_nan=False),
    st.integers(max_value=0),
    st.just(math.nan),
    st.just(math.inf),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)


@HYPOTHESIS
@given(
    field=st.sampled_from(["memory_gb", "bf16_tflops", "memory_bandwidth_gbps"]),
    bad=_not_a_positive_number,
    index=st.integers(0, 9),
)
def test_bad_gpu_numbers_name_path_and_value(field, bad, index):
    with pytest.raises(ConfigError) as err:
        gpu_from_config({"preset": "h100-sxm-80gb", field: bad}, f"gpus[{index}]")
    assert str(err.value).startswith(f"gpus[{index}].{field}: {bad!r} ")


@HYPOTHESIS
@given(bad=st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False) | st.integers(max_value=-1))
def test_negative_price_is_rejected(bad):
    with pytest.raises(ConfigError) as err:
        gpu_from_config({"preset": "l4", "usd_per_hour": bad})
    assert str(err.value).startswith(f"gpu.usd_per_hour: {bad!r} must be >= 0")


_INT_FIELDS = [
    "n_layers",
    "hidden_size",
    "n_heads",
    "n_kv_heads",
    "intermediate_size",
    "vocab_size",
    "bytes_per_param",
    "gpus_per_replica",
]


@HYPOTHESIS
@given(
    field=st.sampled_from(_INT_FIELDS),
    bad=st.one_of(
        st.integers(max_value=0),
        st.floats(min_value=0.01, max_value=1e6).filter(lambda v: not v.is_integer()),
        st.just(math.nan),
        st.text(max_size=4),
    ),
    index=st.integers(0, 9),
)
def test_bad_model_integers_name_path_and_value(field, bad, index):
    with pytest.raises(ConfigError) as err:
        model_from_config({"preset": "llama-3-8b", field: bad}, f"models[{index}]")
    assert str(err.value).startswith(f"models[{index}].{field}: {bad!r} ")


@HYPOTHESIS
@given(
    field=st.sampled_from(["params", "load_time_s"]),
    bad=st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False),
)
def test_bad_model_floats_name_path_and_value(field, bad):
    with pytest.raises(ConfigError) as err:
        model_from_config({"preset": "llama-2-70b", field: bad}, "scenario.models[1]")
    assert str(err.value).startswith(f"scenario.models[1].{field}: {bad!r} must be")
