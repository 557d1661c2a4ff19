"""The engine state: every array of one simulation, allocated and grown here and nowhere else.

:class:`EngineState` is a struct of arrays whose column names are :mod:`envs.sim.layout`'s. The
compiled loop (:func:`envs.sim.kernel.advance`) takes them as arguments, in the order of
:meth:`EngineState.kernel_args`; :class:`~envs.sim.engine.Simulator` is the only writer outside
the compiled core, and everything above ``envs/sim`` reads views (:mod:`envs.sim.view`).

Why plain arrays rather than a numba ``jitclass`` or ``structref`` (see ``docs/architecture.md``):
both are reference-counted objects that need numba's runtime inside the loop, whose count
updates on every inlined helper took about two thirds of the loop's time.

Sizes grow with what the simulation holds, never with configured maxima: request rows with the
workload's requests (generated up front), replica rows with the replicas started (doubling from
twice the initial fleet), the event heap with the replica rows (at most one live event each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.sim import layout as L
from envs.sim.ptrs import address_table

MIN_REPLICA_ROWS = 16


@dataclass(eq=False)
class ReplicaRecord:
    """What the Python side keeps of a replica and the compiled loop never reads.

    ``alloc`` is its :class:`~envs.sim.cluster.Allocation` (node and GPUs); ``load_bytes`` the bytes
    of weights still to fetch from remote storage while it loads.
    """

    rid: int
    model: int
    gpu_type: int
    alloc: object
    gpus: int
    usd_per_s: float
    load_bytes: float = 0.0
    remote: bool = False
    freed: bool = False


@dataclass(eq=False)
class EngineState:
    """The arrays of one simulation (columns and codes: :mod:`envs.sim.layout`).

    Requests: ``rf`` (floats) and ``ri`` (ints), one row per request plus a sentinel row;
    ``log_done`` / ``log_drop`` list request ids in completion / drop order.
    Replicas: ``pf``, ``pi`` (one row each), ``run`` (running batch as a heap of request ids),
    ``pfl`` (requests admitted in the current iteration), ``rep_gpus`` and ``rep_usd_per_s``
    (GPUs held and $/s billed, read by the KPI windows); ``records`` the :class:`ReplicaRecord` of
    every replica ever started, ``live`` those still holding cluster resources.
    Queues: linked lists ``qh``/``qt`` (head/tail per queue and class list) and ``qn`` (length);
    queue ``m < n_models`` is model ``m``'s central queue, queue ``n_models + r`` replica ``r``'s.
    Models: ``mi`` counters; ``mrep`` rows ``m`` the live replica ids of model ``m`` and rows ``n_models + m``
    its READY ones, both in increasing order, ``mn`` their lengths (kept by
    :func:`envs.sim.eventq.set_replica_state`); its rows ``2 n_models`` to ``4 n_models`` hold the
    least-in-flight router's index and the next row its list of replicas to refresh
    (:func:`envs.sim.routing.lc_pick`).
    Event heap ``hp``: one row per event (``layout.H_*``: time, priority << 48 | sequence, replica,
    its version), a binary heap in rows ``1 .. gi[I_HEAP_N]`` (row 0 unused): with 32-byte rows and
    the array 64-byte aligned, the two children of a row share one cache line.
    Scalars: ``gf`` floats, ``gi`` ints. Metrics ticks: ``tick_inflight`` / ``tick_queued`` per
    tick and model.
    Prefixes (paged engine): ``pc`` the requests' prompt block hashes, request ``i``'s are
    ``pc[pc[i]:pc[i + 1]]`` (block ``k`` covers prompt tokens ``[k * hb, (k + 1) * hb)``, ``hb =
    gi[I_HB]``); ``kc`` each replica's prefix cache (rows ``KC_*``: hash table, then per entry its
    hash, references, LRU links, free stack), zero columns when no request has a prefix.
    """

    rf: np.ndarray
    ri: np.ndarray
    pf: np.ndarray
    pi: np.ndarray
    run: np.ndarray
    pfl: np.ndarray
    qh: np.ndarray
    qt: np.ndarray
    qn: np.ndarray
    mi: np.ndarray
    mrep: np.ndarray
    mn: np.ndarray
    hp: np.ndarray
    gf: np.ndarray
    gi: np.ndarray
    log_done: np.ndarray
    log_drop: np.ndarray
    tick_inflight: np.ndarray
    tick_queued: np.ndarray
    rep_gpus: np.ndarray
    rep_usd_per_s: np.ndarray
    pc: np.ndarray
    kc: np.ndarray
    n_models: int
    n_replicas: int = 0
    records: list[ReplicaRecord] = field(default_factory=list)
    live: list[ReplicaRecord] = field(default_factory=list)
    #: :meth:`kernel_args` as one table of addresses (:mod:`envs.sim.ptrs`), built on first use and
    #: dropped whenever an array is replaced (growth) or the state is copied or pickled
    _table: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def allocate(cls, rf: np.ndarray, ri: np.ndarray, *, n_models: int, n_lists: int, max_batch: int,
                 n_ticks: int, initial_replicas: int, prefix_ptr: np.ndarray | None = None,
                 prefix_ids: np.ndarray | None = None, cache_entries: int = 0) -> EngineState:  # fmt: skip
        """A state for the requests ``rf``/``ri`` (rows built by the engine, sentinel included).

        ``prefix_ptr`` / ``prefix_ids``: the requests' prompt block hashes in CSR form (none: no
        request has a prefix); ``cache_entries``: the most prefix-cache entries a replica can hold
        (0: no prefix cache), which sizes each replica's hash table.
        """
        n = len(rf) - 1
        if prefix_ptr is None:
            pc = np.full(n + 2, n + 2, np.int64)
        else:
            pc = np.empty(n + 2 + len(prefix_ids), np.int64)
            pc[: n + 1] = np.asarray(prefix_ptr, np.int64) + (n + 2)
            pc[n + 1] = pc[n]  # the sentinel row has no blocks
            pc[n + 2 :] = prefix_ids
        width = 0 if cache_entries <= 0 else 1 << int(2 * cache_entries - 1).bit_length()
        cap = max(MIN_REPLICA_ROWS, 2 * initial_replicas)
        hcap = _heap_rows(cap)
        return cls(
            rf=rf,
            ri=ri,
            pf=np.zeros((cap, L.N_PF)),
            pi=np.zeros((cap, L.N_PI), np.int64),
            run=np.zeros((cap, max_batch), np.int64),
            pfl=np.zeros((cap, max_batch), np.int64),
            qh=np.full((n_models + cap, n_lists), -1, np.int64),
            qt=np.full((n_models + cap, n_lists), -1, np.int64),
            qn=np.zeros(n_models + cap, np.int64),
            mi=np.zeros((n_models, L.N_MI), np.int64),
            mrep=np.zeros((4 * n_models + 1, cap), np.int64),
            mn=np.zeros(2 * n_models, np.int64),
            hp=aligned_zeros((hcap + 1, L.N_H), np.float64),
            gf=np.zeros(L.N_GF),
            gi=np.zeros(L.N_GI, np.int64),
            log_done=np.zeros(n + 1, np.int64),
            log_drop=np.zeros(n + 1, np.int64),
            tick_inflight=np.zeros((n_ticks, n_models), np.int64),
            tick_queued=np.zeros((n_ticks, n_models), np.int64),
            rep_gpus=np.zeros(cap),
            rep_usd_per_s=np.zeros(cap),
            pc=pc,
            kc=np.full((cap, L.N_KC, width), -1, np.int64),
            n_models=n_models,
        )

    def __repr__(self) -> str:
        return (
            f"EngineState(requests={len(self.rf) - 1}, replicas={self.n_replicas}/{self.replica_rows} rows, "
            f"models={self.n_models}, {self.nbytes() / 2**20:.1f} MiB)"
        )

    @property
    def replica_rows(self) -> int:
        """Replica rows allocated (ids ``0 .. replica_rows - 1`` fit without growing)."""
        return self.pf.shape[0]

    def new_replica_row(self) -> int:
        """The id of the next replica, growing every replica-sized array first if it is full."""
        if self.n_replicas >= self.replica_rows:
            self._grow_replicas()
        r = self.n_replicas
        self.n_replicas += 1
        return r

    def _grow_replicas(self) -> None:
        """Double every replica-sized array (queues and model lists included); contents are kept
        (released replicas' batch rows, which nothing reads, start again at zero)."""
        old = self.replica_rows
        new = 2 * old

        def grown(a: np.ndarray, axis: int, fill: int = 0) -> np.ndarray:
            shape = list(a.shape)
            shape[axis] = new if axis == 1 else a.shape[0] + old
            # zeros come from calloc: the OS maps zero pages on first touch, so the rows no replica
            # ever uses (most of a batch row's columns) cost nothing; np.full writes every page now
            # (page faults: about 7 ms per growth of the paged engine's batch rows at 1,024 replicas)
            out = np.zeros(shape, a.dtype) if fill == 0 else np.full(shape, fill, a.dtype)
            out[tuple(slice(0, s) for s in a.shape)] = a
            return out

        # A batch row (run, pfl) is read only up to its replica's batch or hand-off count, which is 0
        # once the replica is released: only the other replicas' rows move (a fleet that churns has
        # started hundreds of replicas, of which a few are live).
        live = np.flatnonzero(self.pi[: self.n_replicas, L.Q_STATE] != L.REP_RELEASED)
        self.pf, self.pi = grown(self.pf, 0), grown(self.pi, 0)
        for name in ("run", "pfl"):
            a = getattr(self, name)
            out = np.zeros((a.shape[0] + old, a.shape[1]), a.dtype)
            out[live] = a[live]
            setattr(self, name, out)
        self.qh, self.qt = grown(self.qh, 0, -1), grown(self.qt, 0, -1)
        self.qn = grown(self.qn, 0)
        self.mrep = grown(self.mrep, 1)
        self.gi[L.I_LC_REBUILD] = 1  # the least-in-flight index's layout follows mrep's width
        self.rep_gpus, self.rep_usd_per_s = grown(self.rep_gpus, 0), grown(self.rep_usd_per_s, 0)
        self.kc = grown(self.kc, 0, -1)
        hcap = _heap_rows(new)
        hp = aligned_zeros((hcap + 1, L.N_H), np.float64)
        hp[: len(self.hp)] = self.hp
        self.hp = hp  # (replacing an array drops the address table: __setattr__)

    def address_table(self) -> np.ndarray:
        """:meth:`kernel_args` as one int64 table of addresses and shapes (:mod:`envs.sim.ptrs`): a
        compiled call then takes one argument for the whole state. Valid until the next growth."""
        if self._table is None:
            self._table = address_table(self.kernel_args())
        return self._table

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name != "_table" and isinstance(value, np.ndarray):  # an array replaced: the table is stale
            object.__setattr__(self, "_table", None)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None}  # addresses mean nothing in another process or copy

    def kernel_args(self) -> tuple[np.ndarray, ...]:
        """The arrays :func:`envs.sim.kernel.advance` takes, in its order (before ``until, route_to``)."""
        return (self.rf, self.ri, self.pf, self.pi, self.run, self.pfl, self.qh, self.qt, self.qn, self.mi,
                self.mrep, self.mn, self.hp, self.gf, self.gi, self.log_done,
                self.log_drop, self.tick_inflight, self.tick_queued, self.pc, self.kc)  # fmt: skip

    def nbytes(self) -> int:
        """Bytes held by the arrays (what the state costs in memory)."""
        return sum(a.nbytes for a in self.kernel_args()) + self.rep_gpus.nbytes + self.rep_usd_per_s.nbytes


def aligned_zeros(shape: tuple[int, int], dtype, align: int = 64) -> np.ndarray:
    """A C-contiguous zero array whose first byte is ``align``-byte aligned.

    With rows a multiple of ``align`` bytes long, every row then starts on a cache line, and the
    request row's hot columns (:mod:`envs.sim.layout`) are one line, not two.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.zeros(nbytes + align, np.uint8)
    skip = -buf.ctypes.data % align
    return buf[skip : skip + nbytes].view(dtype).reshape(shape)


def _heap_rows(replica_rows: int) -> int:
    # one live event per replica; room for cancelled ones until the heap compacts itself
    return 4 * replica_rows + 16
