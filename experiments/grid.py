"""Run a grid of experiment cells (envs x scenarios x policies x seeds) in local processes or on Ray Tune.

A :class:`Cell` is one unit of work: ``evaluate`` runs one policy spec (anything
:func:`experiments.evaluate.make_policy` accepts) for one episode seed; ``train``
trains an SB3 agent with one training seed into ``run_dir/agents/<key>/`` and then
evaluates it on held-out episode seeds. :func:`run_grid` runs cells concurrently
(a process pool, or one Ray Tune trial per cell), retries a failing cell, and
appends each finished cell's rows to ``run_dir/results.jsonl`` at once, so an
interrupted grid resumes without redoing finished cells. Both backends write the
same rows for the same cells. Each row holds the cell's fields, its ``key``, the
evaluator's metrics (see :mod:`experiments.evaluate`), ``seed`` (the cell's seed:
the episode seed of an evaluate cell, the training seed of a train cell),
``episode_seed`` (the seed the episode was reset with) and ``policy_name`` (the
evaluator's name for the policy).

A hook for tests (and for trying fault tolerance on a cluster): :data:`CELL_HOOK`, when
set, is called with each :class:`Cell` in the worker (local process or Ray trial) just
before the cell runs; an exception it raises counts as the cell failing. The tests'
fault injection (``tests/experiments/grid_faults.py``) is such a hook.

Interrupting a local grid (Ctrl-C, or SIGTERM while the grid runs in the main
thread) stops its worker processes too; finished cells are in ``results.jsonl``
and a train cell that was stopped resumes from its last checkpoint on the rerun.

Progress (``progress=True``) is one line on stderr that moves while agents train::

    grid: steps 12,288/40,000 (30%, 4,096 resumed) | 1,530 steps/s | ETA 0:18 | cells 3/10 | 0:09

Steps are training environment steps summed over every train cell of the grid, on every worker:
each training run publishes its count to ``agents/<key>/progress.json`` about once a second
(:mod:`agents.progress`, an atomically replaced file, so local processes and Ray trials report
the same way), and the driver sums those files. Evaluate cells, and the evaluation episodes of a
train cell, count only in ``cells`` (done / total; a cell is done when its rows are in
``results.jsonl``). Steps done before this call (finished cells, and what a stopped cell's file
last said) are shown as *resumed* and are not counted as throughput: steps/s (over the last
minute) counts only training sessions started by this call, each from the step it resumed at
(its last checkpoint, so a resumed cell's count may step back by up to ``checkpoint_freq``
steps when it restarts). The ETA is the remaining training steps at that rate; a grid without
training uses its finished cells per second instead.
On a terminal the line is redrawn in place twice a second; otherwise (a log file) a new line is
printed every ``progress_every`` seconds (default 30), plus one at the start and one at the end.
On a multi-node Ray cluster the steps are seen only if the run folder is on a filesystem every
node shares (as train cells need for their agents anyway); otherwise only cells move.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import envs
from envs.sim.errors import check_choice, check_number, fail

__all__ = ["Cell", "run_cell", "run_grid", "read_results", "CELL_HOOK", "TRAIN_EVAL_SEEDS"]

KINDS = ("evaluate", "train")
BACKENDS = ("local", "ray")
# Held-out episode seeds for trained agents: far from training seeds, the same for every training seed
# so agents are compared on identical episodes.
TRAIN_EVAL_SEEDS = (10_000, 10_001, 10_002)
EVALUATE_PARAMS = frozenset({"policy_seed", "deterministic"})  # read by evaluate cells; other keys are labels
TRAIN_PARAMS = frozenset(
    {
        "total_timesteps",
        "eval_seeds",
        "eval_env_kwargs",
        "eval_scenario",
        "n_envs",
        "checkpoint_freq",
        "overrides",
        "deterministic",
    }
)  # any other key of a train cell is a hyperparameter override (dotted keys allowed)
RESULTS_FILE = "results.jsonl"
# Called as ``CELL_HOOK(cell)`` in the worker before every cell run; None (the default) does nothing.
# run_grid reads it when it starts and ships it to the workers, so it must pickle (a module-level
# function or an instance of a module-level class, importable in the workers). For tests: see
# tests/experiments/grid_faults.py, which injects failures and hangs this way.
CELL_HOOK: Callable[[Cell], None] | None = None


def _jsonable(path: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise fail(path, value, f"must be JSON-serialisable ({exc})") from None


def _pairs(path: str, items: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(items, Mapping):
        items = items.items()
    out = []
    for item in items:
        if not (isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2):
            raise fail(path, item, "must be a mapping or (key, value) pairs")
        k, v = item
        if not isinstance(k, str) or not k:
            raise fail(path, k, "keys must be non-empty strings")
        out.append((k, _jsonable(f"{path}.{k}", v)))
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise fail(path, keys, "has a repeated key")
    return tuple(sorted(out))


@dataclass(frozen=True)
class Cell:
    """One unit of grid work; hashable, and identified across runs by :attr:`key`.

    ``env_kwargs`` and ``params`` accept a mapping or (key, value) pairs and are
    stored as sorted pairs of JSON values. ``params`` of an evaluate cell:
    ``policy_seed`` (default 0, as the evaluate CLI), ``deterministic``
    (default True); other keys are labels copied into the rows. ``params`` of a
    train cell: ``total_timesteps`` (required), ``eval_seeds`` (default
    :data:`TRAIN_EVAL_SEEDS`), ``eval_scenario`` / ``eval_env_kwargs`` (default:
    the training ones), ``n_envs``, ``checkpoint_freq``, ``overrides`` (list of
    ``key=value``), ``deterministic``; any other key is a hyperparameter override
    such as ``learning_rate`` or ``policy_kwargs.net_arch``.
    """

    kind: str
    env_id: str
    scenario: str
    policy: str
    seed: int
    env_kwargs: tuple = ()
    params: tuple = ()
    label: str = ""

    def __post_init__(self) -> None:
        check_choice("cell.kind", self.kind, KINDS)
        check_choice("cell.env_id", self.env_id, envs.ENV_IDS)
        for name in ("scenario", "policy"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise fail(f"cell.{name}", value, "must be a non-empty string")
        if not isinstance(self.label, str):
            raise fail("cell.label", self.label, "must be a string")
        check_number("cell.seed", self.seed, ge=0, integer=True)
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "env_kwargs", _pairs("cell.env_kwargs", self.env_kwargs))
        object.__setattr__(self, "params", _pairs("cell.params", self.params))
        p = dict(self.params)
        if self.kind == "train":
            if "total_timesteps" not in p:
                raise fail("cell.params.total_timesteps", None, "is required for a train cell")
            check_number("cell.params.total_timesteps", p["total_timesteps"], gt=0, integer=True)
            seeds = p.get("eval_seeds", list(TRAIN_EVAL_SEEDS))
            if not isinstance(seeds, list) or not seeds:
                raise fail("cell.params.eval_seeds", seeds, "must be a non-empty list of seeds")
            for s in seeds:
                check_number("cell.params.eval_seeds[]", s, ge=0, integer=True)
            if "eval_env_kwargs" in p and not isinstance(p["eval_env_kwargs"], dict):
                raise fail("cell.params.eval_env_kwargs", p["eval_env_kwargs"], "must be a mapping")

    # A tuple field may hold lists (JSON values), so hash the canonical identity instead of the fields.
    def __hash__(self) -> int:
        return hash(self.key)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON (``env_kwargs`` and ``params`` as mappings)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["env_kwargs"] = dict(self.env_kwargs)
        d["params"] = dict(self.params)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cell:
        """The inverse of :meth:`to_dict`; unknown keys are errors."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise fail("cell", unknown, f"has unknown keys (known: {sorted(names)})")
        return cls(**dict(d))

    @property
    def key(self) -> str:
        """sha1 of the canonical JSON of the fields: the cell's identity in results.jsonl."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()

    @property
    def name(self) -> str:
        """The policy's name in tables: ``label``, else the policy spec / algorithm."""
        return self.label or self.policy

    @property
    def expected_rows(self) -> int:
        """Rows a finished cell has written (one per evaluated episode)."""
        return len(dict(self.params).get("eval_seeds", TRAIN_EVAL_SEEDS)) if self.kind == "train" else 1

    def describe(self) -> str:
        return f"{self.kind} {self.name!r} on {self.env_id} / {self.scenario}, seed {self.seed} (key {self.key[:12]})"


def _row(cell: Cell, key: str, ev: Mapping[str, Any]) -> dict[str, Any]:
    row = cell.to_dict()
    row["label"] = cell.name
    row["key"] = key
    row["episode_seed"] = ev["seed"]
    row["policy_name"] = ev["policy"]
    for k, v in ev.items():
        if k not in ("env_id", "scenario", "policy", "seed"):
            row[k] = v
    return json.loads(json.dumps(row, allow_nan=True))  # plain JSON types, columns in insertion order


def agent_dir(run_dir: str | Path, key: str) -> Path:
    """The run folder a train cell trains into (its model, checkpoints, tensorboard, progress.json)."""
    return Path(run_dir) / "agents" / key


def run_cell(cell: Cell, run_dir: Path) -> list[dict[str, Any]]:
    """Run one cell; one row per evaluated episode (see the module docstring for the columns)."""
    from experiments.evaluate import evaluate_policy, make_policy

    run_dir = Path(run_dir)
    p = dict(cell.params)
    key = cell.key
    if cell.kind == "evaluate":
        policy = make_policy(cell.env_id, cell.policy, int(p.get("policy_seed", 0)))
        ev_rows = evaluate_policy(
            cell.env_id,
            policy,
            cell.scenario,
            [cell.seed],
            dict(cell.env_kwargs),
            deterministic=bool(p.get("deterministic", True)),
        )
    else:
        from agents.sb3 import load_agent, parse_overrides, train

        overrides = parse_overrides(p.get("overrides"))
        extra = [f"{k}={json.dumps(v)}" for k, v in p.items() if k not in TRAIN_PARAMS]
        overrides.update(parse_overrides(extra))
        folder = agent_dir(run_dir, key)
        train_kw: dict[str, Any] = {}
        for name in ("n_envs", "checkpoint_freq"):
            if name in p:
                train_kw[name] = int(p[name])
        train(
            cell.env_id,
            cell.policy,
            cell.scenario,
            int(p["total_timesteps"]),
            cell.seed,
            folder,
            overrides=overrides,
            env_kwargs=dict(cell.env_kwargs),
            progress_bar=False,
            command=f"experiments.grid cell {key}",
            **train_kw,
        )
        agent = load_agent(folder)
        ev_rows = evaluate_policy(
            cell.env_id,
            agent,
            p.get("eval_scenario", cell.scenario),
            [int(s) for s in p.get("eval_seeds", TRAIN_EVAL_SEEDS)],
            p.get("eval_env_kwargs", dict(cell.env_kwargs)),
            deterministic=bool(p.get("deterministic", True)),
        )
    return [_row(cell, key, ev) for ev in ev_rows]


def _run_cell_dict(
    cell_dict: Mapping[str, Any], run_dir: str, hook: Callable[[Cell], None] | None, workers: int = 1
) -> list[dict[str, Any]]:
    """Worker entry point (local pool and Ray trial): the :data:`CELL_HOOK` if any, then :func:`run_cell`.

    ``workers``: how many cells share the machine with this one, itself included (the local pool passes
    the cells still to start, at most its size). The compiled vector envs use ``cores / workers``
    threads, so the workers do not fight over cores and a cell left alone uses them all
    (``docs/vector-envs.md``); the thread count changes no number (tested bit for bit).
    """
    import numba

    numba.set_num_threads(
        max(1, min(numba.config.NUMBA_NUM_THREADS, (os.cpu_count() or 1) // max(1, workers)))
    )
    cell = Cell.from_dict(cell_dict)
    if hook is not None:
        hook(cell)
    return run_cell(cell, Path(run_dir))


# ------------------------------------------------------------------------------------------ results file


def read_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete JSON row of ``run_dir/results.jsonl`` (a torn last line is ignored)."""
    path = Path(run_dir) / RESULTS_FILE
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _load_done(path: Path, cells: Sequence[Cell]) -> dict[str, list[dict[str, Any]]]:
    """Rows of finished requested cells by key; rewrites the file if it holds torn lines or partial cells.

    A cell counts as finished only when all its rows are there, so a driver killed mid-write redoes
    that cell instead of keeping half of it.
    """
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    rows, torn = [], False
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault(r.get("key", ""), []).append(r)
    want = {c.key: c.expected_rows for c in cells}
    partial = {k for k, n in want.items() if k in by_key and len(by_key[k]) != n}
    if torn or partial:
        keep = [r for r in rows if r.get("key") not in partial]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, path)
    return {k: v for k, v in by_key.items() if k in want and k not in partial}


class _Appender:
    """Appends a finished cell's rows as one write, flushed and fsynced, so a crash loses at most that cell."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with open(self.path, "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())


# ----------------------------------------------------------------------------------------------- progress


class _GridProgress:
    """The grid's :class:`agents.progress.Snapshot`: train cells' progress files summed, and the cells
    done, read from the new lines of ``results.jsonl`` (both backends append there, in the driver)."""

    def __init__(self, cells: Sequence[Cell], done: Mapping[str, Any], run_dir: Path) -> None:
        from agents.progress import PROGRESS_FILE, StepTally

        self.path = run_dir / RESULTS_FILE
        self.expected = {c.key: c.expected_rows for c in cells}
        self.rows: dict[str, int] = {}
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.tail = b""
        tasks = {
            c.key: (
                (agent_dir(run_dir, c.key) / PROGRESS_FILE, int(dict(c.params)["total_timesteps"]))
                if c.kind == "train"
                else (None, 0)
            )
            for c in cells
        }
        self.tally = StepTally(tasks, done=done)

    def _read_new_rows(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return
        self.offset += len(chunk)
        *lines, self.tail = (self.tail + chunk).split(b"\n")
        for line in lines:
            try:
                key = json.loads(line).get("key")
            except (ValueError, AttributeError):
                continue
            if key in self.expected:
                self.rows[key] = self.rows.get(key, 0) + 1
                if self.rows[key] >= self.expected[key]:
                    self.tally.mark_done(key)

    def __call__(self) -> Any:
        self._read_new_rows()
        return self.tally.sample()


def _progress(
    cells: Sequence[Cell], done: Mapping[str, Any], run_dir: Path, on: bool, every_s: float | None, label: str
) -> Any:
    """A context that prints the grid's progress line while the backend runs (nothing when ``on`` is False)."""
    if not on:
        return contextlib.nullcontext()
    from agents.progress import ProgressLine

    return ProgressLine(_GridProgress(cells, done, run_dir), label=label, every_s=every_s)


# ----------------------------------------------------------------------------------------------- backends


def mp_context() -> multiprocessing.context.BaseContext:
    """The start method of the grid's worker processes (and of the warm-up's helper): forkserver where
    available, else spawn. torch + fork is unsafe (threads and locks copied mid-flight)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class _sigterm_as_interrupt:
    """In the main thread, turn SIGTERM (``kill``, a batch system's stop) into KeyboardInterrupt while
    the local pool runs, so the grid stops its workers as on Ctrl-C instead of dying without cleanup."""

    def __enter__(self) -> None:
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _run_local(
    pending: Sequence[Cell],
    run_dir: Path,
    workers: int,
    max_retries: int,
    on_rows: Callable[[Cell, list[dict[str, Any]]], None],
    hook: Callable[[Cell], None] | None,
) -> None:
    attempts = dict.fromkeys((c.key for c in pending), 0)
    queue = list(pending)
    size = min(workers, len(pending))
    pool = cf.ProcessPoolExecutor(max_workers=size, mp_context=mp_context())
    running: dict[cf.Future, Cell] = {}
    fatal: RuntimeError | None = None
    clean = False
    try:
        while queue or running:
            # A cell is submitted when a worker is free, and shares the cores with the cells that will
            # start after it (at most workers - 1): the last ones use every core (as in `make run`,
            # where the third of three trainings ran alone on one of two cores).
            while queue and fatal is None and len(running) < size:
                cell = queue.pop(0)
                attempts[cell.key] += 1
                n_workers = min(workers, len(queue) + 1)
                running[pool.submit(_run_cell_dict, cell.to_dict(), str(run_dir), hook, n_workers)] = cell
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            broken = False
            for fut in finished:
                cell = running.pop(fut)
                try:
                    rows = fut.result()
                except Exception as exc:
                    broken |= isinstance(exc, cf.process.BrokenProcessPool)
                    if attempts[cell.key] > max_retries:
                        if fatal is None:
                            fatal = RuntimeError(
                                f"grid cell {cell.describe()} failed after {attempts[cell.key]} attempts: {exc!r}"
                            )
                            fatal.__cause__ = exc
                            queue.clear()  # stop launching, but keep what the running cells finish
                    elif fatal is None:
                        queue.append(cell)
                    continue
                on_rows(cell, rows)
            if broken:
                # A dead worker breaks the whole pool: every running cell is lost; resubmit them on a new pool.
                for cell in running.values():
                    if fatal is None and attempts[cell.key] <= max_retries:
                        queue.append(cell)
                    elif fatal is None:
                        fatal = RuntimeError(f"grid cell {cell.describe()} failed: its worker process died")
                running.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                if queue and fatal is None:
                    size = min(workers, len(queue))
                    pool = cf.ProcessPoolExecutor(max_workers=size, mp_context=mp_context())
        clean = True
    finally:
        for fut in running:
            fut.cancel()
        # On Ctrl-C / SIGTERM do not wait for long cells: stop their workers, which would otherwise run on
        # as orphans and compete for the cores. A training cell resumes from its last checkpoint.
        procs = [] if clean else list((getattr(pool, "_processes", None) or {}).values())
        for proc in procs:
            proc.terminate()
        pool.shutdown(wait=clean, cancel_futures=True)
        for proc in procs:
            proc.join(timeout=10)
    if fatal is not None:
        raise fatal


def run_grid(
    cells: Sequence[Cell],
    run_dir: Path,
    *,
    backend: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    max_retries: int = 1,
    progress: bool = True,
    gpus_per_trial: float = 0,
    progress_every: float | None = None,
    progress_label: str = "grid",
) -> list[dict[str, Any]]:
    """Run every cell not already in ``run_dir/results.jsonl``; all rows of ``cells`` (old + new), in cell order.

    Each finished cell's rows are appended to ``results.jsonl`` as soon as it
    finishes. A cell that raises is retried up to ``max_retries`` times, then the
    grid fails with an error naming the cell (cells finished before stay written).
    ``backend="ray"`` runs each cell as a Ray Tune trial (``ray_address`` of a
    running cluster, or a local Ray with ``workers`` CPUs); Tune's state lives
    under ``run_dir/ray_results``. Repeated cells run once. ``progress`` prints the
    moving progress line of the module docstring on stderr, labelled ``progress_label``,
    every ``progress_every`` seconds when stderr is not a terminal.
    """
    check_choice("backend", backend, BACKENDS)
    check_number("workers", workers, ge=1, integer=True)
    check_number("max_retries", max_retries, ge=0, integer=True)
    check_number("gpus_per_trial", gpus_per_trial, ge=0)
    if progress_every is not None:
        check_number("progress_every", progress_every, gt=0)
    for c in cells:
        if not isinstance(c, Cell):
            raise fail("cells[]", c, "must be a Cell")
    unique = list(dict.fromkeys(cells))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULTS_FILE
    done = _load_done(path, unique)
    pending = [c for c in unique if c.key not in done]
    append = _Appender(path)

    def on_rows(cell: Cell, rows: list[dict[str, Any]]) -> None:
        append(rows)
        done[cell.key] = rows

    if pending:
        hook = CELL_HOOK
        shown = _progress(unique, done, run_dir, progress, progress_every, progress_label)
        if backend == "local":
            with shown, _sigterm_as_interrupt():
                _run_local(pending, run_dir, workers, max_retries, on_rows, hook)
        else:
            from experiments.grid_ray import _run_ray  # Ray is optional: imported only when used

            with shown:
                _run_ray(pending, run_dir, workers, ray_address, max_retries, hook, gpus_per_trial)
            done = _load_done(path, unique)
            missing = [c for c in pending if c.key not in done]
            if missing:
                raise RuntimeError(
                    f"grid cell {missing[0].describe()} reported no rows ({len(missing)} missing)"
                )
    return [r for c in unique for r in done[c.key]]
