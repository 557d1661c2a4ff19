"""The replica lifecycle: placing, loading, draining and releasing replicas.

LOADING (cold start; GPUs allocated and billed) -> READY -> DRAINING (takes no new requests,
finishes its queue and batch) -> RELEASED. A cold start transfers the model's weights from remote
storage, whose bandwidth is shared equally by all transfers in progress (the equal-share model of
a storage link), or from the node's local disk when the node held the model within the cache TTL,
then spends the fixed ``startup_s``. Placement asks the scenario's placer; no room is a recorded
placement failure, never an exception. A mixin of :class:`envs.sim.engine.Simulator`, which owns
the state; the kernel releases drained replicas itself and :meth:`ReplicaLifecycle.sync_releases`
frees their GPUs.
"""

from __future__ import annotations

import math

import numpy as np

from envs.sim import kernel as K
from envs.sim.cluster import Allocation, Demand
from envs.sim.config import ModelDeployment
from envs.sim.eventq import _release as release_replica
from envs.sim.eventq import set_replica_state
from envs.sim.hardware import GpuType, default_max_batched_tokens
from envs.sim.routing import hash64
from envs.sim.state import ReplicaRecord
from envs.sim.view import ModelLoad


class ReplicaLifecycle:
    """Adding, removing and releasing replicas (mixed into :class:`~envs.sim.engine.Simulator`)."""

    def sync_releases(self) -> None:
        """Free the cluster resources of replicas the kernel released (drained)."""
        n = int(self.state.gi[K.I_NRELEASED])
        if n == self._synced_releases:
            return
        self._synced_releases = n
        released = [rep for rep in self.state.live if self.state.pi[rep.rid, K.Q_STATE] == K.REP_RELEASED]
        for rep in released:
            self._free(rep, float(self.state.pf[rep.rid, K.P_RELEASE]))

    def _free(self, rep: ReplicaRecord, t: float) -> None:
        rep.freed = True
        self.state.live.remove(rep)
        self.cluster.release(rep.alloc)
        if self.state.pf[rep.rid, K.P_READY] <= t:  # it finished loading: the weights stay on the node's disk
            self.cluster.touch_cache(rep.alloc.node, rep.model, t)

    def _weights_on_node(self, node: int, m: int, now: float) -> bool:
        """Whether ``node`` holds model ``m``'s weights: a loaded replica there, or a cached copy within the TTL.

        A replica still loading does not count: its transfer has not finished.
        """
        if (
            self.cluster.cached[node, m]
            and now - self.cluster.cached_at[node, m] <= self.scenario.storage.cache_ttl_s
        ):
            return True
        return any(
            r.model == m and r.alloc.node == node and self.state.pf[r.rid, K.P_READY] <= now
            for r in self.state.live
        )

    def replica_demand(self, m: int, gpu_type: int | None = None) -> Demand:
        """What one replica of model ``m`` asks of a node: ``tensor_parallel`` whole GPUs of an allowed type."""
        dep = self.scenario.models[m]
        names = [g.name for g in self.gpu_types]
        if gpu_type is None:
            types = tuple(names.index(g) for g in dep.gpu_types if self._rep_params.get((m, names.index(g))))
        else:
            types = (gpu_type,)
        return Demand(num_gpu=dep.tensor_parallel, gpu_types=types, model=m)

    def _place(self, m: int, gpu_type: int | None, node: int | None,
               capacity: str | None = None) -> tuple[Allocation, int] | None:  # fmt: skip
        if capacity is not None:  # only on-demand or only spot nodes, whatever the placer prefers
            cl = self.cluster
            cl.node_excluded[:] = cl.node_spot if capacity == "on_demand" else ~cl.node_spot
            cl.excluding = True
            try:
                return self._place(m, gpu_type, node)
            finally:
                cl.excluding = False
        types = self._type_order[m] if gpu_type is None else (gpu_type,)
        for g in types:
            if self._rep_params.get((m, g)) is None:
                continue
            d = self._demands.get((m, g))
            if d is None:  # Demand validates its fields: build each (model, GPU type) once
                d = Demand(num_gpu=self.scenario.models[m].tensor_parallel, gpu_type=g, model=m)
                self._demands[m, g] = d
            if node is None:
                chosen = self.placer.select(self.cluster, d, self.rng)
                if chosen >= 0 and self.cluster.excluding and not self.cluster.fits(chosen, d):
                    chosen = -1  # a placer that cached its choices offered an excluded node
            else:
                chosen = node if 0 <= node < self.cluster.n_nodes and self.cluster.fits(node, d) else -1
            if chosen >= 0:
                return self.cluster.allocate(chosen, d), g
        return None

    def add_replica(self, model: int | str, node: int | None = None, gpu_type: int | None = None) -> bool:
        """Start one new replica of ``model`` (cold start), on ``node`` or where the placer says.

        Returns False, and counts a placement failure, when it does not fit
        (on that node, or anywhere). Used by placement decisions made outside
        the simulator (the Placement environment); scalers use
        :meth:`set_target_replicas`.
        """
        m = self.scenario.model_index(model) if isinstance(model, str) else int(model)
        if (
            self.replicas_of(m)["ready"] + self.replicas_of(m)["loading"]
            >= self.scenario.models[m].max_replicas
        ):
            return False
        ok = self._add_replica(m, gpu_type, node=node)
        if ok:
            self.target[m] = self.replicas_of(m)["ready"] + self.replicas_of(m)["loading"]
        return ok

    def desired_replicas(self, loads: list[ModelLoad | None] | None = None) -> np.ndarray:
        """Every model's scaler target, clamped to its limits, without applying it.

        ``loads`` are the scalers' views (default: :meth:`model_loads`, which moves no window); a
        ``None`` view (a scaler with ``reads_load = False``) and a ``None`` answer keep the target.
        """
        out = np.zeros(self.n_models, np.int64)
        for m, load in enumerate(self.model_loads() if loads is None else loads):
            dep = self.scenario.models[m]
            want = self.scalers[m].desired_replicas(load)
            want = self.target[m] if want is None else want
            out[m] = min(max(int(want), dep.min_replicas), dep.max_replicas)
        return out

    def _add_replica(self, m: int, gpu_type: int | None, warm: bool = False, node: int | None = None,
                     capacity: str | None = None) -> bool:  # fmt: skip
        placed = self._place(m, gpu_type, node, capacity)
        if placed is None:
            self.placement_failures += 1
            self.placement_failures_by_model[m] += 1
            return False
        alloc, g = placed
        state = self.state
        r = state.new_replica_row()
        dep = self.scenario.models[m]
        now = self.now
        pf, pi = state.pf, state.pi
        tmpl = self._templates.get((m, g))
        if tmpl is None:
            tmpl = self._templates[m, g] = self._replica_template(m, g)
        pf[r], pi[r], usd_per_s = tmpl  # a new row: every field the template does not set is 0
        pf[r, K.P_ALLOC] = now
        pf[r, K.P_READY] = now if warm else math.inf
        pi[r, K.Q_HASH] = int(hash64(np.uint64(r + 1)) >> np.uint64(1))
        if dep.role != "aggregated":
            self._set_role(r, m, dep, alloc.node)
        state.mrep[m, state.mn[m]] = r
        state.mn[m] += 1
        if self._node_price[alloc.node] != 1.0:  # a spot node (multiplying by 1.0 would change no bit)
            usd_per_s *= self._node_price[alloc.node]
        rep = ReplicaRecord(r, m, g, alloc, dep.tensor_parallel, usd_per_s)
        self.state.records.append(rep)
        self.state.live.append(rep)
        state.rep_gpus[r] = rep.gpus
        state.rep_usd_per_s[r] = rep.usd_per_s
        if warm:
            set_replica_state(pi, state.mrep, state.mn, state.gi, r, K.REP_READY)
            return True
        set_replica_state(pi, state.mrep, state.mn, state.gi, r, K.REP_LOADING)
        st = self.scenario.storage
        if dep.spec.load_time_s is not None:
            self._push_ready(r, now + dep.spec.load_time_s)
        elif self._weights_on_node(alloc.node, m, now):
            self._push_ready(r, now + dep.spec.weight_bytes / (st.local_bandwidth_gbps * 1e9) + st.startup_s)
        else:
            self._progress_loads(now)
            rep.remote = True
            rep.load_bytes = dep.spec.weight_bytes
            self._loading_remote.append(rep)
            self._schedule_remote_loads(now)
        return True

    def _replica_template(self, m: int, g: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``(pf row, pi row, USD per second)`` every new replica of model ``m`` on GPU type ``g``
        starts from, before its own fields (allocation time, readiness, hash, role and links) are set.
        Built once per (model, GPU type): a row copy costs what two of its scalar writes do."""
        coef, kv_cap, speed = self._rep_params[m, g]
        dep = self.scenario.models[m]
        pf, pi = np.zeros(K.N_PF), np.zeros(K.N_PI, np.int64)
        pf[K.P_CTOK : K.P_OVH + 1] = coef[:4]
        pf[K.P_TILE] = coef[4]
        pf[K.P_RELEASE] = math.inf
        pf[K.P_SPEED] = speed
        pf[K.P_EWMA] = -1.0
        pi[K.Q_MODEL] = m
        pi[K.Q_MAXB] = 1 if self.per_request else dep.max_batch
        pi[K.Q_KVCAP] = kv_cap
        if dep.kv_policy == "paged":
            self._set_paged(pi, dep, kv_cap, self.gpu_types[g])
        return pf, pi, dep.tensor_parallel * self.gpu_types[g].usd_per_hour / 3600.0

    def _set_paged(self, pi: np.ndarray, dep: ModelDeployment, kv_cap: int, gpu: GpuType) -> None:
        """A replica's paged-engine settings in its ``pi`` row (see :mod:`envs.sim.kernel` and
        :mod:`envs.sim.kvcache`)."""
        st = self.state
        bt = dep.kv_block_tokens
        max_len = dep.max_model_len if dep.max_model_len is not None else dep.spec.max_context
        budget = (
            dep.max_batched_tokens if dep.max_batched_tokens is not None else default_max_batched_tokens(gpu)
        )
        cache = dep.prefix_caching and st.kc.shape[2] > 0
        pi[K.Q_PAGED] = 1
        pi[K.Q_BT] = bt
        pi[K.Q_BLKCAP] = kv_cap // bt
        pi[K.Q_MAXLEN] = max_len
        pi[K.Q_CHUNKED] = int(dep.chunked_prefill)
        # without chunking a prompt is never split, so the budget holds the longest (vLLM V0's rule)
        pi[K.Q_BUDGET] = budget if dep.chunked_prefill else max(budget, max_len)
        pi[K.Q_CACHE] = int(cache)
        pi[K.Q_EB] = self.prefix.block_tokens // bt if cache else 1
        pi[K.Q_LRUH] = pi[K.Q_LRUT] = -1

    def _set_role(self, r: int, m: int, dep: ModelDeployment, node: int) -> None:
        """Replica ``r``'s pool role and KV-transfer links (disaggregated serving, :mod:`envs.sim.paged`)."""
        pi, pf = self.state.pi, self.state.pf
        pi[r, K.Q_ROLE] = K.ROLE_PREFILL if dep.role == "prefill" else K.ROLE_DECODE
        pi[r, K.Q_DPOOL] = self.scenario.decode_pool(m)
        pi[r, K.Q_NODE] = node
        pi[r, K.Q_XHEAD] = pi[r, K.Q_XTAIL] = -1
        pool = self._node_pool[node]
        nvl, net = pool.links
        pf[r, K.P_NVL_BPS] = dep.tensor_parallel * nvl
        pf[r, K.P_NET_BPS] = dep.tensor_parallel * net
        pf[r, K.P_NVL_LAT] = pool.nvlink_latency_s
        pf[r, K.P_NET_LAT] = pool.network_latency_s
        pf[r, K.P_KVBYTES] = dep.spec.kv_bytes_per_token

    def _push_ready(self, r: int, t: float) -> None:
        self.state.pi[r, K.Q_VERSION] += 1  # invalidates an earlier READY estimate
        K.heap_push(
            self.state.hp,
            self.state.gi,
            self.state.pi,
            float(t),
            K.EV_READY,
            r,
            self.state.pi[r, K.Q_VERSION],
        )

    def _progress_loads(self, now: float) -> None:
        """Move remote transfers from the last update to ``now`` under equal bandwidth sharing."""
        bw = self.scenario.storage.remote_bandwidth_gbps * 1e9
        t = self._load_clock
        active = [r for r in self._loading_remote if r.load_bytes > 0]
        while active and t < now:
            share = bw / len(active)
            smallest = min(r.load_bytes for r in active)
            dt = min(now - t, smallest / share)
            for r in active:
                r.load_bytes = max(0.0, r.load_bytes - share * dt)
            t += dt
            active = [r for r in active if r.load_bytes > 1e-6]
        self._loading_remote = [r for r in self._loading_remote if r.load_bytes > 1e-6]
        self._load_clock = now

    def _schedule_remote_loads(self, now: float) -> None:
        """(Re)compute every active transfer's finish time assuming no new transfer starts."""
        bw = self.scenario.storage.remote_bandwidth_gbps * 1e9
        startup = self.scenario.storage.startup_s
        active = sorted(self._loading_remote, key=lambda r: (r.load_bytes, r.rid))
        t, done_bytes = now, 0.0
        for k, rep in enumerate(active):
            t += (rep.load_bytes - done_bytes) * (len(active) - k) / bw
            done_bytes = rep.load_bytes
            self._push_ready(rep.rid, t + startup)

    def _remove_replica(self, m: int) -> bool:
        """Take one replica of model ``m`` out of service: cancel a load, else drain a READY one."""
        pi = self.state.pi
        live = self.state.mrep[m, : self.state.mn[m]]
        states = pi[live, K.Q_STATE]
        loading = live[states == K.REP_LOADING]
        now = self.now
        if loading.size:
            r = int(loading.max())  # newest load first: it has made the least progress
            self._progress_loads(now)
            release_replica(self.state.pf, pi, self.state.mrep, self.state.mn, self.state.gi, r, now)
            rep = self.state.records[r]
            self._free(rep, now)
            if rep in self._loading_remote:
                self._loading_remote.remove(rep)
                self._schedule_remote_loads(now)
            return True
        ready = live[states == K.REP_READY]
        if not ready.size:
            return False
        # drain the replica with the least work in flight (newest on ties)
        work = self.state.qn[self.n_models + ready] + pi[ready, K.Q_NRUN]
        r = int(ready[work == work.min()].max())
        set_replica_state(pi, self.state.mrep, self.state.mn, self.state.gi, r, K.REP_DRAINING)
        if (pi[r, K.Q_BUSY] == 0 and pi[r, K.Q_NRUN] == 0 and self.state.qn[self.n_models + r] == 0
                and pi[r, K.Q_XOUT] == 0 and pi[r, K.Q_XIN] == 0):  # fmt: skip
            release_replica(self.state.pf, pi, self.state.mrep, self.state.mn, self.state.gi, r, now)
            self._free(self.state.records[r], now)
        return True

    def replicas_of(self, m: int) -> dict[str, int]:
        """Counts of model ``m``'s live replicas by state."""
        st = self.state.pi[self.state.mrep[m, : self.state.mn[m]], K.Q_STATE]
        return {
            "ready": int(np.count_nonzero(st == K.REP_READY)),
            "loading": int(np.count_nonzero(st == K.REP_LOADING)),
            "draining": int(np.count_nonzero(st == K.REP_DRAINING)),
        }

    def set_target_replicas(self, model: int | str, n: int, gpu_type: int | str | None = None,
                            capacity: str | None = None) -> int:  # fmt: skip
        """Ask for ``n`` provisioned (READY + LOADING) replicas of ``model``.

        ``n`` is clamped to the deployment's ``[min_replicas, max_replicas]``
        (returned). New replicas go on GPUs of ``gpu_type`` (index or name; default:
        the model's allowed types in order) wherever the placer puts them, on
        ``capacity`` nodes only if given (``"on_demand"`` or ``"spot"``); a
        replica with no room counts as a placement failure. Removal cancels
        loading replicas first, then drains the READY replica with least work.
        """
        m = self.scenario.model_index(model) if isinstance(model, str) else int(model)
        if not 0 <= m < self.n_models:
            raise ValueError(f"model: {model!r} must be in [0, {self.n_models})")
        if isinstance(gpu_type, str):
            names = [g.name for g in self.gpu_types]
            if gpu_type not in names:
                raise ValueError(f"gpu_type: {gpu_type!r} must be one of {names}")
            gpu_type = names.index(gpu_type)
        if capacity not in (None, "on_demand", "spot"):
            raise ValueError(f"capacity: {capacity!r} must be 'on_demand', 'spot' or None")
        counts = self.replicas_of(m)
        return self._set_target(m, n, counts["ready"] + counts["loading"], gpu_type, capacity)

    def _set_target(self, m: int, n: int, have: int, gpu_type: int | None = None,
                    capacity: str | None = None) -> int:  # fmt: skip
        """:meth:`set_target_replicas` for a checked model index ``m`` with ``have`` provisioned replicas."""
        dep = self.scenario.models[m]
        n = int(min(max(int(n), dep.min_replicas), dep.max_replicas))
        self.target[m] = n
        for _ in range(n - have):
            if not self._add_replica(m, gpu_type, capacity=capacity):
                break
        for _ in range(have - n):
            if not self._remove_replica(m):
                break
        return n
