"""A native vector environment split over worker processes: every core runs whole sub-env steps.

``gymnasium.make_vec(env_id, num_envs=N, vectorization_mode="vector_entry_point", processes=k,
**kwargs)`` (or ``AutoscaleVecEnv(N, processes=k, ...)``, any :class:`~envs.vector.base.NativeVectorEnv`)
builds a :class:`ProcessVectorEnv`: the ``N`` sub-envs in ``k`` contiguous shares, the first stepped
in this process and each other one by a worker process, each share an ordinary native vector env
stepped on its own core. A step sends each worker its share of the actions, steps this process's
share meanwhile and concatenates the shares of what they return: Gymnasium's ``AsyncVectorEnv``
pattern (one pipe per worker, ``gymnasium/vector/async_vector_env.py``) with batched shares, as
EnvPool and SB3's ``SubprocVecEnv`` with several envs per process do, and with this process's
core working rather than waiting.

Why: within one process the sub-envs' Python phases (actions, window reads, observations, resets)
run on one thread whatever the number of cores, and only the compiled simulations share the
others (:mod:`envs.vector.autoscale`); that serial part caps the Autoscale env's gain from a second
core at about 1.5x. With processes the whole step runs in parallel, at the cost of one pipe round
trip per worker and step (paid once for the worker's share) and of the shares' steps ending
together (each step waits for the slowest share).

The numbers are the in-process vector env's: sub-env ``i`` is reset with ``seed + i`` in whichever
worker holds it, and each worker steps its sub-envs exactly as a vector env of its share would
(tested against the in-process env, infos included). Infos are merged key by key; an entry only
some workers have (``final_obs`` when an episode ended in one) is filled as Gymnasium's
``VectorEnv._add_info`` fills a sub-env without it (zeros, ``None`` for objects, ``False`` masks).

Each share's simulations use at most ``threads`` threads (default: the machine's numba threads
divided by ``processes``, at least one). Scripts that start processes this way need the
``if __name__ == "__main__":`` guard of Python's ``multiprocessing`` (the ``forkserver`` and
``spawn`` start methods import the main module). A worker's exception is raised again here with the worker's traceback
attached as a note. Pickling gathers the workers' vector envs; unpickling starts new workers with
them, so a pickled env continues identically. Sub-env attributes are reached through
:meth:`get_sub_attr`, :meth:`set_sub_attr` and :meth:`call_sub` (as on the in-process env);
``envs`` is not available here (the sub-envs live in the workers).
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.sim.errors import check_number, fail
from envs.vector.base import NativeVectorEnv, sub_env_indices


def _local_command(vec: Any, cmd: str, data: Any) -> Any:
    """Run one command on a share's vector env (in a worker, or this process's share)."""
    if cmd == "step":
        return vec.step(data)
    if cmd == "reset":
        return vec.reset(seed=data[0], options=data[1])
    if cmd == "masks":
        return vec.action_masks()
    if cmd == "get":
        return vec.get_sub_attr(data[1], data[0])
    if cmd == "set":
        return vec.set_sub_attr(data[1], data[2], data[0])
    if cmd == "call":
        return vec.call_sub(data[1], *data[2], indices=data[0], **data[3])
    if cmd == "state":
        return vec
    raise ValueError(f"unknown command {cmd!r}")


def _worker(conn: Any, payload: tuple) -> None:
    """A worker's loop: build (or adopt) its share's vector env, then answer commands until ``close``."""
    import numba

    numba.set_num_threads(max(1, min(payload[1], numba.config.NUMBA_NUM_THREADS)))
    try:
        if payload[0] == "build":
            vec_class, n, scenario, kwargs = payload[2:]
            vec = vec_class(n, scenario, **kwargs)
        else:
            vec = payload[2]
        vec.max_threads = payload[1]
        conn.send(("ok", None))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent, which raises it)
        conn.send(("error", (exc, traceback.format_exc())))
        conn.close()
        return
    while True:
        try:
            cmd, data = conn.recv()
        except EOFError:  # the parent went away
            break
        if cmd == "close":
            vec.close()
            conn.send(("ok", None))
            break
        try:
            conn.send(("ok", _local_command(vec, cmd, data)))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", (exc, traceback.format_exc())))
    conn.close()


def merge_infos(parts: Sequence[Mapping[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """The batched infos of consecutive shares of sub-envs (``parts[j]`` covers ``sizes[j]`` of them) as
    one batch: every key's arrays concatenated, dicts merged key by key, and an entry a share lacks
    filled as ``gymnasium.vector.VectorEnv._add_info`` fills a sub-env without it."""
    keys: dict[str, None] = {}
    for part in parts:
        keys.update(dict.fromkeys(part))
    out: dict[str, Any] = {}
    for key in keys:
        vals = [part.get(key) for part in parts]
        ref = next(v for v in vals if v is not None)
        if isinstance(ref, Mapping):
            out[key] = merge_infos([v if v is not None else {} for v in vals], sizes)
            continue
        ref = np.asarray(ref)
        arrays = []
        for v, n in zip(vals, sizes, strict=True):
            if v is not None:
                arrays.append(v)
            elif ref.dtype == object:
                arrays.append(np.full(n, None, dtype=object))
            else:
                arrays.append(np.zeros((n, *ref.shape[1:]), ref.dtype))
        out[key] = np.concatenate(arrays)
    return out


class ProcessVectorEnv(VectorEnv):
    """``num_envs`` sub-envs of the native vector env ``vec_class`` in ``processes`` shares: one stepped
    in this process, ``processes - 1`` in worker processes (see the module docstring). Same spaces,
    autoreset mode (``SAME_STEP``), infos and numbers as ``vec_class(num_envs, scenario, **kwargs)``."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        vec_class: type,
        num_envs: int,
        scenario: Any = "default",
        render_mode: str | None = None,
        *,
        processes: int = 2,
        threads: int | None = None,
        start_method: str | None = None,
        **kwargs: Any,
    ) -> None:
        import numba

        self.num_envs = int(check_number("num_envs", num_envs, ge=1, integer=True))
        k = int(check_number("processes", processes, ge=1, integer=True))
        if k > self.num_envs:
            raise fail("processes", processes, f"must be at most num_envs ({self.num_envs})")
        if threads is None:
            threads = max(1, numba.config.NUMBA_NUM_THREADS // k)
        self.threads = int(check_number("threads", threads, ge=1, integer=True))
        methods = mp.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        elif start_method not in methods:
            raise fail("start_method", start_method, f"must be one of {methods}")
        self.start_method = start_method
        if render_mode is not None:
            raise fail(
                "render_mode", render_mode, "must be None: the vector envs do not render (use a single env)"
            )
        self.render_mode = None
        base, extra = divmod(self.num_envs, k)
        self.sizes = [base + (j < extra) for j in range(k)]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        self.vec_class = vec_class
        local = vec_class(self.sizes[0], scenario, **kwargs)  # this process's share (bad arguments fail here)
        self._start(
            local, [("build", self.threads, vec_class, n, scenario, dict(kwargs)) for n in self.sizes[1:]]
        )

    def _start(self, local: Any, payloads: list[tuple]) -> None:
        """Adopt ``local`` as share 0 and start one worker per payload (shares 1, 2, ...)."""
        local.max_threads = self.threads
        self._local = local
        ctx = mp.get_context(self.start_method)
        self._conns, self._procs = [], []
        self.closed = False
        try:
            for payload in payloads:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, payload), daemon=True,
                                   name=f"infergym-vec-{len(self._procs) + 1}")  # fmt: skip
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            self._gather()
        except BaseException:
            self._stop()
            raise
        obs_space, act_space = local.single_observation_space, local.single_action_space
        self.single_observation_space, self.single_action_space = obs_space, act_space
        self.observation_space = batch_space(obs_space, self.num_envs)
        self.action_space = batch_space(act_space, self.num_envs)
        space = self.action_space  # the bounds _check_actions tests, as NativeVectorEnv keeps them
        if hasattr(space, "nvec"):  # MultiDiscrete (batched Discrete)
            self._act_start, self._act_high = space.start, space.start + space.nvec
        else:  # an integer Box (batched MultiDiscrete)
            self._act_start, self._act_high = space.low, space.high + 1
        self._ready = False

    # ------------------------------------------------------------------ pipes

    def _gather(self) -> None:
        """Wait for every worker's answer (its start); the first error is raised after all have answered."""
        errors = [value for status, value in (self._receive(j) for j in range(1, len(self._conns) + 1))
                  if status == "error"]  # fmt: skip
        if errors:
            self._raise(errors[0])

    def _receive(self, j: int) -> tuple[str, Any]:
        """Share ``j``'s worker's answer: ``("ok", value)`` or ``("error", (exception, traceback))``."""
        try:
            return self._conns[j - 1].recv()
        except EOFError:
            died = RuntimeError(f"worker {j} of {type(self).__name__} died")
            if self.start_method != "fork":
                died.add_note('(a script that builds one needs Python\'s `if __name__ == "__main__":` guard: '
                              f"the {self.start_method} start method imports the main module in each worker)")  # fmt: skip
            return "error", (died, "")

    def _raise(self, error: tuple[BaseException, str]) -> NoReturn:
        exc, trace = error
        if trace:
            exc.add_note(f"in a worker process of {type(self).__name__}:\n{trace}")
        raise exc

    def _share(self, j: int) -> slice:
        return slice(self.offsets[j], self.offsets[j + 1])

    def _by_share(self, indices: Any) -> dict[int, list[int]]:
        """Sub-env ``indices`` (None: all) grouped by share, as the share's own indices."""
        out: dict[int, list[int]] = {}
        for i in sub_env_indices(indices, self.num_envs):
            j = self._share_of(i)
            out.setdefault(j, []).append(i - self.offsets[j])
        return out

    def _share_of(self, i: int) -> int:
        return int(np.searchsorted(self.offsets, i, side="right")) - 1

    def _ask(self, per_share: dict[int, tuple[str, Any]]) -> dict[int, Any]:
        """Run one command per share (0: this process's) and return the answers by share."""
        for j, cmd in per_share.items():
            if j > 0:
                self._conns[j - 1].send(cmd)
        answers: dict[int, Any] = {}
        error = None
        if 0 in per_share:
            cmd, data = per_share[0]
            try:
                answers[0] = _local_command(self._local, cmd, data)
            except Exception as exc:  # noqa: BLE001  (raised after the workers have answered)
                error = (exc, "")
        for j in per_share:
            if j > 0:
                status, value = self._receive(j)
                if status == "error" and error is None:
                    error = value
                answers[j] = value
        if error is not None:
            self._raise(error)
        return answers

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
        """Reset every sub-env: sub-env ``i`` with ``seed + i`` (an int), ``seed[i]`` (a sequence) or none."""
        self._check_open()
        if seed is None:
            seeds: list[Any] = [None] * len(self.sizes)
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + a for a in self.offsets[:-1]]
        elif isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) == self.num_envs:
            seeds = [list(seed[self._share(j)]) for j in range(len(self.sizes))]
        else:
            raise fail("seed", seed, f"must be None, an int or a sequence of {self.num_envs} seeds")
        answers = self._ask({j: ("reset", (s, options)) for j, s in enumerate(seeds)})
        parts = [answers[j] for j in range(len(self.sizes))]
        self._ready = True
        return np.concatenate([p[0] for p in parts]), merge_infos([p[1] for p in parts], self.sizes)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._check_open()
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}: call reset() before step()")
        a = NativeVectorEnv._check_actions(self, actions)
        answers = self._ask({j: ("step", a[self._share(j)]) for j in range(len(self.sizes))})
        parts = [answers[j] for j in range(len(self.sizes))]
        obs = np.concatenate([p[0] for p in parts])
        rewards, terminated, truncated = (np.concatenate([p[k] for p in parts]) for k in (1, 2, 3))
        return obs, rewards, terminated, truncated, merge_infos([p[4] for p in parts], self.sizes)

    def action_masks(self) -> np.ndarray:
        """``(num_envs, n)`` bool: every sub-env's ``action_masks()``."""
        self._check_open()
        answers = self._ask({j: ("masks", None) for j in range(len(self.sizes))})
        return np.concatenate([answers[j] for j in range(len(self.sizes))])

    def get_sub_attr(self, name: str, indices: Any = None) -> list[Any]:
        """Attribute ``name`` of sub-envs ``indices`` (None: all), in order."""
        groups = self._by_share(indices)
        answers = self._ask({j: ("get", (local, name)) for j, local in groups.items()})
        return self._in_order(indices, answers)

    def set_sub_attr(self, name: str, value: Any, indices: Any = None) -> None:
        """Set attribute ``name`` of sub-envs ``indices`` (None: all) to ``value``."""
        groups = self._by_share(indices)
        self._ask({j: ("set", (local, name, value)) for j, local in groups.items()})

    def call_sub(self, name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        """Call method ``name`` of sub-envs ``indices`` (None: all), in order; their results."""
        groups = self._by_share(indices)
        answers = self._ask({j: ("call", (local, name, args, kwargs)) for j, local in groups.items()})
        return self._in_order(indices, answers)

    def _in_order(self, indices: Any, answers: dict[int, list[Any]]) -> list[Any]:
        """The shares' answers back in the order of ``indices``."""
        pos = {j: iter(vals) for j, vals in answers.items()}
        return [next(pos[self._share_of(i)]) for i in sub_env_indices(indices, self.num_envs)]

    def close_extras(self, **kwargs: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        local = self.__dict__.pop("_local", None)
        if local is not None:
            local.close()
        for conn in getattr(self, "_conns", []):
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for conn in getattr(self, "_conns", []):
            try:
                if conn.poll(10):
                    conn.recv()
            except (EOFError, OSError):
                pass
            conn.close()
        for proc in getattr(self, "_procs", []):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{type(self).__name__}: the env is closed")

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        self._check_open()
        answers = self._ask({j: ("state", None) for j in range(len(self.sizes))})
        parts = [answers[j] for j in range(len(self.sizes))]
        keep = ("num_envs", "threads", "start_method", "sizes", "offsets", "vec_class", "_ready")
        return {"parts": parts, **{k: self.__dict__[k] for k in keep}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        parts = state.pop("parts")
        ready = state.pop("_ready")
        self.__dict__.update(state)
        self.render_mode = None
        self._start(parts[0], [("adopt", self.threads, part) for part in parts[1:]])
        self._ready = ready

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.vec_class.__name__}, num_envs={self.num_envs}, "
                f"processes={len(self.sizes)})")  # fmt: skip
