"""docs/custom-controllers.md runs as written, and each custom controller works through run_scenario and the envs."""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401
from envs.sim import Simulator, run_scenario
from envs.sim.controllers import PLACERS, SCALERS
from envs.sim.errors import ConfigError
from envs.sim.routing import ROUTERS

DOC = Path(__file__).resolve().parents[2] / "docs" / "custom-controllers.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
REGISTERED = {"scaling": "queue_per_replica", "placement": "last_fit", "routing": "kv_headroom"}


@pytest.fixture(scope="module")
def doc_namespace():
    """Run every code block of the doc in order (as a reader would paste them)."""
    ns: dict = {}
    try:
        for block in BLOCKS:
            exec(compile(block, str(DOC), "exec"), ns)  # noqa: S102
        yield ns
    finally:
        SCALERS.unregister("queue_per_replica")
        PLACERS.unregister("last_fit")
        ROUTERS.unregister("kv_headroom")


def test_every_example_is_short():
    assert len(BLOCKS) == 7  # scaler, placer, compiled router, Python router, envs; the policy protocol
    for block in BLOCKS[:4]:
        body = [
            ln for ln in block.strip().splitlines() if ln.strip() and not ln.startswith(("import", "from"))
        ]
        assert len(body) < 25, block


def test_doc_examples_run_and_differ_from_the_defaults(doc_namespace):
    ns = doc_namespace
    assert ns["kpis"]["requests_arrived"] > 0  # the last block's run (the Python router)
    for key, name in REGISTERED.items():
        assert name in {"scaling": SCALERS, "placement": PLACERS, "routing": ROUTERS}[key]


def test_custom_scaler_decides_the_replica_count(doc_namespace):
    seen = []
    run_scenario("bursty", 0, overrides={"scaling": "queue_per_replica", "horizon_s": 300},
                 on_interval=lambda sim, k: seen.append(int(sim.target[0])))  # fmt: skip
    assert min(seen) >= 2 and len(set(seen)) > 1  # it acted, within its own floor


def test_custom_placer_puts_replicas_on_the_last_node(doc_namespace):
    sim = Simulator("default", 0, overrides={"horizon_s": 30}, placer="last_fit")
    nodes = {v.node for v in sim.replica_views()}
    assert nodes == {sim.cluster.n_nodes - 1}


def test_custom_controllers_run_inside_the_envs(doc_namespace):
    env = gym.make("InferGym/Autoscale-v1", scenario="default", router="kv_headroom", placer="last_fit")
    env.reset(seed=0)
    for _ in range(3):  # delta mode's middle action keeps the count: 4 replicas, all on the last node
        env.step(env.action_space.nvec // 2)
    assert {v.node for v in env.unwrapped.sim.replica_views()} == {env.unwrapped.sim.cluster.n_nodes - 1}
    routing = gym.make("InferGym/Routing-v0", scenario="bursty", scaler="queue_per_replica", horizon_s=60)
    obs, _ = routing.reset(seed=0)
    for _ in range(50):
        obs, _, _, truncated, _ = routing.step(int(np.flatnonzero(routing.unwrapped.action_masks())[0]))
        if truncated:
            break
    assert routing.unwrapped.sim.target[0] >= 2


def test_python_router_object_in_the_scenario_dict(doc_namespace):
    router = doc_namespace["FewestRunning"]()
    kpis = run_scenario("default", 1, overrides={"routing": router, "horizon_s": 60})
    assert kpis["requests_completed"] > 0


def test_bad_parameters_of_a_registered_custom_controller_are_named(doc_namespace):
    with pytest.raises(ConfigError, match=r"scaling\.target: unknown key"):
        run_scenario("default", 0, overrides={"scaling": {"kind": "queue_per_replica", "target": 3}})
