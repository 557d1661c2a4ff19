"""The episodes of the Placement env's ``jobs`` source: drawn and encoded in compiled code.

:func:`draw_synthetic_jobs` is the per-job loop of :func:`envs.sim.jobtrace.synthetic_job_trace`,
compiled, drawing the same numbers from the same generator (numba's ``np.random.Generator`` support
shares the generator's state and algorithms). :func:`encode_jobs` turns a job table into the rows'
job and FGD task-type tables (:mod:`envs.placement.layout`); :class:`JobEpisode` holds one encoded
episode, which :meth:`envs.placement.rows.JobBatch.load` puts in a row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from envs.placement.layout import (
    GPU_MILLI,
    J_COL,
    J_CPU,
    J_MEM,
    J_MILLI,
    J_NUM,
    J_TYPESET,
    K_COUNT,
    K_CPU,
    K_MEM,
    K_MILLI_KEY,
    K_NUM,
    K_THRESHOLD,
    K_TYPESET,
    N_ITEM_BASE,
    N_KINT,
)
from envs.sim import jitcache  # noqa: F401  (keys the compiled cache on this package's layout, step and episodes)

# ------------------------------------------------------------------ episodes
SHARE, WHOLE, CPU_ONLY = 0, 1, 2  # kinds of synthetic pod shapes


@njit(cache=True)
def draw_synthetic_jobs(rng, kinds, kind_code, kind_gpus, req_count, req, lo10, hi10, spec_share, node_trace_type,
                        node_gpus, node_cpu, node_mem, trace_to_env, num, milli, cpu, mem, typeset):  # fmt: skip
    """The per-job loop of ``synthetic_job_trace``, drawing the same numbers from ``rng`` in the same
    order: job i of pod kind ``kinds[i]`` gets its (cpu, memory) request, its share (``lo10``..``hi10``
    x 10 milli) and, with probability ``spec_share`` for GPU jobs, one or two GPU types among those
    of the nodes that can host it (``Generator.choice(hosts, size, replace=False)``: Floyd's
    sampling and the shuffle that follows, with the same bounded draws). ``typeset[i]`` is the
    bit set of the allowed types in the environment's numbering (``trace_to_env``)."""
    n_trace_types = len(trace_to_env)
    present = np.zeros(n_trace_types, np.bool_)
    hosts = np.empty(n_trace_types, np.int64)
    chosen = np.empty(max(n_trace_types, 1), np.int64)
    for i in range(len(kinds)):
        k = kinds[i]
        r = rng.integers(0, req_count[k])
        c = req[k, r, 0]
        m = req[k, r, 1]
        n_gpu = kind_gpus[k]
        if kind_code[k] == SHARE:
            g = rng.integers(lo10, hi10 + 1) * 10
        elif n_gpu > 0:
            g = GPU_MILLI
        else:
            g = 0
        bits = 0
        if n_gpu > 0 and rng.random() < spec_share:
            present[:] = False
            for n in range(len(node_trace_type)):
                t = node_trace_type[n]
                if t >= 0 and node_gpus[n] >= n_gpu and node_cpu[n] >= c and node_mem[n] >= m:
                    present[t] = True
            h = 0
            for t in range(n_trace_types):
                if present[t]:
                    hosts[h] = t
                    h += 1
            if h > 0:
                size = min(h, rng.integers(1, 3))
                for jj in range(h - size, h):  # Floyd's algorithm, as numpy's choice(replace=False)
                    val = rng.integers(0, jj + 1)
                    pos = jj - (h - size)
                    seen = False
                    for q in range(pos):
                        if chosen[q] == val:
                            seen = True
                    chosen[pos] = jj if seen else val
                for q in range(size - 1, 0, -1):  # numpy shuffles the sample afterwards
                    x = rng.integers(0, q + 1)
                    tmp = chosen[q]
                    chosen[q] = chosen[x]
                    chosen[x] = tmp
                for q in range(size):
                    bits |= 1 << trace_to_env[hosts[chosen[q]]]
        num[i] = n_gpu
        milli[i] = g
        cpu[i] = c
        mem[i] = m
        typeset[i] = bits


@njit(cache=True)
def _slot(table, mask, h, key_of, rows, key):
    """Open addressing: the slot of ``key`` (a row of ``rows`` matching ``key_of``) or of an empty one."""
    i = h & mask
    while table[i] >= 0:
        r = table[i]
        same = True
        for q in range(len(key)):
            if rows[r, key_of[q]] != key[q]:
                same = False
                break
        if same:
            return i
        i = (i + 1) & mask
    return i


@njit(cache=True)
def encode_jobs(num, milli, cpu, mem, typeset, tsok, max_gpus, max_cpu, max_mem, jint, jitem, kint, fthr):
    """The episode's job table: ``jint[j]`` = (num_gpu, gpu_milli, cpu_milli, memory_mib, type set,
    FGD column), ``jitem[j]`` the item features (``ItemEncoder.encode``), and the FGD task types
    (``kint[k]`` = num_gpu, threshold index, cpu, memory, type set; ``fthr`` the thresholds) in
    order of first appearance (``Demand.task_type``: a CPU-only job's type ignores its GPU fields).
    Returns (task types, thresholds)."""
    n_types = tsok.shape[1] - 1
    size = 1
    while size < 2 * len(num) + 2:
        size *= 2
    types_at = np.full(size, -1, np.int64)  # hash slot -> task type (a row of kint)
    thr_at = np.full(size, -1, np.int64)  # hash slot -> threshold index
    type_key = np.array([K_NUM, K_MILLI_KEY, K_CPU, K_MEM, K_TYPESET])
    thr_key = np.array([0])
    key = np.empty(5, np.int64)
    one = np.empty(1, np.int64)
    k_count = 0
    u_count = 0
    for j in range(len(num)):
        g = num[j]
        gm = milli[j] if g > 0 else 0
        ts = typeset[j] if g > 0 else 0
        key[0], key[1], key[2], key[3], key[4] = g, gm, cpu[j], mem[j], ts
        h = (((g * 1000003 + gm) * 1000003 + cpu[j]) * 1000003 + mem[j]) * 1000003 + ts
        slot = _slot(types_at, size - 1, h ^ (h >> 29), type_key, kint, key)
        col = types_at[slot]
        if col < 0:
            col = k_count
            types_at[slot] = col
            k_count += 1
            u = -1
            if g > 0:
                one[0] = gm
                tslot = _slot(thr_at, size - 1, gm * 1000003, thr_key, fthr.reshape((-1, 1)), one)
                u = thr_at[tslot]
                if u < 0:
                    u = u_count
                    thr_at[tslot] = u
                    fthr[u] = gm
                    u_count += 1
            kint[col, K_NUM] = g
            kint[col, K_MILLI_KEY] = gm
            kint[col, K_THRESHOLD] = u
            kint[col, K_CPU] = cpu[j]
            kint[col, K_MEM] = mem[j]
            kint[col, K_TYPESET] = ts
        jint[j, J_NUM] = g
        jint[j, J_MILLI] = milli[j]
        jint[j, J_CPU] = cpu[j]
        jint[j, J_MEM] = mem[j]
        jint[j, J_TYPESET] = typeset[j]
        jint[j, J_COL] = col
        vec = jitem[j]
        vec[:] = 0.0
        vec[0] = 1.0
        if max_gpus:
            vec[1] = min(g / max_gpus, 1.0)
        vec[2] = milli[j] / GPU_MILLI if g > 0 else 0.0
        if typeset[j] != 0:
            for t in range(n_types):
                if tsok[typeset[j], t]:
                    vec[3 + t] = 1.0
        vec[3 + n_types] = min(cpu[j] / max(max_cpu, 1), 1.0)
        vec[4 + n_types] = min(mem[j] / max(max_mem, 1), 1.0)
    return k_count, u_count


class JobEpisode:
    """What one episode of the jobs source places: its cluster's nodes and its jobs, encoded.

    Node arrays (``node_type`` the environment's GPU type index, -1 none; ``node_gpus``,
    ``node_cpu``, ``node_mem``; ``node_names``) and job tables (see :func:`encode_jobs`): ``jint``
    int64[n, 6], ``jtime`` float64[n, 2] (creation, deletion), ``jitem`` float32[n, item_dim],
    ``tsok`` bool[S, T + 1] (type set s allows GPU type t; row 0, no constraint, allows every type;
    column T, a node without GPUs, none), ``typesets`` (the type indices of each set), ``kint`` and
    ``fthr`` (the FGD task types; thresholds ascending). Treated as read-only: a file trace's
    episode is built once.
    """

    __slots__ = ("fthr", "jint", "jitem", "jtime", "kint", "node_cpu", "node_gpus", "node_mem", "node_names",
                 "node_type", "tsok", "typesets")  # fmt: skip

    def __init__(self, node_type, node_gpus, node_cpu, node_mem, node_names, num, milli, cpu, mem, typeset,
                 creation, deletion, tsok, typesets, max_gpus, max_cpu, max_mem):  # fmt: skip
        self.node_type = np.asarray(node_type, np.int64)
        self.node_gpus = np.asarray(node_gpus, np.int64)
        self.node_cpu = np.asarray(node_cpu, np.int64)
        self.node_mem = np.asarray(node_mem, np.int64)
        self.node_names = tuple(node_names)
        self.tsok = tsok
        self.typesets = typesets
        n = len(num)
        n_types = tsok.shape[1] - 1
        self.jint = np.zeros((n, 6), np.int64)
        self.jitem = np.zeros((n, N_ITEM_BASE + n_types), np.float32)
        kint = np.zeros((n, N_KINT), np.int64)
        fthr = np.zeros(n, np.int64)
        k, u = encode_jobs(
            np.asarray(num, np.int64), np.asarray(milli, np.int64), np.asarray(cpu, np.int64),
            np.asarray(mem, np.int64), np.asarray(typeset, np.int64), tsok, int(max_gpus), int(max_cpu),
            int(max_mem), self.jint, self.jitem, kint, fthr,
        )  # fmt: skip
        # thresholds ascending (the fragment sweep walks a node's sorted free shares once)
        order = np.argsort(fthr[:u], kind="stable")
        rank = np.empty(u, np.int64)
        rank[order] = np.arange(u)
        self.kint, self.fthr = kint[:k].copy(), fthr[:u][order]
        gpu = self.kint[:, K_NUM] > 0
        self.kint[gpu, K_THRESHOLD] = rank[self.kint[gpu, K_THRESHOLD]]
        self.kint[~gpu, K_THRESHOLD] = 0  # unused for CPU-only types, but read (as an index)
        self.kint[:, K_COUNT] = 0
        self.jtime = np.empty((n, 2))
        self.jtime[:, 0] = creation
        self.jtime[:, 1] = deletion

    def __getstate__(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
