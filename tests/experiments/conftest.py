"""Fixtures of the experiment-script tests."""

from pathlib import Path

import pytest

from tests.experiments.grid_faults import install


@pytest.fixture
def faults(tmp_path, monkeypatch) -> Path:
    """A fault folder installed as the grid's cell hook (see grid_faults)."""
    d = tmp_path / "faults"
    d.mkdir()
    install(d, monkeypatch)
    return d
