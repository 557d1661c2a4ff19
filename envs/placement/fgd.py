"""The FGD fragmentation measure of a Placement-v0 episode, kept current incrementally: the env reports
it in ``info["kpi"]`` and its optional reward shaping is built on it, so it is computed at every step
and must cost only the nodes that changed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.sim.cluster import ClusterState, Demand, TaskMix, refresh_fragments


class FgdTracker:
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
        """Count one more offered item of task type ``col`` (a column of the episode's types)."""
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
