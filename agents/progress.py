"""Training progress in environment steps, readable from any process: a tiny JSON file per run.

:class:`ProgressCallback` (an SB3 callback, added by :func:`agents.sb3.train` to every run)
publishes the run's progress to ``<run_dir>/progress.json`` when training starts, about once a
second while it runs (a clock check per step, a write per second) and when it ends::

    {"steps_done": 4096, "steps_total": 20000, "steps_at_start": 2048,
     "session": "<random hex, new for every train() call>", "pid": 1234, "updated_unix": 1.7e9}

The file is written to a temporary name and renamed over the old one, so a reader sees either the
previous or the new content, never half a file. A file was chosen over a queue, a socket or a Ray
actor because it needs nothing from the process that reads it: the same code serves a local
process pool and Ray trials (on one machine, or on a cluster whose nodes share the run folder,
which train cells need anyway for their agents), a reader that starts late or restarts still finds
the latest state, and a grid that is not watching costs nothing. ``steps_at_start`` (the steps a
resumed run had done before this call) and ``session`` let a reader tell steps done in an earlier
session, such as a run resumed from a checkpoint, from throughput of this one.

:class:`StepTally` sums such files over the tasks of a grid (each task: its file, or None for work
that is not training, and its step budget), and :class:`ProgressLine` prints the sum as one line
that moves: redrawn in place on a terminal, a plain line every ``every_s`` seconds otherwise (so
logs are not flooded). :mod:`experiments.grid` wires the three together.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

PROGRESS_FILE = "progress.json"


def publish(path: str | Path, record: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``record`` as JSON, atomically (temporary file in the same folder, renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(record), separators=(",", ":")))
    os.replace(tmp, path)


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """The record in a progress file; None when it is missing or unreadable."""
    try:
        rec = json.loads(Path(path).read_text())
        int(rec["steps_done"]), int(rec["steps_total"]), int(rec["steps_at_start"]), str(rec["session"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rec


def _callback_class() -> type:
    from stable_baselines3.common.callbacks import BaseCallback

    class ProgressCallback(BaseCallback):
        """Publish ``steps_done`` / ``steps_total`` of a training run to ``path`` (see the module docstring).

        Writes at training start, then at most once every ``every_s`` seconds, and at training end. It
        draws no random numbers (the session id comes from the OS), so adding it leaves training
        bit-identical; a failed write (full disk, say) is skipped, never an error of the training.
        """

        def __init__(self, path: str | Path, steps_total: int, every_s: float = 1.0) -> None:
            super().__init__()
            self.path = Path(path)
            self.steps_total = int(steps_total)
            self.every_s = float(every_s)
            self.session = ""
            self._start = 0
            self._next = 0.0

        def _publish(self) -> None:
            self._next = time.monotonic() + self.every_s
            try:
                publish(
                    self.path,
                    {
                        "steps_done": int(self.num_timesteps),
                        "steps_total": self.steps_total,
                        "steps_at_start": self._start,
                        "session": self.session,
                        "pid": os.getpid(),
                        "updated_unix": time.time(),
                    },
                )
            except OSError:
                pass

        def _on_training_start(self) -> None:
            self.session = uuid.uuid4().hex
            self._start = int(self.num_timesteps)
            self._publish()

        def _on_step(self) -> bool:
            if time.monotonic() >= self._next:
                self._publish()
            return True

        def _on_training_end(self) -> None:
            self._publish()

    ProgressCallback.__module__, ProgressCallback.__qualname__ = __name__, "ProgressCallback"
    return ProgressCallback


def __getattr__(name: str) -> Any:
    # ProgressCallback subclasses SB3's BaseCallback. It is built on first use, so that a process
    # that only reads progress files (a grid's driver) does not import SB3 and torch (seconds).
    if name == "ProgressCallback":
        cls = globals()["ProgressCallback"] = _callback_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Snapshot:
    """Progress of a set of tasks at one moment (what :func:`format_line` prints)."""

    elapsed_s: float
    steps_done: int  # training steps done, each task's clipped to its budget (resumed ones included)
    steps_total: int  # the training budgets summed
    steps_resumed: int  # of steps_done, those done before the tally started (not throughput)
    steps_new: int  # steps taken by training sessions that started after the tally
    cells_done: int
    cells_total: int
    steps_per_s: float | None  # over the last ``window_s`` (None before the first new steps; the
    # last one measured once every budget is done)
    eta_s: float | None


class StepTally:
    """Sums the progress files of a set of tasks into a :class:`Snapshot`.

    ``tasks`` maps a task's key to ``(progress file or None, step budget)``; a task without a file
    (evaluation, say) counts only as a cell. ``done`` are tasks finished before the tally started.
    Steps already done when the tally starts (finished tasks, and what a file says for an
    unfinished one, e.g. a run that will resume from its checkpoint) are *resumed*, not throughput:
    the rate counts only steps of training sessions (the files' ``session``) that begin after the
    tally, from where each began (``steps_at_start``). A task retried within the tally keeps the
    steps of its earlier sessions in that count. :meth:`mark_done` records a task as finished.
    """

    def __init__(
        self,
        tasks: Mapping[str, tuple[str | Path | None, int]],
        done: Iterable[str] = (),
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tasks = {k: (Path(p) if p is not None else None, max(0, int(n))) for k, (p, n) in tasks.items()}
        self.done = {k for k in done if k in self.tasks}
        self.window_s = float(window_s)
        self.clock = clock
        self._steps: dict[str, int] = {}  # unfinished task -> steps done per its file (clipped)
        self._old_session: dict[str, str] = {}  # the session a task's file held when the tally started
        self._new: dict[str, dict[str, int]] = {}  # task -> {session of this tally: steps it took}
        for key in self._unfinished():
            rec = read_progress(self.tasks[key][0])  # type: ignore[arg-type]
            if rec is not None:
                self._old_session[key] = rec["session"]
                self._steps[key] = min(int(rec["steps_done"]), self.tasks[key][1])
        self.steps_resumed = sum(self.tasks[k][1] for k in self.done) + sum(self._steps.values())
        self._cells_done0 = len(self.done)
        self._t0 = clock()
        self._samples: deque[tuple[float, int]] = deque([(self._t0, 0)])
        self._final_rate: float | None = None

    def _unfinished(self) -> list[str]:
        return [k for k, (p, _) in self.tasks.items() if p is not None and k not in self.done]

    def _read(self, key: str) -> None:
        path, total = self.tasks[key]
        rec = read_progress(path) if path is not None else None
        if rec is None:
            return
        steps = min(int(rec["steps_done"]), total)
        self._steps[key] = steps
        if rec["session"] != self._old_session.get(key):
            start = min(int(rec["steps_at_start"]), total)
            self._new.setdefault(key, {})[rec["session"]] = max(0, steps - start)

    def mark_done(self, key: str) -> None:
        """Task ``key`` has finished (its file is read one last time for its final session's steps)."""
        if key in self.tasks and key not in self.done:
            self._read(key)
            self.done.add(key)

    def sample(self) -> Snapshot:
        """Read the unfinished tasks' files and return the sums, rate and ETA now."""
        for key in self._unfinished():
            self._read(key)
        now = self.clock()
        new = sum(sum(s.values()) for s in self._new.values())
        done = sum(self.tasks[k][1] if k in self.done else self._steps.get(k, 0) for k in self.tasks)
        total = sum(n for _, n in self.tasks.values())
        if new == 0:  # nothing trained yet (workers starting): the rate is measured from the first steps
            self._samples.clear()
        self._samples.append((now, new))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()  # keep one sample at least window_s old
        t_old, new_old = self._samples[0]
        rate = (new - new_old) / (now - t_old) if new and now - t_old > 0 else None
        if total > done:
            self._final_rate = None
        elif self._final_rate is None:
            self._final_rate = rate  # training is over: keep its last rate rather than show it decay
        else:
            rate = self._final_rate
        cells_new = len(self.done) - self._cells_done0
        cells_left = len(self.tasks) - len(self.done)
        eta = None
        if total > done:
            eta = (total - done) / rate if rate else None
        elif cells_left == 0:
            eta = 0.0
        elif cells_new and now > self._t0:  # no training left: finished cells per second so far
            eta = cells_left / (cells_new / (now - self._t0))
        return Snapshot(
            elapsed_s=now - self._t0,
            steps_done=done,
            steps_total=total,
            steps_resumed=self.steps_resumed,
            steps_new=new,
            cells_done=len(self.done),
            cells_total=len(self.tasks),
            steps_per_s=rate,
            eta_s=eta,
        )


# ---------------------------------------------------------------------------------------------- printing


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def format_line(s: Snapshot, label: str = "grid") -> str:
    """One line: ``grid: steps 12,288/40,000 (30%) | 1,530 steps/s | ETA 0:18 | cells 3/10 | 0:09``.

    The last field is the time elapsed. Steps done before the tally started are added as
    ``(30%, 4,096 resumed)``; without training tasks the steps and steps/s fields are left out.
    """
    parts = []
    if s.steps_total:
        pct = 100 * s.steps_done // s.steps_total  # rounded down: 100% only when every step is done
        resumed = f", {s.steps_resumed:,} resumed" if s.steps_resumed else ""
        parts.append(f"steps {s.steps_done:,}/{s.steps_total:,} ({pct}%{resumed})")
        parts.append(f"{s.steps_per_s:,.0f} steps/s" if s.steps_per_s is not None else "- steps/s")
    parts.append(f"ETA {_duration(s.eta_s)}")
    parts.append(f"cells {s.cells_done}/{s.cells_total}")
    parts.append(_duration(s.elapsed_s))
    return f"{label}: " + " | ".join(parts)


#: Seconds between progress lines when the stream is not a terminal (a log file, a batch system).
EVERY_S = 30.0
#: Seconds between redraws on a terminal.
TTY_EVERY_S = 0.5
#: Seconds between reads of the progress files at most (also between lines): the rate's samples.
POLL_S = 5.0


class ProgressLine:
    """Print ``poll()``'s :class:`Snapshot` as one line from a background thread while the block runs.

    On a terminal the line is redrawn in place every :data:`TTY_EVERY_S` seconds; otherwise a new
    line is printed every ``every_s`` seconds (default :data:`EVERY_S`), plus one at the start and
    one at the end, and ``poll()`` is called every :data:`POLL_S` seconds in between (so the rate
    has samples). ``stream`` defaults to ``sys.stderr`` (looked up when the block starts).
    """

    def __init__(
        self,
        poll: Callable[[], Snapshot],
        label: str = "grid",
        stream: TextIO | None = None,
        every_s: float | None = None,
        tty: bool | None = None,
    ) -> None:
        self.poll, self.label, self.stream = poll, label, stream
        self.tty, self.every_s = tty, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _emit(self, final: bool = False) -> None:
        self._write(format_line(self.poll(), self.label), final)

    def _write(self, line: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))  # type: ignore[union-attr]
        else:
            self.stream.write(line + "\n")  # type: ignore[union-attr]
        self.stream.flush()  # type: ignore[union-attr]

    def _loop(self, every: float) -> None:
        tick = min(every, POLL_S)
        due = time.monotonic() + every
        while not self._stop.wait(tick):
            try:
                snap = self.poll()
                now = time.monotonic()
                if now >= due - 1e-3:
                    due = max(due + every, now)
                    self._write(format_line(snap, self.label))
            except Exception:  # a progress line must never stop the work it reports on
                pass

    def __enter__(self) -> ProgressLine:
        if self.stream is None:
            self.stream = sys.stderr
        if self.tty is None:
            isatty = getattr(self.stream, "isatty", None)
            self.tty = bool(isatty()) if isatty is not None else False
        every = TTY_EVERY_S if self.tty else (EVERY_S if self.every_s is None else float(self.every_s))
        try:
            self._emit()
        except Exception:  # a progress line must never stop the work it reports on
            pass
        self._thread = threading.Thread(target=self._loop, args=(every,), name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._emit(final=True)
        except Exception:  # never mask the block's own exception (or its result) with a progress error
            pass
