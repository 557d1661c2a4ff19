"""The state of E ``jobs``-source episodes ("rows") in stacked arrays, and the calls that step them.

:class:`JobBatch` allocates the arrays whose columns :mod:`envs.placement.layout` names, loads an
encoded episode into a row (:class:`~envs.placement.episodes.JobEpisode`) and steps a range of rows
with one compiled call (:func:`envs.placement.fast.step_rows`). The single env is a batch of one
row, the vector env a batch of N.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.placement.episodes import (
    JobEpisode,
)
from envs.placement.fast import (
    kpi_row,
    start_row,
    step_rows,
)
from envs.placement.layout import (
    COMPENSATED_SUM,
    GPU_MILLI,
    N32_COUNT,
    N32_FULL,
    N32_MAXF,
    N64_CPU,
    N64_CPU_CAP,
    N64_GPUS,
    N64_MEM,
    N64_MEM_CAP,
    N64_TOTAL,
    N64_TYPE,
    N64_VERSION,
    N_JF,
    N_JINT,
    N_KINT,
    N_N32,
    N_N64,
    N_NODE_BASE,
    N_SF,
    N_SI,
    N_TERMS,
    N_W,
    S_ENDED,
    S_FREE,
    S_G,
    S_IDLE,
    S_K,
    S_LIVE,
    S_N,
    S_U,
    S_USED,
    W_COMPENSATED,
    W_SHAPING,
    W_TERMS,
)


class JobBatch:
    """The state of E jobs-source episodes ("rows") in stacked arrays, stepped by :func:`step_rows`.

    Built for one environment configuration: ``n_nodes`` nodes of at most ``gpu_slots`` GPUs, at
    most ``n_jobs`` jobs per episode, ``n_types`` GPU types, ``n_sets`` type sets, item features of
    ``item_dim``; ``weights`` the four reward weights (``REWARD_TERMS`` order) and ``shaping``. The
    observation rows (``obs``, float32[E, D]) and masks (``mask``, bool[E, n_nodes]) are written in
    place by every call. :meth:`load` starts an episode in a row; :meth:`step` steps every row;
    :meth:`cluster_view` is a :class:`~envs.sim.cluster.ClusterState` over a row's arrays.
    """

    def __init__(self, rows: int, n_nodes: int, gpu_slots: int, n_jobs: int, n_types: int, n_sets: int,
                 item_dim: int, weights: Any, shaping: float) -> None:  # fmt: skip
        e, n, g, j = rows, n_nodes, gpu_slots, n_jobs
        self.rows, self.n_nodes, self.n_jobs = e, n, j
        self.free = np.full((e, n, g), -1, np.int32)
        self.n32 = np.zeros((e, N_N32, n), np.int32)
        self.n64 = np.zeros((e, N_N64, n), np.int64)
        self.inv = np.zeros((e, 4, n))
        self.obs = np.zeros((e, n * (N_NODE_BASE + n_types) + item_dim), np.float32)
        self.mask = np.ones((e, n), np.bool_)
        self.jint = np.zeros((e, j, N_JINT), np.int64)
        self.jf = np.zeros((e, j, N_JF))
        self.jitem = np.zeros((e, j, item_dim), np.float32)
        self.tsok = np.zeros((e, n_sets, n_types + 1), np.bool_)
        self.agpus = np.zeros((e, j, g), np.int64)
        self.si = np.zeros((e, N_SI), np.int64)
        self.si[:, S_ENDED] = 1
        self.sf = np.zeros((e, N_SF))
        self.hist = np.zeros((e, j + 1, 3))
        self.w = np.zeros(N_W)
        self.w[W_TERMS : W_TERMS + N_TERMS] = weights
        self.w[W_SHAPING] = shaping
        self.w[W_COMPENSATED] = 1.0 if COMPENSATED_SUM else 0.0
        self.work = np.zeros((2, g + 1), np.int64)  # a node's sorted free shares and their prefix sums
        self.kint = None
        self._alloc_fgd(8, 8)

    def _alloc_fgd(self, k_cap: int, u_cap: int) -> None:
        """(Re)allocate the FGD arrays for ``k_cap`` task types and ``u_cap`` thresholds, keeping rows."""
        e, n = self.rows, self.n_nodes
        kint = np.zeros((e, N_KINT, k_cap), np.int64)
        fthr = np.zeros((e, u_cap), np.int64)
        fge = np.zeros((e, n, u_cap), np.int64)
        fsm = np.zeros((e, n, u_cap), np.int64)
        if getattr(self, "kint", None) is not None:
            k0, u0 = self.kint.shape[2], self.fthr.shape[1]
            kint[:, :, :k0], fthr[:, :u0] = self.kint, self.fthr
            fge[:, :, :u0], fsm[:, :, :u0] = self.fge, self.fsm
        self.kint, self.fthr, self.fge, self.fsm = kint, fthr, fge, fsm
        self._args = None
        self.generation = (
            getattr(self, "generation", 0) + 1
        )  # callers holding the arrays rebuild their tuples

    @property
    def args(self) -> tuple[np.ndarray, ...]:
        """The arrays :func:`step_rows` and :func:`start_row` take, in their order."""
        if self._args is None:
            self._args = (self.free, self.n32, self.n64, self.inv, self.obs, self.mask, self.jint, self.jf,
                          self.jitem, self.tsok, self.agpus, self.kint, self.fthr, self.fge, self.fsm, self.work,
                          self.si, self.sf, self.hist, self.w)  # fmt: skip
        return self._args

    def load(self, e: int, ep: JobEpisode, res: np.ndarray) -> None:
        """Start episode ``ep`` in row ``e``: its KPIs go to ``res[R_KPI:, 0]``, its shaping potential
        to ``res[R_SHAPING, 0]``, its first observation and mask to ``obs[e]`` and ``mask[e]``."""
        n = len(ep.jint)
        k, u = len(ep.kint), len(ep.fthr)
        if k > self.kint.shape[2] or u > self.fthr.shape[1]:
            self._alloc_fgd(max(k, 2 * self.kint.shape[2]), max(u, 2 * self.fthr.shape[1]))
        n64 = self.n64[e]
        n_types = self.tsok.shape[2] - 1
        n64[N64_TYPE] = np.where(ep.node_type >= 0, ep.node_type, n_types)
        n64[N64_CPU_CAP] = ep.node_cpu
        n64[N64_MEM_CAP] = ep.node_mem
        n64[N64_GPUS] = ep.node_gpus
        # the observation's normalisers, as PlacementEnv._prepare_cluster computes them
        gpus = ep.node_gpus.astype(np.float64)
        has = gpus > 0
        inv_gpus = np.where(has, 1.0 / np.where(has, gpus, 1.0), 0.0)
        inv = self.inv[e]
        inv[0] = inv_gpus
        inv[1] = inv_gpus / GPU_MILLI
        inv[2] = np.where(ep.node_cpu > 0, 1.0 / np.maximum(ep.node_cpu, 1), 0.0)
        inv[3] = np.where(ep.node_mem > 0, 1.0 / np.maximum(ep.node_mem, 1), 0.0)
        self.jint[e, :n, :6] = ep.jint
        self.jf[e, :n, :2] = ep.jtime
        self.jitem[e, :n] = ep.jitem
        self.tsok[e, : len(ep.tsok)] = ep.tsok
        self.kint[e, :, :k] = ep.kint.T
        self.fthr[e, :u] = ep.fthr
        si = self.si[e]
        si[S_N], si[S_K], si[S_U] = n, k, u
        si[S_G] = int(ep.node_gpus.max()) if len(ep.node_gpus) else 0
        start_row(*self.args, e, res)

    def step(self, lo: int, hi: int, actions: np.ndarray, res: np.ndarray) -> int:
        """One step of rows ``lo`` .. ``hi - 1`` (see :func:`step_rows`): -1, or the first row whose
        action is out of range (nothing was stepped then)."""
        return step_rows(*self.args, lo, hi, actions, res)

    def kpi(self, e: int, res: np.ndarray) -> None:
        """Row ``e``'s KPIs now into ``res[R_KPI:, 0]``."""
        kpi_row(self.free, self.n64, self.tsok, self.kint, self.fthr, self.fge, self.fsm, self.work, self.si, self.sf,
                e, res)  # fmt: skip

    def cluster_view(self, e: int, type_names: tuple[str, ...], ep: JobEpisode) -> Any:
        """A ``ClusterState`` of row ``e``'s episode whose free-resource arrays are the row's own (it
        follows the steps); its sums are set from the row by :meth:`sync_cluster`."""
        from envs.sim.cluster import ClusterState

        c = ClusterState(
            type_names, ep.node_type, ep.node_gpus, ep.node_cpu, ep.node_mem, node_names=ep.node_names
        )
        g = c.gpu_free_milli.shape[1]
        c.gpu_free_milli = self.free[e, :, :g]
        c.cpu_free_milli = self.n64[e, N64_CPU]
        c.mem_free_mib = self.n64[e, N64_MEM]
        c.gpu_free_total = self.n64[e, N64_TOTAL]
        c.version = self.n64[e, N64_VERSION]
        c.gpu_full_free = self.n32[e, N32_FULL]
        c.gpu_max_free = self.n32[e, N32_MAXF]
        c.node_alloc_count = self.n32[e, N32_COUNT]
        return self.sync_cluster(e, c)

    def sync_cluster(self, e: int, c: Any) -> Any:
        """Set the cluster-wide sums of ``c`` (a :meth:`cluster_view`) from row ``e``."""
        si = self.si[e]
        c.idle_gpus, c.free_gpu_milli, c.live_allocations, c._nodes_used = (
            si[S_IDLE].item(), si[S_FREE].item(), si[S_LIVE].item(), si[S_USED].item()
        )  # fmt: skip
        return c

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_args"] = None
        return state
