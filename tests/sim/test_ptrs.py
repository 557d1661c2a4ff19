"""Address tables (envs.sim.ptrs): the compiled side sees the very arrays, and a stale table is never used."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from envs.routing import NORMS
from envs.sim import Simulator
from envs.sim.batch import RoutingBuffers, route_step
from envs.sim.ptrs import address_table


def test_a_table_accepts_only_contiguous_arrays_of_the_known_dtypes():
    with pytest.raises(TypeError, match="array 1: ndarray must be a C-contiguous"):
        address_table([np.zeros(3), np.zeros((4, 4))[:, 1]])
    with pytest.raises(TypeError, match="array 0"):
        address_table([np.zeros(3, np.int32)])
    t = address_table([np.zeros((2, 3)), np.zeros(5, np.int64)])
    assert t.tolist()[1:4] == [2, 3, 1] and t.tolist()[5:8] == [5, 1, 1]


def test_growing_or_pickling_the_state_drops_its_table():
    sim = Simulator("default", 0)
    st = sim.state
    t = st.address_table()
    assert st.address_table() is t  # built once
    assert t[0] == st.rf.ctypes.data
    st._grow_replicas()
    t2 = st.address_table()
    assert t2 is not t and t2[4 * 2] == st.pf.ctypes.data  # the grown replica arrays' addresses
    copy = pickle.loads(pickle.dumps(st))
    assert copy._table is None and copy.address_table()[0] == copy.rf.ctypes.data


def _buffers(sim: Simulator, n_slots: int = 16) -> RoutingBuffers:
    n_obs = sim.n_models + 1 + sim.n_classes + 16 * n_slots  # roomy: only compared, never interpreted
    return RoutingBuffers(np.full(sim.n_models, 10.0), NORMS.copy(), np.zeros(2, np.int64), np.zeros(4),
                          np.zeros(n_obs, np.float32), np.ones(n_slots, bool), np.full(n_slots, -1, np.int64),
                          np.zeros(sim.n_requests + 1, np.int64))  # fmt: skip


def test_the_table_call_routes_exactly_as_the_array_call_through_fleet_growth():
    """route_and_observe (address tables) against route_step with every array passed, on twin
    simulations whose fleet grows mid-way (replica arrays reallocated, the table rebuilt)."""
    bigger = {"nodes": [{"name": "a100", "gpu": "a100-80gb", "count": 3, "gpus_per_node": 8}],
              "models": [{"name": "llama-3-8b", "replicas": 4, "max_replicas": 24}]}  # fmt: skip
    a, b = (Simulator("default", 3, overrides=bigger, router="external") for _ in range(2))
    ba, bb = _buffers(a), _buffers(b)
    rows = a.state.replica_rows
    ra = rb = -1
    for step in range(3000):
        until = min(a.scenario.horizon_s, 5.0 * (1 + step // 200))
        if step == 1500:  # more replicas than rows: every replica-sized array is replaced
            for sim in (a, b):
                sim.set_target_replicas(0, rows + 4)
        ia = a.route_and_observe(ra, until, ba)
        ib = route_step(*b.state.kernel_args(), float(until), int(rb), b.slo, bb.speed_max, b.n_models, b.n_classes,
                        bb.seen, bb.terms, bb.obs, bb.mask, bb.slot_rep, bb.norms, bb.decisions)  # fmt: skip
        b.sync_releases()
        assert ia == ib
        for x, y in zip((ba.obs, ba.mask, ba.slot_rep, ba.terms, ba.seen), (bb.obs, bb.mask, bb.slot_rep, bb.terms,
                                                                             bb.seen), strict=True):  # fmt: skip
            np.testing.assert_array_equal(x, y)
        ra = rb = int(ba.slot_rep[np.flatnonzero(ba.mask)[step % max(1, ba.mask.sum())]]) if ia >= 0 else -1
    assert a.state.replica_rows > rows
    assert a.episode_kpis() == b.episode_kpis()


def test_prefetch_is_a_hint_that_changes_nothing_and_takes_only_c_matrices():
    from numba import njit
    from numba.core.errors import TypingError

    from envs.sim.ptrs import prefetch

    @njit
    def touch(a, rows):
        for r in rows:
            prefetch(a, r, 0)  # rows past the end too: a prefetch never faults
        return a.sum()

    a = np.arange(12.0).reshape(4, 3)
    assert touch(a, np.array([0, 3, 4, 1_000_000])) == 66.0
    assert a.tolist() == np.arange(12.0).reshape(4, 3).tolist()

    @njit
    def flat(a):
        prefetch(a, 0, 0)

    with pytest.raises(TypingError):
        flat(np.zeros(3))


def test_the_event_heap_pops_in_time_priority_sequence_order():
    from numba import njit

    from envs.sim import layout as L
    from envs.sim.eventq import heap_pop, heap_push
    from envs.sim.state import aligned_zeros

    @njit
    def run(times, prios, hp, gi, pi):
        for k in range(len(times)):
            heap_push(hp, gi, pi, times[k], prios[k], k % 3, -1)
        out = np.empty(len(times))
        keys = np.empty(len(times), np.int64)
        for k in range(len(times)):
            j = heap_pop(hp, gi)
            out[k] = hp[j, L.H_T]
            keys[k] = int(hp[j, L.H_KEY])
        return out, keys

    rng = np.random.default_rng(0)
    times = rng.integers(0, 50, 500).astype(np.float64)  # many ties: priority, then sequence decide
    prios = rng.integers(0, 3, 500)
    hp = aligned_zeros((4 * 500 + 1, L.N_H), np.float64)
    assert hp.ctypes.data % 64 == 0
    gi = np.zeros(L.N_GI, np.int64)
    out, keys = run(times, prios, hp, gi, np.zeros((3, L.N_PI), np.int64))
    expected = sorted(range(500), key=lambda k: (times[k], prios[k], k))
    assert out.tolist() == [times[k] for k in expected]
    assert keys.tolist() == [(int(prios[k]) << 48) | k for k in expected]
    assert gi[L.I_HEAP_N] == 0


def test_a_state_list_row_is_the_states_own_table_and_follows_growth():
    from envs.sim.batch import N_STATE_ARRAYS, ROW_WIDTH, ArrayList, StateList

    sims = [Simulator("default", s) for s in range(3)]
    assert len(sims[0].state.kernel_args()) == N_STATE_ARRAYS
    states = StateList(sims)
    assert states.items.reshape(3, ROW_WIDTH).tolist() == [s.state.address_table().tolist() for s in sims]
    sims[1].state._grow_replicas()  # replaces the replica arrays: the row must follow
    states.sync(1, sims[1])
    assert states.items.reshape(3, ROW_WIDTH)[1].tolist() == sims[1].state.address_table().tolist()
    arrays = ArrayList([np.zeros(4, np.int64), np.zeros(5, np.int64)])
    new = np.zeros(7, np.int64)
    arrays[1] = new
    assert arrays[1] is new and arrays.items.tolist()[4:6] == [new.ctypes.data, 7]
