"""Workloads with prompt prefixes: PrefixBlocks, the Mooncake trace reader, ``sessions``, build_requests."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from envs.sim import layout as K
from envs.sim.config import ArrivalSpec, SizeSpec, load_scenario
from envs.sim.errors import ConfigError
from envs.sim.prefixes import (
    MOONCAKE_BLOCK_TOKENS,
    PrefixBlocks,
    prefix_hit_bound,
    read_mooncake_trace,
    session_params,
    session_requests,
)
from envs.sim.requests import build_requests
from envs.sim.workload import MAX_TRACE_TOKENS, TIMESTAMP_BACKWARD_TOLERANCE_S, Trace, trace_stats
from tests.paths import MOONCAKE_CONV_TRACE

# --- PrefixBlocks ------------------------------------------------------------------------------


def blocks(rows: list[list[int]], block_tokens: int = 4) -> PrefixBlocks:
    ptr = np.concatenate(([0], np.cumsum([len(r) for r in rows]))).astype(np.int64)
    ids = np.array([i for r in rows for i in r], dtype=np.int64)
    return PrefixBlocks(ptr, ids, block_tokens)


def test_prefix_blocks_rows_counts_select_and_empty():
    pb = blocks([[1, 2, 3], [], [1, 4]])
    assert len(pb) == 3 and pb.block_tokens == 4
    assert pb.counts.tolist() == [3, 0, 2]
    assert pb.row(2).tolist() == [1, 4]
    assert not pb.ptr.flags.writeable and not pb.ids.flags.writeable
    picked = pb.select(np.array([2, 0, 2, 1]))
    assert [picked.row(i).tolist() for i in range(4)] == [[1, 4], [1, 2, 3], [1, 4], []]
    assert len(pb.select(np.array([], dtype=np.int64))) == 0
    empty = PrefixBlocks.empty(5)
    assert len(empty) == 5 and empty.ids.size == 0 and empty.block_tokens == MOONCAKE_BLOCK_TOKENS
    assert empty.counts.tolist() == [0] * 5
    assert len(PrefixBlocks.empty(0, block_tokens=16)) == 0
    source = np.array([0, 1], dtype=np.int64)
    copy = PrefixBlocks(source, np.array([7]), 2)
    source[1] = 0  # the caller's array may change; the PrefixBlocks keeps its own copy
    assert copy.ptr.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("ptr", "ids", "block_tokens", "message"),
    [
        ([1, 2], [5, 6], 4, r"prefix\.ptr: \[1\] must start with 0"),
        ([], [], 4, r"prefix\.ptr: \[\] must start with 0"),
        ([0, 2, 1], [5, 6], 4, r"prefix\.ptr: must be non-decreasing"),
        ([0, 1], [5, 6], 4, r"prefix\.ptr: 1 must end at the number of ids \(2\)"),
        ([0, 2], [5, -1], 4, r"prefix\.ids: -1 must be >= 0"),
        ([0, 2], [5.0, 6.0], 4, r"prefix\.ids: 'float64' must be an integer array"),
        ([[0, 2]], [5, 6], 4, r"prefix\.ptr: \(1, 2\) must be a 1-d array"),
        ([0, 2], [5, 6], 0, r"prefix\.block_tokens: 0 must be >= 1"),
        ([0, 2], [5, 6], 1.5, r"prefix\.block_tokens: 1\.5 must be an integer"),
        ([0, 1], np.array([2**64 - 1], dtype=np.uint64), 4, r"prefix\.ids: values must fit in int64"),
    ],
)
def test_prefix_blocks_validation(ptr, ids, block_tokens, message):
    with pytest.raises(ConfigError, match=message):
        PrefixBlocks(np.array(ptr), np.array(ids), block_tokens)


def test_prefix_blocks_select_and_empty_check_their_arguments():
    pb = blocks([[1], [2]])
    with pytest.raises(ConfigError, match=r"index: \[0, 2\] must lie in \[0, 2\)"):
        pb.select(np.array([0, 2]))
    with pytest.raises(ConfigError, match=r"index: 'float64' must be a 1-d integer array"):
        pb.select(np.array([0.0]))
    with pytest.raises(ConfigError, match=r"n: -1 must be >= 0"):
        PrefixBlocks.empty(-1)


def test_prefix_hit_bound_on_a_hand_built_stream():
    # block_tokens 4; each hit is (leading ids seen in earlier requests) x 4, capped at the prompt
    pb = blocks(
        [
            [1, 2, 3],  # 10 tokens: all new -> 0
            [1, 2, 7],  # 9: leads with 1, 2 -> 8
            [1, 2],  # 6: 1, 2 seen -> 8, capped at 6
            [9, 2, 3],  # 12: 9 is new, so 2, 3 do not count (not leading) -> 0
            [],  # 5: no ids -> 0
            [5, 5],  # 8: 5 first appears in this request -> 0
            [5, 5],  # 8: -> 8
        ]
    )
    prompt = [10, 9, 6, 12, 5, 8, 8]
    assert prefix_hit_bound(pb, prompt) == 22 / 58
    assert prefix_hit_bound(PrefixBlocks.empty(3), [5, 6, 7]) == 0.0
    assert prefix_hit_bound(blocks([[1], [1]]), [0, 0]) == 0.0
    with pytest.raises(ConfigError, match=r"prompt_tokens: 2 entries, but prefix has 7 requests"):
        prefix_hit_bound(pb, [1, 2])
    with pytest.raises(ConfigError, match=r"prompt_tokens: must be >= 0"):
        prefix_hit_bound(blocks([[1]]), [-1])


def test_trace_checks_its_prefix():
    with pytest.raises(ConfigError, match=r"trace\.prefix: 2 rows, but arrival_s has 1"):
        Trace([0.0], [1], [1], "t", prefix=PrefixBlocks.empty(2))
    with pytest.raises(ConfigError, match=r"trace\.prefix: 'list' must be a PrefixBlocks or None"):
        Trace([0.0], [1], [1], "t", prefix=[[1]])
    assert Trace([0.0], [1], [1], "t").prefix is None


# --- Mooncake trace: the real file -------------------------------------------------------------

# The trace's README (Mooncake FAST'25 conversation trace, first 30 minutes): 5,719 requests, mean
# input 12k tokens (up to 126k), mean output 343 tokens, about 3.2 req/s, and about 35% of prompt
# tokens reusable with one infinite cache.
README_HIT_BOUND = 0.35
HIT_BOUND_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def mooncake() -> Trace:
    if not MOONCAKE_CONV_TRACE.is_file():
        pytest.fail(f"missing {MOONCAKE_CONV_TRACE}: the repo expects ../shared/traces/ beside it")
    return read_mooncake_trace(MOONCAKE_CONV_TRACE)


def test_mooncake_conversation_trace_matches_its_readme(mooncake):
    t0 = time.perf_counter()
    again = read_mooncake_trace(MOONCAKE_CONV_TRACE)
    parse_s = time.perf_counter() - t0
    assert parse_s < 5.0, f"parsing took {parse_s:.2f} s"
    assert len(again) == len(mooncake) == 5_719
    assert mooncake.source == MOONCAKE_CONV_TRACE.name
    assert mooncake.arrival_s[0] == 0.0 and mooncake.arrival_s[-1] == 1797.0
    stats = trace_stats(mooncake)
    assert 11_000 < stats["prompt_tokens_mean"] < 14_000  # "12k"
    assert 120_000 < mooncake.prompt_tokens.max() <= 126_000
    assert stats["output_tokens_mean"] == pytest.approx(343, rel=0.02)
    assert stats["rate_per_s"] == pytest.approx(3.2, rel=0.02)
    # the first rows of the file
    assert mooncake.prompt_tokens[:2].tolist() == [6758, 7322]
    assert mooncake.output_tokens[:2].tolist() == [500, 490]
    pb = mooncake.prefix
    assert pb is not None and len(pb) == 5_719 and pb.block_tokens == 512
    assert pb.row(0).tolist() == list(range(14))
    assert pb.row(1).tolist() == [0, *range(14, 28)]
    np.testing.assert_array_equal(pb.counts, -(-mooncake.prompt_tokens // 512))
    bound = prefix_hit_bound(pb, mooncake.prompt_tokens)
    assert abs(bound - README_HIT_BOUND) < HIT_BOUND_TOLERANCE, f"infinite-cache hit bound {bound:.6f}"


def test_mooncake_window_and_time_scale(mooncake):
    full = mooncake.arrival_s
    window = read_mooncake_trace(MOONCAKE_CONV_TRACE, start_s=600.0, duration_s=300.0)
    inside = np.flatnonzero((full >= 600.0) & (full < 900.0))
    assert len(window) == inside.size > 500
    assert window.arrival_s[0] == 0.0 and window.arrival_s[-1] < 300.0
    np.testing.assert_allclose(window.arrival_s, full[inside] - full[inside[0]])
    np.testing.assert_array_equal(window.prompt_tokens, mooncake.prompt_tokens[inside])
    np.testing.assert_array_equal(window.output_tokens, mooncake.output_tokens[inside])
    np.testing.assert_array_equal(window.prefix.ptr, mooncake.prefix.select(inside).ptr)
    np.testing.assert_array_equal(window.prefix.ids, mooncake.prefix.select(inside).ids)
    fast = read_mooncake_trace(MOONCAKE_CONV_TRACE, time_scale=0.5)
    np.testing.assert_allclose(fast.arrival_s, full * 0.5)
    with pytest.raises(ConfigError, match=r"start_s/duration_s: window \[4000, end\) s of .* holds no rows"):
        read_mooncake_trace(MOONCAKE_CONV_TRACE, start_s=4000.0)


# --- Mooncake trace: format checks -------------------------------------------------------------


def row(t=0, n_in=600, n_out=5, ids=None, **extra) -> str:
    ids = list(range(100, 100 + math.ceil(n_in / 512))) if ids is None else ids
    return json.dumps(
        {"timestamp": t, "input_length": n_in, "output_length": n_out, "hash_ids": ids, **extra}
    )


def write_jsonl(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_small_file_parses_blank_lines_jitter_and_bom(tmp_path):
    lines = [row(1000, 512, 3, [1]), "", row(1500, 513, 4, [1, 2]), row(1200, 0, 5, []), row(4000, 1, 6, [9])]
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    tr = read_mooncake_trace(path)
    # the row 0.3 s back is sorted in (stably), with its prefix row
    np.testing.assert_allclose(tr.arrival_s, [0.0, 0.2, 0.5, 3.0])
    assert tr.prompt_tokens.tolist() == [512, 0, 513, 1]
    assert [tr.prefix.row(i).tolist() for i in range(4)] == [[1], [], [1, 2], [9]]
    floats = read_mooncake_trace(write_jsonl(tmp_path, "f.jsonl", [row(0.5), row(2.25)]))
    np.testing.assert_allclose(floats.arrival_s, [0.0, 0.00175])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"timestamp": 1, "input_length": 5', "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object with keys timestamp, input_length, output_length, hash_ids"),
        ('{"timestamp": 1, "input_length": 5, "output_length": 1}', "missing key 'hash_ids'"),
        (row(extra_key=1), "unknown key(s) ['extra_key']"),
        (row(t="5"), 'timestamp "5" is not a number'),
        (row(t=-1), "timestamp -1 must be a finite number of ms"),
        (row(t=float("nan")), "timestamp nan must be a finite number of ms"),
        (row(t=1e300), "must be a finite number of ms in [0, 2**53]"),
        (row(n_in=True, ids=[1]), "input_length true is not a non-negative integer"),
        (row(n_in=600.0), "input_length 600.0 is not a non-negative integer"),
        (row(n_out=-3), "output_length -3 must be >= 0"),
        (row(n_out=MAX_TRACE_TOKENS + 1), f"output_length {MAX_TRACE_TOKENS + 1} exceeds"),
        (row(n_in=10**40, ids=[]), "input_length <integer of about 41 digits> exceeds"),
        (row(ids={"a": 1}), 'hash_ids {"a": 1} is not a list of integers'),
        (row(n_in=600, ids=[1]), "hash_ids has 1 ids, but input_length 600 needs ceil(600/512) = 2"),
        (row(n_in=0, ids=[1]), "hash_ids has 1 ids, but input_length 0 needs ceil(0/512) = 0"),
        (row(ids=[1, -2]), "hash_ids entry -2 must be >= 0"),
        (row(ids=[1, 2.0]), "hash_ids entry 2.0 is not a non-negative integer"),
        (row(ids=[1, False]), "hash_ids entry false is not a non-negative integer"),
        (row(ids=[1, 2**63]), "hash_ids entry 9223372036854775808 exceeds the int64 range"),
        (row(t=5000 - 1000 * TIMESTAMP_BACKWARD_TOLERANCE_S - 1), "earlier than an earlier row"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, reason):
    path = write_jsonl(tmp_path, "bad.jsonl", [row(5000), "", line, row(9000)])
    with pytest.raises(ConfigError) as info:
        read_mooncake_trace(path)
    assert str(info.value).startswith("bad.jsonl:3: "), str(info.value)
    assert reason in str(info.value)


def test_empty_missing_and_undecodable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"empty\.jsonl: holds no data rows"):
        read_mooncake_trace(write_jsonl(tmp_path, "empty.jsonl", ["", "  "]))
    with pytest.raises(ConfigError, match=r"path: .*missing\.jsonl' cannot be read"):
        read_mooncake_trace(tmp_path / "missing.jsonl")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(row().encode() + b"\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin\.jsonl:2: not UTF-8 text"):
        read_mooncake_trace(binary)
    good = write_jsonl(tmp_path, "g.jsonl", [row()])
    with pytest.raises(ConfigError, match=r"time_scale: 0 must be > 0"):
        read_mooncake_trace(good, time_scale=0)


# --- workload.arrival.format -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrival", "fmt"),
    [
        ({"path": "t.csv"}, "azure"),
        ({"path": "t.jsonl"}, "mooncake"),
        ({"path": "T.JSONL"}, "mooncake"),
        ({"path": "t.txt", "format": "azure"}, "azure"),
        ({"path": "t.csv", "format": "mooncake"}, "mooncake"),
    ],
)
def test_trace_format_defaults_from_the_extension(arrival, fmt):
    assert ArrivalSpec.from_config({"kind": "trace", **arrival}, "workload.arrival").params["format"] == fmt


def test_bad_trace_format_is_a_named_error():
    with pytest.raises(
        ConfigError, match=r"^workload\.arrival\.format: required for 't\.txt'.*\.csv .*\.jsonl"
    ):
        ArrivalSpec.from_config({"kind": "trace", "path": "t.txt"}, "workload.arrival")
    with pytest.raises(ConfigError, match=r"^workload\.arrival\.format: 'parquet' must be one of"):
        ArrivalSpec.from_config({"kind": "trace", "path": "t.jsonl", "format": "parquet"}, "workload.arrival")
    with pytest.raises(ConfigError, match=r"Mooncake trace JSONL"):
        ArrivalSpec.from_config({"kind": "trace"}, "workload.arrival")


# --- build_requests: prefixes follow the requests ----------------------------------------------


def scenario(arrival: dict, sizes: dict | None = None, horizon_s: float = 60.0):
    workload = {"arrival": arrival, **({"sizes": sizes} if sizes else {})}
    return load_scenario({"horizon_s": horizon_s, "control_interval_s": 5.0,
                          "models": [{"name": "llama-3-8b"}], "workload": workload})  # fmt: skip


@pytest.fixture
def tagged_trace(tmp_path) -> tuple[Path, Trace]:
    """50 rows, one a second; row i has input_length 100 * i + 1 (so a request's row is known from its
    prompt) and hash ids of its own."""
    lines = [row(1000 * i, 100 * i + 1, i + 1, [1000 * i + k for k in range(math.ceil((100 * i + 1) / 512))])
             for i in range(50)]  # fmt: skip
    path = write_jsonl(tmp_path, "tagged.jsonl", lines)
    return path, read_mooncake_trace(path)


def check_rows_follow(prompt: np.ndarray, output: np.ndarray, prefix: PrefixBlocks, trace: Trace) -> None:
    assert len(prefix) == prompt.size
    for i, p in enumerate(prompt.tolist()):
        r = (p - 1) // 100
        assert trace.prompt_tokens[r] == p and trace.output_tokens[r] == output[i]
        assert prefix.row(i).tolist() == trace.prefix.row(r).tolist()


@pytest.mark.parametrize("variation", ["none", "bootstrap_sizes", "offset"])
def test_build_requests_aligns_the_prefix_with_the_rows(tagged_trace, variation):
    path, trace = tagged_trace
    arrival = {"kind": "trace", "path": str(path), "variation": variation}
    if variation == "offset":
        arrival["max_offset_s"] = 15.0
    sc = scenario(arrival, {"kind": "trace"}, horizon_s=30.0)
    rf, ri, _slo, prefix = build_requests(sc, np.random.default_rng(3), False)
    n = len(rf) - 1
    prompt, output = ri[:n, K.R_PROMPT], ri[:n, K.R_OUTPUT]
    check_rows_follow(prompt, output, prefix, trace)
    if variation == "none":
        assert prompt.tolist() == trace.prompt_tokens[:30].tolist()
    if variation == "bootstrap_sizes":
        assert len(set(prompt.tolist())) < n  # drawn with replacement
        np.testing.assert_array_equal(rf[:n, K.R_ARR], trace.arrival_s[:30])
    if variation == "offset":
        assert prompt[0] != 1  # a window later than the first row


def test_build_requests_without_prefix_information_gives_empty_rows(tagged_trace, tmp_path):
    path, _ = tagged_trace
    for arrival, sizes in (
        ({"kind": "trace", "path": str(path)}, None),  # synthetic sizes: the trace's hashes do not apply
        ({"kind": "poisson", "rate_per_s": 2.0}, None),
    ):
        rf, _ri, _slo, prefix = build_requests(scenario(arrival, sizes), np.random.default_rng(0), False)
        assert len(prefix) == len(rf) - 1 > 0 and prefix.ids.size == 0
    azure = tmp_path / "a.csv"
    azure.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,10,5\n2023-11-16 18:15:47,9,4\n"
    )
    rf, ri, _slo, prefix = build_requests(
        scenario({"kind": "trace", "path": str(azure)}, {"kind": "trace"}), np.random.default_rng(0), False
    )
    assert ri[:2, K.R_PROMPT].tolist() == [10, 9] and len(prefix) == 2 and prefix.ids.size == 0


def test_a_trace_read_in_two_formats_is_cached_per_format(tmp_path):
    path = write_jsonl(tmp_path, "t.csv", [row(0), row(1000)])  # JSONL behind a .csv name
    sc = scenario({"kind": "trace", "path": str(path), "format": "mooncake"}, {"kind": "trace"})
    rf, ri, _slo, prefix = build_requests(sc, np.random.default_rng(0), False)
    assert len(rf) - 1 == 2 and prefix.counts.tolist() == [2, 2]
    with pytest.raises(ConfigError, match=r"workload\.arrival: t\.csv:1: header must be"):
        build_requests(
            scenario({"kind": "trace", "path": str(path)}, {"kind": "trace"}), np.random.default_rng(0), False
        )


# --- sessions ----------------------------------------------------------------------------------

FIXED = SizeSpec(kind="fixed", prompt=100, output=50)


def sessions(seed=0, sizes=FIXED, horizon_s=600.0, **params):
    p = session_params({"session_rate_per_s": 1.0, **params})
    return session_requests(np.random.default_rng(seed), p, sizes, horizon_s)


def by_session(prefix: PrefixBlocks, sys_blocks: int) -> dict[int, list[int]]:
    """Requests grouped by the id of the first block after the system prompt (its session's own)."""
    groups: dict[int, list[int]] = {}
    for i in range(len(prefix)):
        groups.setdefault(int(prefix.row(i)[sys_blocks]), []).append(i)
    return groups


def test_each_turn_extends_the_previous_turn_and_its_answer():
    # system prompt 128 tokens = 2 blocks of 64; turn k's prompt is 128 + 150 k + 100 tokens
    t, prompt, output, pb = sessions(
        system_prompt_tokens=128, block_tokens=64, system_prompts=3, turns_mean=5
    )
    assert np.all(np.diff(t) >= 0) and t[-1] < 600.0
    assert np.all(output == 50) and np.all((prompt - 228) % 150 == 0)
    np.testing.assert_array_equal(pb.counts, -(-prompt // 64))
    groups = by_session(pb, 2)
    assert len(groups) > 100 and max(len(g) for g in groups.values()) > 3
    all_ids, id_counts = np.unique(pb.ids, return_counts=True)
    once = set(all_ids[id_counts == 1].tolist())
    for rows in groups.values():
        turns = (prompt[rows] - 228) // 150
        assert turns.tolist() == list(range(len(rows)))  # turns 0, 1, 2, ... in arrival order
        for a, b in zip(rows, rows[1:], strict=False):
            assert t[b] > t[a]
            full = prompt[a] // 64
            assert pb.row(b)[:full].tolist() == pb.row(a)[:full].tolist()  # the previous turn's full blocks
            if prompt[a] % 64:
                assert (
                    pb.row(a)[-1] not in pb.row(b) and int(pb.row(a)[-1]) in once
                )  # its partial block: its own
    # sessions share the system prompt's 2 blocks and nothing after them
    firsts = {tuple(pb.row(rows[0])[:2].tolist()) for rows in groups.values()}
    assert firsts <= {(0, 1), (2, 3), (4, 5)} and len(firsts) == 3
    owners: dict[int, int] = {}
    for key, rows in groups.items():
        for i in rows:
            for block_id in pb.row(i)[2:].tolist():
                assert owners.setdefault(block_id, key) == key


def test_system_prompts_follow_the_zipf_weights_and_are_the_shared_prefix():
    t, prompt, _, pb = sessions(horizon_s=3000.0, turns_mean=1, system_prompt_tokens=256, block_tokens=64,
                                system_prompts=3, system_prompt_zipf=1.0)  # fmt: skip
    first = pb.ids[pb.ptr[:-1]]  # the first block says which system prompt: 0, 4 or 8
    share = np.array([np.mean(first == 4 * j) for j in range(3)])
    np.testing.assert_allclose(share, np.array([1, 1 / 2, 1 / 3]) / (11 / 6), atol=0.03)
    # one turn per session: every hit is a system prompt already seen (4 blocks of 64 tokens)
    expected = (t.size - 3) * 256 / prompt.sum()
    assert prefix_hit_bound(pb, prompt) == pytest.approx(expected)
    single = sessions(turns_mean=1, system_prompt_tokens=256, system_prompts=3, system_prompt_zipf=0.0)[3]
    assert set(single.ids[single.ptr[:-1]].tolist()) == {0, 4, 8}
    zero = sessions(system_prompt_tokens=0, block_tokens=16)[3]
    assert len(by_session(zero, 0)) > 100  # without a system prompt a session shares nothing


def test_sizes_turns_and_think_times_are_drawn_as_documented():
    sizes = SizeSpec(
        prompt_mean=20, prompt_p99=60, output_mean=30, output_p99=100, prompt_max=80, output_max=120
    )
    t, prompt, output, pb = sessions(sizes=sizes, horizon_s=4000.0, session_rate_per_s=0.5, think_time_s=2.0,
                                     system_prompt_tokens=16, block_tokens=1, max_context_tokens=100_000)  # fmt: skip
    groups = by_session(pb, 16)
    users, gaps = [], []
    for rows in groups.values():
        users.append(prompt[rows[0]] - 16)
        for a, b in zip(rows, rows[1:], strict=False):
            users.append(prompt[b] - prompt[a] - output[a])
            gaps.append(t[b] - t[a])
            assert pb.row(b)[: prompt[a]].tolist() == pb.row(a).tolist()  # block_tokens 1: all blocks full
    users = np.array(users)
    assert users.min() >= 1 and users.max() <= 80 and output.min() >= 1 and output.max() <= 120
    assert users.mean() == pytest.approx(20, rel=0.05) and output.mean() == pytest.approx(30, rel=0.05)
    assert np.mean(gaps) == pytest.approx(2.0, rel=0.05)
    assert len(groups) == pytest.approx(0.5 * 4000, rel=0.1)
    assert t.size / len(groups) == pytest.approx(4.0, rel=0.05)  # turns_mean (few cut by the horizon)


def test_sessions_end_before_the_context_limit_and_at_the_horizon():
    t, prompt, _, pb = sessions(
        turns_mean=20, think_time_s=5.0, system_prompt_tokens=128, max_context_tokens=700
    )
    assert prompt.max() <= 700 and set(((prompt - 228) // 150).tolist()) == {0, 1, 2, 3}  # 678 fits, 828 not
    t2, *_ = sessions(horizon_s=50.0, turns_mean=20, think_time_s=5.0)
    assert t2.size and t2.max() < 50.0


def test_sessions_are_deterministic_per_seed():
    a, b, c = sessions(seed=7), sessions(seed=7), sessions(seed=8)
    for x, y in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[3].ids, b[3].ids)
    assert a[0].size != c[0].size or not np.array_equal(a[0], c[0])
    empty = sessions(horizon_s=0.0)
    assert empty[0].size == 0 and len(empty[3]) == 0


def test_session_params_are_validated():
    assert session_params({"session_rate_per_s": 2})["turns_mean"] == 4.0
    for raw, message in [
        ({}, r"workload\.arrival\.session_rate_per_s: required key is missing"),
        ({"session_rate_per_s": 0}, r"session_rate_per_s: 0 must be > 0"),
        ({"session_rate_per_s": 1, "turns_mean": 0.5}, r"turns_mean: 0\.5 must be >= 1"),
        ({"session_rate_per_s": 1, "think_time_s": 0}, r"think_time_s: 0 must be > 0"),
        ({"session_rate_per_s": 1, "system_prompts": 2.5}, r"system_prompts: 2\.5 must be an integer"),
        ({"session_rate_per_s": 1, "system_prompt_zipf": -1}, r"system_prompt_zipf: -1 must be >= 0"),
        ({"session_rate_per_s": 1, "block_tokens": 0}, r"block_tokens: 0 must be >= 1"),
        ({"session_rate_per_s": 1, "system_prompt_tokens": 4096, "max_context_tokens": 4096},
         r"max_context_tokens: 4096 must be > system_prompt_tokens \(4096\)"),
        ({"session_rate_per_s": 1, "rate_per_s": 1}, r"workload\.arrival\.rate_per_s: unknown key"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            session_params(raw)


def test_sessions_in_a_scenario():
    arrival = {"kind": "sessions", "session_rate_per_s": 0.5, "think_time_s": 10.0, "turns_mean": 3}
    sizes = {"prompt_mean": 50, "prompt_p99": 200, "output_mean": 100, "output_p99": 400}
    sc = scenario(arrival, sizes, horizon_s=300.0)
    assert sc.workload.arrival.mean_rate_per_s == 1.5
    assert sc.workload.arrival.params["block_tokens"] == 64
    rf, ri, _slo, prefix = build_requests(sc, np.random.default_rng(1), False)
    n = len(rf) - 1
    t, prompt, output, pb = session_requests(
        np.random.default_rng(1), sc.workload.arrival.params, sc.workload.sizes, 300.0
    )
    np.testing.assert_array_equal(rf[:n, K.R_ARR], t)
    np.testing.assert_array_equal(ri[:n, K.R_PROMPT], prompt)
    np.testing.assert_array_equal(ri[:n, K.R_OUTPUT], output)
    np.testing.assert_array_equal(prefix.ids, pb.ids)
    assert prefix_hit_bound(prefix, prompt) > 0.3
    with pytest.raises(
        ConfigError, match=r"workload\.sizes\.kind: 'trace' needs workload\.arrival\.kind: trace"
    ):
        scenario(arrival, {"kind": "trace"})
    with pytest.raises(ConfigError, match=r"expected arrivals exceed"):
        build_requests(
            scenario({**arrival, "session_rate_per_s": 1e4}, sizes, 3600.0), np.random.default_rng(0), False
        )


def test_sessions_are_fast():
    sizes = SizeSpec(prompt_mean=200, prompt_p99=1500, output_mean=250, output_p99=1000)
    t0 = time.perf_counter()
    t, prompt, _, pb = sessions(sizes=sizes, horizon_s=3600.0, session_rate_per_s=7.0)
    elapsed = time.perf_counter() - t0
    assert t.size > 90_000
    assert elapsed < 5.0, f"{t.size} requests ({pb.ids.size} block ids) took {elapsed:.2f} s"
