"""Known values of the aggregate statistics in experiments.stats (IQM, stratified bootstrap, P(improvement))."""

from __future__ import annotations

import numpy as np
import pytest

from envs.sim.errors import ConfigError
from experiments.stats import iqm, mean_ci, paired_comparison, probability_of_improvement, summarize


def test_iqm_is_the_25_75_trimmed_mean():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)
    assert iqm([1, 2, 3, 4, 5, 6, 7, 1000]) == pytest.approx(4.5), "the outlier is trimmed"
    assert iqm(np.full(7, 3.0)) == 3.0


def test_probability_of_improvement_extremes_and_ties():
    x, y = np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0, 3.0, 4.0])
    assert probability_of_improvement(x, y).value == 1.0
    assert probability_of_improvement(y, x).value == 0.0
    same = np.array([1.0, 2.0, 3.0])
    est = probability_of_improvement(same, same)
    assert est.value == 0.5
    # half of the pairs favour x, ties count one half: x=[1,3], y=[2,2] -> (0 + 0 + 1 + 1)/4
    assert probability_of_improvement([1.0, 3.0], [2.0, 2.0]).value == 0.5
    assert probability_of_improvement([2.0, 3.0], [2.0, 2.0]).value == pytest.approx(0.75)


def test_probability_of_improvement_averages_over_tasks_with_ci():
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(1.0, 1.0, 10), "b": np.array([5.0, 6.0, 7.0])}
    y = {"a": rng.normal(0.0, 1.0, 10), "b": np.array([1.0, 2.0])}
    one = probability_of_improvement(x["a"], y["a"]).value
    est = probability_of_improvement(x, y)
    assert est.value == pytest.approx((one + 1.0) / 2)
    assert est.low <= est.value <= est.high and est.high - est.low > 0.01
    with pytest.raises(ConfigError, match="tasks differ"):
        probability_of_improvement(x, {"a": y["a"]})


def test_mean_ci_covers_the_true_mean_of_a_large_normal_sample():
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 2.0, 2000)
    est = mean_ci(x)
    assert est.value == pytest.approx(np.mean(x))
    assert est.low < 10.0 < est.high
    # the percentile CI of a mean is close to +-1.96 standard errors
    assert est.high - est.low == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(2000), rel=0.15)


def test_bootstrap_is_deterministic_for_a_seed_and_varies_with_it():
    rng = np.random.default_rng(2)
    tasks = {"t1": rng.normal(0, 1, 8), "t2": rng.normal(3, 1, 5)}
    a, b = summarize(tasks, seed=7), summarize(tasks, seed=7)
    assert a == b
    assert summarize(tasks, seed=8).mean.low != a.mean.low


def test_summarize_mean_iqm_and_stratification():
    tasks = {"t1": np.arange(1.0, 9.0), "t2": np.arange(11.0, 19.0)}
    s = summarize(tasks, n_resamples=500)
    assert s.mean.value == pytest.approx((4.5 + 14.5) / 2)
    assert s.iqm.value == pytest.approx(iqm(np.concatenate(list(tasks.values()))))
    assert s.mean.low < s.mean.value < s.mean.high and s.iqm.low < s.iqm.value < s.iqm.high
    # stratified: every replicate keeps 8 runs of each task, so the mean of means can never reach
    # the extremes a pooled bootstrap could (all runs drawn from one task)
    assert 5.0 < s.mean.low and s.mean.high < 14.0


def test_degenerate_samples():
    s = summarize({"t": np.full(4, 2.0)})
    assert s.mean == (2.0, 2.0, 2.0) and s.iqm == (2.0, 2.0, 2.0)
    single = mean_ci([3.0])
    assert single.value == 3.0 and np.isnan(single.low) and np.isnan(single.high)
    with pytest.raises(ConfigError, match="finite"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ConfigError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.5)


def test_paired_comparison_known_values():
    # two runs of X and one of Y on the same three episodes
    x = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])
    y = np.array([0.0, 2.0, 5.0])
    res = paired_comparison(x, y)
    assert res.difference.value == pytest.approx(np.mean(x) - np.mean(y))
    # episode by episode: run 0 wins, ties, loses; run 1 wins, wins, loses -> (1 + .5 + 0 + 1 + 1 + 0) / 6
    assert res.p_improvement.value == pytest.approx(3.5 / 6)
    assert res.difference.low <= res.difference.value <= res.difference.high
    assert paired_comparison(x, y) == res, "same seed, same intervals"
    assert paired_comparison(x, y, seed=1).difference.low != res.difference.low
    # several runs of Y: every run of X meets every run of Y on each episode
    assert paired_comparison(x, np.stack([y, y])).p_improvement.value == pytest.approx(3.5 / 6)


def test_pairing_takes_the_episodes_spread_out_of_the_comparison():
    # episodes differ a lot (a heavy hour is heavy for everyone); X is better by 1 on every one
    rng = np.random.default_rng(0)
    episodes = rng.normal(0.0, 50.0, 5)
    y = episodes
    x = episodes[None, :] + 1.0 + rng.normal(0.0, 0.1, (5, 5))  # five training seeds
    paired = paired_comparison(x, y)
    assert paired.p_improvement.value == 1.0 and paired.p_improvement.low == 1.0
    assert 0.0 < paired.difference.low < 1.0 < paired.difference.high < 2.0
    # unpaired, the episodes' spread swamps the same difference
    unpaired = probability_of_improvement(x.mean(axis=1), y)
    assert unpaired.low < 0.5 < unpaired.high


def test_paired_comparison_resamples_only_factors_with_several_levels():
    one = paired_comparison([[1.0]], [0.0])
    assert one.difference.value == 1.0 and np.isnan(one.difference.low) and np.isnan(one.p_improvement.high)
    # one episode, several runs of X: the runs are resampled
    res = paired_comparison([[1.0], [3.0], [2.0]], [2.0])
    assert res.difference.low < 0.0 < res.difference.high
    with pytest.raises(ConfigError, match="same episodes"):
        paired_comparison([[1.0, 2.0]], [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="finite"):
        paired_comparison([[1.0, float("nan")]], [1.0, 2.0])
    with pytest.raises(ConfigError, match="shape"):
        paired_comparison(np.zeros((2, 2, 2)), [1.0, 2.0])
