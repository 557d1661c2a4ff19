"""Placement-v0's ``jobs`` source: the jobs of a trace in the Alibaba GPU-sharing cluster trace format,
read from its CSV files or drawn synthetically at every reset, placed in creation order on a cluster
that releases each job at its deletion time. No requests are simulated, so a step is cheap and the
observation is updated only for the nodes that changed."""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

from envs.placement.base import PlacementEnv
from envs.placement.params import SYNTHETIC_GPU_TYPES
from envs.sim.cluster import GPU_MILLI, ClusterState, Demand
from envs.sim.errors import fail
from envs.sim.jobtrace import SYNTHETIC_NODE_SHAPES, JobTrace, read_alibaba_trace, synthetic_job_trace


class JobPlacementEnv(PlacementEnv):
    """Place the jobs of an Alibaba-format GPU job trace (``source="jobs"``).

    ## Description

    The jobs of a trace in the Alibaba GPU-sharing trace format (``pods_path`` and ``nodes_path``),
    or, without them, a synthetic trace drawn from the environment's generator at every reset
    (``envs.sim.jobtrace.synthetic_job_trace`` with ``n_nodes``, ``n_jobs``,
    ``mean_interarrival_s``, ``mean_duration_s``). Each step places the next job in creation order;
    the clock first moves to its creation time and every placed job whose deletion time has come
    (``deletion_s <= now``) releases its resources. A rejected job is dropped, not retried. The
    cluster model, masks and costs are those of :class:`~envs.placement.base.PlacementEnv`.

    ## Action Space

    As :class:`~envs.placement.base.PlacementEnv`: ``Discrete(n_nodes)`` over the trace's nodes.

    ## Observation Space

    As :class:`~envs.placement.base.PlacementEnv` (the table there), with T = the trace's GPU type
    names (the 5 ``SYNTHETIC_GPU_TYPES`` for a synthetic trace, whatever subset it draws). Node
    feature ``3 + T`` (cached model weights) is always 0.

    ## Rewards

    The terms of :class:`~envs.placement.base.PlacementEnv`: ``placement_failures``,
    ``invalid_actions``, ``fragmented_gpus``, ``gpus_in_use``. With ``shaping`` the start state's
    potential is 0 (the cluster starts empty).

    ## Starting State

    An empty cluster and the first job at its creation time. An empty trace gives a first
    observation that is already the final one.

    ## Episode End

    ``truncated`` on the step after which the trace (or ``max_jobs`` jobs) is exhausted; never
    ``terminated``. This source has its own clock and ignores ``horizon_s``.

    ## Arguments

    ``gym.make("InferGym/Placement-v0", source="jobs", ...)`` with ``pods_path``/``nodes_path``
    (Alibaba trace CSVs, given together), or the synthetic trace's ``n_nodes`` (32), ``n_jobs``
    (1000), ``mean_interarrival_s`` (20), ``mean_duration_s`` (3600); ``max_jobs`` caps the jobs per
    episode; ``shaping`` as in :class:`~envs.placement.base.PlacementEnv`. The synthetic defaults
    keep about 180 jobs (~0.95 GPU each on average) alive on the ~205 GPUs of 32 synthetic nodes, so
    the cluster runs near full and placement decides rejections (about 3 % under best fit, 5 %
    under spread). ``scenario`` supplies the reward weights.

    ## Version History

    * v0: initial version (part of ``PlacementEnv`` until the sources became classes; same dynamics).
    """

    source = "jobs"

    def _setup_source(self) -> int:
        p = self.params
        self._file_trace: JobTrace | None = None
        if p.pods_path is not None:
            self._file_trace = tr = read_alibaba_trace(p.pods_path, p.nodes_path)
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
        return n_nodes

    def _start_episode(self) -> None:
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
        self._jobs, types = self._encoder.episode_items(
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
        self._obs_version = np.full(cluster.n_nodes, -1, dtype=np.int64)  # node versions the buffer shows
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

    def _place(self, node: int, demand: Demand) -> bool:
        if not self._mask[node]:
            return False
        alloc = self.cluster.allocate(node, demand)
        deletion = self._deletion[self._job]
        if deletion < math.inf:
            heapq.heappush(self._live, (deletion, self._job, alloc))
        return True

    def _next_item(self, terms: dict[str, float]) -> None:
        self._next_job(self._job + 1)

    def _observe(self) -> np.ndarray:
        # No node feature depends on the item or the clock here, so only the nodes whose version moved
        # since the last observation change (usually one or two); many at once: all columns at once.
        c = self.cluster
        rows = np.flatnonzero(c.version != self._obs_version)
        if len(rows) <= 4:
            nodes, t = self._node_block(), len(self.type_names)
            for n in rows.tolist():
                self._node_row(nodes, n, t)
                self._obs_version[n] = c.version[n]
            self._item_block()
            return self._buf.copy()
        self._obs_version[:] = c.version
        return super()._observe()

    def _node_row(self, nodes: np.ndarray, n: int, t: int) -> None:
        """Node ``n``'s features (the cache feature stays 0), with the same float64 operations per
        element as the column-wise update in ``PlacementEnv._observe``."""
        c = self.cluster
        row = nodes[n]
        row[0] = c.gpu_full_free[n] * self._inv_gpus[n]
        row[1] = c.gpu_free_total[n] * self._inv_cap[n]
        row[2] = max(c.gpu_max_free[n], 0) * (1.0 / GPU_MILLI)
        row[4 + t] = c.node_alloc_count[n] > 0
        row[5 + t] = c.cpu_free_milli[n] * self._inv_cpu[n]
        row[6 + t] = c.mem_free_mib[n] * self._inv_mem[n]

    def _source_label(self) -> str:
        return "synthetic job trace" if self._file_trace is None else "Alibaba-format job trace"
