"""Policies as the evaluator sees them, a seeded random policy, and episode-KPI aggregation.

Every decision-maker that InferGym evaluates (an SB3 model, a classical
controller adapter, a random policy) satisfies :class:`Policy`:
``reset(seed)`` at the start of every episode and
``predict(obs, env, deterministic=True) -> action`` with ``env`` the
unwrapped environment (controllers read the simulator through it; masked
policies read ``env.action_masks()``). Each environment class builds its
classical controller's adapter with ``controller_policy(spec, seed)``. This
module is torch-free; the stable-baselines3 glue is in :mod:`agents.sb3`.
:class:`EpisodeKpis` turns the per-step ``info["kpi"]`` of an episode into
episode KPIs, so training logs and evaluation tables aggregate the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

__all__ = ["EpisodeKpis", "Policy", "RandomPolicy", "step_kpis_cumulative"]


@runtime_checkable
class Policy(Protocol):
    """What the evaluator runs: learned models, classical controller adapters and the random policy alike.

    The environments never import this module; their adapters (``envs.autoscale.ScalerPolicy``,
    ``baselines.routing.RouterPolicy``, ``envs.placement.PlacerPolicy``) satisfy it by shape, and
    each env class builds its own with the classmethod ``controller_policy(spec, seed=0)``.
    """

    def reset(self, seed: int | None = None) -> None:
        """A new episode starts, right after ``env.reset(seed=seed)``; ``seed`` is that episode's seed
        (None when the caller has none). Forget everything kept from the previous episode. A
        policy that draws random numbers says in its docstring what its stream depends on."""
        ...

    def predict(self, obs: Any, env: gym.Env, deterministic: bool = True) -> Any:
        """The action for observation ``obs`` of ``env`` (the unwrapped environment, which
        controllers read and masked policies take ``action_masks()`` from). ``deterministic``: a
        stochastic model takes its most likely action; policies without such a choice ignore it."""
        ...


class RandomPolicy:
    """Uniformly random valid actions: among the unmasked ones when the env has ``action_masks()``.

    Its generator is re-derived at every ``reset(seed=episode_seed)`` from
    ``(seed, episode_seed)``, so an episode's actions depend only on the two
    seeds and never on what ran before (same seeds -> identical numbers).
    ``deterministic`` is ignored: the policy is random by definition.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng([self.seed] if seed is None else [self.seed, int(seed)])

    def predict(self, obs: Any, env: gym.Env, deterministic: bool = True) -> Any:
        base = env.unwrapped
        space = base.action_space
        if hasattr(base, "action_masks"):
            valid = np.flatnonzero(np.asarray(base.action_masks(), dtype=bool))
            # An all-masked state cannot be acted on validly; the env decides what action 0 means.
            return int(self.rng.choice(valid)) if len(valid) else 0
        if isinstance(space, gym.spaces.MultiDiscrete):
            return self.rng.integers(0, space.nvec).astype(space.dtype)
        if isinstance(space, gym.spaces.Discrete):
            return int(space.start + self.rng.integers(space.n))
        if isinstance(space, gym.spaces.Box):
            return self.rng.uniform(space.low, space.high).astype(space.dtype)
        raise TypeError(f"RandomPolicy: unsupported action space {space}")


# How each per-step KPI is combined into an episode KPI (keys of envs.sim.metrics).
_SUMMED = frozenset(
    {"requests_arrived", "requests_completed", "requests_dropped", "requests_unfinished", "slo_violations", "gpu_seconds", "cost_usd",
     "placement_failures", "e2e_sum_s"}
)  # fmt: skip
_PER_COMPLETED = frozenset({"wait_mean_s", "e2e_mean_s", "ttft_p50_s", "tpot_mean_s"})
_PER_FINISHED = frozenset({"slo_attainment"})
_TAILS = frozenset({"ttft_p99_s", "e2e_p99_s"})
_LAST = frozenset({"time_s"})


def step_kpis_cumulative(env_id: str) -> bool:
    """Whether ``env_id``'s ``info["kpi"]`` holds the episode's levels so far (its class's
    ``STEP_KPIS_CUMULATIVE``, e.g. Placement's) rather than the step's own numbers."""
    import envs

    return bool(getattr(envs.env_class(env_id), "STEP_KPIS_CUMULATIVE", False))


class EpisodeKpis:
    """Episode KPIs from a sequence of per-step (per-interval) KPI dicts.

    Rules, for interval KPIs as in :mod:`envs.sim.metrics`:

    * counts, seconds and dollars (``requests_*``, ``slo_violations``,
      ``gpu_seconds``, ``cost_usd``, ``placement_failures``) are summed;
    * ``slo_attainment`` is weighted by the requests that finished in the step
      (completed + dropped + unfinished at the horizon); 1.0 if none finished
      (the simulator's convention);
    * means over completed requests (``wait_mean_s``, ``e2e_mean_s``,
      ``ttft_p50_s``, ``tpot_mean_s``) are weighted by ``requests_completed``
      (for the median this is an approximation);
    * tails (``ttft_p99_s``, ``e2e_p99_s``) report the worst step (``max``, an
      upper bound of the episode's p99 when steps are long enough to hold 100+
      requests) and ``<key>_step_mean``, the completed-weighted mean;
    * clocks (``time_s``) keep their last value;
    * anything else (``utilization``, replica counts) is the plain mean over steps.

    With ``cumulative=True`` the steps report levels "so far" (as Placement-v0's
    ``info["kpi"]`` does) and every key keeps its last value.

    The simulator's exact episode KPIs (``sim.episode_kpis()``) are preferred
    where available; this is the fallback and the training-log aggregate.
    """

    def __init__(self, cumulative: bool = False) -> None:
        self.cumulative = cumulative
        self.n_steps = 0
        self._last: dict[str, float] = {}
        self._sum: dict[str, float] = {}
        self._weighted: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        self._max: dict[str, float] = {}

    def add(self, kpi: Mapping[str, float]) -> None:
        self.n_steps += 1
        completed = float(kpi.get("requests_completed", 1.0))
        finished = (
            completed + float(kpi.get("requests_dropped", 0.0)) + float(kpi.get("requests_unfinished", 0.0))
        )
        for key, raw in kpi.items():
            v = float(raw)
            if self.cumulative or key in _LAST:
                self._last[key] = v
                continue
            if key in _SUMMED:
                self._sum[key] = self._sum.get(key, 0.0) + v
                continue
            if key in _PER_FINISHED:
                w = finished
            elif key in _PER_COMPLETED or key in _TAILS:
                w = completed
            else:
                w = 1.0
            self._weighted[key] = self._weighted.get(key, 0.0) + w * v
            self._weight[key] = self._weight.get(key, 0.0) + w
            if key in _TAILS:
                self._max[key] = max(self._max.get(key, v), v)

    def result(self) -> dict[str, float]:
        out = {**self._sum, **self._last}
        for key, total in self._weighted.items():
            w = self._weight[key]
            mean = total / w if w > 0 else (1.0 if key in _PER_FINISHED else 0.0)
            if key in _TAILS:
                out[key] = self._max[key]
                out[f"{key}_step_mean"] = mean
            else:
                out[key] = mean
        return out
