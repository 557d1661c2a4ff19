"""The Ray Tune backend of :func:`experiments.grid.run_grid`: one Tune trial per cell.

Each trial runs one :class:`~experiments.grid.Cell` on one CPU and reports its rows; a driver-side
Tune callback appends them to ``results.jsonl`` as they arrive, so a Ray grid resumes exactly as a
local one does. Tune's own experiment state is restored only when it belongs to the same grid
(every pending cell is one of its trials); otherwise it is moved aside and the grid starts fresh.
:func:`start_ray` / :func:`stop_ray` also serve ``experiments.tune_hparams`` and the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from envs.sim.errors import fail
from experiments.grid import RESULTS_FILE, Cell, _Appender, _load_done, _run_cell_dict


def _ray_trainable(config: dict[str, Any], hook: Callable[[Cell], None] | None = None) -> None:
    from ray import tune

    # a trial holds one CPU (see run_grid_ray): its vector envs run on one thread
    rows = _run_cell_dict(config["cell"], config["run_dir"], hook, workers=os.cpu_count() or 1)
    tune.report(
        {"rows_json": json.dumps(rows), "n_rows": len(rows), "cell_key": rows[0]["key"] if rows else ""}
    )


def _collector(results_path: Path, keys: Sequence[str]) -> Any:
    """A Tune callback (runs in the driver) that appends a trial's rows to results.jsonl when they arrive.

    It holds only picklable state because Tune pickles it with the experiment and gives it back on restore.
    """
    from ray import tune

    class _Collect(tune.Callback):
        def __init__(self) -> None:
            self.path, self.keys, self.done = str(results_path), set(keys), set()

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            key = result.get("cell_key")
            if key in self.keys and key not in self.done:
                self.done.add(key)
                _Appender(Path(self.path))(json.loads(result["rows_json"]))

    return _Collect()


def start_ray(ray_address: str | None, workers: int) -> tuple[bool, str | None]:
    """Join ``ray_address``, or start a local Ray with ``workers`` CPUs, unless Ray is already up.

    Returns ``(started, temp_dir)`` for :func:`stop_ray`. A local Ray keeps its
    temp and log files in a fresh short temp dir (its unix sockets need a short
    path), never in the home folder.
    """
    import ray

    if ray.is_initialized():
        return False, None
    kw: dict[str, Any] = {"address": ray_address or None, "include_dashboard": False, "log_to_driver": False}
    temp_dir = None
    if not ray_address:
        temp_dir = tempfile.mkdtemp(prefix="infergym-ray-")
        kw.update(num_cpus=workers, _temp_dir=temp_dir)
    ray.init(**kw)
    return True, temp_dir


def move_aside(path: Path) -> None:
    """Rename an existing folder to ``<name>.old-<n>`` (first free n) so a fresh run can use the name."""
    if path.exists():
        n = 1
        while path.with_name(f"{path.name}.old-{n}").exists():
            n += 1
        path.rename(path.with_name(f"{path.name}.old-{n}"))


def stop_ray(started: bool, temp_dir: str | None) -> None:
    """Shut down a Ray that :func:`start_ray` started and remove its temp dir."""
    if started:
        import ray

        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _run_ray(
    pending: Sequence[Cell],
    run_dir: Path,
    workers: int,
    ray_address: str | None,
    max_retries: int,
    hook: Callable[[Cell], None] | None,
    gpus_per_trial: float,
) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        from ray import tune
    except ImportError as exc:
        raise fail("backend", "ray", f"needs Ray Tune: pip install 'infergym[ray]' ({exc})") from None

    by_key = {c.key: c for c in pending}
    started, temp_dir = start_ray(ray_address, workers)
    storage = (run_dir / "ray_results").resolve()
    exp_dir = storage / "grid"
    keys_file = storage / "grid-cells.json"
    # The hook goes to the trials by tune.with_parameters (not the param space), so a restored
    # experiment runs with this call's hook.
    trainable = tune.with_resources(
        tune.with_parameters(_ray_trainable, hook=hook), {"cpu": 1, "gpu": float(gpus_per_trial)}
    )
    param_space = {
        "cell": tune.grid_search([c.to_dict() for c in pending]),
        "run_dir": str(run_dir.resolve()),
    }
    try:
        old_keys = set(json.loads(keys_file.read_text())) if keys_file.exists() else None
        restorable = exp_dir.exists() and tune.Tuner.can_restore(str(exp_dir))
        # Restore Tune's own state only when it is this grid's: every pending cell is one of its trials.
        if restorable and old_keys is not None and set(by_key) <= old_keys:
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, restart_errored=True)
        else:
            move_aside(exp_dir)
            storage.mkdir(parents=True, exist_ok=True)
            keys_file.write_text(json.dumps(sorted(by_key)))
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                # a fresh actor per trial costs seconds of imports, more than a typical evaluate cell
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(
                    storage_path=str(storage),
                    name="grid",
                    failure_config=tune.FailureConfig(max_failures=max_retries),
                    callbacks=[_collector(run_dir / RESULTS_FILE, list(by_key))],
                    verbose=0,
                ),
            )
        results = tuner.fit()
        finished = _load_done(run_dir / RESULTS_FILE, pending)
        for res in results:
            key = Cell.from_dict(res.config["cell"]).key if res.config and "cell" in res.config else None
            if res.error is not None and key not in finished:
                what = by_key[key].describe() if key in by_key else f"trial in {res.path}"
                raise RuntimeError(
                    f"grid cell {what} failed after {max_retries + 1} attempts: {res.error!r}"
                ) from res.error
    finally:
        stop_ray(started, temp_dir)
