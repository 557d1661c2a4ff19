"""Compile the simulator once, before a grid's workers start.

numba caches compiled code on disk, keyed on the sources (``envs/sim/jitcache.py``). Workers that
start with an empty cache each compile the same functions at once: from a fresh clone, `make run`'s
three workers spent about 2.4 minutes on the event loop (the evaluation's single envs), then again
about 2.4 on the native vector env's functions (training), sharing the 2 cores.

:func:`warm_up` steps one single env in this process and, at the same time, one native vector env in
a helper process: each compilation runs once, the two in parallel, and the workers then load the
cache. With the cache filled it costs the helper's start and two env steps (a few seconds).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping
from typing import Any


def step_once(env_id: str, scenario: str, env_kwargs: Mapping[str, Any], vector: bool) -> None:
    """Make ``env_id`` (a native vector env of 2 if ``vector``), reset it and take one random step."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)

    kw = dict(env_kwargs)
    if vector:
        env = gym.make_vec(
            env_id, num_envs=2, vectorization_mode="vector_entry_point", scenario=scenario, **kw
        )
    else:
        env = gym.make(env_id, scenario=scenario, **kw)
    env.action_space.seed(0)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env.close()


def warm_up(env_id: str, scenario: str, env_kwargs: Mapping[str, Any], *, vector: bool) -> None:
    """Fill numba's cache for ``env_id``: its single env here, its native vector env (if ``vector``:
    the grid will train) in a helper process at the same time. Raises what making the env raises."""
    from experiments.grid import mp_context

    if not vector:
        step_once(env_id, scenario, env_kwargs, False)
        return
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp_context()) as pool:
        helper = pool.submit(step_once, env_id, scenario, dict(env_kwargs), True)
        step_once(env_id, scenario, env_kwargs, False)
        helper.result()
