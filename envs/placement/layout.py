"""The layout of the Placement env's stacked arrays (the ``jobs`` source's compiled step).

:class:`~envs.placement.rows.JobBatch` keeps E episodes ("rows") in a few stacked arrays; these
constants name their columns, once, for the compiled step (:mod:`envs.placement.fast`), the
episodes' encoding (:mod:`envs.placement.episodes`) and the environments that read them. The
compiled functions read them as compile-time constants, so the three modules share one cache key
(:data:`envs.sim.jitcache.GROUPS`).
"""

from __future__ import annotations

import sys

GPU_MILLI = 1000  # = envs.sim.cluster.GPU_MILLI (a compile-time constant here)

# ------------------------------------------------------------------ layout of the stacked arrays
# si[e, :] (int64): the row's counters and cluster sums
S_JOB = 0  # index of the waiting job (== S_N: none waits)
S_N = 1  # jobs in the episode
S_PLACED = 2
S_FAILURES = 3
S_INVALID = 4
S_ITEMS = 5  # jobs offered so far (the waiting one included)
S_IDLE = 6  # ClusterState.idle_gpus
S_FREE = 7  # ClusterState.free_gpu_milli
S_LIVE = 8  # ClusterState.live_allocations
S_USED = 9  # ClusterState.nodes_in_use()
S_HEAP = 10  # live jobs in the heap
S_TOTAL = 11  # GPUs of the cluster
S_ANY = 12  # the waiting job fits some node
S_HIST = 13  # rows of the history
S_ENDED = 14  # the episode ended
S_K = 15  # FGD task types of the episode
S_U = 16  # distinct per-GPU thresholds of those types
S_G = 17  # GPU slots per node of this episode's cluster
S_ACTIVE = 18  # task types offered so far: types 0 .. S_ACTIVE - 1 (numbered by first appearance)
S_FGD = 19  # sum over nodes and task types of offered count x fragment (milli-GPU)
N_SI = 20
# sf[e, :] (float64)
F_NOW = 0
F_PHI = 1
N_SF = 2
# n32[e, :, n] (int32, ClusterState's int32 node arrays) and n64[e, :, n] (int64)
N32_FULL, N32_MAXF, N32_COUNT = 0, 1, 2  # gpu_full_free, gpu_max_free, node_alloc_count
N64_CPU, N64_MEM, N64_TOTAL, N64_VERSION = 0, 1, 2, 3  # cpu_free_milli, mem_free_mib, gpu_free_total, version
N64_TYPE, N64_OBS_SEEN, N64_FGD_SEEN = 4, 5, 6  # GPU type (T: none), versions the observation and FGD show
N64_CPU_CAP, N64_MEM_CAP, N64_GPUS = 7, 8, 9  # node CPU, memory, GPUs
# what the node's FGD fragment was last computed from (free GPU milli, CPU, memory) and its weighted sum
N64_FGD_TOTAL, N64_FGD_CPU, N64_FGD_MEM, N64_FGD_SUM = 10, 11, 12, 13
N_N32, N_N64 = 3, 14
# jint[e, j, :] (int64): the job's demand, its FGD column, and what placing it took
J_NUM, J_MILLI, J_CPU, J_MEM, J_TYPESET, J_COL, J_NODE, J_HEAP = range(8)
N_JINT = 8
# jf[e, j, :] (float64)
JF_CREATE, JF_DELETE, JF_HEAP = 0, 1, 2
N_JF = 3
# kint[e, :, k] (int64, one row per field: the loop over types reads each field contiguously): an FGD
# task type and how many jobs of it were offered
K_NUM, K_THRESHOLD, K_CPU, K_MEM, K_TYPESET, K_COUNT = range(6)
K_MILLI_KEY = K_COUNT  # while encoding an episode: the type's gpu_milli (counts start at 0 in start_row)
N_KINT = 6
# w[:] (float64): shared parameters
W_TERMS = 0  # 4 weights, in REWARD_TERMS order
W_SHAPING = 4
W_COMPENSATED = 5  # 1.0: sum the reward terms as CPython >= 3.12's sum() does
N_W = 6
# res[:, c] (float64): what a step gives, per stepped row c
R_REWARD, R_TRUNCATED, R_SHAPING, R_HAS_SHAPING = 0, 1, 2, 3  # truncated: 1.0 (-1.0: the row had ended)
R_TERMS = 4  # the 4 cost terms, in REWARD_TERMS order
R_KPI = 8  # the KPIs, in KPI_KEYS order
N_TERMS = 4
KPI_KEYS = (
    "time_s",
    "items",
    "placed",
    "failures",
    "invalid_actions",
    "fragmented_gpus",
    "fgd_fragmentation_milli",
    "gpus_in_use",
    "nodes_in_use",
    "live_allocations",
)
N_KPI = len(KPI_KEYS)
N_RES = R_KPI + N_KPI
N_NODE_BASE = 7  # = envs.placement.params.N_NODE_BASE
N_ITEM_BASE = 5  # = envs.placement.params.N_ITEM_BASE

#: ``weighted_reward`` sums the four terms with Python's ``sum``, which compensates rounding from
#: CPython 3.12 on (Neumaier); the compiled reward sums them the same way.
COMPENSATED_SUM = sys.version_info >= (3, 12)
