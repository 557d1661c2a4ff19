"""Placement-v0's own arguments and constants: the validated :class:`PlacementParams`, the scaler the
``llm`` source falls back to, the synthetic traces' GPU types, and the observation's block sizes.
Both item sources read them; neither source's class is needed to validate its arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envs.sim.config import ControllerSpec
from envs.sim.errors import check_choice, check_number, fail
from envs.sim.jobtrace import SYNTHETIC_NODE_SHAPES

__all__ = ["ENV_PARAMS", "LLM_FALLBACK_SCALER", "SOURCES", "SYNTHETIC_GPU_TYPES", "PlacementParams"]

ENV_NAME = "PlacementEnv"

#: Values of the ``source`` argument, one environment class each.
SOURCES: tuple[str, ...] = ("llm", "jobs")

#: Scaler of the ``llm`` source when the scenario's own scaling is ``static`` (which never asks for a
#: replica): the Kubernetes HPA on in-flight requests per replica that the shipped HPA scenarios use.
LLM_FALLBACK_SCALER: dict[str, Any] = {"kind": "hpa", "metric": "in_flight_per_replica", "target": 48}

#: GPU type names of synthetic traces (``synthetic_job_trace`` draws nodes from these shapes); the
#: observation's type one-hot has one slot per name, whatever subset a drawn trace holds.
SYNTHETIC_GPU_TYPES: tuple[str, ...] = tuple(s[0] for s in SYNTHETIC_NODE_SHAPES if s[0] is not None)

N_NODE_BASE = 7  # per-node features besides the GPU-type one-hot
N_ITEM_BASE = 5  # item features besides the allowed-type multi-hot


@dataclass(frozen=True)
class PlacementParams:
    """The environment's own arguments (everything else passed to the constructor is a scenario key).

    ``None`` means "not given"; the synthetic-trace sizes then take the defaults
    ``SYNTHETIC_DEFAULTS``. Arguments of the other source are an error, never ignored.
    """

    source: str = "llm"
    scaler: Any = None
    pods_path: str | None = None
    nodes_path: str | None = None
    n_nodes: int | None = None
    n_jobs: int | None = None
    mean_interarrival_s: float | None = None
    mean_duration_s: float | None = None
    max_jobs: int | None = None
    shaping: float = 0.0

    SYNTHETIC_DEFAULTS = {
        "n_nodes": 32,
        "n_jobs": 1000,
        "mean_interarrival_s": 20.0,
        "mean_duration_s": 3600.0,
    }
    JOB_KEYS = (
        "pods_path",
        "nodes_path",
        "n_nodes",
        "n_jobs",
        "mean_interarrival_s",
        "mean_duration_s",
        "max_jobs",
    )

    def __post_init__(self) -> None:
        check_choice("source", self.source, SOURCES)
        if self.source == "llm":
            for key in self.JOB_KEYS:
                if getattr(self, key) is not None:
                    raise fail(key, getattr(self, key), "applies only to source='jobs'")
            if self.scaler is not None:
                ControllerSpec.from_config(self.scaler, "scaler")
            return
        if self.scaler is not None:
            raise fail("scaler", self.scaler, "applies only to source='llm'")
        if (self.pods_path is None) != (self.nodes_path is None):
            given, missing = (
                ("pods_path", "nodes_path") if self.nodes_path is None else ("nodes_path", "pods_path")
            )
            raise fail(missing, None, f"must be given together with {given}")
        synthetic = ("n_nodes", "n_jobs", "mean_interarrival_s", "mean_duration_s")
        if self.pods_path is not None:
            for key in synthetic:
                if getattr(self, key) is not None:
                    raise fail(
                        key, getattr(self, key), "applies only to a synthetic trace (without pods_path)"
                    )
        for key in ("n_nodes", "max_jobs"):
            if getattr(self, key) is not None:
                check_number(key, getattr(self, key), ge=1, integer=True)
        if self.n_jobs is not None:
            check_number("n_jobs", self.n_jobs, ge=0, integer=True)
        for key in ("mean_interarrival_s", "mean_duration_s"):
            if getattr(self, key) is not None:
                check_number(key, getattr(self, key), gt=0)
        check_number("shaping", self.shaping, ge=0)

    def synthetic(self, key: str) -> Any:
        """A synthetic-trace size: the given value or its default."""
        value = getattr(self, key)
        return self.SYNTHETIC_DEFAULTS[key] if value is None else value


ENV_PARAMS = tuple(PlacementParams.__dataclass_fields__)
