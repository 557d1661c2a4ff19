"""agents.progress: the training callback's progress files, their sum over a grid's cells, the progress line."""

from __future__ import annotations

import io
import time

import pytest

from agents import progress as P

AUTOSCALE = "InferGym/Autoscale-v1"
TINY_PPO = ["n_steps=16", "batch_size=16", "n_epochs=1"]


def test_callback_publishes_every_step_count_and_a_resumed_run_its_start(tmp_path, monkeypatch):
    from stable_baselines3 import PPO

    from agents.sb3 import make_vec, train

    seen = []
    real = P.publish

    def record(path, rec):
        seen.append(dict(rec))
        real(path, rec)

    monkeypatch.setattr(P, "publish", record)
    vec = make_vec(AUTOSCALE, "default", 1, 0, {"horizon_s": 60.0})
    model = PPO("MlpPolicy", vec, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(48, callback=P.ProgressCallback(tmp_path / "p.json", 48, every_s=0))
    vec.close()
    assert [r["steps_done"] for r in seen] == [0, *range(1, 49), 48], "start, every step, end"
    assert {(r["steps_total"], r["steps_at_start"]) for r in seen} == {(48, 0)}
    assert len({r["session"] for r in seen}) == 1
    assert P.read_progress(tmp_path / "p.json") == seen[-1]

    # train() publishes into its run folder; a resumed call starts from the checkpoint's steps
    run = tmp_path / "run"
    kw = dict(n_envs=1, overrides=TINY_PPO, env_kwargs={"horizon_s": 60.0}, progress_bar=False)
    train(AUTOSCALE, "ppo", "default", 32, 0, run, **kw)
    first = P.read_progress(run / P.PROGRESS_FILE)
    assert (first["steps_done"], first["steps_total"], first["steps_at_start"]) == (32, 32, 0)
    train(AUTOSCALE, "ppo", "default", 64, 0, run, **kw)
    second = P.read_progress(run / P.PROGRESS_FILE)
    assert (second["steps_done"], second["steps_total"], second["steps_at_start"]) == (64, 64, 32)
    assert second["session"] != first["session"]


def _file(path, done, total, start, session):
    P.publish(path, {"steps_done": done, "steps_total": total, "steps_at_start": start, "session": session})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_tally_sums_the_cells_files_and_counts_resumed_steps_apart_from_throughput(tmp_path):
    a, b, d = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "d.json"
    _file(a, 40, 100, 0, "old")  # a run stopped at 40 steps, to resume from its checkpoint at 32
    tasks = {"a": (a, 100), "b": (b, 200), "c": (None, 0), "d": (d, 50)}  # c: an evaluate cell
    clock = Clock()
    tally = P.StepTally(tasks, done=["d"], clock=clock, window_s=30)
    s = tally.sample()
    assert (s.steps_done, s.steps_total, s.steps_resumed, s.steps_new) == (90, 350, 90, 0)
    assert (s.cells_done, s.cells_total, s.steps_per_s, s.eta_s) == (1, 4, None, None)
    assert P.format_line(s) == "grid: steps 90/350 (25%, 90 resumed) | - steps/s | ETA ? | cells 1/4 | 0:00"

    clock.t += 10
    _file(a, 72, 100, 32, "a1")  # resumed at 32: 40 new steps, not 72
    _file(b, 100, 200, 0, "b1")
    s = tally.sample()
    assert (s.steps_done, s.steps_new, s.steps_resumed) == (50 + 72 + 100, 140, 90)
    assert s.steps_per_s == pytest.approx(14.0) and s.eta_s == pytest.approx((350 - 222) / 14.0)
    assert P.format_line(s, "calibration") == (
        "calibration: steps 222/350 (63%, 90 resumed) | 14 steps/s | ETA 0:09 | cells 1/4 | 0:10"
    )

    clock.t += 10
    _file(a, 130, 100, 32, "a1")  # SB3 overshoots the budget to finish a rollout: clipped
    _file(b, 50, 200, 0, "b2")  # b retried from scratch: its first session's 100 steps still count as work
    tally.mark_done("a")
    tally.mark_done("c")
    s = tally.sample()
    assert (s.steps_done, s.steps_new, s.cells_done) == (50 + 100 + 50, 68 + 150, 3)
    assert s.steps_per_s == pytest.approx(218 / 20)

    clock.t += 40  # the rate is over the last window_s (30 s): samples older than that are dropped
    _file(b, 200, 200, 0, "b2")
    s = tally.sample()
    assert s.steps_new == 368 and s.steps_per_s == pytest.approx((368 - 218) / 40)
    assert s.eta_s == pytest.approx(1 / (2 / 60)), "training done: 1 cell left at the 2 cells per 60 s so far"
    clock.t += 30  # evaluating: no steps, and the rate stays the training's last one
    tally.mark_done("b")
    s = tally.sample()
    assert (s.steps_done, s.cells_done, s.eta_s) == (350, 4, 0.0)
    assert s.steps_per_s == pytest.approx((368 - 218) / 40)
    assert "steps 350/350 (100%, 90 resumed)" in P.format_line(s)


def test_tally_without_training_estimates_from_cells_and_ignores_broken_files(tmp_path):
    (tmp_path / "torn.json").write_text('{"steps_done": 3')
    clock = Clock()
    tally = P.StepTally({"x": (None, 0), "y": (None, 0), "z": (tmp_path / "torn.json", 10)}, clock=clock)
    assert tally.sample().steps_done == 0
    clock.t += 4
    tally.mark_done("x")
    s = tally.sample()
    assert s.eta_s is None, "training steps remain and none is measured"
    tally.mark_done("z")
    s = tally.sample()
    assert s.eta_s == pytest.approx(1 / (2 / 4))  # one cell left at 2 cells per 4 s
    only_cells = P.StepTally({"x": (None, 0)}, clock=clock).sample()
    assert P.format_line(only_cells) == "grid: ETA ? | cells 0/1 | 0:00"


def test_progress_line_prints_every_n_seconds_off_a_terminal_and_redraws_on_one():
    snap = P.Snapshot(1.0, 5, 10, 0, 5, 0, 2, 5.0, 1.0)
    out = io.StringIO()
    with P.ProgressLine(lambda: snap, stream=out, every_s=0.1):
        time.sleep(0.55)
    lines = out.getvalue().splitlines()
    assert 3 <= len(lines) <= 9, lines  # the first, about 5 in between, the last
    assert set(lines) == {"grid: steps 5/10 (50%) | 5 steps/s | ETA 0:01 | cells 0/2 | 0:01"}
    out = io.StringIO()
    with P.ProgressLine(lambda: snap, stream=out, every_s=60):
        time.sleep(0.2)
    assert len(out.getvalue().splitlines()) == 2, "no line in between: the interval is not over"
    tty = io.StringIO()
    with P.ProgressLine(lambda: snap, stream=tty, tty=True):
        time.sleep(0.1)
    text = tty.getvalue()
    assert text.startswith("\rgrid: steps 5/10") and text.count("\n") == 1 and text.endswith("\x1b[K\n")


def test_progress_errors_never_reach_the_work():
    def broken():
        raise RuntimeError("unreadable")

    out = io.StringIO()
    with P.ProgressLine(broken, stream=out, every_s=0.05):
        time.sleep(0.15)
    assert out.getvalue() == ""
    with pytest.raises(KeyError):  # the block's own error is what propagates
        with P.ProgressLine(broken, stream=out, every_s=0.05):
            raise KeyError("work")


def test_rate_is_measured_from_the_first_trained_steps_not_from_the_workers_start_up(tmp_path):
    clock = Clock()
    tally = P.StepTally({"a": (tmp_path / "a.json", 1000)}, clock=clock)
    clock.t += 10  # workers importing, no step yet
    assert tally.sample().steps_per_s is None
    _file(tmp_path / "a.json", 0, 1000, 0, "s")
    clock.t += 2
    assert tally.sample().steps_per_s is None
    _file(tmp_path / "a.json", 24, 1000, 0, "s")
    clock.t += 2
    assert tally.sample().steps_per_s == pytest.approx(12.0)
