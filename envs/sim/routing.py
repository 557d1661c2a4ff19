"""Routing in the core: the router protocol, the in-loop selection rules, compiled score functions.

A router decides, for each arriving request, which READY replica of its model
serves it (or -1: the model's central queue, from which the first replica
with room pulls it). The core offers three ways to be one, fastest first:

* **A selection rule** run inside the compiled event loop (:class:`Rule`):
  ``RANDOM``, ``ROUND_ROBIN``, ``WEIGHTED_ROUND_ROBIN``, ``POWER_OF_TWO``,
  ``CONSISTENT_HASH`` (bounded loads), ``LEAST_IN_FLIGHT`` (from an index),
  ``CENTRAL_QUEUE``, or ``SCORE``.
* **A compiled score function** (``SCORE``): lowest score wins, ties to the
  lowest replica id. Write it as a plain Python function of the replica's
  named features (:data:`SCORE_ARGS`) and wrap it with :func:`score_function`;
  numba compiles it and the event loop calls it through a
  function pointer, so it runs at full speed without recompiling the loop.
  It must be pure arithmetic (no exceptions, no allocation).
* **A Python callable** (``choose(request, replicas) -> replica id``) reading
  :class:`~envs.sim.view.RequestView` / :class:`~envs.sim.view.ReplicaView`:
  the loop stops at each arrival and Python decides (about 100x slower).

A router object implements :class:`Router`: ``kernel_spec()`` returns a
:class:`RouterSpec` (rule, score function, parameters). Built-in routers
register in :data:`ROUTERS` from ``baselines.routing``; ``external`` (the
decision comes from outside, e.g. ``InferGym/Routing-v0``'s agent) is the
core's own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.kvcache import match
from envs.sim.layout import (
    G_AFFINITY_EPS,
    G_SCORE_P0,
    G_SCORE_P1,
    G_SCORE_P2,
    I_HB,
    I_LC_NDIRTY,
    I_LC_ON,
    I_LC_REBUILD,
    I_NMODELS,
    I_ROUTER,
    I_SCORE_AGG,
    I_SCORE_FN,
    M_RR,
    P_EWMA,
    P_SPEED,
    P_WRR,
    Q_BT,
    Q_EB,
    Q_ENTRIES,
    Q_HASH,
    Q_KVCAP,
    Q_KVRES,
    Q_LCMARK,
    Q_MATCH,
    Q_MAXB,
    Q_MODEL,
    Q_NRUN,
    Q_RPOS,
    Q_STATE,
    Q_XIN,
    R_MODEL,
    R_PROMPT,
    R_SESSION,
    R_U1,
    R_U2,
    REP_READY,
)  # fmt: skip
from envs.sim.registry import Registry

INF = np.inf

# Rule codes (the values of Rule; plain ints so compiled code folds them).
RULE_SCORE, RULE_RANDOM, RULE_ROUND_ROBIN, RULE_WEIGHTED_RR = 0, 1, 2, 3
RULE_POWER_OF_TWO, RULE_CONSISTENT_HASH, RULE_CENTRAL_QUEUE, RULE_EXTERNAL = 4, 5, 6, 7
RULE_LEAST_IN_FLIGHT = 8


class Rule(enum.IntEnum):
    """How the event loop picks among the READY replicas of a request's model (candidates in id order)."""

    SCORE = RULE_SCORE  #: lowest value of the router's score function; ties to the lowest id
    RANDOM = RULE_RANDOM  #: the floor(U1 n)-th candidate (U1: the request's pre-drawn uniform)
    ROUND_ROBIN = RULE_ROUND_ROBIN  #: the (c mod n)-th, c = the model's requests routed so far
    WEIGHTED_ROUND_ROBIN = RULE_WEIGHTED_RR  #: nginx smooth WRR, weight = replica capacity (req/s)
    POWER_OF_TWO = RULE_POWER_OF_TWO  #: two distinct random candidates (U1, U2); fewer in flight wins
    CONSISTENT_HASH = RULE_CONSISTENT_HASH  #: session ring with bounded loads (``load_bound_eps``)
    CENTRAL_QUEUE = RULE_CENTRAL_QUEUE  #: late binding: every request joins the central queue
    EXTERNAL = RULE_EXTERNAL  #: the loop stops at each arrival; the decision comes from outside
    #: fewest in flight (queued + running + KV in transfer), ties to the lowest id: an index, O(log n)
    LEAST_IN_FLIGHT = RULE_LEAST_IN_FLIGHT


#: Arguments of a score function, in order (name, numba type, meaning and unit).
SCORE_ARGS: tuple[tuple[str, Any, str], ...] = (
    (
        "in_flight",
        types.int64,
        "requests queued at, running on or (decode pool) pulling their KV to the replica",
    ),
    (
        "queued",
        types.int64,
        "requests waiting at the replica: its own queue and (decode pool) KV caches in transfer",
    ),
    ("running", types.int64, "requests in its running batch"),
    ("max_batch", types.int64, "its batch limit"),
    ("kv_reserved_tokens", types.int64, "KV tokens reserved by its running requests"),
    ("kv_capacity_tokens", types.int64, "its KV capacity (tokens)"),
    ("speed_rps", types.float64, "its capacity: saturation throughput of its GPU type (requests/s)"),
    ("latency_ewma_s", types.float64, "EWMA of its completed requests' latency (s); < 0 before the first"),
    ("prompt_tokens", types.int64, "the arriving request's prompt length (tokens)"),
    (
        "cached_prefix_tokens",
        types.int64,
        "its prompt tokens the replica's prefix cache holds (paged engine)",
    ),
    # the rest: only for functions that take them (see score_function); aggregates over the READY
    # replicas of the request's model, the replica's cache size, and the router's parameters
    ("min_in_flight", types.int64, "fewest requests in flight at a READY replica of the model"),
    ("max_in_flight", types.int64, "most requests in flight at a READY replica of the model"),
    (
        "max_cached_prefix_tokens",
        types.int64,
        "the longest cached prefix of the request on any of them (tokens)",
    ),
    ("prefix_cache_tokens", types.int64, "tokens in the replica's prefix cache (its entries)"),
    ("param0", types.float64, "the router's first parameter (RouterSpec.params)"),
    ("param1", types.float64, "its second parameter"),
    ("param2", types.float64, "its third parameter"),
)
#: Score functions may take only the first arguments: these (per-replica features) or all of them.
N_BASIC_SCORE_ARGS = 10
SCORE_SIGNATURE = types.float64(*(t for _, t, _ in SCORE_ARGS))
_SCORE_FN_TYPE = types.FunctionType(SCORE_SIGNATURE)


@dataclass(frozen=True, eq=False)
class ScoreFunction:
    """A compiled score function: call it from Python like the original, or let the loop call ``address``."""

    py_func: Callable[..., float]
    address: int
    compiled: Any
    aggregates: bool = False  #: takes every argument (the loop computes the aggregates for it)

    @property
    def name(self) -> str:
        return self.py_func.__name__

    def __call__(self, *args: Any) -> float:
        return self.compiled(*args)

    def __reduce__(self) -> tuple:
        # By name: the address is valid only in this process; unpickling looks the function up again.
        return (_score_function_by_name, (self.py_func.__module__, self.py_func.__qualname__))


def _score_function_by_name(module: str, qualname: str) -> ScoreFunction:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, ScoreFunction) else score_function(obj)


def score_function(func: Callable[..., float] | None = None, *, cache: bool = False) -> Any:
    """Compile a score function of a replica's features (:data:`SCORE_ARGS`); lower scores win.

    ``func`` takes either the first :data:`N_BASIC_SCORE_ARGS` arguments (``in_flight, ...,
    cached_prefix_tokens``: one replica's features) or all of them (adding the aggregates over
    the model's READY replicas and the router's parameters, which cost the loop a second pass over
    the replicas). Usable as ``@score_function`` or ``@score_function(cache=True)`` (numba's
    on-disk cache; the function must live in a file).
    """

    def wrap(f: Callable[..., float]) -> ScoreFunction:
        import inspect

        n_args = len(inspect.signature(f).parameters)
        if n_args not in (N_BASIC_SCORE_ARGS, len(SCORE_ARGS)):
            basic = ", ".join(a for a, _, _ in SCORE_ARGS[:N_BASIC_SCORE_ARGS])
            rest = ", ".join(a for a, _, _ in SCORE_ARGS[N_BASIC_SCORE_ARGS:])
            raise TypeError(
                f"score function {f.__name__}: takes {n_args} arguments, must take ({basic}) or those and ({rest})"
            )
        signature = types.float64(*(t for _, t, _ in SCORE_ARGS[:n_args]))
        compiled = njit(signature, cache=cache, error_model="numpy")(f)
        if n_args == len(SCORE_ARGS):
            entry = compiled
        else:  # the loop calls every score function with every argument: drop the ones it does not take
            inner = compiled

            def full(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16):  # noqa: ARG001
                return inner(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9)

            entry = njit(SCORE_SIGNATURE, cache=cache, error_model="numpy")(full)
        cres = entry.get_compile_result(SCORE_SIGNATURE)
        address = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        return ScoreFunction(f, int(address), compiled, n_args == len(SCORE_ARGS))

    return wrap if func is None else wrap(func)


@intrinsic
def _as_score_fn(typingctx, addr):  # noqa: ANN001, ANN202  (numba intrinsic)
    """A first-class function value calling the compiled function at ``addr`` (set by :func:`score_function`).

    ``addr`` is the entry point of the numba-compiled function (numba's calling
    convention, one direct call; a ``cfunc``'s C wrapper would add a second).
    numba's own unboxing of a function argument costs ~30 us per call; an
    address in the state arrays costs nothing.
    """

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        sfunc = cgutils.create_struct_proxy(_SCORE_FN_TYPE)(context, builder)
        voidptr = context.get_value_type(types.voidptr)
        sfunc.c_addr = voidptr(None)
        sfunc.py_addr = voidptr(None)
        sfunc.jit_addr = builder.inttoptr(args[0], voidptr)
        return sfunc._getvalue()

    return _SCORE_FN_TYPE(types.int64), codegen


@dataclass(frozen=True)
class RouterSpec:
    """What the event loop needs of a router: its rule, score function and parameters."""

    rule: Rule
    score: ScoreFunction | None = None
    load_bound_eps: float = 0.25  # CONSISTENT_HASH only
    params: tuple[float, float, float] = (0.0, 0.0, 0.0)  #: a score function's param0..param2

    def __post_init__(self) -> None:
        if self.rule == Rule.SCORE and not isinstance(self.score, ScoreFunction):
            raise TypeError(
                "RouterSpec(rule=SCORE) needs score=a ScoreFunction (see envs.sim.routing.score_function)"
            )


@runtime_checkable
class Router(Protocol):
    """A router run by the event loop: ``kernel_spec()`` says which rule and score function."""

    def kernel_spec(self) -> RouterSpec: ...


@runtime_checkable
class PythonRouter(Protocol):
    """A router run in Python at each arrival: the replica id for ``request`` among ``replicas``.

    ``replicas`` are the READY replicas of the request's model in increasing
    id; return one of their ids, or -1 for the model's central queue.
    """

    def choose(self, request: Any, replicas: Any) -> int: ...


class _External:
    """Decisions come from outside the engine (``Simulator.route``), as in ``InferGym/Routing-v0``."""

    name = "external"
    source = "the caller: Simulator.advance stops at each arrival; Simulator.route(replica) decides"

    def kernel_spec(self) -> RouterSpec:
        return RouterSpec(Rule.EXTERNAL)

    def engine_spec(self) -> str:
        return self.name

    def reset(self) -> None:
        pass


class _RouterRegistry(Registry):
    def is_instance(self, obj: Any) -> bool:
        if isinstance(obj, (str, dict)) or obj is None or hasattr(obj, "items"):
            return False
        return isinstance(obj, (Router, PythonRouter))


#: Routers by scenario name (``routing: least_connections``); built-ins from ``baselines.routing``.
ROUTERS = _RouterRegistry("routing", "router")
ROUTERS.register("external", _External)


# ----------------------------------------------------------------------------- compiled rules


@njit(cache=True, error_model="numpy", inline="always")
def _waiting(pi, qn, gi, r):
    """Requests waiting at replica ``r``: its queue, and at a decode replica the requests it has admitted
    whose KV cache is still in transfer (they hold its blocks and join its batch on arrival; a router
    that missed them would herd requests onto a replica whose caches are on a slow link)."""
    return qn[gi[I_NMODELS] + r] + pi[r, Q_XIN]


@njit(cache=True, error_model="numpy", inline="always")
def _in_flight(pi, qn, gi, r):
    return _waiting(pi, qn, gi, r) + pi[r, Q_NRUN]


@njit(cache=True, error_model="numpy")
def hash64(x):
    """splitmix64's finaliser: a fixed, well-mixed 64-bit hash (the affinity ring)."""
    z = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, error_model="numpy", inline="always")
def _ring_next(pi, mrep, mn, row, h, inclusive):
    """The READY replica (list ``row`` of ``mrep``) with the smallest ring hash >= ``h`` (> ``h`` unless
    ``inclusive``), or -1. Replica hashes are distinct, so repeated calls walk the ring in
    hash order without sorting (the loop does not allocate: it is compiled without NRT)."""
    best = -1
    bh = np.uint64(0)
    for k in range(mn[row]):
        r = mrep[row, k]
        hr = np.uint64(pi[r, Q_HASH])
        if (hr > h or (inclusive and hr == h)) and (best < 0 or hr < bh):
            best, bh = r, hr
    return best


# The least-in-flight index: per model, a bottom-up segment tree (min) over its READY list, whose leaf
# k is ``in_flight << 32 | replica`` of the list's k-th replica, so the root is the replica with fewest
# in flight and, among those, the lowest id (what a scan in id order picks). Model m's 2 n nodes (n:
# its READY replicas; node 1 the root, leaves n .. 2n - 1) are stored in mrep rows 2 n_models + 2 m
# (nodes below the row width w) and the next (the rest); row 4 n_models lists the replicas whose
# in-flight count may have changed since the last decision (eventq.lc_mark, called by the loop where
# a replica's queue, batch or incoming transfers change). The engine keeps the index only while a
# router runs the rule (gi[I_LC_ON]); a READY list that changed or grown arrays rebuild it.


@njit(cache=True, error_model="numpy", inline="always")
def _lc_key(pi, qn, gi, r):
    return (_in_flight(pi, qn, gi, r) << 32) | r


@njit(cache=True, error_model="numpy", inline="always")
def _lc_get(mrep, base, w, j):
    return mrep[base, j] if j < w else mrep[base + 1, j - w]


@njit(cache=True, error_model="numpy", inline="always")
def _lc_set(mrep, base, w, j, v):
    if j < w:
        mrep[base, j] = v
    else:
        mrep[base + 1, j - w] = v


@njit(cache=True, error_model="numpy")
def _lc_rebuild(pi, qn, mrep, mn, gi):
    nm = gi[I_NMODELS]
    w = mrep.shape[1]
    for m in range(nm):
        base = 2 * nm + 2 * m
        n = mn[nm + m]
        for k in range(n):
            _lc_set(mrep, base, w, n + k, _lc_key(pi, qn, gi, mrep[nm + m, k]))
        for j in range(n - 1, 0, -1):
            _lc_set(mrep, base, w, j, min(_lc_get(mrep, base, w, 2 * j), _lc_get(mrep, base, w, 2 * j + 1)))
    stack = 4 * nm
    for k in range(gi[I_LC_NDIRTY]):
        pi[mrep[stack, k], Q_LCMARK] = 0
    gi[I_LC_NDIRTY] = 0
    gi[I_LC_REBUILD] = 0


@njit(cache=True, error_model="numpy", inline="always")
def _lc_refresh(pi, qn, mrep, mn, gi):
    """Bring the index up to date: rebuild it, or refresh the leaves of the listed replicas."""
    if gi[I_LC_REBUILD] != 0:
        _lc_rebuild(pi, qn, mrep, mn, gi)
        return
    nm = gi[I_NMODELS]
    w = mrep.shape[1]
    stack = 4 * nm
    for d in range(gi[I_LC_NDIRTY]):
        r = mrep[stack, d]
        pi[r, Q_LCMARK] = 0
        if pi[r, Q_STATE] != REP_READY:
            continue
        m = pi[r, Q_MODEL]
        base = 2 * nm + 2 * m
        j = mn[nm + m] + pi[r, Q_RPOS]  # its leaf: its place in the READY list, after the inner nodes
        key = _lc_key(pi, qn, gi, r)
        if _lc_get(mrep, base, w, j) == key:
            continue  # its count did not change (most events: an iteration without completions)
        _lc_set(mrep, base, w, j, key)
        while j > 1:
            j >>= 1
            v = min(_lc_get(mrep, base, w, 2 * j), _lc_get(mrep, base, w, 2 * j + 1))
            if _lc_get(mrep, base, w, j) == v:
                break  # the nodes above are unchanged too
            _lc_set(mrep, base, w, j, v)
    gi[I_LC_NDIRTY] = 0


@njit(cache=True, error_model="numpy", inline="always")
def lc_pick(pi, qn, mrep, mn, gi, m):
    """Model ``m``'s READY replica with fewest requests in flight, ties to the lowest id (it has one)."""
    row = gi[I_NMODELS] + m
    if gi[I_LC_ON] == 0:  # no index kept (a rule replayed from outside the loop): scan in id order
        best = mrep[row, 0]
        bv = _in_flight(pi, qn, gi, best)
        for k in range(1, mn[row]):
            r = mrep[row, k]
            v = _in_flight(pi, qn, gi, r)
            if v < bv:
                best, bv = r, v
        return best
    _lc_refresh(pi, qn, mrep, mn, gi)
    base = 2 * gi[I_NMODELS] + 2 * m
    return _lc_get(mrep, base, mrep.shape[1], 1) & 0xFFFFFFFF


@njit(cache=True, error_model="numpy", inline="always")
def route(rf, ri, pf, pi, qn, mi, mrep, mn, gf, gi, pc, kc, i):
    """The replica the scenario's rule picks for arrived request ``i``; -1 = central queue.

    The candidates are the model's READY replicas, ``mrep[row, :mn[row]]`` with ``row = n_models +
    m``, in increasing id order (:func:`envs.sim.eventq.set_replica_state` keeps the list), so every
    scan below visits them in id order and ties go to the lowest id; counting and indexing them is O(1).
    """
    m = ri[i, R_MODEL]
    rule = gi[I_ROUTER]
    if rule == RULE_CENTRAL_QUEUE:
        return -1
    row = gi[I_NMODELS] + m
    n = mn[row]
    if n == 0:
        return -1
    if rule == RULE_RANDOM:
        return mrep[row, min(int(rf[i, R_U1] * n), n - 1)]
    if rule == RULE_ROUND_ROBIN:
        c = mrep[row, mi[m, M_RR] % n]
        mi[m, M_RR] += 1
        return c
    if rule == RULE_LEAST_IN_FLIGHT:
        return lc_pick(pi, qn, mrep, mn, gi, m)
    if rule == RULE_POWER_OF_TWO:  # two distinct uniform picks, fewer in flight wins (ties: first pick)
        ka = min(int(rf[i, R_U1] * n), n - 1)
        a = mrep[row, ka]
        if n == 1:
            return a
        j = min(int(rf[i, R_U2] * (n - 1)), n - 2)
        b = mrep[row, j if j < ka else j + 1]
        return a if _in_flight(pi, qn, gi, a) <= _in_flight(pi, qn, gi, b) else b
    if rule == RULE_WEIGHTED_RR:  # smooth weighted round robin (nginx): weights = replica speed
        total = 0.0
        best = -1
        for k in range(n):
            r = mrep[row, k]
            pf[r, P_WRR] += pf[r, P_SPEED]
            total += pf[r, P_SPEED]
            if best < 0 or pf[r, P_WRR] > pf[best, P_WRR]:
                best = r
        pf[best, P_WRR] -= total
        return best
    if rule == RULE_CONSISTENT_HASH:  # consistent hashing with bounded loads (Mirrokni et al. 2018)
        total = 1
        for k in range(n):
            total += _in_flight(pi, qn, gi, mrep[row, k])
        bound = np.ceil((1.0 + gf[G_AFFINITY_EPS]) * total / n)
        key = hash64(np.uint64(ri[i, R_SESSION]))
        # walk the ring clockwise from the key: the first replica whose hash is >= key, wrapping around
        first = _ring_next(pi, mrep, mn, row, key, True)
        if first < 0:
            first = _ring_next(pi, mrep, mn, row, np.uint64(0), True)
        r = first
        for _ in range(n):
            if _in_flight(pi, qn, gi, r) + 1 <= bound:
                return r
            r = _ring_next(pi, mrep, mn, row, np.uint64(pi[r, Q_HASH]), False)
            if r < 0:
                r = _ring_next(pi, mrep, mn, row, np.uint64(0), True)
        return first
    # RULE_SCORE: lowest score wins, ties to the lowest id
    score = _as_score_fn(gi[I_SCORE_FN])
    prompt = ri[i, R_PROMPT]
    prefixes = gi[I_HB] > 0
    lo = hi = top = 0
    if gi[I_SCORE_AGG] != 0:  # first pass: the aggregates (and each replica's match, kept in Q_MATCH)
        lo = -1
        for k in range(n):
            r = mrep[row, k]
            f = _in_flight(pi, qn, gi, r)
            lo = f if lo < 0 or f < lo else lo
            hi = max(hi, f)
            if prefixes:
                pi[r, Q_MATCH] = match(ri, pi, pc, kc, gi, r, i, prompt)[0] * gi[I_HB]
                top = max(top, pi[r, Q_MATCH])
    best = -1
    bv = INF
    for k in range(n):
        r = mrep[row, k]
        q = _waiting(pi, qn, gi, r)
        run = pi[r, Q_NRUN]
        cached = 0
        if prefixes:
            cached = (
                pi[r, Q_MATCH]
                if gi[I_SCORE_AGG] != 0
                else match(ri, pi, pc, kc, gi, r, i, prompt)[0] * gi[I_HB]
            )
        v = score(q + run, q, run, pi[r, Q_MAXB], pi[r, Q_KVRES], pi[r, Q_KVCAP], pf[r, P_SPEED], pf[r, P_EWMA],
                  prompt, cached, lo, hi, top, pi[r, Q_ENTRIES] * pi[r, Q_EB] * pi[r, Q_BT], gf[G_SCORE_P0],
                  gf[G_SCORE_P1], gf[G_SCORE_P2])  # fmt: skip
        if v < bv:
            best, bv = r, v
    return best


@njit(cache=True, error_model="numpy", _nrt=False)
def route_once(rf, ri, pf, pi, qn, mi, mrep, mn, gf, gi, pc, kc, i, rule, score_addr, agg, eps, p0, p1, p2):
    """:func:`route` of request ``i`` under another rule (for policies that replay a router through an env).

    Uses (and updates) the same round-robin counters as the loop would; the
    scenario's own rule and parameters are restored before returning.
    """
    saved = (gi[I_ROUTER], gi[I_SCORE_FN], gi[I_SCORE_AGG])
    saved_f = (gf[G_AFFINITY_EPS], gf[G_SCORE_P0], gf[G_SCORE_P1], gf[G_SCORE_P2])
    gi[I_ROUTER], gi[I_SCORE_FN], gi[I_SCORE_AGG] = rule, score_addr, agg
    gf[G_AFFINITY_EPS], gf[G_SCORE_P0], gf[G_SCORE_P1], gf[G_SCORE_P2] = eps, p0, p1, p2
    r = route(rf, ri, pf, pi, qn, mi, mrep, mn, gf, gi, pc, kc, i)
    gi[I_ROUTER], gi[I_SCORE_FN], gi[I_SCORE_AGG] = saved
    gf[G_AFFINITY_EPS], gf[G_SCORE_P0], gf[G_SCORE_P1], gf[G_SCORE_P2] = saved_f
    return r
