"""The controller adapter of Placement-v0: :class:`PlacerPolicy` runs any classical placer of
:mod:`baselines.placement` through the environment's action space, so learned and classical placement
are measured by the same environment (both sources)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.placement.base import PlacementEnv
from envs.sim.controllers import PLACERS


class PlacerPolicy:
    """A classical placer of :mod:`baselines.placement` acting through ``PlacementEnv``'s action space.

    ``PlacerPolicy("best_fit")`` (any ``make_placer`` spec: a name, a mapping with ``kind``, a
    ``Placer``) answers with ``placer.select(env.cluster, env.pending_demand, rng)``, the node the
    placer would choose; when no node fits it answers 0 (the item is rejected whatever the action).
    Within the node the environment takes the cluster's default GPUs, so FGD's own GPU choice for a
    share is not reproduced (its node choice is). The placer is reset at every new episode of the
    environment.

    An :class:`agents.Policy`: ``predict(obs, env)`` ignores ``obs`` and ``deterministic``.
    ``act(env)`` is the same without the observation; with ``env`` given to the constructor, ``act()``
    acts on that environment. ``rng`` is the policy's own generator, seeded once by ``seed``, never
    the environment's, so running a policy does not change the environment's randomness. The
    stream runs on across episodes: ``reset(seed)`` does not reseed it, so the stochastic placers
    (``random``, ``tie_break: random``) give the numbers they always gave in one evaluation.
    """

    def __init__(self, spec: Any, env: gym.Env | None = None, seed: int = 0) -> None:
        self.placer = PLACERS.build(spec, "policy")
        self.rng = np.random.default_rng(seed)
        self.env = env
        self._episode: tuple[int, int] | None = None

    def reset(self, seed: int | None = None) -> None:
        """Forget the placer's memory (also done when the env starts a new episode); ``seed``, the
        episode's, is unused (see the class docstring)."""
        self.placer.reset()

    def act(self, env: gym.Env | None = None) -> int:
        """The node the placer chooses for the waiting item of ``env`` (or the bound env)."""
        env = env if env is not None else self.env
        if env is None:
            raise ValueError("PlacerPolicy: no environment; pass env to act() or the constructor")
        base = env.unwrapped
        if not isinstance(base, PlacementEnv):
            raise ValueError(f"PlacerPolicy: env must be a PlacementEnv, got {type(base).__name__}")
        episode = (id(base), base.episode_index)
        if episode != self._episode:
            self.placer.reset()
            self._episode = episode
        demand = base.pending_demand
        if demand is None:
            return 0
        node = self.placer.select(base.cluster, demand, self.rng)
        return int(node) if node >= 0 else 0

    def predict(self, obs: Any, env: gym.Env, deterministic: bool = True) -> int:
        """The node for the waiting item of ``env`` (``obs`` is not used)."""
        return self.act(env)

    def __repr__(self) -> str:
        return f"PlacerPolicy({self.placer!r})"
