"""Command line for :func:`agents.sb3.train`: train or resume an SB3 agent into a self-describing run folder.

The arguments are a typed dataclass whose fields carry their help text (as
CleanRL does); ``--hp key=value`` overrides a hyperparameter of
``agents/hyperparams/<algo>.yaml`` and ``--env-kwargs key=value`` a ``gym.make``
keyword, values parsed as YAML. ``--config file.yaml`` supplies any of the
arguments (keys are the field names, e.g. ``experiments/configs/autoscale_ppo.yaml``);
flags given on the command line win. Running the same command again on the
same ``--run-dir`` resumes from its latest checkpoint.

    python -m experiments.train --config experiments/configs/autoscale_ppo.yaml \\
        --seed 0 --run-dir runs/autoscale-ppo-bursty-0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import envs
from envs.sim.errors import ConfigError, check_keys


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainArgs:
    """Arguments of one training run."""

    env: str = field(metadata=_help(f"environment id, one of {sorted(envs.ENV_IDS)}"))
    algo: str = field(
        metadata=_help("ppo | a2c | dqn (Discrete envs) | maskable_ppo (envs with action masks)")
    )
    run_dir: str = field(metadata=_help("run folder (created; an existing one with checkpoints is resumed)"))
    scenario: str = field(default="default", metadata=_help("shipped scenario name or YAML path"))
    total_timesteps: int = field(
        default=100_000, metadata=_help("environment steps in total, over all copies")
    )
    seed: int = field(default=0, metadata=_help("seed of the model and of the environment copies"))
    n_envs: int | None = field(
        default=None,
        metadata=_help("parallel environment copies (default: the hyperparameters' n_envs, else 2)"),
    )
    subproc: bool = field(default=False, metadata=_help("run the copies in subprocesses (SubprocVecEnv)"))
    checkpoint_freq: int = field(
        default=10_000, metadata=_help("checkpoint every this many environment steps")
    )
    hp: tuple[str, ...] = field(
        default=(), metadata=_help("hyperparameter overrides KEY=VALUE (YAML values)")
    )
    hyperparams: str | None = field(
        default=None,
        metadata=_help("hyperparameter table in the format of agents/hyperparams/<algo>.yaml, e.g. a "
                       "search's best_hyperparams.yaml; its values replace the shipped ones, --hp wins"),
    )  # fmt: skip
    env_kwargs: tuple[str, ...] = field(
        default=(), metadata=_help("gym.make keywords KEY=VALUE, e.g. horizon_s=600")
    )
    no_progress_bar: bool = field(default=False, metadata=_help("hide the progress bar"))
    torch_threads: int = field(default=1, metadata=_help("torch CPU threads"))


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser generated from :class:`TrainArgs` (one flag per field, its help from the field)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="YAML file of arguments (keys: the field names below)")
    for f in dataclasses.fields(TrainArgs):
        flag = "--" + f.name.replace("_", "-")
        has_default = f.default is not dataclasses.MISSING
        help_text = f.metadata["help"] + (
            f" (default: {f.default})" if has_default and f.default not in ((), None) else ""
        )
        if f.type == "bool":
            ap.add_argument(flag, action="store_true", help=help_text)
        elif f.type == "tuple[str, ...]":
            ap.add_argument(flag, nargs="*", default=[], metavar="KEY=VALUE", help=help_text)
        else:
            kind = int if f.type in ("int", "int | None") else str
            # required fields may come from --config, so they are checked after parsing
            ap.add_argument(flag, type=kind, default=None if not has_default else f.default,
                            help=help_text + ("" if has_default else " (required)"))  # fmt: skip
    return ap


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    """Command line (and ``--config`` file) -> :class:`TrainArgs`; explicit flags override the file."""
    ap = build_parser()
    ns = vars(ap.parse_args(argv))
    config_path = ns.pop("config")
    fields = {f.name: f for f in dataclasses.fields(TrainArgs)}
    if config_path is not None:
        raw = yaml.safe_load(Path(config_path).read_text()) or {}
        check_keys(Path(config_path).name, raw, fields)
        explicit = vars(ap.parse_args(argv, argparse.Namespace(**{k: _UNSET for k in ns})))
        for key, value in raw.items():
            if explicit[key] is _UNSET:
                if isinstance(value, dict):  # env_kwargs / hp as a mapping: JSON values are valid YAML
                    value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
                ns[key] = [str(v) for v in value] if isinstance(value, list) else value
    missing = [k for k, f in fields.items() if f.default is dataclasses.MISSING and ns[k] is None]
    if missing:
        ap.error(f"missing required arguments: {', '.join('--' + m.replace('_', '-') for m in missing)}")
    return TrainArgs(**{k: tuple(v) if isinstance(v, list) else v for k, v in ns.items()})


_UNSET = object()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from agents.sb3 import parse_overrides, train  # torch loads here, after --help has been served

    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        overrides: list[str] | dict = list(args.hp)
        if args.hyperparams is not None:
            from envs.sim.config import deep_merge
            from experiments.tune_hparams import hyperparams_file_overrides

            table = hyperparams_file_overrides(args.hyperparams, args.algo, args.env)
            overrides = deep_merge(table, parse_overrides(list(args.hp)))
        model = train(
            args.env,
            args.algo,
            args.scenario,
            args.total_timesteps,
            args.seed,
            Path(args.run_dir),
            n_envs=args.n_envs,
            overrides=overrides,
            env_kwargs=parse_overrides(list(args.env_kwargs)),
            checkpoint_freq=args.checkpoint_freq,
            progress_bar=False if args.no_progress_bar else None,
            subproc=args.subproc,
            torch_threads=args.torch_threads,
            command=shlex.join(["python", "-m", "experiments.train", *argv_list]),
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"trained {model.num_timesteps} steps -> {args.run_dir}/model.zip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
