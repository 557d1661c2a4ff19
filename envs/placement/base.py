"""What both item sources of ``InferGym/Placement-v0`` share: :class:`PlacementEnv`, the registered
entry point. It owns the action space and masks, the observation, the reward terms and shaping, the
KPIs and the rendering; a subclass per source (``source=`` chooses it, see ``PlacementEnv.__new__``)
supplies the cluster and the items and says how a placement is applied and what comes next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.common import RESERVE_ENGINE, check_action, split_kwargs, weighted_reward
from envs.placement.fgd import FgdTracker
from envs.placement.items import Item, ItemEncoder
from envs.placement.params import (
    ENV_NAME,
    ENV_PARAMS,
    N_NODE_BASE,
    SOURCES,
    PlacementParams,
)
from envs.sim.cluster import GPU_MILLI, ClusterState, Demand
from envs.sim.engine import Simulator
from envs.sim.errors import check_choice, check_keys, fail

if TYPE_CHECKING:
    from envs.placement.policy import PlacerPolicy


class PlacementEnv(gym.Env):
    """Place replicas or jobs on the nodes of a heterogeneous GPU cluster.

    ## Description

    A cluster of nodes, each with a number of GPUs of one type (or none), CPU and memory, receives
    items to place one at a time. An item asks for ``num_gpu`` whole GPUs, or a share (``gpu_milli``
    < 1000 milli-GPU) of one GPU, or no GPU, plus CPU and memory, and may be restricted to some GPU
    types (the model of the Alibaba GPU-sharing trace; Weng et al., "Beware of Fragmentation",
    USENIX ATC 2023). Within the chosen node the cluster takes its default GPUs: the lowest-index
    idle GPUs for whole-GPU items, the best-fitting GPU for a share.

    Two sources of items (argument ``source``; ``PlacementEnv(source=...)`` and
    ``gym.make("InferGym/Placement-v0", source=...)`` return the source's class):

    * ``"llm"`` (default, :class:`~envs.placement.llm.LlmPlacementEnv`): the replicas that the
      scenario's autoscaler asks for while the simulator serves the scenario's requests.
    * ``"jobs"`` (:class:`~envs.placement.jobs.JobPlacementEnv`): the jobs of a trace in the Alibaba
      GPU-sharing trace format, real or synthetic, which arrive at their creation time and leave at
      their deletion time.

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
    * ``llm`` source only: ``slo_violations`` and ``gpu_cost`` of the simulation run after the step
      (:class:`~envs.placement.llm.LlmPlacementEnv`).

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

    The source's cluster and its first item (see the source's class). If no item ever comes (no
    scale-up before the horizon, an empty trace), the first observation is already the final one.

    ## Episode End

    ``terminated`` is always False: nothing ends the task early. ``truncated`` is True on the step
    after which no item remains (when depends on the source). A step taken when no item waits (the
    final observation) places nothing, costs nothing and truncates.

    ## Arguments

    ``gym.make("InferGym/Placement-v0", scenario="default", render_mode=None, **kwargs)``. Own
    arguments (``PlacementParams``): ``source`` ("llm" | "jobs"), ``shaping`` (training reward
    shaping, see Rewards; default 0), and the source's own: ``scaler`` (llm), ``pods_path``,
    ``nodes_path``, ``n_nodes``, ``n_jobs``, ``mean_interarrival_s``, ``mean_duration_s``,
    ``max_jobs`` (jobs); an argument of the other source is an error. Any other keyword is a
    scenario key (``horizon_s``, ``reward``, ...) merged into the scenario; unknown keywords raise
    ConfigError. ``render_mode="rgb_array"``: an occupancy heat map and fragmentation over time.
    ``gymnasium.make_vec("InferGym/Placement-v0", num_envs=N, vectorization_mode="vector_entry_point",
    ...)`` steps N of them together (:class:`~envs.placement.vector.PlacementVecEnv`).

    ## Version History

    * v1: the llm source's models that do not set ``kv_policy`` run the ``paged`` engine (the
      simulator's default since it landed); the jobs source is unchanged.
    * v0: initial version (one class per source since the split; same dynamics, spaces, rewards);
      still registered (:class:`PlacementEnvV0`): the llm source fills in ``kv_policy: reserve``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    #: The version a class serves; ``(VERSION, source)`` picks the class (``__new__``).
    VERSION: ClassVar[int] = 1
    #: ``models[]`` keys this version fills in where the scenario leaves them out
    MODEL_DEFAULTS: ClassVar[Mapping[str, Any]] = {}

    #: The ``source`` argument a subclass serves (set by every subclass).
    source: ClassVar[str]
    #: ``info["kpi"]`` holds the episode's levels so far (counts since reset, current fragmentation),
    #: so an episode's KPIs are its last step's (:class:`agents.EpisodeKpis` with ``cumulative``).
    STEP_KPIS_CUMULATIVE: ClassVar[bool] = True
    #: Keys of ``info["rewards"]``, in the order the weighted reward sums them.
    REWARD_TERMS: ClassVar[tuple[str, ...]] = ("placement_failures", "invalid_actions", "fragmented_gpus",
                                               "gpus_in_use")  # fmt: skip
    _by_source: ClassVar[dict[tuple[int, str], type[PlacementEnv]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "source" in cls.__dict__:
            PlacementEnv._by_source[(cls.VERSION, cls.source)] = cls

    def __new__(
        cls, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any
    ) -> PlacementEnv:
        # The registered entry points are this class (v1) and PlacementEnvV0: ``source`` picks the
        # subclass of that version, which then gets the same arguments in ``__init__``. Unpickling
        # calls ``__new__`` on the subclass itself.
        if not hasattr(cls, "source"):
            source = check_choice("source", kwargs.get("source", PlacementParams.source), SOURCES)
            cls = PlacementEnv._by_source[(cls.VERSION, source)]
        return super().__new__(cls)

    def __init__(self, scenario: Any = "default", render_mode: str | None = None, **kwargs: Any) -> None:
        self.scenario, own = split_kwargs(scenario, kwargs, ENV_PARAMS, ENV_NAME, self.MODEL_DEFAULTS)
        own.setdefault("source", self.source)
        self.params = PlacementParams(**own)
        if self.params.source != self.source:
            raise fail(
                "source",
                self.params.source,
                f"is not the source {type(self).__name__} serves ({self.source!r})",
            )
        if render_mode is not None:
            check_choice("render_mode", render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.n_nodes = n_nodes = self._setup_source()
        self._type_pos = {name: t for t, name in enumerate(self.type_names)}
        t = len(self.type_names)
        self._node_dim = N_NODE_BASE + t
        self._encoder = ItemEncoder(t, self._max_gpus, self._max_cpu, self._max_mem)
        self._item_dim = self._encoder.dim
        dim = n_nodes * self._node_dim + self._item_dim
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(dim,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(n_nodes)
        self._fgd = FgdTracker()
        self.episode_index = -1
        self._clear_episode()

    def _clear_episode(self) -> None:
        """No episode yet: ``step()`` asks for ``reset()``."""
        self.sim: Simulator | None = None
        self.cluster: ClusterState | None = None
        self.pending_demand: Demand | None = None
        self._ended = True

    # ------------------------------------------------------------------ what a source supplies

    def _setup_source(self) -> int:
        """Check the source's arguments; set ``type_names``, ``_max_gpus``, ``_max_cpu``,
        ``_max_mem`` (the item features' normalisers, see ``ItemEncoder``); return the number of
        nodes."""
        raise NotImplementedError

    def _start_episode(self) -> None:
        """Build the episode's cluster (through :meth:`_prepare_cluster`), set ``now_s`` and make the
        first item wait (:meth:`_set_item`)."""
        raise NotImplementedError

    def _place(self, node: int, demand: Demand) -> bool:
        """Apply the placement of the waiting item on ``node``; whether it was accepted."""
        raise NotImplementedError

    def _next_item(self, terms: dict[str, float]) -> None:
        """Move on to the next item (or none), filling the source's own reward terms in ``terms``."""
        raise NotImplementedError

    def _weights_cached(self) -> np.ndarray | float:
        """Per node, whether the waiting item's model weights are cached (0.0 if none can be)."""
        return 0.0

    def _source_label(self) -> str:
        """What the items are, for the rendered title."""
        raise NotImplementedError

    # ------------------------------------------------------------------ reset

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        super().reset(seed=seed)
        if options:
            check_keys("options", options, ())
        self.episode_index += 1
        self._ended = False
        self._placed = self._failures = self._invalid = self._items = 0
        self._terms_zero = dict.fromkeys(self.REWARD_TERMS, 0.0)
        self._start_episode()
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
        nodes = self._node_block()
        typed = np.flatnonzero(c.node_gpu_type >= 0)
        nodes[typed, 3 + c.node_gpu_type[typed]] = 1.0
        self._fgd.start(c, types)

    def _set_item(self, item: Item | None) -> None:
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
        if self._ended:
            raise RuntimeError(f"{ENV_NAME}: the episode ended (or never started); call reset()")
        terms = dict(self._terms_zero)
        d = self.pending_demand
        if d is None:  # the episode had nothing to place at all: this step ends it
            self._ended = True
            return self._observe(), 0.0, False, True, {"rewards": terms, "kpi": self._kpi(*self._usage())}
        if self._place(node, d):
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
        self._next_item(terms)
        frag, in_use = self._usage()  # after the clock moved: the state the observation shows
        self._record(frag, in_use)
        truncated = self.pending_demand is None
        self._ended = truncated
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

    @classmethod
    def controller_policy(cls, spec: Any, seed: int = 0) -> PlacerPolicy:
        """The adapter that runs the classical placer ``spec`` (a name or a ``{"kind": ...}`` mapping)
        through this action space, drawing from its own generator seeded by ``seed``."""
        from envs.placement.policy import PlacerPolicy  # it imports this module

        return PlacerPolicy(spec, seed=seed)

    # ------------------------------------------------------------------ observation and KPIs

    def _node_block(self) -> np.ndarray:
        # A fresh view each time: a view stored as an attribute would not survive pickling as one.
        return self._buf[: self.n_nodes * self._node_dim].reshape(self.n_nodes, self._node_dim)

    def _observe(self) -> np.ndarray:
        c, nodes, t = self.cluster, self._node_block(), len(self.type_names)
        nodes[:, 0] = c.gpu_full_free * self._inv_gpus
        nodes[:, 1] = c.gpu_free_total * self._inv_cap
        nodes[:, 2] = np.maximum(c.gpu_max_free, 0) * (1.0 / GPU_MILLI)
        nodes[:, 3 + t] = self._weights_cached()
        nodes[:, 4 + t] = c.node_alloc_count > 0
        nodes[:, 5 + t] = c.cpu_free_milli * self._inv_cpu
        nodes[:, 6 + t] = c.mem_free_mib * self._inv_mem
        self._item_block()
        # Every feature is free / capacity with free <= capacity, or a 0/1 flag: in [0, 1] without a
        # clip (x * (1 / y) for x <= y overshoots 1 by at most 2 float64 ulps, which float32 rounds away).
        return self._buf.copy()

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

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from envs.placement.render import draw_cluster  # matplotlib only when a frame is drawn

        title = f"Placement-v{self.VERSION}, {self._source_label()}: {self._placed} placed, {self._failures} rejected"
        return draw_cluster(self.cluster, self._history, self.now_s, title)


class PlacementEnvV0(PlacementEnv):
    """``InferGym/Placement-v0``: :class:`PlacementEnv` (v1) whose llm source runs the ``reserve`` engine
    wherever a model does not set ``kv_policy`` (the simulator's default when v0 was made); its jobs source
    is v1's. Kept to reproduce results made with it; use ``InferGym/Placement-v1``."""

    VERSION = 0
    MODEL_DEFAULTS = RESERVE_ENGINE
