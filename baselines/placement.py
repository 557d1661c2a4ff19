"""Classical placers: which node (and GPU) of a ``ClusterState`` a task or replica goes to.

Every placer answers ``select(state, demand, rng) -> node`` with a feasible node, or -1 when no node
can take the demand; it never returns an infeasible node. ``place`` selects and allocates in one
call, passing the placer's GPU choice within the node (only FGD makes one; the others let the
cluster take its default: lowest-index free GPUs for whole-GPU tasks, best-fit GPU for a share).
The set covers the heuristics of the bin-packing literature (first/best/worst fit, random,
packing), the Kubernetes scheduler's scoring strategies (NodeResourcesFit LeastAllocated and
MostAllocated, NodeResourcesBalancedAllocation), a model-cache-aware variant, and Fragmentation
Gradient Descent (Weng et al., USENIX ATC 2023). ``make_placer`` builds one from a config value.
See docs/baselines-placement.md for the table of names, sources, parameters and defaults.
"""

from __future__ import annotations

import abc
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from envs.sim.cluster import (
    GPU_MILLI,
    Allocation,
    ClusterState,
    Demand,
    TaskMix,
    fragment_from_aggregates,
    fragment_per_type,
    gpu_row_aggregates,
)
from envs.sim.controllers import PLACERS
from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail

__all__ = [
    "PLACERS",
    "BalancedAllocation",
    "BestFit",
    "CacheAware",
    "FirstFit",
    "FragmentationGradientDescent",
    "LeastAllocated",
    "MostAllocated",
    "Packing",
    "Placer",
    "RandomFit",
    "WorstFit",
    "make_placer",
]

_RESOURCES = ("cpu", "memory", "gpu")


class Placer(abc.ABC):
    """Chooses a node for a demand. Subclasses set ``name`` and implement ``select``.

    Implements the core's :class:`envs.sim.controllers.Placer` protocol; ``accepted_params`` names
    the keyword parameters a scenario may give (the registry checks them, the class validates values).
    """

    name: ClassVar[str]
    accepted_params: ClassVar[tuple[str, ...]] = ()

    def reset(self) -> None:
        """Forget what was learned since the last reset (e.g. FGD's demand counts)."""
        return None  # stateless placers have nothing to forget

    @abc.abstractmethod
    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        """A node index that can take ``demand`` now, or -1 if there is none."""

    def gpu_choice(self, state: ClusterState, demand: Demand, node: int) -> tuple[int, ...] | None:
        """GPUs on ``node`` to allocate for ``demand`` right after ``select`` chose it; None = the
        cluster's default (``ClusterState.default_gpus``)."""
        return None

    def place(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> Allocation | None:
        """Select a node and allocate ``demand`` on it; None if no node can take it."""
        node = self.select(state, demand, rng)
        if node < 0:
            return None
        return state.allocate(node, demand, self.gpu_choice(state, demand, node))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _free_gpu_after(state: ClusterState, idx: np.ndarray, demand: Demand) -> np.ndarray:
    return state.gpu_free_total[idx] - demand.gpu_milli_total


def _best_fit_among(state: ClusterState, idx: np.ndarray, demand: Demand) -> int:
    # argmin returns the first minimum, and idx is ascending: ties go to the lowest node index.
    return int(idx[np.argmin(_free_gpu_after(state, idx, demand))])


class FirstFit(Placer):
    """The lowest-index feasible node."""

    name = "first_fit"

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        ok = state.feasible(demand)
        node = int(np.argmax(ok))
        return node if ok[node] else -1


class BestFit(Placer):
    """The feasible node with the least free GPU capacity (milli-GPU) left after placing; ties go to
    the lowest index. CPU-only tasks thereby go to the nodes with the fewest free GPUs first."""

    name = "best_fit"

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        idx = np.flatnonzero(state.feasible(demand))
        return _best_fit_among(state, idx, demand) if idx.size else -1


class WorstFit(Placer):
    """The feasible node with the most free GPU capacity left after placing (spreads load); ties go
    to the lowest index. Also registered as ``spread``."""

    name = "worst_fit"

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        idx = np.flatnonzero(state.feasible(demand))
        if not idx.size:
            return -1
        return int(idx[np.argmax(_free_gpu_after(state, idx, demand))])


class RandomFit(Placer):
    """A feasible node drawn uniformly with the caller's generator."""

    name = "random"

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        idx = np.flatnonzero(state.feasible(demand))
        return int(idx[rng.integers(idx.size)]) if idx.size else -1


class Packing(Placer):
    """Prefer feasible nodes that already hold an allocation (best fit among them), so idle nodes
    stay idle and can be powered off; if none, the lowest-index feasible node."""

    name = "packing"

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        ok = state.feasible(demand)
        busy = np.flatnonzero(ok & (state.node_alloc_count > 0))
        if busy.size:
            return _best_fit_among(state, busy, demand)
        node = int(np.argmax(ok))
        return node if ok[node] else -1


class SpotAware(Placer):
    """Keep replicas off capacity about to vanish: never a node under a preemption notice, on-demand
    nodes before spot ones, and within a kind the node with the most free GPU capacity (spread, so
    one preemption takes few replicas at once); ties go to the lowest index.

    The notice is the provider's (AWS: two minutes; GCP: 30 s), seen as
    ``ClusterState.node_noticed``; spot nodes are ``ClusterState.node_spot``.
    """

    name = "spot_aware"

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        ok = state.feasible(demand) & ~state.node_noticed
        for idx in (np.flatnonzero(ok & ~state.node_spot), np.flatnonzero(ok)):
            if idx.size:
                free = _free_gpu_after(state, idx, demand)
                return int(idx[np.argmax(free)])
        return -1


class CacheAware(Placer):
    """Prefer feasible nodes whose disk already holds the demand's model weights
    (``state.cached[node, demand.model]``), best fit among them; otherwise best fit among all
    feasible nodes. Demands without a model (-1) are placed best fit."""

    name = "cache_aware"

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        ok = state.feasible(demand)
        if 0 <= demand.model < state.n_models:
            warm = np.flatnonzero(ok & state.cached[:, demand.model])
            if warm.size:
                return _best_fit_among(state, warm, demand)
        idx = np.flatnonzero(ok)
        return _best_fit_among(state, idx, demand) if idx.size else -1


class _KubernetesScorer(Placer):
    """Shared part of the kube-scheduler scoring strategies: per-resource fractions after placing.

    Resources are ``cpu`` (milli-cores), ``memory`` (MiB) and ``gpu`` (milli-GPU, the extended
    resource). As in kube-scheduler's ``resourceAllocationScorer``: a resource the node has none of
    is left out of the node's score, and the GPU is left out for a demand that requests no GPU
    (kubernetes pkg/scheduler/framework/plugins/noderesources/resource_allocation.go,
    ``calculateResourceAllocatableRequest``: an extended resource the pod does not request is
    bypassed). Scores are floats in [0, 100] (kube-scheduler truncates to integers). Ties go to the
    lowest node index, or to a uniform draw among the tied nodes with ``tie_break: random``, which
    is what kube-scheduler's ``selectHost`` does.
    """

    accepted_params = ("resources", "tie_break")

    def __init__(
        self,
        resources: Mapping[str, float] | None = None,
        tie_break: str = "lowest_index",
        path: str = "placement",
    ) -> None:
        if resources is None:
            resources = {r: 1.0 for r in _RESOURCES}
        check_keys(f"{path}.resources", resources, _RESOURCES)
        weights = [
            float(check_number(f"{path}.resources.{r}", resources.get(r, 0.0), ge=0)) for r in _RESOURCES
        ]
        if sum(weights) <= 0:
            raise fail(f"{path}.resources", dict(resources), "must give some resource a weight > 0")
        self.resources = {r: w for r, w in zip(_RESOURCES, weights, strict=True) if w > 0}
        self.weights = np.array(weights, dtype=np.float64)
        self.tie_break = check_choice(f"{path}.tie_break", tie_break, ("lowest_index", "random"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resources={self.resources}, tie_break={self.tie_break!r})"

    def _fractions(
        self, state: ClusterState, idx: np.ndarray, demand: Demand
    ) -> tuple[np.ndarray, np.ndarray]:
        """(requested/capacity after placing [F, 3], active resource weight [F, 3])."""
        cap = np.stack(
            [
                state.node_cpu_milli[idx],
                state.node_memory_mib[idx],
                state.node_gpus[idx].astype(np.int64) * GPU_MILLI,
            ],
            axis=1,
        ).astype(np.float64)
        free = np.stack(
            [state.cpu_free_milli[idx], state.mem_free_mib[idx], state.gpu_free_total[idx]], axis=1
        ).astype(np.float64)
        need = np.array([demand.cpu_milli, demand.memory_mib, demand.gpu_milli_total], dtype=np.float64)
        requested = cap - free + need
        weight = np.where(cap > 0, self.weights, 0.0)
        if demand.num_gpu == 0:
            weight[:, 2] = 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(cap > 0, np.minimum(requested / np.where(cap > 0, cap, 1.0), 1.0), 0.0)
        return frac, weight

    @abc.abstractmethod
    def _scores(self, frac: np.ndarray, weight: np.ndarray) -> np.ndarray: ...

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        idx = np.flatnonzero(state.feasible(demand))
        if not idx.size:
            return -1
        scores = self._scores(*self._fractions(state, idx, demand))
        if self.tie_break == "random":
            best = np.flatnonzero(scores == scores.max())
            return int(idx[best[rng.integers(best.size)]])
        return int(idx[np.argmax(scores)])


def _weighted_mean(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    total = weight.sum(axis=1)
    return np.where(total > 0, (values * weight).sum(axis=1) / np.where(total > 0, total, 1.0), 0.0)


class LeastAllocated(_KubernetesScorer):
    """kube-scheduler NodeResourcesFit, scoring strategy LeastAllocated (its default): score =
    weighted mean over resources of (capacity - requested) / capacity x 100, requested including the
    new pod; the highest score wins, so load spreads (kubernetes.io, "Resource Bin Packing";
    plugins/noderesources/least_allocated.go)."""

    name = "least_allocated"

    def _scores(self, frac: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return _weighted_mean((1.0 - frac) * 100.0, weight)


class MostAllocated(_KubernetesScorer):
    """kube-scheduler NodeResourcesFit, scoring strategy MostAllocated: score = weighted mean of
    requested / capacity x 100 (requested capped at capacity); favours full nodes, i.e. bin packing
    (kubernetes.io, "Resource Bin Packing"; plugins/noderesources/most_allocated.go)."""

    name = "most_allocated"

    def _scores(self, frac: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return _weighted_mean(frac * 100.0, weight)


class BalancedAllocation(_KubernetesScorer):
    """kube-scheduler NodeResourcesBalancedAllocation: score = (1 - std of the per-resource
    requested/capacity fractions after placing) x 100, population std over the resources the node
    has (for two resources |f1 - f2| / 2); favours nodes whose CPU, memory and GPU fill evenly
    (plugins/noderesources/balanced_allocation.go, ``balancedResourceScorer``, Kubernetes 1.24-1.32;
    idea from Huang et al., "An Energy Efficient Virtual Machine Placement Algorithm with Balanced
    Resource Utilization", 2013). Weights only select resources (> 0 = included), as in kube-scheduler."""

    name = "balanced_allocation"

    def _scores(self, frac: np.ndarray, weight: np.ndarray) -> np.ndarray:
        used = weight > 0
        n = used.sum(axis=1)
        safe_n = np.maximum(n, 1)
        mean = np.where(used, frac, 0.0).sum(axis=1) / safe_n
        var = np.where(used, (frac - mean[:, None]) ** 2, 0.0).sum(axis=1) / safe_n
        std = np.where(n >= 2, np.sqrt(var), 0.0)
        return (1.0 - std) * 100.0


class FragmentationGradientDescent(Placer):
    """Fragmentation Gradient Descent (Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing
    Workloads with Fragmentation Gradient Descent", USENIX ATC 2023, Sec. 4.2).

    For each feasible node, and for a GPU share each GPU of the node that can hold it, compute the
    increase of the node's FGD fragment measure (``ClusterState.node_fragment_milli``) that placing
    the demand would cause, and take the smallest: the placement that moves the cluster least
    towards fragmentation for the expected workload. Whole-GPU tasks take the lowest-index idle GPUs
    (as in the authors' simulator).

    The target workload is ``workload`` (a list of demand mappings with a ``popularity``) if given,
    else the demand types this placer has been asked to place since ``reset``, counted with the
    current one (the authors' simulator takes the distribution from the whole trace ahead of time;
    counting online needs no look-ahead). As in the authors' simulator (hkust-adsl/
    kubernetes-scheduler-simulator, ``GetTypicalPods``), only the "typical" types enter the measure:
    the most popular ones, taken ``increase_step`` at a time until they cover at least
    ``popularity_threshold`` of all tasks (defaults 10 and 0.6 there and here), popularities
    renormalised over them; ``popularity_threshold: 1.0`` keeps every type. Ties go to the lowest
    node index, then the GPU with the least free share, then the lowest GPU index; the simulator
    instead maps the decrease through a sigmoid to integer scores and lets kube-scheduler break
    ties at random.
    """

    name = "fgd"
    accepted_params = ("workload", "popularity_threshold", "increase_step")

    def __init__(
        self,
        workload: Sequence[Mapping[str, Any]] | None = None,
        popularity_threshold: float = 0.6,
        increase_step: int = 10,
        path: str = "placement",
    ) -> None:
        self.popularity_threshold = float(
            check_number(f"{path}.popularity_threshold", popularity_threshold, gt=0, le=1)
        )
        self.increase_step = int(check_number(f"{path}.increase_step", increase_step, ge=1, integer=True))
        self._fixed: list[tuple[Demand, float]] | None = None
        if workload is not None:
            if isinstance(workload, Mapping) or not isinstance(workload, Sequence):
                raise fail(f"{path}.workload", workload, "must be a list of demand mappings")
            pairs = []
            demand_keys = ("num_gpu", "gpu_milli", "gpu_type", "gpu_types", "cpu_milli", "memory_mib")
            for i, item in enumerate(workload):
                where = f"{path}.workload[{i}]"
                check_keys(where, item, (*demand_keys, "popularity"), required=("popularity",))
                fields = {k: v for k, v in item.items() if k != "popularity"}
                try:
                    demand = Demand(**fields)
                except ConfigError as err:
                    raise ConfigError(f"{where}: {err}") from None
                pairs.append((demand, item["popularity"]))
            TaskMix(pairs, path=f"{path}.workload")  # validates popularities
            self._fixed = pairs
        self.reset()

    def reset(self) -> None:
        self._types: list[Demand] = []
        self._type_index: dict[Demand, int] = {}
        self._counts = np.zeros(0, dtype=np.float64)
        self._typical: tuple[int, ...] = ()
        self._mix: TaskMix | None = None
        self._last: tuple[int, int, tuple[int, ...] | None] | None = None
        self._cache: dict[str, Any] | None = None
        if self._fixed is not None:
            for demand, popularity in self._fixed:
                self._count(demand, float(popularity))
            self._select_typical()

    def _count(self, demand: Demand, weight: float) -> None:
        key = demand.task_type()
        k = self._type_index.get(key)
        if k is None:
            k = len(self._types)
            self._type_index[key] = k
            self._types.append(key)
            self._counts = np.append(self._counts, 0.0)
        self._counts[k] += weight

    def _select_typical(self) -> TaskMix:
        counts = self._counts
        order = np.argsort(-counts, kind="stable")
        covered = np.cumsum(counts[order])
        needed = int(np.searchsorted(covered, self.popularity_threshold * covered[-1] * (1 - 1e-12))) + 1
        n_take = min(len(order), -(-needed // self.increase_step) * self.increase_step)
        typical = tuple(sorted(order[:n_take].tolist()))
        if typical != self._typical or self._mix is None:
            self._typical = typical
            self._mix = TaskMix._from_counts([self._types[k] for k in typical], counts[list(typical)])
        else:
            chosen = counts[list(typical)]
            self._mix.popularity = chosen / chosen.sum()
        return self._mix

    def _node_terms(self, state: ClusterState, mix: TaskMix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-node aggregates [N, U] and per-type fragments [N, K] for ``mix``, cached across calls:
        only nodes whose ``state.version`` moved since the last call are recomputed (a decision
        changes one node), the whole table when the state or the typical task types change."""
        cache = self._cache
        if cache is None or cache["mix"] is not mix or cache["state"]() is not state:
            rows = np.arange(state.n_nodes)
            cache = self._cache = {
                "mix": mix,
                "state": weakref.ref(state),
                "version": state.version.copy(),
                "count_u": np.zeros((state.n_nodes, len(mix.thresholds)), dtype=np.int64),
                "small_u": np.zeros((state.n_nodes, len(mix.thresholds)), dtype=np.int64),
                "frag": np.zeros((state.n_nodes, len(mix.types)), dtype=np.float64),
            }
        else:
            rows = np.flatnonzero(state.version != cache["version"])
        if rows.size:
            count_u, small_u = gpu_row_aggregates(state.gpu_free_milli[rows], mix.thresholds)
            ti = mix.threshold_index
            cache["count_u"][rows] = count_u
            cache["small_u"][rows] = small_u
            cache["frag"][rows] = fragment_per_type(
                mix,
                state.gpu_free_total[rows],
                count_u[:, ti],
                small_u[:, ti],
                state.cpu_free_milli[rows],
                state.mem_free_mib[rows],
                mix.type_ok(state)[rows],
            )
            cache["version"][rows] = state.version[rows]
        return cache["count_u"], cache["small_u"], cache["frag"]

    def _observe(self, demand: Demand) -> TaskMix:
        if self._fixed is not None:
            return self._mix
        self._count(demand, 1.0)
        return self._select_typical()

    def select(self, state: ClusterState, demand: Demand, rng: np.random.Generator) -> int:
        mix = self._observe(demand)
        self._last = None
        idx = np.flatnonzero(state.feasible(demand))
        if not idx.size:
            return -1
        ti = mix.threshold_index
        all_count_u, all_small_u, all_frag = self._node_terms(state, mix)
        rows = state.gpu_free_milli[idx]
        count_u, small_u = all_count_u[idx], all_small_u[idx]
        total = state.gpu_free_total[idx]
        cpu = state.cpu_free_milli[idx]
        mem = state.mem_free_mib[idx]
        type_ok = mix.type_ok(state)[idx]
        before = all_frag[idx] @ mix.popularity
        cpu_after = cpu - demand.cpu_milli
        mem_after = mem - demand.memory_mib
        if not demand.is_fractional:
            k = demand.num_gpu
            thr = mix.thresholds
            # k idle GPUs drop from 1000 to 0 free: they leave every count with threshold in (0, 1000]
            # and add nothing to the small sums (0 free).
            count_after = count_u - k * ((GPU_MILLI >= thr) & (thr > 0))
            after = fragment_from_aggregates(
                mix,
                total - demand.gpu_milli_total,
                count_after[:, ti],
                small_u[:, ti],
                cpu_after,
                mem_after,
                type_ok,
            )
            best = int(np.argmin(np.round(after - before, 6)))
            self._last = (id(state), int(idx[best]), None)
            return int(idx[best])
        # A share changes one GPU's free value a -> a - milli; GPUs of a node with equal a are
        # equivalent, so evaluate each distinct (node, a) once.
        milli = demand.gpu_milli
        f_idx, g_idx = np.nonzero(rows >= milli)
        a = rows[f_idx, g_idx].astype(np.int64)
        _, first = np.unique(f_idx * (GPU_MILLI + 1) + a, return_index=True)
        f_idx, g_idx, a = f_idx[first], g_idx[first], a[first]
        b = a - milli
        thr = mix.thresholds[None, :]
        a_ge, b_ge = a[:, None] >= thr, b[:, None] >= thr
        count_after = count_u[f_idx] - a_ge + b_ge
        small_after = small_u[f_idx] - np.where(a_ge, 0, a[:, None]) + np.where(b_ge, 0, b[:, None])
        after = fragment_from_aggregates(
            mix,
            total[f_idx] - milli,
            count_after[:, ti],
            small_after[:, ti],
            cpu_after[f_idx],
            mem_after[f_idx],
            type_ok[f_idx],
        )
        delta = np.round(after - before[f_idx], 6)
        order = np.lexsort((g_idx, a, f_idx, delta))
        best = order[0]
        node = int(idx[f_idx[best]])
        self._last = (id(state), node, (int(g_idx[best]),))
        return node

    def gpu_choice(self, state: ClusterState, demand: Demand, node: int) -> tuple[int, ...] | None:
        if self._last is not None and self._last[0] == id(state) and self._last[1] == node:
            return self._last[2]
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workload={'online' if self._fixed is None else 'fixed'})"


for _name, _cls in {
    "first_fit": FirstFit,
    "best_fit": BestFit,
    "worst_fit": WorstFit,
    "spread": WorstFit,
    "random": RandomFit,
    "packing": Packing,
    "least_allocated": LeastAllocated,
    "most_allocated": MostAllocated,
    "balanced_allocation": BalancedAllocation,
    "cache_aware": CacheAware,
    "spot_aware": SpotAware,
    "fgd": FragmentationGradientDescent,
}.items():
    PLACERS.register(_name, _cls)


def make_placer(spec: str | Mapping[str, Any] | Placer, path: str = "placement") -> Placer:
    """A placer from a name (``"first_fit"``), a mapping (``{"kind": "fgd", "workload": [...]}``) or
    an existing ``Placer`` (returned as is). Unknown kinds or parameters raise ``ConfigError``
    naming ``path`` and the bad value."""
    if isinstance(spec, Placer):
        return spec
    return PLACERS.build(spec, path)
