"""KPI helpers: the fast percentile equals numpy's, and window overlaps are exact."""

import numpy as np
import pytest

from envs.sim.metrics import overlap_s, percentiles


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 4000])
@pytest.mark.parametrize("q", [0.0, 37.3, 50.0, 99.0, 100.0])
def test_percentiles_equal_numpy_bit_for_bit(n, q):
    x = np.random.default_rng(n).lognormal(size=n)
    assert percentiles(x, (q, 99.0)) == [np.percentile(x, q), np.percentile(x, 99.0)]


def test_overlap_clips_to_the_window_and_handles_open_intervals():
    start = np.array([0.0, 5.0, 12.0, 3.0])
    end = np.array([4.0, np.inf, 20.0, 6.0])
    np.testing.assert_array_equal(overlap_s(start, end, 2.0, 10.0), [2.0, 5.0, 0.0, 3.0])
