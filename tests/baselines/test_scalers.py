"""Every classical autoscaler: the registry, configuration errors and the common contract (deterministic, bounded, resettable)."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.scaling import SCALERS, HpaScaler, KpaScaler, Scaler, make_scaler
from envs.sim.errors import ConfigError
from tests.baselines.scaler_loads import POOL_VIEW, make_load

# ------------------------------------------------------------------------------------------------
# registry and configuration errors
# ------------------------------------------------------------------------------------------------


def test_registry_holds_every_documented_scaler():
    expected = {
        "static",
        "hpa",
        "kpa",
        "formula",
        "formula_half",
        "target_tracking",
        "step",
        "scheduled",
        "predictive",
        "ray_serve",
        "queue_target",
        "per_pool",
        "pd_ratio",
        "dynamo_sla",
    }
    assert set(SCALERS) == expected
    for name in SCALERS:
        cls = SCALERS.get(name)
        assert cls.name == name and issubclass(cls, Scaler)


def test_make_scaler_accepts_name_mapping_and_instance():
    hpa = make_scaler({"kind": "hpa", "target": 0.7, "min_replicas": 2})
    assert isinstance(hpa, HpaScaler)
    assert hpa.params.target == 0.7 and hpa.params.min_replicas == 2
    assert make_scaler("kpa").params.target_value == pytest.approx(70.0)
    assert make_scaler(hpa) is hpa


def test_make_scaler_unknown_kind_names_path():
    with pytest.raises(ConfigError, match=r"^scaling\.kind: 'hpaa' must be one of"):
        make_scaler({"kind": "hpaa"})
    with pytest.raises(ConfigError, match=r"^models\.llama\.scaling: 'nope' must be one of"):
        make_scaler("nope", path="models.llama.scaling")


def test_make_scaler_unknown_param_names_path():
    with pytest.raises(ConfigError, match=r"^scaling\.targt: unknown key"):
        make_scaler({"kind": "hpa", "targt": 0.5})
    # "path" is not a user parameter either
    with pytest.raises(ConfigError, match=r"^scaling\.path: unknown key"):
        make_scaler({"kind": "hpa", "path": "x"})


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "hpa", "target": -1}, r"^scaling\.target: -1 must be > 0"),
        ({"kind": "kpa", "target_utilization": 1.5}, r"^scaling\.target_utilization: 1\.5 must be <= 1"),
        (
            {"kind": "ray_serve", "min_replicas": 3, "max_replicas": 2},
            r"^scaling\.max_replicas: 2 must be >= min_replicas",
        ),
        ({"kind": "hpa", "metric": "queue_len_per_replica"}, r"^scaling\.target: required for metric"),
        (
            {"kind": "hpa", "metric": "ttft_p99_s", "target": 1.0},
            r"^scaling\.metric: 'ttft_p99_s' must be one of",
        ),
        (
            {
                "kind": "hpa",
                "behavior": {"scale_up": {"policies": [{"type": "Pod", "value": 1, "period_s": 15}]}},
            },
            r"^scaling\.behavior\.scale_up\.policies\[0\]\.type: 'Pod' must be one of",
        ),
        (
            {"kind": "step", "steps": [{"lower": 0.5, "adjust": 1}, {"lower": 0.8, "adjust": 2}]},
            r"^scaling\.steps: step intervals overlap",
        ),
        ({"kind": "scheduled"}, r"^scaling\.schedule: required"),
        (
            {"kind": "kpa", "enable_scale_to_zero": "yes"},
            r"^scaling\.enable_scale_to_zero: 'yes' must be true or false",
        ),
        ({"kind": "formula", "alpha": 0}, r"^scaling\.alpha: 0 must be > 0"),
    ],
)
def test_make_scaler_invalid_values_name_path_and_value(spec, message):
    with pytest.raises(ConfigError, match=message):
        make_scaler(spec)


def test_direct_construction_validates_like_make_scaler():
    with pytest.raises(ConfigError, match=r"^scaling\.sync_period_s: 0 must be > 0"):
        HpaScaler(sync_period_s=0)
    with pytest.raises(ConfigError, match=r"^scaling\.bogus: unknown key"):
        KpaScaler(bogus=1)


def test_static_keeps_or_fixes_replicas():
    assert make_scaler("static").desired_replicas(make_load(target_replicas=3)) == 3
    fixed = make_scaler({"kind": "static", "replicas": 5})
    assert fixed.desired_replicas(make_load(target_replicas=3, utilization=1.0)) == 5


# ------------------------------------------------------------------------------------------------
# common contract
# ------------------------------------------------------------------------------------------------


def _spec(name: str, **params) -> dict:
    if name == "scheduled":
        params.setdefault("schedule", [{"at_s": 0, "replicas": 2}, {"at_s": 100, "replicas": 6}])
    if name == "per_pool":  # the bounds are its pools' scalers'
        inner = {"kind": "hpa", "metric": "in_flight_per_replica", **params}
        return {"kind": name, "prefill": inner, "decode": inner, "aggregated": inner}
    if name == "dynamo_sla":
        if "min_replicas" in params:
            params["min_endpoint"] = params.pop("min_replicas")
        params.setdefault("adjustment_interval_s", 15.0)
    return {"kind": name, **params}


@pytest.mark.parametrize("name", sorted(SCALERS))
def test_every_scaler_is_deterministic_bounded_and_resettable(name):
    rng = np.random.default_rng(7)
    loads = []
    target = 2
    for k in range(1, 41):
        ready = int(rng.integers(0, 6))
        c = float(rng.uniform(0, 30))
        loads.append(
            make_load(
                now_s=5.0 * k,
                interval_s=5.0,
                replicas_ready=ready,
                replicas_loading=int(rng.integers(0, 2)),
                target_replicas=target,
                arrival_rate_per_s=float(rng.uniform(0, 50)),
                in_flight=int(c),
                in_flight_mean=c,
                queue_len=int(rng.integers(0, 10)),
                utilization=float(rng.uniform(0, 1)),
                tick_in_flight=rng.uniform(0, 30, 5),
                **(POOL_VIEW if name == "dynamo_sla" else {}),
            )
        )
        target = max(1, ready)

    def run(scaler):
        return [scaler.desired_replicas(load) for load in loads]

    scaler = make_scaler(_spec(name))
    first = run(scaler)
    scaler.reset()
    assert run(scaler) == first
    assert run(make_scaler(_spec(name))) == first
    assert all(isinstance(n, int) and n >= 0 for n in first)
    if name != "static":  # static has no bounds: it is the fixed count itself
        assert max(run(make_scaler(_spec(name, max_replicas=3)))) <= 3
        assert min(run(make_scaler(_spec(name, min_replicas=2)))) >= 2
