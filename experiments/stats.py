"""Aggregate scores over seeds and tasks with bootstrap confidence intervals.

Follows Agarwal et al., "Deep Reinforcement Learning at the Edge of the
Statistical Precipice", NeurIPS 2021 (the ``rliable`` library): report the
interquartile mean (IQM, the 25%-75% trimmed mean of all runs) and the mean,
each with a 95% *stratified* bootstrap confidence interval, and the
probability of improvement P(X > Y) from the Mann-Whitney U statistic (or, for runs scored on the
same evaluation episodes, its paired form with a multiway bootstrap: :func:`paired_comparison`). A
"task" here is one (environment, scenario) cell; stratified means every
bootstrap replicate resamples the seeds *within* each task independently, so
each task keeps its number of runs and no task can drop out of a replicate.
Scores of different tasks must be on a common scale (normalise them first)
before they are aggregated. Intervals use the percentile method, as rliable
does, via :func:`scipy.stats.bootstrap`; a task with a single seed has no
spread to resample, so its intervals are NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from envs.sim.errors import ConfigError, check_number

# rliable uses 2000 replicates in its examples; the CI endpoints are stable to ~1e-2 of the spread there.
DEFAULT_RESAMPLES = 2000


class Estimate(NamedTuple):
    """A point estimate and its confidence interval ``[low, high]``."""

    value: float
    low: float
    high: float


class Summary(NamedTuple):
    """Mean and IQM of a set of runs over tasks, each with a stratified bootstrap CI."""

    mean: Estimate
    iqm: Estimate


def iqm(x: np.ndarray | Sequence[float], axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean: the mean of the middle 50% of ``x`` (25% trimmed from each end).

    ``scipy.stats.trim_mean(x, 0.25)``, as rliable's ``aggregate_iqm``; e.g. the IQM of
    1..8 is the mean of 3..6 = 4.5. With ``axis=None`` the array is flattened.
    """
    return sps.trim_mean(np.asarray(x, dtype=float), 0.25, axis=axis)


def _as_tasks(scores: Mapping[str, np.ndarray] | np.ndarray | Sequence[float], name: str) -> list[np.ndarray]:
    """Per-task 1-D float arrays; a bare array is one task."""
    items = scores.items() if isinstance(scores, Mapping) else [("", scores)]
    out = []
    for task, arr in items:
        a = np.asarray(arr, dtype=float).ravel()
        where = f"{name}[{task!r}]" if task else name
        if a.size == 0:
            raise ConfigError(f"{where}: no scores")
        if not np.all(np.isfinite(a)):
            raise ConfigError(f"{where}: scores must be finite, got {a.tolist()}")
        out.append(a)
    if not out:
        raise ConfigError(f"{name}: no tasks")
    return out


def _bootstrap_ci(
    samples: list[np.ndarray], statistic, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile CI of ``statistic(*samples, axis=-1)``, each sample resampled independently."""
    if any(len(s) < 2 for s in samples):
        return float("nan"), float("nan")
    if all(np.all(s == s[0]) for s in samples):
        # No spread in any stratum: every replicate equals the point estimate.
        v = float(statistic(*samples, axis=-1))
        return v, v
    res = sps.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
        batch=max(1, min(n_resamples, 200)),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _check(confidence: float, n_resamples: int) -> None:
    check_number("confidence", confidence, gt=0, lt=1)
    check_number("n_resamples", n_resamples, ge=10, integer=True)


def _mean_of_task_means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean([np.mean(s, axis=axis) for s in samples], axis=0)


def _pooled_iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return iqm(np.concatenate(samples, axis=axis), axis=axis)


def mean_ci(
    x: np.ndarray | Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Mean of one cell's runs (e.g. the seeds of one policy on one scenario) with a bootstrap CI."""
    _check(confidence, n_resamples)
    (a,) = _as_tasks(x, "x")
    lo, hi = _bootstrap_ci([a], _mean_of_task_means, confidence, n_resamples, seed)
    return Estimate(float(np.mean(a)), lo, hi)


def summarize(
    scores_by_task: Mapping[str, np.ndarray],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Summary:
    """Mean and IQM over tasks of ``{task: scores of shape (n_seeds,)}`` with stratified bootstrap CIs.

    The mean is the mean over tasks of each task's mean over seeds (every task
    weighs the same even if seed counts differ); the IQM is taken over all runs
    of all tasks pooled, as in rliable. Both equal rliable's aggregates when every
    task has the same number of seeds.
    """
    _check(confidence, n_resamples)
    tasks = _as_tasks(scores_by_task, "scores_by_task")
    mean_ci_ = _bootstrap_ci(tasks, _mean_of_task_means, confidence, n_resamples, seed)
    iqm_ci = _bootstrap_ci(tasks, _pooled_iqm, confidence, n_resamples, seed)
    return Summary(
        mean=Estimate(float(_mean_of_task_means(*tasks)), *mean_ci_),
        iqm=Estimate(float(_pooled_iqm(*tasks)), *iqm_ci),
    )


def _p_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) over the last axes of ``x`` and ``y`` (= U / (n m))."""
    xx, yy = x[..., :, None], y[..., None, :]
    return np.mean((xx > yy) + 0.5 * (xx == yy), axis=(-2, -1))


def probability_of_improvement(
    x: Mapping[str, np.ndarray] | np.ndarray | Sequence[float],
    y: Mapping[str, np.ndarray] | np.ndarray | Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """P(X > Y): how likely a run of X beats a run of Y, averaged over tasks, with a bootstrap CI.

    Per task it is the Mann-Whitney U statistic of X over Y divided by n*m (ties
    count one half), so 1.0 when every run of X beats every run of Y and 0.5 for
    identical samples. ``x`` and ``y`` are ``{task: scores}`` with the same tasks
    (or two bare arrays, one task). The CI resamples the runs of X and of Y
    independently within each task (stratified), as rliable does.
    """
    _check(confidence, n_resamples)
    if isinstance(x, Mapping) != isinstance(y, Mapping):
        raise ConfigError("probability_of_improvement: x and y must both be {task: scores} or both arrays")
    if isinstance(x, Mapping) and set(x) != set(y):
        raise ConfigError(f"probability_of_improvement: tasks differ: {sorted(set(x) ^ set(y))}")
    keys = sorted(x) if isinstance(x, Mapping) else None
    xs = _as_tasks({k: x[k] for k in keys} if keys else x, "x")
    ys = _as_tasks({k: y[k] for k in keys} if keys else y, "y")
    n_tasks = len(xs)
    point = np.mean(
        [sps.mannwhitneyu(a, b).statistic / (len(a) * len(b)) for a, b in zip(xs, ys, strict=True)]
    )

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([_p_greater(samples[i], samples[n_tasks + i]) for i in range(n_tasks)], axis=0)

    lo, hi = _bootstrap_ci(xs + ys, statistic, confidence, n_resamples, seed)
    return Estimate(float(point), lo, hi)


class PairedComparison(NamedTuple):
    """X against Y on the same evaluation episodes: difference of means and P(X > Y), each with a CI."""

    difference: Estimate
    p_improvement: Estimate


def _as_runs_by_episode(a: np.ndarray | Sequence[Sequence[float]], name: str) -> np.ndarray:
    """``a`` as a finite 2-D float array ``(runs, episodes)``; a 1-D array is one run."""
    arr = np.asarray(a, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise ConfigError(f"{name}: must be scores of shape (runs, episodes), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name}: scores must be finite, got {arr.tolist()}")
    return arr


def paired_comparison(
    x: np.ndarray | Sequence[Sequence[float]],
    y: np.ndarray | Sequence[Sequence[float]],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """X against Y where every run of both was scored on the same evaluation episodes (common random
    numbers: episode ``e`` is the same workload draw for X and for Y).

    ``x`` has shape ``(runs of X, episodes)`` (e.g. training seeds x evaluation episodes) and ``y``
    ``(runs of Y, episodes)`` with the episodes in the same order (a deterministic baseline is one
    run: shape ``(1, episodes)`` or ``(episodes,)``). The difference of means is
    ``mean(x) - mean(y)``; P(X > Y) is how often a run of X beats a run of Y *on the same episode*
    (ties count one half), the paired form of :func:`probability_of_improvement`. Comparing on the
    same episode takes the episodes' own spread (a heavy hour is heavy for both) out of the
    comparison, which unpaired statistics leave in.

    The CIs come from one multiway ("pigeonhole") bootstrap: every replicate resamples the runs of X,
    the runs of Y and the episodes independently, each with replacement (Owen, "The pigeonhole
    bootstrap", Ann. Appl. Stat. 2007, for scores with two or more crossed random factors; mildly
    conservative). A factor with one level is not resampled; with one level in all three the CIs are
    NaN. Percentile intervals, as elsewhere in this module.
    """
    _check(confidence, n_resamples)
    xa, ya = _as_runs_by_episode(x, "x"), _as_runs_by_episode(y, "y")
    if xa.shape[1] != ya.shape[1]:
        raise ConfigError(
            f"paired_comparison: x and y must hold the same episodes, got {xa.shape[1]} and {ya.shape[1]}"
        )
    # wins[i, j, e]: run i of X against run j of Y on episode e
    wins = (xa[:, None, :] > ya[None, :, :]) + 0.5 * (xa[:, None, :] == ya[None, :, :])
    diff = float(np.mean(xa) - np.mean(ya))
    poi = float(np.mean(wins))
    (n, e), m = xa.shape, ya.shape[0]
    if n == 1 and m == 1 and e == 1:
        nan = float("nan")
        return PairedComparison(Estimate(diff, nan, nan), Estimate(poi, nan, nan))
    rng = np.random.default_rng(seed)
    ix = rng.integers(0, n, (n_resamples, n)) if n > 1 else np.zeros((n_resamples, 1), np.int64)
    iy = rng.integers(0, m, (n_resamples, m)) if m > 1 else np.zeros((n_resamples, 1), np.int64)
    ie = rng.integers(0, e, (n_resamples, e)) if e > 1 else np.zeros((n_resamples, 1), np.int64)
    x_rep = xa[ix[:, :, None], ie[:, None, :]].mean(axis=(1, 2))
    y_rep = ya[iy[:, :, None], ie[:, None, :]].mean(axis=(1, 2))
    w_rep = wins[ix[:, :, None, None], iy[:, None, :, None], ie[:, None, None, :]].mean(axis=(1, 2, 3))
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    d_lo, d_hi = np.quantile(x_rep - y_rep, q)
    p_lo, p_hi = np.quantile(w_rep, q)
    return PairedComparison(Estimate(diff, float(d_lo), float(d_hi)), Estimate(poi, float(p_lo), float(p_hi)))
