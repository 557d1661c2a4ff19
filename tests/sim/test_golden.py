"""The engine's numbers do not move: every shipped scenario x router x seed, and env trajectories.

The reference (``golden.json``) was recorded with ``python tests/sim/golden.py --write`` before
the simulator core was rebuilt; see that module for what it holds.
"""

from __future__ import annotations

import json

import pytest

from envs.sim.config import shipped_scenarios

from . import golden

REFERENCE = json.loads(golden.GOLDEN.read_text())


@pytest.mark.parametrize("name", shipped_scenarios())
def test_run_scenario_kpis_are_bit_identical(name):
    trace = {"azure-conv": golden.TRACE, "mooncake-conv": golden.MOONCAKE}.get(name)
    if trace is not None and not trace.is_file():
        pytest.fail(f"missing {trace}: the repo expects ../shared/traces/ beside it")
    for router in golden.ROUTERS:
        for seed in golden.SEEDS:
            key = f"{name}/{router}/{seed}"
            assert golden.scenario_kpis(name, router, seed) == REFERENCE["run_scenario"][key], key


@pytest.mark.parametrize("name", shipped_scenarios())
def test_shipped_scenarios_on_the_default_engine_are_bit_identical(name):
    for seed in golden.DEFAULT_ENGINE_SEEDS:
        key = f"{name}/{seed}"
        assert golden.default_engine_kpis(name, seed) == REFERENCE["default_engine"][key], key


@pytest.mark.parametrize("case", golden.ENV_CASES, ids=lambda c: golden.case_key(c[0], c[1]))
def test_env_trajectories_are_bit_identical(case):
    env_id, kwargs, steps = case
    assert golden.env_trajectory(env_id, kwargs, steps) == REFERENCE["envs"][golden.case_key(env_id, kwargs)]


def test_reference_covers_every_scenario_and_router():
    keys = set(REFERENCE["run_scenario"])
    want = {f"{n}/{r}/{s}" for n in shipped_scenarios() for r in golden.ROUTERS for s in golden.SEEDS}
    assert keys == want
    assert set(REFERENCE["default_engine"]) == {
        f"{n}/{s}" for n in shipped_scenarios() for s in golden.DEFAULT_ENGINE_SEEDS
    }
