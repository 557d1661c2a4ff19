"""The grid runner, local backend: results file, resume, retries, determinism, cell identity, train cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envs.sim.errors import ConfigError
from experiments.evaluate import evaluate_policy, make_policy
from experiments.grid import Cell, read_results, run_cell, run_grid
from tests.experiments.grid_faults import calls, threads
from tests.paths import REPO

AUTOSCALE = "InferGym/Autoscale-v1"
SHORT = {"horizon_s": 60.0}
ROOT = REPO


def grid_2x2() -> list[Cell]:
    return [
        Cell("evaluate", AUTOSCALE, "default", pol, seed, SHORT)
        for pol in ("random", "hpa")
        for seed in (0, 1)
    ]


def test_cell_key_is_canonical_and_cells_validate():
    a = Cell("evaluate", AUTOSCALE, "bursty", "hpa", 3, {"horizon_s": 60.0, "reward": {"b": 1, "a": 2}})
    b = Cell("evaluate", AUTOSCALE, "bursty", "hpa", 3, (("reward", {"a": 2, "b": 1}), ("horizon_s", 60.0)))
    assert a == b and a.key == b.key and hash(a) == hash(b) and len({a, b}) == 1
    assert Cell.from_dict(a.to_dict()) == a
    assert Cell("evaluate", AUTOSCALE, "bursty", "hpa", 4, a.env_kwargs).key != a.key
    assert Cell("evaluate", AUTOSCALE, "bursty", "hpa", 3, a.env_kwargs, label="x").key != a.key
    with pytest.raises(ConfigError, match="cell.kind"):
        Cell("sweep", AUTOSCALE, "default", "hpa", 0)
    with pytest.raises(ConfigError, match="cell.seed"):
        Cell("evaluate", AUTOSCALE, "default", "hpa", -1)
    with pytest.raises(ConfigError, match="total_timesteps"):
        Cell("train", AUTOSCALE, "default", "ppo", 0)
    with pytest.raises(ConfigError, match="unknown keys"):
        Cell.from_dict({**a.to_dict(), "colour": "red"})
    with pytest.raises(ConfigError, match="JSON"):
        Cell("evaluate", AUTOSCALE, "default", "hpa", 0, {"horizon_s": object()})


def test_2x2_grid_writes_results_equal_to_the_evaluator_and_rerun_skips_everything(tmp_path, faults):
    cells = grid_2x2()
    rows = run_grid(cells, tmp_path / "run", workers=2, progress=False)
    assert [(r["policy"], r["seed"]) for r in rows] == [("random", 0), ("random", 1), ("hpa", 0), ("hpa", 1)]
    assert [r["key"] for r in rows] == [c.key for c in cells]
    assert sorted(calls(faults)) == sorted(c.key for c in cells)
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["key"] for x in lines) == sorted(c.key for c in cells)
    # a row holds exactly the evaluator's numbers for that policy and episode seed
    (ev,) = evaluate_policy(AUTOSCALE, make_policy(AUTOSCALE, "hpa"), "default", [1], SHORT)
    assert rows[3]["return"] == ev["return"] and rows[3]["slo_attainment"] == ev["slo_attainment"]
    assert rows[3]["policy_name"] == ev["policy"] and rows[3]["episode_seed"] == 1
    assert rows[3]["label"] == "hpa" and rows[3]["env_kwargs"] == SHORT
    # a cell shares the cores with the cells still to start (at most workers): the last one runs alone
    # and gets them all, the others half each
    import numba

    cores = min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    want = [max(1, cores // 2)] * 3 + [cores]
    assert [threads(faults)[c.key] for c in cells] == want

    # rerun: any cell that runs raises, so equal rows prove nothing was redone
    (faults / "fail_always").write_text("*\n")
    before = (tmp_path / "run" / "results.jsonl").read_text()
    assert run_grid(cells, tmp_path / "run", workers=2, progress=False, max_retries=0) == rows
    assert len(calls(faults)) == 4
    assert (tmp_path / "run" / "results.jsonl").read_text() == before


def test_interrupted_grid_resumes_without_redoing_finished_cells(tmp_path, faults):
    cells = grid_2x2()
    bad = cells[-1]
    (faults / "fail_always").write_text(bad.key + "\n")
    with pytest.raises(RuntimeError, match=bad.key[:12]) as err:
        run_grid(cells, tmp_path / "run", workers=2, progress=False, max_retries=1)
    assert "after 2 attempts" in str(err.value)
    assert calls(faults).count(bad.key) == 2
    assert sorted(r["key"] for r in read_results(tmp_path / "run")) == sorted(c.key for c in cells[:3])
    # a driver killed mid-write leaves a torn line: it is dropped and its cell redone
    with open(tmp_path / "run" / "results.jsonl", "a") as fh:
        fh.write('{"key": "' + bad.key + '", "ret')
    (faults / "fail_always").unlink()
    (faults / "calls.log").unlink()
    rows = run_grid(cells, tmp_path / "run", workers=2, progress=False)
    assert calls(faults) == [bad.key]
    assert [r["key"] for r in rows] == [c.key for c in cells]
    assert len(read_results(tmp_path / "run")) == 4
    assert rows == run_grid(cells, tmp_path / "clean", workers=2, progress=False)


def test_cell_failing_once_is_retried_and_rows_are_deterministic_across_runs(tmp_path, faults):
    cells = [
        *grid_2x2()[:2],
        Cell("evaluate", "InferGym/Routing-v0", "default", "random", 0, {"horizon_s": 20.0}),
        Cell("evaluate", "InferGym/Placement-v0", "default", "best_fit", 2, SHORT, label="best-fit"),
    ]
    (faults / "fail_once").write_text("*\n")
    retried = run_grid(cells, tmp_path / "a", workers=2, progress=False, max_retries=1)
    assert sorted(calls(faults)) == sorted([c.key for c in cells] * 2)
    assert len(retried) == 4 and retried[3]["label"] == "best-fit" and retried[2]["steps"] > 0
    (faults / "fail_once").unlink()
    again = run_grid(cells, tmp_path / "b", workers=2, progress=False)
    assert again == retried
    key = lambda r: r["key"]  # noqa: E731
    assert sorted(read_results(tmp_path / "a"), key=key) == sorted(read_results(tmp_path / "b"), key=key)


def test_no_retries_left_fails_naming_the_cell(tmp_path, faults):
    cell = grid_2x2()[0]
    (faults / "fail_once").write_text(cell.key + "\n")
    with pytest.raises(RuntimeError, match="'random' on InferGym/Autoscale-v1 / default, seed 0"):
        run_grid([cell], tmp_path / "run", workers=1, progress=False, max_retries=0)
    assert read_results(tmp_path / "run") == []


def test_train_cell_trains_into_its_folder_and_evaluates_on_eval_seeds(tmp_path):
    params = {
        "total_timesteps": 32,
        "n_envs": 1,
        "n_steps": 16,
        "batch_size": 16,
        "n_epochs": 1,
        "eval_seeds": [7, 8],
        "eval_env_kwargs": {"horizon_s": 30.0},
    }
    cell = Cell("train", AUTOSCALE, "default", "ppo", 5, SHORT, params, label="PPO")
    rows = run_cell(cell, tmp_path)
    agent = tmp_path / "agents" / cell.key
    assert (agent / "model.zip").exists() and any((agent / "tb").iterdir())
    run = json.loads((agent / "run.json").read_text())
    assert run["config"]["seed"] == 5 and run["config"]["hyperparams"]["n_steps"] == 16
    assert [(r["seed"], r["episode_seed"], r["label"]) for r in rows] == [(5, 7, "PPO"), (5, 8, "PPO")]
    assert all(r["steps"] == 2 for r in rows), "evaluated with eval_env_kwargs: 30 s / 15 s"
    assert cell.expected_rows == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is not running
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_the_grid_and_its_workers(tmp_path, faults):
    cells = grid_2x2()
    (faults / "hang").write_text("*\n")
    code = (
        "import sys; from experiments.grid import run_grid; from tests.experiments.grid_faults import install; "
        "from tests.experiments.test_grid import grid_2x2; install(sys.argv[2]); "
        "run_grid(grid_2x2(), sys.argv[1], workers=2, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), str(faults)], cwd=ROOT)
    pids_file = faults / "hung_pids"
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline and len(pids_file.read_text().split() if pids_file.exists() else []) < 2
    ):
        time.sleep(0.2)
    workers = [int(p) for p in pids_file.read_text().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "worker processes outlived the interrupted grid"
    assert not read_results(tmp_path / "run") and len(cells) == 4


def test_grid_progress_line_counts_training_steps_and_resumed_ones_apart(tmp_path, capsys):
    import re
    import shutil

    from experiments.grid import agent_dir

    params = {"n_envs": 1, "n_steps": 32, "batch_size": 32, "n_epochs": 1, "eval_seeds": [7]}
    params["eval_env_kwargs"] = {"horizon_s": 30.0}
    train = Cell("train", AUTOSCALE, "default", "ppo", 0, SHORT, {**params, "total_timesteps": 128})
    evaluate = grid_2x2()[0]
    # a stopped run: the same agent trained to 64 steps (its folder resumes at 64)
    half = Cell("train", AUTOSCALE, "default", "ppo", 0, SHORT, {**params, "total_timesteps": 64})
    run_cell(half, tmp_path / "half")
    shutil.copytree(agent_dir(tmp_path / "half", half.key), agent_dir(tmp_path / "run", train.key))
    capsys.readouterr()

    t0 = time.monotonic()
    run_grid([train, evaluate], tmp_path / "run", workers=2, progress_every=0.25)
    took = time.monotonic() - t0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and all(ln.startswith("grid: ") for ln in lines), err
    assert lines[0] == "grid: steps 64/128 (50%, 64 resumed) | - steps/s | ETA ? | cells 0/2 | 0:00"
    assert re.fullmatch(r"grid: steps 128/128 \(100%, 64 resumed\) \| [\d,]+ steps/s \| ETA 0:00 \| cells 2/2 \| .*",
                        lines[-1]), lines[-1]  # fmt: skip
    assert len(lines) <= took / 0.25 + 3, "a line per interval off a terminal, not a redraw per poll"
    # a second run has nothing left: no line at all
    run_grid([train, evaluate], tmp_path / "run", workers=2, progress_every=0.25)
    assert capsys.readouterr().err == ""
