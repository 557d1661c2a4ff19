"""The FGD fragment measure of a GPU cluster relative to a target workload (Weng et al., ATC 2023).

:class:`TaskMix` is the target distribution of task types with their popularity; the functions
compute each node's fragment (the GPU capacity a task of each type could not use there, weighted
by popularity) from the per-node aggregates a :class:`~envs.sim.cluster.ClusterState` keeps, in
one pass (``fragment_per_type``) or for the nodes that changed (``refresh_fragments``, compiled).
Reference: Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with
Fragmentation Gradient Descent", USENIX ATC 2023, Sec. 3-4, and its simulator's
``fragment.go``. :mod:`envs.sim.cluster` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from envs.sim.demand import Demand
from envs.sim.errors import check_number, fail

if TYPE_CHECKING:
    from envs.sim.cluster import ClusterState


class TaskMix:
    """A target workload distribution for the FGD fragment measure: task types with popularity.

    Built from ``(Demand, popularity)`` pairs; popularities are normalised to sum to 1 (Weng et al.
    2023, Sec. 4.1, weight each task type by its share of the workload). Demands are reduced to their
    ``task_type()``; pairs of the same type are merged. The arrays are what the vectorised fragment
    computation reads: ``threshold`` (milli a single GPU must have free to serve the type; 0 for
    CPU-only types), ``num_gpu``, ``cpu_milli``, ``memory_mib``, ``popularity``, ``gpu_task``.
    """

    def __init__(self, demand_dist: Sequence[tuple[Demand, float]], path: str = "demand_dist") -> None:
        if isinstance(demand_dist, Mapping):
            demand_dist = list(demand_dist.items())
        weights: dict[Demand, float] = {}
        for i, item in enumerate(demand_dist):
            if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], Demand):
                raise fail(f"{path}[{i}]", item, "must be a (Demand, popularity) pair")
            p = float(check_number(f"{path}[{i}].popularity", item[1], ge=0))
            key = item[0].task_type()
            weights[key] = weights.get(key, 0.0) + p
        total = sum(weights.values())
        if not weights or total <= 0:
            raise fail(path, list(demand_dist), "must hold at least one task type with popularity > 0")
        self.types: tuple[Demand, ...] = tuple(weights)
        self.popularity = np.array([weights[t] for t in self.types], dtype=np.float64) / total
        self._set_arrays()

    @classmethod
    def _from_counts(cls, types: Sequence[Demand], counts: np.ndarray) -> TaskMix:
        mix = cls.__new__(cls)
        mix.types = tuple(types)
        mix.popularity = counts.astype(np.float64) / counts.sum()
        mix._set_arrays()
        return mix

    def _set_arrays(self) -> None:
        types = self.types
        self.gpu_task = np.array([t.num_gpu > 0 for t in types], dtype=bool)
        self.num_gpu = np.array([t.num_gpu for t in types], dtype=np.int64)
        self.threshold = np.array([t.gpu_milli if t.num_gpu > 0 else 0 for t in types], dtype=np.int64)
        self.cpu_milli = np.array([t.cpu_milli for t in types], dtype=np.int64)
        self.memory_mib = np.array([t.memory_mib for t in types], dtype=np.int64)
        # Fragment counts depend on GPU rows only through the threshold, and types share few of them.
        self.thresholds, self.threshold_index = np.unique(self.threshold, return_inverse=True)
        self._type_ok_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def type_ok(self, state: ClusterState) -> np.ndarray:
        """bool[N, K]: node n's GPU type is allowed for task type k (always True for unconstrained)."""
        key = id(state.node_gpu_type)
        hit = self._type_ok_cache.get(key)
        if hit is not None and hit[0] is state.node_gpu_type:
            return hit[1]
        n_types = len(state.gpu_type_names)
        allowed = np.ones((len(self.types), n_types + 1), dtype=bool)
        for k, t in enumerate(self.types):
            if t.gpu_types:
                allowed[k] = False
                allowed[k, [g for g in t.gpu_types if g < n_types]] = True
        allowed[:, n_types] = ~self.gpu_task  # index -1: a node without GPUs
        ok = np.ascontiguousarray(allowed[:, state.node_gpu_type].T)
        self._type_ok_cache = {key: (state.node_gpu_type, ok)}
        return ok


def gpu_row_aggregates(rows: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row and threshold t: how many GPUs have free >= t, and the free milli on GPUs with free < t.

    ``rows`` is int[F, G] of free milli per GPU slot (-1 for an absent slot, which counts as neither);
    returns (int64[F, U], int64[F, U]) for ``thresholds`` int[U].
    """
    ge = rows[:, :, None] >= thresholds[None, None, :]
    count_ge = ge.sum(axis=1, dtype=np.int64)
    free = np.maximum(rows, 0).astype(np.int64)[:, :, None]
    small_sum = np.where(ge, 0, free).sum(axis=1)
    return count_ge, small_sum


def fragment_per_type(
    mix: TaskMix,
    gpu_free_total: np.ndarray,
    count_ge: np.ndarray,
    small_sum: np.ndarray,
    cpu_free: np.ndarray,
    mem_free: np.ndarray,
    type_ok: np.ndarray,
) -> np.ndarray:
    """float64[F, K]: F_n(m), the free milli-GPU of node n that task type m cannot use.

    ``count_ge``/``small_sum`` are [F, K] per task type (gather the per-threshold arrays of
    ``gpu_row_aggregates`` with ``mix.threshold_index``); ``type_ok`` is bool[F, K].
    """
    can = (
        type_ok
        & mix.gpu_task
        & (count_ge >= mix.num_gpu)
        & (cpu_free[:, None] >= mix.cpu_milli)
        & (mem_free[:, None] >= mix.memory_mib)
    )
    return np.where(can, small_sum, gpu_free_total[:, None]).astype(np.float64)


@njit(cache=True)
def refresh_fragments(
    version: np.ndarray,
    seen: np.ndarray,
    gpu_free_milli: np.ndarray,
    gpu_free_total: np.ndarray,
    cpu_free: np.ndarray,
    mem_free: np.ndarray,
    type_ok: np.ndarray,
    gpu_task: np.ndarray,
    num_gpu: np.ndarray,
    threshold: np.ndarray,
    cpu_milli: np.ndarray,
    memory_mib: np.ndarray,
    frag: np.ndarray,
    col_sum: np.ndarray,
) -> None:
    """Bring ``frag`` (float64[N, K], the ``fragment_per_type`` of every node) and its column sums
    ``col_sum`` up to date for the nodes whose ``version`` differs from ``seen`` (then set ``seen``).

    The arguments are the arrays of a ``ClusterState`` and a ``TaskMix`` (``type_ok`` is
    ``mix.type_ok(state)``). Fragments are whole milli-GPU, so the float sums are exact and equal
    what ``fragment_per_type`` gives in any order; one compiled pass replaces a dozen numpy calls
    per changed node.
    """
    n_nodes, n_slots = gpu_free_milli.shape
    for n in range(n_nodes):
        if version[n] == seen[n]:
            continue
        seen[n] = version[n]
        total = gpu_free_total[n]
        for k in range(len(threshold)):
            fits = (
                type_ok[n, k] and gpu_task[k] and cpu_free[n] >= cpu_milli[k] and mem_free[n] >= memory_mib[k]
            )
            value = total
            if fits:
                # GPUs with at least the threshold free count; the free milli of the others is stranded
                count = 0
                small = 0
                for g in range(n_slots):
                    free = gpu_free_milli[n, g]
                    if free >= threshold[k]:
                        count += 1
                    elif free > 0:
                        small += free
                if count >= num_gpu[k]:
                    value = small
            col_sum[k] += value - frag[n, k]
            frag[n, k] = value


def fragment_from_aggregates(
    mix: TaskMix,
    gpu_free_total: np.ndarray,
    count_ge: np.ndarray,
    small_sum: np.ndarray,
    cpu_free: np.ndarray,
    mem_free: np.ndarray,
    type_ok: np.ndarray,
) -> np.ndarray:
    """FGD fragment F_n(M) = sum_m p_m F_n(m) in milli-GPU for each of F nodes (see
    ``ClusterState.node_fragment_milli``), from the same inputs as ``fragment_per_type``."""
    return (
        fragment_per_type(mix, gpu_free_total, count_ge, small_sum, cpu_free, mem_free, type_ok)
        @ mix.popularity
    )
