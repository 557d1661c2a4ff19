"""What a task asks of a GPU cluster and what it was given: :class:`Demand` and :class:`Allocation`.

The units are those of the Alibaba GPU-sharing trace (Weng et al., "Beware of Fragmentation:
Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC 2023): each GPU
has 1000 milli-GPU of capacity, a task asks for either whole GPUs or a share (< 1000 milli) of
exactly one GPU, plus CPU (milli-cores) and memory (MiB). :mod:`envs.sim.cluster` re-exports both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from envs.sim.errors import check_number, fail

GPU_MILLI = 1000
"""Capacity of one GPU in milli-GPU, the unit of the Alibaba GPU-sharing trace (``gpu_milli``)."""


def _int(path: str, value: Any, *, ge: int | None = None, le: int | None = None) -> int:
    """An integer check that also accepts numpy integers (arrays hand those out)."""
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, value, "must be an integer")
    return int(check_number(path, value, ge=ge, le=le, integer=True))


@dataclass(frozen=True)
class Demand:
    """The resources one task (pod, replica) asks for.

    ``num_gpu`` whole GPUs (``gpu_milli == 1000``), or ``num_gpu == 1`` with ``gpu_milli < 1000`` for
    a share of one GPU (as in the Alibaba trace, where ``gpu_milli`` describes GPU-sharing pods only),
    or ``num_gpu == 0`` for a CPU-only task (``gpu_milli`` is then ignored; the trace writes 0).
    ``gpu_types`` are the GPU type indices the task may run on (empty = any); ``gpu_type`` is the
    single-type shorthand. Both are normalised: ``gpu_types`` sorted without duplicates, and
    ``gpu_type`` is its only element or -1, so equal requirements compare equal. Type constraints
    apply to GPU tasks only. ``model`` names the weights the task loads (-1 = none); it does not
    change feasibility, only cache-aware placement.
    """

    num_gpu: int = 0
    gpu_milli: int = GPU_MILLI
    gpu_type: int = -1
    cpu_milli: int = 0
    memory_mib: int = 0
    model: int = -1
    gpu_types: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        num_gpu = _int("demand.num_gpu", self.num_gpu, ge=0)
        if num_gpu == 0:
            gpu_milli = _int("demand.gpu_milli", self.gpu_milli, ge=0, le=GPU_MILLI)
        else:
            gpu_milli = _int("demand.gpu_milli", self.gpu_milli, ge=1, le=GPU_MILLI)
            if gpu_milli < GPU_MILLI and num_gpu != 1:
                raise fail(
                    "demand.gpu_milli",
                    gpu_milli,
                    f"must be {GPU_MILLI} when num_gpu is {num_gpu} (a GPU share is only for num_gpu == 1)",
                )
        gpu_type = _int("demand.gpu_type", self.gpu_type, ge=-1)
        if isinstance(self.gpu_types, (str, bytes)) or not isinstance(self.gpu_types, Iterable):
            raise fail("demand.gpu_types", self.gpu_types, "must be a sequence of GPU type indices")
        types = tuple(sorted({_int(f"demand.gpu_types[{i}]", t, ge=0) for i, t in enumerate(self.gpu_types)}))
        if gpu_type >= 0:
            if types and types != (gpu_type,):
                raise fail("demand.gpu_type", gpu_type, f"contradicts demand.gpu_types {types}")
            types = (gpu_type,)
        gpu_type = types[0] if len(types) == 1 else -1
        object.__setattr__(self, "num_gpu", num_gpu)
        object.__setattr__(self, "gpu_milli", gpu_milli)
        object.__setattr__(self, "gpu_type", gpu_type)
        object.__setattr__(self, "gpu_types", types)
        object.__setattr__(self, "cpu_milli", _int("demand.cpu_milli", self.cpu_milli, ge=0))
        object.__setattr__(self, "memory_mib", _int("demand.memory_mib", self.memory_mib, ge=0))
        object.__setattr__(self, "model", _int("demand.model", self.model, ge=-1))

    @property
    def is_fractional(self) -> bool:
        """True for a share of one GPU (``num_gpu == 1`` and ``gpu_milli < 1000``)."""
        return self.num_gpu == 1 and self.gpu_milli < GPU_MILLI

    @property
    def gpu_milli_total(self) -> int:
        """GPU capacity the task takes in milli-GPU (0 for CPU-only tasks)."""
        return self.num_gpu * self.gpu_milli if self.num_gpu > 0 else 0

    def task_type(self) -> Demand:
        """The demand as a task type: without ``model``, and for CPU-only tasks without GPU fields.

        Fragmentation and FGD's task popularity count by this key.
        """
        if self.num_gpu == 0:
            if self.gpu_milli == 0 and not self.gpu_types and self.model == -1:
                return self
            return Demand(num_gpu=0, gpu_milli=0, cpu_milli=self.cpu_milli, memory_mib=self.memory_mib)
        return self if self.model == -1 else replace(self, model=-1)


@dataclass(frozen=True)
class Allocation:
    """What ``ClusterState.allocate`` took: hand it back to ``release`` unchanged.

    ``milli`` is the share taken on each GPU in ``gpus`` (1000 for whole GPUs, 0 for CPU-only).
    """

    node: int
    gpus: tuple[int, ...]
    milli: int
    cpu_milli: int
    memory_mib: int
    demand: Demand
