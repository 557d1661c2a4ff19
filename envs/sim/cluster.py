"""GPU cluster allocation state: which GPUs, CPU and memory of which node are taken, as numpy arrays.

A ``ClusterState`` holds per-node capacity and free resources of a heterogeneous GPU cluster in the
model of the Alibaba GPU-sharing trace (Weng et al., "Beware of Fragmentation: Scheduling
GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC 2023): each GPU has 1000
milli-GPU of capacity, a task asks for either whole GPUs or a share (< 1000 milli) of exactly one
GPU, plus CPU (milli-cores) and memory (MiB). Feasibility over all nodes is one vectorised pass over
per-node aggregates that ``allocate``/``release`` keep current, so placers can ask it thousands of
times per second. The module also measures GPU fragmentation two ways: the demand-free
``fragmented_gpus`` (free shares stranded on partly used GPUs) and the FGD fragment measure of
Weng et al. relative to a target task distribution (``fragmented_gpu_milli(demand_dist)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numba import njit

from envs.sim.errors import ConfigError, check_keys, check_number, fail

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


class ClusterState:
    """Free and used resources of every node and GPU of a cluster, as arrays.

    Arrays (N nodes, G = the largest GPU count of any node):

    ==================  ==============  ===========================================================
    name                dtype, shape    meaning
    ==================  ==============  ===========================================================
    gpu_free_milli      int32[N, G]     free milli-GPU per GPU slot; 1000 = idle, -1 = no such GPU
    cpu_free_milli      int64[N]        free CPU in milli-cores
    mem_free_mib        int64[N]        free memory in MiB
    cached              bool[N, M]      weights of model m are on node n's local disk
    cached_at           float64[N, M]   time (s) of the last use of those weights (0 if not cached)
    gpu_full_free       int32[N]        GPUs with all 1000 milli free
    gpu_max_free        int32[N]        largest free share on any GPU of the node (-1: no GPUs)
    gpu_free_total      int64[N]        free milli-GPU summed over the node's GPUs
    node_alloc_count    int32[N]        live allocations on the node (CPU-only ones included)
    node_spot           bool[N]         the node is spot / preemptible capacity
    node_noticed        bool[N]         the node has been told it will be preempted
    node_excluded       bool[N]         while ``excluding``: nodes a placement may not use
    version             int64[N]        bumped on every change of the node, for placers' caches
    ==================  ==============  ===========================================================

    Their cluster-wide sums, as ints: ``idle_gpus`` (of ``gpu_full_free``), ``free_gpu_milli`` (of
    ``gpu_free_total``) and ``live_allocations`` (of ``node_alloc_count``).

    Treat them as read-only outside this class: ``allocate`` and ``release`` keep them consistent.
    """

    def __init__(
        self,
        gpu_type_names: Sequence[str],
        node_gpu_type: Sequence[int] | np.ndarray,
        node_gpus: Sequence[int] | np.ndarray,
        node_cpu_milli: Sequence[int] | np.ndarray,
        node_memory_mib: Sequence[int] | np.ndarray,
        n_models: int = 0,
        node_names: Sequence[str] | None = None,
    ) -> None:
        names = tuple(gpu_type_names)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise fail(f"cluster.gpu_type_names[{i}]", name, "must be a non-empty string")
        if len(set(names)) != len(names):
            raise fail("cluster.gpu_type_names", names, "must not repeat a name")
        self.gpu_type_names: tuple[str, ...] = names
        arrays = {}
        for key, values in (
            ("node_gpu_type", node_gpu_type),
            ("node_gpus", node_gpus),
            ("node_cpu_milli", node_cpu_milli),
            ("node_memory_mib", node_memory_mib),
        ):
            arr = np.asarray(values)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise fail(f"cluster.{key}", values, "must be a 1-D sequence of integers")
            arrays[key] = arr.astype(np.int64)
        n = len(arrays["node_gpus"])
        for key, arr in arrays.items():
            if len(arr) != n:
                raise fail(f"cluster.{key}", f"length {len(arr)}", f"must have one entry per node ({n})")
        for key in ("node_gpus", "node_cpu_milli", "node_memory_mib"):
            bad = np.flatnonzero(arrays[key] < 0)
            if bad.size:
                raise fail(f"cluster.{key}[{bad[0]}]", int(arrays[key][bad[0]]), "must be >= 0")
        gtype, gpus = arrays["node_gpu_type"], arrays["node_gpus"]
        bad = np.flatnonzero((gtype < -1) | (gtype >= len(names)))
        if bad.size:
            raise fail(
                f"cluster.node_gpu_type[{bad[0]}]", int(gtype[bad[0]]), f"must be in [-1, {len(names) - 1}]"
            )
        bad = np.flatnonzero((gpus > 0) & (gtype < 0))
        if bad.size:
            raise fail(f"cluster.node_gpu_type[{bad[0]}]", -1, "must name a GPU type for a node with GPUs")
        n_models = _int("cluster.n_models", n_models, ge=0)
        if node_names is not None:
            node_names = tuple(str(s) for s in node_names)
            if len(node_names) != n:
                raise fail("cluster.node_names", f"length {len(node_names)}", f"must be {n} long")
        self.node_names: tuple[str, ...] | None = node_names

        self.node_gpu_type = gtype.astype(np.int32)
        self.node_gpus = gpus.astype(np.int32)
        self.node_cpu_milli = arrays["node_cpu_milli"]
        self.node_memory_mib = arrays["node_memory_mib"]
        for arr in (self.node_gpu_type, self.node_gpus, self.node_cpu_milli, self.node_memory_mib):
            arr.setflags(write=False)
        g_max = int(gpus.max()) if n else 0
        present = np.arange(g_max)[None, :] < self.node_gpus[:, None]
        self.gpu_free_milli = np.where(present, GPU_MILLI, -1).astype(np.int32)
        self.cpu_free_milli = self.node_cpu_milli.copy()
        self.mem_free_mib = self.node_memory_mib.copy()
        self.cached = np.zeros((n, n_models), dtype=bool)
        self.node_spot = np.zeros(n, dtype=bool)
        self.node_noticed = np.zeros(n, dtype=bool)
        self.node_excluded = np.zeros(
            n, dtype=bool
        )  # set for one placement (see Simulator.set_target_replicas)
        self.excluding = False
        self.cached_at = np.zeros((n, n_models), dtype=np.float64)
        self.gpu_full_free = self.node_gpus.copy()
        self.gpu_max_free = np.where(self.node_gpus > 0, GPU_MILLI, -1).astype(np.int32)
        self.gpu_free_total = self.node_gpus.astype(np.int64) * GPU_MILLI
        self.node_alloc_count = np.zeros(n, dtype=np.int32)
        self.version = np.zeros(n, dtype=np.int64)
        # Cluster-wide sums of the per-node aggregates, kept current by allocate/release so that
        # per-step metrics need no array reductions.
        self.idle_gpus = int(self.gpu_full_free.sum())
        self.free_gpu_milli = int(self.gpu_free_total.sum())
        self.live_allocations = 0
        self._nodes_used = 0
        self._type_masks: dict[tuple[int, ...], np.ndarray] = {}

    # ------------------------------------------------------------------ sizes
    @property
    def n_nodes(self) -> int:
        return len(self.node_gpus)

    @property
    def n_models(self) -> int:
        return self.cached.shape[1]

    @property
    def max_gpus_per_node(self) -> int:
        return self.gpu_free_milli.shape[1]

    def total_gpus(self) -> int:
        return int(self.node_gpus.sum())

    # ------------------------------------------------------------ feasibility
    def _type_mask(self, types: tuple[int, ...]) -> np.ndarray:
        mask = self._type_masks.get(types)
        if mask is None:
            n_types = len(self.gpu_type_names)
            allowed = np.zeros(n_types + 1, dtype=bool)  # last slot: node_gpu_type == -1
            allowed[[t for t in types if t < n_types]] = True
            mask = allowed[self.node_gpu_type]
            mask.setflags(write=False)
            self._type_masks[types] = mask
        return mask

    def feasible(self, d: Demand) -> np.ndarray:
        """bool[N]: the node can take ``d`` now.

        CPU and memory must fit; for GPU tasks the node's GPU type must be allowed and: whole GPUs
        need ``num_gpu`` fully free GPUs (a partly used GPU never serves a whole-GPU task); a share
        needs one GPU with at least ``gpu_milli`` free.
        """
        ok = self.cpu_free_milli >= d.cpu_milli if d.cpu_milli else np.ones(self.n_nodes, dtype=bool)
        if d.memory_mib:
            ok &= self.mem_free_mib >= d.memory_mib
        if d.num_gpu > 0:
            if d.gpu_types:
                ok &= self._type_mask(d.gpu_types)
            if d.gpu_milli < GPU_MILLI:
                ok &= self.gpu_max_free >= d.gpu_milli
            else:
                ok &= self.gpu_full_free >= d.num_gpu
        if self.excluding:
            ok &= ~self.node_excluded
        return ok

    def fits(self, node: int, d: Demand) -> bool:
        """Scalar ``feasible(d)[node]`` without touching the other nodes."""
        if self.excluding and self.node_excluded[node]:
            return False
        if self.cpu_free_milli[node] < d.cpu_milli or self.mem_free_mib[node] < d.memory_mib:
            return False
        if d.num_gpu == 0:
            return True
        if d.gpu_types and not self._type_mask(d.gpu_types)[node]:
            return False
        if d.gpu_milli < GPU_MILLI:
            return bool(self.gpu_max_free[node] >= d.gpu_milli)
        return bool(self.gpu_full_free[node] >= d.num_gpu)

    def default_gpus(self, node: int, d: Demand) -> tuple[int, ...]:
        """The GPUs ``allocate`` takes without a hint: lowest-index fully free GPUs for whole-GPU
        tasks, the best-fit GPU (least free that fits, lowest index on ties) for a share."""
        if d.num_gpu == 0:
            return ()
        # Rows are at most a few GPUs long: plain Python beats numpy call overhead here.
        row = self.gpu_free_milli[node].tolist()
        if d.gpu_milli < GPU_MILLI:
            need = d.gpu_milli
            fits = [(free, g) for g, free in enumerate(row) if free >= need]
            return (min(fits)[1],)
        return tuple([g for g, free in enumerate(row) if free == GPU_MILLI][: d.num_gpu])

    def allocate(self, node: int, d: Demand, gpus: Sequence[int] | None = None) -> Allocation:
        """Take ``d``'s resources on ``node`` (on ``gpus`` if given, else ``default_gpus``).

        Raises ValueError if the node cannot take the demand or the GPUs given cannot serve it.
        """
        node = int(node)
        if not 0 <= node < self.n_nodes:
            raise ValueError(f"node {node} out of range [0, {self.n_nodes})")
        if not self.fits(node, d):
            raise ValueError(f"node {node} cannot take {d}")
        if gpus is None:
            chosen = self.default_gpus(node, d)
        else:
            chosen = tuple(int(g) for g in gpus)
            if d.num_gpu == 0 and chosen:
                raise ValueError(f"a CPU-only demand takes no GPUs, got {chosen}")
            if len(chosen) != d.num_gpu or len(set(chosen)) != len(chosen):
                raise ValueError(f"need {d.num_gpu} distinct GPUs, got {chosen}")
            row = self.gpu_free_milli[node]
            for g in chosen:
                if not 0 <= g < self.node_gpus[node] or row[g] < d.gpu_milli:
                    raise ValueError(f"GPU {g} of node {node} cannot serve {d.gpu_milli} milli")
        milli = d.gpu_milli if d.num_gpu > 0 else 0
        gpu_row = self.gpu_free_milli[node]
        for g in chosen:
            gpu_row[g] -= milli
        self.cpu_free_milli[node] -= d.cpu_milli
        self.mem_free_mib[node] -= d.memory_mib
        if self.node_alloc_count[node] == 0:
            self._nodes_used += 1
        self.node_alloc_count[node] += 1
        self.live_allocations += 1
        self._refresh(node)
        return Allocation(node, chosen, milli, d.cpu_milli, d.memory_mib, d)

    def release(self, a: Allocation) -> None:
        """Give back what ``allocate`` returned. Raises ValueError if that would exceed capacity."""
        node = a.node
        if not 0 <= node < self.n_nodes or self.node_alloc_count[node] <= 0:
            raise ValueError(f"no live allocation on node {node} to release")
        row = self.gpu_free_milli[node]
        if any(row[g] < 0 or row[g] + a.milli > GPU_MILLI for g in a.gpus):
            raise ValueError(f"releasing {a} would exceed GPU capacity (released twice?)")
        if (
            self.cpu_free_milli[node] + a.cpu_milli > self.node_cpu_milli[node]
            or self.mem_free_mib[node] + a.memory_mib > self.node_memory_mib[node]
        ):
            raise ValueError(f"releasing {a} would exceed CPU or memory capacity (released twice?)")
        for g in a.gpus:
            row[g] += a.milli
        self.cpu_free_milli[node] += a.cpu_milli
        self.mem_free_mib[node] += a.memory_mib
        self.node_alloc_count[node] -= 1
        self.live_allocations -= 1
        if self.node_alloc_count[node] == 0:
            self._nodes_used -= 1
        self._refresh(node)

    def _refresh(self, node: int) -> None:
        row = [free for free in self.gpu_free_milli[node].tolist() if free >= 0]
        if row:
            full, total = row.count(GPU_MILLI), sum(row)
            self.idle_gpus += full - int(self.gpu_full_free[node])
            self.free_gpu_milli += total - int(self.gpu_free_total[node])
            self.gpu_full_free[node] = full
            self.gpu_max_free[node] = max(row)
            self.gpu_free_total[node] = total
        self.version[node] += 1

    # ---------------------------------------------------------------- metrics
    def gpus_in_use(self) -> int:
        """GPUs with any allocation (any share taken)."""
        g = self.gpu_free_milli
        return int(((g >= 0) & (g < GPU_MILLI)).sum())

    def nodes_in_use(self) -> int:
        """Nodes with any live allocation: the ones that must stay powered on."""
        return self._nodes_used

    def fragmented_gpus(self) -> float:
        """Demand-free fragmentation in GPUs: free capacity on partly allocated GPUs.

        Sum over GPUs with 0 < free < 1000 of free / 1000. Idle GPUs and full GPUs count 0: this is
        the capacity that no whole-GPU task can use, whatever tasks come.
        """
        g = self.gpu_free_milli
        return float(np.where((g > 0) & (g < GPU_MILLI), g, 0).sum()) / GPU_MILLI

    def node_fragment_milli(
        self, demand_dist: TaskMix | Sequence[tuple[Demand, float]], nodes: np.ndarray | None = None
    ) -> np.ndarray:
        """FGD fragment F_n(M) in milli-GPU per node (all nodes, or the indices ``nodes``).

        Weng et al. 2023, Sec. 4.1: F_n(M) = sum over task types m of p_m * F_n(m), where F_n(m) is the
        free GPU capacity of node n that task m cannot use. If m cannot run on n at all (a CPU-only
        task; GPU type not allowed; too little free CPU or memory; fewer than ``num_gpu`` GPUs with
        at least m's per-GPU share free) F_n(m) is all free GPU milli of n; otherwise it is the free
        milli on GPUs whose free share is below m's per-GPU request (for whole-GPU tasks: every
        partly used GPU). Popularities p_m are normalised to sum 1. This follows the authors'
        simulator (hkust-adsl/kubernetes-scheduler-simulator, ``NodeGpuShareFragAmount``), which
        also counts all free GPUs as fragment for CPU-only tasks; it adds a memory check the
        simulator leaves out, to match ``feasible``.
        """
        mix = demand_dist if isinstance(demand_dist, TaskMix) else TaskMix(demand_dist)
        idx = np.arange(self.n_nodes) if nodes is None else np.asarray(nodes)
        count_u, small_u = gpu_row_aggregates(self.gpu_free_milli[idx], mix.thresholds)
        ti = mix.threshold_index
        return fragment_from_aggregates(
            mix,
            self.gpu_free_total[idx],
            count_u[:, ti],
            small_u[:, ti],
            self.cpu_free_milli[idx],
            self.mem_free_mib[idx],
            mix.type_ok(self)[idx],
        )

    def fragmented_gpu_milli(
        self, demand_dist: TaskMix | Sequence[tuple[Demand, float]] | None = None
    ) -> float:
        """Cluster fragmentation in milli-GPU.

        With ``demand_dist`` (``(Demand, popularity)`` pairs or a ``TaskMix``): the FGD measure, the sum
        over nodes of ``node_fragment_milli``. Without: 1000 x ``fragmented_gpus()``.
        """
        if demand_dist is None:
            return self.fragmented_gpus() * GPU_MILLI
        return float(self.node_fragment_milli(demand_dist).sum())

    # ------------------------------------------------------------ model cache
    def touch_cache(self, node: int, model: int, now_s: float) -> None:
        """Record that ``model``'s weights are on ``node``'s disk and were used at ``now_s``."""
        self.cached[node, model] = True
        self.cached_at[node, model] = now_s

    def evict_cache(self, now_s: float, ttl_s: float) -> int:
        """Drop cached weights unused for more than ``ttl_s`` seconds; returns how many were dropped."""
        stale = self.cached & (now_s - self.cached_at > ttl_s)
        self.cached[stale] = False
        self.cached_at[stale] = 0.0
        return int(stale.sum())

    # ------------------------------------------------------------------ copies
    def copy(self) -> ClusterState:
        """An independent state with the same capacity and allocations."""
        new = ClusterState.__new__(ClusterState)
        for key, value in self.__dict__.items():
            if isinstance(value, np.ndarray) and value.flags.writeable:
                value = value.copy()
            elif isinstance(value, dict):
                value = dict(value)
            new.__dict__[key] = value
        return new

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of the mutable arrays, e.g. for observations."""
        return {
            "gpu_free_milli": self.gpu_free_milli.copy(),
            "cpu_free_milli": self.cpu_free_milli.copy(),
            "mem_free_mib": self.mem_free_mib.copy(),
            "cached": self.cached.copy(),
            "cached_at": self.cached_at.copy(),
            "node_alloc_count": self.node_alloc_count.copy(),
        }


_NODE_KEYS = ("gpu_type", "gpus", "cpu_milli", "memory_mib", "count", "name")


def cluster_from_nodes(
    nodes: Sequence[Mapping[str, Any]],
    gpu_type_names: Sequence[str],
    n_models: int = 0,
    path: str = "nodes",
) -> ClusterState:
    """Build a cluster from node mappings.

    Each mapping has ``gpus`` (int >= 0), ``cpu_milli``, ``memory_mib``, ``gpu_type`` (a name from
    ``gpu_type_names``; may be omitted or None for a node without GPUs), optional ``count`` (that many
    identical nodes, default 1) and optional ``name``. Errors name ``path[i].key``.
    """
    if isinstance(nodes, Mapping) or not isinstance(nodes, Sequence):
        raise fail(path, nodes, "must be a list of node mappings")
    names = tuple(gpu_type_names)
    types, gpus, cpus, mems, labels = [], [], [], [], []
    for i, node in enumerate(nodes):
        where = f"{path}[{i}]"
        check_keys(where, node, _NODE_KEYS, required=("gpus", "cpu_milli", "memory_mib"))
        n_gpu = _int(f"{where}.gpus", node["gpus"], ge=0)
        type_name = node.get("gpu_type")
        if type_name is None or type_name == "":
            if n_gpu > 0:
                raise ConfigError(f"{where}.gpu_type: required key is missing for a node with GPUs")
            type_idx = -1
        elif type_name in names:
            type_idx = names.index(type_name)
        else:
            raise fail(f"{where}.gpu_type", type_name, f"must be one of {list(names)}")
        count = _int(f"{where}.count", node.get("count", 1), ge=0)
        cpu = _int(f"{where}.cpu_milli", node["cpu_milli"], ge=0)
        mem = _int(f"{where}.memory_mib", node["memory_mib"], ge=0)
        base = str(node.get("name", f"node-{len(labels)}"))
        for j in range(count):
            types.append(type_idx)
            gpus.append(n_gpu)
            cpus.append(cpu)
            mems.append(mem)
            labels.append(base if count == 1 else f"{base}-{j}")
    return ClusterState(
        names,
        np.array(types, dtype=np.int64),
        np.array(gpus, dtype=np.int64),
        np.array(cpus, dtype=np.int64),
        np.array(mems, dtype=np.int64),
        n_models=n_models,
        node_names=labels,
    )
