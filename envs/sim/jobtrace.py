"""Job traces in the format of the Alibaba GPU-sharing cluster trace, read, written and synthesised.

The public trace (alibaba/clusterdata, ``cluster-trace-gpu-v2023``; Weng et al., "Beware of
Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC
2023) is two CSV files. Pods: ``name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,
creation_time,deletion_time,scheduled_time`` where ``gpu_spec`` is empty (any GPU type) or allowed
type names joined by ``|`` (e.g. ``V100M16|V100M32``) and times are seconds. Nodes:
``sn,cpu_milli,memory_mib,gpu,model`` with ``model`` the GPU type (empty for CPU-only nodes). This
module reads both into a ``JobTrace`` of arrays sorted by creation time, writes one back, builds a
``ClusterState`` from its nodes, and makes small synthetic traces with a realistic mix so tests and
environments need no downloaded data.

Rules for empty fields: an empty ``deletion_time`` means the pod had not ended when the trace was
cut (``deletion_s = inf``); an empty ``scheduled_time`` means it was never scheduled
(``scheduled_s = nan``, e.g. Pending pods); ``creation_time`` is required.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.sim.cluster import GPU_MILLI, ClusterState, Demand
from envs.sim.errors import ConfigError, check_number, fail

POD_COLUMNS = (
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
)
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")


def _readonly(arr: np.ndarray, dtype: Any) -> np.ndarray:
    out = np.array(arr, dtype=dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class JobTrace:
    """Nodes and jobs (pods) of a trace. Node arrays have one entry per node, job arrays one per job,
    jobs sorted by ``creation_s`` (stable). ``node_gpu_type`` and ``job_gpu_types`` index
    ``gpu_type_names`` (-1 / empty tuple: none / any). Times are seconds; ``deletion_s`` is inf for
    jobs still running at the end of the trace and ``scheduled_s`` nan for jobs never scheduled."""

    gpu_type_names: tuple[str, ...]
    node_names: tuple[str, ...]
    node_cpu_milli: np.ndarray
    node_memory_mib: np.ndarray
    node_gpus: np.ndarray
    node_gpu_type: np.ndarray
    job_names: tuple[str, ...]
    cpu_milli: np.ndarray
    memory_mib: np.ndarray
    num_gpu: np.ndarray
    gpu_milli: np.ndarray
    job_gpu_types: tuple[tuple[int, ...], ...]
    qos: tuple[str, ...]
    pod_phase: tuple[str, ...]
    creation_s: np.ndarray
    deletion_s: np.ndarray
    scheduled_s: np.ndarray

    def __post_init__(self) -> None:
        for key, dtype in (
            ("node_cpu_milli", np.int64),
            ("node_memory_mib", np.int64),
            ("node_gpus", np.int32),
            ("node_gpu_type", np.int32),
            ("cpu_milli", np.int64),
            ("memory_mib", np.int64),
            ("num_gpu", np.int32),
            ("gpu_milli", np.int32),
            ("creation_s", np.float64),
            ("deletion_s", np.float64),
            ("scheduled_s", np.float64),
        ):
            object.__setattr__(self, key, _readonly(getattr(self, key), dtype))
        for key in ("gpu_type_names", "node_names", "job_names", "qos", "pod_phase"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        object.__setattr__(self, "job_gpu_types", tuple(tuple(map(int, ts)) for ts in self.job_gpu_types))
        n_nodes, n_jobs = len(self.node_names), len(self.job_names)
        for key in ("node_cpu_milli", "node_memory_mib", "node_gpus", "node_gpu_type"):
            if len(getattr(self, key)) != n_nodes:
                raise fail(f"trace.{key}", f"length {len(getattr(self, key))}", f"must be {n_nodes} long")
        for key in (
            "cpu_milli",
            "memory_mib",
            "num_gpu",
            "gpu_milli",
            "job_gpu_types",
            "qos",
            "pod_phase",
            "creation_s",
            "deletion_s",
            "scheduled_s",
        ):
            if len(getattr(self, key)) != n_jobs:
                raise fail(f"trace.{key}", f"length {len(getattr(self, key))}", f"must be {n_jobs} long")
        if n_jobs and np.any(np.diff(self.creation_s) < 0):
            raise fail("trace.creation_s", "unsorted", "must be sorted by creation time")

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def n_jobs(self) -> int:
        return len(self.job_names)

    @property
    def duration_s(self) -> np.ndarray:
        """Lifetime of each job, ``deletion_s - creation_s`` (inf for jobs still running)."""
        return self.deletion_s - self.creation_s

    def demand(self, i: int, model: int = -1) -> Demand:
        """Job ``i`` as a ``Demand``."""
        return Demand(
            num_gpu=int(self.num_gpu[i]),
            gpu_milli=int(self.gpu_milli[i]),
            cpu_milli=int(self.cpu_milli[i]),
            memory_mib=int(self.memory_mib[i]),
            gpu_types=self.job_gpu_types[i],
            model=model,
        )

    def demands(self) -> list[Demand]:
        return [self.demand(i) for i in range(self.n_jobs)]

    def equals(self, other: JobTrace) -> bool:
        """Field-by-field equality (arrays compared element-wise, nan == nan)."""
        for key in self.__dataclass_fields__:
            a, b = getattr(self, key), getattr(other, key)
            if isinstance(a, np.ndarray):
                if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return False
            elif a != b:
                return False
        return True


# ---------------------------------------------------------------- reading
def _open_rows(path: Path, columns: Sequence[str]):
    """Yield (line number, {column: text}) for the data rows of a CSV whose header is ``columns``."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"{path}:1: empty file, expected header {','.join(columns)}")
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        unknown = [h for h in header if h not in columns]
        if missing or unknown or len(header) != len(columns):
            raise ConfigError(
                f"{path}:1: header {header} must hold exactly the columns {list(columns)}"
                f" (missing {missing}, unknown {unknown})"
            )
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ConfigError(f"{path}:{reader.line_num}: {len(row)} fields, expected {len(header)}")
            yield reader.line_num, {h: cell.strip() for h, cell in zip(header, row, strict=True)}


def _row_int(where: str, column: str, text: str, ge: int = 0, le: int | None = None) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or not value.is_integer():
        raise ConfigError(f"{where}: {column} {text!r} must be a whole number")
    value = int(value)
    if value < ge or (le is not None and value > le):
        bound = f">= {ge}" if le is None else f"in [{ge}, {le}]"
        raise ConfigError(f"{where}: {column} {value} must be {bound}")
    return value


def _row_time(where: str, column: str, text: str, empty: float | None) -> float:
    if text == "" or text.lower() == "nan":
        if empty is None:
            raise ConfigError(f"{where}: {column} is required")
        return empty
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {column} {text!r} must be finite")
    return value


def read_alibaba_trace(pods_path: str | Path, nodes_path: str | Path) -> JobTrace:
    """Read a pod CSV and a node CSV in the Alibaba GPU-sharing trace format.

    Malformed rows raise ``ConfigError("<file>:<line>: <reason>")``. GPU type names are numbered in
    order of first appearance, nodes first, then types only pods ask for. Jobs are stably sorted by
    creation time. ``nan`` in a text column is read as empty, as pandas writes it.
    """
    pods_path, nodes_path = Path(pods_path), Path(nodes_path)
    type_names: list[str] = []
    type_index: dict[str, int] = {}

    def type_of(name: str) -> int:
        if name not in type_index:
            type_index[name] = len(type_names)
            type_names.append(name)
        return type_index[name]

    node_names, node_cpu, node_mem, node_gpus, node_type = [], [], [], [], []
    seen: set[str] = set()
    for line, row in _open_rows(nodes_path, NODE_COLUMNS):
        where = f"{nodes_path}:{line}"
        sn = row["sn"]
        if not sn:
            raise ConfigError(f"{where}: sn is empty")
        if sn in seen:
            raise ConfigError(f"{where}: sn {sn!r} appears twice")
        seen.add(sn)
        gpus = _row_int(where, "gpu", row["gpu"])
        model = "" if row["model"].lower() == "nan" else row["model"]
        if gpus > 0 and not model:
            raise ConfigError(f"{where}: model is empty for a node with {gpus} GPUs")
        node_names.append(sn)
        node_cpu.append(_row_int(where, "cpu_milli", row["cpu_milli"]))
        node_mem.append(_row_int(where, "memory_mib", row["memory_mib"]))
        node_gpus.append(gpus)
        node_type.append(type_of(model) if model else -1)

    names, cpu, mem, num, milli, types, qos, phase, created, deleted, scheduled = ([] for _ in range(11))
    for line, row in _open_rows(pods_path, POD_COLUMNS):
        where = f"{pods_path}:{line}"
        if not row["name"]:
            raise ConfigError(f"{where}: name is empty")
        num_gpu = _row_int(where, "num_gpu", row["num_gpu"])
        gpu_milli = _row_int(where, "gpu_milli", row["gpu_milli"], le=GPU_MILLI)
        spec = "" if row["gpu_spec"].lower() == "nan" else row["gpu_spec"]
        parts = spec.split("|") if spec else []
        if any(not p.strip() for p in parts):
            raise ConfigError(f"{where}: gpu_spec {spec!r} has an empty type name")
        allowed = tuple(sorted({type_of(p.strip()) for p in parts}))
        cpu_milli = _row_int(where, "cpu_milli", row["cpu_milli"])
        memory_mib = _row_int(where, "memory_mib", row["memory_mib"])
        try:
            Demand(
                num_gpu=num_gpu,
                gpu_milli=gpu_milli,
                cpu_milli=cpu_milli,
                memory_mib=memory_mib,
                gpu_types=allowed,
            )
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        t_create = _row_time(where, "creation_time", row["creation_time"], None)
        t_delete = _row_time(where, "deletion_time", row["deletion_time"], math.inf)
        if t_delete < t_create:
            raise ConfigError(f"{where}: deletion_time {t_delete:g} is before creation_time {t_create:g}")
        names.append(row["name"])
        cpu.append(cpu_milli)
        mem.append(memory_mib)
        num.append(num_gpu)
        milli.append(gpu_milli)
        types.append(allowed)
        qos.append("" if row["qos"].lower() == "nan" else row["qos"])
        phase.append("" if row["pod_phase"].lower() == "nan" else row["pod_phase"])
        created.append(t_create)
        deleted.append(t_delete)
        scheduled.append(_row_time(where, "scheduled_time", row["scheduled_time"], math.nan))

    order = np.argsort(np.array(created, dtype=np.float64), kind="stable")

    def pick(seq: list) -> list:
        return [seq[i] for i in order]

    return JobTrace(
        gpu_type_names=tuple(type_names),
        node_names=tuple(node_names),
        node_cpu_milli=np.array(node_cpu, dtype=np.int64),
        node_memory_mib=np.array(node_mem, dtype=np.int64),
        node_gpus=np.array(node_gpus, dtype=np.int32),
        node_gpu_type=np.array(node_type, dtype=np.int32),
        job_names=tuple(pick(names)),
        cpu_milli=np.array(pick(cpu), dtype=np.int64),
        memory_mib=np.array(pick(mem), dtype=np.int64),
        num_gpu=np.array(pick(num), dtype=np.int32),
        gpu_milli=np.array(pick(milli), dtype=np.int32),
        job_gpu_types=tuple(pick(types)),
        qos=tuple(pick(qos)),
        pod_phase=tuple(pick(phase)),
        creation_s=np.array(pick(created), dtype=np.float64),
        deletion_s=np.array(pick(deleted), dtype=np.float64),
        scheduled_s=np.array(pick(scheduled), dtype=np.float64),
    )


# ---------------------------------------------------------------- writing
def _fmt_time(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_alibaba_trace(trace: JobTrace, pods_path: str | Path, nodes_path: str | Path) -> None:
    """Write ``trace`` as the two CSV files ``read_alibaba_trace`` reads back unchanged."""
    names = trace.gpu_type_names
    with open(nodes_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(NODE_COLUMNS)
        for i in range(trace.n_nodes):
            t = int(trace.node_gpu_type[i])
            writer.writerow(
                [
                    trace.node_names[i],
                    int(trace.node_cpu_milli[i]),
                    int(trace.node_memory_mib[i]),
                    int(trace.node_gpus[i]),
                    names[t] if t >= 0 else "",
                ]
            )
    with open(pods_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(POD_COLUMNS)
        for i in range(trace.n_jobs):
            writer.writerow(
                [
                    trace.job_names[i],
                    int(trace.cpu_milli[i]),
                    int(trace.memory_mib[i]),
                    int(trace.num_gpu[i]),
                    int(trace.gpu_milli[i]),
                    "|".join(names[t] for t in trace.job_gpu_types[i]),
                    trace.qos[i],
                    trace.pod_phase[i],
                    _fmt_time(trace.creation_s[i]),
                    _fmt_time(trace.deletion_s[i]),
                    _fmt_time(trace.scheduled_s[i]),
                ]
            )


def cluster_from_trace(trace: JobTrace, n_models: int = 0) -> ClusterState:
    """An empty ``ClusterState`` with the trace's nodes, in file order."""
    return ClusterState(
        trace.gpu_type_names,
        trace.node_gpu_type,
        trace.node_gpus,
        trace.node_cpu_milli,
        trace.node_memory_mib,
        n_models=n_models,
        node_names=trace.node_names,
    )


# ------------------------------------------------------------- synthesis
# (GPU type, GPUs, cpu_milli, memory_mib, weight): node shapes that occur in the public node list
# (openb_node_list_all_node.csv), the A10 shape borrowed from its G3 nodes; weights are made up.
SYNTHETIC_NODE_SHAPES: tuple[tuple[str | None, int, int, int, float], ...] = (
    ("G2", 8, 96000, 393216, 0.50),
    ("V100M16", 8, 64000, 262144, 0.10),
    ("V100M32", 8, 96000, 786432, 0.10),
    ("T4", 4, 96000, 393216, 0.10),
    ("A10", 8, 128000, 786432, 0.05),
    (None, 0, 96000, 524288, 0.15),
)

# (kind, num_gpu, weight, [(cpu_milli, memory_mib), ...]): request shapes common in the public pod
# list; the kind weights are an illustrative mix, not fitted to the trace.
_POD_SHAPES: tuple[tuple[str, int, float, tuple[tuple[int, int], ...]], ...] = (
    ("cpu", 0, 0.12, ((8000, 30517), (20000, 65536), (32000, 65536), (4000, 15258))),
    ("share", 1, 0.45, ((4000, 15258), (8000, 30517), (6000, 12288), (3152, 5600))),
    ("whole", 1, 0.30, ((12000, 16384), (16000, 32768), (12000, 24576), (8000, 16384))),
    ("whole", 2, 0.06, ((24000, 65536), (32000, 98304))),
    ("whole", 4, 0.04, ((44000, 163840), (48000, 196608))),
    ("whole", 8, 0.03, ((88000, 327680),)),
)


@functools.lru_cache(maxsize=8)
def _synthetic_names(pattern: str, n: int) -> tuple[str, ...]:
    """``pattern.format(i)`` for i < n, built once per size: a synthetic trace is drawn at every reset."""
    return tuple(pattern.format(i) for i in range(n))


def synthetic_job_trace(
    rng: np.random.Generator,
    n_nodes: int = 32,
    n_jobs: int = 1000,
    mean_interarrival_s: float = 60.0,
    mean_duration_s: float = 3600.0,
    gpu_spec_share: float = 0.1,
    open_ended_share: float = 0.02,
    share_milli_range: tuple[int, int] = (100, 500),
) -> JobTrace:
    """A made-up trace with the shape of the Alibaba GPU-sharing trace, for tests and examples.

    Nodes are drawn from ``SYNTHETIC_NODE_SHAPES`` (8-GPU G2/V100/A10 nodes, 4-GPU T4 nodes,
    CPU-only nodes). Jobs: 45 % share one GPU (``gpu_milli`` uniform in ``share_milli_range``, steps
    of 10), 30 % one whole GPU, 6 / 4 / 3 % two / four / eight GPUs, 12 % CPU-only. A share
    ``gpu_spec_share`` of GPU jobs is restricted to one or two GPU types that can host them (the
    trace's README reports about 33 % in production; its ``gpuspec10`` sample has 10 %). Arrivals are
    Poisson (whole seconds), lifetimes lognormal (sigma 1) with mean ``mean_duration_s``, and a share
    ``open_ended_share`` never ends (empty deletion time).
    """
    n_nodes = int(check_number("synthetic_job_trace.n_nodes", n_nodes, ge=1, integer=True))
    n_jobs = int(check_number("synthetic_job_trace.n_jobs", n_jobs, ge=0, integer=True))
    check_number("synthetic_job_trace.mean_interarrival_s", mean_interarrival_s, gt=0)
    check_number("synthetic_job_trace.mean_duration_s", mean_duration_s, gt=0)
    check_number("synthetic_job_trace.gpu_spec_share", gpu_spec_share, ge=0, le=1)
    check_number("synthetic_job_trace.open_ended_share", open_ended_share, ge=0, le=1)
    lo, hi = share_milli_range
    check_number("synthetic_job_trace.share_milli_range[0]", lo, ge=10, le=990, integer=True)
    check_number("synthetic_job_trace.share_milli_range[1]", hi, ge=lo, le=990, integer=True)

    shapes = SYNTHETIC_NODE_SHAPES
    w = np.array([s[4] for s in shapes])
    picks = rng.choice(len(shapes), size=n_nodes, p=w / w.sum())
    picks[0] = 0  # at least one 8-GPU node, so every job shape fits somewhere
    # Numbered by first appearance, as read_alibaba_trace numbers them, so a written trace reads back equal.
    type_names = tuple(dict.fromkeys(shapes[k][0] for k in picks if shapes[k][0] is not None))
    node_type = [type_names.index(shapes[k][0]) if shapes[k][0] else -1 for k in picks]
    node_gpus = [shapes[k][1] for k in picks]
    node_cpu = [shapes[k][2] for k in picks]
    node_mem = [shapes[k][3] for k in picks]

    kw = np.array([s[2] for s in _POD_SHAPES])
    kinds = rng.choice(len(_POD_SHAPES), size=n_jobs, p=kw / kw.sum())
    cpu, mem, num, milli, types = [], [], [], [], []
    host_cache: dict[tuple[int, int, int], list[int]] = {}  # (GPUs, CPU, memory) -> GPU types that fit
    for k in kinds.tolist():
        kind, n_gpu, _, requests = _POD_SHAPES[k]
        c, m = requests[rng.integers(len(requests))]
        g = int(rng.integers(lo // 10, hi // 10 + 1)) * 10 if kind == "share" else (GPU_MILLI if n_gpu else 0)
        allowed: tuple[int, ...] = ()
        if n_gpu and rng.random() < gpu_spec_share:
            hosts = host_cache.get((n_gpu, c, m))
            if hosts is None:
                hosts = host_cache[n_gpu, c, m] = sorted(
                    {
                        t
                        for t, s in zip(node_type, picks.tolist(), strict=True)
                        if t >= 0 and shapes[s][1] >= n_gpu and shapes[s][2] >= c and shapes[s][3] >= m
                    }
                )
            if hosts:
                chosen = rng.choice(hosts, size=min(len(hosts), int(rng.integers(1, 3))), replace=False)
                allowed = tuple(sorted(int(t) for t in chosen))
        cpu.append(c)
        mem.append(m)
        num.append(n_gpu)
        milli.append(g)
        types.append(allowed)
    created = np.cumsum(np.rint(rng.exponential(mean_interarrival_s, size=n_jobs)))
    sigma = 1.0
    life = np.maximum(1.0, np.rint(rng.lognormal(math.log(mean_duration_s) - sigma**2 / 2, sigma, n_jobs)))
    open_ended = rng.random(n_jobs) < open_ended_share
    deleted = np.where(open_ended, np.inf, created + life)
    is_share = np.array([0 < g < GPU_MILLI for g in milli], dtype=bool)
    qos = tuple(np.where(is_share, "BE", "LS").tolist())
    phase = tuple(np.where(open_ended, "Running", "Succeeded").tolist())
    return JobTrace(
        gpu_type_names=type_names,
        node_names=_synthetic_names("syn-node-{:04d}", n_nodes),
        node_cpu_milli=np.array(node_cpu),
        node_memory_mib=np.array(node_mem),
        node_gpus=np.array(node_gpus),
        node_gpu_type=np.array(node_type),
        job_names=_synthetic_names("syn-pod-{:05d}", n_jobs),
        cpu_milli=np.array(cpu, dtype=np.int64),
        memory_mib=np.array(mem, dtype=np.int64),
        num_gpu=np.array(num, dtype=np.int32),
        gpu_milli=np.array(milli, dtype=np.int32),
        job_gpu_types=tuple(types),
        qos=qos,
        pod_phase=phase,
        creation_s=created,
        deletion_s=deleted,
        scheduled_s=created.copy(),
    )
