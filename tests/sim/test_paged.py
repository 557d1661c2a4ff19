"""The paged engine (``models[].kv_policy: paged``): KV blocks, preemption, chunked prefill, prefix caching.

Each test states its tolerance; most are exact, because the engine's arithmetic is integer blocks
and tokens and its iteration times are the same float sums the test recomputes.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.sim import kernel as K
from envs.sim import kvcache as C
from envs.sim.engine import Simulator, run_scenario
from envs.sim.errors import ConfigError

HB = 512  # the Mooncake trace's hashed block


def write_mooncake(path, rows):
    """rows: (time_s, prompt, output, hash ids)."""
    with open(path, "w") as f:
        for t, p, o, ids in rows:
            f.write(json.dumps({"timestamp": round(t * 1000), "input_length": p, "output_length": o,
                                "hash_ids": list(ids)}) + "\n")  # fmt: skip
    return str(path)


def model(**kw):
    return {
        "name": "llama-3.1-8b",
        "replicas": 1,
        "min_replicas": 1,
        "max_replicas": 1,
        "kv_policy": "paged",
        **kw,
    }


def scenario(path, *, horizon=600.0, models=None, **extra):
    return {
        "horizon_s": horizon,
        "nodes": [
            {
                "name": "a100",
                "gpu": "a100-80gb",
                "count": 1,
                "gpus_per_node": 8,
                "cached_models": ["llama-3.1-8b"],
            }
        ],  # fmt: skip
        "models": models or [model()],
        "workload": {
            "arrival": {"kind": "trace", "path": path},
            "sizes": {"kind": "trace"},
            "classes": [{"name": "all", "timeout_s": 1e6}],
        },  # fmt: skip
        "routing": "round_robin",
        "scaling": "static",
        **extra,
    }


def ids_for(prompt, shared=(), start=1_000_000):
    """Hash ids of a prompt whose first blocks are ``shared`` and the rest unique from ``start``."""
    n = math.ceil(prompt / HB)
    return list(shared[:n]) + list(range(start, start + n - len(shared[:n])))


# ----------------------------------------------------------------------------- prefix caching


def independent_hit_bound(rows):
    """Cached prompt tokens / prompt tokens with one infinite cache, requests served one at a time in
    arrival order: only full blocks are cached, and a full hit still computes its last token."""
    seen: set[int] = set()
    hit = total = 0
    for _, p, _, ids in rows:
        full = min(len(ids), p // HB)
        limit = min(full, (p - 1) // HB)
        k = 0
        while k < limit and ids[k] in seen:
            k += 1
        hit += k * HB
        total += p
        seen.update(ids[:full])
    return hit / total


def test_prefix_hit_rate_equals_the_infinite_cache_bound(tmp_path):
    # Multi-turn conversations and a shared system prompt, one request at a time (10 s apart: each
    # finishes before the next arrives), one replica whose cache holds everything: exact.
    rng = np.random.default_rng(3)
    system = list(range(4))
    rows, t = [], 0.0
    convs = {c: list(system) + list(range(100 * (c + 1), 100 * (c + 1) + 3)) for c in range(5)}
    for _ in range(40):
        c = int(rng.integers(5))
        ids = convs[c]
        p = len(ids) * HB - int(rng.integers(0, HB))  # last block partial
        rows.append((t, p, int(rng.integers(5, 40)), ids))
        convs[c] = ids + list(range(10_000 + len(rows) * 10, 10_000 + len(rows) * 10 + 2))
        t += 10.0
    path = write_mooncake(tmp_path / "conv.jsonl", rows)
    k = run_scenario(scenario(path))
    assert k["requests_completed"] == len(rows)
    bound = independent_hit_bound(rows)
    assert 0.3 < bound < 0.9
    assert k["prefix_hit_rate"] == bound
    assert k["preemptions"] == 0 and k["recomputed_tokens"] == 0


def test_prefix_caching_off_gives_no_hits_and_longer_ttft(tmp_path):
    rows = [(10.0 * j, 8000, 20, ids_for(8000, shared=list(range(15)))) for j in range(6)]
    path = write_mooncake(tmp_path / "same.jsonl", rows)
    on = Simulator(scenario(path), 0)
    on.advance(600)
    off = Simulator(scenario(path, models=[model(prefix_caching=False)]), 0)
    off.advance(600)
    kon, koff = on.episode_kpis(), off.episode_kpis()
    assert koff["prefix_hit_rate"] == 0.0
    assert kon["prefix_hit_rate"] == pytest.approx(5 * 15 * HB / (6 * 8000))  # 15 shared full blocks
    ttft_on = on.requests().first_token_s - on.requests().arrival_s
    ttft_off = off.requests().first_token_s - off.requests().arrival_s
    assert ttft_on[0] == ttft_off[0]  # the first request finds an empty cache either way
    assert np.all(ttft_on[1:] < 0.5 * ttft_off[1:])


def new_cache(blocks=8, eb=2, width=16):
    """One replica's arrays for the compiled cache functions: ``blocks`` KV blocks, ``eb`` per entry."""
    pi = np.zeros((1, K.N_PI), np.int64)
    pi[0, K.Q_BLKCAP], pi[0, K.Q_EB], pi[0, K.Q_BT], pi[0, K.Q_CACHE] = blocks, eb, HB // eb, 1
    pi[0, K.Q_LRUH] = pi[0, K.Q_LRUT] = -1
    kc = np.full((1, K.N_KC, width), -1, np.int64)
    return pi, kc


def request_rows(prompts, ids_list):
    ri = np.zeros((len(prompts) + 1, K.N_RI), np.int64)
    ri[:-1, K.R_PROMPT] = prompts
    ptr = np.cumsum([0] + [len(x) for x in ids_list])
    n = len(prompts)
    pc = np.empty(n + 2 + ptr[-1], np.int64)
    pc[: n + 1] = ptr + n + 2
    pc[n + 1] = pc[n]
    pc[n + 2 :] = [k for x in ids_list for k in x]
    gi = np.zeros(K.N_GI, np.int64)
    gi[K.I_HB] = HB
    return ri, pc, gi


def compute_prompt(ri, pi, pc, kc, gi, i):
    """Request ``i`` computes its whole prompt (after its cached prefix) and publishes its blocks."""
    hit, _ = C.match(ri, pi, pc, kc, gi, 0, i, ri[i, K.R_PROMPT])
    C.hold(ri, pi, pc, kc, 0, i, hit)
    need = C.cdiv(ri[i, K.R_PROMPT] - hit * HB, pi[0, K.Q_BT])
    assert C.allocate(kc, pi, 0, need)
    ri[i, K.R_BLOCKS] = need
    ri[i, K.R_COMPUTED] = ri[i, K.R_PROMPT]
    C.publish(ri, pi, pc, kc, gi, 0, i)
    return hit


def cached(kc, keys):
    return [k for k in keys if C.lookup(kc, 0, k) >= 0]


def test_lru_eviction_order_on_a_hand_built_sequence():
    # 10 KV blocks of 256 tokens, an entry (one 512-token hashed block) holds 2. Each prompt of
    # 2 x 512 + 1 tokens has 2 full hashed blocks and needs 5 KV blocks.
    pi, kc = new_cache(blocks=10)
    prompts = [2 * HB + 1, 2 * HB + 1, 2 * HB + 1, 3 * HB]
    ri, pc, gi = request_rows(prompts, [[1, 2, 9], [3, 4, 8], [1, 5, 7], [6, 10, 11]])
    assert compute_prompt(ri, pi, pc, kc, gi, 0) == 0
    C.release(ri, pi, pc, kc, 0, 0)  # LRU (oldest first): 2, 1 (a request's deepest block first)
    assert compute_prompt(ri, pi, pc, kc, gi, 1) == 0
    C.release(ri, pi, pc, kc, 0, 1)  # LRU: 2, 1, 4, 3
    assert (pi[0, K.Q_ENTRIES], pi[0, K.Q_LRUN], pi[0, K.Q_BLKPRIV]) == (4, 4, 0)
    # c reuses block 1 (held: off the LRU); it needs 3 blocks, 2 are free: the LRU head, 2, goes
    assert compute_prompt(ri, pi, pc, kc, gi, 2) == 1
    assert cached(kc, range(12)) == [1, 3, 4, 5]
    assert C.available_blocks(pi, 0) == 1 + 2 * 2  # one free block, entries 4 and 3 evictable
    C.release(ri, pi, pc, kc, 0, 2)  # LRU: 4, 3, 5, 1
    # d (3 full blocks, no hit: a full hit would still compute its last token) needs 6 blocks, 2
    # are free: 4 then 3 are evicted
    assert compute_prompt(ri, pi, pc, kc, gi, 3) == 0
    assert cached(kc, range(12)) == [1, 5, 6, 10, 11]
    assert (pi[0, K.Q_ENTRIES], pi[0, K.Q_LRUN], pi[0, K.Q_BLKPRIV]) == (5, 2, 0)
    assert kc[0, K.KC_KEY, pi[0, K.Q_LRUH]] == 5  # next to go


def test_hash_table_survives_many_inserts_and_evictions():
    rng = np.random.default_rng(0)
    pi, kc = new_cache(blocks=64, eb=1, width=128)
    live: list[int] = []
    ri, pc, gi = request_rows([HB + 1], [[0, 1]])
    for step in range(5000):
        key = int(rng.integers(0, 300))
        if C.lookup(kc, 0, key) >= 0:
            continue
        if pi[0, K.Q_ENTRIES] == 64:
            head = pi[0, K.Q_LRUH]
            evicted = kc[0, K.KC_KEY, head]
            assert C.allocate(kc, pi, 0, 1)
            pi[0, K.Q_BLKPRIV] -= 1
            live.remove(int(evicted))
        e = C._insert(kc, pi, 0, key)
        C._lru_append(kc, pi, 0, e)
        live.append(key)
        if step % 500 == 0:
            assert sorted(cached(kc, range(300))) == sorted(live)
    assert sorted(cached(kc, range(300))) == sorted(live)


# ----------------------------------------------------------------------------- chunked prefill


def test_a_prompt_alone_takes_ceil_p_over_budget_iterations(tmp_path):
    p, budget = 10_000, 2048
    path = write_mooncake(tmp_path / "one.jsonl", [(0.0, p, 3, ids_for(p))])
    sim = Simulator(scenario(path, models=[model(max_batched_tokens=budget)]), 0)
    sim.advance(60)
    ttft = float(sim.requests().first_token_s[0])
    coef = sim.state.pf[0]
    expected, done = 0.0, 0
    n_iter = 0
    while done < p:
        chunk = min(budget, p - done)
        expected = expected + _iteration_s(coef, chunk, done)
        done += chunk
        n_iter += 1
    assert n_iter == math.ceil(p / budget) == 5
    assert ttft == expected
    # without chunking: one iteration of the whole prompt
    sim2 = Simulator(scenario(path, models=[model(max_batched_tokens=budget, chunked_prefill=False)]), 0)
    sim2.advance(60)
    assert float(sim2.requests().first_token_s[0]) == _iteration_s(coef, p, 0)


def _iteration_s(pf, tokens, kv):
    tile = pf[K.P_TILE]
    compute = pf[K.P_CTOK] * (np.ceil(tokens / tile) * tile)
    memory = pf[K.P_WREAD] + pf[K.P_KVTOK] * kv
    return (compute if compute > memory else memory) + pf[K.P_OVH]


def test_iterations_never_exceed_the_token_budget(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(float(t), int(p), int(o), ids_for(int(p), start=10_000 * j))
            for j, (t, p, o) in enumerate(zip(np.sort(rng.uniform(0, 20, 60)), rng.integers(100, 6000, 60),
                                               rng.integers(1, 200, 60), strict=True))]  # fmt: skip
    path = write_mooncake(tmp_path / "mix.jsonl", rows)
    budget = 512
    sim = Simulator(scenario(path, models=[model(max_batched_tokens=budget)]), 0)
    seen = 0
    for t in np.arange(0.001, 40, 0.003):
        sim.advance(float(t))
        if sim.state.pi[0, K.Q_BUSY]:
            scheduled = int(sim.state.ri[:-1, K.R_SCHED].sum())
            assert 0 < scheduled <= budget
            seen += 1
    assert seen > 1000
    assert sim.episode_kpis()["requests_completed"] == len(rows)


# ----------------------------------------------------------------------------- paged KV and preemption


def small_kv_scenario(path, fraction, **kw):
    # kv_memory_fraction just above the weights: a few thousand tokens of KV
    return scenario(path, models=[model(kv_memory_fraction=fraction, **kw)])


def test_the_most_recently_admitted_request_is_preempted_and_recomputed(tmp_path):
    # KV for about 2 x (prompt + 600) tokens: two long generations cannot both finish
    rows = [(0.0, 2000, 1500, ids_for(2000, start=0)), (0.01, 2000, 1500, ids_for(2000, start=100))]
    path = write_mooncake(tmp_path / "two.jsonl", rows)
    sim = Simulator(small_kv_scenario(path, 0.21, prefix_caching=False), 0)
    cap = int(sim.state.pi[0, K.Q_BLKCAP]) * 16
    assert 4000 < cap < 7000, cap
    sim.advance(600)
    k = sim.episode_kpis()
    assert k["requests_completed"] == 2
    assert k["preemptions"] >= 1
    npre = sim.requests().preemptions
    assert npre[0] == 0 and npre[1] == k["preemptions"]  # always the later one
    assert k["recomputed_tokens"] > 2000
    tab = sim.requests()
    assert tab.finished_s[0] < tab.finished_s[1]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), fraction=st.sampled_from([0.2065, 0.21, 0.22]), caching=st.booleans(),
       chunked=st.booleans())  # fmt: skip
def test_kv_never_exceeds_capacity_and_requests_are_conserved(
    tmp_path_factory, seed, fraction, caching, chunked
):
    rng = np.random.default_rng(seed)
    n = 80
    t = np.sort(rng.uniform(0, 30, n))
    shared = list(range(6))
    rows = []
    for j in range(n):
        p = int(rng.integers(50, 3500))
        rows.append((float(t[j]), p, int(rng.integers(1, 800)), ids_for(p, shared=shared if j % 2 else (),
                                                                        start=1000 * (j + 1))))  # fmt: skip
    path = write_mooncake(tmp_path_factory.mktemp("kv") / "w.jsonl", rows)
    sim = Simulator(small_kv_scenario(path, fraction, prefix_caching=caching, chunked_prefill=chunked,
                                      max_batched_tokens=1024), seed)  # fmt: skip
    pi = sim.state.pi
    for step in np.arange(0.5, 400, 0.5):
        sim.advance(float(step))
        used = pi[0, K.Q_BLKPRIV] + pi[0, K.Q_ENTRIES] * pi[0, K.Q_EB]
        assert 0 <= used <= pi[0, K.Q_BLKCAP]
        assert pi[0, K.Q_BLKPRIV] == sim.state.ri[:-1, K.R_BLOCKS].sum()
        ep = sim.episode_kpis()
        assert (
            ep["requests_arrived"]
            == ep["requests_completed"] + ep["requests_dropped"] + ep["requests_in_system"]
        )
    sim.advance(20_000.0)  # a cache this small thrashes: thousands of preemptions before the last finishes
    ep = sim.episode_kpis()
    assert (
        ep["requests_in_system"] == 0
    )  # every request, preempted or not, finished or was dropped with a reason
    ri = sim.state.ri[:n]
    dropped = ri[:, K.R_STATE] == K.REQ_DROPPED
    assert np.all(ri[dropped, K.R_REASON] == K.DROP_KV)  # only requests that could never fit
    assert np.all(ri[~dropped, K.R_STATE] == K.REQ_DONE)


def test_requests_longer_than_the_context_are_rejected_with_a_reason(tmp_path):
    rows = [(0.0, 3000, 200, ids_for(3000)), (1.0, 3900, 200, ids_for(3900, start=50)), (2.0, 100, 10, [7])]
    path = write_mooncake(tmp_path / "long.jsonl", rows)
    sim = Simulator(scenario(path, models=[model(max_model_len=4096)]), 0)
    sim.advance(600)
    k = sim.episode_kpis()
    assert k["requests_completed"] == 2 and k["requests_rejected"] == 1
    tab = sim.requests()
    assert tab.is_state("dropped").tolist() == [False, True, False]
    assert tab.drop_reason_names[tab.drop_reason[1]] == "context_length"


def test_reserve_settings_that_do_not_apply_are_errors(tmp_path):
    path = write_mooncake(tmp_path / "x.jsonl", [(0.0, 100, 10, [1])])
    for bad in ({"kv_policy": "reserve", "max_batched_tokens": 512}, {"kv_policy": "reserve", "chunked_prefill": True},
                {"kv_policy": "paged", "max_model_len": 10**6}, {"kv_policy": "pages"}):  # fmt: skip
        with pytest.raises(ConfigError, match=r"models\[0\]\."):
            Simulator(scenario(path, models=[model(**bad)]), 0)
    with pytest.raises(ConfigError, match=r"models\[0\]\.kv_block_tokens"):
        Simulator(scenario(path, models=[model(kv_block_tokens=24)]), 0)


def test_paged_matches_reserve_when_nothing_is_short(tmp_path):
    # Light load, no prefix hits, prompts within one budget: the same schedule, the same latencies.
    rows = [(2.0 * j, 1000, 50, ids_for(1000, start=100 * j)) for j in range(20)]
    path = write_mooncake(tmp_path / "light.jsonl", rows)
    out = {}
    for policy in ("reserve", "paged"):
        m = model(kv_policy=policy) if policy == "paged" else {**model(), "kv_policy": "reserve"}
        sim = Simulator(scenario(path, models=[m]), 0)
        sim.advance(600)
        out[policy] = sim.requests()
    np.testing.assert_allclose(out["paged"].first_token_s, out["reserve"].first_token_s, rtol=1e-12)
    np.testing.assert_allclose(out["paged"].finished_s, out["reserve"].finished_s, rtol=1e-9)


def test_littles_law_holds_for_the_paged_engine():
    # mean requests in the system (tick samples) = arrival rate x mean time in the system, within 3 %
    ov = {"horizon_s": 1200, "models": [{"name": "llama-3-8b", "replicas": 2, "min_replicas": 1, "max_replicas": 4,
                                          "kv_policy": "paged", "kv_memory_fraction": 0.3}]}  # fmt: skip
    sim = Simulator(
        "default", 0, overrides={**ov, "workload": {"arrival": {"kind": "poisson", "rate_per_s": 8}}}
    )
    sim.advance(1200)
    k = sim.episode_kpis()
    assert k["preemptions"] > 0  # a small KV: the mechanism is exercised
    l_mean = float(sim.state.tick_inflight[: int(sim.state.gi[K.I_NTICK]), 0].mean())
    lam = k["requests_arrived"] / 1200
    assert l_mean == pytest.approx(lam * k["e2e_mean_s"], rel=0.03)


def test_same_seed_same_numbers():
    ov = {"horizon_s": 300, "models": [{"name": "llama-3-8b", "replicas": 2, "kv_policy": "paged",
                                        "kv_memory_fraction": 0.3}]}  # fmt: skip
    a = run_scenario("bursty", 5, overrides=ov)
    b = run_scenario("bursty", 5, overrides=ov)
    assert a == b


def test_the_layer_model_holds_at_mixed_batch_sizes():
    # A chunked iteration runs its prefill chunk and its decode tokens through the same linear layers:
    # the engine costs it by their total (plus the KV read, which the profiles do not cover), so the
    # calibrated layer model must hold at the totals a token budget produces. Vidur's A100 profiles
    # (linear layers only, per layer), Llama-3-8B: within the 20% of tests/sim/test_perf_model.py at
    # vLLM's A100 budget (2048) plus 32 and 256 decode tokens, and at the H100 budget (8192) plus 256.
    from envs.sim.perf import layer_time_s, load_layer_profiles
    from tests.paths import A100_PROFILES

    path = A100_PROFILES / "Meta-Llama-3-8B_mlp.csv"
    if not path.is_file():
        pytest.fail(f"missing Vidur A100 profile {path}: the repo expects ../shared/profiles/a100/ beside it")
    rows = load_layer_profiles([path], tensor_parallel=1, min_tokens=2048, max_tokens=8448)
    sizes = {2048 + 32, 2048 + 256, 8192, 8192 + 256}  # profiled every 32 tokens above 2048
    picked = [r for r in rows if r.num_tokens in sizes]
    assert {r.num_tokens for r in picked} == sizes
    for r in picked:
        model = layer_time_s("a100-80gb", n_embd=r.n_embd, n_head=r.n_head, n_kv_head=r.n_kv_head,
                             n_expanded_embd=r.n_expanded_embd, use_gated_mlp=r.use_gated_mlp,
                             num_tokens=r.num_tokens)  # fmt: skip
        assert abs(model / r.measured_s - 1.0) < 0.20, (r.num_tokens, model, r.measured_s)
