"""Fixtures shared by several test files."""

import os

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) per test module: starting Ray costs seconds. Shut down, temp dir removed, after."""
    from experiments.grid_ray import start_ray, stop_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started, temp_dir = start_ray(None, 2)
    yield
    stop_ray(started, temp_dir)
