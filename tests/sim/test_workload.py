"""Workload generators and Azure trace replay: statistics, determinism, validation, file parsing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.sim.errors import ConfigError
from envs.sim.workload import (
    AZURE_CONV_OUTPUT,
    AZURE_CONV_PROMPT,
    TIMESTAMP_BACKWARD_TOLERANCE_S,
    Trace,
    diurnal_arrivals,
    lognormal_params,
    mmpp_arrivals,
    poisson_arrivals,
    read_azure_trace,
    sample_lengths,
    trace_stats,
)
from tests.paths import AZURE_CONV_TRACE

AZURE_CONV = AZURE_CONV_TRACE
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def cv(times: np.ndarray) -> float:
    gaps = np.diff(times)
    return float(gaps.std() / gaps.mean())


# --- Poisson -------------------------------------------------------------------------------------


def test_poisson_count_and_interarrival_cv():
    rng = np.random.default_rng(1)
    rate, horizon, start = 1000.0, 200.0, 50.0
    times = poisson_arrivals(rng, rate, horizon, start_s=start)
    expected = rate * horizon
    assert abs(times.size - expected) < 4 * math.sqrt(expected)
    assert times.dtype == np.float64
    assert np.all(np.diff(times) >= 0)
    assert times[0] >= start and times[-1] < start + horizon
    assert abs(cv(times) - 1.0) < 0.02
    # Uniform over the window: each quarter holds a quarter of the points.
    quarters = np.histogram(times, bins=4, range=(start, start + horizon))[0]
    assert np.all(np.abs(quarters / times.size - 0.25) < 0.005)


def test_poisson_zero_rate_and_zero_horizon_are_empty():
    rng = np.random.default_rng(0)
    assert poisson_arrivals(rng, 0.0, 100.0).size == 0
    assert poisson_arrivals(rng, 5.0, 0.0).size == 0


# --- MMPP ----------------------------------------------------------------------------------------


def test_mmpp_long_run_rate_matches_formula_and_is_bursty():
    rng = np.random.default_rng(2)
    rates, dwells, horizon = [10.0, 0.5], [2.0, 8.0], 200_000.0
    times = mmpp_arrivals(rng, rates, dwells, horizon)
    formula = sum(r * d for r, d in zip(rates, dwells, strict=True)) / sum(dwells)
    assert abs(times.size / horizon / formula - 1.0) < 0.03
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < horizon
    assert cv(times) > 1.5


def test_mmpp_three_states_rate_and_start_state():
    rng = np.random.default_rng(3)
    rates, dwells, horizon = [1.0, 4.0, 20.0], [5.0, 3.0, 1.0], 100_000.0
    times = mmpp_arrivals(rng, rates, dwells, horizon, start_state=2)
    formula = sum(r * d for r, d in zip(rates, dwells, strict=True)) / sum(dwells)
    assert abs(times.size / horizon / formula - 1.0) < 0.03
    # Starting in the 20/s state with a mean dwell of 1 s: the first second is busy on average.
    early = [
        np.count_nonzero(mmpp_arrivals(np.random.default_rng(s), rates, dwells, 1.0, start_state=2) < 1.0)
        for s in range(200)
    ]
    assert 10.0 < np.mean(early) < 20.0


@pytest.mark.parametrize("shape, cv_expected", [(1.0, 1.0), (16.0, 0.25)])
def test_dwell_shape_sets_the_regularity_of_bursts(shape: float, cv_expected: float):
    # On at 100/s, off at 0: the gaps longer than 1 s are the off periods (plus ~0.01 s; an on gap
    # exceeds 1 s with probability e^-100).
    times = mmpp_arrivals(np.random.default_rng(8), [100.0, 0.0], [20.0, 80.0], 200_000.0, dwell_shape=shape)
    gaps = np.diff(times)
    off = gaps[gaps > 1.0]
    assert off.size > 1500
    assert abs(off.mean() / 80.0 - 1.0) < 0.05
    assert abs(off.std() / off.mean() / cv_expected - 1.0) < 0.1
    # the long-run rate does not depend on the shape
    assert abs(times.size / 200_000.0 / 20.0 - 1.0) < 0.03


def test_mmpp_exponential_dwells_are_unchanged_by_the_shape_option():
    a = mmpp_arrivals(np.random.default_rng(5), [10.0, 1.0], [2.0, 8.0], 500.0)
    b = mmpp_arrivals(np.random.default_rng(5), [10.0, 1.0], [2.0, 8.0], 500.0, dwell_shape=1.0)
    assert np.array_equal(a, b)


def test_mmpp_single_state_is_poisson():
    times = mmpp_arrivals(np.random.default_rng(4), [50.0], [3.0], 4000.0)
    assert abs(times.size - 200_000) < 4 * math.sqrt(200_000)
    assert abs(cv(times) - 1.0) < 0.02


# --- Diurnal -------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase_fraction", [0.0, 0.5])
def test_diurnal_peak_to_trough_ratio(phase_fraction):
    rng = np.random.default_rng(5)
    mean, amplitude, period, horizon = 20.0, 0.5, 100.0, 10_000.0
    times = diurnal_arrivals(rng, mean, amplitude, period, horizon, phase_s=phase_fraction * period)
    assert abs(times.size / (mean * horizon) - 1.0) < 0.01
    in_first_half = np.mod(times, period) < period / 2
    first, second = np.count_nonzero(in_first_half), np.count_nonzero(~in_first_half)
    # Integral of 1 +/- a sin over a half period: P/2 +/- a P / pi.
    expected = (1 + 2 * amplitude / math.pi) / (1 - 2 * amplitude / math.pi)
    ratio = first / second if phase_fraction == 0.0 else second / first
    assert abs(ratio / expected - 1.0) < 0.05


def test_diurnal_zero_amplitude_is_homogeneous():
    times = diurnal_arrivals(np.random.default_rng(6), 50.0, 0.0, 10.0, 4000.0)
    assert abs(cv(times) - 1.0) < 0.02
    assert abs(times.size - 200_000) < 4 * math.sqrt(200_000)


# --- Lengths -------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [AZURE_CONV_PROMPT, AZURE_CONV_OUTPUT, dict(mean=40.0, p99=200.0)])
def test_sample_lengths_hit_mean_and_p99(target):
    lengths = sample_lengths(np.random.default_rng(7), 200_000, **target)
    assert lengths.dtype == np.int64 and lengths.shape == (200_000,)
    assert abs(lengths.mean() / target["mean"] - 1.0) < 0.03
    assert abs(np.percentile(lengths, 99) / target["p99"] - 1.0) < 0.05


def test_sample_lengths_clip():
    lengths = sample_lengths(np.random.default_rng(8), 50_000, mean=100.0, p99=900.0, minimum=20, maximum=300)
    assert lengths.min() == 20 and lengths.max() == 300
    assert sample_lengths(np.random.default_rng(8), 0, mean=10.0, p99=20.0).shape == (0,)


def test_lognormal_params_round_trip():
    mu, sigma = lognormal_params(1000.0, 4000.0)
    assert math.exp(mu + sigma**2 / 2) == pytest.approx(1000.0, rel=1e-12)
    assert math.exp(mu + 2.3263478740408408 * sigma) == pytest.approx(4000.0, rel=1e-12)
    assert lognormal_params(5.0, 5.0) == pytest.approx((math.log(5.0), 0.0))


def test_lognormal_params_rejects_impossible():
    with pytest.raises(ConfigError, match=r"p99: 50\.0 must be >= mean"):
        lognormal_params(100.0, 50.0)
    # The p99/mean ratio of a lognormal is at most exp(z^2/2) ~ 14.97.
    with pytest.raises(ConfigError, match=r"p99: 1600\.0 must be <= 1496\.85"):
        lognormal_params(100.0, 1600.0)


# --- Determinism ---------------------------------------------------------------------------------

GENERATORS = [
    lambda rng: poisson_arrivals(rng, 30.0, 100.0),
    lambda rng: mmpp_arrivals(rng, [30.0, 1.0], [2.0, 5.0], 100.0),
    lambda rng: diurnal_arrivals(rng, 30.0, 0.7, 40.0, 100.0, phase_s=3.0),
    lambda rng: sample_lengths(rng, 1000, 200.0, 600.0),
]


@pytest.mark.parametrize("generate", GENERATORS)
def test_same_seed_same_stream(generate):
    a = generate(np.random.default_rng(42))
    b = generate(np.random.default_rng(42))
    c = generate(np.random.default_rng(43))
    assert a.size > 100
    np.testing.assert_array_equal(a, b)
    assert a.size != c.size or not np.array_equal(a, c)


# --- Argument validation -------------------------------------------------------------------------

RNG = np.random.default_rng(0)
not_a_number = st.one_of(
    st.text(max_size=5), st.booleans(), st.none(), st.just(float("nan")), st.just(math.inf)
)
negative = st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)

CASES = {
    "rate_per_s": (st.one_of(negative, not_a_number), lambda v: poisson_arrivals(RNG, v, 1.0)),
    "horizon_s": (st.one_of(negative, not_a_number), lambda v: poisson_arrivals(RNG, 1.0, v)),
    "mean_rate_per_s": (
        st.one_of(negative, not_a_number),
        lambda v: diurnal_arrivals(RNG, v, 0.5, 10.0, 1.0),
    ),
    "amplitude": (
        st.one_of(negative, st.floats(min_value=1.0001, allow_infinity=False), not_a_number),
        lambda v: diurnal_arrivals(RNG, 1.0, v, 10.0, 1.0),
    ),
    "period_s": (
        st.one_of(negative, st.just(0.0), not_a_number),
        lambda v: diurnal_arrivals(RNG, 1.0, 0.5, v, 1.0),
    ),
    "mean_dwell_s[1]": (
        st.one_of(negative, st.just(0.0), not_a_number),
        lambda v: mmpp_arrivals(RNG, [1, 2], [1, v], 5.0),
    ),
    "rates_per_s[0]": (st.one_of(negative, not_a_number), lambda v: mmpp_arrivals(RNG, [v, 2], [1, 1], 5.0)),
    "start_state": (
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2), st.just(0.5)),
        lambda v: mmpp_arrivals(RNG, [1, 2], [1, 1], 5.0, start_state=v),
    ),
    "mean": (st.one_of(negative, st.just(0.0), not_a_number), lambda v: lognormal_params(v, 10.0)),
    "n": (st.one_of(st.integers(max_value=-1), st.just(2.5)), lambda v: sample_lengths(RNG, v, 10.0, 20.0)),
    "maximum": (st.integers(max_value=4), lambda v: sample_lengths(RNG, 3, 10.0, 20.0, minimum=5, maximum=v)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_bad_argument_names_argument_and_value(name, data):
    strategy, call = CASES[name]
    value = data.draw(strategy)
    with pytest.raises(ConfigError) as info:
        call(value)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert repr(value) in message


def test_bad_sequences_and_rng():
    with pytest.raises(ConfigError, match=r"mean_dwell_s: \[1\.0\] must have one entry per rate \(2\)"):
        mmpp_arrivals(RNG, [1.0, 2.0], [1.0], 5.0)
    with pytest.raises(ConfigError, match=r"rates_per_s: \[\] must not be empty"):
        mmpp_arrivals(RNG, [], [], 5.0)
    with pytest.raises(ConfigError, match=r"rng: 7 must be a numpy.random.Generator"):
        poisson_arrivals(7, 1.0, 1.0)
    with pytest.raises(ConfigError, match=r"rate_per_s\*horizon_s: .* expected arrivals exceed"):
        poisson_arrivals(RNG, 1e6, 1e6)


# --- Azure trace ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azure_conv() -> Trace:
    if not AZURE_CONV.is_file():
        pytest.fail(f"missing {AZURE_CONV.name}: expected the shared trace at <repo>/../shared/traces/")
    return read_azure_trace(AZURE_CONV)


def test_azure_conv_trace_matches_documented_stats(azure_conv):
    stats = trace_stats(azure_conv)
    assert stats["n"] == 19_366 and len(azure_conv) == 19_366
    assert azure_conv.source == "AzureLLMInferenceTrace_conv.csv"
    assert azure_conv.arrival_s[0] == 0.0
    assert 57 * 60 < stats["duration_s"] < 59 * 60
    assert stats["rate_per_s"] == pytest.approx(19_366 / stats["duration_s"])
    assert stats["prompt_tokens_mean"] == pytest.approx(AZURE_CONV_PROMPT["mean"], abs=0.01)
    assert stats["prompt_tokens_p99"] == AZURE_CONV_PROMPT["p99"]
    assert stats["output_tokens_mean"] == pytest.approx(AZURE_CONV_OUTPUT["mean"], abs=0.01)
    assert stats["output_tokens_p99"] == AZURE_CONV_OUTPUT["p99"]
    assert (stats["prompt_tokens_p50"], stats["output_tokens_p50"]) == (1020.0, 129.0)
    # First rows of the file: 18:15:46.6805900 (374, 44) then 18:15:50.9951690 (396, 109).
    assert azure_conv.arrival_s[1] == pytest.approx(4.314579, abs=1e-9)
    assert azure_conv.prompt_tokens[:2].tolist() == [374, 396]
    assert azure_conv.output_tokens[:2].tolist() == [44, 109]
    assert not azure_conv.arrival_s.flags.writeable


def test_azure_window_and_time_scale(azure_conv):
    full = azure_conv.arrival_s
    window = read_azure_trace(AZURE_CONV, start_s=600.0, duration_s=300.0)
    inside = np.flatnonzero((full >= 600.0) & (full < 900.0))
    assert len(window) == inside.size > 1000
    assert window.arrival_s[0] == 0.0 and window.arrival_s[-1] < 300.0
    np.testing.assert_allclose(window.arrival_s, full[inside] - full[inside[0]], atol=1e-9)
    np.testing.assert_array_equal(window.prompt_tokens, azure_conv.prompt_tokens[inside])
    np.testing.assert_array_equal(window.output_tokens, azure_conv.output_tokens[inside])

    fast = read_azure_trace(AZURE_CONV, time_scale=0.5)
    np.testing.assert_allclose(fast.arrival_s, full * 0.5, rtol=1e-12)
    assert trace_stats(fast)["rate_per_s"] == pytest.approx(2 * trace_stats(azure_conv)["rate_per_s"])

    with pytest.raises(ConfigError, match=r"start_s/duration_s: window \[4000, end\) s of .* holds no rows"):
        read_azure_trace(AZURE_CONV, start_s=4000.0)


def write(tmp_path: Path, name: str, rows: list[str], *, bom: bool = False, newline: str = "\r\n") -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join([HEADER, *rows]).encode())
    return path


GOOD_ROWS = [
    "2023-11-16 18:15:46.6805900,374,44",
    "2023-11-16 18:15:46.6805901,396,109",
    "2023-11-16 23:59:59.9999999,5,6",
    "2023-11-17 00:00:01,7,8",
]


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_bom_and_line_endings_parse_the_same(tmp_path, bom, newline):
    trace = read_azure_trace(write(tmp_path, "t.csv", [*GOOD_ROWS, ""], bom=bom, newline=newline))
    assert trace.source == "t.csv"
    # Seven fractional digits are kept exactly; days roll over.
    np.testing.assert_allclose(trace.arrival_s[:2], [0.0, 1e-7], atol=1e-12)
    assert trace.arrival_s[2] == pytest.approx(5 * 3600 + 44 * 60 + 13.3194099, abs=1e-9)
    assert trace.arrival_s[3] == pytest.approx(5 * 3600 + 44 * 60 + 14.31941, abs=1e-9)
    assert trace.prompt_tokens.tolist() == [374, 396, 5, 7]
    assert trace.output_tokens.tolist() == [44, 109, 6, 8]


def test_small_step_back_is_sorted(tmp_path):
    rows = ["2023-11-16 18:00:00.5000000,1,1", "2023-11-16 18:00:00.2000000,2,2", "2023-11-16 18:00:01,3,3"]
    trace = read_azure_trace(write(tmp_path, "jitter.csv", rows))
    np.testing.assert_allclose(trace.arrival_s, [0.0, 0.3, 0.8], atol=1e-12)
    assert trace.prompt_tokens.tolist() == [2, 1, 3]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2023-11-16 18:15:47,12", "expected 3 columns"),
        ("2023-11-16 18:15:47,12,3,4", "expected 3 columns"),
        ("16/11/2023 18:15:47,12,3", "bad timestamp '16/11/2023 18:15:47'"),
        ("2023-02-30 18:15:47,12,3", "bad timestamp"),
        ("2023-11-16 25:15:47,12,3", "time of day out of range"),
        ("2023-11-16 18:15:47.1234567890,12,3", "bad timestamp"),
        ("2023-11-16 18:15:47,12.5,3", "ContextTokens '12.5' is not a non-negative integer"),
        ("2023-11-16 18:15:47,12,abc", "GeneratedTokens 'abc' is not a non-negative integer"),
        ("2023-11-16 18:15:47,12,1_000", "GeneratedTokens '1_000' is not a non-negative integer"),
        ("2023-11-16 18:15:47,-12,3", "ContextTokens '-12' must be >= 0"),
        (
            f"2023-11-16 18:15:{46 - TIMESTAMP_BACKWARD_TOLERANCE_S - 1:02.0f},12,3",
            "earlier than an earlier row",
        ),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, row, reason):
    path = write(tmp_path, "bad.csv", ["2023-11-16 18:15:46.0000000,1,1", row, "2023-11-16 18:15:48,1,1"])
    with pytest.raises(ConfigError) as info:
        read_azure_trace(path)
    assert str(info.value).startswith("bad.csv:3: ")
    assert reason in str(info.value)


@pytest.mark.parametrize("header", ["timestamp,context,generated", "TIMESTAMP,ContextTokens", ""])
def test_bad_header_names_expected_columns(tmp_path, header):
    path = tmp_path / "h.csv"
    path.write_text(f"{header}\n2023-11-16 18:15:46,1,1\n")
    with pytest.raises(
        ConfigError, match=r"h\.csv:1: header must be 'TIMESTAMP,ContextTokens,GeneratedTokens'"
    ):
        read_azure_trace(path)


def test_empty_file_and_bad_options(tmp_path):
    with pytest.raises(ConfigError, match=r"empty\.csv: holds no data rows"):
        read_azure_trace(write(tmp_path, "empty.csv", [""]))
    with pytest.raises(ConfigError, match=r"path: .*missing\.csv' cannot be read"):
        read_azure_trace(tmp_path / "missing.csv")
    good = write(tmp_path, "g.csv", GOOD_ROWS)
    with pytest.raises(ConfigError, match=r"time_scale: 0 must be > 0"):
        read_azure_trace(good, time_scale=0)
    with pytest.raises(ConfigError, match=r"duration_s: -1.0 must be > 0"):
        read_azure_trace(good, duration_s=-1.0)
    with pytest.raises(ConfigError, match=r"start_s: nan must be finite"):
        read_azure_trace(good, start_s=float("nan"))
