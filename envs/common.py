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
from envs.sim.errors import ConfigError, show

#: ``models[]`` defaults an environment version made before ``kv_policy: paged`` became the default
#: keeps (its class's ``MODEL_DEFAULTS``): a model that does not set ``kv_policy`` runs ``reserve``.
RESERVE_ENGINE: Mapping[str, Any] = {"kv_policy": "reserve"}


def split_kwargs(
    scenario: Any,
    kwargs: Mapping[str, Any],
    env_params: Iterable[str],
    env_name: str,
    model_defaults: Mapping[str, Any] | None = None,
) -> tuple[Scenario, dict[str, Any]]:
    """Return the validated scenario (with scenario overrides applied, then ``model_defaults`` filled in
    for every model that does not set them) and the env's own kwargs."""
    own = set(env_params)
    mine = {k: v for k, v in kwargs.items() if k in own}
    overrides = {k: v for k, v in kwargs.items() if k not in own}
    for key in overrides:
        if key not in Scenario.KEYS:
            raise ConfigError(
                f"{env_name}: unknown argument {key!r} (environment arguments: {sorted(own)}; "
                f"scenario keys: {sorted(Scenario.KEYS)})"
            )
    return load_scenario(scenario, overrides or None).with_model_defaults(model_defaults or {}), mine


def weighted_reward(terms: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Reward = - sum(weight x term) over this environment's terms; every term is a cost.

    A scenario's ``reward`` block may also weight terms of the other
    environments (one scenario serves all three); those do not apply here.
    Their names are still checked against :data:`envs.sim.config.REWARD_TERMS`
    when the scenario loads, so a typo is an error.
    """
    return -float(sum(weights.get(k, 0.0) * v for k, v in terms.items()))


def check_action(space: Any, action: Any, env_name: str) -> np.ndarray:
    """Return ``action`` as an int64 array, or raise ValueError naming it if it is not in the action space.

    An action is accepted exactly when Gymnasium's ``space.contains`` accepts it and its values are
    whole numbers: ``Discrete`` takes Python and numpy integers (not ``1.0``), ``MultiDiscrete`` takes
    integer arrays and sequences (a float array with whole values passes ``contains`` and is taken).
    """
    try:
        arr = np.asarray(action)
        ok = arr.dtype != object and bool(space.contains(action)) and bool(np.all(np.mod(arr, 1) == 0))
    except (TypeError, ValueError):  # ragged nested lists, strings, objects numpy cannot compare
        ok = False
    if not ok:
        raise ValueError(f"{env_name}: action {show(action)} is not in the action space {space}")
    return arr.astype(np.int64)
