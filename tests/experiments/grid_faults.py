"""Fault injection for the grid tests, installed through the grid's hook :data:`experiments.grid.CELL_HOOK`.

:class:`Faults` is called in the worker (local process or Ray trial) before each cell runs. It works
on a folder every worker can see: each call appends the cell's key to ``calls.log``; a cell whose key
(or ``*``) is a line of ``fail_always`` raises; one listed in ``fail_once`` raises on its first run
only (marker ``failed/<key>``); one listed in ``hang`` writes its worker's pid to ``hung_pids`` and
sleeps for an hour (to test interrupting a grid).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from experiments import grid

if TYPE_CHECKING:  # the workers import this module to unpickle the hook: keep it light
    import pytest


def _listed(path: Path, key: str) -> bool:
    if not path.exists():
        return False
    lines = {ln.strip() for ln in path.read_text().splitlines()}
    return key in lines or "*" in lines


@dataclass(frozen=True)
class Faults:
    """A picklable :data:`~experiments.grid.CELL_HOOK` injecting the faults listed in ``folder``."""

    folder: str

    def __call__(self, cell: grid.Cell) -> None:
        fdir = Path(self.folder)
        key = cell.key
        with open(fdir / "calls.log", "a") as fh:
            fh.write(key + "\n")
        import numba  # (in the worker: numba is loaded by then)

        with open(fdir / "threads.log", "a") as fh:  # the numba threads the grid gave the cell
            fh.write(f"{key} {numba.get_num_threads()}\n")
        if _listed(fdir / "fail_always", key):
            raise RuntimeError(f"injected failure (fail_always) in cell {key}")
        if _listed(fdir / "hang", key):  # a cell that never ends
            with open(fdir / "hung_pids", "a") as fh:
                fh.write(f"{os.getpid()}\n")
            time.sleep(3600)
        marker = fdir / "failed" / key
        if _listed(fdir / "fail_once", key) and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise RuntimeError(f"injected failure (fail_once) in cell {key}")


def install(folder: str | Path, monkeypatch: pytest.MonkeyPatch | None = None) -> Faults:
    """Make every grid run (of this process) inject the faults listed in ``folder``.

    With ``monkeypatch`` the hook is removed after the test; without (a subprocess), it stays.
    """
    hook = Faults(str(Path(folder).resolve()))
    if monkeypatch is not None:
        monkeypatch.setattr(grid, "CELL_HOOK", hook)
    else:
        grid.CELL_HOOK = hook
    return hook


def calls(folder: Path) -> list[str]:
    """The keys of the cell runs so far, in order (one line per run, retries included)."""
    log = folder / "calls.log"
    return log.read_text().split() if log.exists() else []


def threads(folder: Path) -> dict[str, int]:
    """The numba thread count each cell ran with (its last run's)."""
    log = folder / "threads.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return {key: int(n) for key, n in (ln.split() for ln in lines)}
