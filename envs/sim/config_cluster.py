"""A scenario's hardware, validated: node pools of GPUs (with spot pricing and random failures), scripted
faults and the storage replicas load their weights from (``nodes``, ``faults``, ``storage``;
``docs/scenarios.md``). Part of :mod:`envs.sim.config`, which re-exports every class."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from envs.sim.errors import check_keys, check_number, fail
from envs.sim.hardware import GpuType, default_links, gpu_from_config

#: Size bounds: what one simulation holds in memory on a machine of a few GiB (errors say so).
MAX_NODES = 20_000  # nodes over all pools (cluster and replica arrays grow with them)


@dataclass(frozen=True)
class SpotSpec:
    """A spot / preemptible pool: cheaper GPUs that the provider takes back after a notice.

    ``notice_s`` defaults to AWS's two-minute interruption notice
    (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html);
    GCP gives 30 s (https://cloud.google.com/compute/docs/instances/spot#preemption-process).
    """

    price_factor: float  #: spot price / on-demand price of the pool's GPUs
    preemptions_per_hour: float  #: per node (Poisson)
    down_s: float  #: mean seconds until a reclaimed node's capacity can be had again (exponential)
    notice_s: float = 120.0

    @classmethod
    def from_config(cls, raw: Any, path: str) -> SpotSpec:
        check_keys(path, raw, {"price_factor", "preemptions_per_hour", "down_s", "notice_s"},
                   required={"price_factor", "preemptions_per_hour", "down_s"})  # fmt: skip
        return cls(
            float(check_number(f"{path}.price_factor", raw["price_factor"], gt=0, le=1)),
            float(check_number(f"{path}.preemptions_per_hour", raw["preemptions_per_hour"], gt=0)),
            float(check_number(f"{path}.down_s", raw["down_s"], gt=0)),
            float(check_number(f"{path}.notice_s", raw.get("notice_s", 120.0), ge=0)),
        )


@dataclass(frozen=True)
class NodePool:
    """``count`` identical nodes, each with ``gpus_per_node`` GPUs of one type."""

    name: str
    gpu: GpuType
    count: int
    gpus_per_node: int = 8
    cached_models: tuple[str, ...] = ()
    mtbf_s: float | None = None  #: mean time between failures of one node (exponential); None: never fails
    mttr_s: float | None = None  #: mean time to repair a failed node (exponential); required with mtbf_s
    spot: SpotSpec | None = None  #: a spot / preemptible pool (None: on-demand)
    #: KV-cache transfers (disaggregated serving): GB/s per GPU and direction to a GPU of the same node,
    #: Gb/s per GPU to other nodes, and the latency of one transfer within / across nodes (s); None:
    #: the GPU type's defaults (``hardware.GPU_LINKS``)
    nvlink_gbps: float | None = None
    network_gbps: float | None = None
    nvlink_latency_s: float = 5e-6
    network_latency_s: float = 2e-5

    KEYS = frozenset(
        {"name", "gpu", "count", "gpus_per_node", "cached_models", "mtbf_s", "mttr_s", "spot", "nvlink_gbps",
         "network_gbps", "nvlink_latency_s", "network_latency_s"}
    )  # fmt: skip

    @property
    def links(self) -> tuple[float, float]:
        """``(intra-node, inter-node)`` bytes/s of one GPU's KV transfers."""
        nvl, net = default_links(self.gpu)
        nvl = self.nvlink_gbps if self.nvlink_gbps is not None else nvl
        net = self.network_gbps if self.network_gbps is not None else net
        return nvl * 1e9, net * 1e9 / 8

    @classmethod
    def from_config(cls, raw: Any, path: str) -> NodePool:
        check_keys(path, raw, cls.KEYS, required={"gpu"})
        gpu = gpu_from_config(raw["gpu"], f"{path}.gpu")
        count = int(check_number(f"{path}.count", raw.get("count", 1), ge=1, integer=True))
        if count > MAX_NODES:
            raise fail(
                f"{path}.count", count, f"must be <= {MAX_NODES} (the nodes one simulation holds in memory)"
            )
        per_node = int(
            check_number(f"{path}.gpus_per_node", raw.get("gpus_per_node", 8), ge=1, le=64, integer=True)
        )
        cached = raw.get("cached_models", [])
        if not isinstance(cached, (list, tuple)) or not all(isinstance(c, str) for c in cached):
            raise fail(f"{path}.cached_models", cached, "must be a list of model names")
        mtbf = raw.get("mtbf_s")
        mttr = raw.get("mttr_s")
        if mtbf is not None:
            mtbf = float(check_number(f"{path}.mtbf_s", mtbf, gt=0))
            if mttr is None:
                raise fail(
                    f"{path}.mttr_s", None, "is required with mtbf_s (mean seconds a failed node stays down)"
                )
        if mttr is not None:
            mttr = float(check_number(f"{path}.mttr_s", mttr, gt=0))
        spot = None if raw.get("spot") is None else SpotSpec.from_config(raw["spot"], f"{path}.spot")
        links = {}
        for key, hi in (("nvlink_gbps", 1e5), ("network_gbps", 1e5), ("nvlink_latency_s", 1.0),
                        ("network_latency_s", 1.0)):  # fmt: skip
            if raw.get(key) is not None:
                bound = {"gt": 0} if key.endswith("gbps") else {"ge": 0}
                links[key] = float(check_number(f"{path}.{key}", raw[key], le=hi, **bound))
        return cls(str(raw.get("name", gpu.name)), gpu, count, per_node, tuple(cached), mtbf, mttr, spot,
                   **links)  # fmt: skip


@dataclass(frozen=True)
class ScriptedFault:
    """``nodes`` (offsets within pool ``pool``) fail at ``at_s`` and come back ``duration_s`` later."""

    at_s: float
    pool: int
    nodes: tuple[int, ...]
    duration_s: float

    @classmethod
    def from_config(cls, raw: Any, path: str, pools: tuple[NodePool, ...]) -> ScriptedFault:
        check_keys(path, raw, {"at_s", "pool", "nodes", "duration_s"}, required={"at_s", "pool"})
        at = float(check_number(f"{path}.at_s", raw["at_s"], ge=0))
        names = [p.name for p in pools]
        pool = raw["pool"]
        if isinstance(pool, str):
            if pool not in names:
                raise fail(f"{path}.pool", pool, f"must be a node pool name {names} or index")
            pool = names.index(pool)
        else:
            pool = int(check_number(f"{path}.pool", pool, ge=0, lt=len(pools), integer=True))
        count = pools[pool].count
        nodes = raw.get("nodes", 1)
        if isinstance(nodes, (list, tuple)):
            if not nodes or len(set(nodes)) != len(nodes):
                raise fail(f"{path}.nodes", nodes, "must be a non-empty list of distinct node offsets")
            offsets = tuple(
                int(check_number(f"{path}.nodes[{i}]", k, ge=0, lt=count, integer=True))
                for i, k in enumerate(nodes)
            )
        else:
            n = int(check_number(f"{path}.nodes", nodes, ge=1, le=count, integer=True))
            offsets = tuple(range(n))  # the pool's first n nodes
        # no duration_s: the nodes never come back
        dur = (
            math.inf
            if raw.get("duration_s") is None
            else float(check_number(f"{path}.duration_s", raw["duration_s"], gt=0))
        )
        return cls(at, pool, offsets, dur)


@dataclass(frozen=True)
class StorageSpec:
    """Where replica weights come from at a cold start.

    Remote storage bandwidth is shared equally by the loads in progress
    (processor sharing); a node that held the model within ``cache_ttl_s``
    loads it from its local disk instead. ``startup_s`` is the fixed part of a
    cold start (container start, engine init, graph capture).
    """

    remote_bandwidth_gbps: float = 2.0
    local_bandwidth_gbps: float = 8.0
    cache_ttl_s: float = 3600.0
    startup_s: float = 20.0

    @classmethod
    def from_config(cls, raw: Any, path: str) -> StorageSpec:
        d = cls()
        check_keys(path, raw, {"remote_bandwidth_gbps", "local_bandwidth_gbps", "cache_ttl_s", "startup_s"})
        return cls(
            float(
                check_number(
                    f"{path}.remote_bandwidth_gbps",
                    raw.get("remote_bandwidth_gbps", d.remote_bandwidth_gbps),
                    gt=0,
                )
            ),
            float(
                check_number(
                    f"{path}.local_bandwidth_gbps",
                    raw.get("local_bandwidth_gbps", d.local_bandwidth_gbps),
                    gt=0,
                )
            ),
            float(check_number(f"{path}.cache_ttl_s", raw.get("cache_ttl_s", d.cache_ttl_s), ge=0)),
            float(check_number(f"{path}.startup_s", raw.get("startup_s", d.startup_s), ge=0)),
        )
