"""GPU cluster allocation state: which GPUs, CPU and memory of which node are taken, as numpy arrays.

A ``ClusterState`` holds per-node capacity and free resources of a heterogeneous GPU cluster in the
model of the Alibaba GPU-sharing trace (Weng et al., "Beware of Fragmentation: Scheduling
GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC 2023): each GPU has 1000
milli-GPU of capacity, a task asks for either whole GPUs or a share (< 1000 milli) of exactly one
GPU, plus CPU (milli-cores) and memory (MiB). Feasibility over all nodes is one vectorised pass over
per-node aggregates that ``allocate``/``release`` keep current, so placers can ask it thousands of
times per second. It also measures GPU fragmentation two ways: the demand-free
``fragmented_gpus`` (free shares stranded on partly used GPUs) and the FGD fragment measure of
Weng et al. relative to a target task distribution (``fragmented_gpu_milli(demand_dist)``, computed
by :mod:`envs.sim.fragmentation`). :class:`Demand` and :class:`Allocation` live in
:mod:`envs.sim.demand`; this module re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from envs.sim.demand import GPU_MILLI, Allocation, Demand, _int
from envs.sim.errors import ConfigError, check_keys, fail
from envs.sim.fragmentation import (
    TaskMix,
    fragment_from_aggregates,
    fragment_per_type,
    gpu_row_aggregates,
    refresh_fragments,
)

__all__ = [
    "GPU_MILLI",
    "Allocation",
    "ClusterState",
    "Demand",
    "TaskMix",
    "cluster_from_nodes",
    "fragment_from_aggregates",
    "fragment_per_type",
    "gpu_row_aggregates",
    "refresh_fragments",
]


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
