"""Request streams: arrival times and token lengths, generated or replayed from a trace.

Everything here is a pure numpy function of its arguments and a ``numpy.random.Generator``
(no global RNG, no hidden state), vectorised so that a million arrivals cost a few tens of
milliseconds. Generators return sorted ``float64`` arrival times in seconds; lengths are
``int64`` token counts. ``read_azure_trace`` replays the public Azure LLM inference trace
format (``TIMESTAMP,ContextTokens,GeneratedTokens``) from any path, so the same engine runs
on synthetic and real load. Workloads with prompt prefixes (the Mooncake trace format, multi-turn
sessions) are in :mod:`envs.sim.prefixes`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from envs.sim.errors import ConfigError, check_number, fail

if TYPE_CHECKING:
    from envs.sim.prefixes import PrefixBlocks

# A simulated request costs about 300 bytes (its state rows, the int row padded to three cache lines,
# logs and the draws that make it): this many take about 4.5 GB, what a simulation may hold on a
# machine of a few GiB. Beyond it a horizon is almost surely a unit slip.
MAX_EXPECTED_ARRIVALS = 1.5e7

# z such that Phi(z) = 0.99 for the standard normal.
_Z99 = 2.3263478740408408

AZURE_CONV_PROMPT: dict[str, float] = dict(mean=1154.70, p99=4142.0)
"""Prompt (context) tokens of the Azure LLM inference trace 2023, conversation service.

Measured on ``AzureLLMInferenceTrace_conv.csv`` (19,366 requests, 2023-11-16): mean 1154.70,
p99 4142 (numpy linear percentile), p50 1020, min 2, max 14050. Source: Azure Public Dataset,
CC-BY 4.0; Patel et al., "Splitwise: Efficient generative LLM inference using phase splitting",
ISCA 2024.
"""

AZURE_CONV_OUTPUT: dict[str, float] = dict(mean=211.13, p99=601.0)
"""Generated (output) tokens of the same trace: mean 211.13, p99 601, p50 129, min 7, max 1000.

Same source as :data:`AZURE_CONV_PROMPT` (Patel et al., Splitwise, ISCA 2024).
"""

AZURE_TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

# Rows may step back by up to this much (clock jitter between the front ends that log requests);
# such rows are accepted and the trace is stably sorted by time. A larger step back means a
# concatenated or shuffled file, which is an error rather than something to paper over.
TIMESTAMP_BACKWARD_TOLERANCE_S = 1.0

_TIMESTAMP_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")


def _number(path: str, value: Any, **bounds: Any) -> Any:
    # check_number only knows Python scalars; numpy scalars arrive here from array arithmetic.
    if isinstance(value, np.generic):
        value = value.item()
    return check_number(path, value, **bounds)


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise fail("rng", rng, "must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed))")
    return rng


def _check_expected_count(path: str, expected: float) -> None:
    if expected > MAX_EXPECTED_ARRIVALS:
        raise fail(
            path,
            expected,
            f"expected arrivals exceed {MAX_EXPECTED_ARRIVALS:,.0f} (about 300 bytes each, what one "
            "simulation may hold in memory); shorten the horizon or lower the rate",
        )


def _sorted_uniform(rng: np.random.Generator, n: int, start: float, width: float) -> np.ndarray:
    """``n`` sorted uniform points in ``[start, start + width)`` without a sort.

    Normalised partial sums of ``n + 1`` exponentials are distributed as the order statistics of
    ``n`` uniforms, which makes this O(n) instead of the O(n log n) of sorting.
    """
    gaps = rng.standard_exponential(n + 1)
    cumulative = np.cumsum(gaps)
    times = start + cumulative[:n] * (width / cumulative[n])
    # Rounding can land a point on the open right end; pull it just inside.
    np.minimum(times, np.nextafter(start + width, -np.inf), out=times)
    return times


def poisson_arrivals(
    rng: np.random.Generator, rate_per_s: float, horizon_s: float, start_s: float = 0.0
) -> np.ndarray:
    """Homogeneous Poisson arrivals: sorted ``float64`` times in ``[start_s, start_s + horizon_s)``."""
    _check_rng(rng)
    rate = _number("rate_per_s", rate_per_s, ge=0)
    horizon = _number("horizon_s", horizon_s, ge=0)
    start = _number("start_s", start_s)
    _check_expected_count("rate_per_s*horizon_s", rate * horizon)
    n = int(rng.poisson(rate * horizon))
    if n == 0:
        return np.empty(0, dtype=np.float64)
    return _sorted_uniform(rng, n, float(start), float(horizon))


def mmpp_arrivals(
    rng: np.random.Generator,
    rates_per_s: Sequence[float],
    mean_dwell_s: Sequence[float],
    horizon_s: float,
    start_state: int | None = None,
    dwell_shape: float = 1.0,
) -> np.ndarray:
    """Markov-modulated Poisson arrivals on ``[0, horizon_s)``.

    The process sits in state ``i`` for an exponential dwell of mean ``mean_dwell_s[i]``,
    emitting Poisson arrivals at ``rates_per_s[i]``, then jumps to one of the *other* states
    chosen uniformly. Two states with one rate near zero give on/off bursts. The jump chain is
    doubly stochastic, so the long-run fraction of time in state ``i`` is
    ``dwell_i / sum(dwell)`` and the long-run mean rate is
    ``sum(rate_i * dwell_i) / sum(dwell_i)``. With ``start_state=None`` the first state is
    drawn from that time-stationary distribution, so the stream is stationary from t = 0.

    ``dwell_shape`` k > 1 makes the dwells Gamma(k, mean / k) instead (a Markov-modulated
    process becomes semi-Markov): same means, coefficient of variation 1 / sqrt(k), so bursts
    come at roughly regular gaps, like load driven by periodic jobs. A controller that remembers
    when the last burst ended can then prepare for the next; with k = 1 (exponential, the
    default) the time already spent in a state says nothing about when it ends. Only the fraction
    of time in each state is stationary from t = 0 when k > 1, not the phase within a dwell.
    """
    _check_rng(rng)
    horizon = float(_number("horizon_s", horizon_s, ge=0))
    rates = _number_sequence("rates_per_s", rates_per_s, ge=0)
    dwells = _number_sequence("mean_dwell_s", mean_dwell_s, gt=0)
    if len(rates) != len(dwells):
        raise fail("mean_dwell_s", list(mean_dwell_s), f"must have one entry per rate ({len(rates)})")
    shape = float(_number("dwell_shape", dwell_shape, gt=0))
    k = len(rates)
    mean_rate = float(np.dot(rates, dwells) / dwells.sum())
    _check_expected_count("rates_per_s*horizon_s", mean_rate * horizon)
    if start_state is None:
        state = int(rng.choice(k, p=dwells / dwells.sum()))
    else:
        state = int(_number("start_state", start_state, ge=0, lt=k, integer=True))
    if horizon == 0:
        return np.empty(0, dtype=np.float64)

    # Draw the state path in chunks sized to cover the horizon on average, extending if short.
    chunk = int(min(max(2.0 * horizon * k / dwells.sum(), 16.0), 1e7))
    states_parts, ends_parts = [], []
    elapsed = 0.0
    while elapsed < horizon:
        if k == 1:
            states = np.zeros(chunk, dtype=np.int64)
        else:
            steps = rng.integers(1, k, size=chunk)
            steps[0] = 0
            states = (state + np.cumsum(steps)) % k
        if shape == 1.0:
            dwell = rng.exponential(dwells[states])
        else:
            dwell = rng.gamma(shape, dwells[states] / shape)
        ends = elapsed + np.cumsum(dwell)
        states_parts.append(states)
        ends_parts.append(ends)
        elapsed = float(ends[-1])
        state = int((states[-1] + (rng.integers(1, k) if k > 1 else 0)) % k)
    states = np.concatenate(states_parts)
    ends = np.concatenate(ends_parts)
    last = int(np.searchsorted(ends, horizon, side="left"))
    states = states[: last + 1]
    ends = ends[: last + 1]
    ends[-1] = horizon
    starts = np.concatenate(([0.0], ends[:-1]))
    widths = ends - starts

    counts = rng.poisson(rates[states] * widths)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.float64)
    seg_start = np.repeat(starts, counts)
    seg_width = np.repeat(widths, counts)
    times = seg_start + rng.random(total) * seg_width
    times.sort()
    np.minimum(times, np.nextafter(horizon, -np.inf), out=times)
    return times


def diurnal_arrivals(
    rng: np.random.Generator,
    mean_rate_per_s: float,
    amplitude: float,
    period_s: float,
    horizon_s: float,
    phase_s: float = 0.0,
) -> np.ndarray:
    """Non-homogeneous Poisson arrivals on ``[0, horizon_s)`` with a sinusoidal rate.

    ``rate(t) = mean_rate_per_s * (1 + amplitude * sin(2 pi (t + phase_s) / period_s))``,
    sampled by thinning (Lewis & Shedler, 1979): a Poisson stream at the peak rate, each point
    kept with probability ``rate(t) / peak``. ``amplitude`` must lie in ``[0, 1]`` so the rate
    never goes negative.
    """
    _check_rng(rng)
    mean_rate = float(_number("mean_rate_per_s", mean_rate_per_s, ge=0))
    amp = float(_number("amplitude", amplitude, ge=0, le=1))
    period = float(_number("period_s", period_s, gt=0))
    horizon = float(_number("horizon_s", horizon_s, ge=0))
    phase = float(_number("phase_s", phase_s))
    peak = mean_rate * (1.0 + amp)
    candidates = poisson_arrivals(rng, peak, horizon)
    if candidates.size == 0:
        return candidates
    relative = (1.0 + amp * np.sin((2.0 * np.pi / period) * (candidates + phase))) / (1.0 + amp)
    keep = rng.random(candidates.size) < relative
    return candidates[keep]


def _number_sequence(path: str, values: Any, **bounds: Any) -> np.ndarray:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise fail(path, values, "must be a sequence of numbers")
    if len(values) == 0:
        raise fail(path, list(values), "must not be empty")
    return np.array([_number(f"{path}[{i}]", v, **bounds) for i, v in enumerate(values)], dtype=np.float64)


def lognormal_params(mean: float, p99: float) -> tuple[float, float]:
    """``(mu, sigma)`` of the lognormal with the given mean and 99th percentile.

    From ``mean = exp(mu + sigma^2 / 2)`` and ``p99 = exp(mu + z sigma)`` (``z = 2.3263``):
    ``sigma^2 / 2 - z sigma + ln(p99 / mean) = 0``. The smaller root is taken (the larger one
    is a pathological tail that puts most of the mean above the p99). A real root exists only
    for ``mean <= p99 <= mean * exp(z^2 / 2)`` (about 14.97 x the mean); ``p99 == mean`` gives
    ``sigma = 0``, a constant.
    """
    m = float(_number("mean", mean, gt=0))
    q = float(_number("p99", p99, gt=0))
    if q < m:
        raise fail("p99", p99, f"must be >= mean ({mean!r}) for a lognormal")
    gap = math.log(q / m)
    discriminant = _Z99 * _Z99 - 2.0 * gap
    if discriminant < 0:
        limit = m * math.exp(_Z99 * _Z99 / 2.0)
        raise fail("p99", p99, f"must be <= {limit:.6g} (exp(z^2/2) x mean): no lognormal has that tail")
    sigma = _Z99 - math.sqrt(discriminant)
    mu = math.log(m) - sigma * sigma / 2.0
    return mu, sigma


def sample_lengths(
    rng: np.random.Generator,
    n: int,
    mean: float,
    p99: float,
    minimum: int = 1,
    maximum: int | None = None,
) -> np.ndarray:
    """``n`` lognormal token counts with the given mean and p99, rounded and clipped to ``[minimum, maximum]``.

    Clipping moves the realised mean slightly when the bounds cut into the distribution.
    """
    _check_rng(rng)
    count = int(_number("n", n, ge=0, integer=True))
    mu, sigma = lognormal_params(mean, p99)
    low = int(_number("minimum", minimum, ge=0, integer=True))
    if maximum is None:
        high = float(2**53)  # still exact in float64 and far below the int64 limit
    else:
        high = int(_number("maximum", maximum, ge=low, integer=True))
    values = np.rint(rng.lognormal(mu, sigma, size=count))
    np.clip(values, low, high, out=values)
    return values.astype(np.int64)


@dataclass(frozen=True)
class Trace:
    """A replayable request stream: one row per request, sorted by arrival.

    ``arrival_s`` is in seconds since the first kept row (so ``arrival_s[0] == 0``), after any
    offset and time scaling; the arrays are read-only. ``prefix``: the rows' prompt block hashes
    (:class:`~envs.sim.prefixes.PrefixBlocks`, one entry per row), or None for a format without
    them (Azure).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str
    prefix: PrefixBlocks | None = None

    def __post_init__(self) -> None:
        arrival = np.array(self.arrival_s, dtype=np.float64)
        prompt = np.array(self.prompt_tokens, dtype=np.int64)
        output = np.array(self.output_tokens, dtype=np.int64)
        for name, arr in (("arrival_s", arrival), ("prompt_tokens", prompt), ("output_tokens", output)):
            if arr.ndim != 1:
                raise fail(f"trace.{name}", arr.shape, "must be a 1-d array")
            if arr.size != arrival.size:
                raise fail(f"trace.{name}", arr.size, f"rows, but arrival_s has {arrival.size}")
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        if arrival.size and (not np.all(np.isfinite(arrival)) or np.any(np.diff(arrival) < 0)):
            raise ConfigError("trace.arrival_s: must be finite and sorted ascending")
        if np.any(prompt < 0) or np.any(output < 0):
            raise ConfigError("trace: token counts must be >= 0")
        if self.prefix is not None:
            from envs.sim.prefixes import PrefixBlocks  # prefixes imports this module

            if not isinstance(self.prefix, PrefixBlocks):
                raise fail("trace.prefix", type(self.prefix).__name__, "must be a PrefixBlocks or None")
            if len(self.prefix) != arrival.size:
                raise fail("trace.prefix", len(self.prefix), f"rows, but arrival_s has {arrival.size}")

    def __len__(self) -> int:
        return int(self.arrival_s.size)


#: Token counts above this in a trace row are an error: far beyond any model's context window
#: (131,072 tokens for Llama 3.1), so the row is corrupt. It also keeps prompt + output in int64.
MAX_TRACE_TOKENS = 10_000_000


def _parse_count(field: str) -> int | None:
    # int() would also take "1_000", " 7" or "+7"; a trace column is plain ASCII digits. A field of
    # more digits than any valid count is not converted at all (Python refuses beyond 4,300 digits).
    if field.isascii() and field.isdigit():
        return int(field) if len(field) <= 12 else MAX_TRACE_TOKENS + 1
    return None


def open_trace(
    path: str | Path, start_s: float, duration_s: float | None, time_scale: float
) -> tuple[float, float | None, float, str, list[str]]:
    """A trace reader's common start: its window options checked, then ``(start_s, duration_s,
    time_scale, file name, lines)`` of the file read as UTF-8 (an optional BOM dropped)."""
    start = float(_number("start_s", start_s, ge=0))
    duration = None if duration_s is None else float(_number("duration_s", duration_s, gt=0))
    scale = float(_number("time_scale", time_scale, gt=0))
    file = Path(path)
    name = file.name
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise fail("path", str(path), f"cannot be read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{name}:{line}: not UTF-8 text") from exc
    return start, duration, scale, name, text.splitlines()


def read_azure_trace(
    path: str | Path,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    time_scale: float = 1.0,
) -> Trace:
    """Read an Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    Accepts an optional UTF-8 BOM, CRLF or LF line endings, blank lines (skipped) and
    timestamps ``YYYY-MM-DD HH:MM:SS[.f...]`` with up to 9 fractional digits (the public files
    carry 7, one more than ``datetime`` parses), read exactly as integer nanoseconds.
    Rows keep file order; a row may step back by at most ``TIMESTAMP_BACKWARD_TOLERANCE_S``,
    and then the rows are stably sorted by time; a larger step back is an error.

    Selection: rows with ``first + start_s <= t < first + start_s + duration_s`` are kept
    (``first`` = earliest timestamp in the file); their times are re-based so the first kept row
    is at 0, and every gap is multiplied by ``time_scale`` (0.5 replays twice as fast).

    Any malformed row raises ``ConfigError("<file name>:<line>: <reason>")``.
    """
    start, duration, scale, name, lines = open_trace(path, start_s, duration_s, time_scale)
    expected = ",".join(AZURE_TRACE_COLUMNS)
    header = [column.strip() for column in lines[0].split(",")] if lines else []
    if header != list(AZURE_TRACE_COLUMNS):
        got = lines[0][:80] if lines else "<empty file>"
        raise ConfigError(f"{name}:1: header must be {expected!r}, got {got!r}")

    n_rows = len(lines) - 1
    stamps_ns = np.empty(n_rows, dtype=np.int64)
    prompt = np.empty(n_rows, dtype=np.int64)
    output = np.empty(n_rows, dtype=np.int64)
    day_seconds: dict[str, int] = {}
    first_day: int | None = None
    tolerance_ns = int(TIMESTAMP_BACKWARD_TOLERANCE_S * 1e9)
    latest_ns = None
    needs_sort = False
    kept = 0
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != 3:
            raise ConfigError(f"{name}:{lineno}: expected 3 columns ({expected}), got {len(fields)}")
        stamp = fields[0].strip()
        match = _TIMESTAMP_RE.fullmatch(stamp)
        if match is None:
            raise ConfigError(
                f"{name}:{lineno}: bad timestamp {stamp!r} (expected YYYY-MM-DD HH:MM:SS.fffffff)"
            )
        year, month, day, hour, minute, second, fraction = match.groups()
        day_key = stamp[:10]
        day_offset = day_seconds.get(day_key)
        if day_offset is None:
            try:
                ordinal = date(int(year), int(month), int(day)).toordinal()
            except ValueError as exc:
                raise ConfigError(f"{name}:{lineno}: bad timestamp {stamp!r} ({exc})") from None
            if first_day is None:
                first_day = ordinal
            day_offset = day_seconds[day_key] = (ordinal - first_day) * 86400
        h, mi, s = int(hour), int(minute), int(second)
        if h > 23 or mi > 59 or s > 59:
            raise ConfigError(f"{name}:{lineno}: bad timestamp {stamp!r} (time of day out of range)")
        nanos = int(fraction.ljust(9, "0")) if fraction else 0
        t_ns = (day_offset + h * 3600 + mi * 60 + s) * 1_000_000_000 + nanos

        context = _parse_count(fields[1].strip())
        generated = _parse_count(fields[2].strip())
        for column, value, text_value in (
            ("ContextTokens", context, fields[1]),
            ("GeneratedTokens", generated, fields[2]),
        ):
            if value is None:
                stripped = text_value.strip()
                reason = (
                    "must be >= 0"
                    if stripped.startswith("-") and _parse_count(stripped[1:]) is not None
                    else "is not a non-negative integer"
                )
                raise ConfigError(f"{name}:{lineno}: {column} {stripped!r} {reason}")
            if value > MAX_TRACE_TOKENS:
                shown = (
                    text_value.strip()
                    if len(text_value.strip()) <= 30
                    else f"<{len(text_value.strip())} digits>"
                )
                raise ConfigError(
                    f"{name}:{lineno}: {column} {shown} exceeds {MAX_TRACE_TOKENS:,} tokens "
                    "(longer than any model's context: a corrupt row?)"
                )

        if latest_ns is not None and t_ns < latest_ns:
            if latest_ns - t_ns > tolerance_ns:
                back = (latest_ns - t_ns) / 1e9
                raise ConfigError(
                    f"{name}:{lineno}: timestamp {stamp!r} is {back:.6g} s earlier than an earlier row "
                    f"(tolerance {TIMESTAMP_BACKWARD_TOLERANCE_S} s); is the file sorted?"
                )
            needs_sort = True
        else:
            latest_ns = t_ns
        stamps_ns[kept] = t_ns
        prompt[kept] = context
        output[kept] = generated
        kept += 1

    if kept == 0:
        raise ConfigError(f"{name}: holds no data rows")
    stamps_ns, prompt, output = stamps_ns[:kept], prompt[:kept], output[:kept]
    if needs_sort:
        order = np.argsort(stamps_ns, kind="stable")
        stamps_ns, prompt, output = stamps_ns[order], prompt[order], output[order]

    span_s = (stamps_ns[-1] - stamps_ns[0]) / 1e9
    lo_ns = stamps_ns[0] + round(start * 1e9)
    first = int(np.searchsorted(stamps_ns, lo_ns, side="left"))
    last = (
        kept if duration is None else int(np.searchsorted(stamps_ns, lo_ns + round(duration * 1e9), "left"))
    )
    if last <= first:
        window = f"[{start:g}, {'end' if duration is None else f'{start + duration:g}'})"
        raise ConfigError(
            f"start_s/duration_s: window {window} s of {name} holds no rows (the trace spans {span_s:.6g} s)"
        )
    selected = stamps_ns[first:last]
    arrival = (selected - selected[0]).astype(np.float64) * (scale / 1e9)
    return Trace(arrival, prompt[first:last], output[first:last], name)


def trace_stats(trace: Trace) -> dict[str, float]:
    """Summary of a trace: size, span, mean rate and token-length mean/p50/p99.

    ``rate_per_s`` is ``n / duration_s`` (NaN for a single-instant trace).
    """
    n = len(trace)
    duration = float(trace.arrival_s[-1] - trace.arrival_s[0]) if n else 0.0
    stats: dict[str, float] = {
        "n": float(n),
        "duration_s": duration,
        "rate_per_s": n / duration if duration > 0 else float("nan"),
    }
    for label, values in (("prompt_tokens", trace.prompt_tokens), ("output_tokens", trace.output_tokens)):
        if n:
            p50, p99 = np.percentile(values, [50, 99])
            stats[f"{label}_mean"] = float(values.mean())
            stats[f"{label}_p50"] = float(p50)
            stats[f"{label}_p99"] = float(p99)
        else:
            stats[f"{label}_mean"] = stats[f"{label}_p50"] = stats[f"{label}_p99"] = float("nan")
    return stats
