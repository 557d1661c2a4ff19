"""Classical scalers run as policies through ``InferGym/Autoscale``'s action space."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.autoscale.env import AutoscaleEnv
from envs.sim.config import ControllerSpec
from envs.sim.controllers import SCALERS
from envs.sim.engine import Simulator
from envs.sim.errors import ConfigError, fail


class ScalerPolicy:
    """A classical scaler from ``baselines.scaling`` evaluated as a policy through :class:`AutoscaleEnv`.

    An :class:`agents.Policy`: ``predict(obs, env)`` ignores ``obs`` (and
    ``deterministic``: scalers are deterministic) and reads the env's scaler views
    (``env.model_loads``: the same :class:`~envs.sim.view.ModelLoad` that
    ``Simulator.desired_replicas`` gives the scenario's scalers), asks one
    scaler per model for its target, clamps it to ``[min_replicas,
    max_replicas]`` and converts it with :meth:`AutoscaleEnv.scaler_action`.
    The change per step is clipped to ``env.max_step``, so this is a
    rate-limited version of the controller; make the env with ``max_step`` at
    least ``max_replicas`` (e.g. 16) and it decides exactly as
    :func:`envs.sim.run_scenario` does. The first decision of an episode (time
    0, no interval observed yet) holds without asking the scalers, since
    ``run_scenario`` first decides at the end of the first interval. The
    scalers are reset whenever the env starts a new episode.

    Args:
        scaler: a scaler name, ``{"kind": ..., **params}`` mapping, or ``None`` for the
            env scenario's ``scaling`` controller.
        gpu_type: for hybrid models, how to pick the type of added replicas:
            ``"first_fit"`` (the first allowed type, in the model's order, with a
            node that has room for one replica; else the first type) or an index
            into the model's allowed types.
    """

    def __init__(self, scaler: Any = None, gpu_type: str | int = "first_fit") -> None:
        if not (gpu_type == "first_fit" or (isinstance(gpu_type, int) and not isinstance(gpu_type, bool))):
            raise fail("gpu_type", gpu_type, "must be 'first_fit' or an index into a model's gpu_types")
        self.spec = scaler
        self.gpu_type = gpu_type
        self.scalers: list[Any] = []
        self._sim: Simulator | None = None

    def reset(self, seed: int | None = None) -> None:
        """Forget the scalers' history (also done when the env starts a new episode); ``seed`` is
        unused, the scalers draw no random numbers."""
        for s in self.scalers:
            s.reset()

    def _build(self, env: AutoscaleEnv) -> None:
        # the registry holds the built-in scalers (registered when envs imported baselines) and users' own
        make_scaler = SCALERS.build
        spec = self.spec
        if spec is None:
            sc: ControllerSpec = env.scenario.scaling
            spec = sc.as_config()
        self.scalers = [make_scaler(spec, "scaler") for _ in range(env.n_models)]

    def predict(self, obs: np.ndarray | None, env: Any, deterministic: bool = True) -> np.ndarray:
        """The action for the env's current state (``obs`` is not used)."""
        base: AutoscaleEnv = env.unwrapped
        if not isinstance(base, AutoscaleEnv):
            raise ConfigError(f"env: {type(base).__name__} must be an AutoscaleEnv")
        if base.sim is None:
            raise RuntimeError("ScalerPolicy.predict: reset the env first")
        if len(self.scalers) != base.n_models:
            self._build(base)
        if base.sim is not self._sim:
            self._sim = base.sim
            self.reset()
        if base.sim.now <= 0.0:
            # Nothing observed yet: hold, as run_scenario first decides at the end of the first interval.
            return base.scaler_action([ld.replicas_provisioned for ld in base.model_loads], self._types(base))
        desired = [
            min(max(int(s.desired_replicas(load)), base._lo[m]), base._hi[m])
            for m, (s, load) in enumerate(zip(self.scalers, base.model_loads, strict=True))
        ]
        return base.scaler_action(desired, self._types(base))

    def _types(self, base: AutoscaleEnv) -> list[int] | None:
        return [self._pick_type(base, m, t) for m, t in base.hybrid] if base.hybrid else None

    def _pick_type(self, base: AutoscaleEnv, m: int, types: list[int]) -> int:
        if self.gpu_type != "first_fit":
            if not 0 <= self.gpu_type < len(types):
                raise fail(
                    "gpu_type",
                    self.gpu_type,
                    f"must be in [0, {len(types)}) for model {base.model_names[m]!r}",
                )
            return int(self.gpu_type)
        sim = base.sim
        for j, g in enumerate(types):
            if sim.cluster.feasible(sim.replica_demand(m, g)).any():
                return j
        return 0
