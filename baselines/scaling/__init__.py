"""Classical replica autoscalers, re-implemented from the real systems' documentation and source.

Each scaler is a small stateful object with frozen, validated parameters. Once
per control interval and per model the simulator hands it a read-only
:class:`envs.sim.view.ModelLoad`; the scaler answers with the number of
replicas (ready + loading) that should exist. The algorithms follow the
Kubernetes HorizontalPodAutoscaler controller, the Knative Pod Autoscaler, Ray
Serve's default policy, AWS Application Auto Scaling (target tracking, step,
scheduled, predictive) and the hand-written formulas operators use; every
published default is cited where it is defined, and every place where the
simulator's view cannot express what the real system sees is said so in the
class docstring (and in ``docs/baselines-scaling.md``). ``make_scaler`` builds a
scaler from a scenario's YAML (``"hpa"`` or ``{"kind": "hpa", "target": 0.7}``);
every scaler class is registered by name in :data:`SCALERS` (the
:data:`envs.sim.controllers.SCALERS` registry).

One module per family: :mod:`~baselines.scaling.base` (Scaler, ScalerParams,
metrics, make_scaler), :mod:`~baselines.scaling.static`,
:mod:`~baselines.scaling.kubernetes` (hpa), :mod:`~baselines.scaling.knative`
(kpa), :mod:`~baselines.scaling.aws` (target_tracking, queue_target, step),
:mod:`~baselines.scaling.scheduled` (AWS-style scheduled scaling), :mod:`~baselines.scaling.ray_serve`,
:mod:`~baselines.scaling.formulas` (formula, formula_half),
:mod:`~baselines.scaling.predictive`, and for the two pools of a disaggregated model
:mod:`~baselines.scaling.pools` (per_pool, pd_ratio) and :mod:`~baselines.scaling.dynamo`
(dynamo_sla, NVIDIA Dynamo's SLA planner).
"""

from baselines.scaling.aws import (
    QueueTargetParams,
    QueueTargetScaler,
    StepAdjustment,
    StepParams,
    StepScaler,
    TargetTrackingParams,
    TargetTrackingScaler,
    aws_percent_change,
)
from baselines.scaling.base import (
    ALARM_METRICS,
    DEFAULT_TARGETS,
    PER_REPLICA_METRICS,
    SCALERS,
    Scaler,
    ScalerParams,
    make_scaler,
    metric_value,
    register,
)
from baselines.scaling.dynamo import DynamoSlaParams, DynamoSlaScaler
from baselines.scaling.formulas import FormulaHalfParams, FormulaHalfScaler, FormulaParams, FormulaScaler
from baselines.scaling.knative import KpaParams, KpaScaler
from baselines.scaling.kubernetes import (
    HPA_DEFAULT_SCALE_DOWN,
    HPA_DEFAULT_SCALE_UP,
    HPA_METRICS,
    HpaParams,
    HpaScaler,
    HpaScalingPolicy,
    HpaScalingRules,
    hpa_desired_replicas,
)
from baselines.scaling.pools import PdRatioParams, PdRatioScaler, PerPoolParams, PerPoolScaler
from baselines.scaling.predictive import HoltWinters, PredictiveParams, PredictiveScaler
from baselines.scaling.ray_serve import RayServeParams, RayServeScaler
from baselines.scaling.scheduled import ScheduledParams, ScheduledScaler
from baselines.scaling.static import StaticParams, StaticScaler

__all__ = [
    "ALARM_METRICS",
    "DEFAULT_TARGETS",
    "HPA_DEFAULT_SCALE_DOWN",
    "HPA_DEFAULT_SCALE_UP",
    "HPA_METRICS",
    "PER_REPLICA_METRICS",
    "SCALERS",
    "FormulaHalfParams",
    "FormulaHalfScaler",
    "FormulaParams",
    "FormulaScaler",
    "DynamoSlaParams",
    "DynamoSlaScaler",
    "HoltWinters",
    "HpaParams",
    "HpaScaler",
    "HpaScalingPolicy",
    "HpaScalingRules",
    "PdRatioParams",
    "PdRatioScaler",
    "PerPoolParams",
    "PerPoolScaler",
    "KpaParams",
    "KpaScaler",
    "PredictiveParams",
    "PredictiveScaler",
    "QueueTargetParams",
    "QueueTargetScaler",
    "RayServeParams",
    "RayServeScaler",
    "Scaler",
    "ScalerParams",
    "ScheduledParams",
    "ScheduledScaler",
    "StaticParams",
    "StaticScaler",
    "StepAdjustment",
    "StepParams",
    "StepScaler",
    "TargetTrackingParams",
    "TargetTrackingScaler",
    "aws_percent_change",
    "hpa_desired_replicas",
    "make_scaler",
    "metric_value",
    "register",
]
