"""The compiled KPI window: numpy's arithmetic bit for bit, and cursors that belong to their readers."""

from __future__ import annotations

import numpy as np
import pytest

from envs.sim.engine import Simulator, run_scenario
from envs.sim.window import KpiWindow, pairwise_sum, percentile

SIZES = [*range(0, 140), 255, 256, 257, 1000, 1031, 8192, 20_001]


@pytest.mark.parametrize("n", SIZES)
def test_pairwise_sum_is_numpys_sum(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 4, n)  # wide magnitudes: order matters
    assert pairwise_sum(x, 0, n).hex() == float(x.sum()).hex()
    if n > 3:
        assert pairwise_sum(x, 2, n - 3).hex() == float(x[2 : n - 1].sum()).hex()


@pytest.mark.parametrize("q", [0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0])
def test_percentile_is_numpys_linear_percentile(q):
    rng = np.random.default_rng(int(q * 10))
    for n in [1, 2, 3, 7, 100, 101, 257, 1000]:
        for x in (rng.exponential(1.0, n), np.round(rng.exponential(1.0, n), 1)):  # the second has ties
            scratch = np.empty(n)
            assert percentile(x, n, q, scratch).hex() == float(np.percentile(x, q)).hex()


def test_reading_a_window_changes_nothing_and_readers_keep_their_own_cursor():
    a = Simulator("bursty", 2, overrides={"horizon_s": 600.0})
    b = Simulator("bursty", 2, overrides={"horizon_s": 600.0})
    mine = KpiWindow()
    for k in range(1, 41):
        a.advance(15.0 * k)
        b.advance(15.0 * k)
        # a private reader of `a`, reading every other interval, must not disturb a's own window
        if k % 2 == 0:
            private = a.read_window(mine, views=True)[1]
            assert private["requests_arrived"] >= 0
        peek = a.read_window(a.window, views=True, move=False)
        loads, kpis = a.step_views()
        ref_loads, ref_kpis = b.step_views()
        assert kpis == ref_kpis == peek[1]
        assert [x.replicas_ready for x in loads] == [y.replicas_ready for y in ref_loads]
        assert [x.ttft_p99_s for x in loads] == [y.ttft_p99_s for y in ref_loads]
        for m, load in enumerate(loads):
            a.set_target_replicas(m, load.replicas_ready + 1)
            b.set_target_replicas(m, load.replicas_ready + 1)
    assert a.episode_kpis() == b.episode_kpis()
    # a window read from the start to now covers the whole episode's arrivals
    whole = a.read_window(KpiWindow(), views=False)[1]
    assert whole["requests_arrived"] == a.episode_kpis()["requests_arrived"]


def test_skipping_unread_windows_changes_no_number():
    """run_scenario without on_interval skips the window of scalers that do not read the load."""
    seen = []
    for name in ("default", "heterogeneous"):
        fast = run_scenario(name, 1, overrides={"horizon_s": 600.0})
        full = run_scenario(name, 1, overrides={"horizon_s": 600.0}, on_interval=lambda s, k: seen.append(k))
        assert fast == full
    assert seen and all(k is not None for k in seen)
    # a fixed count that does not fit is retried every interval, as with the views
    over = {"horizon_s": 300.0, "scaling": {"kind": "static", "replicas": 12},
            "nodes": [{"name": "a100", "gpu": "a100-80gb", "count": 1, "gpus_per_node": 8}]}  # fmt: skip
    sim_fast, sim_full = Simulator("default", 0, overrides=over), Simulator("default", 0, overrides=over)
    for k in range(1, 21):
        sim_fast.advance(15.0 * k)
        sim_full.advance(15.0 * k)
        assert sim_fast.control_step(kpis=False) is None
        sim_full.control_step()
    assert sim_fast.placement_failures == sim_full.placement_failures == 20  # one per interval


def test_a_precomputed_read_is_the_read_and_a_void_one_is_recomputed():
    """precompute_read + read_window(precomputed=...) gives read_window's numbers and skips the compiled
    pass; a precomputed read the simulation or another read has since voided is computed again."""
    a = Simulator("bursty", 4, overrides={"horizon_s": 600.0})
    b = Simulator("bursty", 4, overrides={"horizon_s": 600.0})
    for k in range(1, 31):
        a.advance(15.0 * k)
        b.advance(15.0 * k)
        pre = a.precompute_read(a.window, views=True)
        calls = a._stats_calls
        if k % 3 == 1:  # a replica added since: the read must see it
            a.set_target_replicas(0, int(a.target[0]) + 1)
            b.set_target_replicas(0, int(b.target[0]) + 1)
        elif k % 3 == 2:  # another read since: its buffers were overwritten
            a.read_window(KpiWindow(), views=True)
            b.read_window(KpiWindow(), views=True)
        loads, kpis = a.step_views(pre)
        ref_loads, ref_kpis = b.step_views()
        assert kpis == ref_kpis
        for x, y in zip(loads, ref_loads, strict=True):
            assert x.replicas_ready == y.replicas_ready and x.replicas_loading == y.replicas_loading
            assert x.ttft_p99_s == y.ttft_p99_s and x.in_flight_mean == y.in_flight_mean
            assert np.array_equal(x.tick_arrivals, y.tick_arrivals)
        # used as is only when nothing happened in between
        assert a._stats_calls - calls == (0 if k % 3 == 0 else 1 if k % 3 == 1 else 2)
    assert a.episode_kpis() == b.episode_kpis()
