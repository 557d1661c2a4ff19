"""Pieces every InferGym environment shares: argument splitting and rewards.

An environment is created as ``gym.make(id, scenario=..., **kwargs)``. Keyword
arguments that the environment itself declares are its own parameters; every
other keyword must be a top-level scenario key (``horizon_s``, ``routing``,
``workload``, ...) and is deep-merged into the scenario. Anything else is an
error naming the argument, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from envs.sim.config import Scenario, load_scenario
from envs.sim.errors import ConfigError


def split_kwargs(
    scenario: Any, kwargs: Mapping[str, Any], env_params: Iterable[str], env_name: str
) -> tuple[Scenario, dict[str, Any]]:
    """Return the validated scenario (with scenario overrides applied) and the env's own kwargs."""
    own = set(env_params)
    mine = {k: v for k, v in kwargs.items() if k in own}
    overrides = {k: v for k, v in kwargs.items() if k not in own}
    for key in overrides:
        if key not in Scenario.KEYS:
            raise ConfigError(
                f"{env_name}: unknown argument {key!r} (environment arguments: {sorted(own)}; "
                f"scenario keys: {sorted(Scenario.KEYS)})"
            )
    return load_scenario(scenario, overrides or None), mine


def weighted_reward(terms: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Reward = - sum(weight x term) over this environment's terms; every term is a cost.

    A scenario's ``reward`` block may also weight terms of the other
    environments (one scenario serves all three); those do not apply here.
    Their names are still checked against :data:`envs.sim.config.REWARD_TERMS`
    when the scenario loads, so a typo is an error.
    """
    return -float(sum(weights.get(k, 0.0) * v for k, v in terms.items()))


def check_action(space: Any, action: Any, env_name: str) -> np.ndarray:
    """Return ``action`` as an int64 array, or raise if it is not in the action space."""
    arr = np.asarray(action)
    ok = arr.shape == space.shape and (
        np.issubdtype(arr.dtype, np.integer)
        or (np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0))
    )
    if ok:
        arr = arr.astype(np.int64)
        ok = space.contains(arr.astype(space.dtype))
    if not ok:
        raise ValueError(f"{env_name}: action {action!r} is not in the action space {space}")
    return arr
