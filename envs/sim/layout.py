"""The engine state's field names, defined once: columns of the state arrays and state codes.

The compiled core (:mod:`envs.sim.kernel`, :mod:`envs.sim.routing`,
:mod:`envs.sim.metrics`) indexes the arrays of
:class:`~envs.sim.state.EngineState` with these names; nothing outside
``envs/sim`` uses them (controllers and environments read
:mod:`envs.sim.view`). Times are seconds of simulated time, sizes tokens.

Requests (one row each, ``rf`` floats and ``ri`` ints):

==============  ==========================================================  =====
``R_ARR``       arrival time                                                 s
``R_SVC``       pre-drawn service time (per-request validation models)      s
``R_U1, R_U2``  pre-drawn uniforms of the random routers                     1
``R_ADMIT``     admission into a running batch                               s
``R_FIRST``     first output token                                           s
``R_DONE``      completion, or drop time                                     s
``R_DEADLINE``  arrival + the class timeout (dropped if still queued)        s
``R_PROMPT``    prompt tokens; ``R_OUTPUT`` output tokens                    tokens
``R_MODEL``     model index; ``R_CLASS`` class; ``R_PRIO`` class priority
``R_LIST``      queue list (one per class, in priority order)
``R_REPLICA``   replica it was routed to (-1: central queue / none)
``R_STATE``     ``REQ_*`` code; ``R_NEXT`` next in its queue list
``R_SESSION``   session key (affinity routing)
``R_KVSRC``     disaggregated: prefill replica + 1 holding its KV (0: none)
==============  ==========================================================  =====

``R_SVC`` of a request whose KV cache is in transfer holds the cache's arrival time (the paged
engine draws no service times).

Replicas (``pf`` floats, ``pi`` ints): iteration-time coefficients
(``P_CTOK`` s/token, ``P_WREAD`` s, ``P_KVTOK`` s/KV token, ``P_OVH`` s,
``P_TILE`` tokens), busy time, iteration start/duration, allocation / READY /
release times (s), capacity ``P_SPEED`` (req/s), latency EWMA ``P_EWMA`` (s,
-1 until a request completes), smooth-WRR current weight ``P_WRR``; state,
model, max batch, KV capacity / reserved / in use (tokens), running count,
iteration counter, ``Q_SEG`` (iterations the pending ITER_END covers), busy
flag, admitted-this-iteration count, event version, prefill tokens, decode
count, ring hash, tokens produced.
"""

from __future__ import annotations

# request float columns
R_ARR, R_SVC, R_U1, R_U2, R_ADMIT, R_FIRST, R_DONE, R_DEADLINE = range(8)
N_RF = 8
# request int columns. The fields an iteration's start and end read for every running request come
# first, in one 64-byte cache line (rows are padded to 24 columns, three lines, and the array is
# 64-byte aligned: ``state.aligned_zeros``): at a thousand replicas twenty thousand requests are
# in flight and a scattered walk of their rows, not the arithmetic, is the cost of an iteration.
# prompt and output tokens; paged engine (kv_policy: paged): tokens whose KV is computed, output
# tokens generated, leading prefix-cache entries referenced, private KV blocks held, tokens
# scheduled in the running iteration (column 7 is free: the reserve engine keeps the iteration a
# request finishes in its running heap's key, RUN_ID_MASK below)
R_PROMPT, R_OUTPUT, R_COMPUTED, R_GEN, R_HELD, R_BLOCKS, R_SCHED = range(7)
R_MODEL, R_LIST, R_REPLICA, R_STATE, R_NEXT, R_CLASS, R_SESSION, R_PRIO = range(8, 16)
# cached prompt tokens at first admission, times preempted, drop reason (DROP_*)
R_HIT, R_NPREEMPT, R_REASON = range(16, 19)
# disaggregated serving (envs.sim.paged): the prefill replica holding the request's KV for a transfer
# plus one (0: none), and the private blocks and cache entries it holds there
R_KVSRC, R_PBLOCKS, R_PHELD = range(19, 22)
N_RI = 24  # 21 used; padded to three cache lines
# the reserve engine's running heap (EngineState.run) holds ``finish_iteration << 32 | request_id``
RUN_ID_MASK = (1 << 32) - 1
# request states (TRANSFER: its KV cache is on its way from a prefill to a decode replica)
REQ_FUTURE, REQ_QUEUED, REQ_RUNNING, REQ_DONE, REQ_DROPPED, REQ_TRANSFER = range(6)
# why a request was dropped (R_REASON): its class timeout while queued, longer than the replica's
# max_model_len, more KV than the replica can ever hold, lost to a fault (fault_policy: drop)
DROP_TIMEOUT, DROP_CONTEXT, DROP_KV, DROP_FAULT = range(4)
DROP_REASON_NAMES = ("timeout", "context_length", "kv_capacity", "failure")

# replica float columns
P_CTOK, P_WREAD, P_KVTOK, P_OVH, P_BUSY_S, P_ITER_START, P_ITER_DUR, P_ALLOC, P_READY, P_RELEASE = range(10)
P_SPEED, P_EWMA, P_WRR, P_TILE = 10, 11, 12, 13
# KV transfers (disaggregated serving, envs.sim.paged): link bandwidth within / across nodes (bytes/s),
# their latencies (s), KV bytes per token, when its outgoing / incoming link is free (s), and, as a
# receiver, seconds from admission to the cache's arrival summed, seconds its link was busy, bytes
(P_NVL_BPS, P_NET_BPS, P_NVL_LAT, P_NET_LAT, P_KVBYTES, P_XOUT_FREE, P_XIN_FREE, P_XWAIT_S, P_XBUSY_S,
 P_XBYTES) = range(14, 24)  # fmt: skip
N_PF = 24
# replica int columns
Q_STATE, Q_MODEL, Q_MAXB, Q_KVCAP, Q_KVRES, Q_KVSUM, Q_NRUN, Q_ITER, Q_SEG, Q_BUSY = range(10)
Q_NPF, Q_VERSION, Q_PFTOK, Q_NDEC, Q_HASH, Q_TOKENS = 10, 11, 12, 13, 14, 15
# paged engine: policy flag, block tokens, token budget per iteration, prefix caching flag,
# max_model_len, KV blocks (capacity / private in use), prefix-cache entries (live, unreferenced
# on the LRU list, LRU head / tail, never-used cursor, free-stack size), blocks per entry, and
# counters (preemptions, cached / total prompt tokens at first admission, recomputed tokens), and
# the chunked-prefill flag
(Q_PAGED, Q_BT, Q_BUDGET, Q_CACHE, Q_MAXLEN, Q_BLKCAP, Q_BLKPRIV, Q_ENTRIES, Q_LRUN, Q_LRUH, Q_LRUT,
 Q_CNEW, Q_CFREE, Q_EB, Q_PREEMPT, Q_HITTOK, Q_PROMPTTOK, Q_RECOMP, Q_CHUNKED) = range(16, 35)  # fmt: skip
Q_MATCH = 35  # scratch: the routed request's cached prefix on this replica (tokens), for score routers
# disaggregated serving: role (ROLE_*), the decode pool a prefill replica hands to, its node, requests
# whose KV it holds for a transfer, transfers into it in flight (a FIFO list: head, tail), transfers
# into it completed, and requests handed off at the iteration that just ended (listed in ``pfl``)
Q_ROLE, Q_DPOOL, Q_NODE, Q_XOUT, Q_XIN, Q_XHEAD, Q_XTAIL, Q_XN, Q_NHAND = range(36, 45)
# the least-in-flight index (routing.py): 1 while the replica waits in the index's list of replicas to
# refresh; its place in its model's READY list (eventq.set_replica_state keeps it; -1: not READY)
Q_LCMARK, Q_RPOS = 45, 46
N_PI = 47
ROLE_AGGREGATED, ROLE_PREFILL, ROLE_DECODE = range(3)
# replica states
REP_FREE, REP_LOADING, REP_READY, REP_DRAINING, REP_RELEASED = range(5)
REPLICA_STATE_NAMES = ("free", "loading", "ready", "draining", "released")
REQUEST_STATE_NAMES = ("future", "queued", "running", "done", "dropped", "transfer")

# per-model int columns; a disaggregated model's prefill pool hands its requests to its decode pool
# (counted out of one, into the other)
M_INFLIGHT, M_QUEUED, M_RR, M_RUNNING, M_HANDOUT, M_HANDIN = range(6)
N_MI = 6

# global scalars
G_NOW, G_TICK_S, G_AFFINITY_EPS, G_SCORE_P0, G_SCORE_P1, G_SCORE_P2 = range(
    6
)  # P*: a score router's parameters
# the decode stage's router (disaggregated serving): its load bound and parameters
G_D_EPS, G_D_P0, G_D_P1, G_D_P2 = range(6, 10)
N_GF = 10
(I_NEXT_ARR, I_NREQ, I_HEAP_N, I_SEQ, I_NDONE, I_NDROP, I_PENDING, I_ROUTER, I_SVC_KIND, I_NLISTS,
 I_NTICK, I_NMODELS, I_TICK_CAP, I_PRIORITY, I_SCORE_FN, I_NRELEASED, I_HB, I_SCORE_AGG) = range(18)  # fmt: skip
# the decode stage's router: its rule, score function address and aggregates flag; with the
# ``external`` rule, the prefill replica whose handed-off requests wait for decisions (-1: none) and
# the position of the pending one in its list (``pfl``)
I_D_ROUTER, I_D_SCORE_FN, I_D_SCORE_AGG, I_HAND_R, I_HAND_K = range(18, 23)
# the least-in-flight index (routing.py): kept at all (a router runs LEAST_IN_FLIGHT), to rebuild
# (a READY list changed, or the arrays grew), replicas waiting to be refreshed
I_LC_ON, I_LC_REBUILD, I_LC_NDIRTY = range(23, 26)
N_GI = 26

# the event heap (EngineState.hp, one row per event, rows 1 .. gi[I_HEAP_N]): time, key
# (priority << 48 | sequence), replica, its event version (-1: never cancelled), all float64 (the
# integers are exact below 2**53)
H_T, H_KEY, H_REP, H_VER = range(4)
N_H = 4

# prefix-cache arrays (EngineState.kc[replica, KC_*, :]): open-addressing hash table of entry
# indices, then per entry its block hash, reference count, LRU links and the free-entry stack
KC_SLOT, KC_KEY, KC_REF, KC_PREV, KC_NEXT, KC_FREE = range(6)
N_KC = 6

# service kinds
SVC_PER_REQUEST, SVC_ROOFLINE = 0, 1
