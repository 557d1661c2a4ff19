"""``InferGym/Placement-v1`` (and ``-v0``): choose the node for each replica or job that must be placed on a GPU cluster.

One step is one item to place; the action is a node index, masked to the nodes where the item fits
(:meth:`envs.sim.cluster.ClusterState.feasible`). :class:`PlacementEnv` (``base.py``) holds what every
source shares: spaces, masks, rewards, KPIs and rendering. Each source of items is a subclass, chosen
by the ``source`` argument: :class:`LlmPlacementEnv` (``llm.py``, ``source="llm"``) places the
replicas that an LLM scenario's autoscaler asks for while the simulator serves the scenario's
requests; :class:`JobPlacementEnv` (``jobs.py``, ``source="jobs"``) places the jobs of a trace in the
Alibaba GPU-sharing cluster trace format, real or synthetic, which arrive at their creation time and
leave at their deletion time. :class:`PlacerPolicy` (``policy.py``) runs any classical placer of
:mod:`baselines.placement` through this action space.
"""

from __future__ import annotations

from envs.placement.base import PlacementEnv, PlacementEnvV0
from envs.placement.jobs import JobPlacementEnv, JobPlacementEnvV0
from envs.placement.llm import LlmPlacementEnv, LlmPlacementEnvV0
from envs.placement.params import ENV_PARAMS, LLM_FALLBACK_SCALER, SYNTHETIC_GPU_TYPES, PlacementParams
from envs.placement.policy import PlacerPolicy

__all__ = [
    "ENV_PARAMS",
    "LLM_FALLBACK_SCALER",
    "SYNTHETIC_GPU_TYPES",
    "JobPlacementEnv",
    "JobPlacementEnvV0",
    "LlmPlacementEnv",
    "LlmPlacementEnvV0",
    "PlacementEnv",
    "PlacementEnvV0",
    "PlacementParams",
    "PlacerPolicy",
]
