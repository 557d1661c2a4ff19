"""Placement-v0's ``jobs`` source: the jobs of a trace in the Alibaba GPU-sharing cluster trace format,
read from its CSV files or drawn synthetically at every reset, placed in creation order on a cluster
that releases each job at its deletion time. No requests are simulated: a step is one call into the
compiled step of :mod:`envs.placement.fast`, which updates only the observation rows of the nodes
that changed, and a reset draws the synthetic trace with the compiled loop there."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from envs.common import check_action
from envs.placement import episodes, fast
from envs.placement import layout as L
from envs.placement.base import PlacementEnv, PlacementEnvV0
from envs.placement.episodes import JobEpisode
from envs.placement.layout import (
    KPI_KEYS,
    N_RES,
    R_HAS_SHAPING,
    R_KPI,
    R_REWARD,
    R_SHAPING,
    R_TRUNCATED,
    S_ENDED,
    S_FAILURES,
    S_FREE,
    S_HIST,
    S_IDLE,
    S_JOB,
    S_N,
    S_PLACED,
    S_TOTAL,
)
from envs.placement.params import ENV_NAME, SYNTHETIC_GPU_TYPES
from envs.placement.rows import JobBatch
from envs.sim.cluster import GPU_MILLI, ClusterState, Demand
from envs.sim.errors import check_keys, fail
from envs.sim.jobtrace import (
    _POD_SHAPES,
    SYNTHETIC_NODE_SHAPES,
    _synthetic_names,
    read_alibaba_trace,
)

# synthetic_job_trace's tables, as arrays for the compiled per-job loop
_NODE_P = np.array([s[4] for s in SYNTHETIC_NODE_SHAPES])
_NODE_P = _NODE_P / _NODE_P.sum()
_POD_P = np.array([s[2] for s in _POD_SHAPES])
_POD_P = _POD_P / _POD_P.sum()
_POD_CODE = np.array(
    [
        episodes.SHARE if s[0] == "share" else episodes.WHOLE if s[1] else episodes.CPU_ONLY
        for s in _POD_SHAPES
    ],
    np.int64,
)
_POD_GPUS = np.array([s[1] for s in _POD_SHAPES], np.int64)
_POD_REQ_COUNT = np.array([len(s[3]) for s in _POD_SHAPES], np.int64)
_POD_REQ = np.zeros((len(_POD_SHAPES), int(_POD_REQ_COUNT.max()), 2), np.int64)
for _k, _s in enumerate(_POD_SHAPES):
    _POD_REQ[_k, : len(_s[3])] = _s[3]
_SHAPE_GPUS = np.array([s[1] for s in SYNTHETIC_NODE_SHAPES], np.int64)
_SHAPE_CPU = np.array([s[2] for s in SYNTHETIC_NODE_SHAPES], np.int64)
_SHAPE_MEM = np.array([s[3] for s in SYNTHETIC_NODE_SHAPES], np.int64)
_SHAPE_TYPE = np.array(
    [SYNTHETIC_GPU_TYPES.index(s[0]) if s[0] else -1 for s in SYNTHETIC_NODE_SHAPES], np.int64
)


def _step_terms(r: list[float]) -> dict[str, float]:
    """``info["rewards"]`` from a column of the compiled step's results (a dict display: the fastest
    way to build a dict in CPython, measurably faster than ``dict(zip(...))`` at every step)."""
    return {"placement_failures": r[4], "invalid_actions": r[5], "fragmented_gpus": r[6], "gpus_in_use": r[7]}


def _step_kpis(r: list[float]) -> dict[str, float]:
    """``info["kpi"]`` from a column of the compiled step's results (``KPI_KEYS`` from ``R_KPI`` on;
    the tests compare keys, order and values with the Python implementation's)."""
    return {"time_s": r[8], "items": r[9], "placed": r[10], "failures": r[11], "invalid_actions": r[12],
            "fragmented_gpus": r[13], "fgd_fragmentation_milli": r[14], "gpus_in_use": r[15], "nodes_in_use": r[16],
            "live_allocations": r[17]}  # fmt: skip


def _typeset_table(typesets: list[tuple[int, ...]], n_types: int) -> np.ndarray:
    """bool[S, T + 1]: set s allows GPU type t (the empty set, s = 0, allows all; column T = no GPU)."""
    ok = np.zeros((len(typesets), n_types + 1), np.bool_)
    ok[0, :n_types] = True
    for s, types in enumerate(typesets[1:], start=1):
        ok[s, list(types)] = True
    return ok


#: The synthetic traces' type sets: set s holds the types whose bits are set in s.
_SYN_TYPESETS = tuple(
    tuple(t for t in range(len(SYNTHETIC_GPU_TYPES)) if s >> t & 1)
    for s in range(2 ** len(SYNTHETIC_GPU_TYPES))
)
_SYN_TSOK = _typeset_table(list(_SYN_TYPESETS), len(SYNTHETIC_GPU_TYPES))


def synthetic_episode(
    rng: np.random.Generator,
    n_nodes: int,
    n_jobs: int,
    mean_interarrival_s: float,
    mean_duration_s: float,
    n_use: int,
    max_gpus: int,
    max_cpu: int,
    max_mem: int,
) -> JobEpisode:
    """The episode of ``synthetic_job_trace(rng, n_nodes, n_jobs, mean_interarrival_s,
    mean_duration_s)`` (default shares: 10 % of GPU jobs typed, 2 % open-ended, shares of 100-500
    milli) with its first ``n_use`` jobs, drawing the same numbers from ``rng`` in the same order."""
    picks = rng.choice(len(SYNTHETIC_NODE_SHAPES), size=n_nodes, p=_NODE_P)
    picks[0] = 0  # as synthetic_job_trace: at least one 8-GPU node
    env_type = _SHAPE_TYPE[picks]
    # the trace numbers GPU types by first appearance: its order decides which hosts a draw picks
    trace_types = list(dict.fromkeys(t for t in env_type.tolist() if t >= 0))
    to_trace = {t: i for i, t in enumerate(trace_types)}
    node_trace_type = np.array([to_trace.get(t, -1) for t in env_type.tolist()], np.int64)
    node_gpus, node_cpu, node_mem = _SHAPE_GPUS[picks], _SHAPE_CPU[picks], _SHAPE_MEM[picks]
    kinds = rng.choice(len(_POD_SHAPES), size=n_jobs, p=_POD_P)
    num, milli, cpu, mem, typeset = (np.empty(n_jobs, np.int64) for _ in range(5))
    episodes.draw_synthetic_jobs(
        rng, kinds, _POD_CODE, _POD_GPUS, _POD_REQ_COUNT, _POD_REQ, 10, 50, 0.1, node_trace_type, node_gpus,
        node_cpu, node_mem, np.array(trace_types, np.int64), num, milli, cpu, mem, typeset,
    )  # fmt: skip
    created = np.cumsum(np.rint(rng.exponential(mean_interarrival_s, size=n_jobs)))
    sigma = 1.0
    life = np.maximum(1.0, np.rint(rng.lognormal(math.log(mean_duration_s) - sigma**2 / 2, sigma, n_jobs)))
    open_ended = rng.random(n_jobs) < 0.02
    deleted = np.where(open_ended, np.inf, created + life)
    n = n_use
    return JobEpisode(
        env_type, node_gpus, node_cpu, node_mem, _synthetic_names("syn-node-{:04d}", n_nodes), num[:n],
        milli[:n], cpu[:n], mem[:n], typeset[:n], created[:n], deleted[:n], _SYN_TSOK, _SYN_TYPESETS, max_gpus,
        max_cpu, max_mem,
    )  # fmt: skip


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

    A step is one call into compiled code (:func:`envs.placement.fast.step_rows` on this env's row
    of a :class:`~envs.placement.rows.JobBatch`, the code :class:`~envs.placement.vector.PlacementVecEnv`
    runs for N envs at once), which gives the numbers of the Python cluster model bit for bit;
    ``cluster`` is a :class:`~envs.sim.cluster.ClusterState` over the step's arrays (read it, do
    not change it). A reset draws the synthetic trace with a compiled loop (the same draws as
    ``synthetic_job_trace``). The default synthetic trace runs at several tens of thousands of
    steps per second, resets included (``docs/vector-envs.md``).

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

    * v0: initial version (part of ``PlacementEnv`` until the sources became classes; same dynamics;
      the step compiled since, same numbers).
    """

    source = "jobs"

    def _setup_source(self) -> int:
        p = self.params
        self._file_episode: JobEpisode | None = None
        if p.pods_path is not None:
            tr = read_alibaba_trace(p.pods_path, p.nodes_path)
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
        if p.pods_path is not None:
            # A trace's jobs are the same every episode: encoded once. Its type names are the
            # environment's, so its type indices need no remapping.
            n = tr.n_jobs if p.max_jobs is None else min(tr.n_jobs, int(p.max_jobs))
            sets: dict[tuple[int, ...], int] = {(): 0}
            typeset = [sets.setdefault(tuple(sorted(ts)), len(sets)) for ts in tr.job_gpu_types[:n]]
            typesets = list(sets)
            self._file_episode = JobEpisode(
                tr.node_gpu_type, tr.node_gpus, tr.node_cpu_milli, tr.node_memory_mib, tr.node_names,
                tr.num_gpu[:n], tr.gpu_milli[:n], tr.cpu_milli[:n], tr.memory_mib[:n], typeset, tr.creation_s[:n],
                tr.deletion_s[:n], _typeset_table(typesets, len(self.type_names)), tuple(typesets), self._max_gpus,
                self._max_cpu, self._max_mem,
            )  # fmt: skip
            self._n_jobs = n
            self._gpu_slots = self._max_gpus
            self._n_sets = len(typesets)
        else:
            n_jobs = int(p.synthetic("n_jobs"))
            self._n_jobs = n_jobs if p.max_jobs is None else min(n_jobs, int(p.max_jobs))
            self._gpu_slots = self._max_gpus
            self._n_sets = len(_SYN_TYPESETS)
        self._demands: dict[tuple[int, ...], Demand] = {}
        return n_nodes

    def _clear_episode(self) -> None:
        self.sim = None
        self._batch: JobBatch | None = (
            None  # the episode's state: row `_row` of a batch (its own, of one row)
        )
        self._row = 0
        self._episode: JobEpisode | None = None
        self._cluster: ClusterState | None = None

    def new_batch(self, rows: int) -> JobBatch:
        """An empty :class:`~envs.placement.rows.JobBatch` of ``rows`` episodes of this configuration."""
        w = self.scenario.reward
        return JobBatch(
            rows, self.n_nodes, self._gpu_slots, self._n_jobs, len(self.type_names), self._n_sets,
            self._item_dim, [w.get(k, 0.0) for k in self.REWARD_TERMS], float(self.params.shaping),
        )  # fmt: skip

    def bind(self, batch: JobBatch, row: int) -> None:
        """Keep this environment's episodes in row ``row`` of ``batch`` (a vector env's shared batch,
        from :meth:`new_batch` of an environment of the same configuration), before any reset."""
        if self._batch is not None:
            raise RuntimeError(f"{ENV_NAME}: bind() before the first reset()")
        self._batch, self._row = batch, row
        self._outputs()

    def _outputs(self) -> None:
        """The step's action and result arrays (one column) and views of this row."""
        self._act = np.zeros(1, np.int64)
        self._res = np.zeros((N_RES, 1))
        self._views()

    def _views(self) -> None:
        # views and the compiled step's argument tuple, made once (each costs a call to make)
        b, r = self._batch, self._row
        self._obs_row, self._si_row, self._sf_row, self._res_col = b.obs[r], b.si[r], b.sf[r], self._res[:, 0]
        self._step_args = (*b.args, r, r + 1, self._act, self._res)
        self._generation = b.generation

    def draw_episode(self, rng: np.random.Generator) -> JobEpisode:
        """The next episode: the trace's jobs, or a synthetic trace drawn from ``rng``."""
        if self._file_episode is not None:
            return self._file_episode
        p = self.params
        return synthetic_episode(
            rng, int(p.synthetic("n_nodes")), int(p.synthetic("n_jobs")), float(p.synthetic("mean_interarrival_s")),
            float(p.synthetic("mean_duration_s")), self._n_jobs, self._max_gpus, self._max_cpu, self._max_mem,
        )  # fmt: skip

    # ------------------------------------------------------------------ reset and step

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        gym.Env.reset(self, seed=seed)
        if options:
            check_keys("options", options, ())
        self.episode_index += 1
        if self._batch is None:
            self._batch, self._row = self.new_batch(1), 0
            self._outputs()
        if self._cluster is not None:  # the last episode's cluster keeps its final state
            c = self._cluster
            for key in ("gpu_free_milli", "cpu_free_milli", "mem_free_mib", "gpu_free_total", "version",
                        "gpu_full_free", "gpu_max_free", "node_alloc_count"):  # fmt: skip
                setattr(c, key, getattr(c, key).copy())
            self._cluster = None
        self._episode = self.draw_episode(self.np_random)
        self._batch.load(self._row, self._episode, self._res)
        return self._obs_row.copy(), {"kpi": dict(zip(KPI_KEYS, self._res_col[R_KPI:].tolist(), strict=True))}

    def step(self, action: Any):
        if type(action) is int and 0 <= action < self.n_nodes:
            node = action
        else:
            node = int(check_action(self.action_space, action, ENV_NAME))
        if self._batch is None or self._si_row[S_ENDED]:
            raise RuntimeError(f"{ENV_NAME}: the episode ended (or never started); call reset()")
        self._act[0] = node
        if self._generation != self._batch.generation:  # the batch grew its arrays (for a new episode)
            self._views()
        fast.step_rows(*self._step_args)
        res = self._res_col.tolist()
        info = {"rewards": _step_terms(res), "kpi": _step_kpis(res)}
        if res[R_HAS_SHAPING]:
            info["shaping"] = res[R_SHAPING]
        return self._obs_row.copy(), res[R_REWARD], False, res[R_TRUNCATED] == 1.0, info

    def action_masks(self) -> np.ndarray:
        """bool[n_nodes]: the nodes that can take the waiting job now (all True when none waits)."""
        return self._batch.mask[self._row].copy()

    # ------------------------------------------------------------------ the state, read from the batch

    @property
    def _ended(self) -> bool:
        return self._batch is None or bool(self._si_row[S_ENDED])

    @property
    def cluster(self) -> ClusterState | None:
        """The episode's cluster: a ``ClusterState`` over the compiled step's arrays (read-only)."""
        if self._episode is None:
            return None
        if self._cluster is None:
            self._cluster = self._batch.cluster_view(self._row, self.type_names, self._episode)
            return self._cluster
        return self._batch.sync_cluster(self._row, self._cluster)

    @property
    def pending_demand(self) -> Demand | None:
        """The waiting job's demand (None when none waits)."""
        if self._batch is None:
            return None
        j, n = self._si_row[S_JOB].item(), self._si_row[S_N].item()
        if j >= n:
            return None
        key = tuple(self._episode.jint[j, :5].tolist())
        d = self._demands.get(key)
        if d is None:
            num, milli, cpu, mem, ts = key
            d = Demand(num_gpu=num, gpu_milli=milli, cpu_milli=cpu, memory_mib=mem,
                       gpu_types=self._episode.typesets[ts])  # fmt: skip
            self._demands[key] = d
        return d

    @property
    def now_s(self) -> float:
        return self._sf_row[L.F_NOW].item()

    @property
    def _phi(self) -> float:
        return self._sf_row[L.F_PHI].item()

    @property
    def _total_gpus(self) -> int:
        return max(self._si_row[S_TOTAL].item(), 1)

    @property
    def _history(self) -> np.ndarray:
        """(time_s, fragmented GPUs, GPUs in use) after the reset and every step."""
        return self._batch.hist[self._row, : self._si_row[S_HIST]].copy()

    @property
    def _obs_version(self) -> np.ndarray:
        """Per node, the version its observation row shows (a view: write -1 to have rows rebuilt)."""
        return self._batch.n64[self._row, L.N64_OBS_SEEN]

    def _observe(self) -> np.ndarray:
        b = self._batch
        fast.observe_row(b.n32, b.n64, b.inv, b.jint, b.jitem, b.obs, b.si, self._row)
        return self._obs_row.copy()

    def _usage(self) -> tuple[float, int]:
        si = self._si_row
        idle = si[S_IDLE].item()
        return (si[S_FREE].item() - GPU_MILLI * idle) / GPU_MILLI, si[S_TOTAL].item() - idle

    def _kpi(self, frag: float, in_use: int) -> dict[str, float]:
        res = np.zeros((N_RES, 1))
        self._batch.kpi(self._row, res)
        kpi = dict(zip(KPI_KEYS, res[R_KPI:, 0].tolist(), strict=True))
        kpi["fragmented_gpus"], kpi["gpus_in_use"] = float(frag), float(in_use)
        return kpi

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from envs.placement.render import draw_cluster  # matplotlib only when a frame is drawn

        si = self._si_row
        title = f"Placement-v0, {self._source_label()}: {si[S_PLACED].item()} placed, {si[S_FAILURES].item()} rejected"
        return draw_cluster(self.cluster, self._history, self.now_s, title)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # views of the batch's arrays: rebuilt after unpickling (the cluster on first use)
        state["_cluster"] = None
        for key in ("_obs_row", "_si_row", "_sf_row", "_res_col", "_step_args", "_generation"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._batch is not None:
            self._views()

    def _source_label(self) -> str:
        return "synthetic job trace" if self._file_episode is None else "Alibaba-format job trace"


class JobPlacementEnvV0(JobPlacementEnv, PlacementEnvV0):
    """``InferGym/Placement-v0``'s jobs source: the same as v1's (jobs do not use the serving engine)."""

    source = "jobs"
