"""Bad input is a named error (key or file:line, the value, the reason), never a crash, hang or silent result.

Each case here was found by throwing random values at the public API: before the fix it raised
OverflowError / numpy errors from deep inside, allocated terabytes, hung, or replayed stale data.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from envs.sim import Simulator, load_scenario, run_scenario
from envs.sim.config import MAX_NODES, MAX_TICKS
from envs.sim.errors import ConfigError, fail
from envs.sim.workload import MAX_TRACE_TOKENS, read_azure_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("workload.arrival.rate_per_s", 10**400, r"workload\.arrival\.rate_per_s: <integer of about 401 digits> is too large"),
        ("horizon_s", 2**64, r"horizon_s: .* is too large"),
        ("control_interval_s", 10**10**5, r"control_interval_s: <integer of about 100001 digits> is too large"),
        ("models", [{"name": "llama-3-8b", "replicas": 10**30}], r"models\[0\]\.replicas: .* is too large"),
        ("models", [{"name": "llama-3-8b", "replicas": 17, "max_replicas": 20}], r"models\[0\]\.replicas: 17 x tensor_parallel 1 GPUs do not fit in the 16 GPUs"),
        ("nodes", [{"gpu": "a100-80gb", "count": 10**9}], rf"nodes\[0\]\.count: 1000000000 must be <= {MAX_NODES} \(the nodes one simulation holds in memory\)"),
        ("horizon_s", 1e6, r"expected arrivals exceed 15,000,000 \(about 300 bytes each"),  # found by experiments.fuzz
        ("tick_s", 1e-9, r"tick_s: 1e-09 gives 3\.6e\+12 metric ticks .* at most " + re.escape(f"{MAX_TICKS:.0e}")),
    ],
    ids=["huge-rate", "huge-horizon", "100k-digit-interval", "huge-replicas", "replicas-beyond-cluster",
         "billion-nodes", "long-horizon", "nano-tick"],
)  # fmt: skip
def test_out_of_range_sizes_are_named_errors(key, value, message):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        Simulator("default", 0, overrides={key: value})
    assert time.perf_counter() - t0 < 5.0  # refused up front, not after building anything


def test_an_error_message_stays_short_whatever_the_value():
    err = fail("x", 10**10**6, "is too large")  # repr() of it would raise ValueError (digit limit)
    assert str(err) == "x: <integer of about 1000001 digits> is too large"
    assert len(str(fail("x", "y" * 10_000, "is bad"))) < 250


@pytest.mark.parametrize("seed", [-1, 1.5, float("nan"), "x", True, None, [1, 2]])
def test_bad_seeds_are_named_errors(seed):
    with pytest.raises(ConfigError, match=r"^seed: .* must be a non-negative integer"):
        Simulator("default", seed, overrides={"horizon_s": 15})
    with pytest.raises(ConfigError, match=r"^seed: "):
        run_scenario("default", seed, overrides={"horizon_s": 15})


def trace(tmp_path, rows: list[str], name: str = "t.csv"):
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    "field, shown",
    [(str(2**63), str(2**63)), (str(2**63 - 1), str(2**63 - 1)), (str(MAX_TRACE_TOKENS + 1), str(MAX_TRACE_TOKENS + 1)),
     ("9" * 1_000_000, "<1000000 digits>")],
    ids=["2**63", "2**63-1", "max+1", "million-digits"],
)  # fmt: skip
def test_absurd_token_counts_name_file_line_and_reason(tmp_path, field, shown):
    path = trace(tmp_path, ["2023-11-16 18:15:46.6805900,374,44", f"2023-11-16 18:15:47.0,{field},3"])
    with pytest.raises(ConfigError) as info:
        read_azure_trace(path)
    assert str(info.value) == (
        f"t.csv:3: ContextTokens {shown} exceeds {MAX_TRACE_TOKENS:,} tokens "
        "(longer than any model's context: a corrupt row?)"
    )


def test_a_trace_changed_on_disk_is_read_again(tmp_path):
    path = trace(tmp_path, [f"2023-11-16 18:15:{s:02d}.0,100,10" for s in range(0, 60, 2)])
    over = {"workload.arrival.path": str(path), "horizon_s": 60.0}
    first = run_scenario("azure-conv", 0, overrides=over)
    assert first["requests_arrived"] == 30
    path.write_text("\n".join([HEADER, *[f"2023-11-16 18:15:{s:02d}.0,100,10" for s in range(60)]]) + "\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a distinct mtime even on coarse clocks
    assert run_scenario("azure-conv", 0, overrides=over)["requests_arrived"] == 60


def test_trace_variation_options_are_checked():
    with pytest.raises(ConfigError, match=r"workload\.arrival\.variation: 'jitter' must be one of"):
        load_scenario(
            "azure-conv", {"workload.arrival.path": "t.csv", "workload.arrival.variation": "jitter"}
        )
    with pytest.raises(ConfigError, match=r"max_offset_s: 10 is only used with variation: offset"):
        load_scenario("azure-conv", {"workload.arrival.path": "t.csv", "workload.arrival.max_offset_s": 10})
