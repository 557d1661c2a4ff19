"""Trace replays differ between seeds in a documented, seeded way (``workload.arrival.variation``)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.sim import Simulator, run_scenario
from envs.sim import layout as L
from envs.sim.errors import ConfigError
from envs.sim.workload import read_azure_trace
from tests.paths import AZURE_CONV_TRACE


def replay(variation: str, seed: int, horizon_s: float = 600.0, **extra) -> Simulator:
    over = {"workload.arrival.path": str(AZURE_CONV_TRACE), "workload.arrival.variation": variation,
            "horizon_s": horizon_s, **{f"workload.arrival.{k}": v for k, v in extra.items()}}  # fmt: skip
    return Simulator("azure-conv", seed, overrides=over)


def rows(sim: Simulator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = sim.n_requests
    return (sim.state.rf[:n, L.R_ARR], sim.state.ri[:n, L.R_PROMPT], sim.state.ri[:n, L.R_OUTPUT])


def test_none_replays_the_same_requests_for_every_seed():
    a, b = rows(replay("none", 0)), rows(replay("none", 1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_bootstrap_keeps_arrival_times_and_draws_sizes_from_the_replayed_rows():
    base = rows(replay("none", 0))
    a, b = rows(replay("bootstrap_sizes", 0)), rows(replay("bootstrap_sizes", 1))
    assert np.array_equal(a[0], base[0]) and np.array_equal(b[0], base[0])
    assert not np.array_equal(a[1], b[1])
    pairs = set(zip(np.maximum(base[1], 1).tolist(), np.maximum(base[2], 1).tolist(), strict=True))
    assert set(zip(a[1].tolist(), a[2].tolist(), strict=True)) <= pairs  # each drawn pair is a trace row
    again = rows(replay("bootstrap_sizes", 0))
    assert all(np.array_equal(x, y) for x, y in zip(a, again, strict=True))  # same seed, same draw


def test_offset_replays_a_window_of_the_trace_rebased_to_zero():
    tr = read_azure_trace(AZURE_CONV_TRACE)
    sim = replay("offset", 4, horizon_s=600.0, max_offset_s=2000.0)
    t, prompt, _ = rows(sim)
    assert 0.0 <= t[0] and t[-1] < 600.0
    # the window is a run of the trace's own consecutive rows, not its first ones
    trace_prompts = np.maximum(tr.prompt_tokens, 1)
    starts = [int(i) for i in np.flatnonzero(trace_prompts == prompt[0])
              if np.array_equal(trace_prompts[i : i + len(t)], prompt)]  # fmt: skip
    assert starts and starts[0] > 0
    np.testing.assert_allclose(
        t, tr.arrival_s[starts[0] : starts[0] + len(t)] - tr.arrival_s[starts[0]] + t[0]
    )
    assert not np.array_equal(rows(replay("offset", 5, max_offset_s=2000.0))[0], t)
    with pytest.raises(ConfigError, match=r"variation: 'offset' needs a trace longer than horizon_s"):
        replay("offset", 0, horizon_s=3600.0 * 3)


def test_seeds_now_spread_a_replays_kpis():
    ttft = {run_scenario("azure-conv", s, overrides={"workload.arrival.path": str(AZURE_CONV_TRACE),
                                                      "horizon_s": 600.0})["ttft_p99_s"] for s in range(3)}  # fmt: skip
    assert len(ttft) == 3  # the shipped azure-conv uses bootstrap_sizes
