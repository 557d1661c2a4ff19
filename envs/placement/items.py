"""Placement-v0's items as the agent sees them: an item key (the fields of a
:class:`~envs.sim.cluster.Demand`) becomes the demand and its observation features once per shape,
since traces repeat a few hundred shapes over thousands of jobs, and each item of an episode is
numbered by its task type for the FGD tracker."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.placement.params import N_ITEM_BASE
from envs.sim.cluster import GPU_MILLI, Demand

Item = tuple[Demand, np.ndarray, int]  # (demand, item features, FGD column)


class ItemEncoder:
    """Item features (the ``I + k`` rows of ``PlacementEnv``'s observation table) of item keys
    ``(num_gpu, gpu_milli, cpu_milli, memory_mib, gpu_types, model)``, cached across episodes.

    ``n_types`` is the number of GPU types T; ``max_gpus``, ``max_cpu`` and ``max_mem`` (most GPUs,
    milli-CPU and MiB of any node) normalise the item's demand.
    """

    def __init__(self, n_types: int, max_gpus: int, max_cpu: int, max_mem: int) -> None:
        self.n_types = n_types
        self.dim = N_ITEM_BASE + n_types
        self.max_gpus, self.max_cpu, self.max_mem = max_gpus, max_cpu, max_mem
        self._cache: dict[tuple, tuple[Demand, np.ndarray]] = {}

    def encode(self, key: tuple) -> tuple[Demand, np.ndarray]:
        """(Demand, item features) of an item key."""
        hit = self._cache.get(key)
        if hit is None:
            num, milli, cpu, mem, types, model = key
            d = Demand(
                num_gpu=num, gpu_milli=milli, cpu_milli=cpu, memory_mib=mem, gpu_types=types, model=model
            )
            vec = np.zeros(self.dim, dtype=np.float32)
            t = self.n_types
            vec[0] = 1.0
            if self.max_gpus:
                vec[1] = min(d.num_gpu / self.max_gpus, 1.0)
            vec[2] = d.gpu_milli / GPU_MILLI if d.num_gpu > 0 else 0.0
            for g in d.gpu_types:
                vec[3 + g] = 1.0
            vec[3 + t] = min(d.cpu_milli / max(self.max_cpu, 1), 1.0)
            vec[4 + t] = min(d.memory_mib / max(self.max_mem, 1), 1.0)
            hit = self._cache[key] = (d, vec)
        return hit

    def episode_items(self, keys: Sequence[tuple]) -> tuple[list[Item], list[Demand]]:
        """(Demand, features, FGD column) per key, and the distinct task types the columns number."""
        by_key: dict[tuple, Item] = {}
        cols: dict[Demand, int] = {}
        for key in keys:
            if key not in by_key:
                d, vec = self.encode(key)
                by_key[key] = (d, vec, cols.setdefault(d.task_type(), len(cols)))
        return [by_key[k] for k in keys], list(cols)
