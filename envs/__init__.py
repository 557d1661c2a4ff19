"""InferGym: Gymnasium environments over a fast GPU inference-cluster simulator.

Importing ``envs`` registers the environment ids (idempotently):

=============================  =========================================================
id                             one step is
=============================  =========================================================
``InferGym/Autoscale-v3``      one control interval; action = replica change per model (or pool)
``InferGym/Autoscale-v2``      v3 without its per-pool features: TPOT, KV transfers (superseded)
``InferGym/Autoscale-v1``      v2 on the ``reserve`` engine by default (superseded)
``InferGym/Autoscale-v0``      v1 with v0's reward (unfinished requests free; superseded)
``InferGym/Routing-v2``        one arriving request; action = which replica serves it
``InferGym/Routing-v1``        the same on the ``reserve`` engine by default (superseded)
``InferGym/Routing-v0``        v1 without the paged engine's per-slot features (superseded)
``InferGym/Placement-v1``      one replica or job to place; action = which node
``InferGym/Placement-v0``      the same, its llm source on the ``reserve`` engine by default
=============================  =========================================================

The latest versions run the simulator's default engine (``models[].kv_policy: paged``); the older
ones fill in ``kv_policy: reserve`` for every model that does not set it, the engine they were made
with, so their numbers do not move.

``gymnasium.make("InferGym/Autoscale-v3", scenario="bursty")``

Every environment class builds the adapter that runs its classical controller
(a scaler, router or placer) as a policy: ``env_class(env_id).controller_policy(spec, seed)``.
"""

from __future__ import annotations

import gymnasium

ENV_IDS = {
    "InferGym/Autoscale-v3": "envs.autoscale:AutoscaleEnv",
    "InferGym/Autoscale-v2": "envs.autoscale:AutoscaleEnvV2",
    "InferGym/Autoscale-v1": "envs.autoscale:AutoscaleEnvV1",
    "InferGym/Autoscale-v0": "envs.autoscale:AutoscaleEnvV0",
    "InferGym/Routing-v2": "envs.routing:RoutingEnvV2",
    "InferGym/Routing-v1": "envs.routing:RoutingEnvV1",
    "InferGym/Routing-v0": "envs.routing:RoutingEnv",
    "InferGym/Placement-v1": "envs.placement:PlacementEnv",
    "InferGym/Placement-v0": "envs.placement:PlacementEnvV0",
}

#: Each id's native vector environment (``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``).
VECTOR_ENTRY_POINTS = {
    "InferGym/Autoscale-v3": "envs.vector.autoscale:AutoscaleVecEnv",
    "InferGym/Autoscale-v2": "envs.vector.autoscale:AutoscaleVecEnvV2",
    "InferGym/Autoscale-v1": "envs.vector.autoscale:AutoscaleVecEnvV1",
    "InferGym/Autoscale-v0": "envs.vector.autoscale:AutoscaleVecEnvV0",
    "InferGym/Routing-v2": "envs.vector.routing:RoutingVecEnvV2",
    "InferGym/Routing-v1": "envs.vector.routing:RoutingVecEnvV1",
    "InferGym/Routing-v0": "envs.vector.routing:RoutingVecEnv",
    "InferGym/Placement-v1": "envs.placement.vector:PlacementVecEnv",
    "InferGym/Placement-v0": "envs.placement.vector:PlacementVecEnvV0",
}


def env_class(env_id: str) -> type[gymnasium.Env]:
    """The class registered for ``env_id``: its ``gymnasium.spec(env_id).entry_point``, imported."""
    from gymnasium.envs.registration import load_env_creator

    entry = gymnasium.spec(env_id).entry_point
    return load_env_creator(entry) if isinstance(entry, str) else entry


def register_envs() -> None:
    """Register every InferGym id with gymnasium (safe to call more than once)."""
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point=entry_point,
                vector_entry_point=VECTOR_ENTRY_POINTS[env_id],
                disable_env_checker=False,
            )


register_envs()

# The built-in controllers register themselves in the core's registries (envs.sim never imports them).
import baselines.placement  # noqa: E402, F401
import baselines.routing  # noqa: E402, F401
import baselines.scaling  # noqa: E402, F401
