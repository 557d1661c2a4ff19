"""Checkpoints a training run resumes from exactly: the same model, bit for bit, as if never stopped.

A checkpoint is taken at a rollout boundary (SB3 calls ``on_rollout_start`` after the previous
update and before the next step), where everything that decides the rest of the run is in a few
objects. It is three files in ``run_dir/checkpoints``, each written to a temporary name and renamed
into place (a kill during a save leaves the previous checkpoint intact):

* ``model_<N>_steps.zip``: the algorithm's own save (policy and optimizer state, step counter,
  schedules' progress, the action space's generator);
* ``model_vecnormalize_<N>_steps.pkl``: VecNormalize's statistics (when the run normalizes);
* ``model_resume_<N>_steps.pkl``: the rest, :class:`ResumeState` (the vectorised environments
  with every simulator mid-episode, the last observations and episode starts, VecNormalize's
  running returns, and the torch, numpy and Python generators' states).

:func:`latest_checkpoint` picks the newest checkpoint whose files are all present and readable,
so a truncated or half-written newest one falls back to the one before. The two newest complete
checkpoints are kept (:data:`KEEP`); older ones are removed as new ones are written.
"""

from __future__ import annotations

import inspect
import os
import pickle
import random
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize

from envs.sim.errors import ConfigError

CKPT = re.compile(r"^model_(\d+)_steps\.zip$")


def sidecar(zip_path: Path, kind: str) -> Path:
    """``model_<N>_steps.zip`` -> ``model_<kind>_<N>_steps.pkl``; else ``<kind>.pkl`` beside it."""
    m = CKPT.match(zip_path.name)
    if m:
        return zip_path.with_name(f"model_{kind}_{m.group(1)}_steps.pkl")
    return zip_path.with_name(f"{kind}.pkl")


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, then rename the file to ``path`` (atomic on POSIX file systems)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


@dataclass
class ResumeState:
    """What a checkpoint needs besides the model zip and VecNormalize's statistics."""

    venv: _PickledVecEnv | None  # the environments under VecNormalize (None when they run in subprocesses)
    last_obs: Any
    last_episode_starts: Any
    last_original_obs: Any
    returns: np.ndarray | None  # VecNormalize's discounted returns (not in its own pickle)
    torch_rng: th.Tensor
    numpy_rng: dict
    python_rng: tuple


class _PickledVecEnv:
    """A stack of SB3 vec-env wrappers over a DummyVecEnv, in a form pickle takes.

    SB3's wrappers keep ``class_attributes`` (a dict holding mappingproxies, which pickle refuses);
    they are dropped here and rebuilt by :meth:`build`, as VecNormalize's own pickling does.
    """

    def __init__(self, vec: VecEnv) -> None:
        self.layers: list[tuple[type, dict]] = []
        while isinstance(vec, VecEnvWrapper):
            state = {k: v for k, v in vec.__dict__.items() if k not in ("venv", "class_attributes")}
            self.layers.append((type(vec), state))
            vec = vec.venv
        self.base = vec

    def build(self) -> VecEnv:
        vec = self.base
        for cls, state in reversed(self.layers):
            outer = cls.__new__(cls)
            outer.__dict__.update(state)
            outer.venv = vec
            outer.class_attributes = dict(inspect.getmembers(cls))
            vec = outer
        return vec


def _inner(vec: VecEnv) -> VecEnv:
    return vec.venv if isinstance(vec, VecNormalize) else vec


def capture(model: BaseAlgorithm) -> ResumeState:
    vec = model.get_env()
    inner = _inner(vec)
    in_process = _in_process(inner)
    return ResumeState(
        venv=_PickledVecEnv(inner) if in_process else None,
        last_obs=model._last_obs,
        last_episode_starts=getattr(model, "_last_episode_starts", None),
        last_original_obs=getattr(model, "_last_original_obs", None),
        returns=vec.returns.copy() if isinstance(vec, VecNormalize) else None,
        torch_rng=th.get_rng_state(),
        numpy_rng=np.random.get_state(legacy=False),  # noqa: NPY002  (SB3 shuffles minibatches with it)
        python_rng=random.getstate(),
    )


def _in_process(vec: VecEnv) -> bool:
    from agents.vecenv import NativeVecEnv

    while hasattr(vec, "venv"):
        vec = vec.venv
    return isinstance(vec, (DummyVecEnv, NativeVecEnv))


def save(model: BaseAlgorithm, ckpt_dir: Path) -> Path:
    """Write a complete checkpoint of ``model`` at its current step count; returns the zip's path."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    n = int(model.num_timesteps)
    zip_path = ckpt_dir / f"model_{n}_steps.zip"
    state = capture(model)
    vec = model.get_env()
    # the resume state first, the zip last: a checkpoint counts once its zip exists
    atomic_write(sidecar(zip_path, "resume"), lambda p: p.write_bytes(pickle.dumps(state, protocol=5)))
    if isinstance(vec, VecNormalize):
        atomic_write(sidecar(zip_path, "vecnormalize"), lambda p: vec.save(str(p)))
    if hasattr(model, "replay_buffer") and getattr(model, "replay_buffer", None) is not None:
        atomic_write(sidecar(zip_path, "replay_buffer"), lambda p: model.save_replay_buffer(p))
    atomic_write(zip_path, lambda p: model.save(p))
    prune(ckpt_dir, keep=KEEP)
    return zip_path


#: Complete checkpoints kept per run: the newest and one before it (a fallback if the newest is
#: damaged). Each holds the environments' simulators, tens of MB, so older ones are removed.
KEEP = 2


def prune(ckpt_dir: Path, keep: int = KEEP) -> None:
    """Remove all but the ``keep`` newest checkpoints (their zips and sidecars) of ``ckpt_dir``."""
    found = sorted(
        ((int(m.group(1)), p) for p in ckpt_dir.glob("model_*_steps.zip") if (m := CKPT.match(p.name))),
        reverse=True,
    )
    for _, old in found[keep:]:
        for kind in ("resume", "vecnormalize", "replay_buffer"):
            sidecar(old, kind).unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def restore(model: BaseAlgorithm, state: ResumeState) -> None:
    """Put back what :func:`capture` took (after the model and its env were loaded)."""
    vec = model.get_env()
    model._last_obs = state.last_obs
    if state.last_episode_starts is not None:
        model._last_episode_starts = state.last_episode_starts
    if state.last_original_obs is not None:
        model._last_original_obs = state.last_original_obs
    if state.returns is not None and isinstance(vec, VecNormalize):
        vec.returns = state.returns.copy()
    th.set_rng_state(state.torch_rng)
    np.random.set_state(state.numpy_rng)  # noqa: NPY002
    random.setstate(state.python_rng)


def load_state(zip_path: Path) -> ResumeState | None:
    path = sidecar(zip_path, "resume")
    if not path.exists():
        return None
    return pickle.loads(path.read_bytes())


def _readable(zip_path: Path, needs_vecnormalize: bool) -> bool:
    try:
        with zipfile.ZipFile(zip_path) as z:
            if z.testzip() is not None or "data" not in z.namelist():
                return False
    except (OSError, zipfile.BadZipFile):
        return False
    return not needs_vecnormalize or sidecar(zip_path, "vecnormalize").exists()


def latest_checkpoint(run_dir: str | Path, needs_vecnormalize: bool = False) -> tuple[Path, int] | None:
    """The newest complete checkpoint of ``run_dir/checkpoints`` and its step count (None: none).

    A zip that is truncated or unreadable, or (``needs_vecnormalize``) has no VecNormalize
    statistics beside it, is passed over for the one before.
    """
    found = []
    for p in (Path(run_dir) / "checkpoints").glob("model_*_steps.zip"):
        m = CKPT.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    for steps, path in sorted(found, reverse=True):
        if _readable(path, needs_vecnormalize):
            return path, steps
    return None


class RolloutCheckpoint(BaseCallback):
    """Save a complete checkpoint at the first rollout boundary after every ``every`` environment steps."""

    def __init__(self, ckpt_dir: Path, every: int) -> None:
        super().__init__()
        if every < 1:
            raise ConfigError(f"checkpoint_freq: {every!r} must be >= 1")
        self.ckpt_dir = Path(ckpt_dir)
        self.every = int(every)
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self._next:
            save(self.model, self.ckpt_dir)
            self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        return True
