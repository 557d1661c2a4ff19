"""stable-baselines3 glue: build, train, checkpoint, resume and load PPO, A2C, DQN and MaskablePPO agents.

Hyperparameters come per (algorithm, env id) from ``agents/hyperparams/<algo>.yaml``
(a ``default`` entry with per-env-id entries merged over it, then ``key=value``
command-line overrides parsed with ``yaml.safe_load``, dotted keys for nested
values; never ``eval``). Besides the algorithm's own arguments the table takes
``vecnormalize`` (VecNormalize arguments), ``frame_stack`` (k >= 1: the policy
sees the observations of the last k steps, SB3's ``VecFrameStack``; the
evaluator rebuilds the same stack) and ``n_envs`` (environment copies the trainer
steps, 2 where unset, as rl-zoo3's key of that name; :func:`train`'s argument
wins). ``policy`` is an SB3 policy name or one of :data:`agents.policies.POLICIES`
(``SlotPolicy``: MaskablePPO on Routing and Placement, its observation layout taken
from the env). :func:`train` writes a self-describing run folder::

    run_dir/run.json                    resolved config, command line, git SHA, seed, versions, resumes
    run_dir/tb/run_1/                   tensorboard: charts/, kpi/, SB3's rollout/ train/ time/
    run_dir/checkpoints/model_<N>_steps.zip  (+ model_vecnormalize_<N>_steps.pkl, model_resume_<N>_steps.pkl)
    run_dir/model.zip, run_dir/vecnormalize.pkl   the final agent

Calling :func:`train` again on a folder with checkpoints resumes from the
latest complete one (:mod:`agents.checkpoints`: taken at rollout boundaries,
written atomically, with the environments mid-episode and every generator's
state) with ``reset_num_timesteps=False``: a run interrupted at any point and
resumed ends with the same model, bit for bit, as one never interrupted.
With ``subproc=True`` the environments live in other processes and are not
saved: such a resume re-seeds them from ``seed + steps done`` (not exact).
:func:`load_agent` turns a run folder or a ``.zip`` into an :class:`SB3Policy`
for :mod:`experiments.evaluate`.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import inspect
import json
import pickle
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
import yaml
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack, VecNormalize

import envs
from agents import EpisodeKpis, step_kpis_cumulative
from agents import checkpoints as C
from agents.policies import POLICIES
from agents.progress import PROGRESS_FILE, ProgressCallback
from agents.vecenv import make_native_vec
from envs.sim.config import deep_merge
from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"


def _maskable_ppo() -> type[BaseAlgorithm]:
    from sb3_contrib import MaskablePPO

    return MaskablePPO


ALGOS: dict[str, Any] = {
    "ppo": lambda: PPO,
    "a2c": lambda: A2C,
    "dqn": lambda: DQN,
    "maskable_ppo": _maskable_ppo,
}
# Names for activation_fn in YAML (a string in the file, a torch class only when the model is built).
ACTIVATIONS = {
    "tanh": th.nn.Tanh,
    "relu": th.nn.ReLU,
    "elu": th.nn.ELU,
    "leaky_relu": th.nn.LeakyReLU,
    "gelu": th.nn.GELU,
}
VECNORMALIZE_KEYS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon")
# Set by train() itself, so not hyperparameters.
_RESERVED = {"self", "env", "seed", "tensorboard_log", "verbose", "_init_setup_model"}
#: hyperparameter keys the trainer reads itself (not the algorithm's arguments)
TRAINER_KEYS = frozenset({"vecnormalize", "frame_stack", "n_envs"})
#: environment copies where neither :func:`train`'s caller nor the hyperparameters say
DEFAULT_N_ENVS = 2
TB_RUN_NAME = "run"
KPI_LOG_KEYS = ("slo_attainment", "ttft_p99_s", "cost_usd", "requests_dropped")


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class of an algorithm name (``ppo``, ``a2c``, ``dqn``, ``maskable_ppo``)."""
    return ALGOS[check_choice("algo", algo, ALGOS)]()


# ---------------------------------------------------------------------------------------------- config


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_overrides(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["n_steps=128", "policy_kwargs.net_arch=[32, 32]"]`` -> nested dict; values via ``yaml.safe_load``."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return copy.deepcopy(dict(items))
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise fail("override", item, "must be key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise fail(f"override {key}", raw, f"is not valid YAML ({exc.__class__.__name__})") from None
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads "1e-3" as a string; a learning rate is meant
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise fail("override", item, f"sets inside {part!r}, which was given a scalar value")
        node[parts[-1]] = value
    return out


def load_hyperparams(
    algo: str, env_id: str, overrides: Sequence[str] | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Resolved hyperparameters: ``default``, then the env id's entry, then ``overrides`` (deep-merged)."""
    check_choice("algo", algo, ALGOS)
    path = HYPERPARAMS_DIR / f"{algo}.yaml"
    table = yaml.safe_load(path.read_text()) or {}
    check_keys(f"{algo}.yaml", table, {"default", *envs.ENV_IDS}, required=("default",))
    hp = deep_merge(table["default"], table.get(env_id))
    hp = deep_merge(hp, parse_overrides(overrides))
    cls = algo_class(algo)
    allowed = (set(inspect.signature(cls.__init__).parameters) - _RESERVED) | TRAINER_KEYS
    check_keys("hyperparams", hp, allowed)
    for key in ("frame_stack", "n_envs"):  # frame_stack: the last k observations (SB3 VecFrameStack)
        if key in hp:
            hp[key] = int(check_number(f"hyperparams.{key}", hp[key], ge=1, integer=True))
    vn = hp.setdefault("vecnormalize", {"norm_obs": True, "norm_reward": False})
    check_keys("hyperparams.vecnormalize", vn, VECNORMALIZE_KEYS)
    act = (hp.get("policy_kwargs") or {}).get("activation_fn")
    if act is not None:
        check_choice("hyperparams.policy_kwargs.activation_fn", act, ACTIVATIONS)
    return hp


def _model_kwargs(hp: Mapping[str, Any]) -> dict[str, Any]:
    kw = {k: copy.deepcopy(v) for k, v in hp.items() if k not in TRAINER_KEYS}
    pk = kw.get("policy_kwargs")
    if pk and "activation_fn" in pk:
        pk["activation_fn"] = ACTIVATIONS[pk["activation_fn"]]
    if kw.get("policy") in POLICIES:  # our own policy classes, by name in the YAML
        kw["policy"] = POLICIES[kw["policy"]]
    kw.setdefault("device", "cpu")  # MLP policies on small observations are faster on CPU
    return kw


# ---------------------------------------------------------------------------------------------- policy


class SB3Policy:
    """An SB3 model as a :class:`agents.Policy`; observations are normalised with the training statistics.

    Masked models (MaskablePPO) receive ``env.action_masks()`` at every decision; ``predict``'s
    ``deterministic`` chooses between the model's most likely action and a sample.
    ``frame_stack`` k > 1 (hyperparameter ``frame_stack``) feeds the model the last k observations
    concatenated, oldest first, zeros before the episode's first, exactly as SB3's ``VecFrameStack``
    did in training; :meth:`reset` (called by the evaluator at every episode start) clears them.
    """

    def __init__(
        self,
        model: BaseAlgorithm,
        vecnormalize: VecNormalize | None = None,
        name: str | None = None,
        frame_stack: int = 1,
    ) -> None:
        self.model = model
        self.vecnormalize = vecnormalize
        self.name = name or type(model).__name__
        self.masked = type(model).__name__ == "MaskablePPO"
        self.frame_stack = int(check_number("frame_stack", frame_stack, ge=1, integer=True))
        self._stack: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: forget the stacked observations (the networks are feed-forward).

        ``seed`` is unused: a sampled action (``deterministic=False``) comes from torch's global
        random state, which this class does not seed."""
        self._stack = None

    def _stacked(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        if self._stack is None:
            self._stack = np.zeros(obs.shape[:-1] + (obs.shape[-1] * self.frame_stack,), obs.dtype)
        d = obs.shape[-1]
        self._stack[..., :-d] = self._stack[..., d:].copy()
        self._stack[..., -d:] = obs
        return self._stack.copy()

    def predict(self, obs: np.ndarray, env: gym.Env, deterministic: bool = True) -> Any:
        if self.frame_stack > 1:
            obs = self._stacked(obs)
        o = self.vecnormalize.normalize_obs(obs) if self.vecnormalize is not None else obs
        kw = {"action_masks": np.asarray(env.unwrapped.action_masks(), dtype=bool)} if self.masked else {}
        action, _ = self.model.predict(o, deterministic=deterministic, **kw)
        action = np.asarray(action)
        return int(action) if action.ndim == 0 else action


# ---------------------------------------------------------------------------------------------- logging


class KpiLogCallback(BaseCallback):
    """Logs episode reward/length (``charts/``), episode KPIs (``kpi/``) and steps/s to the SB3 logger.

    Episode KPIs aggregate each env's per-step ``info["kpi"]`` with
    :class:`agents.EpisodeKpis`; values are averaged over the episodes that
    ended since the last log dump.
    """

    def __init__(self, kpi_keys: Sequence[str] = KPI_LOG_KEYS, cumulative: bool = False) -> None:
        super().__init__()
        self.kpi_keys = tuple(kpi_keys)
        self.cumulative = cumulative  # the env's step KPIs are levels so far (agents.step_kpis_cumulative)
        self._acc: list[EpisodeKpis] = []
        self._t0 = 0.0
        self._steps0 = 0

    def _on_training_start(self) -> None:
        self._acc = [EpisodeKpis(self.cumulative) for _ in range(self.training_env.num_envs)]
        self._t0, self._steps0 = time.perf_counter(), self.num_timesteps

    def _on_step(self) -> bool:
        for i, (info, done) in enumerate(zip(self.locals["infos"], self.locals["dones"], strict=True)):
            if "kpi" in info:
                self._acc[i].add(info["kpi"])
            if done:
                if "episode" in info:
                    self.logger.record_mean("charts/episode_reward", float(info["episode"]["r"]))
                    self.logger.record_mean("charts/episode_length", float(info["episode"]["l"]))
                kpis = self._acc[i].result()
                for key in self.kpi_keys:
                    if key in kpis:
                        self.logger.record_mean(f"kpi/{key}", kpis[key])
                self._acc[i] = EpisodeKpis(self.cumulative)
        return True

    def _on_rollout_end(self) -> None:
        dt = time.perf_counter() - self._t0
        if dt > 0:
            self.logger.record("charts/steps_per_s", (self.num_timesteps - self._steps0) / dt)


# ---------------------------------------------------------------------------------------------- runs

_CKPT = C.CKPT
latest_checkpoint = C.latest_checkpoint
_checkpoint_sidecar = C.sidecar


def git_sha() -> str | None:
    """HEAD's SHA of the repository holding this file, ``<sha>-dirty`` when tracked files have uncommitted
    changes (the code that ran may not be HEAD's), or None outside a git checkout (or without git).

    Changes under ``results/`` do not count: they are outputs (tables, figures), not code. Untracked
    files do not count either.
    """
    here = Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return None
    sha = head.stdout.strip()
    status = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results")
    dirty = status is not None and status.returncode == 0 and bool(status.stdout.strip())
    return f"{sha}-dirty" if dirty else sha


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in (
        "numpy",
        "numba",
        "scipy",
        "gymnasium",
        "torch",
        "stable-baselines3",
        "sb3-contrib",
        "infergym",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


#: How ``train`` steps its environments: the native vector env (one compiled call per step of all
#: of them, :mod:`agents.vecenv`), SB3's DummyVecEnv of single envs, or SubprocVecEnv. The first two
#: give the same numbers bit for bit; ``subproc`` runs each env in a process of its own.
VEC_BACKENDS = ("native", "dummy", "subproc")


def make_vec(
    env_id: str,
    scenario: Any,
    n_envs: int,
    seed: int,
    env_kwargs: Mapping[str, Any] | None = None,
    subproc: bool = False,
    backend: str = "native",
) -> VecEnv:
    """``n_envs`` environments of ``gym.make(env_id, scenario=scenario, **env_kwargs)``, env ``i``
    seeded ``seed + i``, stepped by ``backend`` (:data:`VEC_BACKENDS`; ``subproc=True`` means
    ``"subproc"``). The SB3 backends wrap each env in ``Monitor``; the native one writes the same
    ``episode`` infos itself."""
    check_choice("env_id", env_id, envs.ENV_IDS)
    check_choice("backend", backend, VEC_BACKENDS)
    if subproc:
        backend = "subproc"
    if backend == "native":
        return make_native_vec(env_id, scenario, n_envs, seed, dict(env_kwargs or {}))
    return make_vec_env(
        env_id,
        n_envs=n_envs,
        seed=seed,
        env_kwargs={"scenario": scenario, **(env_kwargs or {})},
        vec_env_cls=SubprocVecEnv if backend == "subproc" else DummyVecEnv,
    )


def _check_algo_fits(algo: str, vec: VecEnv, env_id: str) -> None:
    if algo == "dqn" and not isinstance(vec.action_space, gym.spaces.Discrete):
        raise fail("algo", algo, f"needs a Discrete action space; {env_id} has {vec.action_space}")
    if algo == "maskable_ppo" and not vec.has_attr("action_masks"):
        raise fail("algo", algo, f"needs an env with action_masks(); {env_id} has none")


def _check_slot_policy(algo: str, hp: Mapping[str, Any], vec: VecEnv, env_id: str) -> None:
    if algo != "maskable_ppo":
        raise fail("hyperparams.policy", "SlotPolicy", f"is a MaskablePPO policy; algo is {algo!r}")
    if hp.get("frame_stack", 1) > 1:
        raise fail("hyperparams.frame_stack", hp["frame_stack"], "must be 1 with SlotPolicy (slot layout)")
    if not vec.has_attr("obs_layout"):
        raise fail("hyperparams.policy", "SlotPolicy", f"needs an env with obs_layout; {env_id} has none")


def train(
    env_id: str,
    algo: str,
    scenario: Any,
    total_timesteps: int,
    seed: int,
    run_dir: str | Path,
    n_envs: int | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    checkpoint_freq: int = 10_000,
    progress_bar: bool | None = None,
    subproc: bool = False,
    torch_threads: int = 1,
    command: str | None = None,
    backend: str = "native",
) -> BaseAlgorithm:
    """Train (or resume) ``algo`` on ``env_id`` until ``total_timesteps`` steps; return the model.

    ``n_envs`` defaults to the hyperparameters' ``n_envs`` (else 2); ``checkpoint_freq`` is in
    environment steps (summed over the copies). ``progress_bar=None`` shows SB3's bar when tqdm and
    rich are installed. ``command`` is recorded in run.json (default: this process's argv). ``backend``
    steps the environments (:data:`VEC_BACKENDS`: the native vector env by default; ``dummy`` gives
    the same numbers slower; ``subproc=True`` is ``backend="subproc"``).
    """
    check_number("total_timesteps", total_timesteps, gt=0, integer=True)
    check_number("seed", seed, ge=0, integer=True)
    check_number("checkpoint_freq", checkpoint_freq, ge=1, integer=True)
    if not isinstance(scenario, str):
        raise fail(
            "scenario", scenario, "must be a shipped scenario name or a YAML path (recorded in run.json)"
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    hp = load_hyperparams(algo, env_id, overrides)
    n_envs = hp.get("n_envs", DEFAULT_N_ENVS) if n_envs is None else n_envs
    check_number("n_envs", n_envs, ge=1, integer=True)
    if "n_envs" in hp:
        hp["n_envs"] = int(n_envs)  # what runs (the caller's value wins), as run.json records it
    config = {
        "env_id": env_id,
        "algo": algo,
        "scenario": scenario,
        "env_kwargs": dict(env_kwargs or {}),
        "seed": int(seed),
        "n_envs": int(n_envs),
        "hyperparams": hp,
    }
    run_json = run_dir / "run.json"
    record = json.loads(run_json.read_text()) if run_json.exists() else None
    if record is not None and record["config"] != json.loads(json.dumps(config)):
        raise ConfigError(
            f"run_dir {run_dir.name!r} holds a run with another config; resume needs the same config "
            f"(was {record['config']}, now {config})"
        )
    ckpt = latest_checkpoint(run_dir, needs_vecnormalize=True)
    if ckpt is None and any((run_dir / "checkpoints").glob("model_*_steps.zip")):
        raise ConfigError(
            f"run_dir {run_dir.name!r}: no checkpoint in checkpoints/ is complete (a readable zip with its "
            "VecNormalize statistics); remove the folder to start over"
        )
    done_steps = ckpt[1] if ckpt else 0
    state = C.load_state(ckpt[0]) if ckpt else None
    th.set_num_threads(torch_threads)

    if state is not None and state.venv is not None and not subproc:
        vec = state.venv.build()  # the environments as they were, every simulator mid-episode
    else:
        # No saved environments (a new run, or one whose envs ran in subprocesses): a resumed run
        # must not replay the first episodes, so it re-seeds from the steps already done.
        vec = make_vec(env_id, scenario, n_envs, seed + done_steps, env_kwargs, subproc, backend)
        if hp.get("frame_stack", 1) > 1:
            vec = VecFrameStack(vec, hp["frame_stack"])
    _check_algo_fits(algo, vec, env_id)
    model_kw = _model_kwargs(hp)
    if model_kw.get("policy") is POLICIES["SlotPolicy"]:
        _check_slot_policy(algo, hp, vec, env_id)
        pk = model_kw.setdefault("policy_kwargs", {})
        pk.setdefault("layout", dict(vec.get_attr("obs_layout", [0])[0]))
    vn_cfg = hp["vecnormalize"]
    cls = algo_class(algo)
    tb_dir = str(run_dir / "tb")
    if ckpt:
        vec = VecNormalize.load(str(_checkpoint_sidecar(ckpt[0], "vecnormalize")), vec)
        vec.training = True
        model = cls.load(ckpt[0], env=vec, tensorboard_log=tb_dir, device=_model_kwargs(hp)["device"])
        rb = _checkpoint_sidecar(ckpt[0], "replay_buffer")
        if rb.exists() and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(rb)
        if state is not None and state.venv is not None and not subproc:
            C.restore(model, state)
        else:
            set_random_seed(seed + done_steps)
    else:
        vec = VecNormalize(vec, **vn_cfg)
        model = cls(env=vec, seed=seed, tensorboard_log=tb_dir, verbose=0, **model_kw)

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cmd = command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    if record is None:
        record = {
            "config": config,
            "created_utc": now,
            "git_sha": git_sha(),
            "versions": package_versions(),
            "sessions": [],
        }
    record["total_timesteps"] = int(total_timesteps)
    record["sessions"].append(
        {"started_utc": now, "command": cmd, "git_sha": git_sha(), "from_timesteps": int(model.num_timesteps)}
    )
    run_json.write_text(json.dumps(record, indent=2) + "\n")

    if progress_bar is None:
        progress_bar = all(importlib.util.find_spec(m) is not None for m in ("tqdm", "rich"))
    remaining = int(total_timesteps) - int(model.num_timesteps)
    if remaining > 0:
        callbacks = [
            C.RolloutCheckpoint(run_dir / "checkpoints", checkpoint_freq),
            KpiLogCallback(cumulative=step_kpis_cumulative(env_id)),
        ]
        callbacks.append(ProgressCallback(run_dir / PROGRESS_FILE, total_timesteps))  # read by the grid
        model.learn(
            remaining,
            callback=callbacks,
            tb_log_name=TB_RUN_NAME,
            reset_num_timesteps=ckpt is None,
            progress_bar=progress_bar,
        )
    _save(model, vec, run_dir, algo)
    record["sessions"][-1]["to_timesteps"] = int(model.num_timesteps)
    run_json.write_text(json.dumps(record, indent=2) + "\n")
    vec.close()
    return model


def _save(model: BaseAlgorithm, vec: VecEnv, run_dir: Path, algo: str) -> None:
    """Save the final agent, and a complete checkpoint of it so a later call resumes from exactly here."""
    C.save(model, run_dir / "checkpoints")
    C.atomic_write(run_dir / "model.zip", lambda p: model.save(p))
    if isinstance(vec, VecNormalize):
        C.atomic_write(run_dir / "vecnormalize.pkl", lambda p: vec.save(str(p)))


def _run_config(zip_path: Path) -> dict[str, Any] | None:
    """The config in the run.json of a model's run folder (the model's or its checkpoints' parent), if any."""
    for folder in (zip_path.parent, zip_path.parent.parent):
        run_json = folder / "run.json"
        if run_json.exists():
            return json.loads(run_json.read_text())["config"]
    return None


def _algo_of(zip_path: Path) -> str:
    """The algorithm of a saved model: from the run's run.json, else from the policy class in the zip."""
    config = _run_config(zip_path)
    if config is not None:
        return config["algo"]
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        data = zf.read("data").decode()
    if "MaskableActorCriticPolicy" in data:
        return "maskable_ppo"
    if "DQNPolicy" in data:
        return "dqn"
    return "ppo"  # A2C and PPO share ActorCriticPolicy, whose predict() is the same


def load_agent(path: str | Path) -> SB3Policy:
    """An :class:`SB3Policy` from a run folder (its final model, else its latest checkpoint) or a ``.zip``.

    The VecNormalize statistics saved beside the model are applied to
    observations, frozen (no updates at evaluation).
    """
    p = Path(path)
    if p.is_dir():
        zip_path = p / "model.zip"
        vn_path = p / "vecnormalize.pkl"
        if not zip_path.exists():
            ckpt = latest_checkpoint(p)
            if ckpt is None:
                raise fail("agent", str(path), "holds neither model.zip nor checkpoints/model_<N>_steps.zip")
            zip_path, vn_path = ckpt[0], _checkpoint_sidecar(ckpt[0], "vecnormalize")
    else:
        if p.suffix != ".zip" or not p.exists():
            raise fail("agent", str(path), "must be a run folder or an existing .zip")
        zip_path = p
        vn_path = (
            _checkpoint_sidecar(p, "vecnormalize") if _CKPT.match(p.name) else p.with_name("vecnormalize.pkl")
        )
    algo = _algo_of(zip_path)
    model = algo_class(algo).load(zip_path, device="cpu")
    vn = None
    if vn_path.exists():
        with open(vn_path, "rb") as fh:
            vn = pickle.load(fh)  # VecNormalize.load without a venv: only the statistics are needed
        vn.training = False
        vn.norm_reward = False
    label = p.name if p.is_dir() else zip_path.stem
    stack = ((_run_config(zip_path) or {}).get("hyperparams") or {}).get("frame_stack", 1)
    return SB3Policy(model, vn, name=f"{algo}:{label}", frame_stack=stack)
