"""Prompt prefixes: which requests share the leading KV-cache blocks of their prompts.

A prefix cache (vLLM's automatic prefix caching, SGLang's radix cache, Mooncake's KVCache pool)
serves the leading prompt tokens another request already computed. What it can reuse depends on
which requests share which prefixes, so a workload carries, per request, the chained hashes of its
prompt's blocks (:class:`PrefixBlocks`). Two sources fill them:

* :func:`read_mooncake_trace` replays the Mooncake FAST'25 traces (JSONL with ``hash_ids`` of
  512-token blocks; kvcache-ai/Mooncake, ``FAST25-release/traces``; Qin et al., "Mooncake: Trading
  More Storage for Less Computation — A KVCache-centric Architecture for Serving LLM Chatbot",
  FAST 2025).
* :func:`session_requests` draws multi-turn conversations whose turns extend each other and whose
  sessions share a few system prompts (``workload.arrival.kind: sessions``).

:func:`prefix_hit_bound` gives the share of prompt tokens that one infinite cache would serve,
an upper bound for any cache policy. Everything is vectorised numpy; no global state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from envs.sim.errors import ConfigError, check_keys, check_number, fail
from envs.sim.workload import (
    MAX_TRACE_TOKENS,
    TIMESTAMP_BACKWARD_TOLERANCE_S,
    Trace,
    _check_expected_count,
    _check_rng,
    _number,
    open_trace,
    poisson_arrivals,
    sample_lengths,
)

if TYPE_CHECKING:
    from envs.sim.config import SizeSpec

#: Tokens per hashed block in the Mooncake traces: each ``hash_ids`` entry covers 512 prompt tokens
#: (kvcache-ai/Mooncake, ``FAST25-release/traces``; the last block of a prompt may be partial).
MOONCAKE_BLOCK_TOKENS = 512

MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")

#: A generated stream holding more block ids than this (8 bytes each, 0.8 GB) is refused: raise
#: ``block_tokens`` or shorten the horizon.
MAX_PREFIX_IDS = 100_000_000

_INT64_MAX = 2**63 - 1
# Mooncake timestamps are milliseconds; beyond 2**53 a float64 no longer holds every integer.
_MAX_TIMESTAMP_MS = 2**53


def _int64_array(path: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise fail(path, arr.shape, "must be a 1-d array")
    if arr.size and arr.dtype.kind not in "iu":
        raise fail(path, str(arr.dtype), "must be an integer array")
    if arr.size and arr.dtype.kind == "u" and int(arr.max()) > _INT64_MAX:
        raise ConfigError(f"{path}: values must fit in int64")
    out = np.array(arr, dtype=np.int64)  # a copy: the caller's array may change, this one may not
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class PrefixBlocks:
    """Per-request prompt block hashes in CSR form.

    Request ``i``'s prompt blocks are ``ids[ptr[i]:ptr[i+1]]``; block ``k`` covers prompt tokens
    ``[k * block_tokens, (k + 1) * block_tokens)`` (the last may be partial). ``ids[k]`` identifies
    the whole prefix up to the end of block ``k`` (a chained hash, as vLLM's block hashes and
    Mooncake's ``hash_ids``): two requests share their first ``k`` blocks' KV iff their first ``k``
    ids are equal. Ids are int64 >= 0. A request may have fewer ids than its prompt has blocks
    (none at all: no prefix information, :meth:`empty`); it then shares nothing beyond them.
    The arrays are read-only copies.
    """

    ptr: np.ndarray  # int64, len n + 1, ptr[0] = 0, non-decreasing, ptr[-1] = len(ids)
    ids: np.ndarray  # int64 >= 0
    block_tokens: int  # tokens per hashed block (Mooncake: 512)

    def __post_init__(self) -> None:
        ptr = _int64_array("prefix.ptr", self.ptr)
        ids = _int64_array("prefix.ids", self.ids)
        if isinstance(self.block_tokens, np.integer):
            object.__setattr__(self, "block_tokens", int(self.block_tokens))
        check_number("prefix.block_tokens", self.block_tokens, ge=1, integer=True)
        if ptr.size == 0 or ptr[0] != 0:
            raise fail("prefix.ptr", ptr[:1].tolist(), "must start with 0 (one entry per request plus one)")
        if np.any(np.diff(ptr) < 0):
            raise ConfigError("prefix.ptr: must be non-decreasing")
        if ptr[-1] != ids.size:
            raise fail("prefix.ptr", int(ptr[-1]), f"must end at the number of ids ({ids.size})")
        if ids.size and int(ids.min()) < 0:
            raise fail("prefix.ids", int(ids.min()), "must be >= 0")
        object.__setattr__(self, "ptr", ptr)
        object.__setattr__(self, "ids", ids)

    def __len__(self) -> int:
        return int(self.ptr.size - 1)

    @property
    def counts(self) -> np.ndarray:
        """Blocks (ids) per request, int64."""
        return np.diff(self.ptr)

    def row(self, i: int) -> np.ndarray:
        """Request ``i``'s block ids (a read-only view)."""
        return self.ids[self.ptr[i] : self.ptr[i + 1]]

    def select(self, index: Any) -> PrefixBlocks:
        """The rows ``index`` (an integer array; repeats allowed), in that order."""
        idx = np.asarray(index)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise fail("index", idx.shape if idx.ndim != 1 else str(idx.dtype), "must be a 1-d integer array")
        n = len(self)
        if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise fail("index", [int(idx.min()), int(idx.max())], f"must lie in [0, {n}) (requests)")
        idx = idx.astype(np.int64) % max(n, 1)
        counts = self.counts[idx]
        ptr = np.zeros(idx.size + 1, np.int64)
        np.cumsum(counts, out=ptr[1:])
        shift = np.repeat(self.ptr[idx] - ptr[:-1], counts)
        return PrefixBlocks(ptr, self.ids[np.arange(ptr[-1], dtype=np.int64) + shift], self.block_tokens)

    @classmethod
    def empty(cls, n: int, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> PrefixBlocks:
        """``n`` requests without prefix information (no ids: they share nothing)."""
        count = int(_number("n", n, ge=0, integer=True))
        return cls(np.zeros(count + 1, np.int64), np.empty(0, np.int64), block_tokens)


def prefix_hit_bound(prefix: PrefixBlocks, prompt_tokens: Any) -> float:
    """The share of prompt tokens that one infinite cache shared by all requests would serve.

    Requests are taken in order (arrival order). Request ``i`` hits the leading blocks whose ids
    already appeared in an earlier request: ``hit_i = min(lead_i * block_tokens, prompt_tokens[i])``
    where ``lead_i`` counts its leading ids seen before. The result is
    ``sum(hit) / sum(prompt_tokens)``: an upper bound on cached prompt tokens / prompt tokens for
    any finite cache or policy over the stream. (An engine that must recompute at least the last
    prompt token, as vLLM does, serves a little less.) 0.0 for a stream without prompt tokens.
    """
    prompt = _int64_array("prompt_tokens", prompt_tokens)
    n = len(prefix)
    if prompt.size != n:
        raise fail("prompt_tokens", prompt.size, f"entries, but prefix has {n} requests")
    if np.any(prompt < 0):
        raise ConfigError("prompt_tokens: must be >= 0")
    total = int(prompt.sum())
    if total == 0:
        return 0.0
    ids, ptr, counts = prefix.ids, prefix.ptr, prefix.counts
    if ids.size == 0:
        return 0.0
    row = np.repeat(np.arange(n, dtype=np.int64), counts)
    _, first_pos, inverse = np.unique(ids, return_index=True, return_inverse=True)
    new = row[first_pos][inverse] == row  # first seen in this very request (or later in it)
    seen_new = np.zeros(ids.size + 1, np.int64)
    np.cumsum(new, out=seen_new[1:])
    leading = (seen_new[1:] - seen_new[ptr[:-1]][row]) == 0  # no new id up to and including this one
    lead = np.bincount(row, weights=leading, minlength=n).astype(np.int64)
    hit = np.minimum(lead * prefix.block_tokens, prompt)
    return float(hit.sum() / total)


# ----------------------------------------------------------------------------- Mooncake traces


def _count_field(name: str, lineno: int, key: str, value: Any) -> int:
    if type(value) is not int:  # bool, float, str, ... (JSON 12.0 is a float: not a token count)
        raise ConfigError(f"{name}:{lineno}: {key} {_short(value)} is not a non-negative integer")
    if value < 0:
        raise ConfigError(f"{name}:{lineno}: {key} {value} must be >= 0")
    if value > MAX_TRACE_TOKENS:
        raise ConfigError(
            f"{name}:{lineno}: {key} {_short(value)} exceeds {MAX_TRACE_TOKENS:,} tokens "
            "(longer than any model's context: a corrupt row?)"
        )
    return value


def _short(value: Any) -> str:
    if type(value) is int and value.bit_length() > 100:
        return f"<integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_mooncake_trace(
    path: str | Path,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    time_scale: float = 1.0,
) -> Trace:
    """Read a Mooncake trace (JSONL, kvcache-ai/Mooncake ``FAST25-release/traces``).

    One JSON object a line with exactly the keys ``timestamp`` (ms, a number >= 0),
    ``input_length`` and ``output_length`` (token counts: integers in
    ``[0, MAX_TRACE_TOKENS]``) and ``hash_ids`` (integers >= 0: the chained hashes of the
    prompt's 512-token blocks, :data:`MOONCAKE_BLOCK_TOKENS`; exactly
    ``ceil(input_length / 512)`` of them, which every row of the released conversation and
    synthetic traces satisfies). The released files carry no other keys, so any other key is an
    error, as is a missing one. Blank lines are skipped; a UTF-8 BOM is accepted.

    Rows keep file order; a row may step back by at most ``TIMESTAMP_BACKWARD_TOLERANCE_S``,
    and then the rows are stably sorted by time; a larger step back is an error. Selection is
    that of :func:`~envs.sim.workload.read_azure_trace`: rows with
    ``first + start_s <= t < first + start_s + duration_s`` are kept, re-based so the first kept
    row is at 0, gaps multiplied by ``time_scale``. The trace's ``prefix`` holds the rows'
    ``hash_ids``.

    Any malformed line raises ``ConfigError("<file name>:<line>: <reason>")``.
    """
    start, duration, scale, name, lines = open_trace(path, start_s, duration_s, time_scale)
    stamps = np.empty(len(lines), np.float64)
    prompt = np.empty(len(lines), np.int64)
    output = np.empty(len(lines), np.int64)
    counts = np.empty(len(lines), np.int64)
    all_ids: list[int] = []
    tolerance_ms = TIMESTAMP_BACKWARD_TOLERANCE_S * 1000.0
    latest = -math.inf
    needs_sort = False
    kept = 0
    expected_keys = set(MOONCAKE_KEYS)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except ValueError as exc:  # e.g. an integer of more than 4,300 digits
            raise ConfigError(f"{name}:{lineno}: not valid JSON ({exc})") from None
        if type(row) is not dict:
            raise ConfigError(f"{name}:{lineno}: expected a JSON object with keys {', '.join(MOONCAKE_KEYS)}")
        if row.keys() != expected_keys:
            missing = [k for k in MOONCAKE_KEYS if k not in row]
            if missing:
                raise ConfigError(f"{name}:{lineno}: missing key {missing[0]!r}")
            unknown = sorted(str(k) for k in row if k not in expected_keys)
            raise ConfigError(
                f"{name}:{lineno}: unknown key(s) {unknown} (a Mooncake row has {', '.join(MOONCAKE_KEYS)})"
            )
        stamp = row["timestamp"]
        if type(stamp) not in (int, float):
            raise ConfigError(f"{name}:{lineno}: timestamp {_short(stamp)} is not a number (ms)")
        if not (0 <= stamp <= _MAX_TIMESTAMP_MS):  # also false for NaN
            raise ConfigError(
                f"{name}:{lineno}: timestamp {_short(stamp)} must be a finite number of ms in [0, 2**53]"
            )
        n_in = _count_field(name, lineno, "input_length", row["input_length"])
        n_out = _count_field(name, lineno, "output_length", row["output_length"])
        ids = row["hash_ids"]
        if type(ids) is not list:
            raise ConfigError(f"{name}:{lineno}: hash_ids {_short(ids)} is not a list of integers")
        need = -(-n_in // MOONCAKE_BLOCK_TOKENS)
        if len(ids) != need:
            raise ConfigError(
                f"{name}:{lineno}: hash_ids has {len(ids)} ids, but input_length {n_in} needs "
                f"ceil({n_in}/{MOONCAKE_BLOCK_TOKENS}) = {need}"
            )
        if ids:
            if not all(type(h) is int for h in ids):
                bad = next(h for h in ids if type(h) is not int)
                raise ConfigError(
                    f"{name}:{lineno}: hash_ids entry {_short(bad)} is not a non-negative integer"
                )
            low, high = min(ids), max(ids)
            if low < 0:
                raise ConfigError(f"{name}:{lineno}: hash_ids entry {low} must be >= 0")
            if high > _INT64_MAX:
                raise ConfigError(f"{name}:{lineno}: hash_ids entry {_short(high)} exceeds the int64 range")
        t = float(stamp)
        if t < latest:
            if latest - t > tolerance_ms:
                raise ConfigError(
                    f"{name}:{lineno}: timestamp {_short(stamp)} is {(latest - t) / 1000:.6g} s earlier than "
                    f"an earlier row (tolerance {TIMESTAMP_BACKWARD_TOLERANCE_S} s); is the file sorted?"
                )
            needs_sort = True
        else:
            latest = t
        stamps[kept] = t
        prompt[kept] = n_in
        output[kept] = n_out
        counts[kept] = len(ids)
        all_ids.extend(ids)
        kept += 1

    if kept == 0:
        raise ConfigError(f"{name}: holds no data rows")
    stamps, prompt, output, counts = stamps[:kept], prompt[:kept], output[:kept], counts[:kept]
    ptr = np.zeros(kept + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    prefix = PrefixBlocks(ptr, np.array(all_ids, dtype=np.int64), MOONCAKE_BLOCK_TOKENS)
    if needs_sort:
        order = np.argsort(stamps, kind="stable")
        stamps, prompt, output, prefix = stamps[order], prompt[order], output[order], prefix.select(order)

    span_s = (stamps[-1] - stamps[0]) / 1000.0
    lo = stamps[0] + start * 1000.0
    first = int(np.searchsorted(stamps, lo, side="left"))
    last = kept if duration is None else int(np.searchsorted(stamps, lo + duration * 1000.0, side="left"))
    if last <= first:
        window = f"[{start:g}, {'end' if duration is None else f'{start + duration:g}'})"
        raise ConfigError(
            f"start_s/duration_s: window {window} s of {name} holds no rows (the trace spans {span_s:.6g} s)"
        )
    selected = stamps[first:last]
    arrival = (selected - selected[0]) * (scale / 1000.0)
    if first > 0 or last < kept:
        prefix = prefix.select(np.arange(first, last))
    return Trace(arrival, prompt[first:last], output[first:last], name, prefix=prefix)


# ----------------------------------------------------------------------------- multi-turn sessions

#: Keys of ``workload.arrival`` with ``kind: sessions``.
SESSION_KEYS = (
    "session_rate_per_s",
    "turns_mean",
    "think_time_s",
    "system_prompts",
    "system_prompt_tokens",
    "system_prompt_zipf",
    "block_tokens",
    "max_context_tokens",
)

#: Defaults of the optional session keys (see docs/scenarios.md). ``think_time_s``: on the Mooncake
#: conversation trace (first 30 min) a request follows the latest earlier request whose prompt it
#: extends by a median 120 s (mean 189 s over 2,029 such pairs). The others are illustrative: a few
#: turns per conversation, a handful of shared system prompts of a thousand tokens, vLLM-sized blocks
#: times four, and a 32k context window.
SESSION_DEFAULTS: dict[str, float | int] = {
    "turns_mean": 4.0,
    "think_time_s": 120.0,
    "system_prompts": 8,
    "system_prompt_tokens": 1024,
    "system_prompt_zipf": 1.0,
    "block_tokens": 64,
    "max_context_tokens": 32768,
}


def session_params(raw: Mapping[str, Any], path: str = "workload.arrival") -> dict[str, Any]:
    """The validated parameters of a ``sessions`` arrival process, defaults filled in."""
    check_keys(path, raw, SESSION_KEYS, required=("session_rate_per_s",))
    given = {**SESSION_DEFAULTS, **raw}
    bounds: dict[str, dict[str, Any]] = {
        "session_rate_per_s": {"gt": 0},
        "turns_mean": {"ge": 1},
        "think_time_s": {"gt": 0},
        "system_prompts": {"ge": 1, "le": 1_000_000, "integer": True},
        "system_prompt_tokens": {"ge": 0, "le": MAX_TRACE_TOKENS, "integer": True},
        "system_prompt_zipf": {"ge": 0},
        "block_tokens": {"ge": 1, "le": MAX_TRACE_TOKENS, "integer": True},
        "max_context_tokens": {"ge": 1, "le": MAX_TRACE_TOKENS, "integer": True},
    }
    p: dict[str, Any] = {}
    for key in SESSION_KEYS:
        value = check_number(f"{path}.{key}", given[key], **bounds[key])
        p[key] = value if bounds[key].get("integer") else float(value)
    if p["max_context_tokens"] <= p["system_prompt_tokens"]:
        raise fail(
            f"{path}.max_context_tokens",
            p["max_context_tokens"],
            f"must be > system_prompt_tokens ({p['system_prompt_tokens']}): every prompt holds the system "
            "prompt and at least one user token",
        )
    return p


def session_mean_rate(params: Mapping[str, Any]) -> float:
    """Long-run request rate of a ``sessions`` process: ``session_rate_per_s * turns_mean``.

    Approximate: an upper bound, reached once sessions have run for a few think times, when few
    sessions end early at ``max_context_tokens``.
    """
    return float(params["session_rate_per_s"]) * float(params["turns_mean"])


def _draw_sizes(rng: np.random.Generator, sizes: SizeSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    if sizes.kind == "fixed":
        return np.full(n, sizes.prompt, np.int64), np.full(n, sizes.output, np.int64)
    if sizes.kind != "lognormal":
        raise fail("workload.sizes.kind", sizes.kind, "must be lognormal or fixed with arrival kind sessions")
    user = sample_lengths(rng, n, sizes.prompt_mean, sizes.prompt_p99, 1, sizes.prompt_max)
    out = sample_lengths(rng, n, sizes.output_mean, sizes.output_p99, 1, sizes.output_max)
    return user, out


def session_requests(
    rng: np.random.Generator, params: Mapping[str, Any], sizes: SizeSpec, horizon_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, PrefixBlocks]:
    """Multi-turn conversations sharing system prompts: ``(arrival_s, prompt, output, prefix)``.

    Sessions start as a Poisson process at ``session_rate_per_s`` on ``[0, horizon_s)``. A session
    has a geometric number of turns (>= 1, mean ``turns_mean``) and picks system prompt ``j`` of
    ``system_prompts`` with probability proportional to ``1 / (j + 1) ** system_prompt_zipf``. Its
    first turn arrives when it starts; each later turn an exponential ``think_time_s`` (mean) after
    the previous one. Each turn's new user tokens and its output tokens are drawn from ``sizes``
    (``prompt_*`` is the new user message; ``lognormal`` or ``fixed``). Turn ``k``'s prompt is the
    system prompt, all earlier turns' user and output tokens and its own user tokens, so it extends
    the previous turn's prompt and answer. A session ends early before the first turn whose prompt
    would exceed ``max_context_tokens`` (as a chat front end starts a new conversation); turns at or
    after ``horizon_s`` are dropped. Requests are sorted by arrival (stable).

    Block ids (``block_tokens`` tokens a block): a full block lying inside the system prompt has an
    id shared by every session with that system prompt; any other full block, an id of its session
    (the same in every turn of it); a partial last block, an id of its (session, turn), since the
    next turn's block at that place holds more tokens. Random draws, in order: session starts,
    turns, system prompts, think times, user tokens, output tokens.
    """
    _check_rng(rng)
    p = session_params(params)
    horizon = float(_number("horizon_s", horizon_s, ge=0))
    _check_expected_count("session_rate_per_s*turns_mean*horizon_s", session_mean_rate(p) * horizon)
    bt = p["block_tokens"]
    sys_tokens = p["system_prompt_tokens"]
    n_sys = p["system_prompts"]

    starts = poisson_arrivals(rng, p["session_rate_per_s"], horizon)
    n_sessions = starts.size
    turns = rng.geometric(1.0 / p["turns_mean"], size=n_sessions).astype(np.int64)
    weights = 1.0 / np.arange(1, n_sys + 1, dtype=np.float64) ** p["system_prompt_zipf"]
    system = rng.choice(n_sys, size=n_sessions, p=weights / weights.sum()).astype(np.int64)
    n_turns = int(turns.sum())
    gaps = rng.exponential(p["think_time_s"], size=n_turns)
    user, out = _draw_sizes(rng, sizes, n_turns)

    # Turn rows grouped by session, in turn order.
    session = np.repeat(np.arange(n_sessions, dtype=np.int64), turns)
    first = np.zeros(n_sessions, np.int64)
    first[1:] = np.cumsum(turns[:-1])
    first_of_row = first[session]
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    arrival = starts[session] + (elapsed - elapsed[first_of_row])
    grown = user + out
    before = np.cumsum(grown) - grown  # tokens of all earlier rows, then of this session's earlier turns
    prompt = sys_tokens + (before - before[first_of_row]) + user
    # Both grow along a session, so each session keeps a run of its first turns.
    keep = np.flatnonzero((prompt <= p["max_context_tokens"]) & (arrival < horizon))
    order = keep[np.argsort(arrival[keep], kind="stable")]
    arrival, prompt, out, session = arrival[order], prompt[order], out[order], session[order]
    n = order.size

    n_blocks = -(-prompt // bt)
    total = int(n_blocks.sum())
    if total > MAX_PREFIX_IDS:
        raise fail(
            "workload.arrival.block_tokens",
            bt,
            f"gives {total:.3g} prefix block ids (more than {MAX_PREFIX_IDS:.0e}, 8 bytes each); "
            "raise block_tokens or shorten the horizon",
        )
    sys_blocks = sys_tokens // bt  # full blocks inside the system prompt
    full = prompt // bt
    # Ids: [0, n_sys * sys_blocks) shared system-prompt blocks; then each session's own full blocks;
    # then one id per request for its partial last block.
    longest = np.zeros(n_sessions, np.int64)
    np.maximum.at(longest, session, full)
    own = np.maximum(longest - sys_blocks, 0)
    own_start = n_sys * sys_blocks + (np.cumsum(own) - own)
    partial_base = n_sys * sys_blocks + int(own.sum())

    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(n_blocks, out=ptr[1:])
    row = np.repeat(np.arange(n, dtype=np.int64), n_blocks)
    block = np.arange(total, dtype=np.int64) - ptr[:-1][row]
    ids = np.where(
        block < sys_blocks,
        np.repeat(system[session] * sys_blocks, n_blocks) + block,
        np.where(
            block < full[row],
            np.repeat(own_start[session] - sys_blocks, n_blocks) + block,
            partial_base + row,
        ),
    )
    return arrival, prompt, out, PrefixBlocks(ptr, ids, bt)
