"""Scalers of a disaggregated model's pools (per_pool, pd_ratio, dynamo_sla) and the serving profile
they read (envs.sim.profile)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baselines.scaling import DynamoSlaScaler, HpaScaler, PdRatioScaler, make_scaler
from envs.sim import Simulator, run_scenario
from envs.sim.errors import ConfigError
from tests.baselines.test_scalers import POOL_VIEW, make_load

PROFILE = POOL_VIEW["profile"]


# ----------------------------------------------------------------------------- the serving profile


def test_profile_prefill_is_the_engines_iterations_chunk_by_chunk():
    c = PROFILE.coefficients
    # 5000 tokens in chunks of 2048: each chunk reads the KV of the tokens before it
    expected = c.iteration_time_s(2048, 0) + c.iteration_time_s(2048, 2048) + c.iteration_time_s(904, 4096)
    assert PROFILE.prefill_s(5000) == pytest.approx(expected, rel=1e-12)
    assert PROFILE.prefill_tokens_per_s_per_gpu(5000) == pytest.approx(5000 / expected)


def test_profile_best_decode_throughput_is_the_largest_concurrency_within_the_itl():
    context = 1500.0
    for itl in (0.01, 0.02, 0.05, 0.2):
        best = PROFILE.best_decode_tokens_per_s_per_gpu(itl, context)
        cmax = PROFILE.max_concurrency(context)
        ok = [c for c in range(1, cmax + 1) if PROFILE.decode_itl_s(c, context) <= itl]
        c = max(ok) if ok else 1
        assert best == pytest.approx(c / PROFILE.decode_itl_s(c, context))
    # looser targets allow larger batches and more throughput, up to the batch / KV limit
    thpt = [PROFILE.best_decode_tokens_per_s_per_gpu(t, context) for t in (0.01, 0.02, 0.05, 0.2)]
    assert thpt == sorted(thpt) and thpt[0] < thpt[-1]


def test_a_lone_requests_ttft_in_the_simulator_is_the_profiles_prefill_time():
    raw = {
        "name": "lone",
        "horizon_s": 30.0,
        "nodes": [{"gpu": "a100-80gb", "count": 1, "gpus_per_node": 1, "cached_models": ["llama-3-8b"]}],
        "models": [{"name": "llama-3-8b", "replicas": 1, "prefix_caching": False}],
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": 0.05},
            "sizes": {"kind": "fixed", "prompt": 5000, "output": 2},
            "classes": [{"name": "c", "timeout_s": 60}],
        },
    }
    sim = Simulator(raw, seed=0)
    sim.advance(30.0)
    (ld,), kpi = sim.step_views()
    assert kpi["requests_completed"] >= 1
    prof = sim.profiles[0]
    assert prof.token_budget == 2048 and prof.gpus == 1
    # the first token comes at the end of the last prefill chunk, on an idle replica
    assert kpi["ttft_p50_s"] == pytest.approx(prof.prefill_s(5000), rel=1e-9)
    assert ld.profile is prof and ld.prompt_tokens_mean == 5000 and ld.output_tokens_mean == 2


# ----------------------------------------------------------------------------- per_pool


def test_per_pool_runs_each_roles_own_scaler():
    spec = {
        "kind": "per_pool",
        "prefill": {"kind": "hpa", "metric": "queue_len_per_replica", "target": 4},
        "decode": {"kind": "hpa", "metric": "kv_usage", "target": 0.5},
    }
    pre, dec = make_scaler(spec), make_scaler(spec)
    n_pre = pre.desired_replicas(make_load(role="prefill", replicas_ready=2, target_replicas=2, queue_len=24))
    n_dec = dec.desired_replicas(make_load(role="decode", replicas_ready=2, target_replicas=2, kv_usage=0.9))
    assert n_pre == 6  # ceil(24 / 2 / 4 * 2): the queue per replica against its target
    assert n_dec == 4  # ceil(0.9 / 0.5 * 2)
    assert isinstance(pre._inner, HpaScaler) and pre._inner.params.metric == "queue_len_per_replica"
    with pytest.raises(RuntimeError, match="one deployment"):
        pre.desired_replicas(make_load(role="decode"))
    with pytest.raises(ConfigError, match=r"scaling\.aggregated: None must name a scaler"):
        make_scaler(spec).desired_replicas(make_load())


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"kind": "per_pool", "prefill": "hpa"}, r"scaling\.decode: None must name the scaler"),
        ({"kind": "per_pool", "prefill": "hpa", "decode": {"kind": "hpaa"}}, r"scaling\.decode\.kind: 'hpaa'"),
        ({"kind": "per_pool", "prefill": "hpa", "decode": {"kind": "per_pool"}}, r"scaling\.decode\.kind"),
        ({"kind": "per_pool", "prefill": {"kind": "hpa", "metric": "kv_usage"}, "decode": "hpa"},
         r"scaling\.prefill\.target: required for metric 'kv_usage'"),
        ({"kind": "pd_ratio", "prefill_fraction": 1.0}, r"scaling\.prefill_fraction: 1\.0 must be < 1"),
        ({"kind": "dynamo_sla", "predictor": "arima"}, r"scaling\.predictor: 'arima' must be one of"),
        ({"kind": "dynamo_sla", "ttft_s": 0.5}, r"ttft_s"),
    ],
)  # fmt: skip
def test_pool_scaler_config_errors_name_the_key(spec, match):
    with pytest.raises(ConfigError, match=match):
        make_scaler(spec)


# ----------------------------------------------------------------------------- pd_ratio


def test_pd_ratio_splits_the_models_total_and_holds_it_over_the_window():
    pre = PdRatioScaler(requests_per_s_per_replica=2.0, prefill_fraction=0.25, downscale_window_s=60)
    dec = PdRatioScaler(requests_per_s_per_replica=2.0, prefill_fraction=0.25, downscale_window_s=60)
    agg = PdRatioScaler(requests_per_s_per_replica=2.0, prefill_fraction=0.25, downscale_window_s=60)
    rates = [15.0, 15.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    got = []
    for k, rate in enumerate(rates):
        now = 15.0 * (k + 1)
        got.append(
            tuple(
                s.desired_replicas(make_load(role=role, now_s=now, arrival_rate_per_s=rate))
                for s, role in ((pre, "prefill"), (dec, "decode"), (agg, "aggregated"))
            )
        )
    # total 8 = ceil(15 / 2): 2 prefill, 6 decode; held while a decision of 8 is in the last 60 s
    # (the one at 30 s until 90 s), then 2 = ceil(3 / 2): 1 and 1
    assert got[:6] == [(2, 6, 8)] * 6
    assert got[6:] == [(1, 1, 2)] * 2


# ----------------------------------------------------------------------------- dynamo_sla


def _dynamo_load(role: str, now: float, **kw):
    fields = {**POOL_VIEW, "role": role, "now_s": now, "interval_s": 15.0, "replicas_ready": 2,
              "target_replicas": 2, "arrival_rate_per_s": 4.0, "in_flight_mean": 40.0, **kw}  # fmt: skip
    return make_load(**fields)


def test_dynamo_planner_holds_between_adjustments_then_applies_its_formulas():
    pre, dec = DynamoSlaScaler(), DynamoSlaScaler()  # defaults: 180 s interval, ITL 0.05 s
    for k in range(1, 12):  # 11 intervals of 15 s: no adjustment before 180 s
        assert pre.desired_replicas(_dynamo_load("prefill", 15.0 * k)) == 2
        assert dec.desired_replicas(_dynamo_load("decode", 15.0 * k)) == 2
    n_pre = pre.desired_replicas(_dynamo_load("prefill", 180.0))
    n_dec = dec.desired_replicas(_dynamo_load("decode", 180.0))
    isl, osl, num_req = 1000.0, 200.0, 4.0 * 180.0
    p_corr = 0.2 / PROFILE.prefill_s(isl)
    want_pre = math.ceil(num_req * isl / 180.0 * min(1.0, p_corr) / PROFILE.prefill_tokens_per_s_per_gpu(isl))
    context = isl + osl / 2
    d_corr = 0.03 / PROFILE.decode_itl_s(20.0, context)  # 40 in flight over 2 READY replicas
    per_gpu = PROFILE.best_decode_tokens_per_s_per_gpu(0.05 / d_corr, context)
    want_dec = math.ceil(num_req * osl / 180.0 / per_gpu)
    assert (n_pre, n_dec) == (max(want_pre, 1), max(want_dec, 1))
    # and it holds the answer until the next adjustment
    assert pre.desired_replicas(_dynamo_load("prefill", 195.0, arrival_rate_per_s=40.0)) == n_pre


def test_dynamo_planner_scales_decode_with_the_load_and_refuses_aggregated_models():
    answers = []
    for rate in (2.0, 8.0, 32.0):
        dec = DynamoSlaScaler(adjustment_interval_s=15.0, max_replicas=64)
        answers.append(dec.desired_replicas(_dynamo_load("decode", 15.0, arrival_rate_per_s=rate)))
    assert answers == sorted(answers) and answers[0] < answers[-1]
    with pytest.raises(ConfigError, match="aggregated"):
        DynamoSlaScaler().desired_replicas(make_load())


# ----------------------------------------------------------------------------- in the simulator


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "per_pool", "prefill": {"kind": "hpa", "metric": "queue_len_per_replica", "target": 2},
         "decode": {"kind": "hpa", "metric": "kv_usage", "target": 0.6}},
        {"kind": "pd_ratio", "requests_per_s_per_replica": 2.0, "prefill_fraction": 0.4},
        {"kind": "dynamo_sla", "adjustment_interval_s": 60},
    ],
    ids=["per_pool", "pd_ratio", "dynamo_sla"],
)  # fmt: skip
def test_pool_scalers_run_the_disaggregated_scenario_and_repeat_with_the_seed(spec):
    k = run_scenario("disaggregated", seed=3, overrides={"horizon_s": 600, "scaling": spec})
    assert k == run_scenario("disaggregated", seed=3, overrides={"horizon_s": 600, "scaling": spec})
    assert k["requests_completed"] > 0
    assert k["requests_arrived"] == k["requests_completed"] + k["requests_dropped"] + k["requests_in_system"]
    assert np.isfinite(k["cost_usd"]) and k["cost_usd"] > 0
