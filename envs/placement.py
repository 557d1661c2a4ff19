"""``InferGym/Placement-v0``: choose the node for each replica or job that must be placed on a GPU cluster.

One step is one item to place; the action is a node index, masked to the nodes where the item fits
(:meth:`envs.sim.cluster.ClusterState.feasible`). Items come from one of two sources: the replicas
that an LLM scenario's autoscaler asks for while the :class:`~envs.sim.engine.Simulator` serves the
scenario's requests (``source="llm"``), or the jobs of a trace in the Alibaba GPU-sharing cluster
trace format, real or synthetic (``source="jobs"``), which arrive at their creation time and leave
at their deletion time. :class:`PlacerPolicy` runs any classical placer of
:mod:`baselines.placement` through this action space, so learned and classical placement are
measured by the same environment.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from envs.common import check_action, split_kwargs, weighted_reward
from envs.sim.clock import ControlClock
from envs.sim.cluster import GPU_MILLI, ClusterState, Demand, TaskMix, refresh_fragments
from envs.sim.config import ControllerSpec
from envs.sim.controllers import PLACERS, SCALERS
from envs.sim.engine import Simulator
from envs.sim.errors import check_choice, check_keys, check_number, fail
from envs.sim.jobtrace import SYNTHETIC_NODE_SHAPES, JobTrace, read_alibaba_trace, synthetic_job_trace

__all__ = ["ENV_PARAMS", "LLM_FALLBACK_SCALER", "PlacementEnv", "PlacementParams", "PlacerPolicy"]

ENV_NAME = "PlacementEnv"

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
        check_choice("source", self.source, ("llm", "jobs"))
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


class _FgdTracker:
    """The FGD fragmentation (Weng et al., USENIX ATC 2023) of a cluster for the task mix seen so far.

    Equals ``cluster.fragmented_gpu_milli(TaskMix(seen))`` where ``seen`` pairs every task type
    offered this episode with its count. The per-node, per-type fragments F_n(m) of the episode's
    task types (known at reset; unseen ones weigh 0) and their column sums are kept current by
    recomputing only the nodes whose ``ClusterState.version`` moved, in one compiled call
    (``refresh_fragments``). Fragments are whole milli-GPU, so the float sums are exact.
    """

    def start(self, cluster: ClusterState, types: Sequence[Demand]) -> None:
        """Begin an episode on ``cluster`` whose items have the distinct task types ``types``."""
        self.cluster = cluster
        # Popularity is unused: the counts of items seen weigh the types.
        self.mix = TaskMix([(t, 1.0) for t in types]) if types else None
        self.counts = np.zeros(len(types))
        self.total = 0.0
        self.version = np.full(cluster.n_nodes, -1, dtype=np.int64)
        self.frag = np.zeros((cluster.n_nodes, len(types)))
        self.col_sum = np.zeros(len(types))

    def see(self, col: int) -> None:
        self.counts[col] += 1.0
        self.total += 1.0

    def value(self) -> float:
        """FGD fragmentation in milli-GPU over the mix seen (0.0 before any item)."""
        if self.total == 0.0:
            return 0.0
        c, mix = self.cluster, self.mix
        refresh_fragments(
            c.version,
            self.version,
            c.gpu_free_milli,
            c.gpu_free_total,
            c.cpu_free_milli,
            c.mem_free_mib,
            mix.type_ok(c),
            mix.gpu_task,
            mix.num_gpu,
            mix.threshold,
            mix.cpu_milli,
            mix.memory_mib,
            self.frag,
            self.col_sum,
        )
        return float(self.col_sum @ self.counts) / self.total


class PlacementEnv(gym.Env):
    """Place replicas or jobs on the nodes of a heterogeneous GPU cluster.

    ## Description

    A cluster of nodes, each with a number of GPUs of one type (or none), CPU and memory, receives
    items to place one at a time. An item asks for ``num_gpu`` whole GPUs, or a share (``gpu_milli``
    < 1000 milli-GPU) of one GPU, or no GPU, plus CPU and memory, and may be restricted to some GPU
    types (the model of the Alibaba GPU-sharing trace; Weng et al., "Beware of Fragmentation",
    USENIX ATC 2023). Within the chosen node the cluster takes its default GPUs: the lowest-index
    idle GPUs for whole-GPU items, the best-fitting GPU for a share.

    Two sources of items (argument ``source``):

    * ``"llm"`` (default): the scenario's LLM service runs in the simulator with the scenario's
      router. At each control interval the scaler (argument ``scaler``; default the scenario's
      ``scaling``, and ``LLM_FALLBACK_SCALER`` = HPA on 48 in-flight requests per replica when that is
      ``static``) is asked for its desired replicas; every replica beyond the provisioned ones is one
      step (``Simulator.add_replica(model, node=action)``; its demand is
      ``Simulator.replica_demand(model)``), scale-downs are applied directly. While nothing waits,
      the simulation runs interval by interval. The replicas the scenario starts with are placed by
      the scenario's placer before the first step.
    * ``"jobs"``: the jobs of a trace in the Alibaba GPU-sharing trace format (``pods_path`` and
      ``nodes_path``), or, without them, a synthetic trace drawn from the environment's generator at
      every reset (``envs.sim.jobtrace.synthetic_job_trace`` with ``n_nodes``, ``n_jobs``,
      ``mean_interarrival_s``, ``mean_duration_s``). Each step places the next job in creation order;
      the clock first moves to its creation time and every placed job whose deletion time has come
      (``deletion_s <= now``) releases its resources. A rejected job is dropped, not retried.

    ## Action Space

    ``Discrete(n_nodes)``: the node to place the waiting item on. ``action_masks()`` is True exactly
    where ``ClusterState.feasible(item)`` is (all False when the item fits nowhere; all True when no
    item waits, at the final observation). A masked action is accepted but the item is rejected: it
    costs a placement failure and, if some node could have taken the item, an invalid action. An
    action outside ``[0, n_nodes)`` raises ValueError.

    ## Observation Space

    ``Box(0, 1, (n_nodes * (7 + T) + 5 + T,), float32)``, T = number of GPU types (the scenario's
    GPU types; a trace's type names; the 5 synthetic types ``SYNTHETIC_GPU_TYPES``). Node ``n``'s
    features start at ``n * (7 + T)``; the item's at ``I = n_nodes * (7 + T)``. Every feature is a
    ratio in [0, 1] (unit 1):

    ===============  ==========================================================================  ===  ===
    index            meaning                                                                     min  max
    ===============  ==========================================================================  ===  ===
    n(7+T) + 0       idle GPUs / GPUs of the node (0 for a node without GPUs)                    0    1
    n(7+T) + 1       free milli-GPU summed over the node / (1000 x GPUs of the node)             0    1
    n(7+T) + 2       largest free share on one GPU of the node / 1000                            0    1
    n(7+T) + 3 + t   node's GPU type is t (one-hot; all 0 for a node without GPUs)               0    1
    n(7+T) + 3 + T   the item's model weights are on the node's disk within the cache TTL (llm)  0    1
    n(7+T) + 4 + T   the node holds at least one live allocation ("powered on")                  0    1
    n(7+T) + 5 + T   free CPU / node CPU (1 in the llm source: CPU is not modelled there)        0    1
    n(7+T) + 6 + T   free memory / node memory (1 in the llm source)                             0    1
    I + 0            an item waits (0 only in the final observation)                             0    1
    I + 1            item's GPUs / most GPUs of any node (clipped)                               0    1
    I + 2            item's share of each GPU: gpu_milli / 1000 (1 whole GPUs, 0 CPU-only)      0    1
    I + 3 + t        item may run on GPU type t (multi-hot; all 0 = any type)                    0    1
    I + 3 + T        item's CPU / largest node CPU (clipped; 0 in the llm source)                0    1
    I + 4 + T        item's memory / largest node memory (clipped; 0 in the llm source)          0    1
    ===============  ==========================================================================  ===  ===

    ## Rewards

    Reward = -(sum of ``scenario.reward[term] x term``) over these per-step costs, reported in
    ``info["rewards"]``:

    * ``placement_failures`` (items, 0 or 1): the item was rejected (no room on the chosen node).
    * ``invalid_actions`` (actions, 0 or 1): the chosen node was masked while another node could
      have taken the item.
    * ``fragmented_gpus`` (fraction of all GPUs): ``ClusterState.fragmented_gpus()`` (free capacity
      stranded on partly used GPUs, in GPUs) / total GPUs, right after this step's placement, before
      the clock moves on. A level, not an increase: its sum over an episode is the fragmentation
      integrated over decisions, like ``gpus_in_use``.
    * ``gpus_in_use`` (fraction of all GPUs): GPUs with any allocation / total GPUs, right after the
      placement: the operator's "GPUs powered on" cost.
    * ``llm`` source only, over the control intervals the simulation ran after this step (0 while
      more items wait at the same instant): ``slo_violations`` (sum over those intervals of each
      interval's 1 - ``slo_attainment``, a fraction of requests per interval) and ``gpu_cost``
      (US dollars of GPU time allocated in them, ``cost_usd``).

    Optional potential-based shaping for training (argument ``shaping = H >= 0``; default 0, off):
    the reward also gets ``Phi(s) - Phi(s')`` with the cost potential ``Phi = H x (w_frag x FGD
    fragmentation in GPUs + w_use x GPUs in use) / total GPUs`` (``w_*`` the scenario's weights of
    ``fragmented_gpus`` and ``gpus_in_use``; FGD fragmentation is ``fgd_fragmentation_milli`` / 1000,
    the measure FGD minimises) and ``Phi = 0`` after the last step. A placement's level costs are
    paid over the whole life of the item, hundreds of steps; with ``H`` about the number of steps
    an item stays (mean duration / mean inter-arrival time for jobs) the shaping charges them at
    once. The terms telescope: an episode's shaped return is its unshaped return plus ``Phi`` of
    the start state (0 for the jobs source, which starts empty). The term is ``info["shaping"]``,
    not among ``info["rewards"]``; evaluate without it.

    ``info["kpi"]`` after every step (and reset): ``time_s`` (clock, s), ``items`` (offered so far,
    the waiting one included), ``placed``, ``failures``, ``invalid_actions`` (counts this episode),
    ``fragmented_gpus`` (GPUs), ``fgd_fragmentation_milli`` (the FGD measure
    ``ClusterState.fragmented_gpu_milli`` for the mix of task types offered so far, milli-GPU),
    ``gpus_in_use``, ``nodes_in_use``, ``live_allocations`` (counts now).

    ## Starting State

    ``llm``: the scenario's initial replicas, placed by its placer, and the simulation run to the
    first control interval where a replica is wanted. ``jobs``: an empty cluster and the first job.
    If no item ever comes (no scale-up before the horizon, an empty trace), the first observation is
    already the final one.

    ## Episode End

    ``terminated`` is always False: nothing ends the task early. ``truncated`` is True on the step
    after which no item remains: ``llm`` at the horizon ``scenario.horizon_s`` (the scaler is not
    asked at the horizon itself), ``jobs`` when the trace (or ``max_jobs`` jobs) is exhausted; the
    ``jobs`` source has its own clock and ignores ``horizon_s``. A step taken when no item waits
    (the final observation) places nothing, costs nothing and truncates.

    ## Arguments

    ``gym.make("InferGym/Placement-v0", scenario="default", render_mode=None, **kwargs)``. Own
    arguments (``PlacementParams``): ``source`` ("llm" | "jobs"), ``scaler`` (llm; a scaler name or
    mapping), ``pods_path``/``nodes_path`` (jobs; Alibaba trace CSVs), ``n_nodes`` (32), ``n_jobs``
    (1000), ``mean_interarrival_s`` (20), ``mean_duration_s`` (3600) (jobs, synthetic trace),
    ``max_jobs`` (jobs; cap on the jobs per episode), ``shaping`` (training reward shaping, see
    Rewards; default 0). The synthetic defaults keep about 180 jobs
    (~0.95 GPU each on average) alive on the ~205 GPUs of 32 synthetic nodes, so the cluster runs
    near full and placement decides rejections (about 3 % under best fit, 5 % under spread). Any
    other keyword is a scenario key (``horizon_s``, ``reward``, ...) merged into the scenario;
    unknown keywords raise ConfigError.
    ``render_mode="rgb_array"``: an occupancy heat map and fragmentation over time.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any) -> None:
        self.scenario, own = split_kwargs(scenario, kwargs, ENV_PARAMS, ENV_NAME)
        self.params = p = PlacementParams(**own)
        if render_mode is not None:
            check_choice("render_mode", render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self._file_trace: JobTrace | None = None
        if p.source == "llm":
            sc = self.scenario
            if sc.routing.kind == "external":
                raise fail(
                    "routing", "external", "needs an external router (the Routing env); pick a built-in one"
                )
            self._scaler_spec = p.scaler
            if self._scaler_spec is None:
                self._scaler_spec = (
                    LLM_FALLBACK_SCALER if sc.scaling.kind == "static" else sc.scaling.as_config()
                )
            # Fail at construction, not at the first reset (names resolve through the core's registry).
            SCALERS.build(self._scaler_spec, "scaler")
            self.type_names = tuple(g.name for g in sc.gpu_types)
            n_nodes = sum(pool.count for pool in sc.nodes)
            self._max_gpus = max(pool.gpus_per_node for pool in sc.nodes)
            self._max_cpu = self._max_mem = 1  # replicas ask for no CPU or memory
        else:
            if p.pods_path is not None:
                self._file_trace = read_alibaba_trace(p.pods_path, p.nodes_path)
                tr = self._file_trace
                self.type_names = tr.gpu_type_names
                n_nodes = tr.n_nodes
                self._max_gpus = int(tr.node_gpus.max()) if n_nodes else 0
                self._max_cpu = int(tr.node_cpu_milli.max()) if n_nodes else 0
                self._max_mem = int(tr.node_memory_mib.max()) if n_nodes else 0
            else:
                self.type_names = SYNTHETIC_GPU_TYPES
                n_nodes = int(p.synthetic("n_nodes"))
                self._max_gpus = max(s[1] for s in SYNTHETIC_NODE_SHAPES)
                self._max_cpu = max(s[2] for s in SYNTHETIC_NODE_SHAPES)
                self._max_mem = max(s[3] for s in SYNTHETIC_NODE_SHAPES)
            if n_nodes == 0:
                raise fail("nodes_path", p.nodes_path, "must list at least one node")
        self.n_nodes = n_nodes
        self._type_pos = {name: t for t, name in enumerate(self.type_names)}
        t = len(self.type_names)
        self._node_dim = N_NODE_BASE + t
        self._item_dim = N_ITEM_BASE + t
        dim = n_nodes * self._node_dim + self._item_dim
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(dim,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(n_nodes)
        self._fgd = _FgdTracker()
        self._item_cache: dict[tuple, tuple[Demand, np.ndarray]] = {}
        self.episode_index = -1
        self.sim: Simulator | None = None
        self.cluster: ClusterState | None = None
        self.pending_demand: Demand | None = None

    # ------------------------------------------------------------------ reset

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        if options:
            check_keys("options", options, ())
        self.episode_index += 1
        self._placed = self._failures = self._invalid = self._items = 0
        self._terms_zero = {"placement_failures": 0.0, "invalid_actions": 0.0, "fragmented_gpus": 0.0,
                            "gpus_in_use": 0.0}  # fmt: skip
        if self.params.source == "llm":
            self._terms_zero.update(slo_violations=0.0, gpu_cost=0.0)
            self._reset_llm()
        else:
            self._reset_jobs()
        self._total_gpus_n = self.cluster.total_gpus()
        self._total_gpus = max(self._total_gpus_n, 1)
        self._history: list[tuple[float, float, int]] = []
        frag, in_use = self._usage()
        self._record(frag, in_use)
        kpi = self._kpi(frag, in_use)
        self._phi = self._potential(kpi) if self.params.shaping > 0.0 else 0.0
        return self._observe(), {"kpi": kpi}

    def _prepare_cluster(self, cluster: ClusterState, types: Sequence[Demand]) -> None:
        """Per-episode constants of the observation (capacities, type one-hot, normalisers) and the
        FGD tracker over the episode's task types ``types``."""
        self.cluster = c = cluster
        gpus = c.node_gpus.astype(np.float64)
        has = gpus > 0
        self._inv_gpus = np.where(has, 1.0 / np.where(has, gpus, 1.0), 0.0)
        self._inv_cap = self._inv_gpus / GPU_MILLI
        self._inv_cpu = np.where(c.node_cpu_milli > 0, 1.0 / np.maximum(c.node_cpu_milli, 1), 0.0)
        self._inv_mem = np.where(c.node_memory_mib > 0, 1.0 / np.maximum(c.node_memory_mib, 1), 0.0)
        self._buf = np.zeros(self.observation_space.shape, dtype=np.float32)
        self._obs_version = np.full(c.n_nodes, -1, dtype=np.int64)  # node versions the buffer shows
        nodes = self._node_block()
        typed = np.flatnonzero(c.node_gpu_type >= 0)
        nodes[typed, 3 + c.node_gpu_type[typed]] = 1.0
        self._fgd.start(c, types)

    def _item(self, key: tuple) -> tuple[Demand, np.ndarray]:
        """(Demand, item features) of an item key (num_gpu, gpu_milli, cpu_milli, memory_mib,
        gpu_types, model), cached across episodes: traces repeat a few hundred shapes."""
        hit = self._item_cache.get(key)
        if hit is None:
            num, milli, cpu, mem, types, model = key
            d = Demand(
                num_gpu=num, gpu_milli=milli, cpu_milli=cpu, memory_mib=mem, gpu_types=types, model=model
            )
            vec = np.zeros(self._item_dim, dtype=np.float32)
            t = len(self.type_names)
            vec[0] = 1.0
            if self._max_gpus:
                vec[1] = min(d.num_gpu / self._max_gpus, 1.0)
            vec[2] = d.gpu_milli / GPU_MILLI if d.num_gpu > 0 else 0.0
            for g in d.gpu_types:
                vec[3 + g] = 1.0
            vec[3 + t] = min(d.cpu_milli / max(self._max_cpu, 1), 1.0)
            vec[4 + t] = min(d.memory_mib / max(self._max_mem, 1), 1.0)
            hit = self._item_cache[key] = (d, vec)
        return hit

    def _episode_items(
        self, keys: Sequence[tuple]
    ) -> tuple[list[tuple[Demand, np.ndarray, int]], list[Demand]]:
        """(Demand, features, FGD column) per key, and the distinct task types the columns number."""
        by_key: dict[tuple, tuple[Demand, np.ndarray, int]] = {}
        cols: dict[Demand, int] = {}
        for key in keys:
            if key not in by_key:
                d, vec = self._item(key)
                by_key[key] = (d, vec, cols.setdefault(d.task_type(), len(cols)))
        return [by_key[k] for k in keys], list(cols)

    def _reset_jobs(self) -> None:
        p = self.params
        tr = self._file_trace
        if tr is None:
            tr = synthetic_job_trace(
                self.np_random,
                n_nodes=int(p.synthetic("n_nodes")),
                n_jobs=int(p.synthetic("n_jobs")),
                mean_interarrival_s=float(p.synthetic("mean_interarrival_s")),
                mean_duration_s=float(p.synthetic("mean_duration_s")),
            )
        remap = np.array([self._type_pos[name] for name in tr.gpu_type_names] + [-1], dtype=np.int64)
        cluster = ClusterState(
            self.type_names,
            remap[tr.node_gpu_type],
            tr.node_gpus,
            tr.node_cpu_milli,
            tr.node_memory_mib,
            node_names=tr.node_names,
        )
        n = tr.n_jobs if p.max_jobs is None else min(tr.n_jobs, int(p.max_jobs))
        rmap = remap.tolist()
        keys = zip(
            tr.num_gpu[:n].tolist(),
            tr.gpu_milli[:n].tolist(),
            tr.cpu_milli[:n].tolist(),
            tr.memory_mib[:n].tolist(),
            tr.job_gpu_types[:n],
            strict=True,
        )
        self._jobs, types = self._episode_items(
            [
                (num, milli, cpu, mem, tuple(sorted([rmap[g] for g in types])) if types else (), -1)
                for num, milli, cpu, mem, types in keys
            ]
        )
        self._creation = tr.creation_s[:n].tolist()
        self._deletion = tr.deletion_s[:n].tolist()
        self._n_items = n
        self._live: list[tuple[float, int, Any]] = []  # heap of (deletion_s, job, Allocation)
        self._prepare_cluster(cluster, types)
        self.now_s = self._creation[0] if n else 0.0
        self._next_job(0)

    def _next_job(self, i: int) -> None:
        """Make job ``i`` the waiting item (or none past the end), releasing jobs that ended by then."""
        self._job = i
        if i >= self._n_items:
            self._set_item(None)
            return
        now = self._creation[i]
        live, cluster = self._live, self.cluster
        while live and live[0][0] <= now:
            cluster.release(heapq.heappop(live)[2])
        self.now_s = now
        self._set_item(self._jobs[i])

    def _reset_llm(self) -> None:
        sc = self.scenario
        self.sim = sim = Simulator(sc, seed=self.np_random, scaler=self._scaler_spec)
        keys = []
        for m in range(sim.n_models):
            d = sim.replica_demand(m)
            keys.append((d.num_gpu, d.gpu_milli, d.cpu_milli, d.memory_mib, d.gpu_types, m))
        self._llm_items, types = self._episode_items(keys)
        self._prepare_cluster(sim.cluster, types)
        self._ttl_s = sc.storage.cache_ttl_s
        self.clock = ControlClock(sim)
        self._pending: deque[int] = deque()
        self._done = False
        self._advance_llm()
        self.now_s = sim.now
        self._set_item(self._llm_items[self._pending[0]] if self._pending else None)

    def _advance_llm(self) -> tuple[float, float]:
        """Run control intervals until a replica is wanted or the horizon; (sum of 1 - SLO attainment,
        GPU cost in $) over the intervals run."""
        sim = self.sim
        slo_violations = cost = 0.0
        while not self._pending and not self._done:
            self.clock.advance()
            at_horizon = self.clock.at_last_boundary
            want = None if at_horizon else sim.desired_replicas()
            kpis = sim.interval_kpis()
            slo_violations += 1.0 - kpis["slo_attainment"]
            cost += kpis["cost_usd"]
            if at_horizon:
                self._done = True
                break
            for m, w in enumerate(want.tolist()):
                counts = sim.replicas_of(m)
                have = counts["ready"] + counts["loading"]
                if w > have:
                    self._pending.extend([m] * (w - have))
                elif w < have:
                    sim.set_target_replicas(m, w)
        return slo_violations, cost

    def _set_item(self, item: tuple[Demand, np.ndarray, int] | None) -> None:
        if item is None:
            self.pending_demand = None
            self._item_vec = None
            self._mask = np.ones(self.n_nodes, dtype=bool)
            self._mask_any = False
            return
        d, self._item_vec, col = item
        self.pending_demand = d
        self._items += 1
        self._fgd.see(col)
        self._mask = self.cluster.feasible(d)
        self._mask_any = bool(self._mask.any())

    # ------------------------------------------------------------------ step

    @property
    def obs_layout(self) -> dict[str, int]:
        """Where the per-node features sit in the observation (for slot-structured policies)."""
        return {"slots_start": 0, "n_slots": self.n_nodes, "slot_dim": self._node_dim}

    def action_masks(self) -> np.ndarray:
        """bool[n_nodes]: the nodes that can take the waiting item now (all True when none waits)."""
        return self._mask.copy()

    def step(self, action: Any):
        if type(action) is int and 0 <= action < self.n_nodes:
            node = action
        else:
            node = int(check_action(self.action_space, action, ENV_NAME))
        terms = dict(self._terms_zero)
        d = self.pending_demand
        if d is None:
            return self._observe(), 0.0, False, True, {"rewards": terms, "kpi": self._kpi(*self._usage())}
        ok = bool(self._mask[node])
        llm = self.params.source == "llm"
        if llm:
            m = self._pending.popleft()
            # A masked node is still handed to the simulator, which rejects it and counts the failure.
            ok = self.sim.add_replica(m, node=node)
        elif ok:
            alloc = self.cluster.allocate(node, d)
            deletion = self._deletion[self._job]
            if deletion < math.inf:
                heapq.heappush(self._live, (deletion, self._job, alloc))
        if ok:
            self._placed += 1
        else:
            self._failures += 1
            terms["placement_failures"] = 1.0
            if self._mask_any:
                self._invalid += 1
                terms["invalid_actions"] = 1.0
        frag, in_use = self._usage()
        terms["fragmented_gpus"] = frag / self._total_gpus
        terms["gpus_in_use"] = in_use / self._total_gpus
        if llm:
            if not self._pending:
                terms["slo_violations"], terms["gpu_cost"] = self._advance_llm()
            self.now_s = self.sim.now
            self._set_item(self._llm_items[self._pending[0]] if self._pending else None)
        else:
            self._next_job(self._job + 1)
        frag, in_use = self._usage()  # after the clock moved: the state the observation shows
        self._record(frag, in_use)
        truncated = self.pending_demand is None
        reward = weighted_reward(terms, self.scenario.reward)
        info = {"rewards": terms, "kpi": self._kpi(frag, in_use)}
        if self.params.shaping > 0.0:
            phi = 0.0 if truncated else self._potential(info["kpi"])  # the end state's potential is 0
            info["shaping"] = shaped = self._phi - phi
            self._phi = phi
            reward += shaped
        return self._observe(), reward, False, truncated, info

    def _potential(self, kpi: Mapping[str, float]) -> float:
        """The shaping potential (a cost) from the state's KPIs: ``shaping`` steps of the fragmentation
        and GPUs-in-use costs at the current levels, fragmentation measured by FGD (see Rewards)."""
        w = self.scenario.reward
        frag = kpi["fgd_fragmentation_milli"] / GPU_MILLI
        level = w["fragmented_gpus"] * frag + w["gpus_in_use"] * kpi["gpus_in_use"]
        return self.params.shaping * level / self._total_gpus

    def reward_from_terms(self, terms: Mapping[str, float]) -> float:
        """The reward of a step with cost terms ``terms`` (minus their weighted sum)."""
        return weighted_reward(terms, self.scenario.reward)

    # ------------------------------------------------------------------ observation and KPIs

    def _node_block(self) -> np.ndarray:
        # A fresh view each time: a view stored as an attribute would not survive pickling as one.
        return self._buf[: self.n_nodes * self._node_dim].reshape(self.n_nodes, self._node_dim)

    def _observe(self) -> np.ndarray:
        c, nodes, t = self.cluster, self._node_block(), len(self.type_names)
        if self.sim is None:
            # jobs: no node feature depends on the item or the clock, so only the nodes whose
            # version moved since the last observation change (usually one or two)
            rows = np.flatnonzero(c.version != self._obs_version)
            if len(rows) <= 4:
                for n in rows.tolist():
                    self._node_row(nodes, n, t)
                    self._obs_version[n] = c.version[n]
                self._item_block()
                return self._buf.copy()
            self._obs_version[:] = c.version
        nodes[:, 0] = c.gpu_full_free * self._inv_gpus
        nodes[:, 1] = c.gpu_free_total * self._inv_cap
        nodes[:, 2] = np.maximum(c.gpu_max_free, 0) * (1.0 / GPU_MILLI)
        d = self.pending_demand
        if d is not None and d.model >= 0 and self.sim is not None:
            m = d.model
            nodes[:, 3 + t] = c.cached[:, m] & (self.now_s - c.cached_at[:, m] <= self._ttl_s)
        else:
            nodes[:, 3 + t] = 0.0
        nodes[:, 4 + t] = c.node_alloc_count > 0
        nodes[:, 5 + t] = c.cpu_free_milli * self._inv_cpu
        nodes[:, 6 + t] = c.mem_free_mib * self._inv_mem
        self._item_block()
        # Every feature is free / capacity with free <= capacity, or a 0/1 flag: in [0, 1] without a
        # clip (x * (1 / y) for x <= y overshoots 1 by at most 2 float64 ulps, which float32 rounds away).
        return self._buf.copy()

    def _node_row(self, nodes: np.ndarray, n: int, t: int) -> None:
        """Node ``n``'s features of the jobs source (the cache feature stays 0), with the same float64
        operations per element as the column-wise update in ``_observe``."""
        c = self.cluster
        row = nodes[n]
        row[0] = c.gpu_full_free[n] * self._inv_gpus[n]
        row[1] = c.gpu_free_total[n] * self._inv_cap[n]
        row[2] = max(c.gpu_max_free[n], 0) * (1.0 / GPU_MILLI)
        row[4 + t] = c.node_alloc_count[n] > 0
        row[5 + t] = c.cpu_free_milli[n] * self._inv_cpu[n]
        row[6 + t] = c.mem_free_mib[n] * self._inv_mem[n]

    def _item_block(self) -> None:
        item = self._buf[self.n_nodes * self._node_dim :]
        if self._item_vec is None:
            item[:] = 0.0
        else:
            item[:] = self._item_vec

    def _usage(self) -> tuple[float, int]:
        """(``ClusterState.fragmented_gpus()``, ``ClusterState.gpus_in_use()``) from the cluster's
        sums: a GPU is in use unless wholly free, and the stranded free share is all free milli
        minus that of the wholly free GPUs."""
        c = self.cluster
        full = c.idle_gpus
        return (c.free_gpu_milli - GPU_MILLI * full) / GPU_MILLI, self._total_gpus_n - full

    def _record(self, frag: float, in_use: int) -> None:
        self._history.append((self.now_s, frag, in_use))

    def _kpi(self, frag: float, in_use: int) -> dict[str, float]:
        c = self.cluster
        return {
            "time_s": float(self.now_s),
            "items": float(self._items),
            "placed": float(self._placed),
            "failures": float(self._failures),
            "invalid_actions": float(self._invalid),
            "fragmented_gpus": float(frag),
            "fgd_fragmentation_milli": self._fgd.value(),
            "gpus_in_use": float(in_use),
            "nodes_in_use": float(c.nodes_in_use()),
            "live_allocations": float(c.live_allocations),
        }

    # ------------------------------------------------------------------ render

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        c = self.cluster
        g = c.gpu_free_milli
        used = np.ma.masked_less(np.where(g >= 0, 1.0 - g / GPU_MILLI, -1.0), 0.0)
        fig = Figure(figsize=(10, 6), dpi=80)
        canvas = FigureCanvasAgg(fig)
        ax_map, ax_ts = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1.2, 1.0]})
        im = ax_map.imshow(used.T, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                           interpolation="nearest")  # fmt: skip
        ax_map.set_facecolor("#dddddd")  # absent GPU slots (CPU-only or smaller nodes)
        ax_map.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_map.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax_map.set_xlabel("node")
        ax_map.set_ylabel("GPU slot")
        ax_map.set_title(f"GPU occupancy at t = {self.now_s:,.0f} s (grey: no GPU)")
        fig.colorbar(im, ax=ax_map, label="allocated fraction of GPU")
        hist = np.array(self._history, dtype=np.float64).reshape(-1, 3)
        ax_ts.step(hist[:, 0], hist[:, 2], where="post", color="tab:blue", label="GPUs in use")
        ax_ts.step(
            hist[:, 0],
            hist[:, 1],
            where="post",
            color="tab:red",
            label="fragmented GPUs (stranded free share)",
        )
        ax_ts.set_xlabel("time (s)")
        ax_ts.set_ylabel("GPUs")
        ax_ts.set_ylim(bottom=0.0, top=max(1.0, float(c.total_gpus())) * 1.05)
        ax_ts.legend(loc="best", fontsize="small")
        ax_ts.grid(alpha=0.3)
        if self.params.source == "llm":
            source = f"replicas of scenario {self.scenario.name!r}"
        else:
            source = "synthetic job trace" if self._file_trace is None else "Alibaba-format job trace"
        fig.suptitle(f"Placement-v0, {source}: {self._placed} placed, {self._failures} rejected")
        fig.tight_layout()
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


class PlacerPolicy:
    """A classical placer of :mod:`baselines.placement` acting through ``PlacementEnv``'s action space.

    ``PlacerPolicy("best_fit")`` (any ``make_placer`` spec: a name, a mapping with ``kind``, a
    ``Placer``) answers with ``placer.select(env.cluster, env.pending_demand, rng)``, the node the
    placer would choose; when no node fits it answers 0 (the item is rejected whatever the action).
    Within the node the environment takes the cluster's default GPUs, so FGD's own GPU choice for a
    share is not reproduced (its node choice is). The placer is reset at every new episode of the
    environment. ``rng`` is the policy's own generator (seeded by ``seed``), never the
    environment's, so running a policy does not change the environment's randomness.

    Use ``act(env)`` (or bind the env and call ``predict(obs)`` like a stable-baselines3 model).
    """

    def __init__(self, spec: Any, env: gym.Env | None = None, seed: int = 0) -> None:
        self.placer = PLACERS.build(spec, "policy")
        self.rng = np.random.default_rng(seed)
        self.env = env
        self._episode: tuple[int, int] | None = None

    def reset(self, seed: int | None = None) -> None:
        """Reset the placer's memory (and reseed the policy's generator if ``seed`` is given)."""
        self.placer.reset()
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def act(self, env: gym.Env | None = None) -> int:
        """The node the placer chooses for the waiting item of ``env`` (or the bound env)."""
        env = env if env is not None else self.env
        if env is None:
            raise ValueError("PlacerPolicy: no environment; pass env to act() or the constructor")
        base = env.unwrapped
        if not isinstance(base, PlacementEnv):
            raise ValueError(f"PlacerPolicy: env must be a PlacementEnv, got {type(base).__name__}")
        episode = (id(base), base.episode_index)
        if episode != self._episode:
            self.placer.reset()
            self._episode = episode
        demand = base.pending_demand
        if demand is None:
            return 0
        node = self.placer.select(base.cluster, demand, self.rng)
        return int(node) if node >= 0 else 0

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Sequence[bool] | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """stable-baselines3-style ``predict`` on the bound environment (the observation is unused)."""
        return np.asarray(self.act(), dtype=np.int64), state

    def __repr__(self) -> str:
        return f"PlacerPolicy({self.placer!r})"
