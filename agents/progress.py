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
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

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
