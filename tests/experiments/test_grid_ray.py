"""The grid runner on Ray Tune: same rows as the local backend, retried trials, resume from results.jsonl,
the progress line."""

from __future__ import annotations

from experiments.grid import read_results, run_grid
from tests.experiments.grid_faults import calls
from tests.experiments.test_grid import grid_2x2


def test_ray_rows_equal_local_rows_and_resume_skips_finished_cells(tmp_path, local_ray, faults, capsys):
    cells = grid_2x2()
    local = run_grid(cells, tmp_path / "local", workers=2, progress=False)
    capsys.readouterr()
    on_ray = run_grid(cells, tmp_path / "ray", backend="ray", progress_every=600)
    assert on_ray == local
    # the progress line counts the cells the Ray trials finished (no training: no steps); start and end only
    lines = capsys.readouterr().err.splitlines()
    assert [ln.rsplit(" | ", 1)[0] for ln in lines] == [
        "grid: ETA ? | cells 0/4",
        "grid: ETA 0:00 | cells 4/4",
    ]
    key = lambda r: r["key"]  # noqa: E731
    assert sorted(read_results(tmp_path / "ray"), key=key) == sorted(
        read_results(tmp_path / "local"), key=key
    )
    assert (tmp_path / "ray" / "ray_results" / "grid").is_dir()
    # resume: every cell is in results.jsonl, so no trial runs (any that did would raise)
    (faults / "fail_always").write_text("*\n")
    n_calls = len(calls(faults))
    assert run_grid(cells, tmp_path / "ray", backend="ray", progress=False, max_retries=0) == local
    assert len(calls(faults)) == n_calls


def test_ray_trial_failing_once_is_retried_and_a_partial_grid_resumes(tmp_path, local_ray, faults):
    cells = grid_2x2()
    # a first, interrupted run finished only the first cell
    first = run_grid(cells[:1], tmp_path / "run", backend="ray", progress=False)
    (faults / "fail_once").write_text("*\n")
    (faults / "calls.log").unlink()
    rows = run_grid(cells, tmp_path / "run", backend="ray", progress=False, max_retries=1)
    assert rows[0] == first[0]
    assert sorted(calls(faults)) == sorted([c.key for c in cells[1:]] * 2), "3 cells, each failed once"
    assert [r["key"] for r in rows] == [c.key for c in cells]
    assert len(read_results(tmp_path / "run")) == 4
    assert rows == run_grid(cells, tmp_path / "local", workers=2, progress=False)
