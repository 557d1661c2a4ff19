"""``InferGym/Autoscale``: the agent is the replica autoscaler of an LLM inference cluster.

The environment and its versions (:mod:`envs.autoscale.env`), its observation and episode history
(:mod:`envs.autoscale.observation`), the adapter that runs classical scalers through its action
space (:mod:`envs.autoscale.policy`) and its ``rgb_array`` frame (:mod:`envs.autoscale.render`).
"""

from envs.autoscale.env import (
    ACTION_MODES,
    CAPACITY_CHOICES,
    MODEL_FEATURES,
    POOL_FEATURES,
    REWARD_KEYS,
    TIME_FEATURES,
    AutoscaleEnv,
    AutoscaleEnvV0,
    AutoscaleEnvV1,
    AutoscaleEnvV2,
)
from envs.autoscale.policy import ScalerPolicy

__all__ = [
    "ACTION_MODES",
    "CAPACITY_CHOICES",
    "MODEL_FEATURES",
    "POOL_FEATURES",
    "REWARD_KEYS",
    "TIME_FEATURES",
    "AutoscaleEnv",
    "AutoscaleEnvV0",
    "AutoscaleEnvV1",
    "AutoscaleEnvV2",
    "ScalerPolicy",
]
